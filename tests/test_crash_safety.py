"""A daemon killed by SIGKILL at the worst moments loses nothing and doubles nothing.

Each test runs leadloop in a child process (``crash_child.py``) that kills
itself at one point of a message's life, then restarts with ``leadloop run
--once`` and reads the real SQLite database and the real Maildir afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from conftest import T0
from imap_servers import ImapServer

CHILD = Path(__file__).with_name("crash_child.py")
MESSAGES = 20
# Environment that would move the state directory or the config file away from tmp_path.
FOREIGN_ENV = ("STATE_DIRECTORY", "LEADLOOP_CONFIG", "CREDENTIALS_DIRECTORY")
SUBPROCESS_TIMEOUT = 120


@dataclass
class Site:
    """A configured state directory with mail waiting in its Maildir."""

    config: Path
    state: Path
    message_ids: list[str]

    @property
    def new(self) -> Path:
        return self.state / "mail" / "new"

    @property
    def cur(self) -> Path:
        return self.state / "mail" / "cur"

    def rows(self) -> list[sqlite3.Row]:
        """Every inbound row, straight from the database file."""
        connection = sqlite3.connect(self.state / "leadloop.db")
        connection.row_factory = sqlite3.Row
        try:
            return connection.execute(
                "SELECT message_id, source_id, status, stage, attempts, duplicate_of"
                " FROM inbound_messages ORDER BY id"
            ).fetchall()
        finally:
            connection.close()


def make_site(tmp_path: Path, *, fetch_batch: int = 200, retry_backoff: str = "30s") -> Site:
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [service]
            state_dir = "./var"
            log_level = "warning"

            [database]
            url = "sqlite:///leadloop.db"

            [pipeline]
            retry_backoff = "{retry_backoff}"

            [[mailboxes]]
            name = "sales"
            kind = "maildir"
            address = "sales@acme.example"
            path = "mail"
            fetch_batch = {fetch_batch}
            acknowledge = "seen"

            [smtp]
            host = "127.0.0.1"
            port = 2525
            """
        )
    )
    state = tmp_path / "var"
    for sub in ("new", "cur", "tmp"):
        (state / "mail" / sub).mkdir(parents=True)
    message_ids = []
    for number in range(MESSAGES):
        message = EmailMessage()
        message["From"] = f"Buyer {number} <buyer{number}@customer.example>"
        message["To"] = "sales@acme.example"
        message["Subject"] = f"Question {number} about pricing"
        message["Date"] = format_datetime(T0)
        message["Message-ID"] = f"<crash-{number}@customer.example>"
        message.set_content(f"Hello, this is question number {number}.\n")
        (state / "mail" / "new" / f"1772441000.M{number}P4242.crashtest").write_bytes(
            message.as_bytes()
        )
        message_ids.append(message["Message-ID"])
    return Site(config, state, message_ids)


def run(site: Site, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in FOREIGN_ENV}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=site.config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def crash(site: Site, crashpoint: str, call: int = 1, message_id: str | None = None) -> str:
    """Run the daemon until it kills itself at *crashpoint* (in_stage: on *message_id*
    when given); return what it reported."""
    target = [message_id] if message_id else []
    child = run(site, str(CHILD), str(site.config), crashpoint, str(call), *target)
    assert child.returncode == -signal.SIGKILL, child.stderr
    return child.stdout.strip()


def restart(site: Site) -> None:
    done = run(site, "-m", "leadloop", "--config", str(site.config), "run", "--once")
    assert done.returncode == 0, done.stderr


def assert_each_stored_once_and_acknowledged(site: Site) -> list[sqlite3.Row]:
    rows = site.rows()
    assert Counter(row["message_id"] for row in rows) == Counter(site.message_ids)
    assert len(rows) == MESSAGES
    assert {row["status"] for row in rows} == {"done"}
    assert all(row["duplicate_of"] is None for row in rows)
    assert list(site.new.iterdir()) == []
    assert sorted(path.name for path in site.cur.iterdir()) == sorted(
        f"{row['source_id']}:2,S" for row in rows
    )
    return rows


# (fetch_batch, call): the whole mail in one batch and the crash in it, or
# batches of five and the crash in the second, after one batch went through.
ONE_BATCH = pytest.param(MESSAGES, 1, id="one-batch")
SECOND_OF_FOUR = pytest.param(5, 2, id="second-of-four-batches")


@pytest.mark.parametrize(("fetch_batch", "call"), [ONE_BATCH, SECOND_OF_FOUR])
def test_kill_before_commit_stores_each_message_once(
    tmp_path: Path, fetch_batch: int, call: int
) -> None:
    """A kill before the commit keeps no row of the batch; the restart stores each mail once."""
    site = make_site(tmp_path, fetch_batch=fetch_batch)
    committed = (call - 1) * fetch_batch

    report = crash(site, "before_commit", call)

    assert report == f"uncommitted_rows={committed + fetch_batch}"
    assert len(site.rows()) == committed
    assert len(list(site.new.iterdir())) == MESSAGES - committed
    assert len(list(site.cur.iterdir())) == committed

    restart(site)
    assert_each_stored_once_and_acknowledged(site)


