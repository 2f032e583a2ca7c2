"""An Exchange mailbox over EWS (exchangelib): an inbox and a transport.

**Inbox.**  New mail is what ``SyncFolderItems`` reports created since the
sync state kept in the cursor, so a restart resumes from the state committed
with the last stored batch and nothing is fetched twice; an old sync state
may be used again (Exchange computes the changes from it), which is what a
fetch repeated after a crash does.  The bytes are the item's ``MimeContent``
(``GetItem``), stored as they come.  Acknowledging marks read
(``UpdateItem``), moves (``MoveItem``) or keeps; ``append`` saves MIME into a
folder (``CreateItem`` with ``SaveOnly``) with ``PR_MESSAGE_FLAGS`` set from
the IMAP flags; ``search_header`` is ``FindItem`` with a restriction.

**Transport.**  The MIME the outbox built is sent as is: ``CreateItem`` with
``MimeContent`` and ``SendAndSaveCopy`` into Sent Items.  Some Exchange
versions give the mail a new Message-ID, so every send also stamps the item
with our own Message-ID in a named property of ours
(:class:`LeadloopMessageId`, never transmitted over SMTP), reads the sent
copy back from Sent Items by it, and reports the Message-ID actually used
(``Delivery.message_id``) for the outbox to store.  The same property lets
an in-doubt send be found in Sent Items (``search_header`` on
``Message-ID`` matches either).

**Threads.**  exchangelib is synchronous (``requests``); every call runs in a
worker thread (``asyncio.to_thread``), never on the event loop.  All calls
for one mailbox (its inbox, the sender's transport and Sent lookups share one
:class:`ExchangeSession`) pass one semaphore of :data:`MAX_CONCURRENT` and
one throttle gate: ``ErrorServerBusy`` with ``BackOffMilliseconds`` holds the
next call back that long; without it, :data:`BUSY_FALLBACK_FIRST` doubling.

**Retries.**  exchangelib's own policy is ``FailFast``, deliberately: its
``FaultTolerance`` sleeps inside the worker thread (up to an hour by default),
where shutdown cannot interrupt it, where it holds a thread of the shared
pool, and where the per-mailbox gate and semaphore cannot see it.  So every
server fault comes straight back here, and the waiting happens on the event
loop.

Hand-written, and why: the per-mailbox gate and semaphore (exchangelib's
session pool is per credential, not per mailbox, and it has no async
waiting); the folder-path lookup (exchangelib only walks the whole folder
tree); the mapping of EWS errors onto the outbox's SMTP-shaped outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any, TypeVar

import requests
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    UTC,
    Account,
    Configuration,
    Credentials,
    FailFast,
    Folder,
    Message,
    OAuth2AuthorizationCodeCredentials,
    Q,
)
from exchangelib import errors as ews_errors
from exchangelib.extended_properties import ExtendedProperty
from exchangelib.folders import FolderCollection
from exchangelib.folders.base import BaseFolder
from exchangelib.items import ALWAYS_OVERWRITE, ID_ONLY
from exchangelib.services import SyncFolderItems
from oauthlib.oauth2 import OAuth2Token  # type: ignore[import-untyped]

from leadloop.channels.base import (
    AuthError,
    ChannelError,
    Cursor,
    FetchResult,
    PermanentChannelError,
    RawMail,
    TransientChannelError,
)
from leadloop.mail.smtpreply import Delivery, Reply, SmtpFailure

log = logging.getLogger("leadloop.channels.exchange")

MAX_CONCURRENT = 4
"""Requests in flight per mailbox (Exchange's EWSMaxConcurrency budget is
per user, and Microsoft's throttling guidance asks clients to stay well
under it)."""
BUSY_FALLBACK_FIRST = 1.0
BUSY_FALLBACK_MAX = 60.0
BUSY_ATTEMPTS = 5
"""A call answered ``ErrorServerBusy`` this many times in a row fails (as a
transient error: the watcher's or the outbox's own backoff takes over)."""
MAX_SYNC_CHANGES = 512
"""``SyncFolderItems`` returns at most 512 changes per call."""
READBACK_DELAYS = (0.0, 0.25, 0.5, 1.0, 2.0)
"""Waits before each look for a sent mail's copy in Sent Items (the copy is
filed asynchronously after ``SendAndSaveCopy`` returns)."""

# EWS distinguished folders for the names leadloop's config uses.
WELL_KNOWN = {
    "inbox": "inbox",
    "sent": "sent",
    "sent items": "sent",
    "drafts": "drafts",
    "trash": "trash",
    "deleted items": "trash",
    "junk": "junk",
    "junk email": "junk",
}
# PR_MESSAGE_FLAGS bits (MS-OXCMSG 2.2.1.6): an item saved from MIME is an
# unsent draft unless this is set at creation.
MSGFLAG_READ = 0x1
MSGFLAG_UNSENT = 0x8
FLAG_BITS = {"\\Seen": MSGFLAG_READ, "\\Draft": MSGFLAG_UNSENT}


class LeadloopMessageId(ExtendedProperty):  # type: ignore[misc]  # exchangelib is untyped
    """The Message-ID leadloop built, on the items it sends: a named property
    in leadloop's own property set, kept in the mailbox, never sent."""

    property_set_id = "5c0f4f53-7a3e-4c1b-9a43-2f1e3b6a8d10"
    property_name = "LeadloopMessageId"
    property_type = "String"


