"""What an admin does to run the agent safely: pause and resume sending
(everything, one mailbox, one lead), suppress and unsuppress an address,
correct a lead's address, erase a person, and keep raw mail only so long.

Every control is an event (kind ``control.*``) with who (``admin:<user>``
unless ``--by`` says otherwise) and why.

An erased person leaves one row: a suppression keyed by an HMAC-SHA256 of
the normalized address with a kept key (``[privacy]``'s secret, else
``privacy.key`` in the state directory), never the address: a plain hash of
an address is reversed by hashing guesses, a keyed one is not without the
key.  Every suppression check (the outbox, screening, the lead import) asks
:func:`suppressed_among`, which matches clear and keyed entries alike; the
key is installed per process by :func:`use_privacy_key`.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import (
    JSON,
    ColumnElement,
    LargeBinary,
    String,
    Table,
    Text,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.lifecycle import SENDING_STATES, State, transition
from leadloop.config import LoadedConfig
from leadloop.mail.validate import Validator
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Base,
    BrainUsage,
    CadenceEnrollment,
    Click,
    Control,
    Escalation,
    Event,
    InboundMessage,
    Lead,
    LeadStateChange,
    Mailbox,
    MailThread,
    Order,
    OutboundMessage,
    ResearchResult,
    ScheduledTask,
    Suppression,
    Task,
)

log = logging.getLogger("leadloop.agent.controls")

PRIVACY_KEY_FILE = "privacy.key"
SEND_PAUSED = "send_paused"
ADMIN_PAUSE = "admin: "
"""A lead paused by an admin: ``paused_reason`` starts so.  The outbox keeps
such a lead's mail queued (an escalation's pause skips it instead)."""
ERASED = "[erased]"


class ControlError(Exception):
    """A control refused; the message says why (the CLI prints it)."""


class PrivacyKeyMissing(RuntimeError):
    """Keyed suppressions exist but this process has no key to match them by."""


def default_actor() -> str:
    """``admin:<OS user>``: who ran the command when ``--by`` is not given."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"admin:{user}"


def _reason(reason: str | None, *, required: bool, what: str) -> str:
    text = (reason or "").strip()
    if required and not text:
        raise ControlError(f"{what} needs a reason (--reason TEXT)")
    return text


# -- the kept key -------------------------------------------------------------


def normalize_address(address: str) -> str:
    """The form an address is keyed and compared in: email-validator's
    normalization (as the lead import stores it), lower case; an address it
    refuses is only trimmed and lowered, so anything can still be suppressed."""
    text = address.strip()
    with contextlib.suppress(EmailNotValidError):
        text = validate_email(text, check_deliverability=False).normalized
    return text.lower()


