"""The tables.  Every schema change here comes with a migration in
``migrations/versions``; ``tests/test_migrations.py`` checks they agree."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    SQLite has no time zones and hands back naive values; storing naive UTC
    and re-attaching UTC on the way out makes both backends behave alike.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def table_of(model: type[Base]) -> Table:
    """A model's Core table, for set-based statements (typed as a Table)."""
    return cast(Table, model.__table__)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, Decimal: Numeric(14, 2)}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    industry: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int | None] = mapped_column(Integer)
    open_opportunity_value: Mapped[Decimal | None]
    custom: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    leads: Mapped[list[Lead]] = relationship(back_populates="account")


class Lead(Base):
    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(255))
    last_name: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(String(255))
    company: Mapped[str | None] = mapped_column(String(255))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    country: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(100))
    rating: Mapped[str | None] = mapped_column(String(16))
    consent: Mapped[str] = mapped_column(String(16), default="unknown")
    hand_raiser: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(320))
    custom: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), index=True)
    state_changed_at: Mapped[datetime]
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_until: Mapped[datetime | None]
    paused_return_state: Mapped[str | None] = mapped_column(String(20))
    nurture_until: Mapped[datetime | None]
    email_status: Mapped[str | None] = mapped_column(String(16))
    """deliverable, invalid or unknown once checked (``mail/validate.py``); None before."""
    """In ``nurture``: lead mail may go out again from this time on."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    account: Mapped[Account | None] = relationship(back_populates="leads")


class LeadStateChange(Base):
    __tablename__ = "lead_state_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class Mailbox(Base):
    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(320))
    cursor: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cursor_updated_at: Mapped[datetime | None]
    pending_acks: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Source ids stored but not yet acknowledged on the server; committed with
    the rows, cleared after the acknowledgement, redone after a crash."""
    send_paused_at: Mapped[datetime | None]
    send_paused_reason: Mapped[str | None] = mapped_column(Text)
    """Set by the reputation circuit breaker (or an operator): nothing is sent
    from this mailbox until ``leadloop resume --mailbox NAME``."""


class MailThread(Base):
    __tablename__ = "threads"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id"), index=True)
    subject: Mapped[str | None] = mapped_column(Text)
    root_message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    created_at: Mapped[datetime]
    last_message_at: Mapped[datetime | None]


class InboundMessage(Base):
    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "source_id", name="uq_inbound_messages_mailbox_source"),
        Index("ix_inbound_messages_work", "status", "not_before"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id"))
    source_id: Mapped[str] = mapped_column(String(255))
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    message_id_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    from_addr: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    received_at: Mapped[datetime]
    defects: Mapped[list[str]] = mapped_column(JSON, default=list)
    oversized: Mapped[bool] = mapped_column(Boolean, default=False)
    stage: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None]
    kind: Mapped[str | None] = mapped_column(String(20))
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id"), index=True)
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"), index=True)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    finished_at: Mapped[datetime | None]


class OutboundMessage(Base):
    """One mail in the outbox.  ``status``: queued -> sending -> sent; or
    in_doubt, held, failed, rejected, skipped, cancelled (see agent/outbox.py)."""

    __tablename__ = "outbound_messages"
    __table_args__ = (
        Index("ix_outbound_messages_work", "status", "not_before"),
        Index("ix_outbound_messages_mailbox_sent", "mailbox_id", "sent_at"),
        Index("ix_outbound_messages_domain_sent", "recipient_domain", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id"))
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id"), index=True)
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(30))
    to_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """What to build the mail from (body, sender, footer choices); the final
    bytes go into ``raw`` when the row is first claimed and never change."""
    envelope_from: Mapped[str | None] = mapped_column(String(320))
    recipient_domain: Mapped[str | None] = mapped_column(String(253))
    phase: Mapped[str | None] = mapped_column(String(10))
    """While ``sending``: ``claimed`` (nothing reached the server's final dot,
    safe to send again) or ``dot`` (the final dot may have been sent)."""
    held_reason: Mapped[str | None] = mapped_column(Text)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    bounced: Mapped[bool] = mapped_column(Boolean, default=False)
    """A permanent bounce (at RCPT or later by DSN): the circuit breaker counts it."""
    policy_rejected: Mapped[bool] = mapped_column(Boolean, default=False)
    copy_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    """Sent, and a copy still to be appended to the Sent folder (sent_copy = "client")."""
    finished_at: Mapped[datetime | None]


class CadenceEnrollment(Base):
    """A lead's place in its cadence: the next step by id and when it is due.

    ``status``: ``active`` (``next_step_id`` due at ``next_at``), ``waiting``
    (the touch of ``last_step_id`` is in the outbox: the next step is planned
    from the time it actually went out), ``ending`` (the last touch went out;
    ``next_at`` is when no reply makes the lead ``lost``), ``stopped``, ``done``.

    The same row carries a conversing lead's quiet-conversation plan (cadence
    ``conversation``): a lead is in one cadence *or* one conversation.
    """

    __tablename__ = "cadence_enrollments"
    __table_args__ = (Index("ix_cadence_enrollments_work", "status", "next_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), unique=True)
    cadence: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))
    next_step_id: Mapped[str | None] = mapped_column(String(60))
    last_step_id: Mapped[str | None] = mapped_column(String(60))
    last_outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"))
    last_touch_at: Mapped[datetime | None]
    next_at: Mapped[datetime | None]
    ooo_event_id: Mapped[int | None] = mapped_column(Integer)
    """The last out-of-office event already applied."""
    answer_outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"))
    """In the ``conversation`` plan: our answer whose silence the nudges follow."""
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class BrainUsage(Base):
    """Tokens a brain spent understanding (or writing) one message."""

    __tablename__ = "brain_usage"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    brain: Mapped[str] = mapped_column(String(30))
    model: Mapped[str | None] = mapped_column(String(200))
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="SET NULL"), index=True
    )
    inbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="SET NULL")
    )
    calls: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(30))