class MessageFlags(ExtendedProperty):  # type: ignore[misc]
    """``PR_MESSAGE_FLAGS`` (0x0E07)."""

    property_tag = 0x0E07
    property_type = "Integer"


def _register(name: str, cls: type[ExtendedProperty]) -> None:
    with contextlib.suppress(ValueError):  # already registered (module reloaded)
        Message.register(name, cls)


_register("leadloop_message_id", LeadloopMessageId)
_register("leadloop_message_flags", MessageFlags)

T = TypeVar("T")
SecretGetter = Callable[[], Awaitable[str]]
"""The password (ntlm, basic) or a current OAuth2 access token (oauth2)."""


@dataclass(frozen=True)
class ExchangeSettings:
    url: str
    """The EWS endpoint, ``https://<server>/EWS/Exchange.asmx``."""
    address: str
    """The mailbox's primary SMTP address."""
    username: str
    auth: str = "ntlm"  # "ntlm", "basic" or "oauth2"
    access: str = "delegate"  # or "impersonation"
    folder: str = "INBOX"
    acknowledge: str = "seen"  # "seen", "move" or "keep"
    move_to: str = "Processed"
    timeout: float = 30.0
    concurrency: int = MAX_CONCURRENT
    busy_fallback_first: float = BUSY_FALLBACK_FIRST
    busy_fallback_max: float = BUSY_FALLBACK_MAX
    busy_attempts: int = BUSY_ATTEMPTS


class ServerBusy(TransientChannelError):
    """Still ``ErrorServerBusy`` after :data:`BUSY_ATTEMPTS` tries."""


