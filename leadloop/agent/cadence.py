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

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import outbox
from leadloop.agent.lifecycle import State, can_transition, transition
from leadloop.agent.sendtime import (
    Delay,
    SendWindow,
    add_delay,
    lead_zone,
    next_window_start,
    plan_touch,
)
from leadloop.config import MERGE_FIELD_PATTERN, CadenceConfig, CadenceStep, LoadedConfig
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import Account, CadenceEnrollment, Event, Lead, OutboundMessage

log = logging.getLogger("leadloop.agent.cadence")
ACTOR = "cadence"
OOO_DEFAULT = timedelta(days=7)  # an out-of-office reply without a return date
MISSING_FIELD_WAIT = timedelta(days=1)
DUE_CHUNK = 100  # due touches per transaction
NOT_SENT = frozenset(
    {
        outbox.Status.SKIPPED,
        outbox.Status.FAILED,
        outbox.Status.REJECTED,
        outbox.Status.CANCELLED,
    }
)


@dataclass(frozen=True)
class CadenceSettings:
    cadences: tuple[CadenceConfig, ...]
    window: SendWindow
    default_zone: str
    min_gap: int
    batch: int
    sender_names: dict[str, str]

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
        )

    def cadence(self, name: str) -> CadenceConfig | None:
        return next((c for c in self.cadences if c.name == name), None)


@dataclass
class TickResult:
    enrolled: int = 0
    queued: int = 0
    stopped: int = 0
    lost: int = 0
    waiting: int = 0


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


def step_after(cadence: CadenceConfig, step_id: str | None) -> CadenceStep | None:
    """The step after *step_id* in the current order (the first when None).

    When *step_id* was removed from the config its place is unknown, so this
    starts again from the first step: a step the lead already had is never
    sent twice (its idempotency key finds the mail already sent, and the
    planner moves straight on), so the lead walks to the first step it has
    not had."""
    ids = [s.id for s in cadence.steps]
    if step_id is None or step_id not in ids:
        return cadence.steps[0]
    index = ids.index(step_id) + 1
    return cadence.steps[index] if index < len(ids) else None


