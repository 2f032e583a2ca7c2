"""An IMAP folder as an inbox, over aioimaplib.

Two connections per mailbox: one that fetches, acknowledges, appends and
searches (its commands serialized by a lock), and one that only sits in IDLE
(RFC 2177) waiting for the server to say new mail arrived.  Fetching is
incremental by UID and uses ``BODY.PEEK[]``, so nothing is marked read
before it is stored; UIDVALIDITY is part of every source id and of the
cursor, so a changed UIDVALIDITY rescans the folder and the database drops
what it already has by Message-ID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aioimaplib

from leadloop.channels.base import (
    AuthError,
    ChannelError,
    Cursor,
    FetchResult,
    PermanentChannelError,
    RawMail,
    TransientChannelError,
)

log = logging.getLogger("leadloop.channels.imap")

# RFC 2177: clients should re-issue IDLE at least every 29 minutes.
IDLE_MAX_SECONDS = 28 * 60
SPECIAL_USE = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged")
_FETCH_START = re.compile(rb"^(\d+) FETCH \(")
_LITERAL_END = re.compile(rb"\{(\d+)\}$")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_NUMBERS = re.compile(rb"[\d ]+")
_LIST = re.compile(rb'^LIST \(([^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (.+)$')

TokenSource = Callable[[], Awaitable[str]]
"""Returns the password (LOGIN) or a current OAuth2 access token (XOAUTH2)."""


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    security: str  # "tls", "starttls" or "none"
    username: str
    auth: str = "login"  # or "xoauth2"
    folder: str = "INBOX"
    acknowledge: str = "seen"  # "seen", "keyword", "move" or "keep"
    keyword: str = "$LeadloopStored"
    move_to: str = "Processed"
    idle: bool = True
    timeout: float = 30.0
    tls_verify: bool = True
    ca_file: Path | None = None


def quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 section 4.3)."""
    if re.search(r"[\x00\r\n]", text):
        raise ValueError("CR, LF and NUL cannot be sent in an IMAP string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(name: bytes) -> str:
    text = name.decode("utf-8", "replace").strip()
    if text.startswith('"') and text.endswith('"'):
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _uid_set(uids: Sequence[int]) -> str:
    """Compact ``1:3,7`` form of a sorted UID list."""
    ranges: list[str] = []
    start = prev = None
    for uid in sorted(uids):
        if start is None:
            start = prev = uid
        elif prev is not None and uid == prev + 1:
            prev = uid
        else:
            ranges.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = uid
    if start is not None:
        ranges.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(ranges)


def search_uids(lines: Sequence[bytes | bytearray]) -> list[int]:
    """The numbers of a SEARCH answer.  aioimaplib strips the ``* SEARCH``
    prefix, so the data line is the one made only of digits and spaces; the
    last line is the tagged status text."""
    uids: list[int] = []
    for line in lines[:-1]:
        text = bytes(line).removeprefix(b"SEARCH").strip()
        if text and _NUMBERS.fullmatch(text):
            uids.extend(int(n) for n in text.split())
    return uids


@dataclass
class FetchedMessage:
    uid: int
    raw: bytes
    flags: frozenset[str]
    internal_date: datetime | None


def parse_fetch(lines: Sequence[bytes | bytearray]) -> list[FetchedMessage]:
    """Read an aioimaplib ``UID FETCH`` response: a ``N FETCH (... BODY[] {size}``
    line, the literal as a bytearray, then the rest of the item (which may
    carry UID or FLAGS after the literal) up to its closing parenthesis."""
    messages: list[FetchedMessage] = []
    index = 0
    while index < len(lines):
        line = bytes(lines[index])
        if not _FETCH_START.match(line) or not _LITERAL_END.search(line):
            index += 1
            continue
        raw = bytes(lines[index + 1]) if index + 1 < len(lines) else b""
        tail = bytes(lines[index + 2]) if index + 2 < len(lines) else b""
        meta = line + b" " + (tail if not _FETCH_START.match(tail) else b"")
        uid_match = _UID.search(meta)
        if uid_match is None:
            raise TransientChannelError(f"FETCH response without UID: {line[:80]!r}")
        flags_match = _FLAGS.search(meta)
        flags = frozenset(flags_match.group(1).decode().split()) if flags_match else frozenset()
        date_match = _INTERNALDATE.search(meta)
        internal_date = None
        if date_match:
            with contextlib.suppress(TypeError, ValueError):
                internal_date = parsedate_to_datetime(
                    date_match.group(1).decode().replace("-", " ", 2)
                ).astimezone(UTC)
        messages.append(FetchedMessage(int(uid_match.group(1)), raw, flags, internal_date))
        index += 3 if tail and not _FETCH_START.match(tail) else 2
    return messages


class _SaslCommand(aioimaplib.Command):  # type: ignore[misc]  # aioimaplib is untyped
    """An AUTHENTICATE whose server challenges (``+ ...``) get an empty reply."""

    def __init__(self, *args: Any, reply: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reply = reply

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        if bytes(line).startswith(b"+"):
            self._reply()
        super().append_to_resp(line, result)


async def wait_hello(client: aioimaplib.IMAP4, within: float) -> None:
    """The greeting and the CAPABILITY aioimaplib asks right after it, within
    *within* seconds, or :class:`TimeoutError` and the connection dropped.

    aioimaplib sends that CAPABILITY with no timeout while holding its state
    lock, so a server that greets and then stalls would make its own
    ``wait_hello_from_server()`` hang even after its timeout fires (the
    cancelled wait cannot get the lock back).  So: wait here, and on a stall
    fail the pending command and drop the connection, which releases the lock
    and lets aioimaplib's wait end.  Everything that opens an aioimaplib
    connection (the channel, the demo's delivery, the tests' helpers) uses it.
    """
    hello = asyncio.ensure_future(client.wait_hello_from_server())
    done, _ = await asyncio.wait({hello}, timeout=within)
    if not done:
        protocol = client.protocol
        for pending in (
            protocol.pending_sync_command,
            *protocol.pending_async_commands.values(),
        ):
            if pending is not None:
                pending.close(b"", "NO")
        if protocol.transport is not None:
            protocol.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(hello, 5)
        raise TimeoutError(f"no answer within {within:.0f}s after the greeting")
    hello.result()


class ImapConnection:
    """One logged-in IMAP connection; every failure is translated into a
    :class:`ChannelError` that says whether retrying can help."""

    def __init__(self, settings: ImapSettings, secret: TokenSource) -> None:
        self.settings = settings
        self.secret = secret
        self.client: aioimaplib.IMAP4 | None = None
        self.capabilities: set[str] = set()
        self.selected: str | None = None
        self.uidvalidity: int | None = None
        self.uidnext: int | None = None
        self.lost = False
        self.lost_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return (
            self.client is not None
            and not self.lost
            and self.client.get_state() in ("AUTH", "SELECTED")
        )

    def _connection_lost(self, exc: Exception | None) -> None:
        # aioimaplib leaves commands on a dead connection waiting for their
        # timeout; noting the loss lets the next call reconnect at once.
        self.lost = True
        self.lost_event.set()

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.settings.ca_file) if self.settings.ca_file else None
        )
        if not self.settings.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def connect(self) -> None:
        s = self.settings
        try:
            if s.security == "tls":
                self.client = aioimaplib.IMAP4_SSL(
                    s.host, s.port, timeout=s.timeout, ssl_context=self._ssl_context()
                )
            else:
                self.client = aioimaplib.IMAP4(s.host, s.port, timeout=s.timeout)
            self.lost = False
            self.lost_event.clear()
            self.client.protocol.conn_lost_cb = self._connection_lost
            await self._wait_hello(self.client)
            if s.security == "starttls":
                await self._starttls()
            await self._login()
            # LOGIN's answer may carry a CAPABILITY code that aioimaplib parses
            # loosely (pymap's leaves tokens like "[" behind); ask again.
            await asyncio.wait_for(self.client.protocol.capability(), s.timeout)
        except ChannelError:
            await self.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            # A certificate that fails verification will not fix itself.
            await self.close()
            raise PermanentChannelError(
                f"{s.host}:{s.port}: certificate not trusted: {exc.verify_message} "
                "(set ca_file, or tls_verify = false for a test server)"
            ) from exc
        except (OSError, TimeoutError, aioimaplib.AioImapException, ssl.SSLError) as exc:
            await self.close()
            raise TransientChannelError(
                f"{s.host}:{s.port}: {str(exc) or type(exc).__name__}"
            ) from exc
        self.capabilities = {c.upper() for c in self.client.protocol.capabilities}

    async def _wait_hello(self, client: aioimaplib.IMAP4) -> None:
        await wait_hello(client, self.settings.timeout)

    async def _starttls(self) -> None:
        # aioimaplib 2.0 has no STARTTLS (iroco-co/aioimaplib#1); asyncio's
        # loop.start_tls upgrades the live transport in place, after which the
        # capabilities must be asked again (RFC 3501 section 6.2.1).
        assert self.client is not None
        protocol = self.client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise PermanentChannelError(f"{self.settings.host} does not offer STARTTLS")
        response = await asyncio.wait_for(
            protocol.execute(
                aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
            ),
            self.settings.timeout,
        )
        if response.result != "OK":
            raise PermanentChannelError(f"STARTTLS refused: {response.lines}")
        loop = asyncio.get_running_loop()
        protocol.transport = await loop.start_tls(
            protocol.transport, protocol, self._ssl_context(), server_hostname=self.settings.host
        )
        await asyncio.wait_for(protocol.capability(), self.settings.timeout)

    async def _login(self) -> None:
        assert self.client is not None
        secret = await self.secret()
        if self.settings.auth == "xoauth2":
            response = await self._xoauth2(secret)
        else:
            response = await self.client.login(self.settings.username, secret)
        if response.result != "OK":
            text = b" ".join(bytes(line) for line in response.lines).decode("utf-8", "replace")
            raise AuthError(f"{self.settings.username}@{self.settings.host}: login refused: {text}")

    async def _xoauth2(self, token: str) -> aioimaplib.Response:
        """AUTHENTICATE XOAUTH2 that answers the server's error challenge.

        A server refusing the token sends ``+ <base64 JSON error>`` and waits
        for an empty client response before its tagged NO (Google's XOAUTH2
        protocol; RFC 7628 3.2.3 for OAUTHBEARER).  aioimaplib 2.0.3's
        ``xoauth2()`` never sends it, so a bad token used to hang until the
        timeout and look transient."""
        assert self.client is not None
        protocol = self.client.protocol
        sasl = f"user={self.settings.username}\x01auth=Bearer {token}\x01\x01"
        login = base64.b64encode(sasl.encode()).decode("ascii")
        command = _SaslCommand(
            "AUTHENTICATE",
            protocol.new_tag(),
            "XOAUTH2",
            login,
            loop=protocol.loop,
            reply=lambda: protocol.transport.write(b"\r\n"),
        )
        # What goes over the wire (and into aioimaplib's debug log) is the
        # base64 login string: scrub that, not the bare token.
        response = await asyncio.wait_for(
            protocol.execute(command, scrub=login), self.settings.timeout
        )
        if response.result == "OK":
            protocol.state = aioimaplib.AUTH
        return response

    async def close(self) -> None:
        client, self.client = self.client, None
        self.selected = None
        if client is None:
            return
        with contextlib.suppress(Exception):
            if client.get_state() in ("AUTH", "SELECTED"):
                await asyncio.wait_for(client.logout(), 2)
        with contextlib.suppress(Exception):
            if client.protocol.transport is not None:
                client.protocol.transport.close()

    def drop(self) -> None:
        """Hang up without LOGOUT: for a connection in an unknown state (an
        IDLE that was cancelled, a server that stopped answering)."""
        client, self.client = self.client, None
        self.selected = None
        if client is not None and client.protocol.transport is not None:
            client.protocol.transport.close()

    async def command(self, name: str, *args: str) -> aioimaplib.Response:
        """Run one command; a NO or BAD answer is returned, a dead or stalled
        connection raises :class:`TransientChannelError` and is closed."""
        if self.client is None or self.lost:
            await self.close()
            raise TransientChannelError("connection lost")
        client = self.client
        try:
            if name == "UID":
                response = await client.uid(*args)
            elif name == "UID SEARCH":
                response = await client.uid_search(*args, charset=None)
            elif name == "SELECT":
                response = await client.select(*args)
            elif name == "EXAMINE":
                response = await client.examine(*args)
            elif name == "LIST":
                response = await client.list(*args)
            elif name == "CREATE":
                response = await client.create(*args)
            elif name == "NOOP":
                response = await client.noop()
            else:
                raise ValueError(f"unsupported command {name}")
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            await self.close()
            raise TransientChannelError(f"{name} failed: {str(exc) or type(exc).__name__}") from exc
        return response

    async def select(self, folder: str, *, readonly: bool = False) -> None:
        response = await self.command("EXAMINE" if readonly else "SELECT", quote(folder))
        if response.result != "OK":
            self.selected = None
            raise PermanentChannelError(f"cannot open folder {folder!r}: {response.lines}")
        if readonly and self.client is not None:
            # aioimaplib moves to SELECTED only on SELECT; EXAMINE selects too
            # (RFC 3501 6.3.2), and UID commands are refused without it.
            self.client.protocol.state = aioimaplib.SELECTED
        joined = b" ".join(bytes(line) for line in response.lines)
        validity = _UIDVALIDITY.search(joined)
        uidnext = _UIDNEXT.search(joined)
        self.uidvalidity = int(validity.group(1)) if validity else None
        self.uidnext = int(uidnext.group(1)) if uidnext else None
        self.selected = folder

    async def append(self, folder: str, raw: bytes, flags: Sequence[str]) -> aioimaplib.Response:
        if self.client is None:
            raise TransientChannelError("not connected")
        try:
            return await asyncio.wait_for(
                self.client.protocol.append(
                    raw, mailbox=quote(folder), flags=" ".join(flags) if flags else None
                ),
                self.settings.timeout,
            )
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            await self.close()
            raise TransientChannelError(f"APPEND failed: {str(exc) or type(exc).__name__}") from exc


