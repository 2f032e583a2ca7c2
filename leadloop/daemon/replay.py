"""``leadloop replay DIR``: QA's tool.

DIR holds inbound ``.eml`` files, fed in name order, and optionally
``leads.csv`` (imported first) and ``sent/*.eml`` (earlier outbound mail,
stored as ours so replies thread to it).  Everything runs against a scratch
database with a captured outbox (nothing leaves the machine) and a clock
that moves to each message's Date but never backwards.

``--expect FILE.yaml`` then compares the decisions with what QA expected
for each inbound file (`load_expectations`, `compare`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from pathlib import Path
from typing import Any, TextIO

import yaml
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


# The decisions an --expect file may pin, in the order mismatches are shown.
EXPECT_KEYS = ("kind", "intent", "action")

# file name -> key (one of EXPECT_KEYS) -> the value expected (null included).
Expectations = dict[str, dict[str, str | None]]


@dataclass
class ReplayResult:
    messages: int = 0
    failed: int = 0
    # The inbound lines as printed, so --expect compares what QA saw.
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def inbound_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
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
        result.lines.append(line)
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


# -- expectations (--expect) ----------------------------------------------------


class ExpectationError(ValueError):
    """The --expect file cannot be used as written; the message names the file
    and the entry, so QA can fix it before a replay is run for nothing."""


@dataclass(frozen=True)
class Mismatch:
    """One decision that differed from what was expected.  *key* None means
    the file was expected but the replay printed no line for it."""

    file: str
    key: str | None
    expected: str | None = None
    got: Any = None

    def describe(self) -> str:
        if self.key is None:
            return f"{self.file}: expected, but never replayed"
        return f"{self.file}: {self.key} expected {_shown(self.expected)}, got {_shown(self.got)}"


def _shown(value: Any) -> str:
    # The expectations are YAML and the output JSON: both spell None "null".
    return "null" if value is None else repr(value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key given twice is an error: PyYAML
    keeps the last one silently, which would drop an expectation unseen (a
    line copied and its file name not changed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"{key_node.value!r} is given twice",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load_expectations(path: Path, directory: Path) -> Expectations:
    """Read an --expect file: a mapping of inbound file name to the keys to
    check, or a list of such mappings each with its ``file``.

    Anything that would check less than it seems to is refused with
    ExpectationError: a YAML error (with its line), an entry that is not a
    mapping, a key other than EXPECT_KEYS, a value that is not a name or
    null, a file named twice, or a file that is not an inbound ``.eml`` of
    *directory* (so it would never be replayed)."""
    try:
        document = yaml.load(path.read_bytes(), Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise ExpectationError(f"{path}: {exc.strerror or exc}") from exc
    except yaml.MarkedYAMLError as exc:
        raise ExpectationError(f"{path}: {_yaml_problem(exc)}") from exc
    except yaml.YAMLError as exc:  # bytes that are not text: no line to give
        raise ExpectationError(f"{path}: {' '.join(str(exc).split())}") from exc
    inbound = {p.name for p in inbound_files(directory)}
    expectations: Expectations = {}
    for entry, file, keys in _entries(path, document):
        where = f"{path}: {entry}"
        if not isinstance(file, str):
            raise ExpectationError(f"{where}: the file name must be a string")
        if not isinstance(keys, dict):
            raise ExpectationError(
                f"{where}: expected a mapping such as {{kind: reply}}, not {_shown(keys)}"
            )
        for key, value in keys.items():
            if key not in EXPECT_KEYS:
                raise ExpectationError(
                    f"{where}: unknown key {key!r} (allowed: {', '.join(EXPECT_KEYS)})"
                )
            if value is not None and not isinstance(value, str):
                raise ExpectationError(f"{where}: {key} must be a name or null, not {value!r}")
        if file in expectations:
            raise ExpectationError(f"{where}: {file} is expected twice")
        if file not in inbound:
            raise ExpectationError(f"{where}: {directory} has no inbound file {file}")
        expectations[file] = keys
    if not expectations:
        raise ExpectationError(f"{path}: no expectations")
    return expectations


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    return f"{where}{exc.problem or exc.context}{context}"


def _entries(path: Path, document: Any) -> list[tuple[str, Any, Any]]:
    """(the entry as messages name it, its file, its keys) for either form."""
    if document is None:  # empty, or comments only
        raise ExpectationError(f"{path}: no expectations")
    if isinstance(document, dict):
        return [(str(file), file, keys) for file, keys in document.items()]
    if not isinstance(document, list):
        raise ExpectationError(
            f"{path}: expected a mapping of file name to expectations, or a list of them"
        )
    entries = []
    for number, item in enumerate(document, 1):
        if not isinstance(item, dict):
            raise ExpectationError(
                f"{path}: entry {number}: expected a mapping such as "
                f"{{file: 001.eml, kind: reply}}, not {_shown(item)}"
            )
        if "file" not in item:
            raise ExpectationError(f"{path}: entry {number}: no file")
        keys = {key: value for key, value in item.items() if key != "file"}
        entries.append((f"entry {number} ({item['file']})", item["file"], keys))
    return entries


def compare(
    expected: Mapping[str, Mapping[str, str | None]], lines: Iterable[Mapping[str, Any]]
) -> list[Mismatch]:
    """Each expected decision that the replay's inbound *lines* did not make,
    in replay order (file name order); a key left out is not checked, and a
    file without a line is a mismatch of its own.  Outbound lines (no
    ``file``) are passed over."""
    replayed = {line["file"]: line for line in lines if "file" in line}
    mismatches = []
    for file in sorted(expected):
        line = replayed.get(file)
        if line is None:
            mismatches.append(Mismatch(file, None))
            continue
        wanted = expected[file]
        for key in EXPECT_KEYS:
            if key in wanted and line.get(key) != wanted[key]:
                mismatches.append(Mismatch(file, key, wanted[key], line.get(key)))
    return mismatches


def expect_summary(checked: int, mismatches: list[Mismatch]) -> str:
    """The last line of the diff: how much was checked and how much differed."""
    differing = sum(1 for m in mismatches if m.key is not None)
    never = [m.file for m in mismatches if m.key is None]
    text = (
        f"expect: {checked} file{'s' if checked != 1 else ''} checked, "
        f"{differing} mismatch{'es' if differing != 1 else ''}"
    )
    return text + (f", never replayed: {', '.join(never)}" if never else "")
