"""The daemon against real IMAP servers: IDLE, UIDVALIDITY, outages, refused logins."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from imap_servers import ImapServer, pymap_server
from sqlalchemy import func, select

from leadloop.agent.pipeline import Pipeline
from leadloop.channels.base import TransientChannelError
from leadloop.channels.imap import ImapInbox, ImapSettings
from leadloop.clock import SystemClock
from leadloop.config import LoadedConfig, loads
from leadloop.daemon.ingest import ingest_once
from leadloop.daemon.service import Service, build_inbox
from leadloop.storage import repo
from leadloop.storage.db import open_database
from leadloop.storage.models import Event, InboundMessage

PASSWORD_ENV = "LEADLOOP_TEST_IMAP_PASSWORD"


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"buyer{n}@buyer.example"
    msg["To"] = "sales@acme.example"
    msg["Subject"] = f"Question {n}"
    msg["Message-ID"] = f"<imap-{n}@buyer.example>"
    msg.set_content(f"Hello {n}.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def imap_config(
    tmp_path: Path, server: ImapServer, monkeypatch: pytest.MonkeyPatch, **extra: str
) -> LoadedConfig:
    monkeypatch.setenv(PASSWORD_ENV, server.password)
    options = "".join(f"{key} = {value}\n" for key, value in extra.items())
    text = (
        textwrap.dedent(
            f"""\
        [scheduler]
        tick = "1s"

        [[mailboxes]]
        name = "sales"
        kind = "imap"
        address = "sales@acme.example"
        host = "{server.host}"
        port = {server.port}
        security = "none"
        username = "{server.user}"
        password_env = "{PASSWORD_ENV}"
        timeout = "3s"
        """
        )
        + options
    )
    file = tmp_path / "config.toml"
    file.write_text(text)
    return loads(text, file)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 20) -> None:
    """Wait for something the daemon does in the background; the limit only
    bounds a hung test and is no timing assertion."""
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(loaded: LoadedConfig) -> AsyncIterator[Service]:
    service = Service(loaded)
    task = asyncio.create_task(service.run())
    try:
        await eventually(lambda: _started(service), "the daemon to start")
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)


async def _started(service: Service) -> bool:
    return service.scheduler is not None and service.scheduler.running


async def stored(service: Service) -> int:
    assert service.db is not None
    async with service.db.transaction() as session:
        count = await session.scalar(select(func.count()).select_from(InboundMessage))
    return int(count or 0)


@pytest.fixture
async def pymap() -> AsyncIterator[ImapServer]:
    async with pymap_server() as server:
        yield server


async def test_daemon_ingests_and_marks_seen_after_commit(
    pymap: ImapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail in the IMAP inbox is stored, processed, and only then marked \\Seen."""
    for n in range(3):
        await pymap.deliver(message(n))
    loaded = imap_config(tmp_path, pymap, monkeypatch, poll_interval='"0.2s"')
    async with running(loaded) as service:
        await eventually(lambda: _count_done(service, 3), "three processed messages")
        await eventually(lambda: _seen(pymap, 3), "three \\Seen flags")


async def _count_done(service: Service, expected: int) -> bool:
    assert service.db is not None
    async with service.db.transaction() as session:
        statuses = await repo.count_by_status(session)
    return statuses.get("done", 0) == expected


async def _seen(server: ImapServer, expected: int) -> bool:
    return await server.seen_count() == expected