class Escalation(Base):
    """A lead a person must look at: open, reminded, resolved (DESIGN.md)."""

    __tablename__ = "escalations"
    __table_args__ = (Index("ix_escalations_status_due", "status", "remind_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="SET NULL")
    )
    condition: Mapped[str] = mapped_column(String(60))
    """human_request, injection, guardrail_failure, ... (the playbook's names)."""
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20))
    """open, reminded, resolved."""
    supervisors: Mapped[list[str]] = mapped_column(JSON, default=list)
    draft: Mapped[str | None] = mapped_column(Text)
    """The reply held back, when one was written (APPROVE sends it)."""
    draft_hard: Mapped[bool] = mapped_column(Boolean, default=False)
    """The draft failed a hard guardrail (an invented price, a foreign link):
    APPROVE is refused; only EDIT sends."""
    opened_at: Mapped[datetime]
    remind_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(320))
    resolution: Mapped[str | None] = mapped_column(Text)


class Cursor(Base):
    """How far a sweep over the events has got (``alerts``: the last alert mailed)."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class UsedToken(Base):
    """Single-use command tokens already spent (``mail/tokens.py``)."""

    __tablename__ = "used_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(30))
    used_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), index=True
    )
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"), index=True)
    outbound_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"))
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Click(Base):
    """A request for a tracked link (``/t/<token>``): a person's click, or a
    mail scanner's (``scanner`` with its ``reason``), which is kept but never
    counted as interest."""

    __tablename__ = "clicks"
    __table_args__ = (Index("ix_clicks_outbound_at", "outbound_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    outbound_id: Mapped[int] = mapped_column(ForeignKey("outbound_messages.id"))
    sku: Mapped[str] = mapped_column(String(60))
    at: Mapped[datetime] = mapped_column(index=True)
    method: Mapped[str] = mapped_column(String(10))
    user_agent: Mapped[str | None] = mapped_column(Text)
    remote: Mapped[str | None] = mapped_column(String(64))
    scanner: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)


class Order(Base):
    """A conversion (an order or a won deal) reported to ``/hooks/conversion``;
    ``order_id`` is unique, so a repeated delivery changes nothing."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(String(255), unique=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    amount: Mapped[str] = mapped_column(String(40))
    """The decimal amount as sent (exact; no float)."""
    currency: Mapped[str] = mapped_column(String(3))
    at: Mapped[datetime] = mapped_column(index=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DaemonRow(Base):
    """A running daemon (``leadloop cluster status``): who it is, what it
    polls, when it last showed it was alive."""

    __tablename__ = "daemons"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """host:pid, the owner name on its claims."""
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime] = mapped_column(index=True)
    mailboxes: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The mailboxes it polls now (it holds their advisory locks)."""
    stopped_at: Mapped[datetime | None]


class Suppression(Base):
    """An address no mail may go to.  An erased person's entry keeps only
    ``address_hmac`` (keyed with the kept ``[privacy]`` key), never the address."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str | None] = mapped_column(String(320), unique=True)
    address_hmac: Mapped[str | None] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]


class Control(Base):
    """An operator's switch (``leadloop pause`` with no target: ``send_paused``)."""

    __tablename__ = "controls"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class ResearchResult(Base):
    """What one research provider found about one subject (``lead:<id>`` or
    ``domain:<name>``), with its date; refreshed on ``[research] refresh``."""

    __tablename__ = "research"
    __table_args__ = (UniqueConstraint("provider", "subject", name="uq_research_provider_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(300))
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(20))
    """ok, empty, skipped or error."""
    summary: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    fetched_at: Mapped[datetime]


class Task(Base):
    """Something a lead asked to be done (seed 003's "create task")."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="SET NULL"), unique=True
    )
    owner: Mapped[str | None] = mapped_column(String(320))
    title: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="open")
    created_at: Mapped[datetime]
    done_at: Mapped[datetime | None]


class ScheduledTask(Base):
    """Due work: anything that should happen at or after ``not_before``."""

    __tablename__ = "scheduled_tasks"
    __table_args__ = (
        Index("ix_scheduled_tasks_work", "status", "not_before"),
        UniqueConstraint("dedupe_key", name="uq_scheduled_tasks_dedupe_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(60))
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), index=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(255))
    not_before: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    done_at: Mapped[datetime | None]
