"""The stage runner: per-stage commits, retries, quarantine, recovery after a crash."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from leadloop.agent.pipeline import (
    STAGE_NAMES,
    Done,
    Next,
    Outcome,
    PassThrough,
    Pipeline,
    RetryAt,
    Stage,
    StageContext,
    retry_quarantined,
)
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Event, InboundMessage


class Poisoned:
    """A screen stage that raises on messages whose subject is 'poison' while armed."""

    name = "screen"

    def __init__(self) -> None:
        self.armed = True
        self.calls = 0

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        self.calls += 1
        if self.armed and item.subject == "poison":
            raise RuntimeError("cannot digest this")
        return Next(reasons=["screen: fine"], updates={"kind": "reply"})


def stages_with(first: Stage) -> list[Stage]:
    return [first, *(PassThrough(name) for name in STAGE_NAMES[1:])]


async def store(db: Database, clock: ManualClock, subjects: list[str]) -> list[int]:
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        return await repo.store_inbound(
            session,
            box.id,
            [
                repo.NewInbound(
                    source_id=str(n),
                    raw=f"Subject: {s}\r\n\r\nhi".encode(),
                    message_id=f"<{n}@buyer.example>",
                    message_id_synthetic=False,
                    from_addr="b@buyer.example",
                    subject=s,
                    sent_at=None,
                    headers={},
                    defects=[],
                    oversized=False,
                )
                for n, s in enumerate(subjects)
            ],
            clock.now(),
        )


async def statuses(db: Database) -> dict[str, int]:
    async with db.transaction() as session:
        return await repo.count_by_status(session)


async def test_poisoned_message_quarantined_after_three_attempts(
    db: Database, clock: ManualClock
) -> None:
    """One message that makes a stage raise is quarantined on its third failure; the 999
    around it are processed; a retry runs it again."""
    subjects = [f"hello {n}" for n in range(1000)]
    subjects[500] = "poison"
    ids = await store(db, clock, subjects)
    screen = Poisoned()
    pipeline = Pipeline(
        db,
        clock,
        owner="t",
        stages=stages_with(screen),
        retry_backoff=timedelta(seconds=30),
    )
    first = await pipeline.run_pending()
    assert (first.processed, first.done, first.retried) == (1000, 999, 1)
    for _ in range(2):
        clock.advance(timedelta(minutes=5))
        await pipeline.run_pending()
    assert await statuses(db) == {"done": 999, "quarantined": 1}
    async with db.transaction() as session:
        poison = await session.get(InboundMessage, ids[500])
        assert poison is not None
        assert (poison.attempts, poison.stage) == (3, "screen")
        assert "RuntimeError: cannot digest this" in (poison.last_error or "")
        kinds = (
            await session.scalars(
                select(Event.kind).where(Event.inbound_id == poison.id).order_by(Event.id)
            )
        ).all()
    assert kinds == ["inbound.failed", "inbound.failed", "inbound.quarantined"]

    screen.armed = False
    await retry_quarantined(db, clock, ids[500], actor="test")
    await pipeline.run_pending()
    assert await statuses(db) == {"done": 1000}


async def test_each_stage_commits_and_records(sqlite_db: Database, clock: ManualClock) -> None:
    """A message passes all five stages, each leaving an event, and ends done."""
    [msg] = await store(sqlite_db, clock, ["hi"])
    stats = await Pipeline(sqlite_db, clock, owner="t").run_pending()
    assert stats.done == 1
    async with sqlite_db.transaction() as session:
        row = await session.get(InboundMessage, msg)
        kinds = (
            await session.scalars(
                select(Event.kind).where(Event.inbound_id == msg).order_by(Event.id)
            )
        ).all()
    assert row is not None and (row.stage, row.status, row.claimed_by) == ("done", "done", None)
    assert kinds == [f"stage.{name}" for name in STAGE_NAMES]


async def test_done_ends_early_and_retry_at_waits(sqlite_db: Database, clock: ManualClock) -> None:
    """Done skips the remaining stages; RetryAt puts the message back until its time."""

    class Screen:
        name = "screen"

        async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
            if item.subject == "wait":
                return RetryAt(timedelta(hours=1), "waiting for the thread to settle")
            return Done(reasons=["bounce handled"], updates={"kind": "bounce"})

    done_id, wait_id = await store(sqlite_db, clock, ["bounce", "wait"])
    pipeline = Pipeline(sqlite_db, clock, owner="t", stages=stages_with(Screen()))
    await pipeline.run_pending()
    async with sqlite_db.transaction() as session:
        done = await session.get(InboundMessage, done_id)
        wait = await session.get(InboundMessage, wait_id)
        assert done is not None and wait is not None
        assert (done.status, done.kind) == ("done", "bounce")
        assert (wait.status, wait.attempts) == ("pending", 0)
        assert wait.not_before == clock.now() + timedelta(hours=1)


async def test_recovery_counts_a_crash_as_an_attempt(
    sqlite_db: Database, clock: ManualClock
) -> None:
    """Rows left claimed return to pending with attempts + 1; the third time, quarantined."""
    [msg] = await store(sqlite_db, clock, ["hi"])
    pipeline = Pipeline(sqlite_db, clock, owner="t")
    for expected in (1, 2):
        clock.advance(timedelta(hours=1))  # past the retry backoff
        async with sqlite_db.transaction() as session:
            assert await repo.claim_inbound(session, "dead", clock.now(), timedelta(minutes=1), 1)
        assert await pipeline.recover(all_claims=True) == 1
        async with sqlite_db.transaction() as session:
            row = await session.get(InboundMessage, msg)
            assert row is not None and (row.status, row.attempts) == ("pending", expected)
    clock.advance(timedelta(hours=1))
    async with sqlite_db.transaction() as session:
        assert await repo.claim_inbound(session, "dead", clock.now(), timedelta(minutes=1), 1)
    await pipeline.recover(all_claims=True)
    async with sqlite_db.transaction() as session:
        row = await session.get(InboundMessage, msg)
        assert row is not None and row.status == "quarantined"
        assert "interrupted in stage screen" in (row.last_error or "")


async def test_quarantine_cli(make_config: Callable[[str], LoadedConfig], tmp_path: Path) -> None:
    """`quarantine list`, `show` and `retry` work on the daemon's database, and a retried
    message is processed by the next `run --once`."""
    loaded = make_config('[[mailboxes]]\nname = "sales"\naddress = "sales@acme.example"\n')
    db = await open_database(loaded.database_url)
    clock = ManualClock(__import__("conftest").T0)
    ids = await store(db, clock, ["poison", "fine"])
    async with db.transaction() as session:
        await session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == ids[0])
            .values(status="quarantined", attempts=3, last_error="RuntimeError: boom")
        )
    await db.dispose()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "leadloop", "--config", str(loaded.file), *args],
            capture_output=True,
            text=True,
        )

    listed = cli("quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["id"], row["subject"], row["error"]) == (ids[0], "poison", "RuntimeError: boom")
    shown = cli("quarantine", "show", str(ids[0]))
    assert json.loads(shown.stdout)["last_error"] == "RuntimeError: boom"
    assert cli("quarantine", "retry", str(ids[1])).returncode == 1  # not quarantined
    assert cli("quarantine", "retry", str(ids[0])).returncode == 0
    ran = cli("run", "--once")
    assert ran.returncode == 0, ran.stderr
    db = await open_database(loaded.database_url)
    async with db.transaction() as session:
        count = await session.scalar(
            select(func.count()).select_from(InboundMessage).where(InboundMessage.status == "done")
        )
    await db.dispose()
    assert count == 2
