"""The Inbox contract: every channel passes the same tests, on real servers (Exchange
on the local EWS server of tests/ews_server.py)."""

from __future__ import annotations

import mailbox
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from ews_server import EwsServer
from imap_servers import ImapServer, pymap_server

from leadloop.channels.base import Inbox
from leadloop.channels.exchange import ExchangeInbox, ExchangeSettings
from leadloop.channels.imap import ImapInbox, ImapSettings
from leadloop.channels.maildir import MaildirInbox


@dataclass
class ChannelUnderTest:
    inbox: Inbox
    deliver: Callable[[bytes], Awaitable[None]]
    """Put a message into the watched folder as a mail server would."""
    seen: Callable[[], Awaitable[int]]
    """How many messages the server shows as read."""


def message(n: int, subject: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Buyer {n} <buyer{n}@buyer.example>"
    msg["To"] = "sales@acme.example"
    msg["Subject"] = subject or f"Question {n}"
    msg["Message-ID"] = f"<m{n}@buyer.example>"
    msg.set_content(f"Hello, this is message {n}.\n")
    # Mail on the wire is CRLF (RFC 5322), and IMAP servers hand it back that way.
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def imap_inbox(server: ImapServer, **overrides: object) -> ImapInbox:
    """An ImapInbox logged in to *server* (plain IMAP: the test servers are on loopback)."""
    settings = ImapSettings(
        host=server.host,
        port=server.port,
        security="none",
        username=server.user,
        timeout=5.0,
        **overrides,  # type: ignore[arg-type]
    )

    async def secret() -> str:
        return server.password

    return ImapInbox("sales", settings, secret)


@pytest.fixture(params=["maildir", "imap-pymap", "imap-dovecot", "exchange"])
async def channel(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ChannelUnderTest]:
    if request.param == "maildir":
        root = tmp_path / "Maildir"
        inbox = MaildirInbox("sales", root)
        await inbox.open()
        server_view = mailbox.Maildir(root, None, create=True)

        async def deliver(raw: bytes) -> None:
            server_view.add(raw)

        async def seen() -> int:
            return sum(1 for name in os.listdir(root / "cur") if name.endswith(",S"))

        yield ChannelUnderTest(inbox, deliver, seen)
        await inbox.close()
    elif request.param == "exchange":
        with EwsServer().running() as server:
            address = "sales@acme.example"
            settings = ExchangeSettings(
                url=server.url, address=address, username="sales", auth="basic", timeout=5.0
            )

            async def secret() -> str:
                return server.users["sales"]

            exchange = ExchangeInbox("sales", settings, secret)
            await exchange.open()

            async def deliver_ews(raw: bytes) -> None:
                server.deliver(address, raw)

            async def seen_ews() -> int:
                return sum(1 for item in server.folder_items(address, "inbox") if item.is_read)

            yield ChannelUnderTest(exchange, deliver_ews, seen_ews)
            await exchange.close()
    elif request.param == "imap-pymap":
        # pymap runs on this test's event loop, so it starts here rather than
        # through its (async) fixture.
        async with pymap_server() as server, imap_channel(server) as under_test:
            yield under_test
    else:
        async with imap_channel(request.getfixturevalue("dovecot_imap")) as under_test:
            yield under_test


@asynccontextmanager
async def imap_channel(server: ImapServer) -> AsyncIterator[ChannelUnderTest]:
    imap = imap_inbox(server)
    await imap.open()

    async def deliver(raw: bytes) -> None:
        await server.deliver(raw)

    async def seen() -> int:
        return await server.seen_count()

    try:
        yield ChannelUnderTest(imap, deliver, seen)
    finally:
        await imap.close()


async def test_fetch_returns_new_mail_oldest_first_byte_exact(channel: ChannelUnderTest) -> None:
    """Fetched bytes are exactly what was delivered, in delivery order."""
    sent = [message(n) for n in range(3)]
    for raw in sent:
        await channel.deliver(raw)
    result = await channel.inbox.fetch_since({}, 100)
    assert [m.raw for m in result.mails] == sent
    assert len({m.source_id for m in result.mails}) == 3
    assert not result.more


async def test_fetch_marks_nothing_read_until_acknowledged(channel: ChannelUnderTest) -> None:
    """Fetching twice without acknowledging returns the same mail; nothing is marked read."""
    await channel.deliver(message(1))
    first = await channel.inbox.fetch_since({}, 100)
    again = await channel.inbox.fetch_since({}, 100)
    assert [m.source_id for m in again.mails] == [m.source_id for m in first.mails]
    assert await channel.seen() == 0
    await channel.inbox.acknowledge(first.mails)
    assert await channel.seen() == 1
    after = await channel.inbox.fetch_since(first.cursor, 100)
    assert after.mails == []


async def test_fetch_in_batches(channel: ChannelUnderTest) -> None:
    """A limit smaller than the waiting mail returns a full batch and says there is more."""
    for n in range(5):
        await channel.deliver(message(n))
    cursor: dict[str, object] = {}
    got: list[str] = []
    while True:
        result = await channel.inbox.fetch_since(cursor, 2)
        assert len(result.mails) <= 2
        got.extend(m.source_id for m in result.mails)
        await channel.inbox.acknowledge(result.mails)
        cursor = result.cursor
        if not result.more:
            break
    assert len(got) == 5 == len(set(got))


async def test_append_and_search_header(channel: ChannelUnderTest) -> None:
    """A message appended to Sent with flags is found there by its Message-ID."""
    raw = message(7, subject="Our proposal")
    source_id = await channel.inbox.append("Sent", raw, ["\\Seen"])
    assert await channel.inbox.search_header("Sent", "Message-ID", " <M7@buyer.example> ") == [
        source_id
    ]
    assert await channel.inbox.search_header("Sent", "Message-ID", "<other@x>") == []
    assert await channel.inbox.search_header("NoSuchFolder", "Message-ID", "<m7@x>") == []
    draft = await channel.inbox.append("Drafts", message(8), ["\\Draft"])
    assert await channel.inbox.search_header("Drafts", "Subject", "question 8") == [draft]
    # Filing elsewhere never shows up as new inbound mail.
    assert (await channel.inbox.fetch_since({}, 100)).mails == []


async def test_unknown_flag_refused(tmp_path: Path) -> None:
    """A flag a Maildir cannot store is an error, not silently dropped."""
    inbox = MaildirInbox("sales", tmp_path / "Maildir")
    await inbox.open()
    with pytest.raises(ValueError):
        await inbox.append("Sent", message(1), ["$Custom"])


async def test_maildir_move_mode(tmp_path: Path) -> None:
    """acknowledge = "move" files handled mail into the configured Maildir++ folder."""
    root = tmp_path / "Maildir"
    inbox = MaildirInbox("sales", root, acknowledge="move", move_to="Processed")
    await inbox.open()
    mailbox.Maildir(root, None, create=True).add(message(1))
    result = await inbox.fetch_since({}, 10)
    await inbox.acknowledge(result.mails)
    assert os.listdir(root / "new") == []
    assert len(os.listdir(root / ".Processed" / "cur")) == 1
    assert (await inbox.fetch_since(result.cursor, 10)).mails == []


async def test_maildir_keep_mode_uses_cursor(tmp_path: Path) -> None:
    """acknowledge = "keep" leaves files in new/; the cursor (plus an overlap the database
    deduplicates) bounds what is fetched again."""
    root = tmp_path / "Maildir"
    inbox = MaildirInbox("sales", root, acknowledge="keep")
    await inbox.open()
    mailbox.Maildir(root, None, create=True).add(message(1))
    first = await inbox.fetch_since({}, 10)
    await inbox.acknowledge(first.mails)
    assert len(os.listdir(root / "new")) == 1
    assert first.cursor["ctime_ns"] > 0
    old = {"ctime_ns": first.cursor["ctime_ns"] + 10**10}
    assert (await inbox.fetch_since(old, 10)).mails == []


async def test_maildir_keep_mode_moves_past_a_burst(tmp_path: Path) -> None:
    """In keep mode, more mail than one batch arriving within the overlap window is all
    fetched, each message once."""
    root = tmp_path / "Maildir"
    inbox = MaildirInbox("sales", root, acknowledge="keep")
    await inbox.open()
    server = mailbox.Maildir(root, None, create=True)
    for n in range(12):
        server.add(message(n))
    cursor: dict[str, object] = {}
    got: list[str] = []
    for _ in range(10):
        result = await inbox.fetch_since(cursor, 5)
        got.extend(m.source_id for m in result.mails)
        cursor = result.cursor
        if not result.more:
            break
    assert len(got) == 12 == len(set(got))
    assert (await inbox.fetch_since(cursor, 5)).mails == []