@dataclass(frozen=True)
class PrivacyKey:
    secret: bytes = field(repr=False)

    def address_hmac(self, address: str) -> str:
        """HMAC-SHA256 of the normalized address, hex (64 characters)."""
        digest = hmac.new(self.secret, normalize_address(address).encode(), hashlib.sha256)
        return digest.hexdigest()

    @classmethod
    def load_or_create(cls, path: Path) -> PrivacyKey:
        """The key in *path*, made once (32 random bytes, hex, mode 0600)."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: read theirs
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32) + "\n")
        text = path.read_text().strip()
        if len(text) < 32:
            raise ControlError(f"{path}: the privacy key is too short (at least 32 characters)")
        return cls(text.encode())


_installed: PrivacyKey | None = None


def use_privacy_key(loaded: LoadedConfig, directory: Path | None = None) -> PrivacyKey:
    """The kept key: ``[privacy]``'s secret, else ``privacy.key`` in the state
    directory (created on first use).  It becomes the key this process's
    suppression checks match keyed entries by; call it at start and on reload."""
    global _installed
    secret = loaded.secret("privacy")
    if secret is not None:
        key = PrivacyKey(secret.encode())
    else:
        key = PrivacyKey.load_or_create((directory or loaded.state_dir) / PRIVACY_KEY_FILE)
    _installed = key
    return key


# -- suppressions -------------------------------------------------------------


async def suppressed_among(
    session: AsyncSession, addresses: Collection[str], key: PrivacyKey | None = None
) -> set[str]:
    """Which of *addresses* (as given) are suppressed, by their address or by
    the keyed HMAC an erasure left.  Raises :class:`PrivacyKeyMissing` when
    keyed entries exist and no key is installed: mail is never sent to an
    erased person because a process forgot its key."""
    if not addresses:
        return set()
    by_form: dict[str, set[str]] = {}
    for address in addresses:
        by_form.setdefault(normalize_address(address), set()).add(address)
    found: set[str] = set()
    clear = await session.scalars(
        select(Suppression.address).where(Suppression.address.in_(list(by_form)))
    )
    for stored in clear:
        found |= by_form.get(stored or "", set())
    key = key or _installed
    if key is None:
        keyed = await session.scalar(
            select(Suppression.id).where(Suppression.address_hmac.is_not(None)).limit(1)
        )
        if keyed is not None:
            raise PrivacyKeyMissing(
                "erased addresses are suppressed by [privacy]'s key, and this process has "
                "none: call leadloop.agent.controls.use_privacy_key(loaded) at start"
            )
        return found
    digests = {key.address_hmac(form): form for form in by_form}
    for digest in await session.scalars(
        select(Suppression.address_hmac).where(Suppression.address_hmac.in_(list(digests)))
    ):
        found |= by_form[digests[digest or ""]]
    return found


async def erased(session: AsyncSession, address: str) -> bool:
    """Whether *address* belongs to a person ``leads erase`` removed: it is
    suppressed by its keyed HMAC alone (an opt-out keeps the address)."""
    if not address or await session.scalar(
        select(Suppression.id).where(Suppression.address == normalize_address(address))
    ):
        return False
    return bool(await suppressed_among(session, [address]))


async def add_suppression(
    session: AsyncSession, address: str, *, reason: str, source: str, now: datetime
) -> Suppression | None:
    """Suppress *address* unless it already is (the new row, else None).  An
    erased address stays keyed only: its clear form is never written back."""
    if await suppressed_among(session, [address]):
        return None
    row = Suppression(
        address=normalize_address(address), reason=reason, source=source, created_at=now
    )
    session.add(row)
    await session.flush()
    return row


async def suppress(
    session: AsyncSession, address: str, *, actor: str, reason: str | None, now: datetime
) -> bool:
    """``leadloop suppress``: False when the address already was."""
    why = _reason(reason, required=True, what="suppress")
    row = await add_suppression(session, address, reason=why, source=actor, now=now)
    if row is None:
        return False
    repo.add_event(
        session,
        "control.suppress",
        actor=actor,
        now=now,
        reasons=[why],
        data={"address": normalize_address(address)},
    )
    return True


async def unsuppress(
    session: AsyncSession,
    address: str,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
    key: PrivacyKey | None = None,
) -> str:
    """``leadloop unsuppress``: removes the address's entry, clear or keyed;
    returns which.  Raises :class:`ControlError` when it is not suppressed.
    A lead already ``opted_out`` stays so (the state is terminal)."""
    why = _reason(reason, required=False, what="unsuppress")
    form = normalize_address(address)
    row = await session.scalar(select(Suppression).where(Suppression.address == form))
    which = "address"
    key = key or _installed
    if row is None and key is not None:
        row = await session.scalar(
            select(Suppression).where(Suppression.address_hmac == key.address_hmac(form))
        )
        which = "hmac"
    if row is None:
        raise ControlError(f"{form} is not suppressed")
    await session.delete(row)
    repo.add_event(
        session,
        "control.unsuppress",
        actor=actor,
        now=now,
        reasons=[why or "no reason given"],
        # An erased person's address is not written back by lifting it.
        data={"address": form if which == "address" else None, "entry": which},
    )
    return which


async def list_suppressions(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.scalars(select(Suppression).order_by(Suppression.created_at))
    return [
        {
            "address": r.address,
            "erased": r.address is None,
            "reason": r.reason,
            "source": r.source,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]


# -- pause and resume ---------------------------------------------------------


async def send_paused(session: AsyncSession) -> Control | None:
    """The ``send_paused`` switch when set: while it is, the outbox claims nothing."""
    row: Control | None = await session.get(Control, SEND_PAUSED)
    return row


async def pause(
    session: AsyncSession,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
    mailbox: str | None = None,
    lead: str | None = None,
) -> bool:
    """``leadloop pause``: all sending, one mailbox, or one lead.  Returns
    False when it was already paused so; raises :class:`ControlError` for
    an unknown target or a lead the agent does not mail anyway."""
    why = _reason(reason, required=True, what="pause")
    if mailbox is not None and lead is not None:
        raise ControlError("pause one mailbox or one lead, not both")
    scope: dict[str, Any]
    if lead is not None:
        found = await _lead(session, lead)
        scope = {"scope": "lead"}
        if found.state == State.PAUSED:
            if (found.paused_reason or "").startswith(ADMIN_PAUSE):
                return False
            raise ControlError(
                f"lead {found.email} is already paused ({found.paused_reason}); "
                "it leaves that pause by RESUME to its escalation"
            )
        if State(found.state) not in SENDING_STATES:
            raise ControlError(
                f"lead {found.email} is {found.state}: the agent does not mail it, nothing to pause"
            )
        await transition(
            session, found, State.PAUSED, actor=actor, reason=ADMIN_PAUSE + why, now=now
        )
        lead_id: int | None = found.id
    elif mailbox is not None:
        box = await _mailbox(session, mailbox)
        if box.send_paused_at is not None:
            return False
        box.send_paused_at = now
        box.send_paused_reason = f"paused by {actor}: {why}"
        scope, lead_id = {"scope": "mailbox", "mailbox": box.name}, None
    else:
        if await send_paused(session) is not None:
            return False
        session.add(
            Control(
                name=SEND_PAUSED,
                value={"since": now.isoformat()},
                actor=actor,
                reason=why,
                updated_at=now,
            )
        )
        scope, lead_id = {"scope": "all"}, None
    repo.add_event(
        session, "control.pause", actor=actor, now=now, lead_id=lead_id, reasons=[why], data=scope
    )
    log.warning("paused %s by %s: %s", _describe(scope, lead), actor, why)
    return True


async def resume(
    session: AsyncSession,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
    mailbox: str | None = None,
    lead: str | None = None,
) -> bool:
    """``leadloop resume``: undoes :func:`pause`.  A mailbox paused by the
    reputation circuit breaker resumes the same way (``outbox.resume_sender``,
    as before).  Returns False when it was not paused."""
    why = _reason(reason, required=False, what="resume") or "resumed"
    if mailbox is not None and lead is not None:
        raise ControlError("resume one mailbox or one lead, not both")
    scope: dict[str, Any]
    lead_id: int | None = None
    if lead is not None:
        found = await _lead(session, lead)
        if found.state != State.PAUSED:
            return False
        if not (found.paused_reason or "").startswith(ADMIN_PAUSE):
            raise ControlError(
                f"lead {found.email} was not paused by an admin ({found.paused_reason}); "
                "answer RESUME to its escalation instead"
            )
        back = State(found.paused_return_state or State.NEW)
        await transition(session, found, back, actor=actor, reason=f"admin resume: {why}", now=now)
        scope, lead_id = {"scope": "lead", "to": back.value}, found.id
    elif mailbox is not None:
        # Imported here: the outbox imports this module for its suppression check.
        from leadloop.agent import outbox

        await _mailbox(session, mailbox)
        if not await outbox.resume_sender(session, mailbox, actor=actor, now=now):
            return False
        scope = {"scope": "mailbox", "mailbox": mailbox}
    else:
        row = await send_paused(session)
        if row is None:
            return False
        await session.delete(row)
        await session.flush()
        scope = {"scope": "all", "paused_by": row.actor, "paused_since": row.value.get("since")}
    repo.add_event(
        session, "control.resume", actor=actor, now=now, lead_id=lead_id, reasons=[why], data=scope
    )
    log.warning("resumed %s by %s: %s", _describe(scope, lead), actor, why)
    return True


def _describe(scope: dict[str, Any], lead: str | None) -> str:
    if scope["scope"] == "lead":
        return f"lead {lead}"
    if scope["scope"] == "mailbox":
        return f"mailbox {scope['mailbox']}"
    return "all sending"


async def _lead(session: AsyncSession, address: str) -> Lead:
    found = await session.scalar(select(Lead).where(Lead.email == normalize_address(address)))
    if found is None:
        raise ControlError(f"no lead {address}")
    return found


async def _mailbox(session: AsyncSession, name: str) -> Mailbox:
    box = await session.scalar(select(Mailbox).where(Mailbox.name == name))
    if box is None:
        raise ControlError(f"no mailbox named {name!r}")
    return box


# -- correcting an address ----------------------------------------------------


def validator_for(loaded: LoadedConfig) -> Validator:
    """A validator with ``[validation]``'s settings (DNS off: syntax only)."""
    check = loaded.settings.validation
    return Validator(
        check.nameservers or None,
        port=check.port,
        timeout=check.timeout.total_seconds(),
        lookups=check.dns,
    )