class ExchangeSession:
    """One mailbox's exchangelib account, its semaphore and its throttle gate.

    Shared by the mailbox's inbox and transport (see :func:`session_for`).
    """

    def __init__(self, settings: ExchangeSettings, secret: SecretGetter) -> None:
        self.settings = settings
        self._secret = secret
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._not_before = 0.0  # time.monotonic() before which no call starts
        self._busy_streak = 0
        self._account: Account | None = None
        self._account_lock = asyncio.Lock()
        self._token: str | None = None
        self._folders: dict[str, BaseFolder] = {}
        self._folders_lock = threading.Lock()

    async def call(
        self, work: Callable[[Account], T], *, before: Callable[[], Awaitable[None]] | None = None
    ) -> T:
        """Run ``work(account)`` in a worker thread, within the mailbox's
        concurrency and after any back-off the server asked for.

        *before* runs once, just before the first request is issued (the
        transport's dot mark).  ``ErrorServerBusy`` is retried here; every
        other exchangelib error is raised as it is.
        """
        s = self.settings
        for _ in range(s.busy_attempts):
            async with self._slots:
                await self._wait_gate()
                account = await self._ready_account()
                if before is not None:
                    await before()
                    before = None
                try:
                    result = await asyncio.to_thread(work, account)
                except ews_errors.TransportError as exc:
                    # exchangelib's version probe wraps what it got in a
                    # TransportError: a busy answer there is a busy answer too.
                    busy = exc if isinstance(exc, ews_errors.ErrorServerBusy) else exc.__context__
                    if not isinstance(busy, ews_errors.ErrorServerBusy) or _is_connection_error(
                        busy
                    ):
                        raise
                    self._back_off(busy)
                    continue
                self._busy_streak = 0
                return result
        raise ServerBusy(f"{s.address}: Exchange still busy after {s.busy_attempts} tries")

    async def _wait_gate(self) -> None:
        # A loop, not one sleep: another call's busy answer may move the gate
        # further while this one waits.
        while (wait := self._not_before - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    def _back_off(self, exc: ews_errors.ErrorServerBusy) -> None:
        s = self.settings
        self._busy_streak += 1
        # exchangelib reports "no BackOffMilliseconds" as its RETRY_WAIT, set
        # to 0 on our protocol (see _build_account), so a falsy value is "absent".
        if exc.back_off:
            delay = float(exc.back_off)
            source = "BackOffMilliseconds"
        else:
            delay = min(s.busy_fallback_first * 2 ** (self._busy_streak - 1), s.busy_fallback_max)
            source = "fallback"
        self._not_before = max(self._not_before, time.monotonic() + delay)
        log.warning("mailbox=%s ErrorServerBusy: next call in %.2fs (%s)", s.address, delay, source)

    async def _ready_account(self) -> Account:
        secret = await self._secret()
        async with self._account_lock:
            if self._account is None:
                self._account = await asyncio.to_thread(self._build_account, secret)
                self._token = secret
            elif self.settings.auth == "oauth2" and secret != self._token:
                _set_token(self._account, secret)
                self._token = secret
        return self._account

    def _build_account(self, secret: str) -> Account:
        s = self.settings
        if s.auth == "oauth2":
            # No client id or secret: exchangelib never fetches or refreshes a
            # token itself; leadloop's token provider does, and _set_token
            # hands each new one over.
            credentials: Any = OAuth2AuthorizationCodeCredentials(
                access_token=OAuth2Token({"access_token": secret, "token_type": "Bearer"})
            )
            auth_type = OAUTH2
        else:
            credentials = Credentials(s.username, secret)
            auth_type = NTLM if s.auth == "ntlm" else BASIC
        config = Configuration(
            service_endpoint=s.url,
            credentials=credentials,
            auth_type=auth_type,
            retry_policy=FailFast(),
            max_connections=s.concurrency,
        )
        account = Account(
            primary_smtp_address=s.address,
            config=config,
            autodiscover=False,
            access_type=IMPERSONATION if s.access == "impersonation" else DELEGATE,
            default_timezone=UTC,
        )
        protocol = account.protocol
        # exchangelib caches one protocol (and session pool) per endpoint and
        # credential, shared by every mailbox reached with it (impersonation):
        # give each of them its own MAX_CONCURRENT sessions.
        users = _protocol_users.setdefault(id(protocol), set())
        users.add(s.address)
        protocol.max_connections = s.concurrency * len(users)
        # Instance overrides of class defaults: the HTTP timeout, and a
        # RETRY_WAIT of 0 so that an ErrorServerBusy without BackOffMilliseconds
        # reaches us with back_off 0 instead of exchangelib's 10 s guess.
        protocol.TIMEOUT = s.timeout
        protocol.RETRY_WAIT = 0
        return account

    def folder(self, account: Account, path: str, *, create: bool) -> BaseFolder | None:
        """The folder at *path* (``Inbox``, ``Sent``, ``Inbox/Processed``...);
        runs in a worker thread.  The first segment may name a well-known
        folder; the others are found by display name (created when *create*)."""
        key = path.strip("/").lower()
        with self._folders_lock:
            if key in self._folders:
                return self._folders[key]
        parts = [part for part in path.split("/") if part.strip()]
        if not parts:
            raise PermanentChannelError(f"empty folder name {path!r}")
        first = parts[0].strip().lower()
        if first in WELL_KNOWN:
            folder: BaseFolder = getattr(account, WELL_KNOWN[first])
            parts = parts[1:]
        else:
            folder = account.msg_folder_root
        for part in parts:
            child = _child_folder(account, folder, part.strip())
            if child is None:
                if not create:
                    return None
                child = Folder(parent=folder, name=part.strip(), folder_class="IPF.Note")
                child.save()
            folder = child
        with self._folders_lock:
            self._folders[key] = folder
        return folder

    async def close(self) -> None:
        account, self._account = self._account, None
        if account is not None:
            await asyncio.to_thread(account.protocol.close)


_protocol_users: dict[int, set[str]] = {}
_sessions: weakref.WeakValueDictionary[tuple[Any, ...], ExchangeSession] = (
    weakref.WeakValueDictionary()
)


def session_for(settings: ExchangeSettings, secret: SecretGetter) -> ExchangeSession:
    """The mailbox's shared session on the running event loop (its semaphore
    belongs to that loop), made on first use; inbox and transport hold it."""
    key = (id(asyncio.get_running_loop()), settings.url, settings.address, settings.username)
    session = _sessions.get(key)
    if session is None or session.settings != settings:
        session = ExchangeSession(settings, secret)
        _sessions[key] = session
    return session


def _set_token(account: Account, token: str) -> None:
    """Give exchangelib a new access token.  Every pooled session of the
    protocol signs requests through the one oauthlib client of its
    credentials, so updating that client updates them all."""
    credentials = account.protocol.credentials
    value = OAuth2Token({"access_token": token, "token_type": "Bearer"})
    with credentials.lock:
        credentials.access_token = value
        client = credentials.client
        client.token = value
        client.populate_token_attributes(value)


def _child_folder(account: Account, parent: BaseFolder, name: str) -> BaseFolder | None:
    found = list(
        FolderCollection(account=account, folders=[parent]).find_folders(
            q=Q(name__iexact=name), depth="Shallow"
        )
    )
    folders = [f for f in found if isinstance(f, BaseFolder)]
    return folders[0] if folders else None


def _is_connection_error(exc: Exception) -> bool:
    """A connection that broke or timed out: the request may have reached the
    server.  exchangelib raises ErrorTimeoutExpired, or re-raises it as
    ErrorServerBusy when it has more than one session."""
    if isinstance(exc, ews_errors.ErrorTimeoutExpired | requests.RequestException):
        return True
    return isinstance(exc, ews_errors.ErrorServerBusy) and str(exc).startswith(
        "Reraised from ErrorTimeoutExpired"
    )


_AUTH_ERRORS: tuple[type[Exception], ...] = (
    ews_errors.UnauthorizedError,
    ews_errors.ErrorAccessDenied,
    ews_errors.ErrorImpersonateUserDenied,
    ews_errors.ErrorImpersonationDenied,
    ews_errors.ErrorImpersonationFailed,
    ews_errors.ErrorNonExistentMailbox,
)
# Errors that say the request itself is wrong: repeating it will not help.
_PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    ews_errors.ErrorFolderNotFound,
    ews_errors.ErrorInvalidIdMalformed,
    ews_errors.ErrorSchemaValidation,
    ews_errors.ErrorInvalidRequest,
    ews_errors.ErrorInvalidOperation,
    ews_errors.ErrorInvalidPropertyRequest,
    ews_errors.ErrorMessageSizeExceeded,
    ews_errors.ErrorSendAsDenied,
    ews_errors.ErrorInvalidRecipients,
    ews_errors.CASError,
)