class ImapInbox:
    """See :class:`leadloop.channels.base.Inbox`."""

    def __init__(self, name: str, settings: ImapSettings, secret: TokenSource) -> None:
        self.name = name
        self.settings = settings
        self._conn = ImapConnection(settings, secret)
        self._idle = ImapConnection(settings, secret)
        self._lock = asyncio.Lock()
        self._special_use: dict[str, str] | None = None

    @property
    def can_push(self) -> bool:
        return self.settings.idle

    async def open(self) -> None:
        async with self._lock:
            await self._ensure_connected()

    async def close(self) -> None:
        await self._idle.close()
        async with self._lock:
            await self._conn.close()

    async def _ensure_connected(self) -> None:
        if not self._conn.connected:
            await self._conn.connect()
            self._special_use = None

    async def fetch_since(self, cursor: Cursor, limit: int) -> FetchResult:
        async with self._lock:
            await self._ensure_connected()
            await self._conn.select(self.settings.folder)
            validity = self._conn.uidvalidity
            if validity is None:
                raise PermanentChannelError(f"{self.settings.folder}: server gave no UIDVALIDITY")
            last = int(cursor.get("uid", 0))
            if cursor.get("uidvalidity") not in (None, validity):
                log.warning(
                    "mailbox=%s UIDVALIDITY changed %s -> %s: rescanning; mail already stored "
                    "is recognised by Message-ID and not processed again",
                    self.name,
                    cursor.get("uidvalidity"),
                    validity,
                )
                last = 0
            uids = await self._uids_after(last)
            batch = uids[:limit]
            mails: list[RawMail] = []
            if batch:
                response = await self._conn.command(
                    "UID", "FETCH", _uid_set(batch), "(UID FLAGS INTERNALDATE BODY.PEEK[])"
                )
                if response.result != "OK":
                    raise TransientChannelError(f"UID FETCH refused: {response.lines[-1:]}")
                for item in sorted(parse_fetch(response.lines), key=lambda m: m.uid):
                    mails.append(
                        RawMail(
                            source_id=f"{validity}:{item.uid}",
                            raw=item.raw,
                            received_at=item.internal_date,
                            flags=item.flags,
                            token=(validity, item.uid),
                        )
                    )
            newest = max((m.token[1] for m in mails), default=last)
            return FetchResult(
                mails, {"uidvalidity": validity, "uid": newest}, more=len(uids) > limit
            )

    async def _uids_after(self, last: int) -> list[int]:
        if self._conn.uidnext is not None and self._conn.uidnext <= last + 1:
            return []
        response = await self._conn.command("UID SEARCH", "UID", f"{last + 1}:*")
        if response.result != "OK":
            raise TransientChannelError(f"UID SEARCH refused: {response.lines[-1:]}")
        # "n:*" always matches the highest UID, even below n (RFC 3501 6.4.8).
        return sorted(uid for uid in search_uids(response.lines) if uid > last)

    async def acknowledge(self, mails: Sequence[RawMail]) -> None:
        mode = self.settings.acknowledge
        if mode == "keep" or not mails:
            return
        async with self._lock:
            await self._ensure_connected()
            if self._conn.selected != self.settings.folder:
                await self._conn.select(self.settings.folder)
            # Mail fetched under an older UIDVALIDITY has no valid UID any more.
            uids = [
                uid
                for validity, uid in map(_validity_and_uid, mails)
                if validity == self._conn.uidvalidity
            ]
            if not uids:
                return
            uid_set = _uid_set(uids)
            if mode == "seen":
                await self._store(uid_set, "+FLAGS.SILENT", "(\\Seen)")
            elif mode == "keyword":
                await self._store(uid_set, "+FLAGS.SILENT", f"({self.settings.keyword})")
            else:
                await self._move(uid_set, self.settings.move_to)

    async def _store(self, uid_set: str, action: str, flags: str) -> None:
        response = await self._conn.command("UID", "STORE", uid_set, action, flags)
        if response.result != "OK":
            raise TransientChannelError(f"UID STORE refused: {response.lines[-1:]}")

    async def _move(self, uid_set: str, folder: str) -> None:
        target = quote(await self._resolve_folder(folder, create=True))
        if "MOVE" in self._conn.capabilities:
            response = await self._conn.command("UID", "MOVE", uid_set, target)
            if response.result != "OK":
                raise TransientChannelError(f"UID MOVE refused: {response.lines[-1:]}")
            return
        # RFC 6851's fallback: copy, flag deleted, expunge just those (UIDPLUS).
        response = await self._conn.command("UID", "COPY", uid_set, target)
        if response.result != "OK":
            raise TransientChannelError(f"UID COPY refused: {response.lines[-1:]}")
        await self._store(uid_set, "+FLAGS.SILENT", "(\\Deleted)")
        if "UIDPLUS" in self._conn.capabilities:
            await self._conn.command("UID", "EXPUNGE", uid_set)

    async def _special_use_folders(self) -> dict[str, str]:
        if self._special_use is None:
            response = await self._conn.command("LIST", '""', '"*"')
            found: dict[str, str] = {}
            names: list[str] = []
            for line in response.lines:
                match = _LIST.match(bytes(line))
                if not match:
                    continue
                name = _unquote(match.group(2))
                names.append(name)
                for attribute in match.group(1).decode().split():
                    if attribute.title() in SPECIAL_USE:
                        found.setdefault(attribute.title(), name)
            found.update({f"name:{name.lower()}": name for name in names})
            self._special_use = found
        return self._special_use

    async def _resolve_folder(self, folder: str, *, create: bool) -> str:
        """``Sent`` / ``Drafts`` (any case) mean the server's special-use folder
        (RFC 6154) when it marks one; any other name is used as given."""
        known = await self._special_use_folders()
        special = known.get("\\" + folder.strip("\\").title())
        if special:
            return special
        existing = known.get(f"name:{folder.lower()}")
        if existing:
            return existing
        if create:
            response = await self._conn.command("CREATE", quote(folder))
            text = b" ".join(bytes(line) for line in response.lines)
            if response.result != "OK" and b"ALREADYEXISTS" not in text.upper():
                raise PermanentChannelError(f"cannot create folder {folder!r}: {text!r}")
            self._special_use = None
        return folder

    async def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> str:
        async with self._lock:
            await self._ensure_connected()
            target = await self._resolve_folder(folder, create=True)
            response = await self._conn.append(target, raw, flags)
            if response.result != "OK":
                raise PermanentChannelError(f"APPEND to {target!r} refused: {response.lines}")
            joined = b" ".join(bytes(line) for line in response.lines)
            appended = _APPENDUID.search(joined)
            if appended:
                return f"{appended.group(1).decode()}:{appended.group(2).decode()}"
            return ""  # the server has no UIDPLUS; find it again with search_header

    async def search_header(self, folder: str, header: str, value: str) -> list[str]:
        wanted = " ".join(value.split()).lower()
        async with self._lock:
            await self._ensure_connected()
            target = await self._resolve_folder(folder, create=False)
            try:
                await self._conn.select(target, readonly=True)
            except PermanentChannelError:
                return []
            validity = self._conn.uidvalidity
            # SEARCH HEADER is a substring match (RFC 3501 6.4.4); confirm each
            # hit by comparing the whole header.
            response = await self._conn.command(
                "UID SEARCH", "HEADER", quote(header), quote(value.strip())
            )
            uids = search_uids(response.lines)
            if not uids:
                return []
            fetched = await self._conn.command(
                "UID", "FETCH", _uid_set(uids), f"(UID BODY.PEEK[HEADER.FIELDS ({header})])"
            )
            found = []
            parser = BytesHeaderParser(policy=compat32)
            for item in parse_fetch(fetched.lines):
                values = parser.parsebytes(item.raw).get_all(header, [])
                if any(" ".join(str(v).split()).lower() == wanted for v in values):
                    found.append(f"{validity}:{item.uid}")
            return found

    async def wait_for_mail(self, max_wait: float) -> bool:
        """Sit in IDLE on the second connection until the server reports a
        change (True) or *max_wait* seconds pass (False)."""
        if not self.settings.idle:
            await asyncio.sleep(max_wait)
            return False
        try:
            if not self._idle.connected:
                await self._idle.connect()
                if "IDLE" not in self._idle.capabilities:
                    log.info("mailbox=%s server has no IDLE; polling", self.name)
                    self.settings = _without_idle(self.settings)
                    await self._idle.close()
                    return False
                await self._idle.select(self.settings.folder, readonly=True)
            return await self._idle_once(min(max_wait, IDLE_MAX_SECONDS))
        except ChannelError:
            await self._idle.close()
            raise

    async def _idle_once(self, seconds: float) -> bool:
        client = self._idle.client
        assert client is not None
        try:
            try:
                idle = await client.idle_start(timeout=seconds)
            except BaseException:
                # Cancelled or failed before the server's "+": whether the
                # connection is idling is unknown, so it is not used again.
                self._idle.drop()
                raise
            changed = False
            try:
                while True:
                    push = await self._next_push(client, seconds + 5)
                    if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        break
                    lines = [bytes(line) for line in (push if isinstance(push, list) else [push])]
                    if any(line.startswith(b"BYE") for line in lines):
                        raise TransientChannelError(f"server ended IDLE: {lines[0]!r}")
                    if any(b"EXISTS" in line or b"RECENT" in line for line in lines):
                        changed = True
                        break
            except BaseException:
                # Cancelled, or the connection failed: end IDLE as well as we
                # can, but let the first exception go on.  A DONE the server
                # leaves unanswered must not turn a cancel into a channel
                # error, which the listener would take for an outage and go on.
                with contextlib.suppress(Exception):
                    await self._end_idle(client, idle)
                raise
            await self._end_idle(client, idle)
            return changed
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            await self._idle.close()
            raise TransientChannelError(f"IDLE failed: {str(exc) or type(exc).__name__}") from exc

    async def _end_idle(self, client: aioimaplib.IMAP4, idle: asyncio.Future[Any]) -> None:
        """DONE, and the server's answer to IDLE; on a dead or mute server the
        connection is dropped, so the next IDLE starts on a new one."""
        if self._idle.lost:
            idle.cancel()
            return
        client.idle_done()
        try:
            await asyncio.wait_for(idle, self.settings.timeout)
        except BaseException:
            idle.cancel()
            self._idle.drop()
            raise

    async def _next_push(self, client: aioimaplib.IMAP4, seconds: float) -> Any:
        """The server's next untagged answer during IDLE; a dead connection
        raises instead of leaving the wait to its (long) timeout."""
        push = asyncio.ensure_future(client.wait_server_push(timeout=seconds))
        lost = asyncio.ensure_future(self._idle.lost_event.wait())
        try:
            await asyncio.wait({push, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not push.done():
            push.cancel()
            raise TransientChannelError("connection lost during IDLE")
        return push.result()


def _validity_and_uid(mail: RawMail) -> tuple[int, int]:
    """From the fetch token, or from the ``UIDVALIDITY:UID`` source id when the
    mail comes from the database's record of pending acknowledgements."""
    if mail.token:
        validity, uid = mail.token
        return int(validity), int(uid)
    validity_text, _, uid_text = mail.source_id.partition(":")
    return int(validity_text), int(uid_text)


def _without_idle(settings: ImapSettings) -> ImapSettings:
    from dataclasses import replace

    return replace(settings, idle=False)
