"""leadloop under systemd: the notify protocol read from a test-owned
NOTIFY_SOCKET, the health-tied watchdog, the unit file checked by
systemd-analyze, exit codes and a graceful stop in the middle of sending."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import CONFIG, wait_for

from leadloop.agent import outbox
from leadloop.agent.lifecycle import create_lead
from leadloop.agent.stages import token_keys
from leadloop.clock import SystemClock
from leadloop.config import load
from leadloop.daemon import service as service_module
from leadloop.daemon.service import Service
from leadloop.storage.db import open_database
from leadloop.storage.models import Lead

UNIT = Path(__file__).parent.parent / "systemd" / "leadloop.service"
LISTENERS = """
[tracking]
port = 0

[admin]
port = 0
"""


class NotifySocket:
    """The socket systemd would listen on: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def read(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def kinds(self) -> list[str]:
        """READY, STATUS, WATCHDOG, RELOADING, STOPPING: the first key that says which."""
        out = []
        for fields in self.read():
            for key in ("READY", "RELOADING", "STOPPING", "WATCHDOG", "STATUS"):
                if key in fields:
                    out.append(key)
                    break
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def run_daemon(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "leadloop", "--config", str(tmp_path / "config.toml"), "run"],
        stdout=log,
        stderr=log,
        env={**os.environ, **env},
    )


def test_the_daemon_speaks_sd_notify_in_order(tmp_path: Path, notify_socket: NotifySocket) -> None:
    (tmp_path / "config.toml").write_text(CONFIG.format(poll="0.2s") + LISTENERS)
    proc = run_daemon(
        tmp_path, {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    )
    try:
        wait_for(lambda: notify_socket.kinds().count("WATCHDOG") >= 3, "watchdog pings")
        ready = next(m for m in notify_socket.messages if m.get("READY") == "1")
        assert ready["MAINPID"] == str(proc.pid)
        assert re.search(
            r"mailboxes \d/1 up.*; queue: 0 in, 0 out; paused senders: none", ready["STATUS"]
        )
        wait_for(
            lambda: any("1/1 up" in m.get("STATUS", "") for m in notify_socket.read()),
            "a STATUS= with the mailbox up",
        )
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: notify_socket.kinds().count("READY") >= 2, "READY=1 after the reload")
        pings = notify_socket.kinds().count("WATCHDOG")
        wait_for(lambda: notify_socket.kinds().count("WATCHDOG") > pings + 1, "pings go on")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    kinds = notify_socket.kinds()
    # The order systemd needs: READY first, RELOADING then READY again,
    # STOPPING last; watchdog pings in between.
    order = [k for i, k in enumerate(kinds) if k != "STATUS" and (i == 0 or kinds[i - 1] != k)]
    assert order[0] == "READY"
    reload_at = kinds.index("RELOADING")
    assert "READY" in kinds[reload_at:] and kinds.index("READY", reload_at) > reload_at
    assert kinds[-1] == "STOPPING"
    assert "WATCHDOG" in kinds[:reload_at]
    assert "WATCHDOG" in kinds[reload_at:]
    reloading = next(m for m in notify_socket.messages if "RELOADING" in m)
    assert reloading["MONOTONIC_USEC"].isdigit()


