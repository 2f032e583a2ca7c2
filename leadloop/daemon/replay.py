"""``leadloop replay DIR``: QA's tool.

DIR holds inbound ``.eml`` files, fed in name order, and optionally
``leads.csv`` (imported first) and ``sent/*.eml`` (earlier outbound mail,
stored as ours so replies thread to it).  Everything runs against a scratch
database with a captured outbox (nothing leaves the machine) and a clock
that moves to each message's Date but never backwards.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select

from leadloop.agent.due import run_due
from leadloop.agent.leads import import_leads
from leadloop.agent.pipeline import Pipeline, Stage
from leadloop.agent.stages import TOKEN_KEYS_FILE, build_stages, token_keys
from leadloop.agent.threads import normalize_subject
from leadloop.channels.base import RawMail
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig
from leadloop.daemon.ingest import to_new_inbound
from leadloop.mail.envelope import read_envelope
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Event, InboundMessage, Lead, MailThread, OutboundMessage

log = logging.getLogger("leadloop.daemon.replay")

# When no file carries a usable Date, the replay starts here, so that its
# output is the same on every run.
FALLBACK_START = datetime(2000, 1, 1, tzinfo=UTC)
REPLAY_MAILBOX = "replay"
CAPTURED = "captured"


@dataclass
class ReplayResult:
    messages: int = 0
    failed: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def inbound_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() == ".eml")


def _start_time(files: list[Path]) -> datetime:
    dates = [d for f in files if (d := read_envelope(f.read_bytes()).date) is not None]
    return min(dates, default=FALLBACK_START)


async def replay(
    directory: Path,
    loaded: LoadedConfig,
    out: TextIO,
    *,
    stages: list[Stage] | None = None,
) -> ReplayResult:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    files = inbound_files(directory)
    sent_dir = directory / "sent"
    sent_files = inbound_files(sent_dir) if sent_dir.is_dir() else []
    clock = ManualClock(_start_time(files + sent_files))
    settings = loaded.settings
    with tempfile.TemporaryDirectory(prefix="leadloop-replay-") as scratch:
        if stages is None:
            # The daemon's keys, so reply tokens in real mail verify; a scratch
            # key where the daemon never ran (nothing is written to its state).
            keys_dir = loaded.state_dir if (loaded.state_dir / TOKEN_KEYS_FILE).exists() else None
            stages = build_stages(loaded, token_keys(loaded, keys_dir or Path(scratch)))
        db = await open_database(f"sqlite+aiosqlite:///{scratch}/replay.db")
        try:
            return await _run(db, directory, files, sent_files, clock, settings, out, stages)
        finally:
            await db.dispose()


async def _run(
    db: Database,
    directory: Path,
    files: list[Path],
    sent_files: list[Path],
    clock: ManualClock,
    settings: Any,
    out: TextIO,
    stages: list[Stage] | None,
) -> ReplayResult:
    result = ReplayResult()
    leads_csv = directory / "leads.csv"
    if leads_csv.is_file():
        report = await import_leads(db, leads_csv, clock.now(), actor="replay")
        for line_no, reason in report.rejected:
            log.warning("leads.csv line %d rejected: %s", line_no, reason)
    for path in sent_files:
        await _store_sent(db, path, clock.now())

    box_address = settings.mailboxes[0].address if settings.mailboxes else "replay@localhost"
    async with db.transaction() as session:
        mailbox = await repo.ensure_mailbox(session, REPLAY_MAILBOX, "replay", box_address)
    pipeline = Pipeline(
        db,
        clock,
        owner="replay",
        stages=stages,
        max_attempts=settings.pipeline.max_attempts,
        retry_backoff=timedelta(0),
    )
    max_size = settings.pipeline.max_message_size
    for path in files:
        raw = path.read_bytes()
        record = to_new_inbound(RawMail(source_id=path.name, raw=raw), max_size)
        if record.sent_at is not None:
            clock.move_to(record.sent_at)
        else:
            clock.advance(timedelta(seconds=1))
        await run_due(db, clock.now(), owner="replay")
        async with db.transaction() as session:
            ids = await repo.store_inbound(session, mailbox.id, [record], clock.now())
        result.messages += 1
        if ids:
            if await _process(pipeline, db, ids[0], clock):
                result.failed += 1
            line = await _inbound_line(db, ids[0], path.name)
            line["at"] = clock.now().isoformat()
        else:
            line = {
                "file": path.name,
                "message_id": record.message_id,
                "lead": None,
                "kind": "ignored",
                "intent": None,
                "action": None,
                "reasons": ["same file name replayed twice"],
                "defects": record.defects,
                "status": repo.DONE,
                "at": clock.now().isoformat(),
            }
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        for outbound in await _captured(db):
            out.write(json.dumps(outbound, ensure_ascii=False) + "\n")
        out.flush()
    return result


async def _process(pipeline: Pipeline, db: Database, inbound_id: int, clock: ManualClock) -> bool:
    """Run one message now, failures retried at once up to the attempt limit.

    Return True when the pipeline itself failed on it (quarantined after
    errors), as opposed to a stage deciding to quarantine it."""
    for _ in range(pipeline.max_attempts + 1):
        async with db.transaction() as session:
            row = await session.get(InboundMessage, inbound_id, with_for_update=True)
            assert row is not None
            if row.status == repo.PENDING and row.not_before > clock.now() and not row.attempts:
                return False  # a stage asked to wait; replay does not wait
            if row.status != repo.PENDING:
                return row.status == repo.QUARANTINED and row.attempts >= pipeline.max_attempts
            row.status, row.claimed_by, row.claimed_until = repo.CLAIMED, pipeline.owner, None
        await pipeline.process(inbound_id)
    return True


async def _inbound_line(db: Database, inbound_id: int, file: str) -> dict[str, Any]:
    async with db.transaction() as session:
        row = await session.get(InboundMessage, inbound_id)
        assert row is not None
        lead = await session.get(Lead, row.lead_id) if row.lead_id else None
        events = (
            await session.scalars(
                select(Event).where(Event.inbound_id == inbound_id).order_by(Event.id)
            )
        ).all()
    return {
        "file": file,
        "message_id": row.message_id,
        "lead": lead.email if lead else None,
        "thread": row.thread_id,
        "kind": row.kind,
        "intent": row.result.get("intent"),
        "action": row.result.get("action"),
        "reasons": [reason for event in events for reason in event.reasons],
        "defects": row.defects,
        "visible_length": row.result.get("visible_length"),
        "status": row.status,
    }


async def _captured(db: Database) -> list[dict[str, Any]]:
    """Outbound mail queued since the last look: shown, never sent."""
    async with db.transaction() as session:
        rows = (
            await session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.status != CAPTURED, OutboundMessage.kind != "replay.sent")
                .order_by(OutboundMessage.id)
            )
        ).all()
        lines = []
        for row in rows:
            lines.append(
                {
                    "to": row.to_addrs,
                    "subject": row.subject,
                    "kind": row.kind,
                    "message_id": row.message_id,
                }
            )
            row.status = CAPTURED
    return lines


async def _store_sent(db: Database, path: Path, now: datetime) -> None:
    raw = path.read_bytes()
    envelope = read_envelope(raw)
    to_addrs = [
        addr.lower()
        for _, addr in getaddresses(envelope.headers.get("to", []) + envelope.headers.get("cc", []))
        if "@" in addr
    ]
    async with db.transaction() as session:
        exists = await session.scalar(
            select(OutboundMessage.id).where(OutboundMessage.message_id == envelope.message_id)
        )
        if exists:
            return
        # Earlier mail of ours to a known lead opens (or continues) its thread,
        # so replies to it thread as they would in production.
        lead = (
            await session.scalar(select(Lead).where(Lead.email.in_(to_addrs))) if to_addrs else None
        )
        thread_id = None
        if lead is not None:
            thread = MailThread(
                lead_id=lead.id,
                subject=normalize_subject(envelope.subject or ""),
                root_message_id=envelope.message_id,
                created_at=envelope.date or now,
                last_message_at=envelope.date or now,
            )
            session.add(thread)
            await session.flush()
            thread_id = thread.id
        session.add(
            OutboundMessage(
                lead_id=lead.id if lead else None,
                thread_id=thread_id,
                message_id=envelope.message_id,
                in_reply_to=next(iter(envelope.headers.get("in-reply-to", [])), None),
                references=(envelope.headers.get("references") or [""])[0].split(),
                idempotency_key=f"replay.sent:{path.name}",
                kind="replay.sent",
                to_addrs=to_addrs,
                subject=envelope.subject,
                raw=raw,
                status="sent",
                attempts=0,
                not_before=now,
                created_at=envelope.date or now,
                sent_at=envelope.date or now,
            )
        )
