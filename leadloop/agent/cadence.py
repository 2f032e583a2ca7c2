"""Cadences: who is touched when.

A cadence (``[[cadences]]`` in ``config.toml``) is an ordered list of steps
with stable ids.  Each lead it works has one row in ``cadence_enrollments``:
its next step by id and when it is due.  :func:`tick` (rung by the
scheduler, or by tests and replay with their own clock) does three things:

1. enrolls leads that match a cadence's segment (the first by priority),
   with the first touch at the next send window in the lead's time zone;
2. moves leads whose last touch has gone out to their next step, planned
   from the time it *actually* went out (so a touch held back by a window
   or a cap shifts the later ones instead of bunching them up), or, after
   the last step, to the wait that ends in ``lost``;
3. queues the due touches in the outbox (``cadence:<lead>:<step id>`` is the
   idempotency key: a step is never sent twice, whatever happens to the
   config), stops the cadence of a lead that left ``new`` / ``engaging``
   (a human reply, a bounce, an opt-out, a hand-off), moves the next touch
   after an out-of-office reply, and makes leads with no reply ``lost``.

A template with a merge field the lead lacks never produces a broken mail:
the step waits a day and the lead's owner hears of it (an event).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import drafting, due, outbox
from leadloop.agent.lifecycle import State, can_transition, to_owner, transition
from leadloop.agent.sendtime import (
    Delay,
    SendWindow,
    add_delay,
    lead_zone,
    next_window_start,
    plan_touch,
)
from leadloop.agent.staff import Staff, escalate, is_hard, notify_owner
from leadloop.config import (
    INSIGHT,
    MERGE_FIELD_PATTERN,
    CadenceConfig,
    CadenceStep,
    CheckoutConfig,
    ConversationConfig,
    FollowUpStep,
    LoadedConfig,
)
from leadloop.mail import compose
from leadloop.mail.validate import Validator
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Account,
    CadenceEnrollment,
    Event,
    InboundMessage,
    Lead,
    Mailbox,
    OutboundMessage,
    ScheduledTask,
    table_of,
)

log = logging.getLogger("leadloop.agent.cadence")
ACTOR = "cadence"
OOO_DEFAULT = timedelta(days=7)  # an out-of-office reply without a return date
MISSING_FIELD_WAIT = timedelta(days=1)
PAUSED_RECHECK = timedelta(hours=1)  # a paused lead's cadence waits, it does not end
CONVERSATION = "conversation"  # the quiet-conversation plan's name on the enrollment row
CHECKOUT_TASK = "checkout.reminder"
CLOSED_FOR_CHECKOUT = frozenset({State.WON, State.OPTED_OUT, State.INVALID})
HUMAN_INBOUND = ("reply", "new_inbound")  # inbound kinds written by the buyer
DUE_CHUNK = 250  # due touches per transaction
VALIDATE_CHUNK = 200  # new addresses checked per tick
NOT_SENT = frozenset(
    {
        outbox.Status.SKIPPED,
        outbox.Status.FAILED,
        outbox.Status.REJECTED,
        outbox.Status.CANCELLED,
    }
)


Plan = CadenceConfig | ConversationConfig
Step = CadenceStep | FollowUpStep


@dataclass(frozen=True)
class Insight:
    """What a touch's ``{insight}`` says: sentences from the knowledge, each
    citing its passage, and what the guardrails found wrong with them."""

    text: str
    sentences: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    writer: str = "local"
    angle: str = "value"


class TouchWriter(Protocol):
    """Writes a touch's ``{insight}`` and closes quiet conversations by the
    hand-off rules (policy's act stage does both); holds the staff context
    escalations and hand-offs are mailed with."""

    staff: Staff

    async def close_conversation(
        self, session: AsyncSession, lead: Lead, reason: str, now: datetime
    ) -> str: ...

    async def touch_insight(
        self,
        session: AsyncSession,
        lead: Lead,
        account: Account | None,
        step: CadenceStep,
        product: str,
        now: datetime,
    ) -> Insight: ...


def with_insight(body: str, text: str) -> str:
    """*body* with its ``{insight}`` slot filled (braces in *text* kept as
    text); an empty insight leaves no blank paragraph behind."""
    filled = body.replace("{" + INSIGHT + "}", text.replace("{", "{{").replace("}", "}}"))
    filled = re.sub(r"[ \t]+\n", "\n", filled)
    return re.sub(r"\n{3,}", "\n\n", filled).strip()


@dataclass(frozen=True)
class CadenceSettings:
    cadences: tuple[CadenceConfig, ...]
    window: SendWindow
    default_zone: str
    min_gap: int
    batch: int
    sender_names: dict[str, str]
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    checkout: CheckoutConfig = field(default_factory=CheckoutConfig)

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> CadenceSettings:
        s = loaded.settings
        sending = s.sending
        return cls(
            cadences=tuple(sorted(s.cadences, key=lambda c: c.priority)),
            window=SendWindow.parse(sending.days, sending.hours, sending.skip_holidays),
            default_zone=sending.default_timezone,
            min_gap=sending.min_gap_business_days,
            batch=sending.plan_batch,
            sender_names={box.name: box.display_name for box in s.mailboxes},
            conversation=s.conversation,
            checkout=s.checkout,
        )

    def cadence(self, name: str) -> CadenceConfig | None:
        return next((c for c in self.cadences if c.name == name), None)

    def plan(self, name: str) -> Plan | None:
        """A cadence by name, or the quiet-conversation plan."""
        return self.conversation if name == CONVERSATION else self.cadence(name)


def end_delay(plan: Plan) -> Delay:
    """After a plan's last touch: when no reply makes the lead ``lost`` (a
    cadence) or closes the conversation (the conversation plan)."""
    return Delay.parse(plan.lost_after if isinstance(plan, CadenceConfig) else plan.close_after)


@dataclass
class TickResult:
    enrolled: int = 0
    queued: int = 0
    stopped: int = 0
    lost: int = 0
    waiting: int = 0
    conversations: int = 0
    closed: int = 0


class MissingFields(Exception):
    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        super().__init__(", ".join(self.names))


def merge_fields(
    lead: Lead, account: Account | None, sender_name: str, sender_address: str, product: str
) -> dict[str, str | None]:
    full = " ".join(p for p in (lead.first_name, lead.last_name) if p) or None
    return {
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "full_name": full,
        "title": lead.title,
        "company": lead.company or (account.name if account else None),
        "email": lead.email,
        "country": lead.country,
        "account_name": account.name if account else None,
        "industry": account.industry if account else None,
        "sender_name": sender_name or None,
        "sender_address": sender_address,
        "product": product,
    }


def render(template: str, fields: dict[str, str | None]) -> str:
    """Fill ``{name}`` fields (validated against MERGE_FIELDS when the config
    loaded); an empty or missing value raises :class:`MissingFields`."""
    missing = sorted(
        {n for n in MERGE_FIELD_PATTERN.findall(_unescaped(template)) if not fields.get(n)}
    )
    if missing:
        raise MissingFields(missing)
    return template.format_map({k: v or "" for k, v in fields.items()})


def _unescaped(template: str) -> str:
    return template.replace("{{", "").replace("}}", "")


def step_after(cadence: Plan, step_id: str | None) -> Step | None:
    """The step after *step_id* in the current order (the first when None).

    When *step_id* was removed from the config its place is unknown, so this
    starts again from the first step: a step the lead already had is never
    sent twice (its idempotency key finds the mail already sent, and the
    planner moves straight on), so the lead walks to the first step it has
    not had."""
    ids = [s.id for s in cadence.steps]
    if not ids:
        return None
    if step_id is None or step_id not in ids:
        return cadence.steps[0]
    index = ids.index(step_id) + 1
    return cadence.steps[index] if index < len(ids) else None


def next_step(cadence: Plan, enrollment: CadenceEnrollment) -> Step | None:
    """The step an active enrollment is due for, by id; if that step was
    removed from the config, the first one after the last touch."""
    for step in cadence.steps:
        if step.id == enrollment.next_step_id:
            return step
    return step_after(cadence, enrollment.last_step_id)


def matches(cadence: CadenceConfig, lead: Lead, now: datetime) -> bool:
    segment = cadence.segment
    if lead.state not in segment.states:
        return False
    if segment.sources and (lead.source or "") not in segment.sources:
        return False
    if segment.ratings and (lead.rating or "") not in segment.ratings:
        return False
    if segment.countries and (lead.country or "").lower() not in {
        c.lower() for c in segment.countries
    }:
        return False
    if segment.created_within is not None and lead.created_at < now - segment.created_within:
        return False
    custom = lead.custom or {}
    return all(str(custom.get(key)) == value for key, value in segment.custom.items())


class Planner:
    def __init__(
        self,
        db: Database,
        settings: CadenceSettings,
        send: outbox.OutboxSettings,
        writer: TouchWriter | None = None,
        validator: Validator | None = None,
    ):
        self.db = db
        self.settings = settings
        self.send = send
        self.validator = validator
        """Checks new leads' addresses before their first touch."""
        self.writer = writer
        """Writes ``{insight}``; without one the slot stays empty."""

    @property
    def staff(self) -> Staff | None:
        """Escalations and hand-offs by mail (due tasks find it here)."""
        return self.writer.staff if self.writer is not None else None

    def zone_of(self, lead: Lead) -> ZoneInfo:
        return lead_zone(lead.timezone, lead.country, self.settings.default_zone)

    async def tick(self, now: datetime) -> TickResult:
        result = TickResult()
        await self._validate_new(now)
        async with self.db.transaction() as session:
            await self._enroll(session, now, result)
        async with self.db.transaction() as session:
            await self._converse(session, now, result)
        async with self.db.transaction() as session:
            await self._advance_waiting(session, now, result)
        # Due touches in short transactions: on SQLite a writer holds the one
        # write lock until it commits, and ingest and the sender need it too.
        left = self.settings.batch
        while left > 0:
            chunk = min(DUE_CHUNK, left)
            async with self.db.transaction() as session:
                read = await self._run_due(session, now, result, chunk)
            left -= read
            if read < chunk:
                break
        return result

    async def replan(self, now: datetime) -> int:
        """After a config edit: plan every active lead's next touch again from
        its last touch with the current steps, delays and window.  Leads keep
        their step by id.  Returns how many touch times changed."""
        changed = 0
        last_id = 0
        while True:
            async with self.db.transaction() as session:
                rows = (
                    await session.execute(
                        select(CadenceEnrollment, Lead)
                        .join(Lead, Lead.id == CadenceEnrollment.lead_id)
                        .where(CadenceEnrollment.status == "active", CadenceEnrollment.id > last_id)
                        .order_by(CadenceEnrollment.id)
                        .limit(self.settings.batch)
                    )
                ).all()
                if not rows:
                    return changed
                for enrollment, lead in rows:
                    last_id = enrollment.id
                    cadence = self.settings.plan(enrollment.cadence)
                    step = next_step(cadence, enrollment) if cadence else None
                    if step is None:
                        continue
                    at = plan_touch(
                        enrollment.last_touch_at,
                        Delay.parse(step.delay),
                        now,
                        self.zone_of(lead),
                        lead.country,
                        self.settings.window,
                        min_gap_business_days=self.settings.min_gap,
                    )
                    if at != enrollment.next_at:
                        enrollment.next_step_id = step.id
                        enrollment.next_at = at
                        enrollment.updated_at = now
                        changed += 1

    # -- 0. check new addresses ------------------------------------------------
    async def _validate_new(self, now: datetime) -> int:
        """Check the address of every new lead not yet checked (DNS outside
        any transaction); an invalid one goes to its owner as ``invalid``."""
        if self.validator is None:
            return 0
        async with self.db.sessions() as session:
            todo = (
                await session.execute(
                    select(Lead.id, Lead.email)
                    .where(Lead.state == State.NEW, Lead.email_status.is_(None))
                    .order_by(Lead.hand_raiser.desc(), Lead.id)
                    .limit(VALIDATE_CHUNK)
                )
            ).all()
        if not todo:
            return 0
        checked = await asyncio.gather(*(self.validator.check(email) for _, email in todo))
        async with self.db.transaction() as session:
            for (lead_id, _), validity in zip(todo, checked, strict=True):
                lead = await session.get(Lead, lead_id, with_for_update=True)
                if lead is None or lead.email_status is not None:
                    continue
                lead.email_status = validity.status
                lead.custom = {**(lead.custom or {}), "email_check": validity.as_dict()}
                repo.add_event(
                    session,
                    "lead.validated",
                    actor=ACTOR,
                    now=now,
                    lead_id=lead.id,
                    reasons=[f"{validity.status}: {validity.reason}"],
                    data=validity.as_dict(),
                )
                if validity.status == "invalid":
                    reason = f"the address does not work: {validity.reason}"
                    await to_owner(
                        session, lead, State.INVALID, actor=ACTOR, reason=reason, now=now
                    )
                    if self.staff is not None:
                        await notify_owner(
                            session, self.staff, lead, reasons=[reason], now=now,
                            key=f"owner:{lead.id}:invalid",
                        )  # fmt: skip
        return len(todo)

    # -- 1. enroll ----------------------------------------------------------------
    async def _enroll(self, session: AsyncSession, now: datetime, result: TickResult) -> None:
        # A lead joins a cadence once.  A lead back from nurture (its date
        # due) joins again: its old row is older than its move to nurture.
        rows = CadenceEnrollment.lead_id == Lead.id
        eligible = or_(
            ~exists().where(rows),
            and_(
                Lead.state == State.NURTURE,
                ~exists().where(rows, CadenceEnrollment.updated_at > Lead.state_changed_at),
            ),
        )
        due_nurture = or_(
            Lead.state != State.NURTURE,
            and_(Lead.nurture_until.is_not(None), Lead.nurture_until <= now),
        )
        for cadence in self.settings.cadences:  # by priority: a lead joins the first
            segment = cadence.segment
            # The segment in SQL, so leads no cadence wants are never read
            # again and again (custom fields are checked in Python).
            query = select(Lead).where(Lead.state.in_(segment.states), eligible)
            if self.validator is not None:  # a new lead waits for its address check
                query = query.where(or_(Lead.state != State.NEW, Lead.email_status.is_not(None)))
            if State.NURTURE in segment.states:
                query = query.where(due_nurture)
            if segment.sources:
                query = query.where(Lead.source.in_(segment.sources))
            if segment.ratings:
                query = query.where(Lead.rating.in_(segment.ratings))
            if segment.countries:
                lowered = [c.lower() for c in segment.countries]
                query = query.where(func.lower(Lead.country).in_(lowered))
            if segment.created_within is not None:
                query = query.where(Lead.created_at >= now - segment.created_within)
            leads = [
                lead
                for lead in (
                    await session.scalars(
                        query.order_by(Lead.hand_raiser.desc(), Lead.id).limit(self.settings.batch)
                    )
                ).all()
                if matches(cadence, lead, now)
            ]
            old = await self._rows_of(session, [lead.id for lead in leads])
            for lead in leads:
                self._enroll_one(session, cadence, lead, old.get(lead.id), now, result)
            await session.flush()

    async def _rows_of(
        self, session: AsyncSession, lead_ids: list[int]
    ) -> dict[int, CadenceEnrollment]:
        if not lead_ids:
            return {}
        found = await session.scalars(
            select(CadenceEnrollment).where(CadenceEnrollment.lead_id.in_(lead_ids))
        )
        return {row.lead_id: row for row in found}

    def _enroll_one(
        self,
        session: AsyncSession,
        cadence: CadenceConfig,
        lead: Lead,
        row: CadenceEnrollment | None,
        now: datetime,
        result: TickResult,
    ) -> None:
        first = cadence.steps[0]
        at = plan_touch(
            None,
            Delay.parse(first.delay),
            now,
            self.zone_of(lead),
            lead.country,
            self.settings.window,
            min_gap_business_days=self.settings.min_gap,
        )
        if row is None:
            row = CadenceEnrollment(lead_id=lead.id, created_at=now)
            session.add(row)
        _restart(row, cadence.name, first.id, at, now)
        row.last_touch_at = None
        repo.add_event(
            session,
            "cadence.enrolled",
            actor=ACTOR,
            now=now,
            lead_id=lead.id,
            reasons=[f"matches cadence {cadence.name}; first touch at {at.isoformat()}"],
        )
        result.enrolled += 1

    # -- 1b. quiet conversations -----------------------------------------------------
    async def _converse(self, session: AsyncSession, now: datetime, result: TickResult) -> None:
        """Start (or restart) the follow-up plan of each conversing lead whose
        latest answer from us has gone out since the plan last looked."""
        answers = (
            select(
                OutboundMessage.lead_id.label("lead_id"),
                func.max(OutboundMessage.id).label("answer_id"),
            )
            .join(Lead, Lead.id == OutboundMessage.lead_id)
            .where(
                Lead.state == State.CONVERSING,
                OutboundMessage.kind == outbox.Kind.REPLY,
                OutboundMessage.status == outbox.Status.SENT,
            )
            .group_by(OutboundMessage.lead_id)
            .subquery()
        )
        found = (
            await session.execute(
                select(Lead, OutboundMessage)
                .join(answers, answers.c.lead_id == Lead.id)
                .join(OutboundMessage, OutboundMessage.id == answers.c.answer_id)
                .outerjoin(CadenceEnrollment, CadenceEnrollment.lead_id == Lead.id)
                .where(
                    or_(
                        CadenceEnrollment.id.is_(None),
                        CadenceEnrollment.answer_outbound_id.is_(None),
                        CadenceEnrollment.answer_outbound_id < answers.c.answer_id,
                    )
                )
                .limit(self.settings.batch)
            )
        ).all()
        old = await self._rows_of(session, [lead.id for lead, _ in found])
        plan = self.settings.conversation
        for lead, answer in found:
            row = old.get(lead.id)
            if row is None:
                row = CadenceEnrollment(lead_id=lead.id, created_at=now)
                session.add(row)
            sent = answer.sent_at or now
            first = plan.steps[0] if plan.steps else None
            zone = self.zone_of(lead)
            if first is None:
                at = add_delay(sent, end_delay(plan), zone, lead.country, self.settings.window)
                _restart(row, CONVERSATION, None, at, now)
                row.status = "ending"
            else:
                at = plan_touch(
                    sent,
                    Delay.parse(first.delay),
                    now,
                    zone,
                    lead.country,
                    self.settings.window,
                    min_gap_business_days=self.settings.min_gap,
                )
                _restart(row, CONVERSATION, first.id, at, now)
            row.answer_outbound_id = answer.id
            row.last_touch_at = sent
            repo.add_event(
                session,
                "cadence.conversation",
                actor=ACTOR,
                now=now,
                lead_id=lead.id,
                outbound_id=answer.id,
                reasons=[f"our answer went out; if the buyer stays quiet: {at.isoformat()}"],
            )
            result.conversations += 1

    # -- 2. touches that went out ------------------------------------------------
    async def _advance_waiting(
        self, session: AsyncSession, now: datetime, result: TickResult
    ) -> None:
        rows = (
            await session.execute(
                select(CadenceEnrollment, OutboundMessage, Lead)
                .join(OutboundMessage, OutboundMessage.id == CadenceEnrollment.last_outbound_id)
                .join(Lead, Lead.id == CadenceEnrollment.lead_id)
                .where(
                    CadenceEnrollment.status == "waiting",
                    # Only touches with a final outcome: mail still queued (a
                    # cap, a retry) is not read again on every tick.
                    OutboundMessage.status.in_([outbox.Status.SENT, *NOT_SENT]),
                )
                .limit(self.settings.batch)
            )
        ).all()
        for enrollment, row, lead in rows:
            if row.status in NOT_SENT:
                self._stop(
                    session,
                    enrollment,
                    f"touch {enrollment.last_step_id} not sent: "
                    f"{row.status} ({row.last_error or row.held_reason})",
                    now,
                    result,
                )
                continue
            if row.status != outbox.Status.SENT or row.sent_at is None:
                result.waiting += 1
                continue
            enrollment.last_touch_at = row.sent_at
            plan = self.settings.plan(enrollment.cadence)
            following = step_after(plan, enrollment.last_step_id) if plan else None
            zone = self.zone_of(lead)
            if plan is None:
                self._stop(session, enrollment, "its cadence was removed", now, result)
            elif following is not None:
                enrollment.status = "active"
                enrollment.next_step_id = following.id
                enrollment.next_at = plan_touch(
                    row.sent_at,
                    Delay.parse(following.delay),
                    now,
                    zone,
                    lead.country,
                    self.settings.window,
                    min_gap_business_days=self.settings.min_gap,
                )
            else:
                enrollment.status = "ending"
                enrollment.next_step_id = None
                enrollment.next_at = add_delay(
                    row.sent_at, end_delay(plan), zone, lead.country, self.settings.window
                )
            enrollment.updated_at = now

    # -- 3. due work -----------------------------------------------------------
    async def _run_due(
        self, session: AsyncSession, now: datetime, result: TickResult, limit: int
    ) -> int:
        rows = (
            await session.execute(
                select(CadenceEnrollment, Lead)
                .join(Lead, Lead.id == CadenceEnrollment.lead_id)
                .where(
                    CadenceEnrollment.status.in_(("active", "ending")),
                    CadenceEnrollment.next_at <= now,
                )
                .order_by(CadenceEnrollment.next_at, CadenceEnrollment.id)
                .limit(limit)
            )
        ).all()
        away = await self._out_of_office_events(session, [lead.id for _, lead in rows])
        # The chunk's accounts in one query; session.get then finds them in
        # the identity map instead of asking once per lead.
        accounts = {lead.account_id for _, lead in rows if lead.account_id}
        if accounts:
            (await session.scalars(select(Account).where(Account.id.in_(accounts)))).all()
        talks = await self._conversations(
            session, [e for e, _ in rows if e.cadence == CONVERSATION]
        )
        touches: list[tuple[CadenceEnrollment, str, outbox.Draft]] = []
        with session.no_autoflush:
            for enrollment, lead in rows:
                await self._due_one(
                    session, enrollment, lead, away.get(lead.id), talks, now, result, touches
                )
        if not touches:
            return len(rows)
        # The chunk's touches and their rows' moves set-based; the sender
        # makes the mails' bytes when it first claims them.
        await session.flush()
        queued = await outbox.queue_bulk(
            session, self.send, [d for _, _, d in touches], now=now, actor=ACTOR
        )
        table = table_of(CadenceEnrollment)
        await session.execute(
            update(table)
            .where(table.c.id == bindparam("row_id"))
            .values(
                status="waiting",
                last_step_id=bindparam("step_id"),
                next_step_id=None,
                last_outbound_id=bindparam("outbound_id"),
                reason=None,
                updated_at=now,
            ),
            [
                {"row_id": enrollment.id, "step_id": step_id, "outbound_id": outbound_id}
                for (enrollment, step_id, _), outbound_id in zip(touches, queued, strict=True)
            ],
            execution_options={"synchronize_session": False},
        )
        for enrollment, _, _ in touches:
            session.expire(enrollment)
        result.queued += len(queued)
        return len(rows)

    async def _out_of_office_events(
        self, session: AsyncSession, lead_ids: list[int]
    ) -> dict[int, list[Event]]:
        """Out-of-office replies of these leads, newest first, in one query."""
        found: dict[int, list[Event]] = {}
        if lead_ids:
            events = await session.scalars(
                select(Event)
                .where(Event.lead_id.in_(lead_ids), Event.kind == "lead.out_of_office")
                .order_by(Event.id.desc())
            )
            for event in events:
                if event.lead_id is not None:
                    found.setdefault(event.lead_id, []).append(event)
        return found

    async def _conversations(self, session: AsyncSession, rows: list[CadenceEnrollment]) -> _Talks:
        """For due conversation plans: the answers and last nudges (by id) and
        each lead's latest mail of its own."""
        talks = _Talks()
        if not rows:
            return talks
        ids = {i for r in rows for i in (r.answer_outbound_id, r.last_outbound_id) if i}
        for message in await session.scalars(
            select(OutboundMessage).where(OutboundMessage.id.in_(ids))
        ):
            talks.outbound[message.id] = message
        latest = await session.execute(
            select(InboundMessage.lead_id, func.max(InboundMessage.received_at))
            .where(
                InboundMessage.lead_id.in_([r.lead_id for r in rows]),
                InboundMessage.kind.in_(HUMAN_INBOUND),
            )
            .group_by(InboundMessage.lead_id)
        )
        talks.heard = {lead_id: at for lead_id, at in latest.all() if lead_id is not None}
        return talks

    async def _due_one(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        away: list[Event] | None,
        talks: _Talks,
        now: datetime,
        result: TickResult,
        touches: list[tuple[CadenceEnrollment, str, outbox.Draft]],
    ) -> None:
        talking = enrollment.cadence == CONVERSATION
        working = (State.CONVERSING,) if talking else (State.NEW, State.ENGAGING, State.NURTURE)
        answer = talks.outbound.get(enrollment.answer_outbound_id or 0)
        heard = talks.heard.get(lead.id)
        if lead.state == State.PAUSED:
            # Agent silent until RESUME or the pause's end; the plan keeps its place.
            enrollment.next_at = next_window_start(
                max(lead.paused_until or now, now + PAUSED_RECHECK),
                self.zone_of(lead),
                lead.country,
                self.settings.window,
            )
            enrollment.updated_at = now
        elif lead.state not in working:
            why = "a human replied" if lead.state == State.CONVERSING else f"lead is {lead.state}"
            self._stop(session, enrollment, why, now, result)
        elif talking and (answer is None or answer.sent_at is None):
            self._stop(session, enrollment, "the answer it follows is gone", now, result)
        elif talking and heard is not None and answer and heard > (answer.sent_at or now):
            self._stop(
                session,
                enrollment,
                "the buyer replied; the plan starts again after our next answer",
                now,
                result,
            )
        elif await self._out_of_office(session, enrollment, lead, away or [], now):
            return
        elif enrollment.status == "ending":
            if talking:
                await self._close(session, enrollment, lead, now, result)
            else:
                await self._lose(session, enrollment, lead, now, result)
        elif self.settings.plan(enrollment.cadence) is None:
            self._stop(session, enrollment, "its cadence was removed", now, result)
        elif talking:
            assert answer is not None
            last = talks.outbound.get(enrollment.last_outbound_id or 0)
            await self._nudge(session, enrollment, lead, answer, last, now, touches)
        else:
            await self._touch(session, enrollment, lead, now, touches)

    async def _out_of_office(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        away: list[Event],
        now: datetime,
    ) -> bool:
        """An out-of-office reply since the last touch moves the next one to
        the return date + 1 business day (7 days without a date).  It changes
        no state.  Returns whether the touch was moved."""
        event = next(
            (
                e
                for e in away  # newest first
                if e.id > (enrollment.ooo_event_id or 0)
                and (enrollment.last_touch_at is None or e.at >= enrollment.last_touch_at)
            ),
            None,
        )
        if event is None:
            return False
        enrollment.ooo_event_id = event.id
        zone = self.zone_of(lead)
        back = (event.data or {}).get("return_date")
        if back:
            day = date.fromisoformat(back[:10])
            start = datetime.combine(day, self.settings.window.start, zone)
            moved = add_delay(
                start, Delay(1, "business_days"), zone, lead.country, self.settings.window
            )
        else:
            moved = event.at + OOO_DEFAULT
        moved = next_window_start(max(moved, now), zone, lead.country, self.settings.window)
        if moved <= now:
            return False
        enrollment.next_at = moved
        enrollment.updated_at = now
        repo.add_event(
            session,
            "cadence.moved",
            actor=ACTOR,
            now=now,
            lead_id=lead.id,
            reasons=[f"out of office: next touch at {moved.isoformat()}"],
        )
        return True

    async def _touch(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        now: datetime,
        touches: list[tuple[CadenceEnrollment, str, outbox.Draft]],
    ) -> None:
        cadence = self.settings.cadence(enrollment.cadence)
        assert cadence is not None  # _due_one stops leads of a removed cadence
        step = next_step(cadence, enrollment)
        if step is None:
            enrollment.status = "ending"
            enrollment.next_at = now
            return
        research = self.send.drafting.mode_of(cadence.name) == drafting.RESEARCH
        if research and not await self._research_gate(session, enrollment, lead, now):
            return
        box = self.send.box(cadence.mailbox)
        account = await session.get(Account, lead.account_id) if lead.account_id else None
        fields = merge_fields(
            lead,
            account,
            self.settings.sender_names.get(box.name, ""),
            box.address,
            cadence.product,
        )
        assert isinstance(step, CadenceStep)
        try:
            subject = render(step.subject, fields)
            body = render(step.body.replace("{" + INSIGHT + "}", ""), fields)
        except MissingFields as exc:
            self._wait_for_fields(session, enrollment, lead, step.id, exc, now)
            return
        if INSIGHT in MERGE_FIELD_PATTERN.findall(step.body):
            insight = None
            if self.writer is not None:
                insight = await self.writer.touch_insight(
                    session, lead, account, step, cadence.product, now
                )
            if insight is not None and insight.failures:
                await self._hold_for_review(session, enrollment, lead, step, insight, now)
                return
            body = render(with_insight(step.body, insight.text if insight else ""), fields)
            if insight is not None and insight.sentences:
                repo.add_event(
                    session,
                    "lead.touch_written",
                    actor=ACTOR,
                    now=now,
                    lead_id=lead.id,
                    reasons=[
                        f"step {step.id}: {insight.angle} angle, written by the {insight.writer} "
                        f"writer; cites {', '.join(_cited(insight))}"
                    ],
                    data={
                        "step": step.id,
                        "angle": insight.angle,
                        "writer": insight.writer,
                        "sentences": insight.sentences,
                    },
                )
        draft = outbox.Draft(
            kind=outbox.Kind.TOUCH,
            to=[lead.email],
            subject=subject,
            text=body,
            idempotency_key=f"cadence:{lead.id}:{step.id}",
            mailbox=box.name,
            lead=lead,
        )
        if research:
            # The outreach draft goes to the seller (the outbox files or
            # mails it); the seller decides what follows, so the plan ends.
            [row] = await outbox.queue_many(session, self.send, [draft], now=now, actor=ACTOR)
            reason = f"research mode: outreach drafted for {lead.owner} (step {step.id})"
            _end(enrollment, "done", reason, now)
            enrollment.last_step_id = step.id
            enrollment.last_outbound_id = row.id
            repo.add_event(session, "research.drafted", actor=ACTOR, now=now, lead_id=lead.id,
                           outbound_id=row.id, reasons=[reason])  # fmt: skip
            return
        touches.append((enrollment, step.id, draft))

    async def _research_gate(
        self, session: AsyncSession, enrollment: CadenceEnrollment, lead: Lead, now: datetime
    ) -> bool:
        """Research mode, before the outreach draft: the seed's routing (ICP
        low: disqualified, the supervisors told; else the lead's seller) and
        its conditions for an initial-outreach draft.  False ends the plan."""
        why_not = await drafting.route(session, self.send.drafting, self.staff, lead, now)
        if why_not is not None:
            _end(enrollment, "stopped", why_not, now)
            return False
        blockers = await drafting.outreach_blockers(session, lead, now)
        if blockers:
            reason = f"research mode: {'; '.join(blockers)}"
            _end(enrollment, "stopped", reason, now)
            repo.add_event(session, "research.skipped", actor=ACTOR, now=now, lead_id=lead.id,
                           reasons=[reason])  # fmt: skip
            return False
        return True

    async def _hold_for_review(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        step: CadenceStep,
        insight: Insight,
        now: datetime,
    ) -> None:
        """A touch that failed the guardrails is not sent: the lead is paused
        and escalated with the reasons; the plan keeps its place."""
        if self.staff is not None:
            await escalate(
                session,
                self.staff,
                lead,
                condition="guardrail_failure",
                reasons=[f"cadence touch {step.id}", *insight.failures],
                now=now,
                actor=ACTOR,
                draft=insight.text,
                hard=is_hard(insight.failures),
            )
        else:
            reason = "escalated: guardrail_failure"
            if can_transition(lead, State.PAUSED):
                await transition(session, lead, State.PAUSED, actor=ACTOR, reason=reason, now=now)
            repo.add_event(
                session,
                "lead.escalated",
                actor=ACTOR,
                now=now,
                lead_id=lead.id,
                reasons=[reason, f"touch {step.id}", *insight.failures],
                data={"condition": "guardrail_failure", "failures": insight.failures},
            )
        enrollment.next_at = next_window_start(
            now + PAUSED_RECHECK, self.zone_of(lead), lead.country, self.settings.window
        )
        enrollment.updated_at = now

    async def _nudge(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        answer: OutboundMessage,
        last: OutboundMessage | None,
        now: datetime,
        touches: list[tuple[CadenceEnrollment, str, outbox.Draft]],
    ) -> None:
        """A follow-up in the thread of our answer, under our latest mail in it."""
        plan = self.settings.conversation
        step = next_step(plan, enrollment)
        if step is None:
            enrollment.status = "ending"
            enrollment.next_at = now
            return
        mailbox = await session.get(Mailbox, answer.mailbox_id) if answer.mailbox_id else None
        box = self.send.box(mailbox.name if mailbox else plan.mailbox)
        account = await session.get(Account, lead.account_id) if lead.account_id else None
        fields = merge_fields(
            lead, account, self.settings.sender_names.get(box.name, ""), box.address, plan.product
        )
        try:
            body = render(step.body, fields)
        except MissingFields as exc:
            self._wait_for_fields(session, enrollment, lead, step.id, exc, now)
            return
        parent = last if last is not None and last.sent_at is not None else answer
        draft = outbox.Draft(
            kind=outbox.Kind.NUDGE,
            to=[lead.email],
            subject=compose.reply_subject(answer.subject),
            text=body,
            idempotency_key=f"nudge:{lead.id}:{answer.id}:{step.id}",
            mailbox=box.name,
            lead=lead,
            thread_id=answer.thread_id,
            in_reply_to=parent.message_id,
            references=compose.references_for(parent.message_id, list(parent.references or [])),
        )
        touches.append((enrollment, step.id, draft))

    async def _close(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        now: datetime,
        result: TickResult,
    ) -> None:
        """The buyer stayed quiet through every nudge: the conversation ends
        through the hand-off rules (qualified, disqualified or handed back),
        never as ``lost``."""
        nudged = f" and {enrollment.last_step_id}" if enrollment.last_step_id else ""
        reason = f"the conversation went quiet: no reply to our answer{nudged}"
        if self.writer is not None:
            outcome = await self.writer.close_conversation(session, lead, reason, now)
            log.info("lead %s: %s", lead.id, outcome)
            result.closed += 1
        elif can_transition(lead, State.HANDED_BACK):
            await to_owner(session, lead, State.HANDED_BACK, actor=ACTOR, reason=reason, now=now)
            result.closed += 1
        _end(enrollment, "done", reason, now)

    def _wait_for_fields(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        step_id: str,
        exc: MissingFields,
        now: datetime,
    ) -> None:
        enrollment.next_at = now + MISSING_FIELD_WAIT
        enrollment.updated_at = now
        reason = f"step {step_id} waits: the lead has no {exc}"
        if enrollment.reason != reason:
            enrollment.reason = reason
            repo.add_event(
                session,
                "cadence.missing_field",
                actor=ACTOR,
                now=now,
                lead_id=lead.id,
                reasons=[reason],
                data={"owner": lead.owner, "fields": exc.names, "step": step_id},
            )

    async def _lose(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        now: datetime,
        result: TickResult,
    ) -> None:
        reason = f"no human reply after the last touch ({enrollment.last_step_id})"
        if can_transition(lead, State.LOST):
            await transition(session, lead, State.LOST, actor=ACTOR, reason=reason, now=now)
            result.lost += 1
        _end(enrollment, "done", reason, now)

    def _stop(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        reason: str,
        now: datetime,
        result: TickResult,
    ) -> None:
        _end(enrollment, "stopped", reason, now)
        repo.add_event(
            session,
            "cadence.stopped",
            actor=ACTOR,
            now=now,
            lead_id=enrollment.lead_id,
            reasons=[reason],
        )
        result.stopped += 1


