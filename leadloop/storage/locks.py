"""One poller per mailbox, and one cadence planner, across the daemons that
share a PostgreSQL database.

Each mailbox (and the planner) has a session-level advisory lock (``pg_try_advisory_lock``),
held on a connection of its own for as long as this daemon polls it.  When
the holder dies its connection closes, PostgreSQL releases the lock, and the
next daemon to try (at its next poll, seconds later) takes the mailbox over.
A daemon that loses the connection stops polling until it holds the lock
again.  Every daemon still processes and sends: only fetching is exclusive.
On SQLite there is one daemon per database (the instance lock), so the lock
is always held.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from leadloop.storage.db import Database

log = logging.getLogger("leadloop.storage.locks")


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for *name* (advisory locks take bigint)."""
    digest = hashlib.sha256(f"leadloop.{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLock:
    """A lock this daemon holds for as long as it does a job no other daemon
    may do at the same time (``mailbox:<name>``: polling it; ``planner``:
    the cadence tick)."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.key = lock_key(name)
        self._conn: AsyncConnection | None = None
        self._failing = False

    @property
    def held(self) -> bool:
        return self.db.is_sqlite or self._conn is not None

    async def hold(self) -> bool:
        """True while this daemon may poll the mailbox: the lock is (still,
        or now) ours.  Never raises: a database that cannot be reached means
        not holding it."""
        if self.db.is_sqlite:
            return True
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                return True
            except Exception as exc:
                log.warning("lock=%s lost: %s", self.name, exc)
                await self._drop()
        try:
            conn = await self.db.engine.connect()
        except Exception as exc:
            self._failed(exc)
            return False
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key})
            ).scalar()
        except Exception as exc:
            self._failed(exc)
            await conn.close()
            return False
        self._failing = False
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    def _failed(self, exc: Exception) -> None:
        """Logged once per outage, not at every poll."""
        if not self._failing:
            log.warning("lock=%s cannot be taken: %s", self.name, exc)
        self._failing = True

    async def release(self) -> None:
        if self._conn is None:
            return
        try:
            await self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        except Exception:
            log.debug("lock=%s: unlock failed; closing the connection frees it", self.name)
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                await conn.invalidate()
