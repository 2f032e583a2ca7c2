"""Admin controls (``agent/controls.py``): pause and resume through the real
outbox and aiosmtpd, suppress / unsuppress, set-email, erase scanned over
every table and column of the real database, retention, and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import T0
from outbox_env import OutboxEnv, outbox_env
from sqlalchemy import func, select
from test_cadence_service import buyer_mail, utc, world
from test_tracking import admin, tracked_world

from leadloop import cli
from leadloop.agent import controls, outbox
from leadloop.agent.controls import ControlError
from leadloop.agent.leads import import_leads
from leadloop.agent.lifecycle import State, create_lead, transition
from leadloop.agent.screening import suppress as screening_suppress
from leadloop.clock import ManualClock
from leadloop.config import load
from leadloop.research.job import claim_run, release_run
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import (
    BrainUsage,
    Escalation,
    Event,
    InboundMessage,
    Lead,
    Order,
    OutboundMessage,
    ResearchResult,
    Suppression,
    Task,
)

BY = "admin:ann"


async def control_events(db: Database, kind: str) -> list[Event]:
    async with db.sessions() as session:
        return list(await session.scalars(select(Event).where(Event.kind == kind)))


async def touch_and_drain(env: OutboxEnv, *leads: Lead) -> list[int]:
    ids = [await env.touch(lead) for lead in leads]
    await env.drain()
    return ids


def delivered_to(env: OutboxEnv) -> list[str]:
    return [rcpt for item in env.handler.received for rcpt in item.rcpt_tos]


# -- pause and resume ---------------------------------------------------------


async def test_pause_all_holds_every_mail_queued_and_resume_sends_each_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    """While `send_paused` is set the outbox claims nothing; resumed, each mail goes once."""
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@northwind.example")
        async with env.db.transaction() as session:
            assert await controls.pause(session, actor=BY, reason="relay migration", now=env.now)
            assert not await controls.pause(session, actor=BY, reason="again", now=env.now)
        [row_id] = await touch_and_drain(env, lead)
        async with env.db.transaction() as session:
            notice = await outbox.queue_notice(
                session, env.settings, to=["boss@acme.example"], subject="FYI", text="x",
                now=env.now, idempotency_key="n:1",
            )  # fmt: skip
        clock.advance(timedelta(minutes=5))
        await env.drain()
        assert env.handler.received == []
        assert (await env.row(row_id)).status == "queued"
        assert (await env.row(notice.id)).status == "queued"

        async with env.db.transaction() as session:
            assert await controls.resume(session, actor=BY, reason="done", now=env.now)
            assert not await controls.resume(session, actor=BY, reason="done", now=env.now)
        await env.drain()
        await env.drain()
        assert sorted(delivered_to(env)) == ["boss@acme.example", "dana@northwind.example"]
        assert (await env.row(row_id)).status == "sent"
        [paused] = await control_events(env.db, "control.pause")
        assert (paused.actor, paused.reasons, paused.data) == (
            BY,
            ["relay migration"],
            {"scope": "all"},
        )
        [resumed] = await control_events(env.db, "control.resume")
        assert resumed.data["paused_by"] == BY and resumed.reasons == ["done"]


async def test_pause_one_mailbox_then_resume(tmp_path: Path, clock: ManualClock) -> None:
    """A mailbox paused by an admin sends nothing until resumed, as the breaker's pause."""
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@northwind.example")
        async with env.db.transaction() as session:
            await controls.pause(
                session, actor=BY, reason="DNS change", now=env.now, mailbox="sales"
            )
            with pytest.raises(ControlError, match="no mailbox named 'nope'"):
                await controls.pause(session, actor=BY, reason="x", now=env.now, mailbox="nope")
        [row_id] = await touch_and_drain(env, lead)
        assert env.handler.received == [] and (await env.row(row_id)).status == "queued"
        async with env.db.transaction() as session:
            assert await controls.resume(
                session, actor=BY, reason=None, now=env.now, mailbox="sales"
            )
        await env.drain()
        assert delivered_to(env) == ["dana@northwind.example"]
        # The existing resume path is kept: its event too.
        [resumed] = await control_events(env.db, "outbox.resumed")
        assert resumed.actor == BY and "paused by admin:ann: DNS change" in resumed.reasons[0]