@contextlib.contextmanager
def _translated(address: str, what: str) -> Iterator[None]:
    """exchangelib's errors as channel errors that say whether to retry."""
    try:
        yield
    except ChannelError:
        raise
    except _AUTH_ERRORS as exc:
        raise AuthError(f"{address}: {what}: {type(exc).__name__}: {exc}") from exc
    except _PERMANENT_ERRORS as exc:
        raise PermanentChannelError(f"{address}: {what}: {type(exc).__name__}: {exc}") from exc
    except (ews_errors.EWSError, requests.RequestException, OSError) as exc:
        raise TransientChannelError(f"{address}: {what}: {type(exc).__name__}: {exc}") from exc


class ExchangeInbox:
    """See :class:`leadloop.channels.base.Inbox`."""

    def __init__(
        self,
        name: str,
        settings: ExchangeSettings,
        secret: SecretGetter,
        *,
        session: ExchangeSession | None = None,
    ) -> None:
        if settings.acknowledge not in ("seen", "move", "keep"):
            raise ValueError(f"acknowledge mode {settings.acknowledge!r} is not for exchange")
        self.name = name
        self.settings = settings
        self._secret = secret
        self._session = session

    @property
    def session(self) -> ExchangeSession:
        if self._session is None:
            self._session = session_for(self.settings, self._secret)
        return self._session

    async def open(self) -> None:
        with _translated(self.settings.address, f"open {self.settings.folder}"):
            await self.session.call(self._watched)

    async def close(self) -> None:
        # The session is shared with the transport; dropping it lets it go.
        self._session = None

    def _watched(self, account: Account) -> BaseFolder:
        folder = self.session.folder(account, self.settings.folder, create=False)
        if folder is None:
            raise PermanentChannelError(
                f"{self.settings.address}: no folder {self.settings.folder!r}"
            )
        return folder

    async def fetch_since(self, cursor: Cursor, limit: int) -> FetchResult:
        with _translated(self.settings.address, "SyncFolderItems"):
            try:
                return await self.session.call(lambda a: self._fetch(a, cursor, limit))
            except ews_errors.ErrorInvalidSyncStateData:
                log.warning(
                    "mailbox=%s sync state refused: syncing %s from the start; mail already "
                    "stored is recognised and not processed again",
                    self.name,
                    self.settings.folder,
                )
                return await self.session.call(lambda a: self._fetch(a, {}, limit))

    def _fetch(self, account: Account, cursor: Cursor, limit: int) -> FetchResult:
        folder = self._watched(account)
        state = cursor.get("sync_state") if cursor.get("folder") == self.settings.folder else None
        service = SyncFolderItems(account=account)
        changes = list(
            service.call(
                folder=folder,
                shape=ID_ONLY,
                additional_fields=set(),
                sync_state=state,
                ignore=None,
                max_changes_returned=max(1, min(limit, MAX_SYNC_CHANGES)),
                sync_scope="NormalItems",
            )
        )
        # Only creations are new mail; read flags, updates and deletions of
        # mail we already have (our own acknowledgements among them) are not.
        created = [item for change, item in changes if change == SyncFolderItems.CREATE]
        mails: list[RawMail] = []
        if created:
            fetched = account.fetch(
                ids=[(item.id, item.changekey) for item in created],
                only_fields=["mime_content", "datetime_received", "is_read"],
            )
            for item in fetched:
                if isinstance(item, Exception):
                    # Deleted or moved away between the sync and the fetch.
                    log.info("mailbox=%s item gone before it was fetched: %s", self.name, item)
                    continue
                raw = item.mime_content
                mails.append(
                    RawMail(
                        source_id=item.id,
                        raw=raw if isinstance(raw, bytes) else str(raw).encode(),
                        received_at=item.datetime_received,
                        flags=frozenset({"\\Seen"}) if item.is_read else frozenset(),
                        token=(item.id, item.changekey),
                    )
                )
        new_state = service.sync_state or state
        return FetchResult(
            mails,
            {"folder": self.settings.folder, "sync_state": new_state},
            more=not service.includes_last_item_in_range and new_state != state,
        )

    async def acknowledge(self, mails: Sequence[RawMail]) -> None:
        mode = self.settings.acknowledge
        if mode == "keep" or not mails:
            return
        # The change key is optional in UpdateItem and MoveItem; mail from the
        # database's pending acknowledgements has only its item id.
        ids = [(mail.source_id, mail.token[1] if mail.token else None) for mail in mails]
        with _translated(self.settings.address, f"acknowledge ({mode})"):
            results = await self.session.call(lambda a: self._acknowledge(a, mode, ids))
        for result in results:
            if isinstance(result, ews_errors.ErrorItemNotFound):
                log.info("mailbox=%s already moved or deleted by someone else", self.name)
            elif isinstance(result, Exception):
                raise result

    def _acknowledge(
        self, account: Account, mode: str, ids: list[tuple[str, str | None]]
    ) -> list[Any]:
        if mode == "seen":
            updates = [
                (Message(account=account, id=item_id, changekey=None, is_read=True), ["is_read"])
                for item_id, _ in ids
            ]
            return list(account.bulk_update(updates, conflict_resolution=ALWAYS_OVERWRITE))
        target = self.session.folder(account, self.settings.move_to, create=True)
        return list(account.bulk_move(ids=ids, to_folder=target))

    async def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> str:
        unknown = [flag for flag in flags if flag not in FLAG_BITS]
        if unknown:
            raise ValueError(f"Exchange cannot store flags {unknown}")
        bits = 0
        for flag in flags:
            bits |= FLAG_BITS[flag]
        with _translated(self.settings.address, f"append to {folder}"):
            return await self.session.call(lambda a: self._append(a, folder, raw, bits))

    def _append(self, account: Account, folder_path: str, raw: bytes, bits: int) -> str:
        folder = self.session.folder(account, folder_path, create=True)
        message = Message(
            account=account, folder=folder, mime_content=raw, leadloop_message_flags=bits
        )
        message.save()
        return str(message.id)

    async def search_header(self, folder: str, header: str, value: str) -> list[str]:
        with _translated(self.settings.address, f"search {folder}"):
            found = await self.session.call(lambda a: self._search(a, folder, header, value))
        return [item_id for item_id, _ in found]

    def _search(
        self, account: Account, folder_path: str, header: str, value: str
    ) -> list[tuple[str, str]]:
        """``(item id, Message-ID)`` of each match."""
        folder = self.session.folder(account, folder_path, create=False)
        if folder is None:
            return []
        wanted = " ".join(value.split()).lower()
        name = header.strip().lower()
        if name == "message-id":
            # Ours as sent, or what Exchange made of it (its copy in Sent
            # Items carries our id in LeadloopMessageId).
            query = folder.filter(
                Q(message_id__iexact=value.strip()) | Q(leadloop_message_id__iexact=value.strip())
            ).only("message_id", "leadloop_message_id")
            found = []
            for item in query:
                if wanted in (_norm(item.message_id), _norm(item.leadloop_message_id)):
                    found.append((str(item.id), str(item.message_id or "")))
            return found
        if name == "subject":
            query = folder.filter(subject__iexact=value.strip()).only("subject", "message_id")
            return [
                (str(item.id), str(item.message_id or ""))
                for item in query
                if _norm(item.subject) == wanted
            ]
        # Any other header: EWS cannot search it, so read the headers of
        # every message in the folder.
        parser = BytesHeaderParser(policy=compat32)
        found = []
        for item in folder.all().only("mime_content", "message_id"):
            headers = parser.parsebytes(item.mime_content or b"")
            if any(_norm(got) == wanted for got in headers.get_all(header, [])):
                found.append((str(item.id), str(item.message_id or "")))
        return found

    async def sent_as(self, folder: str, message_id: str) -> str | None:
        """The Message-ID the copy in *folder* of the mail we sent as
        *message_id* carries (Exchange may have rewritten it), if found."""
        with _translated(self.settings.address, f"search {folder}"):
            found = await self.session.call(
                lambda a: self._search(a, folder, "Message-ID", message_id)
            )
        return found[0][1] or None if found else None


