"""Repository queries: the reads and writes the rest of leadloop shares."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.storage.models import Event, InboundMessage, Mailbox, ScheduledTask, UsedToken

PENDING = "pending"
CLAIMED = "claimed"
DONE = "done"
QUARANTINED = "quarantined"
FAILED = "failed"
FIRST_STAGE = "screen"


@dataclass(frozen=True)
class NewInbound:
    """One fetched message, ready to store."""

    source_id: str
    raw: bytes
    message_id: str
    message_id_synthetic: bool
    from_addr: str | None
    subject: str | None
    sent_at: datetime | None
    headers: dict[str, list[str]]
    defects: list[str]
    oversized: bool


def add_event(
    session: AsyncSession,
    kind: str,
    *,
    actor: str,
    now: datetime,
    reasons: Iterable[str] = (),
    lead_id: int | None = None,
    inbound_id: int | None = None,
    outbound_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Record a decision and its reasons."""
    event = Event(
        at=now,
        kind=kind,
        actor=actor,
        lead_id=lead_id,
        inbound_id=inbound_id,
        outbound_id=outbound_id,
        reasons=list(reasons),
        data=data or {},
    )
    session.add(event)
    return event


async def ensure_mailbox(session: AsyncSession, name: str, kind: str, address: str) -> Mailbox:
    box = await session.scalar(select(Mailbox).where(Mailbox.name == name))
    if box is None:
        box = Mailbox(name=name, kind=kind, address=address, cursor={}, pending_acks=[])
        session.add(box)
        await session.flush()
    elif (box.kind, box.address) != (kind, address):
        box.kind, box.address = kind, address
    return box


async def store_inbound(
    session: AsyncSession, mailbox_id: int, mails: Sequence[NewInbound], now: datetime
) -> list[int]:
    """Insert *mails*, skipping any already stored for this mailbox; return
    the ids of the rows that are new.

    A Message-ID already stored from any mailbox marks the new row as a
    duplicate: kept, never processed (so never answered twice).
    """
    if not mails:
        return []
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # One lookup per batch for Message-IDs already stored; ids stored earlier
    # in this same batch are added as they are inserted.
    first_seen: dict[str, int] = {
        message_id: first_id
        for message_id, first_id in await session.execute(
            select(InboundMessage.message_id, func.min(InboundMessage.id))
            .where(InboundMessage.message_id.in_({mail.message_id for mail in mails}))
            .group_by(InboundMessage.message_id)
        )
    }
    new_ids: list[int] = []
    for mail in mails:
        first = first_seen.get(mail.message_id)
        statement = (
            insert(InboundMessage)
            .values(
                mailbox_id=mailbox_id,
                source_id=mail.source_id,
                message_id=mail.message_id,
                message_id_synthetic=mail.message_id_synthetic,
                duplicate_of=first,
                raw=mail.raw,
                size=len(mail.raw),
                headers=mail.headers,
                from_addr=mail.from_addr,
                subject=mail.subject,
                sent_at=mail.sent_at,
                received_at=now,
                defects=mail.defects,
                oversized=mail.oversized,
                stage="done" if first else FIRST_STAGE,
                status=DONE if first else PENDING,
                kind="ignored" if first else None,
                finished_at=now if first else None,
                attempts=0,
                not_before=now,
                result={},
            )
            .on_conflict_do_nothing(index_elements=["mailbox_id", "source_id"])
            .returning(InboundMessage.id)
        )
        new_id = await session.scalar(statement)
        if new_id is None:
            continue
        new_ids.append(new_id)
        first_seen.setdefault(mail.message_id, new_id)
        if first:
            add_event(
                session,
                "inbound.duplicate",
                actor="ingest",
                now=now,
                inbound_id=new_id,
                reasons=[f"Message-ID {mail.message_id} already stored as message {first}"],
            )
    return new_ids


async def advance_cursor(
    session: AsyncSession,
    mailbox_id: int,
    cursor: dict[str, Any],
    now: datetime,
    *,
    pending_acks: Sequence[str] = (),
) -> None:
    """Move the mailbox's cursor, noting which fetched mail still awaits its
    acknowledgement on the server."""
    await session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(cursor=cursor, cursor_updated_at=now, pending_acks=list(pending_acks))
    )


