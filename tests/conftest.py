from __future__ import annotations

import itertools
import logging
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig, loads
from leadloop.storage.db import Database, open_database

sys.path.insert(0, str(Path(__file__).parent))

from postgres import create_database, postgres_cluster

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
FIXTURES = Path(__file__).parent / "fixtures"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
_db_names = itertools.count()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put the root logger back after each test.  The CLI, run in-process,
    calls ``leadloop.logs.setup``, whose handler writes to the ``sys.stderr``
    of that moment: pytest's capture stream, closed when the test ends.  Left
    in place, every later log line prints a "Logging error" traceback."""
    root = logging.getLogger()
    handlers, level, excepthook = root.handlers[:], root.level, sys.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook = excepthook


@pytest.fixture(scope="session")
def postgres_base() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A freshly migrated database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/leadloop.db"
    else:
        base = request.getfixturevalue("postgres_base")
        url = await create_database(base, f"t{next(_db_names)}")
    database = await open_database(url)
    yield database
    await database.dispose()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite+aiosqlite:///{tmp_path}/leadloop.db")
    yield database
    await database.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[[str], LoadedConfig]:
    """Load a config from TOML text written into tmp_path (state under tmp_path/var)."""

    def make(text: str = "") -> LoadedConfig:
        body = textwrap.dedent(text)
        file = tmp_path / "config.toml"
        file.write_text(body)
        return loads(body, file)

    return make


# IMAP servers for the IMAP channel's tests (tests/imap_servers.py).
from imap_servers import (  # noqa: E402
    DOVECOT_MISSING,
    Dovecot,
    ImapServer,
    dovecot_installed,
    dovecot_server,
    pymap_server,
)


@pytest.fixture
async def pymap_imap() -> AsyncIterator[ImapServer]:
    """A fresh in-process pymap server (dict backend) with one user."""
    async with pymap_server() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_base() -> Iterator[Dovecot]:
    """One throwaway Dovecot for the session; fails (no skip) when not installed."""
    if not dovecot_installed():
        pytest.fail(DOVECOT_MISSING, pytrace=False)
    with dovecot_server() as dovecot:
        yield dovecot


@pytest.fixture
def dovecot_imap(dovecot_base: Dovecot) -> ImapServer:
    """A fresh user on the session's Dovecot (running again if a test stopped it)."""
    dovecot_base.start()
    return dovecot_base.new_user()


@pytest.fixture(params=["pymap", "dovecot"])
def imap_server(request: pytest.FixtureRequest) -> ImapServer:
    """Each test twice: on pymap (fast) and on Dovecot (the reference)."""
    server: ImapServer = request.getfixturevalue(f"{request.param}_imap")
    return server