async def test_pause_one_lead_keeps_its_mail_queued_and_others_flowing(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A lead paused by an admin is `paused` (reason admin, its state kept) and
    its mail waits queued; the others go; resumed, it gets its mail once."""
    async with outbox_env(tmp_path, clock) as env:
        dana = await env.lead("dana@northwind.example")
        kim = await env.lead("kim@contoso.example")
        async with env.db.transaction() as session:
            await controls.pause(
                session, actor=BY, reason="customer asked for a call", now=env.now, lead=dana.email
            )
        dana_row, _ = await touch_and_drain(env, dana, kim)
        assert delivered_to(env) == ["kim@contoso.example"]
        assert (await env.row(dana_row)).status == "queued"
        async with env.db.sessions() as session:
            paused = await session.get(Lead, dana.id)
            assert paused is not None
            assert paused.state == "paused" and paused.paused_return_state == "new"
            assert paused.paused_reason == "admin: customer asked for a call"

        async with env.db.transaction() as session:
            assert await controls.resume(
                session, actor=BY, reason="call done", now=env.now, lead=dana.email
            )
        await env.drain()
        await env.drain()
        assert sorted(delivered_to(env)) == ["dana@northwind.example", "kim@contoso.example"]
        assert await env.lead_state(dana.id) == "engaging"  # new, then its first touch went
        [resumed] = await control_events(env.db, "control.resume")
        assert (resumed.lead_id, resumed.actor, resumed.data["to"]) == (dana.id, BY, "new")


async def test_a_lead_pause_refuses_what_it_cannot_pause_or_resume(
    tmp_path: Path, clock: ManualClock
) -> None:
    """An escalation's pause is not the admin's to resume; a closed lead has nothing to pause."""
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@northwind.example")
        async with env.db.transaction() as session:
            found = await session.get(Lead, lead.id)
            assert found is not None
            await transition(
                session, found, State.PAUSED, actor="t", reason="human_request", now=env.now
            )
        async with env.db.transaction() as session:
            with pytest.raises(ControlError, match="RESUME to its escalation"):
                await controls.resume(session, actor=BY, reason=None, now=env.now, lead=lead.email)
            with pytest.raises(ControlError, match="already paused"):
                await controls.pause(session, actor=BY, reason="x", now=env.now, lead=lead.email)
            with pytest.raises(ControlError, match="needs a reason"):
                await controls.pause(session, actor=BY, reason=" ", now=env.now)
            with pytest.raises(ControlError, match="no lead"):
                await controls.pause(session, actor=BY, reason="x", now=env.now, lead="x@y.example")


async def test_healthz_shows_sending_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/healthz reports `leadloop pause` (degraded, with who and why) until resumed."""
    async with tracked_world(tmp_path, monkeypatch) as (w, http):
        assert w.service.db is not None
        await w.run_until(utc("2026-03-02", 9))
        async with w.service.db.transaction() as session:
            await controls.pause(session, actor=BY, reason="audit", now=w.clock.now())
        async with http.get(admin(w, "/healthz")) as response:
            health = await response.json()
        assert health["status"] == "degraded"
        assert health["send_paused"]["by"] == BY and health["send_paused"]["reason"] == "audit"
        async with w.service.db.transaction() as session:
            await controls.resume(session, actor=BY, reason=None, now=w.clock.now())
        async with http.get(admin(w, "/healthz")) as response:
            health = await response.json()
        assert health["status"] == "ok" and health["send_paused"] is None


# -- suppressions -------------------------------------------------------------


async def test_suppress_skips_mail_and_unsuppress_lifts_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A suppressed address gets no mail; unsuppressed it does; lifting twice is refused."""
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@northwind.example")
        async with env.db.transaction() as session:
            assert await controls.suppress(
                session, "Dana@Northwind.example", actor=BY, reason="asked by phone", now=env.now
            )
            assert not await controls.suppress(
                session, "dana@northwind.example", actor=BY, reason="again", now=env.now
            )
        [skipped] = await touch_and_drain(env, lead)
        assert env.handler.received == []
        row = await env.row(skipped)
        assert row.status == "skipped" and "suppressed" in (row.last_error or "")

        async with env.db.transaction() as session:
            which = await controls.unsuppress(
                session, "dana@northwind.example", actor=BY, reason="consented", now=env.now
            )
            assert which == "address"
        async with env.db.transaction() as session:
            with pytest.raises(ControlError, match="is not suppressed"):
                await controls.unsuppress(
                    session, "dana@northwind.example", actor=BY, reason=None, now=env.now
                )
        await touch_and_drain(env, lead)
        assert delivered_to(env) == ["dana@northwind.example"]
        [added] = await control_events(env.db, "control.suppress")
        assert (added.actor, added.reasons, added.data) == (
            BY,
            ["asked by phone"],
            {"address": "dana@northwind.example"},
        )
        [lifted] = await control_events(env.db, "control.unsuppress")
        assert lifted.reasons == ["consented"]


# -- set-email ----------------------------------------------------------------


async def test_set_email_takes_an_invalid_lead_back_to_new_and_refuses_bad_addresses(
    sqlite_db: Database, make_config: Any
) -> None:
    """Seed 002/003: a person corrects an invalid address (`invalid` -> `new`);
    refusals say why."""
    validator = controls.validator_for(make_config("[validation]\ndns = false\n"))
    async with sqlite_db.transaction() as session:
        lead = await create_lead(
            session, Lead(email="dana@nortwind.example"), actor="t", reason="t", now=T0
        )
        lead.email_status = "invalid"
        await transition(session, lead, State.INVALID, actor="t", reason="5.1.1", now=T0)
        await create_lead(session, Lead(email="kim@contoso.example"), actor="t", reason="t", now=T0)
        await controls.suppress(session, "gone@contoso.example", actor=BY, reason="x", now=T0)

    async def attempt(new: str, old: str = "dana@nortwind.example") -> Lead:
        async with sqlite_db.transaction() as session:
            return await controls.set_email(
                session, old, new, actor=BY, reason="typo in the domain", now=T0,
                validator=validator,
            )  # fmt: skip

    for new, why in (
        ("dana at northwind", "not a usable address"),
        ("kim@contoso.example", "another lead already has"),
        ("gone@contoso.example", "is suppressed"),
        ("dana@nortwind.example", "already has that address"),
    ):
        with pytest.raises(ControlError, match=why):
            await attempt(new)
    with pytest.raises(ControlError, match="no lead"):
        await attempt("a@b.example", old="nobody@x.example")

    fixed = await attempt("Dana@Northwind.example")
    assert (fixed.email, fixed.state, fixed.email_status) == ("dana@northwind.example", "new", None)
    [event] = await control_events(sqlite_db, "control.set_email")
    assert (event.actor, event.reasons, event.lead_id) == (BY, ["typo in the domain"], fixed.id)
    assert event.data["from"] == "dana@nortwind.example"


# -- erasure ------------------------------------------------------------------

ADDRESS = "dana@northwind.example"


def occurrences(database: Path, needle: str) -> Iterator[str]:
    """Every table.column of the SQLite file holding *needle*, case-insensitively,
    in text, JSON and bytes alike (read with the stdlib, not the code under test)."""
    needle_bytes = needle.lower().encode()
    with sqlite3.connect(database) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "leads" in tables and "suppressions" in tables
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                for (value,) in conn.execute(f'SELECT "{column}" FROM "{table}"'):
                    if isinstance(value, bytes):
                        hit = needle_bytes in value.lower()
                    else:
                        hit = needle.lower() in str(value).lower()
                    if hit:
                        yield f"{table}.{column}"


async def test_erase_leaves_no_trace_but_a_keyed_suppression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After erase no row of any table holds the address; an HMAC suppression
    stays; a re-import is still suppressed; their next mail creates no lead."""
    async with world(tmp_path) as w:
        db, loaded = w.service.db, w.service.loaded
        assert db is not None
        key = controls.use_privacy_key(loaded)
        dana = await w.lead(ADDRESS, custom={"crm_id": "42"})
        ana = await w.lead("ana@contoso.example")
        await w.run_until(utc("2026-03-02", 9))  # both get their first touch
        touch = w.sent[ADDRESS][0].message
        w.deliver(buyer_mail(ADDRESS, touch, "Interesting. What does it cost for 40 trucks?"))
        # Ana's reply copies Dana: Ana's record stays, with Dana's address replaced.
        w.deliver(
            buyer_mail(
                "ana@contoso.example",
                w.sent["ana@contoso.example"][0].message,
                f"Looping in my colleague {ADDRESS.upper()} who owns the budget.",
                headers={"Cc": f"Dana <{ADDRESS}>"},
            )
        )
        await w.hour()
        async with db.transaction() as session:
            inbound = await session.scalar(
                select(InboundMessage.id).where(InboundMessage.lead_id == dana.id)
            )
            session.add_all(
                [
                    Escalation(
                        lead_id=dana.id, inbound_id=inbound, condition="price", reasons=[ADDRESS],
                        status="open", supervisors=["boss@acme.example"], opened_at=w.clock.now(),
                    ),
                    Task(
                        lead_id=dana.id, inbound_id=inbound, title=f"Call {ADDRESS}",
                        status="open", created_at=w.clock.now(),
                    ),
                    ResearchResult(
                        provider="manual", subject=f"lead:{dana.id}", lead_id=dana.id,
                        status="ok", summary="knows ana", data={"who": ADDRESS},
                        fetched_at=w.clock.now(),
                    ),
                    Order(
                        order_id="A-1", lead_id=dana.id, amount="10.00", currency="EUR",
                        at=w.clock.now(), data={"email": ADDRESS},
                    ),
                    BrainUsage(
                        at=w.clock.now(), brain="local", lead_id=dana.id, inbound_id=inbound,
                        calls=1, prompt_tokens=100, completion_tokens=10, outcome="ok",
                    ),
                ]
            )  # fmt: skip
            repo.add_event(
                session, "note", actor="t", now=w.clock.now(), lead_id=ana.id,
                reasons=[f"referred {ADDRESS}"], data={"referral": ADDRESS},
            )  # fmt: skip
            await controls.suppress(session, ADDRESS, actor=BY, reason="asked", now=w.clock.now())
        database = Path(db.sqlite_path or "")
        before = set(occurrences(database, ADDRESS))
        assert {"leads.email", "inbound_messages.raw", "outbound_messages.raw"} <= before

        async with db.transaction() as session:
            report = await controls.erase(
                session, ADDRESS.title(), actor=BY, reason="GDPR art. 17 request",
                now=w.clock.now(), key=key, own_addresses=["sales@acme.example"],
            )  # fmt: skip
        assert report.lead
        assert report.deleted["leads"] == 1 and report.deleted["inbound_messages"] >= 1
        assert report.redacted  # Ana's mail and the note named Dana
        assert list(occurrences(database, ADDRESS)) == []

        async with db.sessions() as session:
            [entry] = list(await session.scalars(select(Suppression)))
            assert entry.address is None
            secret = (loaded.state_dir / "privacy.key").read_text().strip().encode()
            assert (
                entry.address_hmac == hmac.new(secret, ADDRESS.encode(), hashlib.sha256).hexdigest()
            )
            assert stat.S_IMODE((loaded.state_dir / "privacy.key").stat().st_mode) == 0o600
            assert await session.get(Lead, ana.id) is not None
            kept = await session.scalar(select(func.count()).select_from(BrainUsage))
            assert kept == await session.scalar(
                select(func.count()).select_from(BrainUsage).where(BrainUsage.lead_id.is_(None))
            )
            assert await controls.suppressed_among(session, {"DANA@northwind.example"}) == {
                "DANA@northwind.example"
            }
        [erased] = await control_events(db, "control.erase")
        assert (erased.actor, erased.reasons, erased.lead_id) == (
            BY,
            ["GDPR art. 17 request"],
            None,
        )

        # A new import of the address is still suppressed: reported, no lead.
        csv = tmp_path / "again.csv"
        csv.write_text(f"email,first_name\n{ADDRESS},Dana\nbo@contoso.example,Bo\n")
        imported = await import_leads(db, csv, w.clock.now())
        assert (imported.created, imported.suppressed) == (1, 1)

        # They write again, asking to be unsubscribed: screening keeps the
        # message row it needs, writes no clear suppression, makes no lead.
        w.deliver(buyer_mail(ADDRESS, touch, "Please unsubscribe me.", subject="unsubscribe"))
        await w.hour()
        async with db.transaction() as session:
            await screening_suppress(session, ADDRESS, reason="t", source="t", now=w.clock.now())
        assert set(occurrences(database, ADDRESS)) <= {
            "inbound_messages.raw",
            "inbound_messages.from_addr",
            "inbound_messages.headers",
            "inbound_messages.result",
            "events.reasons",
        }
        async with db.sessions() as session:
            assert await session.scalar(select(Lead).where(Lead.email == ADDRESS)) is None
            assert await session.scalar(select(func.count()).select_from(Suppression)) == 1
            kinds = list(
                await session.scalars(
                    select(InboundMessage.kind).where(InboundMessage.from_addr == ADDRESS)
                )
            )
        assert kinds == ["unsubscribe"]

        # Unsuppress matches the erased address by its HMAC.
        async with db.transaction() as session:
            which = await controls.unsuppress(
                session, ADDRESS, actor=BY, reason="they came back", now=w.clock.now()
            )
        assert which == "hmac"


async def test_suppression_checks_fail_closed_without_the_key(sqlite_db: Database) -> None:
    """Keyed entries and no installed key: the check refuses rather than let mail through."""
    key = controls.PrivacyKey(b"k" * 32)
    async with sqlite_db.transaction() as session:
        session.add(
            Suppression(
                address_hmac=key.address_hmac(ADDRESS), reason="erased", source="erase",
                created_at=T0,
            )
        )  # fmt: skip
    saved, controls._installed = controls._installed, None
    try:
        async with sqlite_db.sessions() as session:
            with pytest.raises(controls.PrivacyKeyMissing):
                await controls.suppressed_among(session, {ADDRESS})
            assert await controls.suppressed_among(session, {ADDRESS}, key) == {ADDRESS}
    finally:
        controls._installed = saved


# -- retention ----------------------------------------------------------------


async def test_retention_strips_old_raw_mail_and_keeps_decisions(
    sqlite_db: Database, make_config: Any
) -> None:
    """Mail older than raw_mail_days loses its bytes and bodies; decisions and newer mail stay."""
    loaded = make_config("[privacy]\nraw_mail_days = 30\n")
    old, new = T0 - timedelta(days=40), T0 - timedelta(days=2)
    raw = b"From: dana@northwind.example\r\nSubject: hi\r\n\r\nWhat does it cost?\r\n"
    async with sqlite_db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        lead = await create_lead(session, Lead(email=ADDRESS), actor="t", reason="t", now=old)
        ids = {}
        for name, at in (("old", old), ("new", new)):
            message = InboundMessage(
                mailbox_id=box.id, source_id=name, message_id=f"<{name}@x>", raw=raw,
                size=len(raw), headers={"subject": ["hi"]}, from_addr=ADDRESS, subject="hi",
                received_at=at, stage="act", status="done", not_before=at, kind="reply",
                lead_id=lead.id,
                result={"visible_text": "What does it cost?", "intent": "question"},
            )  # fmt: skip
            mail = OutboundMessage(
                mailbox_id=box.id, lead_id=lead.id, message_id=f"<o{name}@acme.example>",
                idempotency_key=name, kind="reply", to_addrs=[ADDRESS], subject="Re: hi",
                raw=b"the sent bytes", status="sent", not_before=at, created_at=at, sent_at=at,
                payload={"mailbox": "sales", "text": "It costs 10 EUR.", "attachments": []},
            )  # fmt: skip
            session.add_all([message, mail])
            await session.flush()
            repo.add_event(
                session, "decision", actor="t", now=at, lead_id=lead.id, inbound_id=message.id,
                reasons=["intent question"],
            )  # fmt: skip
            ids[name] = (message.id, mail.id)

    assert await controls.run_retention(sqlite_db, loaded, T0) == 2
    assert await controls.run_retention(sqlite_db, loaded, T0) == 0  # already stripped
    async with sqlite_db.sessions() as session:
        old_in = await session.get(InboundMessage, ids["old"][0])
        new_in = await session.get(InboundMessage, ids["new"][0])
        old_out = await session.get(OutboundMessage, ids["old"][1])
        new_out = await session.get(OutboundMessage, ids["new"][1])
        assert old_in and new_in and old_out and new_out
        assert (old_in.raw, old_in.headers, old_in.result) == (
            b"",
            {},
            {"visible_text": "", "intent": "question"},
        )
        assert old_in.kind == "reply" and old_in.lead_id == lead.id
        assert old_out.raw is None and old_out.payload["text"] == "" and old_out.sent_at == old
        assert new_in.raw == raw and new_in.result["visible_text"] == "What does it cost?"
        assert new_out.raw == b"the sent bytes" and new_out.payload["text"] == "It costs 10 EUR."
        decisions = await session.scalar(
            select(func.count()).select_from(Event).where(Event.kind == "decision")
        )
        assert decisions == 2
    [event] = await control_events(sqlite_db, "control.retention")
    assert event.data == {"inbound": 1, "outbound": 1, "drafts": 0}
    assert await controls.run_retention(sqlite_db, make_config(""), T0) == 0  # 0 keeps all


async def test_a_claimed_job_runs_once_a_period_and_a_released_one_again_soon(
    sqlite_db: Database,
) -> None:
    """claim_run lets one run through per period; release_run (a failed run)
    lets the next claim through after retry_in instead of a whole period."""
    day, hour = timedelta(days=1), timedelta(hours=1)
    assert await claim_run(sqlite_db, "job.test", day, T0)
    assert not await claim_run(sqlite_db, "job.test", day, T0 + timedelta(hours=23))
    assert await claim_run(sqlite_db, "job.test", day, T0 + day)
    await release_run(sqlite_db, "job.test", day, T0 + day, retry_in=hour)
    assert not await claim_run(sqlite_db, "job.test", day, T0 + day + timedelta(minutes=59))
    assert await claim_run(sqlite_db, "job.test", day, T0 + day + hour)
    assert not await claim_run(sqlite_db, "job.test", day, T0 + day + 2 * hour)


async def test_failed_retention_is_tried_again_within_the_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's daily retention run fails once (an injected fault): it
    runs again an hour later, not the next day, and then once a day."""
    calls: list[datetime] = []
    real = controls.run_retention

    async def flaky(db: Database, loaded: Any, now: datetime, **kw: Any) -> int:
        calls.append(now)
        if len(calls) == 1:
            raise OSError("disk full")  # a fault the real database does not make on demand
        return await real(db, loaded, now, **kw)

    monkeypatch.setattr(controls, "run_retention", flaky)
    async with world(tmp_path, extra="[privacy]\nraw_mail_days = 30\n") as w:
        start = w.clock.now()
        for minutes in (0, 30, 59, 60, 90, 24 * 60 + 59, 24 * 60 + 60):
            w.clock.advance(start + timedelta(minutes=minutes) - w.clock.now())
            await w.service.periodic_jobs()
    assert [c - start for c in calls] == [
        timedelta(0),
        timedelta(hours=1),
        timedelta(hours=25),
    ]
    assert "retention failed; will try again in 1:00:00" in caplog.text


# -- the command line ---------------------------------------------------------

CONFIG = """
[service]
state_dir = "var"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
path = "mail"

[smtp]
host = "127.0.0.1"
port = 2525

[validation]
dns = false

[privacy]
raw_mail_days = 30
"""


def test_the_commands_record_who_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command does its control, exits 0 / 1 as cli.py defines, and records the actor."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config)]

    async def seed() -> None:
        db = await open_database(load(config).database_url)
        async with db.transaction() as session:
            await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
            lead = await create_lead(session, Lead(email=ADDRESS), actor="t", reason="t", now=T0)
            await transition(session, lead, State.INVALID, actor="t", reason="5.1.1", now=T0)
            await create_lead(
                session, Lead(email="kim@contoso.example"), actor="t", reason="t", now=T0
            )
        await db.dispose()

    asyncio.run(seed())

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([*argv, *args])
        out, err = capsys.readouterr()
        return code, out, err

    with pytest.raises(SystemExit):  # --reason is required to pause
        cli.main(["pause", *args])
    capsys.readouterr()
    assert run("pause", "--reason", "audit")[:2] == (0, "all sending paused\n")
    assert run("resume", "--by", "ann")[:2] == (0, "all sending resumed\n")
    assert run("pause", "--mailbox", "sales", "--reason", "x")[0] == 0
    assert run("resume", "--mailbox", "sales")[1] == "mailbox sales sends again\n"
    assert run("resume", "--mailbox", "sales")[1] == "mailbox sales was not paused\n"
    code, _, err = run("resume", "--mailbox", "nope")
    assert code == 1 and "no mailbox named 'nope'" in err
    assert run("pause", "--lead", "kim@contoso.example", "--reason", "call")[0] == 0
    assert run("resume", "--lead", "kim@contoso.example")[0] == 0
    code, _, err = run("pause", "--lead", ADDRESS, "--reason", "x")
    assert code == 1 and "nothing to pause" in err  # invalid: the agent does not mail it

    assert run("suppress", "x@contoso.example", "--reason", "asked")[0] == 0
    code, out, _ = run("suppressions", "--json")
    assert [json.loads(line)["address"] for line in out.splitlines()] == ["x@contoso.example"]
    assert run("unsuppress", "x@contoso.example")[0] == 0
    code, _, err = run("unsuppress", "x@contoso.example")
    assert code == 1 and "x@contoso.example is not suppressed" in err

    code, out, _ = run("leads", "set-email", ADDRESS, "dana@northwind.example.com")
    assert code == 0 and "(new)" in out
    code, out, _ = run(
        "leads", "erase", "dana@northwind.example.com", "--reason", "request", "--json"
    )
    assert code == 0 and json.loads(out)["deleted"]["leads"] == 1
    code, out, _ = run("retention", "run", "--json")
    assert code == 0 and json.loads(out) == {"raw_mail_days": 30, "stripped": 0}

    async def actors() -> list[tuple[str, str]]:
        db = await open_database(load(config).database_url)
        async with db.sessions() as session:
            found = await session.execute(
                select(Event.kind, Event.actor)
                .where(Event.kind.like("control.%"))
                .order_by(Event.id)
            )
            rows = [(kind, actor) for kind, actor in found]
        await db.dispose()
        return rows

    me = controls.default_actor()
    assert asyncio.run(actors()) == [
        ("control.pause", me),
        ("control.resume", "admin:ann"),
        ("control.pause", me),
        ("control.resume", me),
        ("control.pause", me),
        ("control.resume", me),
        ("control.suppress", me),
        ("control.unsuppress", me),
        # control.set_email was the erased lead's: it went with the lead.
        ("control.erase", me),
    ]


async def test_erase_and_keyed_checks_on_each_backend(db: Database) -> None:
    """Erase, its final scan and the keyed suppression check on SQLite and PostgreSQL."""
    key = controls.PrivacyKey(b"0123456789abcdef0123456789abcdef")
    raw = f"From: Dana <{ADDRESS}>\r\nCc: ana@contoso.example\r\n\r\nHello\r\n".encode()
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        dana = await create_lead(session, Lead(email=ADDRESS), actor="t", reason="t", now=T0)
        ana = await create_lead(
            session, Lead(email="ana@contoso.example", custom={"colleague": ADDRESS.upper()}),
            actor="t", reason="t", now=T0,
        )  # fmt: skip
        for source, sender, lead_id in (("1", ADDRESS, dana.id), ("2", ana.email, ana.id)):
            session.add(
                InboundMessage(
                    mailbox_id=box.id, source_id=source, message_id=f"<{source}@x>",
                    raw=raw, size=len(raw), headers={"cc": [ADDRESS]}, from_addr=sender,
                    received_at=T0, stage="act", status="done", not_before=T0, lead_id=lead_id,
                )
            )  # fmt: skip
    async with db.transaction() as session:
        report = await controls.erase(session, ADDRESS, actor=BY, reason="request", now=T0, key=key)
    assert report.deleted["inbound_messages"] == 1
    assert report.redacted == {
        "leads.custom": 1,
        "inbound_messages.raw": 1,
        "inbound_messages.headers": 1,
    }
    async with db.sessions() as session:
        for model in (Lead, InboundMessage, Suppression, Event):
            for row in await session.scalars(select(model)):
                values = [getattr(row, c.key) for c in model.__table__.columns]
                assert ADDRESS not in repr(values).lower(), model
        kept = await session.get(InboundMessage, 2)
        assert kept is not None and b"[erased]" in kept.raw
        assert await controls.suppressed_among(session, {ADDRESS}, key) == {ADDRESS}


async def test_an_erased_person_trusted_by_dmarc_is_not_made_a_lead_again(tmp_path: Path) -> None:
    """Mail from an erased address that would make a hand-raiser (dmarc=pass
    from our border server) is kept and ignored: the erase is not undone.
    Another trusted stranger still becomes a lead."""
    async with world(tmp_path, identity='authserv_id = "mx.acme.example"\n') as w:
        db = w.service.db
        assert db is not None
        await w.lead(ADDRESS)
        async with db.transaction() as session:
            await controls.erase(
                session, ADDRESS, actor=BY, reason="GDPR art. 17 request", now=w.clock.now(),
                key=controls.use_privacy_key(w.service.loaded), own_addresses=[],
            )  # fmt: skip

        def trusted(sender: str, n: int) -> bytes:
            return (
                "Authentication-Results: mx.acme.example; dmarc=pass header.from=example\r\n"
                f"From: {sender}\r\nTo: sales@acme.example\r\nSubject: Hello again\r\n"
                f"Message-ID: <again-{n}@buyer.example>\r\n\r\nWe would like a demo.\r\n"
            ).encode()

        w.deliver(trusted(ADDRESS, 1))
        w.deliver(trusted("new@contoso.example", 2))
        await w.hour()
        async with db.sessions() as session:
            assert await session.scalar(select(Lead).where(Lead.email == ADDRESS)) is None
            assert await session.scalar(select(Lead).where(Lead.email == "new@contoso.example"))
            kinds = dict(
                (await session.execute(select(InboundMessage.from_addr, InboundMessage.kind))).all()
            )
        assert kinds == {ADDRESS: "ignored", "new@contoso.example": "new_inbound"}


async def test_the_service_status_line_names_a_pause_of_all_sending(tmp_path: Path) -> None:
    """systemd's STATUS= shows who paused all sending, and why."""
    async with world(tmp_path) as w:
        assert w.service.db is not None
        async with w.service.db.transaction() as session:
            await controls.pause(session, actor=BY, reason="relay migration", now=w.clock.now())
        assert "all sending paused by admin:ann: relay migration" in await w.service.status_line()
        async with w.service.db.transaction() as session:
            await controls.resume(session, actor=BY, reason="done", now=w.clock.now())
        assert "all sending paused" not in await w.service.status_line()
