"""Leads and accounts: CSV import (upsert, per-row rejection), list and show."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import FIXTURES
from sqlalchemy import select

from leadloop.agent.leads import import_accounts, import_leads
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig
from leadloop.storage.db import Database
from leadloop.storage.models import Account, Lead, LeadStateChange

LEADS = (
    (
        "email,first_name,company,timezone,rating,consent,hand_raiser,owner,"
        "account_domain,account_name,industry,company_size,linkedin\n"
        "Ana@Buyer.example,Ana,Buyer Inc,Europe/Lisbon,hot,yes,yes,seller@acme.example,"
        "buyer.example,Buyer Inc,Retail,40,https://x/ana\n"
    )
    + """bob@buyer.example,Bob,Buyer Inc,,,,,,,,,,
not-an-email,X,,,,,,,,,,,
carol@c.example,Carol,,Mars/Olympus,,,,,,,,,
dave@d.example,Dave,,,lukewarm,,,,,,,,
erin@e.example,Erin,,,,maybe,,,,,,,
frank@f.example,Frank,,,,,,,,,,-3,
"""
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_import_creates_updates_and_rejects(
    db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    """Good rows are created in state new with history; bad rows are rejected with a reason
    and never stop the file; a second import updates instead of duplicating."""
    report = await import_leads(db, write(tmp_path, "leads.csv", LEADS), clock.now())
    assert (report.created, report.updated) == (2, 0)
    reasons = dict(report.rejected)
    assert sorted(reasons) == [4, 5, 6, 7, 8]
    assert "invalid email" in reasons[4]
    assert "unknown time zone" in reasons[5]
    assert "rating" in reasons[6]
    assert "consent" in reasons[7]
    assert "size" in reasons[8]
    assert report.custom_columns == ["linkedin"]

    async with db.transaction() as session:
        ana = await session.scalar(select(Lead).where(Lead.email == "ana@buyer.example"))
        bob = await session.scalar(select(Lead).where(Lead.email == "bob@buyer.example"))
        account = await session.scalar(select(Account).where(Account.domain == "buyer.example"))
        history = (await session.scalars(select(LeadStateChange))).all()
    assert ana is not None and bob is not None and account is not None
    assert (ana.state, ana.consent, ana.hand_raiser, ana.rating) == ("new", "granted", True, "hot")
    assert ana.custom == {"linkedin": "https://x/ana"}
    assert (account.industry, account.size) == ("Retail", 40)
    # Bob names no account, but his address's domain has one: he is linked to it.
    assert ana.account_id == bob.account_id == account.id
    assert {(h.from_state, h.to_state) for h in history} == {(None, "new")}

    again = await import_leads(
        db,
        write(tmp_path, "more.csv", "email,title\nana@buyer.example,VP\nbob@buyer.example,\n"),
        clock.now(),
    )
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 1, 1, [])


async def test_import_without_email_column(
    sqlite_db: Database, clock: ManualClock, tmp_path: Path
) -> None:
    """A file without an email column is rejected as a whole, with the reason."""
    report = await import_leads(sqlite_db, write(tmp_path, "x.csv", "name\nAna\n"), clock.now())
    assert report.rejected == [(1, "the file has no 'email' column")]


async def test_accounts_import(db: Database, clock: ManualClock, tmp_path: Path) -> None:
    """Accounts upsert on domain, with size and open opportunity value checked."""
    text = (
        "domain,name,industry,size,open_opportunity_value\n"
        'https://www.Northwind.example/,Northwind,Logistics,250,"12,500.00"\n'
        "bad domain,X,,,\n"
        "contoso.example,Contoso,Manufacturing,many,\n"
    )
    report = await import_accounts(db, write(tmp_path, "accounts.csv", text), clock.now())
    assert report.created == 1
    assert [line for line, _ in report.rejected] == [3, 4]
    async with db.transaction() as session:
        account = await session.scalar(select(Account))
    assert account is not None
    assert (account.domain, account.size, str(account.open_opportunity_value)) == (
        "northwind.example",
        250,
        "12500.00",
    )


def test_leads_cli(make_config: Callable[[str], LoadedConfig], tmp_path: Path) -> None:
    """`leads import`, `leads list --json` and `leads show` through the real command."""
    loaded = make_config("")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "leadloop", "--config", str(loaded.file), *args],
            capture_output=True,
            text=True,
        )

    imported = cli("leads", "import", str(FIXTURES / "replay" / "leads.csv"))
    assert imported.returncode == 0, imported.stderr
    assert "created 2, updated 0, unchanged 0, rejected 0" in imported.stdout
    listed = [json.loads(line) for line in cli("leads", "list", "--json").stdout.splitlines()]
    assert [lead["email"] for lead in listed] == [
        "dana.reyes@northwind.example",
        "li.wei@contoso.example",
    ]
    assert listed[1]["hand_raiser"] is True
    table = cli("leads", "list").stdout
    assert table.splitlines()[0].split() == ["EMAIL", "NAME", "COMPANY", "STATE", "OWNER"]
    shown = json.loads(cli("leads", "show", "LI.WEI@contoso.example", "--json").stdout)
    assert shown["lead"]["account"] == "contoso.example"
    assert shown["history"][0]["to"] == "new"
    assert shown["history"][0]["reason"] == "imported from leads.csv"
    text = cli("leads", "show", "li.wei@contoso.example").stdout
    assert "state history:" in text and "-> new" in text
    missing = cli("leads", "show", "nobody@x.example")
    assert missing.returncode == 1 and "no lead" in missing.stderr
    bad = cli("leads", "import", str(write(tmp_path, "bad.csv", "email\nnope\n")))
    assert bad.returncode == 1 and "line 2: invalid email" in bad.stdout