# -- what the buyer does elsewhere -------------------------------------------------


async def _row_of(session: AsyncSession, lead: Lead) -> CadenceEnrollment | None:
    return await session.scalar(
        select(CadenceEnrollment).where(CadenceEnrollment.lead_id == lead.id)
    )


async def nurture(
    session: AsyncSession, lead: Lead, until: datetime, *, actor: str, reason: str, now: datetime
) -> None:
    """A timing objection or commitment ("after Q3"): the lead waits in
    ``nurture`` until *until*, when a cadence whose segment includes
    ``nurture`` re-engages it.  Its current plan stops."""
    if until <= now:
        raise ValueError(f"the re-engagement date {until.isoformat()} is not in the future")
    await transition(session, lead, State.NURTURE, actor=actor, reason=reason, now=now)
    lead.nurture_until = until
    row = await _row_of(session, lead)
    if row is not None and row.status in ("active", "waiting", "ending"):
        _end(row, "stopped", f"nurture until {until.date().isoformat()}: {reason}", now)


def _link_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


async def record_click(
    session: AsyncSession,
    settings: CadenceSettings,
    lead: Lead,
    url: str,
    *,
    purchase: bool,
    now: datetime,
    product: str | None = None,
) -> str:
    """A tracked click by *lead* (the tracking endpoint calls this).

    The lead's cadence reacts as its ``on_click`` says (nothing, pause, or
    stop); a click on a purchase link schedules one checkout reminder with
    the same link, which a conversion cancels.  Returns what was done."""
    done: list[str] = []
    row = await _row_of(session, lead)
    cadence = settings.cadence(row.cadence) if row is not None else None
    if row is not None and cadence is not None and row.status in ("active", "waiting"):
        if cadence.on_click == "stop":
            _end(row, "stopped", "the lead clicked a link (on_click = stop)", now)
            done.append(f"cadence {cadence.name} stopped")
        elif cadence.on_click == "pause" and can_transition(lead, State.PAUSED):
            reason = "the lead clicked a link (on_click = pause): over to the owner"
            await to_owner(
                session, lead, State.PAUSED, actor=ACTOR, reason=reason, now=now, data={"url": url}
            )
            done.append(f"cadence {cadence.name} paused with the lead")
    checkout = settings.checkout
    if purchase and checkout.enabled and lead.state not in CLOSED_FOR_CHECKOUT:
        zone = lead_zone(lead.timezone, lead.country, settings.default_zone)
        at = add_delay(now, Delay.parse(checkout.after), zone, lead.country, settings.window)
        at = next_window_start(at, zone, lead.country, settings.window)
        await repo.schedule(
            session,
            CHECKOUT_TASK,
            at,
            now=now,
            lead_id=lead.id,
            payload={"url": url, "product": product, "clicked_at": now.isoformat()},
            dedupe_key=f"checkout:{lead.id}:{_link_key(url)}",
        )
        done.append(f"checkout reminder at {at.isoformat()} unless it converts")
    repo.add_event(
        session,
        "lead.clicked",
        actor=ACTOR,
        now=now,
        lead_id=lead.id,
        reasons=done or ["recorded"],
        data={"url": url, "purchase": purchase},
    )
    return "; ".join(done) or "recorded"


