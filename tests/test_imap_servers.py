"""The IMAP test servers themselves (tests/imap_servers.py), driven with plain aioimaplib."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket

import aioimaplib
import imap_servers
import pytest
from imap_servers import ImapServer, dovecot_server

from leadloop.channels.imap import wait_hello

MESSAGES = [
    (
        f"From: Lead {n} <lead{n}@example.com>\r\n"
        f"To: sales@example.com\r\n"
        f"Subject: Question {n}\r\n"
        f"Message-ID: <q{n}@example.com>\r\n"
        f"\r\n"
        f"Hello, question number {n}.\r\n"
    ).encode()
    for n in range(3)
]


def fetched_bodies(lines: list[bytes | bytearray]) -> dict[int, bytes]:
    """UID -> BODY[] from a ``UID FETCH ... (UID BODY.PEEK[])`` response.

    aioimaplib gives ``b'1 FETCH (UID 1 BODY[] {76}'``, then the literal as a
    ``bytearray``, then ``b')'``, per message; the tagged text comes last.
    """
    bodies = {}
    for header, literal in itertools.pairwise(lines):
        match = re.match(rb"\d+ FETCH \(UID (\d+) BODY\[\] \{\d+\}$", header)
        if match and isinstance(literal, bytearray):
            bodies[int(match.group(1))] = bytes(literal)
    return bodies


def select_code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        if match := re.search(rb"\[" + name + rb" (\d+)\]", line):
            return int(match.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


async def test_deliver_then_uid_fetch_returns_the_bytes(imap_server: ImapServer) -> None:
    for raw in MESSAGES:
        await imap_server.deliver(raw)
    client = await imap_server.connect()
    selected = await client.select("INBOX")
    assert selected.result == "OK"
    assert b"3 EXISTS" in selected.lines
    response = await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
    assert response.result == "OK"
    bodies = fetched_bodies(response.lines)
    assert [bodies[uid] for uid in sorted(bodies)] == MESSAGES
    assert await imap_server.seen_count() == 0  # BODY.PEEK did not set \Seen
    await client.logout()


async def test_capability_includes_idle_and_special_use(imap_server: ImapServer) -> None:
    client = await imap_server.connect()
    # aioimaplib 2.0.3 parses pymap's "OK [CAPABILITY ...] text" after LOGIN
    # into junk tokens; an explicit CAPABILITY command sets a clean set.
    await client.protocol.capability()
    assert {"IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE"} <= client.protocol.capabilities
    listed = await client.list('""', '"*"')
    assert listed.result == "OK"
    assert any(b"\\Sent" in line and line.endswith(b" Sent") for line in listed.lines)
    assert any(b"\\Drafts" in line and line.endswith(b" Drafts") for line in listed.lines)
    await client.logout()


async def test_idle_client_gets_exists_after_another_connection_delivers(
    imap_server: ImapServer,
) -> None:
    await imap_server.deliver(MESSAGES[0])
    client = await imap_server.connect()
    await client.select("INBOX")
    idle = await client.idle_start(timeout=30)
    await imap_server.deliver(MESSAGES[1])
    pushed: list[bytes] = []
    async with asyncio.timeout(10):  # Dovecot: ~0.5 s, pymap: ~10 ms
        while b"2 EXISTS" not in pushed:
            pushed += await client.wait_server_push()
    client.idle_done()
    done = await asyncio.wait_for(idle, 5)
    assert done.result == "OK"
    await client.logout()


# The limit is the verdict: a shutdown that misses a connection leaves its
# client reading forever.
@pytest.mark.timeout(60)
async def test_pymap_stops_with_clients_still_connected() -> None:
    """Leaving ``pymap_server()`` ends every connection: one client in IDLE,
    one half-way through an APPEND literal, one that never said a word."""
    clients = []
    async with imap_servers.pymap_server() as server:
        for commands in (
            [b"a1 LOGIN {user} {password}", b"a2 SELECT INBOX", b"a3 IDLE"],
            [b"b1 LOGIN {user} {password}", b"b2 APPEND INBOX {{1000+}}\r\nFrom: half"],
            [],
        ):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            assert (await reader.readline()).startswith(b"* OK")
            for command in commands:
                line = command.decode().format(user=server.user, password=server.password)
                writer.write(line.encode() + b"\r\n")
                await writer.drain()
                if not line.startswith("b2"):
                    # Through the command's own answer (IDLE's is "+ idling").
                    while not (answer := await reader.readline()).startswith((b"a", b"b", b"+")):
                        pass
                    assert b"OK" in answer or answer.startswith(b"+"), answer
            clients.append((reader, writer))
    for reader, writer in clients:
        try:
            rest = await reader.read()  # to the end of the stream
        except ConnectionResetError:  # aborted rather than closed: ended all the same
            rest = b""
        assert b" OK" not in rest
        writer.close()


async def test_examine_helpers_leave_seen_and_recent_alone(imap_server: ImapServer) -> None:
    await imap_server.deliver(MESSAGES[0], flags=["\\Seen", "\\Flagged"])
    await imap_server.deliver(MESSAGES[1])
    flags = await imap_server.flags_of()
    assert sorted(flags.values(), key=len) == [set(), {"\\Seen", "\\Flagged"}]
    assert await imap_server.seen_count() == 1
    client = await imap_server.connect()
    selected = await client.select("INBOX")
    assert b"2 RECENT" in selected.lines  # nobody claimed \Recent before
    await client.logout()
    assert await imap_server.seen_count() == 1


async def test_folders_sent_drafts_and_created(imap_server: ImapServer) -> None:
    assert await imap_server.flags_of("Sent") == {}
    assert await imap_server.flags_of("Drafts") == {}
    await imap_server.create_folder("Lead Archive")
    await imap_server.deliver(MESSAGES[2], folder="Lead Archive", flags=["\\Answered"])
    assert list((await imap_server.flags_of("Lead Archive")).values()) == [{"\\Answered"}]
    await imap_server.deliver(MESSAGES[0], folder="Sent", flags=["\\Seen"])
    assert await imap_server.seen_count("Sent") == 1


async def test_wrong_password_is_counted(imap_server: ImapServer) -> None:
    assert imap_server.auth_failures() == 0
    client = aioimaplib.IMAP4(imap_server.host, imap_server.port, timeout=10)
    await wait_hello(client, 10)
    refused = await client.login(imap_server.user, "not-the-password")
    assert refused.result == "NO"
    assert await imap_server.wait_auth_failures(1) == 1
    # No penalty delay: the right password works at once on the same connection.
    accepted = await asyncio.wait_for(client.login(imap_server.user, imap_server.password), 2)
    assert accepted.result == "OK"
    await client.logout()
    assert imap_server.auth_failures() == 1


async def test_change_uidvalidity_shows_on_select(imap_server: ImapServer) -> None:
    await imap_server.deliver(MESSAGES[0])
    client = await imap_server.connect()
    before = select_code((await client.select("INBOX")).lines, b"UIDVALIDITY")
    await client.logout()

    assert imap_server.change_uidvalidity() == before + 1
    client = await imap_server.connect()
    assert select_code((await client.select("INBOX")).lines, b"UIDVALIDITY") == before + 1
    await client.logout()

    assert imap_server.change_uidvalidity(value=4242) == 4242
    client = await imap_server.connect()
    assert select_code((await client.select("INBOX")).lines, b"UIDVALIDITY") == 4242
    await client.logout()


async def test_dovecot_stop_and_start_on_the_same_port(dovecot_imap: ImapServer) -> None:
    await dovecot_imap.deliver(MESSAGES[0])
    client = await dovecot_imap.connect()
    await client.select("INBOX")
    idle = await client.idle_start(timeout=30)

    await asyncio.to_thread(dovecot_imap.stop)
    # The IDLE client hears the shutdown; new connections are refused.
    assert await client.wait_server_push(timeout=5) == [b"BYE Server shutting down."]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dovecot_imap.host, dovecot_imap.port), timeout=1).close()
    idle.cancel()

    await asyncio.to_thread(dovecot_imap.start)
    client = await dovecot_imap.connect()
    selected = await client.select("INBOX")
    assert b"1 EXISTS" in selected.lines  # the Maildir survives a restart
    await client.logout()
    assert dovecot_imap.log_path is not None
    assert dovecot_imap.log_path.read_text().count("starting up for imap") >= 2


async def test_dovecot_users_are_isolated(dovecot_imap: ImapServer) -> None:
    assert dovecot_imap._dovecot is not None
    other = dovecot_imap._dovecot.new_user()
    await other.deliver(MESSAGES[0])
    assert await other.flags_of() == {1: set()}
    assert await dovecot_imap.flags_of() == {}


def test_missing_dovecot_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_servers, "find_dovecot_bin", lambda name: None)
    with pytest.raises(RuntimeError, match=r"apt-get install -y dovecot-imapd"), dovecot_server():
        pass
