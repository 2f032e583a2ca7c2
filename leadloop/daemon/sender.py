"""The sender: drains the outbox over SMTP.

One drain pass claims a batch of due rows (``agent/outbox.claim``), sends
them over a small pool of SMTP connections, and records each outcome
(``agent/outbox.record``).  Two writes per mail must be durable before the
next step: the *dot mark* (committed after the message content has been
written and before the final dot, so a crash before it means "not sent,
send again" and a crash after it means "in doubt") and the outcome.  Both
are group-committed: every mail waiting at that point shares one
transaction, so the database costs a few commits per batch rather than two
per mail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import outbox
from leadloop.agent.outbox import OutboxSettings, Ready, Status
from leadloop.channels.base import ChannelError
from leadloop.channels.smtp import Delivery, SmtpConnection, SmtpFailure, SmtpSettings
from leadloop.clock import Clock
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import Lead, OutboundMessage

log = logging.getLogger("leadloop.daemon.sender")


class SentFolder(Protocol):
    """What the sender needs of a mailbox's IMAP side (``ImapInbox`` has it)."""

    async def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> str: ...

    async def search_header(self, folder: str, header: str, value: str) -> list[str]: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Sends one claimed mail: the SMTP relay (``SmtpConnection``), or a
    mailbox that sends through its own server (``ExchangeTransport``).

    ``send`` runs one transaction, calls *before_dot* once just before the
    point after which the outcome may be unknown, returns a
    :class:`Delivery` (``message_id`` set when the server changed ours) or
    raises :class:`SmtpFailure`."""

    async def send(
        self,
        envelope_from: str,
        recipients: list[str],
        data: bytes,
        *,
        before_dot: Callable[[], Awaitable[None]] | None = None,
    ) -> Delivery: ...

    async def close(self) -> None: ...


Outcome = Delivery | SmtpFailure


@dataclass
class _Op:
    """One durable write waiting for the next group commit: a dot mark
    (``outcome`` is None) or an outcome."""

    item: Ready
    outcome: Outcome | None
    done: asyncio.Future[None]


class _Committer:
    """Group commit for the sender's two durable writes.

    Callers await :meth:`dot` or :meth:`outcome`; one flusher applies every
    write that arrived while the previous transaction was committing, in one
    transaction, on one long-lived session.
    """

    def __init__(
        self,
        db: Database,
        lock: asyncio.Lock,
        apply: Callable[[AsyncSession, list[int], list[tuple[Ready, Outcome]]], Awaitable[None]],
    ) -> None:
        self._db = db
        self._lock = lock
        self._apply = apply
        self._pending: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, item: Ready, outcome: Outcome | None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(item, outcome, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        # The outer loop: writes submitted while the session was closing
        # (this task not yet done, so no new flusher was started) still go.
        while self._pending:
            await self._flush_session()

    async def _flush_session(self) -> None:
        async with self._db.sessions() as session:
            while self._pending:
                batch, self._pending = self._pending, []
                dots = [op.item.id for op in batch if op.outcome is None]
                outcomes = [(op.item, op.outcome) for op in batch if op.outcome is not None]
                try:
                    async with self._lock:
                        await self._apply(session, dots, outcomes)
                        await session.commit()
                except BaseException as exc:
                    await session.rollback()
                    for op in batch:
                        if not op.done.done():
                            op.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for op in batch:
                        if not op.done.done():
                            op.done.set_result(None)
                finally:
                    session.expunge_all()


@dataclass
class PassResult:
    claimed: int = 0
    sent: int = 0
    other: int = 0


Fault = Callable[[str, Ready], Awaitable[None]]
"""Test hook: called at ``before_smtp``, ``before_dot``, ``after_reply``,
``after_commit`` (the crash-matrix test kills the process there)."""


class Sender:
    def __init__(
        self,
        db: Database,
        settings: OutboxSettings,
        smtp: SmtpSettings,
        secret: Callable[[], Awaitable[str | None]],
        clock: Clock,
        *,
        worker: str,
        connections: int = 4,
        sent_folders: dict[str, SentFolder] | None = None,
        draft_folders: dict[str, SentFolder] | None = None,
        transports: dict[str, Transport] | None = None,
        fault: Fault | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.worker = worker
        self.sent_folders = sent_folders or {}
        self.draft_folders = draft_folders or {}
        """Sellers' own mailboxes (``[[sellers]] mailbox``): research-mode
        drafts are filed in their Drafts folders."""
        self.transports = transports or {}
        """Mailboxes that send through their own server (Exchange), by name;
        every other mailbox's mail goes through the SMTP relay."""
        self.fault = fault
        self._write_lock = asyncio.Lock()
        self._connections = [SmtpConnection(smtp, secret) for _ in range(connections)]
        self._committer = _Committer(db, self._write_lock, self._apply)
        self._running = asyncio.Lock()
        self.observe: Callable[[float], None] | None = None
        self.live_owners: Callable[[], Awaitable[set[str]]] | None = None
        """The daemons alive on the shared database: their claims are theirs."""
        """Told how long each SMTP transaction took (``/metrics``)."""

    async def close(self) -> None:
        for conn in self._connections:
            await conn.close()
        for folder in [*self.sent_folders.values(), *self.draft_folders.values()]:
            await folder.close()
        for transport in self.transports.values():
            await transport.close()

    async def recover(self, *, all_claims: bool, keep: Collection[str] = ()) -> int:
        """Settle rows a dead process left ``sending`` (never those of the
        live daemons in *keep*)."""
        async with self._write_lock, self.db.sessions() as session:
            count = await outbox.recover(
                session, self.settings, self.clock.now(), all_claims=all_claims, keep=keep
            )
            await session.commit()
        if count:
            log.warning("recovered %d outbound mails left sending by a stopped sender", count)
        return count

    async def drain(
        self, *, stop: asyncio.Event | None = None, limit: int | None = None
    ) -> PassResult:
        """Send everything that is due and allowed now (until *stop* is set,
        or about *limit* mails are claimed: the caller comes back for more).

        A feeder claims batches into a small local queue while one worker per
        SMTP connection sends from it, so claiming overlaps sending.
        """
        total = PassResult()
        async with self._running:
            # Claims whose lease ran out and whose daemon is gone.  Our own
            # may be taken here: no other drain of ours runs, so none of ours
            # is in flight.
            others = await self.live_owners() if self.live_owners else set()
            await self.recover(all_claims=False, keep=others - {self.worker})
            await self._settle_in_doubt()
            lanes = len(self._connections)
            work: asyncio.Queue[Ready | None] = asyncio.Queue(
                maxsize=max(self.settings.claim_batch, lanes)
            )
            unsent: list[int] = []
            workers = [
                asyncio.create_task(self._worker(conn, work, total, stop, unsent))
                for conn in self._connections
            ]
            try:
                while not (stop and stop.is_set()) and (limit is None or total.claimed < limit):
                    async with self._write_lock, self.db.sessions() as session:
                        ready = await outbox.claim(
                            session, self.settings, worker=self.worker, now=self.clock.now()
                        )
                        await session.commit()
                    if not ready:
                        break
                    total.claimed += len(ready)
                    for item in ready:
                        await work.put(item)
            except BaseException:
                for task in workers:
                    task.cancel()
                raise
            finally:
                for _ in workers:
                    await work.put(None)
                await asyncio.gather(*workers, return_exceptions=True)
                if unsent:
                    await self._unclaim(unsent)
            await self._append_copies()
            await self._file_drafts()
        return total

    async def _unclaim(self, ids: list[int]) -> None:
        """Claimed but never started (the daemon is stopping): queued again."""
        async with self._write_lock, self.db.sessions() as session:
            await outbox.unclaim(session, ids)
            await session.commit()

    async def _worker(
        self,
        conn: SmtpConnection,
        work: asyncio.Queue[Ready | None],
        total: PassResult,
        stop: asyncio.Event | None,
        unsent: list[int],
    ) -> None:
        """Send items one after another on *conn*.  The outcome of one mail
        commits while the next is on the wire; before the next final dot the
        worker waits for it, so the order of durable writes per connection
        is kept."""
        previous: tuple[Ready, asyncio.Future[None]] | None = None

        async def settle_previous() -> None:
            nonlocal previous
            if previous is not None:
                item, committed = previous
                previous = None
                await committed
                if self.fault:
                    await self.fault("after_commit", item)

        while (item := await work.get()) is not None:
            if stop is not None and stop.is_set():
                unsent.append(item.id)
                continue
            try:
                outcome = await self._send_one(conn, item, settle_previous)
            except Exception:
                # The row stays claimed; its lease ends and recover() settles it.
                log.exception("sending outbound %s failed unexpectedly", item.id)
                total.other += 1
                continue
            if isinstance(outcome, Delivery) and outcome.accepted:
                total.sent += 1
            else:
                total.other += 1
            previous = (item, self._committer.submit(item, outcome))
        await settle_previous()

    async def _send_one(
        self, conn: Transport, item: Ready, settle_previous: Callable[[], Awaitable[None]]
    ) -> Outcome:
        if self.fault:
            await self.fault("before_smtp", item)

        async def before_dot() -> None:
            await settle_previous()
            if self.fault:
                await self.fault("before_dot", item)
            await self._committer.submit(item, None)

        started = time.monotonic()
        transport = self.transports.get(item.mailbox, conn)
        try:
            outcome: Outcome = await transport.send(
                item.envelope_from, item.recipients, item.raw, before_dot=before_dot
            )
        except SmtpFailure as exc:
            outcome = exc
        if self.observe is not None:
            self.observe(time.monotonic() - started)
        # A transaction that failed before its dot never waited for the previous
        # outcome; wait now, so outcomes commit in the order they happened.
        await settle_previous()
        if self.fault:
            await self.fault("after_reply", item)
        return outcome

    async def _apply(
        self, session: AsyncSession, dots: list[int], outcomes: list[tuple[Ready, Outcome]]
    ) -> None:
        await outbox.mark_dot(session, dots)
        if not outcomes:
            return
        now = self.clock.now()
        plain = [
            outbox.Sent(item.id, item.kind, item.lead_id, item.mailbox, str(outcome.final))
            for item, outcome in outcomes
            if isinstance(outcome, Delivery)
            and outcome.final is not None
            and outcome.final.code < 300
            and not outcome.rejected
        ]
        await outbox.record_sent_many(session, self.settings, plain, now)
        await _store_sent_as(
            session,
            {
                item.id: outcome.message_id
                for item, outcome in outcomes
                if isinstance(outcome, Delivery)
                and outcome.message_id
                and outcome.message_id != item.message_id
            },
            now,
        )
        done = {sent.row_id for sent in plain}
        others = [(item.id, outcome) for item, outcome in outcomes if item.id not in done]
        if not others:
            return
        ids = [row_id for row_id, _ in others]
        with session.no_autoflush:
            rows = {
                row.id: row
                for row in await session.scalars(
                    select(OutboundMessage).where(OutboundMessage.id.in_(ids))
                )
            }
            lead_ids = {row.lead_id for row in rows.values() if row.lead_id is not None}
            if lead_ids:
                # Into the identity map: record() finds them without a query each.
                await session.scalars(select(Lead).where(Lead.id.in_(lead_ids)))
            for row_id, outcome in others:
                row = rows.get(row_id)
                if row is None or row.status != Status.SENDING:
                    continue
                result = await outbox.record(session, self.settings, row, outcome, now)
                log.warning(
                    "outbound %s to %s: %s (%s)", row.id, row.to_addrs, result, row.smtp_reply
                )

    async def _settle_in_doubt(self) -> None:
        """Look up in-doubt mail in the Sent folder of a ``sent_copy = "server"`` mailbox."""
        now = self.clock.now()
        async with self.db.sessions() as session:
            rows = list(
                (
                    await session.scalars(
                        select(OutboundMessage).where(
                            OutboundMessage.status == Status.IN_DOUBT,
                            OutboundMessage.not_before <= now,
                        )
                    )
                ).all()
            )
            for row in rows:
                box = self.settings.box(row.payload.get("mailbox"))
                folder = self.sent_folders.get(box.name)
                found: bool | None = None
                if folder is not None:
                    try:
                        hits = await folder.search_header(
                            box.sent_folder, "Message-ID", row.message_id
                        )
                        found = bool(hits)
                    except ChannelError as exc:
                        log.warning("Sent lookup for outbound %s failed: %s", row.id, exc)
                sent_as = None
                if found and isinstance(folder, SentAs):
                    try:
                        sent_as = await folder.sent_as(box.sent_folder, row.message_id)
                    except ChannelError as exc:
                        log.warning("Sent lookup for outbound %s failed: %s", row.id, exc)
                async with self._write_lock:
                    await outbox.settle(session, self.settings, row, found, self.clock.now())
                    if sent_as and sent_as != row.message_id:
                        await _store_sent_as(session, {row.id: sent_as}, self.clock.now())
                    await session.commit()

    async def _file_drafts(self) -> None:
        """Research mode: APPEND each due draft to its seller's Drafts folder
        with ``\\Draft``.  A draft already there (a crash after the APPEND,
        before the commit) is found by its Message-ID and not filed twice."""
        if not self.draft_folders:
            return
        async with self.db.sessions() as session:
            for row in await outbox.due_filed(session, self.clock.now()):
                seller = row.payload.get("seller") or ""
                desk = self.settings.drafting.desks.get(seller)
                box = row.payload.get("mailbox") or ""
                folder = self.draft_folders.get(box)
                if desk is None or folder is None:
                    continue  # its seller's mailbox left the config; it waits
                if row.raw is None:
                    row.raw = outbox.build(self.settings, row, self.clock.now())
                try:
                    found = await folder.search_header(desk.folder, "Message-ID", row.message_id)
                    if not found:
                        await folder.append(desk.folder, row.raw, ("\\Draft",))
                except ChannelError as exc:
                    log.warning("filing draft %s in %s failed (will retry): %s", row.id, box, exc)
                    await session.rollback()
                    return
                async with self._write_lock:
                    outbox.record_filed(session, row, desk.folder, box, self.clock.now())
                    await session.commit()

    async def _append_copies(self) -> None:
        """``sent_copy = "client"``: file a copy of each sent mail in Sent."""
        if not self.sent_folders:
            return
        async with self.db.sessions() as session:
            rows = list(
                (
                    await session.scalars(
                        select(OutboundMessage)
                        .where(OutboundMessage.copy_pending.is_(True))
                        .order_by(OutboundMessage.id)
                        .limit(500)
                    )
                ).all()
            )
            for row in rows:
                box = self.settings.box(row.payload.get("mailbox"))
                folder = self.sent_folders.get(box.name)
                if folder is None or row.raw is None:
                    continue
                try:
                    await folder.append(box.sent_folder, row.raw, ("\\Seen",))
                except ChannelError as exc:
                    log.warning("copy of outbound %s to Sent failed (will retry): %s", row.id, exc)
                    return
                async with self._write_lock:
                    row.copy_pending = False
                    await session.commit()


@runtime_checkable
class SentAs(Protocol):
    """A Sent folder that can tell the Message-ID a mail we sent as
    *message_id* went out with (``ExchangeInbox``)."""

    async def sent_as(self, folder: str, message_id: str) -> str | None: ...


async def _store_sent_as(session: AsyncSession, rewritten: dict[int, str], now: datetime) -> None:
    """The server sent these rows under another Message-ID (Exchange may
    rewrite ours): keep that one, since replies will refer to it, and ours
    in the payload."""
    if not rewritten:
        return
    rows = await session.scalars(
        select(OutboundMessage).where(OutboundMessage.id.in_(list(rewritten)))
    )
    for row in rows:
        ours, theirs = row.message_id, rewritten[row.id]
        row.payload = {**row.payload, "built_message_id": ours}
        row.message_id = theirs
        repo.add_event(
            session,
            "outbound.message_id_rewritten",
            actor="sender",
            now=now,
            lead_id=row.lead_id,
            outbound_id=row.id,
            reasons=[f"the server sent {ours} as {theirs}"],
        )
        log.info("outbound %s: the server sent %s as %s", row.id, ours, theirs)