async def set_email(
    session: AsyncSession,
    old: str,
    new: str,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
    validator: Validator,
) -> Lead:
    """``leadloop leads set-email``: a person corrects a lead's address (seed
    002/003).  The new one must pass ``mail/validate.py``, belong to no
    other lead and not be suppressed; its status is checked again before the
    next touch.  An ``invalid`` lead goes back to ``new``, the one way out."""
    why = _reason(reason, required=False, what="set-email") or "address corrected"
    lead = await _lead(session, old)
    checked = await validator.check(new.strip())
    if checked.status == "invalid":
        raise ControlError(f"{new} is not a usable address: {checked.reason}")
    address = normalize_address(new)
    if address == lead.email:
        raise ControlError(f"lead {lead.email} already has that address")
    other = await session.scalar(select(Lead.id).where(Lead.email == address))
    if other is not None:
        raise ControlError(f"another lead already has {address}")
    if await suppressed_among(session, [address]):
        raise ControlError(f"{address} is suppressed: no mail may go there")
    previous = lead.email
    lead.email = address
    lead.email_status = None
    lead.updated_at = now
    if lead.state == State.INVALID:
        await transition(
            session, lead, State.NEW, actor=actor, reason=f"address corrected: {why}", now=now
        )
    repo.add_event(
        session,
        "control.set_email",
        actor=actor,
        now=now,
        lead_id=lead.id,
        reasons=[why],
        data={"from": previous, "to": address, "checked": checked.as_dict()},
    )
    return lead


