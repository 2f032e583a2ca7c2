"""The research and prioritization job at scale, on a migrated SQLite file.

N leads (default 5000) at N/10 companies (accounts), M stored inbound mails
(default 5000) from them, each To a sales mailbox and Cc a colleague, and
one outbound mail per lead.  Times, on this data:

1. ``refresh_research`` (``research/facts.py``): every open lead's internal
   research (who knows whom, the account, the conversation) computed and
   stored; outside research off, as shipped;
2. the same again with nothing stale: what a daemon pays every
   ``[research] interval`` when nothing changed;
3. ``prioritize`` over all open leads (``research/priority.py``);
4. ``build_digest`` for one seller owning N/5 leads (``report/digest.py``);
5. ``leads erase`` of one lead with mail (``agent/controls.py``): its rows
   deleted, mentions redacted, and every text, JSON and bytes column of the
   database scanned for the address before the commit.

Prints each duration, leads per second where it applies, and the peak RSS.
Exits 1 when a step did not produce what it should (a research row per lead,
a rank per open lead).

    python bench/research.py [--leads N] [--mails M]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, insert, select

from leadloop.agent.controls import PrivacyKey, erase
from leadloop.config import loads
from leadloop.report.digest import build_digest
from leadloop.research.facts import refresh_research
from leadloop.research.priority import prioritize
from leadloop.storage import repo
from leadloop.storage.db import open_database
from leadloop.storage.models import (
    Account,
    InboundMessage,
    Lead,
    OutboundMessage,
    ResearchResult,
    table_of,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SELLERS = [f"seller{i}@acme.example" for i in range(5)]
CONFIG = """
[service]
state_dir = "var"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
path = "mail"

[handoff]
sellers = {sellers}

[[icp.criteria]]
field = "industry"
in = ["logistics"]
"""


async def populate(url: str, leads: int, mails: int) -> None:
    db = await open_database(url)
    try:
        async with db.transaction() as session:
            box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
            companies = max(1, leads // 10)
            await session.execute(
                insert(table_of(Account)),
                [
                    {
                        "domain": f"co{c}.example",
                        "name": f"Company {c}",
                        "industry": "logistics" if c % 2 else "retail",
                        "size": 50 + c,
                        "open_opportunity_value": Decimal(1000 * (c % 7)),
                        "custom": {},
                        "created_at": NOW,
                        "updated_at": NOW,
                    }
                    for c in range(companies)
                ],
            )
            await session.execute(
                insert(table_of(Lead)),
                [
                    {
                        "email": f"p{i}@co{i % companies}.example",
                        "first_name": f"P{i}",
                        "last_name": "Example",
                        "company": f"Company {i % companies}",
                        "account_id": i % companies + 1,
                        "consent": "unknown",
                        "hand_raiser": i % 50 == 0,
                        "owner": SELLERS[i % len(SELLERS)],
                        "custom": {},
                        "state": "conversing" if i < mails else "new",
                        "state_changed_at": NOW,
                        "email_status": "deliverable",
                        "created_at": NOW - timedelta(days=i % 30),
                        "updated_at": NOW,
                    }
                    for i in range(leads)
                ],
            )
            ids = list(await session.scalars(select(Lead.id).order_by(Lead.id)))
            emails = dict((await session.execute(select(Lead.id, Lead.email))).all())
            await session.execute(
                insert(table_of(InboundMessage)),
                [
                    {
                        "mailbox_id": box.id,
                        "source_id": f"s{n}",
                        "message_id": f"<m{n}@buyer.example>",
                        "raw": b"",
                        "size": 100,
                        "headers": {"to": ["sales@acme.example"], "cc": [SELLERS[n % 5]]},
                        "from_addr": emails[ids[n % len(ids)]],
                        "received_at": NOW - timedelta(hours=n % 500),
                        "defects": [],
                        "stage": "done",
                        "status": "done",
                        "not_before": NOW,
                        "kind": "reply",
                        "lead_id": ids[n % len(ids)],
                        "result": {"intent": "question", "visible_text": "How much is it?"},
                    }
                    for n in range(mails)
                ],
            )
            await session.execute(
                insert(table_of(OutboundMessage)),
                [
                    {
                        "mailbox_id": box.id,
                        "lead_id": lead_id,
                        "message_id": f"<o{lead_id}@acme.example>",
                        "references": [],
                        "idempotency_key": f"bench:{lead_id}",
                        "kind": "touch",
                        "to_addrs": [emails[lead_id]],
                        "status": "sent",
                        "attempts": 1,
                        "not_before": NOW,
                        "created_at": NOW - timedelta(days=1),
                        "sent_at": NOW - timedelta(days=1),
                        "payload": {"mailbox": "sales", "text": "Hi"},
                    }
                    for lead_id in ids
                ],
            )
    finally:
        await db.dispose()


async def main(leads: int, mails: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "config.toml"
        loaded = loads(CONFIG.format(sellers=SELLERS).replace("'", '"'), file)
        url = loaded.database_url  # var/leadloop.db beside the config, aiosqlite
        await populate(url, leads, mails)
        db = await open_database(url)
        failed = False
        try:
            start = time.perf_counter()
            first = await refresh_research(db, loaded, NOW)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            again = await refresh_research(db, loaded, NOW + timedelta(hours=4))
            warm = time.perf_counter() - start
            async with db.sessions() as session:
                rows = await session.scalar(select(func.count()).select_from(ResearchResult))
                start = time.perf_counter()
                ranked = await prioritize(session, loaded, NOW)
                ranking = time.perf_counter() - start
                start = time.perf_counter()
                digest = await build_digest(session, loaded, SELLERS[0], NOW)
                digesting = time.perf_counter() - start
            start = time.perf_counter()
            async with db.transaction() as session:
                erased = await erase(
                    session, "p1@co1.example", actor="bench", reason="bench",
                    now=NOW, key=PrivacyKey(b"k" * 32),
                )  # fmt: skip
            erasing = time.perf_counter() - start
            async with db.sessions() as session:
                left = await session.scalar(
                    select(func.count()).select_from(Lead).where(Lead.email == "p1@co1.example")
                )
        finally:
            await db.dispose()
    print(f"data: {leads} leads at {max(1, leads // 10)} accounts, {mails} inbound mails")
    print(f"research, all stale:   {cold:7.2f} s  {first.leads / cold:8.0f} leads/s")
    print(f"research, none stale:  {warm:7.2f} s  ({again.leads} recomputed)")
    print(f"prioritize all:        {ranking:7.2f} s  {len(ranked) / ranking:8.0f} leads/s")
    print(f"one seller's digest:   {digesting:7.2f} s  ({len(digest.text.splitlines())} lines)")
    deleted = sum(erased.deleted.values())
    print(f"erase one lead:        {erasing:7.2f} s  ({deleted} rows deleted)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS:              {rss:7.0f} MiB")
    if rows != leads or first.leads != leads:
        print(f"FAILED: {rows} research rows, {first.leads} researched, for {leads} leads")
        failed = True
    if len(ranked) != leads:
        print(f"FAILED: {len(ranked)} ranked of {leads} open leads")
        failed = True
    if left or not erased.lead:
        print("FAILED: the erased lead is still there")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--mails", type=int, default=5000)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.leads, args.mails)))