async def record_conversion(
    session: AsyncSession, lead: Lead, *, now: datetime, reason: str = "conversion"
) -> None:
    """The lead bought: ``won``; its plan and any checkout reminder end."""
    if can_transition(lead, State.WON):
        await transition(session, lead, State.WON, actor=ACTOR, reason=reason, now=now)
    pending = await session.scalars(
        select(ScheduledTask).where(
            ScheduledTask.lead_id == lead.id,
            ScheduledTask.kind == CHECKOUT_TASK,
            ScheduledTask.status == repo.PENDING,
        )
    )
    for task in pending:
        task.status = repo.DONE
        task.done_at = now
        task.last_error = "cancelled: the lead converted"
    row = await _row_of(session, lead)
    if row is not None and row.status in ("active", "waiting", "ending"):
        _end(row, "done", "the lead converted", now)


@due.handler(CHECKOUT_TASK)
async def checkout_reminder(
    session: AsyncSession, task: ScheduledTask, now: datetime, context: Any
) -> str:
    """The one reminder after a purchase-link click that did not convert."""
    if not isinstance(context, Planner):
        raise LookupError("checkout reminders need the planner's settings")
    lead = await session.get(Lead, task.lead_id) if task.lead_id else None
    if lead is None:
        return "no reminder: the lead is gone"
    if lead.state == State.WON:
        return "no reminder: the lead converted"
    if lead.state not in (State.NEW, State.ENGAGING, State.CONVERSING, State.NURTURE):
        return f"no reminder: the lead is {lead.state}"
    url = str(task.payload.get("url") or "")
    settings = context.settings
    checkout = settings.checkout
    product = str(task.payload.get("product") or settings.conversation.product)
    box = context.send.box(None)
    account = await session.get(Account, lead.account_id) if lead.account_id else None
    fields = merge_fields(
        lead, account, settings.sender_names.get(box.name, ""), box.address, product
    )
    try:
        subject = render(checkout.subject, fields)
        body = render(checkout.body, {**fields, "link": url})
    except MissingFields as exc:
        return f"no reminder: the lead has no {exc}"
    row = await outbox.queue(
        session,
        context.send,
        kind=outbox.Kind.NUDGE,
        to=[lead.email],
        subject=subject,
        text=body,
        now=now,
        idempotency_key=f"checkout:{lead.id}:{_link_key(url)}",
        mailbox=box.name,
        lead=lead,
        actor=ACTOR,
    )
    return f"checkout reminder queued (outbound {row.id})"