async def test_a_wedged_watcher_stops_the_watchdog_pings(
    tmp_path: Path, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll that never returns (a hang no real server can cause: every call
    has a timeout) stops WATCHDOG=1; the stage runner alone is not enough."""
    config = CONFIG.format(poll="0.1s").replace(
        "[service]\n", '[service]\nwatchdog_silence = "0.5s"\n'
    )
    (tmp_path / "config.toml").write_text(config + LISTENERS)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    wedged = asyncio.Event()
    real_ingest = service_module.ingest_once

    async def ingest(*args: object, **kwargs: object) -> object:
        if wedged.is_set():
            await asyncio.Event().wait()  # never set: the loop hangs here
        return await real_ingest(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "ingest_once", ingest)
    daemon = Service(load(tmp_path / "config.toml"), clock=SystemClock())
    task = asyncio.create_task(daemon.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if notify_socket.kinds().count("WATCHDOG") >= 3:
                break
        assert notify_socket.kinds().count("WATCHDOG") >= 3
        wedged.set()
        await asyncio.sleep(1.5)  # the limit (0.5 s) and a few ping intervals
        before = notify_socket.kinds().count("WATCHDOG")
        await asyncio.sleep(1.0)
        assert notify_socket.kinds().count("WATCHDOG") == before  # no more pings
        assert daemon.beats.silent() and daemon.beats.silent()[0].startswith("mailbox sales")
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)
    assert notify_socket.kinds()[-1] == "STOPPING"


def test_unit_file_verifies_and_scores_2_or_lower(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "leadloop.service"
    text = UNIT.read_text()
    exec_path = "/opt/leadloop/bin/leadloop"
    if not os.access(exec_path, os.X_OK):
        # The unit as shipped, with ExecStart where this machine has leadloop.
        installed = shutil.which("leadloop")
        assert installed, "leadloop is not installed"
        text = text.replace(exec_path, installed)
    unit.write_text(text)
    verify = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path
    )
    assert verify.returncode == 0, verify.stderr
    assert "leadloop.service" not in verify.stderr, verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for leadloop\.service: (\d+\.\d+)", security.stdout)
    assert found, security.stdout + security.stderr
    assert float(found.group(1)) <= 2.0, security.stdout


async def test_sigterm_with_50_due_mails_delivers_each_exactly_once_after_a_restart(
    tmp_path: Path,
) -> None:
    from smtp_servers import ScriptedHandler, smtp_server

    tenth = asyncio.Event()

    class Slow(ScriptedHandler):
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            await asyncio.sleep(0.05)
            reply = await super().handle_DATA(server, session, envelope)  # type: ignore[arg-type]
            if len(self.received) >= 10:
                tenth.set()
            return reply

    handler = Slow()
    async with smtp_server(handler) as port:
        config = (
            f"""
[service]
stop_timeout = "20s"

[scheduler]
tick = "0.2s"

[identity]
domain = "acme.example"

[validation]
dns = false

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
poll_interval = "1s"

[smtp]
host = "127.0.0.1"
port = {port}
connections = 2

[outbox]
per_lead_day = 0
mailbox_per_10min = 0
mailbox_per_day = 0
domain_per_hour = 0
"""
            + LISTENERS
        )
        (tmp_path / "config.toml").write_text(config)
        loaded = load(tmp_path / "config.toml")
        db = await open_database(loaded.database_url)
        settings = outbox.OutboxSettings.from_config(loaded, token_keys(loaded))
        ids = []
        now = SystemClock().now()
        async with db.transaction() as session:
            for n in range(50):
                lead = await create_lead(
                    session, Lead(email=f"b{n}@buyer.example"), actor="t", reason="t", now=now
                )
                row = await outbox.queue(
                    session,
                    settings,
                    kind=outbox.Kind.REPLY,
                    to=[lead.email],
                    subject=f"Mail {n}",
                    text="Hello.",
                    now=now,
                    idempotency_key=f"sigterm:{n}",
                    lead=lead,
                )
                ids.append(row.message_id)
        await db.dispose()

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "leadloop",
            "--config",
            str(tmp_path / "config.toml"),
            "run",
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.wait_for(tenth.wait(), 60)
        assert len(handler.received) < 50, "stop it in the middle of sending"
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        first_run = len(handler.received)
        assert first_run < 50

        again = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "leadloop",
            "--config",
            str(tmp_path / "config.toml"),
            "run",
            "--once",
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(again.communicate(), 120)
        assert again.returncode == 0, err.decode()[-2000:]

    got = Counter(
        str(email.message_from_bytes(item.data, policy=email.policy.default)["Message-ID"])
        for item in handler.received
    )
    assert sorted(got) == sorted(ids)
    assert set(got.values()) == {1}, [m for m, n in got.items() if n > 1]


async def test_every_mailbox_refusing_the_login_at_start_exits_77(tmp_path: Path) -> None:
    from imap_servers import pymap_server

    async with pymap_server(password="right-password") as server:

        def box(name: str, env: str) -> str:
            return f"""
[[mailboxes]]
name = "{name}"
kind = "imap"
address = "{name}@acme.example"
host = "127.0.0.1"
port = {server.port}
security = "none"
username = "leadloop@example.com"
password_env = "{env}"
poll_interval = "0.5s"
"""

        base = '[service]\nstop_timeout = "10s"\n' + LISTENERS
        env = {**os.environ, "LL_WRONG": "wrong-password", "LL_RIGHT": "right-password"}
        config = tmp_path / "config.toml"
        argv = [sys.executable, "-m", "leadloop", "--config", str(config), "run"]
        config.write_text(base + box("one", "LL_WRONG") + box("two", "LL_WRONG"))
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 77, err.decode()[-2000:]
        assert "every mailbox refused the login at start" in err.decode()
        assert "wrong-password" not in err.decode()

        # One refuses, one works: an alert, and the daemon keeps running.
        config.write_text(base + box("one", "LL_WRONG") + box("two", "LL_RIGHT"))
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        seen = b""
        while b"mailbox=one login refused" not in seen:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, seen.decode()[-2000:]
            seen += line
        await asyncio.sleep(1.5)  # longer than both first polls
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, (seen + err).decode()[-2000:]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_logs_are_one_json_object_per_line_and_carry_no_secret(tmp_path: Path) -> None:
    """The SMTP password comes as a systemd credential and is refused by the
    relay: the failure is logged, as JSON lines, without the password; the
    running daemon's environment does not hold it either."""
    import json

    from aiosmtpd.smtp import AuthResult
    from smtp_servers import ScriptedHandler, smtp_server

    secret = "s3cret-smtp-Passw0rd"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "smtp-password").write_text(secret + "\n")

    def refuse(*args: object) -> AuthResult:
        return AuthResult(success=False, handled=False)

    async with smtp_server(ScriptedHandler(), authenticator=refuse) as port:
        config = tmp_path / "config.toml"
        config.write_text(
            CONFIG.format(poll="0.2s").replace(
                "[service]\n", '[service]\nlog_format = "json"\nlog_level = "debug"\n'
            )
            + LISTENERS
            + f"""
[identity]
domain = "acme.example"

[validation]
dns = false

[smtp]
host = "127.0.0.1"
port = {port}
username = "sales@acme.example"
password_credential = "smtp-password"
"""
        )
        loaded_env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
        # A mail to send, so the relay is asked (and refuses the login).
        os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
        try:
            loaded = load(config)
        finally:
            del os.environ["CREDENTIALS_DIRECTORY"]
        database = await open_database(loaded.database_url)
        now = SystemClock().now()
        async with database.transaction() as session:
            lead = await create_lead(
                session, Lead(email="b@buyer.example"), actor="t", reason="t", now=now
            )
            await outbox.queue(
                session,
                outbox.OutboxSettings.from_config(loaded, token_keys(loaded)),
                kind=outbox.Kind.REPLY,
                to=[lead.email],
                subject="Hello",
                text="Hello.",
                now=now,
                idempotency_key="logs:1",
                lead=lead,
            )
        await database.dispose()

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "leadloop",
            "--config",
            str(config),
            "run",
            env=loaded_env,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        seen: list[bytes] = []
        while not any(b"authentication" in line.lower() for line in seen):
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, b"".join(seen).decode()[-3000:]
            seen.append(line)
        environ = await asyncio.to_thread(Path(f"/proc/{proc.pid}/environ").read_bytes)
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0

    lines = [*seen, *(rest or b"").splitlines(keepends=True)]
    assert len(lines) > 5
    for line in lines:
        event = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(event)
    everything = b"".join(lines).decode()
    assert secret not in everything
    assert secret.encode() not in environ


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_crash_is_logged_on_one_line_with_secrets_masked(fmt: str) -> None:
    code = (
        "from leadloop import logs\n"
        f"logs.setup('info', '{fmt}', ['TopSecretValue1'])\n"
        "raise RuntimeError('cannot log in with TopSecretValue1\\nsecond line')\n"
    )
    crashed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert crashed.returncode == 1
    assert "TopSecretValue1" not in crashed.stderr
    assert "[secret]" in crashed.stderr
    lines = crashed.stderr.splitlines()
    assert len(lines) == 1, crashed.stderr  # the traceback too
    assert "Traceback" in lines[0] and "RuntimeError" in lines[0]
