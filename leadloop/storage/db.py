"""Engines, sessions and migrations.

SQLite is opened in WAL mode with foreign keys on and a busy timeout;
PostgreSQL through asyncpg.  Migrations are Alembic scripts shipped as
package data and applied under a lock, so two processes never migrate at
once: an advisory lock on PostgreSQL, a lock file beside a SQLite database.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger("leadloop.storage.db")

# Any fixed 64-bit number works; this one spells "leadloop" in ASCII.
MIGRATION_LOCK_ID = 0x6C6561646C6F6F70


class DatabaseError(Exception):
    """The database cannot be reached or used."""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer leadloop than this one."""


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str, *, pool_size: int = 5, busy_timeout: float = 5.0) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout}
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_size"] = pool_size
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            timeout_ms = int(busy_timeout * 1000)
            event.listen(
                self.engine.sync_engine,
                "connect",
                lambda dbapi_conn, _record: _sqlite_pragmas(dbapi_conn, timeout_ms),
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def sqlite_path(self) -> Path | None:
        database = make_url(self.url).database
        if self.is_sqlite and database and database != ":memory:":
            return Path(database)
        return None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def upgrade(self) -> None:
        """Apply every migration, under the migration lock."""
        async with self._file_lock():
            await self._migrate()

    async def _migrate(self) -> None:
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
            await conn.run_sync(_upgrade)

    async def check_schema(self) -> None:
        """Refuse a schema this version does not know (migrated by a newer leadloop)."""
        async with self.engine.connect() as conn:
            current = await conn.run_sync(_current_revision)
        known = {rev.revision for rev in _script().walk_revisions()}
        if current is not None and current not in known:
            raise SchemaTooNew(
                f"the database is at schema {current}, which this leadloop does not know; "
                "it was migrated by a newer version"
            )

    async def start(self) -> None:
        """Check the schema version, then migrate to the newest.  On SQLite the
        whole of it, first connection included, is under the migration lock:
        a new file's first connection switches it to WAL, which needs the
        file to itself and fails at once ("database is locked"), busy timeout
        or not, when another first connection is doing the same."""
        async with self._file_lock():
            await self.check_schema()
            await self._migrate()

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        """The SQLite migration lock.  Polled, not a blocking ``flock``: a
        blocking one would stop the event loop, and with it whatever in this
        process holds the lock and would release it (two databases on one
        file in one process, as the tests open)."""
        path = self.sqlite_path
        if path is None:
            yield
            return
        lock_path = path.with_name(path.name + ".migrate.lock")
        with open(lock_path, "a+") as handle:  # noqa: ASYNC230 - a local lock file
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_conn: Any, timeout_ms: int) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    location = resources.files("leadloop.storage") / "migrations"
    cfg.set_main_option("script_location", str(location))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return _script().get_current_head()


async def open_database(url: str, *, pool_size: int = 5, busy_timeout: float = 5.0) -> Database:
    """Open, check and migrate; raise :class:`DatabaseError` with a clear reason."""
    db = Database(url, pool_size=pool_size, busy_timeout=busy_timeout)
    try:
        await db.start()
    except SchemaTooNew:
        await db.dispose()
        raise
    except (TimeoutError, OSError) as exc:
        await db.dispose()
        raise DatabaseError(f"cannot reach the database: {exc}") from exc
    except Exception as exc:
        await db.dispose()
        if _is_connection_problem(exc):
            raise DatabaseError(f"cannot open the database: {exc}") from exc
        raise
    return db


def _is_connection_problem(exc: BaseException) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)