@dataclass
class _Talks:
    outbound: dict[int, OutboundMessage] = field(default_factory=dict)
    heard: dict[int, datetime] = field(default_factory=dict)
    """Each lead's latest mail of its own (received time)."""


def _cited(insight: Insight) -> list[str]:
    return sorted({c for s in insight.sentences for c in s.get("citations", ())}) or ["nothing"]


def _end(row: CadenceEnrollment, status: str, reason: str, now: datetime) -> None:
    """A plan ends (``stopped`` or ``done``) with its reason."""
    row.status = status
    row.reason = reason
    row.next_at = None
    row.updated_at = now


def _restart(
    row: CadenceEnrollment, plan: str, step_id: str | None, at: datetime, now: datetime
) -> None:
    """Put an enrollment row (new, or left over from an earlier plan) at the
    start of *plan*."""
    row.cadence = plan
    row.status = "active"
    row.next_step_id = step_id
    row.next_at = at
    row.last_step_id = None
    row.last_outbound_id = None
    row.answer_outbound_id = None
    row.reason = None
    row.updated_at = now


# -- preview -----------------------------------------------------------------------


@dataclass
class Preview:
    """What the planner would do next for one lead, without doing it."""

    email: str
    cadence: str | None
    zone: str
    state: str
    status: str
    next_step: str | None = None
    next_at: datetime | None = None
    subject: str | None = None
    body: str | None = None
    missing: list[str] = field(default_factory=list)
    later: list[tuple[str, datetime]] = field(default_factory=list)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "cadence": self.cadence,
            "zone": self.zone,
            "state": self.state,
            "status": self.status,
            "next_step": self.next_step,
            "next_at": self.next_at.isoformat() if self.next_at else None,
            "subject": self.subject,
            "body": self.body,
            "missing_fields": self.missing,
            "later": [{"step": s, "at": at.isoformat()} for s, at in self.later],
            "note": self.note,
        }