@pytest.mark.parametrize("kind", ["pymap", "dovecot"])
async def test_idle_wakes_the_watcher(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the interval poll an hour away, a delivery is stored because IDLE says so."""

    async def body(server: ImapServer) -> None:
        loaded = imap_config(tmp_path, server, monkeypatch, poll_interval='"1h"')
        async with running(loaded) as service:
            watcher = service.watchers["sales"]
            await eventually(lambda: _listening(watcher), "the IDLE listener")
            await server.deliver(message(1))
            await eventually(lambda: _stored_at_least(service, 1), "the pushed message")

    if kind == "pymap":
        async with pymap_server() as server:
            await body(server)
    else:
        await body(request.getfixturevalue("dovecot_imap"))


async def _listening(watcher: object) -> bool:
    inbox = watcher.inbox  # type: ignore[attr-defined]
    client = inbox._idle.client
    return bool(client is not None and client.protocol.has_pending_idle_command())


async def _stored_at_least(service: Service, expected: int) -> bool:
    return await stored(service) >= expected


@pytest.mark.parametrize("kind", ["pymap", "dovecot"])
async def test_uidvalidity_change_reprocesses_nothing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the server renumbers the folder, the rescan stores old mail only as
    ignored duplicates and the pipeline runs just the one new message."""

    async def body(server: ImapServer) -> None:
        loaded = imap_config(tmp_path, server, monkeypatch, acknowledge='"keep"')
        db = await open_database(loaded.database_url)
        try:
            async with db.transaction() as session:
                box = await repo.ensure_mailbox(session, "sales", "imap", "sales@acme.example")
            inbox = build_inbox(loaded.settings.mailboxes[0], loaded)
            await inbox.open()
            clock = SystemClock()
            pipeline = Pipeline(db, clock, owner="test")
            for n in range(3):
                await server.deliver(message(n))
            first = await ingest_once(db, inbox, box.id, clock, batch=100, max_size=10**7)
            assert (first.fetched, first.stored) == (3, 3)
            assert (await pipeline.run_pending()).processed == 3

            server.change_uidvalidity()
            await server.deliver(message(3))
            second = await ingest_once(db, inbox, box.id, clock, batch=100, max_size=10**7)
            assert second.fetched == 4
            assert (await pipeline.run_pending()).processed == 1
            async with db.transaction() as session:
                ignored = await session.scalar(
                    select(func.count())
                    .select_from(InboundMessage)
                    .where(InboundMessage.duplicate_of.is_not(None))
                )
                processed = await session.scalar(
                    select(func.count(func.distinct(Event.inbound_id))).where(
                        Event.kind == "stage.screen"
                    )
                )
            assert (ignored, processed) == (3, 4)
            await inbox.close()
        finally:
            await db.dispose()

    if kind == "pymap":
        async with pymap_server() as server:
            await body(server)
    else:
        await body(request.getfixturevalue("dovecot_imap"))


async def test_server_outage_is_recovered_and_logged_once(
    dovecot_imap: ImapServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dovecot going down and coming back: one error line, one recovery line, one
    alert row, and mail delivered afterwards is stored."""
    loaded = imap_config(tmp_path, dovecot_imap, monkeypatch, poll_interval='"0.2s"')
    caplog.set_level(logging.INFO, logger="leadloop")
    async with running(loaded) as service:
        await dovecot_imap.deliver(message(1))
        await eventually(lambda: _stored_at_least(service, 1), "the first message")
        await asyncio.to_thread(dovecot_imap.stop)
        watcher = service.watchers["sales"]
        await eventually(lambda: _failures_at_least(watcher, 2), "repeated failed polls")
        await asyncio.to_thread(dovecot_imap.start)
        await dovecot_imap.deliver(message(2))
        await eventually(lambda: _stored_at_least(service, 2), "mail after the outage", 60)
        # The recovery alert is written right after the poll's mail commits.
        await eventually(lambda: _alert_count_at_least(service, 2), "the recovery alert")
        alerts = await _alerts(service)
    messages = [r.getMessage() for r in caplog.records if r.name == "leadloop.daemon.service"]
    assert sum("mailbox=sales unavailable" in m for m in messages) == 1
    assert sum("mailbox=sales recovered" in m for m in messages) == 1
    assert alerts == ["alert.mailbox_down", "alert.mailbox_recovered"]


async def _failures_at_least(watcher: object, expected: int) -> bool:
    return int(watcher.failures) >= expected  # type: ignore[attr-defined]


async def _alert_count_at_least(service: Service, expected: int) -> bool:
    return len(await _alerts(service)) >= expected


async def _alerts(service: Service) -> list[str]:
    assert service.db is not None
    async with service.db.transaction() as session:
        kinds = await session.scalars(
            select(Event.kind).where(Event.kind.like("alert.%")).order_by(Event.id)
        )
        return list(kinds)


async def test_wrong_password_is_reported_once_and_throttled(
    dovecot_imap: ImapServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused login is logged and alerted once; after the third refusal the next
    LOGIN is at least five minutes away, and no more reach the server meanwhile."""
    loaded = imap_config(tmp_path, dovecot_imap, monkeypatch, poll_interval='"0.1s"')
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    # A second mailbox that works, so the daemon goes on (when every mailbox
    # refuses the login at start it exits 77: test_systemd).
    text = loaded.file.read_text() + textwrap.dedent(
        """
        [[mailboxes]]
        name = "local"
        address = "local@acme.example"
        path = "mail"
        """
    )
    loaded = loads(text, loaded.file)
    caplog.set_level(logging.INFO, logger="leadloop")
    async with running(loaded) as service:
        watcher = service.watchers["sales"]
        await eventually(lambda: _auth_failures_at_least(watcher, 3), "three refused logins")
        assert watcher.retry_at - time.monotonic() > 290
        assert await dovecot_imap.wait_auth_failures(3) == 3
        await asyncio.sleep(1.0)  # the interval poll keeps ringing every 0.1 s
        assert dovecot_imap.auth_failures() == 3
        alerts = await _alerts(service)
    refusals = [r for r in caplog.records if "login refused" in r.getMessage()]
    assert len(refusals) == 1
    assert alerts == ["alert.mailbox_auth"]


async def _auth_failures_at_least(watcher: object, expected: int) -> bool:
    return int(watcher.auth_failures) >= expected  # type: ignore[attr-defined]


async def test_stalled_server_is_dropped(tmp_path: Path) -> None:
    """A server that greets and then never answers (a fault no real server produces on
    demand, so a bare socket stands in) costs one timeout, then the connection is dropped."""
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        await writer.drain()
        await reader.read()  # swallow commands, answer nothing, until the client hangs up
        hung_up.set()
        writer.close()

    async with scripted_server(silent) as inbox:
        with pytest.raises(TransientChannelError):
            await inbox.open()
        assert not inbox._conn.connected
        await asyncio.wait_for(hung_up.wait(), 10)


@asynccontextmanager
async def scripted_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[ImapInbox]:
    """A bare asyncio server running *handler* on loopback, for faults no real
    IMAP server produces on demand, and an inbox pointed at it (0.3 s timeout)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = ImapSettings(host="127.0.0.1", port=port, security="none", username="u", timeout=0.3)

    async def secret() -> str:
        return "pw"

    inbox = ImapInbox("scripted", settings, secret)
    try:
        yield inbox
    finally:
        await inbox.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("moment", ["as IDLE starts", "waiting for a push"])
async def test_a_cancelled_idle_stays_cancelled_when_done_goes_unanswered(moment: str) -> None:
    """Cancelling the IDLE wait ends it even when the server never answers
    DONE (a fault no real server produces on demand, so a small scripted server
    stands in): the cancel is not turned into a channel error, which the
    daemon's listener would take for an outage and carry on after, and the
    connection, in no known state, is dropped."""
    in_idle = asyncio.Event()
    hung_up = asyncio.Event()

    async def mute_after_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        while line := await reader.readline():
            tag, _, rest = line.decode().strip().partition(" ")
            command = rest.split(" ", 1)[0].upper()
            if command == "IDLE":
                writer.write(b"+ idling\r\n")
                in_idle.set()
            elif command == "DONE" or tag.upper() == "DONE" or in_idle.is_set():
                continue  # DONE and anything after it: no answer, ever
            elif command in ("SELECT", "EXAMINE"):
                writer.write(b"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n")
                writer.write(f"{tag} OK [READ-ONLY] done\r\n".encode())
            elif command == "CAPABILITY":
                writer.write(f"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n".encode())
            else:
                writer.write(f"{tag} OK done\r\n".encode())
            await writer.drain()
        hung_up.set()
        writer.close()

    async with scripted_server(mute_after_idle) as inbox:
        waiting = asyncio.create_task(inbox.wait_for_mail(60))
        await asyncio.wait_for(in_idle.wait(), 10)
        if moment == "waiting for a push":
            await eventually(lambda: _in_frame(waiting, "_next_push"), "the push wait")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not inbox._idle.connected  # dropped: the next IDLE starts afresh
        await asyncio.wait_for(hung_up.wait(), 10)


async def _in_frame(task: asyncio.Task[object], function: str) -> bool:
    """Whether *task* is suspended somewhere inside *function* (its await chain)."""
    awaiting: Any = task.get_coro()
    while awaiting is not None:
        code = getattr(awaiting, "cr_code", None) or getattr(awaiting, "gi_code", None)
        if code is not None and code.co_name == function:
            return True
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    return False


async def test_one_failing_mailbox_never_stops_the_others(
    pymap: ImapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IMAP mailbox whose server refuses connections does not hold up another
    mailbox: its mail is fetched and processed, and only the broken one is alerted."""
    loaded = imap_config(tmp_path, pymap, monkeypatch, poll_interval='"0.2s"')
    text = loaded.file.read_text() + textwrap.dedent(
        f"""
        [[mailboxes]]
        name = "broken"
        kind = "imap"
        address = "broken@acme.example"
        host = "127.0.0.1"
        port = {_refused_port()}
        security = "none"
        username = "x"
        password_env = "{PASSWORD_ENV}"
        poll_interval = "0.2s"
        """
    )
    loaded = loads(text, loaded.file)
    await pymap.deliver(message(1))
    async with running(loaded) as service:
        await eventually(lambda: _count_done(service, 1), "the healthy mailbox's mail")
        await eventually(lambda: _failures_at_least(service.watchers["broken"], 1), "a failure")
        alerts = await _alerts(service)
    assert alerts == ["alert.mailbox_down"]


def _refused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again at once: connections are refused


async def test_oversized_mail_is_stored_and_flagged(
    pymap: ImapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail over the size limit is fetched and stored whole, flagged for header-only
    screening with the reason among its defects."""
    loaded = imap_config(tmp_path, pymap, monkeypatch)
    db = await open_database(loaded.database_url)
    try:
        async with db.transaction() as session:
            box = await repo.ensure_mailbox(session, "sales", "imap", "sales@acme.example")
        inbox = build_inbox(loaded.settings.mailboxes[0], loaded)
        await inbox.open()
        big = message(1).replace(b"Hello 1.", b"Hello 1. " + b"x" * 5000)
        await pymap.deliver(big)
        await pymap.deliver(message(2))
        await ingest_once(db, inbox, box.id, SystemClock(), batch=100, max_size=2000)
        await inbox.close()
        async with db.transaction() as session:
            rows = (await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all()
        assert (rows[0].oversized, rows[0].raw) == (True, big)
        assert any(d.startswith("oversized:") for d in rows[0].defects)
        assert rows[1].oversized is False
    finally:
        await db.dispose()