def _norm(value: object) -> str:
    return " ".join(str(value or "").split()).lower()


class ExchangeTransport:
    """Sends a mailbox's mail through its Exchange server, with the outbox's
    semantics (see ``daemon/sender.py``): ``send`` has the signature of
    ``SmtpConnection.send`` and reports outcomes in the same terms."""

    def __init__(self, inbox: ExchangeInbox) -> None:
        self.inbox = inbox
        self.address = inbox.settings.address

    async def close(self) -> None:
        await self.inbox.close()

    async def send(
        self,
        envelope_from: str,
        recipients: list[str],
        data: bytes,
        *,
        before_dot: Callable[[], Awaitable[None]] | None = None,
    ) -> Delivery:
        headers = BytesHeaderParser(policy=compat32).parsebytes(data)
        ours = " ".join(str(headers.get("Message-ID", "")).split())
        listed = {
            address.lower()
            for _, address in getaddresses(
                [str(v) for key in ("To", "Cc", "Bcc") for v in headers.get_all(key, [])]
            )
        }
        missing = [rcpt for rcpt in recipients if rcpt.lower() not in listed]
        if missing:
            # EWS sends to the recipients in the MIME headers; an envelope-only
            # recipient would silently not get the mail.
            raise SmtpFailure(
                "data",
                Reply(554, f"envelope recipients {missing} are not in the headers (EWS)"),
                "EWS sends to the MIME headers' recipients",
            )
        session = self.inbox.session
        try:
            await session.call(lambda a: session.folder(a, "Sent", create=False))
        except _CALL_ERRORS as exc:
            # Nothing was sent: like an SMTP connection that failed.
            raise _failure("connect", exc) from exc

        def create(account: Account) -> None:
            message = Message(
                account=account,
                folder=account.sent,
                mime_content=data,
                leadloop_message_id=ours or None,
            )
            message.send_and_save()

        try:
            await session.call(create, before=before_dot)
        except _CALL_ERRORS as exc:
            raise _failure("dot" if _is_connection_error(exc) else "data", exc) from exc
        actual = await self._read_back(ours) if ours else None
        return Delivery(
            accepted=list(recipients),
            final=Reply(250, "2.0.0 sent by Exchange (EWS CreateItem SendAndSaveCopy)"),
            message_id=actual if actual and actual != ours else None,
        )

    async def _read_back(self, ours: str) -> str | None:
        """The Message-ID of our copy in Sent Items, once Exchange filed it."""
        for delay in READBACK_DELAYS:
            await asyncio.sleep(delay)
            try:
                actual = await self.inbox.sent_as("Sent", ours)
            except ChannelError as exc:
                log.warning("mailbox=%s reading back %s failed: %s", self.address, ours, exc)
                return None
            if actual:
                if actual != ours:
                    log.info(
                        "mailbox=%s Exchange sent %s as %s: storing the latter",
                        self.address,
                        ours,
                        actual,
                    )
                return actual
        log.warning(
            "mailbox=%s sent %s but found no copy in Sent Items: keeping our Message-ID",
            self.address,
            ours,
        )
        return None