async def clear_pending_acks(session: AsyncSession, mailbox_id: int) -> None:
    await session.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(pending_acks=[]))


async def _claim(
    session: AsyncSession,
    model: type[InboundMessage] | type[ScheduledTask],
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[int]:
    """Claim up to *limit* due rows of *model* for *owner*, oldest due first.

    ``SKIP LOCKED`` lets several daemons on one PostgreSQL claim side by
    side; SQLite ignores it (one daemon per file).
    """
    candidates: Select[int] = (
        select(model.id)
        .where(model.status == PENDING, model.not_before <= now)
        .order_by(model.not_before, model.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(candidates)).all())
    if ids:
        await session.execute(
            update(model)
            .where(model.id.in_(ids))
            .values(status=CLAIMED, claimed_by=owner, claimed_until=now + lease)
        )
    return ids


async def claim_inbound(
    session: AsyncSession, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """Claim up to *limit* stored messages that are due."""
    return await _claim(session, InboundMessage, owner, now, lease, limit)


async def stale_claims(
    session: AsyncSession, now: datetime, *, all_claims: bool, keep: Collection[str] = ()
) -> list[InboundMessage]:
    """Rows left claimed by a process that died (all of them, when this is the
    only process that can hold claims, as on SQLite); never those of the live
    daemons in *keep*."""
    query = select(InboundMessage).where(InboundMessage.status == CLAIMED)
    if not all_claims:
        query = query.where(
            or_(InboundMessage.claimed_until.is_(None), InboundMessage.claimed_until < now)
        )
    if keep:
        query = query.where(
            or_(InboundMessage.claimed_by.is_(None), InboundMessage.claimed_by.not_in(keep))
        )
    return list((await session.scalars(query.with_for_update(skip_locked=True))).all())


async def schedule(
    session: AsyncSession,
    kind: str,
    not_before: datetime,
    *,
    now: datetime,
    lead_id: int | None = None,
    payload: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> ScheduledTask:
    """Add due work.  With *dedupe_key*, a pending task with the same key is
    moved to the new time instead of doubled."""
    if dedupe_key is not None:
        existing = await session.scalar(
            select(ScheduledTask).where(ScheduledTask.dedupe_key == dedupe_key)
        )
        if existing is not None:
            existing.not_before = not_before
            existing.payload = payload or {}
            existing.status = PENDING
            existing.attempts = 0
            existing.done_at = None
            return existing
    task = ScheduledTask(
        kind=kind,
        lead_id=lead_id,
        payload=payload or {},
        dedupe_key=dedupe_key,
        not_before=not_before,
        status=PENDING,
        attempts=0,
        created_at=now,
    )
    session.add(task)
    return task


async def claim_due(
    session: AsyncSession, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """Claim up to *limit* scheduled tasks that are due."""
    return await _claim(session, ScheduledTask, owner, now, lease, limit)


async def release_expired_due(
    session: AsyncSession, now: datetime, keep: Collection[str] = ()
) -> int:
    """Due tasks whose claim outlived its lease and whose daemon is gone (not
    in *keep*) go back to pending, with the attempt counted."""
    query = select(ScheduledTask).where(
        ScheduledTask.status == CLAIMED, ScheduledTask.claimed_until < now
    )
    if keep:
        query = query.where(ScheduledTask.claimed_by.not_in(keep))
    rows = list((await session.scalars(query.with_for_update(skip_locked=True))).all())
    for task in rows:
        task.status = PENDING
        task.attempts += 1
        task.last_error = f"claim by {task.claimed_by} expired (the daemon stopped?)"
        task.claimed_by = task.claimed_until = None
    return len(rows)


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(InboundMessage.status, func.count()).group_by(InboundMessage.status)
    )
    return {status: count for status, count in rows}


async def spend_token(
    session: AsyncSession, digest: str, purpose: str, *, now: datetime, expires: datetime | None
) -> bool:
    """Record a single-use token as spent; ``False`` if it already was.

    The insert races safely: the unique digest lets exactly one of two
    concurrent spenders commit."""
    exists = await session.scalar(select(UsedToken.id).where(UsedToken.digest == digest))
    if exists is not None:
        return False
    try:
        async with session.begin_nested():
            session.add(UsedToken(digest=digest, purpose=purpose, used_at=now, expires_at=expires))
    except IntegrityError:
        return False
    return True
