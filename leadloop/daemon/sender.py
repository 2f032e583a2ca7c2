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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import outbox
from leadloop.agent.outbox import OutboxSettings, Ready, Status
from leadloop.channels.base import ChannelError
from leadloop.channels.smtp import Delivery, SmtpConnection, SmtpFailure, SmtpSettings
from leadloop.clock import Clock
from leadloop.storage.db import Database
from leadloop.storage.models import OutboundMessage

log = logging.getLogger("leadloop.daemon.sender")
T = TypeVar("T")


class SentFolder(Protocol):
    """What the sender needs of a mailbox's IMAP side (``ImapInbox`` has it)."""

    async def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> str: ...

    async def search_header(self, folder: str, header: str, value: str) -> list[str]: ...

    async def close(self) -> None: ...


class _GroupCommit(Generic[T]):
    """Callers await :meth:`submit`; one transaction applies every item that
    arrived while the previous one was committing."""

    def __init__(
        self,
        db: Database,
        lock: asyncio.Lock,
        apply: Callable[[AsyncSession, list[T]], Awaitable[None]],
    ) -> None:
        self._db = db
        self._lock = lock
        self._apply = apply
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self._lock, self._db.sessions() as session:
                    await self._apply(session, [item for item, _ in batch])
                    await session.commit()
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


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
        fault: Fault | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.worker = worker
        self.sent_folders = sent_folders or {}
        self.fault = fault
        self._write_lock = asyncio.Lock()
        self._pool: asyncio.Queue[SmtpConnection] = asyncio.Queue()
        self._connections = [SmtpConnection(smtp, secret) for _ in range(connections)]
        for conn in self._connections:
            self._pool.put_nowait(conn)
        self._dots: _GroupCommit[int] = _GroupCommit(db, self._write_lock, self._mark_dots)
        self._outcomes: _GroupCommit[tuple[int, Delivery | SmtpFailure]] = _GroupCommit(
            db, self._write_lock, self._record
        )
        self._running = asyncio.Lock()

    async def close(self) -> None:
        for conn in self._connections:
            await conn.close()
        for folder in self.sent_folders.values():
            await folder.close()

    async def recover(self, *, all_claims: bool) -> int:
        """Settle rows a dead process left ``sending``."""
        async with self._write_lock, self.db.sessions() as session:
            count = await outbox.recover(
                session, self.settings, self.clock.now(), all_claims=all_claims
            )
            await session.commit()
        if count:
            log.warning("recovered %d outbound mails left sending by a stopped sender", count)
        return count

    async def drain(
        self, *, max_passes: int | None = None, stop: asyncio.Event | None = None
    ) -> PassResult:
        """Send everything that is due and allowed now (until *stop* is set)."""
        total = PassResult()
        async with self._running:
            # Claims whose lease ran out (a daemon sharing the database died).
            await self.recover(all_claims=False)
            await self._settle_in_doubt()
            passes = 0
            while (max_passes is None or passes < max_passes) and not (stop and stop.is_set()):
                passes += 1
                result = await self._pass()
                total.claimed += result.claimed
                total.sent += result.sent
                total.other += result.other
                if result.claimed == 0:
                    break
            await self._append_copies()
        return total

    async def _pass(self) -> PassResult:
        async with self._write_lock, self.db.sessions() as session:
            ready = await outbox.claim(
                session, self.settings, worker=self.worker, now=self.clock.now()
            )
            await session.commit()
        result = PassResult(claimed=len(ready))
        if not ready:
            return result
        outcomes = await asyncio.gather(
            *(self._send(item) for item in ready), return_exceptions=True
        )
        for item, outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, Delivery) and outcome.accepted:
                result.sent += 1
            else:
                result.other += 1
            if isinstance(outcome, BaseException) and not isinstance(outcome, SmtpFailure):
                # The row stays claimed; its lease ends and recover() settles it.
                log.error("sending outbound %s failed unexpectedly: %r", item.id, outcome)
                if not isinstance(outcome, Exception):
                    raise outcome
        return result

    async def _send(self, item: Ready) -> Delivery | SmtpFailure:
        conn = await self._pool.get()
        try:
            if self.fault:
                await self.fault("before_smtp", item)

            async def before_dot() -> None:
                if self.fault:
                    await self.fault("before_dot", item)
                await self._dots.submit(item.id)

            try:
                outcome: Delivery | SmtpFailure = await conn.send(
                    item.envelope_from, item.recipients, item.raw, before_dot=before_dot
                )
            except SmtpFailure as exc:
                outcome = exc
            if self.fault:
                await self.fault("after_reply", item)
            await self._outcomes.submit((item.id, outcome))
            if self.fault:
                await self.fault("after_commit", item)
            return outcome
        finally:
            self._pool.put_nowait(conn)

    async def _mark_dots(self, session: AsyncSession, ids: list[int]) -> None:
        await outbox.mark_dot(session, ids)

    async def _record(
        self, session: AsyncSession, items: list[tuple[int, Delivery | SmtpFailure]]
    ) -> None:
        now = self.clock.now()
        rows = {
            row.id: row
            for row in await session.scalars(
                select(OutboundMessage).where(OutboundMessage.id.in_([i for i, _ in items]))
            )
        }
        for row_id, outcome in items:
            row = rows.get(row_id)
            if row is None or row.status != Status.SENDING:
                continue
            result = await outbox.record(session, self.settings, row, outcome, now)
            level = logging.INFO if result is outbox.Verdict.SENT else logging.WARNING
            log.log(
                level, "outbound %s to %s: %s (%s)", row.id, row.to_addrs, result, row.smtp_reply
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
                async with self._write_lock:
                    await outbox.settle(session, self.settings, row, found, self.clock.now())
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