async def preview(planner: Planner, session: AsyncSession, lead: Lead, now: datetime) -> Preview:
    """The next touch for *lead* as the planner will make it (template filled,
    time in the lead's zone and window) and the times of the steps after it,
    each assuming the one before goes out on time."""
    settings = planner.settings
    zone = planner.zone_of(lead)
    enrollment = await session.scalar(
        select(CadenceEnrollment).where(CadenceEnrollment.lead_id == lead.id)
    )
    result = Preview(lead.email, None, str(zone), lead.state, "not enrolled")
    if enrollment is None:
        cadence = next((c for c in settings.cadences if matches(c, lead, now)), None)
        if cadence is None:
            result.note = "no cadence's segment matches this lead"
            return result
        cadence_or_talk: Plan = cadence
        step: Step | None = cadence.steps[0]
        at = plan_touch(
            None,
            Delay.parse(cadence.steps[0].delay),
            now,
            zone,
            lead.country,
            settings.window,
            min_gap_business_days=settings.min_gap,
        )
        result.status = "enrolled at the next tick"
    else:
        result.status = enrollment.status
        found = settings.plan(enrollment.cadence)
        if found is None or enrollment.status not in ("active", "waiting"):
            result.cadence = enrollment.cadence
            result.note = enrollment.reason or "no further touch is planned"
            return result
        cadence_or_talk = found
        if enrollment.status == "waiting":
            step = step_after(found, enrollment.last_step_id)
            at = None
            result.note = (
                f"touch {enrollment.last_step_id} is in the outbox; "
                "the next is planned when it goes out"
            )
        else:
            step = next_step(found, enrollment)
            at = max(enrollment.next_at or now, now)
    plan = cadence_or_talk
    result.cadence = plan.name
    if step is None:
        result.note = "the last step has gone out"
        return result
    result.next_step = step.id
    result.next_at = at
    box = planner.send.box(plan.mailbox)
    account = await session.get(Account, lead.account_id) if lead.account_id else None
    fields = merge_fields(
        lead, account, settings.sender_names.get(box.name, ""), box.address, plan.product
    )
    try:
        # A conversation nudge answers in the thread: "Re: " + its subject.
        result.subject = render(step.subject, fields) if isinstance(step, CadenceStep) else None
        body = step.body
        if INSIGHT in MERGE_FIELD_PATTERN.findall(body) and isinstance(step, CadenceStep):
            angle = step.angle or "value"
            body = with_insight(body, f"[{angle}: cited sentences from knowledge, at send time]")
        result.body = render(body, fields)
    except MissingFields as exc:
        result.missing = exc.names
    previous = at
    following = step_after(plan, step.id)
    while following is not None and previous is not None:
        previous = plan_touch(
            previous,
            Delay.parse(following.delay),
            previous,
            zone,
            lead.country,
            settings.window,
            min_gap_business_days=settings.min_gap,
        )
        result.later.append((following.id, previous))
        following = step_after(plan, following.id)
    return result
