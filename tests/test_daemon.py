"""The daemon process: watches the Maildir, processes mail, reloads, stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import mailbox
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from leadloop.daemon.tasks import TaskKeeper

CONFIG = """
[service]
stop_timeout = "20s"

[scheduler]
tick = "1s"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
poll_interval = "{poll}"
"""


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for something a live process does; the limit only bounds a hung test."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def done_count(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute(
                "SELECT count(*) FROM inbound_messages WHERE status = 'done'"
            ).fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def deliver(maildir: Path, n: int) -> None:
    msg = EmailMessage()
    msg["From"] = f"buyer{n}@buyer.example"
    msg["To"] = "sales@acme.example"
    msg["Subject"] = f"Hello {n}"
    msg["Message-ID"] = f"<d{n}@buyer.example>"
    msg.set_content("Tell me more.")
    mailbox.Maildir(maildir, None, create=True).add(msg.as_bytes())


class Daemon:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "config.toml"
        self.state = tmp_path / "var"
        self.log = tmp_path / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "leadloop", "--config", str(self.config), "run"],
                stdout=log,
                stderr=log,
            )
        return self.proc

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    (tmp_path / "config.toml").write_text(CONFIG.format(poll="0.2s"))
    d = Daemon(tmp_path)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_daemon_processes_mail_and_stops_on_sigterm(daemon: Daemon) -> None:
    """Mail dropped into the Maildir is stored and processed; SIGTERM exits 0 and removes
    the PID file."""
    proc = daemon.start()
    pid_file = daemon.state / "leadloop.pid"
    wait_for(pid_file.exists, "the PID file")
    assert int(pid_file.read_text()) == proc.pid
    for n in range(5):
        deliver(daemon.state / "mail", n)
    wait_for(lambda: done_count(daemon.state / "leadloop.db") == 5, "five processed messages")
    assert len(os.listdir(daemon.state / "mail" / "cur")) == 5
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not pid_file.exists()
    assert daemon.logged("stopped")


def test_second_daemon_refused(daemon: Daemon, tmp_path: Path) -> None:
    """A second daemon on the same state directory (and SQLite file) exits 69 naming the first."""
    first = daemon.start()
    wait_for(lambda: daemon.logged("started pid="), "the first daemon")
    second = subprocess.run(
        [sys.executable, "-m", "leadloop", "--config", str(daemon.config), "run"],
        capture_output=True,
        text=True,
    )
    assert second.returncode == 69
    assert f"another leadloop (pid {first.pid})" in second.stderr
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 0


def test_second_daemon_on_the_same_sqlite_file_refused(tmp_path: Path) -> None:
    """Two state directories pointing at one SQLite file: the second daemon
    exits 69 naming the database and the first daemon's state directory."""
    shared = tmp_path / "shared.db"
    database = f'[database]\nurl = "sqlite:///{shared}"\n'
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    for home in (first_dir, second_dir):
        home.mkdir()
        (home / "config.toml").write_text(CONFIG.format(poll="0.2s") + database)
    first = Daemon(first_dir)
    proc = first.start()
    try:
        wait_for(lambda: first.logged("started pid="), "the first daemon")
        second = subprocess.run(
            [sys.executable, "-m", "leadloop", "--config", str(second_dir / "config.toml"), "run"],
            capture_output=True,
            text=True,
            timeout=120,  # a daemon that was not refused would run on
        )
        assert second.returncode == 69, second.stderr
        assert f"is running on the SQLite database {shared}" in second.stderr
        assert f"pid {proc.pid}, state directory {first_dir / 'var'}" in second.stderr
        assert not (second_dir / "var" / "leadloop.pid").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_reload_keeps_running_config_when_invalid(daemon: Daemon) -> None:
    """SIGHUP with a broken file is refused, naming key and line, and the old config keeps
    working; `leadloop reload` applies a valid edit."""
    proc = daemon.start()
    wait_for(lambda: daemon.logged("started pid="), "the daemon")
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace('poll_interval = "0.2s"', 'poll_interval = "often"'))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.logged("reload refused"), "the refusal")
    assert daemon.logged("line 11: mailboxes[0].poll_interval: not a duration")
    deliver(daemon.state / "mail", 1)
    wait_for(lambda: done_count(daemon.state / "leadloop.db") == 1, "mail under the old config")

    daemon.config.write_text(good.replace('poll_interval = "0.2s"', 'poll_interval = "0.3s"'))
    reload = subprocess.run(
        [sys.executable, "-m", "leadloop", "--config", str(daemon.config), "reload"],
        capture_output=True,
        text=True,
    )
    assert reload.returncode == 0, reload.stderr
    wait_for(lambda: daemon.logged("configuration reloaded"), "the reload")
    deliver(daemon.state / "mail", 2)
    wait_for(lambda: done_count(daemon.state / "leadloop.db") == 2, "mail under the new config")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_reload_without_daemon(tmp_path: Path) -> None:
    """`leadloop reload` with nothing running says so and fails."""
    (tmp_path / "config.toml").write_text(CONFIG.format(poll="1s"))
    result = subprocess.run(
        [sys.executable, "-m", "leadloop", "--config", str(tmp_path / "config.toml"), "reload"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "no PID file" in result.stderr


async def test_task_keeper_logs_crashes(caplog: pytest.LogCaptureFixture) -> None:
    """A background task that crashes is logged with its name and kept in `crashed`."""

    async def boom() -> None:
        raise RuntimeError("watcher died")

    keeper = TaskKeeper()
    with caplog.at_level(logging.ERROR, logger="leadloop.daemon.tasks"):
        task = keeper.start(boom(), "poll-sales")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert [name for name, _ in keeper.crashed] == ["poll-sales"]
    assert "task poll-sales crashed" in caplog.text
    assert len(keeper) == 0
