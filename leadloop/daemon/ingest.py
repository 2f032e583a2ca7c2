"""Durable ingest: fetched bytes and the advanced cursor commit together,
and only then is anything acknowledged on the server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from leadloop.channels.base import Inbox, RawMail
from leadloop.clock import Clock
from leadloop.mail.envelope import read_envelope
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import Mailbox

log = logging.getLogger("leadloop.daemon.ingest")


@dataclass
class IngestStats:
    fetched: int = 0
    stored: int = 0


def to_new_inbound(mail: RawMail, max_size: int) -> repo.NewInbound:
    envelope = read_envelope(mail.raw)
    oversized = len(mail.raw) > max_size
    defects = list(envelope.defects)
    if oversized:
        defects.append(f"oversized: {len(mail.raw)} bytes > {max_size}; headers only")
    return repo.NewInbound(
        source_id=mail.source_id,
        raw=mail.raw,
        message_id=envelope.message_id,
        message_id_synthetic=envelope.message_id_synthetic,
        from_addr=envelope.from_addr,
        subject=envelope.subject,
        sent_at=envelope.date,
        headers=envelope.headers,
        defects=defects,
        oversized=oversized,
    )


async def ingest_once(
    db: Database, inbox: Inbox, mailbox_id: int, clock: Clock, *, batch: int, max_size: int
) -> IngestStats:
    """Fetch everything waiting in *inbox*, batch by batch, storing each batch
    and its cursor in one transaction before acknowledging it."""
    stats = IngestStats()
    fetched: set[str] = set()
    while True:
        async with db.transaction() as session:
            box = await session.get(Mailbox, mailbox_id)
            assert box is not None
            cursor = dict(box.cursor or {})
            unacknowledged = list(box.pending_acks or [])
        if unacknowledged:
            # A crash came between a commit and its acknowledgement; the cursor
            # is past that mail, so acknowledge it from the record.
            await inbox.acknowledge([RawMail(source_id=s, raw=b"") for s in unacknowledged])
            async with db.transaction() as session:
                await repo.clear_pending_acks(session, mailbox_id)
            log.info("mailbox=%s acknowledged %d left over", inbox.name, len(unacknowledged))
        result = await inbox.fetch_since(cursor, batch)
        if not result.mails and result.cursor == cursor:
            return stats
        stats.fetched += len(result.mails)
        records = [to_new_inbound(mail, max_size) for mail in result.mails]
        # Crash window: before this commit nothing is stored and nothing is
        # acknowledged, so the next fetch returns the same mail.
        async with db.transaction() as session:
            new_ids = await repo.store_inbound(session, mailbox_id, records, clock.now())
            await repo.advance_cursor(
                session,
                mailbox_id,
                result.cursor,
                clock.now(),
                pending_acks=[mail.source_id for mail in result.mails],
            )
        stats.stored += len(new_ids)
        # Crash window: stored but not acknowledged.  The next run
        # acknowledges the recorded pending_acks (and a channel that shows the
        # mail again, like Maildir's new/, has it dropped as a duplicate).
        await inbox.acknowledge(result.mails)
        async with db.transaction() as session:
            await repo.clear_pending_acks(session, mailbox_id)
        if new_ids:
            log.info("mailbox=%s stored=%d fetched=%d", inbox.name, len(new_ids), len(result.mails))
        # Stop when the channel has nothing more, or hands back a batch already
        # seen in this call (it is not moving on).  A batch of duplicates is
        # not a reason to stop: after a crash between commit and acknowledge
        # the refetched batch is all duplicates and newer mail waits behind it.
        batch_ids = {mail.source_id for mail in result.mails}
        if not result.more or batch_ids <= fetched:
            return stats
        fetched |= batch_ids
