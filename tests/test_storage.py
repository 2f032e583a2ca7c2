"""Storage: the real migrations on SQLite and PostgreSQL, and the repository on both."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text, update

from leadloop.clock import ManualClock
from leadloop.storage import repo
from leadloop.storage.db import Database, SchemaTooNew, head_revision, open_database
from leadloop.storage.models import Base, InboundMessage, ScheduledTask


def inbound(source_id: str, message_id: str) -> repo.NewInbound:
    return repo.NewInbound(
        source_id=source_id,
        raw=b"Subject: x\r\n\r\nbody",
        message_id=message_id,
        message_id_synthetic=False,
        from_addr="a@buyer.example",
        subject="x",
        sent_at=None,
        headers={"subject": ["x"]},
        defects=[],
        oversized=False,
    )


async def test_migrations_match_models(db: Database) -> None:
    """The migrated schema is exactly what the models declare (no drift), on both backends."""
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    assert diff == []
    assert version == head_revision()


async def test_sqlite_pragmas(sqlite_db: Database) -> None:
    """SQLite runs in WAL mode with foreign keys enforced and a busy timeout."""
    async with sqlite_db.engine.connect() as conn:
        assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert await conn.scalar(text("PRAGMA busy_timeout")) == 5000


async def test_upgrade_twice_is_harmless(db: Database) -> None:
    """Migrating an up-to-date database changes nothing."""
    await db.upgrade()
    await db.check_schema()


async def test_concurrent_migrations_wait_for_each_other(tmp_path: Path) -> None:
    """Two processes' worth of migrators on one fresh SQLite file do not collide."""
    url = f"sqlite+aiosqlite:///{tmp_path}/race.db"
    first, second = Database(url), Database(url)
    try:
        await asyncio.gather(
            asyncio.to_thread(asyncio.run, first.upgrade()),
            asyncio.to_thread(asyncio.run, second.upgrade()),
        )
    finally:
        await first.dispose()
        await second.dispose()
    again = await open_database(url)
    await again.dispose()


# A blocking lock here would stop the event loop for good, so the limit is the
# test's verdict, not a timing assertion.
@pytest.mark.timeout(60)
async def test_two_migrators_on_one_event_loop_take_turns(tmp_path: Path) -> None:
    """Two databases on one SQLite file, opened at once in one process (as
    the tests do): the second waits for the migration lock without
    stopping the loop that must let the first release it."""
    url = f"sqlite+aiosqlite:///{tmp_path}/one-loop.db"
    first, second = await asyncio.gather(open_database(url), open_database(url))
    try:
        for db in (first, second):
            async with db.engine.connect() as conn:
                version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            assert version == head_revision()
    finally:
        await first.dispose()
        await second.dispose()


async def test_refuses_newer_schema(db: Database) -> None:
    """A database migrated by a newer leadloop is refused with a clear error."""
    async with db.transaction() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNew, match="9999_future"):
        await db.check_schema()


async def test_store_inbound_is_idempotent(db: Database, clock: ManualClock) -> None:
    """(mailbox, source id) stored twice is one row; the cursor moves in the same commit."""
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        first = await repo.store_inbound(session, box.id, [inbound("1", "<a@x>")], clock.now())
        await repo.advance_cursor(session, box.id, {"uid": 1}, clock.now())
    async with db.transaction() as session:
        again = await repo.store_inbound(
            session, box.id, [inbound("1", "<a@x>"), inbound("2", "<b@x>")], clock.now()
        )
    assert len(first) == 1 and len(again) == 1
    async with db.transaction() as session:
        rows = (await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all()
        box_again = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
    assert [r.source_id for r in rows] == ["1", "2"]
    assert box_again.cursor == {"uid": 1}
    assert all(r.status == repo.PENDING and r.stage == "screen" for r in rows)


async def test_same_message_id_in_two_mailboxes(db: Database, clock: ManualClock) -> None:
    """A Message-ID already seen in any mailbox is stored but marked done and never processed."""
    async with db.transaction() as session:
        a = await repo.ensure_mailbox(session, "a", "maildir", "a@acme.example")
        b = await repo.ensure_mailbox(session, "b", "maildir", "b@acme.example")
        [first] = await repo.store_inbound(session, a.id, [inbound("1", "<same@x>")], clock.now())
        [second] = await repo.store_inbound(session, b.id, [inbound("9", "<same@x>")], clock.now())
    async with db.transaction() as session:
        dup = await session.get(InboundMessage, second)
        assert dup is not None
        assert (dup.duplicate_of, dup.status, dup.kind) == (first, repo.DONE, "ignored")
        claimed = await repo.claim_inbound(session, "w", clock.now(), timedelta(minutes=1), 10)
    assert claimed == [first]


async def test_claims_and_stale_claims(db: Database, clock: ManualClock) -> None:
    """Claims skip future work; expired leases are found as stale, live ones are not."""
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        ids = await repo.store_inbound(
            session, box.id, [inbound(str(n), f"<{n}@x>") for n in range(3)], clock.now()
        )
        await session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == ids[2])
            .values(not_before=clock.now() + timedelta(hours=1))
        )
    async with db.transaction() as session:
        claimed = await repo.claim_inbound(session, "w1", clock.now(), timedelta(minutes=5), 10)
    assert claimed == ids[:2]
    async with db.transaction() as session:
        assert await repo.claim_inbound(session, "w2", clock.now(), timedelta(minutes=5), 10) == []
        assert await repo.stale_claims(session, clock.now(), all_claims=False) == []
    later = clock.advance(timedelta(minutes=6))
    async with db.transaction() as session:
        stale = await repo.stale_claims(session, later, all_claims=False)
        assert sorted(r.id for r in stale) == ids[:2]


async def test_schedule_dedupe_moves_the_task(db: Database, clock: ManualClock) -> None:
    """Scheduling with the same key moves the pending task instead of adding a second one."""
    async with db.transaction() as session:
        await repo.schedule(session, "x", clock.now(), now=clock.now(), dedupe_key="k")
    async with db.transaction() as session:
        await repo.schedule(
            session, "x", clock.now() + timedelta(days=1), now=clock.now(), dedupe_key="k"
        )
    async with db.transaction() as session:
        tasks = (await session.scalars(select(ScheduledTask))).all()
        assert len(tasks) == 1 and tasks[0].not_before == clock.now() + timedelta(days=1)
        assert await repo.claim_due(session, "w", clock.now(), timedelta(minutes=1), 10) == []


async def test_same_message_id_twice_in_one_batch(db: Database, clock: ManualClock) -> None:
    """Two copies of one Message-ID in a single fetch: the second is the duplicate."""
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        first, second = await repo.store_inbound(
            session, box.id, [inbound("1", "<twin@x>"), inbound("2", "<twin@x>")], clock.now()
        )
    async with db.transaction() as session:
        row = await session.get(InboundMessage, second)
        assert row is not None and (row.duplicate_of, row.kind) == (first, "ignored")