# -- erasure ------------------------------------------------------------------


@dataclass
class EraseReport:
    lead: bool
    deleted: dict[str, int] = field(default_factory=dict)
    redacted: dict[str, int] = field(default_factory=dict)
    """table.column -> rows of *other* records where the address was replaced."""

    def as_dict(self) -> dict[str, Any]:
        return {"lead": self.lead, "deleted": self.deleted, "redacted": self.redacted}


def _mention(address: str) -> re.Pattern[str]:
    # The address as a whole word: dana@x.example, not ben.dana@x.example
    # nor dana@x.example.org.
    return re.compile(r"(?<![\w.+%-])" + re.escape(address) + r"(?![\w-]|\.[\w-])", re.IGNORECASE)


async def erase(
    session: AsyncSession,
    address: str,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
    key: PrivacyKey,
    own_addresses: Collection[str] = (),
) -> EraseReport:
    """``leadloop leads erase``: delete the person's lead and everything tied
    to it (mail both ways, threads, enrollments, clicks, orders, state
    changes, events, escalations, tasks, research, due tasks), replace the
    address wherever else it appears, and keep one suppression keyed by
    :meth:`PrivacyKey.address_hmac`.  Token counts (``brain_usage``) are kept,
    detached.  In one transaction, which is rolled back when a final scan
    of every table still finds the address."""
    why = _reason(reason, required=True, what="erase")
    form = normalize_address(address)
    if form in {a.lower() for a in own_addresses}:
        raise ControlError(f"{form} is one of our own mailboxes, not a person to erase")
    report = EraseReport(lead=False)
    lead = await session.scalar(select(Lead).where(Lead.email == form))
    lead_id = lead.id if lead is not None else None
    report.lead = lead is not None

    # The person's mail: theirs by lead, by sender, or as the only recipient.
    by_lead = [] if lead_id is None else [InboundMessage.lead_id == lead_id]
    inbound_ids = set(
        await session.scalars(
            select(InboundMessage.id).where(or_(InboundMessage.from_addr == form, *by_lead))
        )
    )
    to_them = cast(OutboundMessage.to_addrs, Text).like(f'%"{_like_escape(form)}"%', escape="\\")
    out_by_lead = [] if lead_id is None else [OutboundMessage.lead_id == lead_id]
    outbound_ids = set(
        await session.scalars(select(OutboundMessage.id).where(or_(to_them, *out_by_lead)))
    )
    thread_ids = (
        set()
        if lead_id is None
        else set(await session.scalars(select(MailThread.id).where(MailThread.lead_id == lead_id)))
    )

    async def gone(model: type[Base], *where: ColumnElement[bool]) -> None:
        if not where:
            return
        result = await session.execute(delete(model).where(or_(*where)))
        count = getattr(result, "rowcount", 0) or 0
        if count:
            name = str(model.__tablename__)
            report.deleted[name] = report.deleted.get(name, 0) + count

    async def detach(column: Any, ids: set[int]) -> None:
        if ids:
            await session.execute(
                update(column.class_).where(column.in_(ids)).values({column.key: None})
            )

    lead_rows = [] if lead_id is None else [lead_id]
    await gone(Click, Click.lead_id.in_(lead_rows), Click.outbound_id.in_(outbound_ids))
    await gone(Order, Order.lead_id.in_(lead_rows))
    await gone(
        Event,
        Event.lead_id.in_(lead_rows),
        Event.inbound_id.in_(inbound_ids),
        Event.outbound_id.in_(outbound_ids),
    )
    await gone(Escalation, Escalation.lead_id.in_(lead_rows))
    await detach(Escalation.inbound_id, inbound_ids)
    await gone(Task, Task.lead_id.in_(lead_rows))
    await detach(Task.inbound_id, inbound_ids)
    if lead_id is not None:
        await gone(
            ResearchResult,
            ResearchResult.lead_id == lead_id,
            ResearchResult.subject == f"lead:{lead_id}",
        )
    await gone(ScheduledTask, ScheduledTask.lead_id.in_(lead_rows))
    await gone(CadenceEnrollment, CadenceEnrollment.lead_id.in_(lead_rows))
    await detach(CadenceEnrollment.last_outbound_id, outbound_ids)
    await detach(CadenceEnrollment.answer_outbound_id, outbound_ids)
    await gone(LeadStateChange, LeadStateChange.lead_id.in_(lead_rows))
    # Token counts hold nothing of the person: kept for the budget, detached.
    await detach(BrainUsage.lead_id, set(lead_rows))
    await detach(BrainUsage.inbound_id, inbound_ids)
    await detach(InboundMessage.duplicate_of, inbound_ids)
    await detach(InboundMessage.thread_id, thread_ids)
    await detach(OutboundMessage.thread_id, thread_ids)
    await gone(InboundMessage, InboundMessage.id.in_(inbound_ids))
    await gone(OutboundMessage, OutboundMessage.id.in_(outbound_ids))
    await gone(MailThread, MailThread.id.in_(thread_ids))
    await gone(Lead, Lead.id.in_(lead_rows))

    # The suppression that remains is keyed; the clear one goes.
    digest = key.address_hmac(form)
    await session.execute(delete(Suppression).where(Suppression.address == form))
    keyed = await session.scalar(select(Suppression.id).where(Suppression.address_hmac == digest))
    if keyed is None:
        session.add(
            Suppression(
                address=None, address_hmac=digest, reason="erased", source="erase", created_at=now
            )
        )
    repo.add_event(
        session,
        "control.erase",
        actor=actor,
        now=now,
        reasons=[why],
        data={"lead": report.lead, "deleted": dict(report.deleted)},
    )
    await session.flush()

    # Anywhere else (another lead's mail that named them, a note, an
    # account's custom field): the address is replaced, the record kept.
    pattern = _mention(form)
    for table, column, key_values, value in await _mentions(session, form, pattern):
        replaced = _redact(value, pattern, nullable=bool(column.nullable))
        await session.execute(
            update(table)
            .where(*(c == v for c, v in zip(table.primary_key.columns, key_values, strict=True)))
            .values({column.name: replaced})
        )
        name = f"{table.name}.{column.name}"
        report.redacted[name] = report.redacted.get(name, 0) + 1
    if left := await _mentions(session, form, pattern):
        places = sorted({f"{t.name}.{c.name}" for t, c, _, _ in left})
        raise RuntimeError(f"erase incomplete; the address remains in {', '.join(places)}")
    log.warning(
        "erased a person by %s: %s; deleted %s, redacted %s",
        actor,
        why,
        report.deleted,
        report.redacted,
    )
    return report


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _searchable(session: AsyncSession, column: Any) -> ColumnElement[str] | None:
    """The column as text a LIKE can search, or None when it holds no text."""
    postgres = session.get_bind().dialect.name == "postgresql"
    kind = column.type
    if isinstance(kind, LargeBinary):
        # bytea has no LIKE; its escape form keeps printable ASCII as it is.
        return func.encode(column, "escape") if postgres else cast(column, Text)
    if isinstance(kind, JSON):
        return cast(column, Text)
    if isinstance(kind, String):
        return column  # type: ignore[no-any-return]
    return None