@pytest.mark.parametrize(
    ("fetch_batch", "call"),
    [ONE_BATCH, SECOND_OF_FOUR],
)
def test_kill_before_acknowledge_stores_no_second_copy(
    tmp_path: Path, fetch_batch: int, call: int
) -> None:
    """A kill between commit and acknowledge keeps the rows; the restart adds no second copy."""
    site = make_site(tmp_path, fetch_batch=fetch_batch)
    committed = call * fetch_batch
    acknowledged = committed - fetch_batch

    report = crash(site, "before_ack", call)

    assert report == f"acknowledging={fetch_batch}"
    assert len(site.rows()) == committed
    assert len(set(row["message_id"] for row in site.rows())) == committed
    assert len(list(site.new.iterdir())) == MESSAGES - acknowledged
    assert len(list(site.cur.iterdir())) == acknowledged

    restart(site)
    assert_each_stored_once_and_acknowledged(site)


def test_kill_in_a_stage_resumes_the_message_with_one_attempt_counted(tmp_path: Path) -> None:
    """A kill inside a stage costs the message in work one attempt; the restart finishes it."""
    # No backoff, so the one restart may retry the interrupted message at once.
    site = make_site(tmp_path, retry_backoff="0s")

    report = crash(site, "in_stage")

    assert report.startswith("in_work=")
    in_work = report.removeprefix("in_work=")
    assert in_work in site.message_ids
    assert len(site.rows()) == MESSAGES
    assert list(site.new.iterdir()) == []

    restart(site)
    rows = assert_each_stored_once_and_acknowledged(site)
    attempts = {row["message_id"]: row["attempts"] for row in rows}
    assert attempts[in_work] == 1
    assert {row["stage"] for row in rows} == {"done"}


def test_a_message_that_kills_the_daemon_three_times_is_quarantined_alone(
    tmp_path: Path,
) -> None:
    """Three kills on one message quarantine it alone; the others finish with no attempt lost."""
    site = make_site(tmp_path, retry_backoff="0s")

    poison = crash(site, "in_stage").removeprefix("in_work=")
    # The interrupted message goes to the back of the line; the next two runs finish
    # the others and die on it again.
    for _ in range(2):
        assert crash(site, "in_stage", 1, poison) == f"in_work={poison}"
    restart(site)
    rows = site.rows()
    assert Counter(row["message_id"] for row in rows) == Counter(site.message_ids)
    outcome = {row["message_id"]: (row["status"], row["attempts"]) for row in rows}
    assert outcome.pop(poison) == ("quarantined", 3)
    assert set(outcome.values()) == {("done", 0)}


@pytest.mark.parametrize("crashpoint", ["before_commit", "before_ack"])
def test_imap_kill_mid_batch_loses_and_doubles_nothing(
    tmp_path: Path, dovecot_imap: ImapServer, crashpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Dovecot, a kill in the second of four batches (before its commit, or after it
    and before the \\Seen flags) leaves, after a restart, every mail stored once and seen."""
    monkeypatch.setenv("LEADLOOP_TEST_IMAP_PASSWORD", dovecot_imap.password)
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [service]
            log_level = "warning"

            [[mailboxes]]
            name = "sales"
            kind = "imap"
            address = "sales@acme.example"
            host = "{dovecot_imap.host}"
            port = {dovecot_imap.port}
            security = "none"
            username = "{dovecot_imap.user}"
            password_env = "LEADLOOP_TEST_IMAP_PASSWORD"
            fetch_batch = 5
            idle = false
            """
        )
    )
    message_ids = []
    for number in range(MESSAGES):
        message = EmailMessage()
        message["From"] = f"buyer{number}@customer.example"
        message["To"] = "sales@acme.example"
        message["Subject"] = f"Question {number}"
        message["Message-ID"] = f"<imap-crash-{number}@customer.example>"
        message.set_content("Hello.\n")
        asyncio.run(dovecot_imap.deliver(message.as_bytes()))
        message_ids.append(message["Message-ID"])
    site = Site(config, tmp_path / "var", message_ids)

    report = crash(site, crashpoint, 2)

    assert report in ("uncommitted_rows=10", "acknowledging=5")
    assert asyncio.run(dovecot_imap.seen_count()) == 5
    restart(site)
    rows = site.rows()
    assert Counter(row["message_id"] for row in rows) == Counter(message_ids)
    assert {row["status"] for row in rows} == {"done"}
    assert asyncio.run(dovecot_imap.seen_count()) == MESSAGES