def next_step(cadence: CadenceConfig, enrollment: CadenceEnrollment) -> CadenceStep | None:
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
    def __init__(self, db: Database, settings: CadenceSettings, send: outbox.OutboxSettings):
        self.db = db
        self.settings = settings
        self.send = send

    def zone_of(self, lead: Lead) -> ZoneInfo:
        return lead_zone(lead.timezone, lead.country, self.settings.default_zone)

    async def tick(self, now: datetime) -> TickResult:
        result = TickResult()
        if not self.settings.cadences:
            return result
        async with self.db.transaction() as session:
            await self._enroll(session, now, result)
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
                    cadence = self.settings.cadence(enrollment.cadence)
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

    # -- 1. enroll ----------------------------------------------------------------
    async def _enroll(self, session: AsyncSession, now: datetime, result: TickResult) -> None:
        enrolled = exists().where(CadenceEnrollment.lead_id == Lead.id)
        for cadence in self.settings.cadences:  # by priority: a lead joins the first
            segment = cadence.segment
            # The segment in SQL, so leads no cadence wants are never read
            # again and again (custom fields are checked in Python).
            query = select(Lead).where(Lead.state.in_(segment.states), ~enrolled)
            if segment.sources:
                query = query.where(Lead.source.in_(segment.sources))
            if segment.ratings:
                query = query.where(Lead.rating.in_(segment.ratings))
            if segment.countries:
                lowered = [c.lower() for c in segment.countries]
                query = query.where(func.lower(Lead.country).in_(lowered))
            if segment.created_within is not None:
                query = query.where(Lead.created_at >= now - segment.created_within)
            leads = (
                await session.scalars(
                    query.order_by(Lead.hand_raiser.desc(), Lead.id).limit(self.settings.batch)
                )
            ).all()
            for lead in leads:
                if matches(cadence, lead, now):
                    self._enroll_one(session, cadence, lead, now, result)
            await session.flush()

    def _enroll_one(
        self,
        session: AsyncSession,
        cadence: CadenceConfig,
        lead: Lead,
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
        session.add(
            CadenceEnrollment(
                lead_id=lead.id,
                cadence=cadence.name,
                status="active",
                next_step_id=first.id,
                next_at=at,
                created_at=now,
                updated_at=now,
            )
        )
        repo.add_event(
            session,
            "cadence.enrolled",
            actor=ACTOR,
            now=now,
            lead_id=lead.id,
            reasons=[f"matches cadence {cadence.name}; first touch at {at.isoformat()}"],
        )
        result.enrolled += 1

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
            cadence = self.settings.cadence(enrollment.cadence)
            following = step_after(cadence, enrollment.last_step_id) if cadence else None
            zone = self.zone_of(lead)
            if cadence is None:
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
                    row.sent_at,
                    Delay.parse(cadence.lost_after),
                    zone,
                    lead.country,
                    self.settings.window,
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
        touches: list[tuple[CadenceEnrollment, str, outbox.Draft]] = []
        with session.no_autoflush:
            for enrollment, lead in rows:
                await self._due_one(
                    session, enrollment, lead, away.get(lead.id), now, result, touches
                )
        if not touches:
            return len(rows)
        # The chunk's touches in one go; the sender makes their bytes.
        queued = await outbox.queue_many(
            session, self.send, [d for _, _, d in touches], now=now, actor=ACTOR, render=False
        )
        for (enrollment, step_id, _), row in zip(touches, queued, strict=True):
            enrollment.status = "waiting"
            enrollment.last_step_id = step_id
            enrollment.next_step_id = None
            enrollment.last_outbound_id = row.id
            enrollment.reason = None
            enrollment.updated_at = now
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

    async def _due_one(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        lead: Lead,
        away: list[Event] | None,
        now: datetime,
        result: TickResult,
        touches: list[tuple[CadenceEnrollment, str, outbox.Draft]],
    ) -> None:
        if lead.state not in (State.NEW, State.ENGAGING):
            why = "a human replied" if lead.state == State.CONVERSING else f"lead is {lead.state}"
            self._stop(session, enrollment, why, now, result)
        elif await self._out_of_office(session, enrollment, lead, away or [], now):
            return
        elif enrollment.status == "ending":
            await self._lose(session, enrollment, lead, now, result)
        elif self.settings.cadence(enrollment.cadence) is None:
            self._stop(session, enrollment, "its cadence was removed", now, result)
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
        box = self.send.box(cadence.mailbox)
        account = await session.get(Account, lead.account_id) if lead.account_id else None
        fields = merge_fields(
            lead,
            account,
            self.settings.sender_names.get(box.name, ""),
            box.address,
            cadence.product,
        )
        try:
            subject = render(step.subject, fields)
            body = render(step.body, fields)
        except MissingFields as exc:
            enrollment.next_at = now + MISSING_FIELD_WAIT
            enrollment.updated_at = now
            reason = f"step {step.id} waits: the lead has no {exc}"
            if enrollment.reason != reason:
                enrollment.reason = reason
                repo.add_event(
                    session,
                    "cadence.missing_field",
                    actor=ACTOR,
                    now=now,
                    lead_id=lead.id,
                    reasons=[reason],
                    data={"owner": lead.owner, "fields": exc.names, "step": step.id},
                )
            return
        draft = outbox.Draft(
            kind=outbox.Kind.TOUCH,
            to=[lead.email],
            subject=subject,
            text=body,
            idempotency_key=f"cadence:{lead.id}:{step.id}",
            mailbox=box.name,
            lead=lead,
        )
        touches.append((enrollment, step.id, draft))

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
        enrollment.status = "done"
        enrollment.reason = reason
        enrollment.next_at = None
        enrollment.updated_at = now

    def _stop(
        self,
        session: AsyncSession,
        enrollment: CadenceEnrollment,
        reason: str,
        now: datetime,
        result: TickResult,
    ) -> None:
        enrollment.status = "stopped"
        enrollment.reason = reason
        enrollment.next_at = None
        enrollment.updated_at = now
        repo.add_event(
            session,
            "cadence.stopped",
            actor=ACTOR,
            now=now,
            lead_id=enrollment.lead_id,
            reasons=[reason],
        )
        result.stopped += 1


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
        step: CadenceStep | None = cadence.steps[0]
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
        found = settings.cadence(enrollment.cadence)
        if found is None or enrollment.status not in ("active", "waiting"):
            result.cadence = enrollment.cadence
            result.note = enrollment.reason or "no further touch is planned"
            return result
        cadence = found
        if enrollment.status == "waiting":
            step = step_after(cadence, enrollment.last_step_id)
            at = None
            result.note = (
                f"touch {enrollment.last_step_id} is in the outbox; "
                "the next is planned when it goes out"
            )
        else:
            step = next_step(cadence, enrollment)
            at = max(enrollment.next_at or now, now)
    result.cadence = cadence.name
    if step is None:
        result.note = "the last step has gone out"
        return result
    result.next_step = step.id
    result.next_at = at
    box = planner.send.box(cadence.mailbox)
    account = await session.get(Account, lead.account_id) if lead.account_id else None
    fields = merge_fields(
        lead, account, settings.sender_names.get(box.name, ""), box.address, cadence.product
    )
    try:
        result.subject = render(step.subject, fields)
        result.body = render(step.body, fields)
    except MissingFields as exc:
        result.missing = exc.names
    previous = at
    following = step_after(cadence, step.id)
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
        following = step_after(cadence, following.id)
    return result