# What a call can fail with; anything else (a failed dot mark) is the caller's.
_CALL_ERRORS = (ews_errors.EWSError, requests.RequestException, OSError, ChannelError)


def _failure(stage: str, exc: BaseException) -> SmtpFailure:
    """An exchangelib error in the outbox's SMTP-shaped terms (``agent/outbox.py``)."""
    detail = f"{type(exc).__name__}: {exc}"[:400]
    if isinstance(exc, ServerBusy):
        return SmtpFailure(
            "data" if stage != "connect" else "connect", Reply(451, f"4.7.0 {exc}"), detail
        )
    if isinstance(exc, ews_errors.UnauthorizedError):
        return SmtpFailure("connect", Reply(535, "5.7.8 Exchange refused the credentials"), detail)
    if isinstance(exc, (*_AUTH_ERRORS, ews_errors.ErrorSendAsDenied)):
        return SmtpFailure("mail", Reply(550, f"5.7.1 {type(exc).__name__}"), detail)
    if stage == "dot" or isinstance(exc, requests.RequestException | OSError):
        return SmtpFailure(stage if stage != "data" else "connect", None, detail)  # type: ignore[arg-type]
    if isinstance(exc, ChannelError):
        return SmtpFailure("connect", None, detail)
    if isinstance(exc, ews_errors.ErrorInvalidRecipients):
        return SmtpFailure("rcpt", Reply(550, "5.1.3 ErrorInvalidRecipients"), detail)
    if isinstance(exc, ews_errors.ErrorMessageSizeExceeded):
        return SmtpFailure("data", Reply(552, "5.3.4 ErrorMessageSizeExceeded"), detail)
    if isinstance(exc, ews_errors.ResponseMessageError) and not isinstance(exc, _PERMANENT_ERRORS):
        # Mailbox store unavailable, internal transient errors...: try later.
        return SmtpFailure(stage, Reply(451, f"4.3.0 {type(exc).__name__}"), detail)  # type: ignore[arg-type]
    if isinstance(exc, ews_errors.EWSError):
        return SmtpFailure(stage, Reply(554, f"5.0.0 {type(exc).__name__}"), detail)  # type: ignore[arg-type]
    return SmtpFailure("connect", None, detail)