async def _mentions(
    session: AsyncSession, form: str, pattern: re.Pattern[str]
) -> list[tuple[Table, Any, tuple[Any, ...], Any]]:
    """Every (table, column, primary key, value) whose value names *form*:
    a LIKE over every text, JSON and binary column of every table finds the
    candidates, the whole-word pattern decides."""
    needles = {form}
    if not form.isascii():
        needles.add(json.dumps(form)[1:-1])  # as JSON stores it: \\u escapes
    found = []
    for table in Base.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        for column in table.columns:
            text = _searchable(session, column)
            if text is None:
                continue
            where = or_(*(text.ilike(f"%{_like_escape(n)}%", escape="\\") for n in needles))
            for row in await session.execute(select(*keys, column).where(where)):
                *key_values, value = row
                if _names(value, pattern):
                    found.append((table, column, tuple(key_values), value))
    return found


def _names(value: Any, pattern: re.Pattern[str]) -> bool:
    if isinstance(value, str):
        return bool(pattern.search(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return bool(_bytes_pattern(pattern).search(bytes(value)))
    if isinstance(value, dict):
        return any(_names(k, pattern) or _names(v, pattern) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_names(v, pattern) for v in value)
    return False


def _bytes_pattern(pattern: re.Pattern[str]) -> re.Pattern[bytes]:
    return re.compile(pattern.pattern.encode("utf-8"), re.IGNORECASE)


def _redact(value: Any, pattern: re.Pattern[str], *, nullable: bool = False) -> Any:
    if isinstance(value, str):
        if nullable and pattern.fullmatch(value.strip()):
            return None  # a column that held just the address (an owner, a sender)
        return pattern.sub(ERASED, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_pattern(pattern).sub(ERASED.encode(), bytes(value))
    if isinstance(value, dict):
        return {_redact(k, pattern): _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, pattern) for v in value]
    return value


# -- retention ----------------------------------------------------------------

RETENTION_BATCH = 500
# Not "failed": `leadloop outbox release` may send such a mail again.
FINAL_OUTBOUND = ("sent", "rejected", "skipped", "cancelled")


async def run_retention(
    db: Database, loaded: LoadedConfig, now: datetime, *, actor: str = "retention"
) -> int:
    """Delete the raw bytes and bodies of mail older than ``[privacy]
    raw_mail_days`` (0: keep for ever), keeping the decisions: events,
    state changes, understanding results, and what the report counts.
    Returns how many messages were stripped.  Safe to run at any time and on
    several daemons at once (a row stripped twice is stripped)."""
    days = loaded.settings.privacy.raw_mail_days
    if days <= 0:
        return 0
    from leadloop.report.metrics import catalog_urls  # the report's own pitch test

    cutoff = now - timedelta(days=days)
    urls = catalog_urls(loaded)
    inbound = outbound = drafts = 0
    while True:
        async with db.transaction() as session:
            rows = list(
                await session.scalars(
                    select(InboundMessage)
                    .where(
                        InboundMessage.status == repo.DONE,
                        InboundMessage.received_at < cutoff,
                        # b"" marks a row already stripped (raw is NOT NULL).
                        func.length(InboundMessage.raw) > 0,
                    )
                    .limit(RETENTION_BATCH)
                )
            )
            for message in rows:
                message.raw = b""
                message.headers = {}
                result = dict(message.result or {})
                if "visible_text" in result:
                    result["visible_text"] = ""
                message.result = result
            inbound += len(rows)
        if len(rows) < RETENTION_BATCH:
            break
    while True:
        async with db.transaction() as session:
            out_rows = list(
                await session.scalars(
                    select(OutboundMessage)
                    .where(
                        OutboundMessage.status.in_(FINAL_OUTBOUND),
                        OutboundMessage.created_at < cutoff,
                        OutboundMessage.copy_pending.is_(False),
                        or_(
                            OutboundMessage.raw.is_not(None),
                            ~cast(OutboundMessage.payload, Text).like('%"stripped": true%'),
                        ),
                    )
                    .limit(RETENTION_BATCH)
                )
            )
            for mail in out_rows:
                mail.raw = None
                mail.payload = _stripped_payload(mail.payload or {}, urls)
            outbound += len(out_rows)
        if len(out_rows) < RETENTION_BATCH:
            break
    async with db.transaction() as session:
        cleared = await session.execute(
            update(Escalation)
            .where(
                Escalation.status == "resolved",
                Escalation.resolved_at < cutoff,
                Escalation.draft.is_not(None),
            )
            .values(draft=None)
        )
        drafts = getattr(cleared, "rowcount", 0) or 0
        if inbound or outbound or drafts:
            repo.add_event(
                session,
                "control.retention",
                actor=actor,
                now=now,
                reasons=[f"raw mail older than {days} days ({cutoff.date().isoformat()})"],
                data={"inbound": inbound, "outbound": outbound, "drafts": drafts},
            )
    if inbound or outbound or drafts:
        log.info(
            "retention: stripped %d inbound, %d outbound, %d drafts older than %d days",
            inbound,
            outbound,
            drafts,
            days,
        )
    return inbound + outbound


def _stripped_payload(payload: dict[str, Any], urls: Iterable[str]) -> dict[str, Any]:
    """The payload without its body: the text keeps only the catalog links it
    carried (the report counts a mail with one as a pitch), attachments keep
    their names and types."""
    text = str(payload.get("text") or "")
    kept = {**payload, "stripped": True}
    kept["text"] = "\n".join(url for url in urls if url in text)
    for name in ("html", "insight"):
        if name in kept:
            kept[name] = ""
    kept["attachments"] = [
        {k: v for k, v in a.items() if k != "data"} for a in payload.get("attachments") or []
    ]
    return kept
