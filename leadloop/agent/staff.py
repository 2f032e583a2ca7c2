"""Sellers and supervisors in the loop (DESIGN.md, "Who hears about it").

- **Escalations** are rows (open, reminded, resolved): the lead is paused,
  the supervisors get a mail with the reason, the conversation, a summary,
  the held draft if there is one, suggested actions and a single-use command
  token; an open one is mailed again after ``[handoff]
  reminder_business_hours``.
- **Hand-off**: a qualified lead goes to a seller (its owner, else the team
  in turn, skipping those away) with the evidence; by default the lead gets a
  warm introduction with the seller in CC.
- **Disqualification notes** go to the supervisors; **owner notices** (a
  lead handed back, an invalid address) to the lead's owner.

Every mail is a staff notice in the outbox (plain text, ``Auto-Submitted``),
written in the same transaction as the state change it reports.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import due, outbox
from leadloop.agent.lifecycle import State, can_transition, create_lead, transition
from leadloop.agent.notices import (
    LeadCard,
    Turn,
    disqualified_mail,
    escalation_mail,
    handoff_mail,
    owner_mail,
)
from leadloop.agent.sendtime import SendWindow, add_business_hours
from leadloop.config import HandoffConfig, IcpCriterion, LoadedConfig
from leadloop.mail import compose
from leadloop.policy.qualify import (
    BantFit,
    Fit,
    Interest,
    bant_fitment,
    icp_fit,
    pick_seller,
    purchase_interest,
)
from leadloop.storage import repo
from leadloop.storage.models import (
    Account,
    Escalation,
    Event,
    InboundMessage,
    Lead,
    OutboundMessage,
    ScheduledTask,
)

log = logging.getLogger("leadloop.agent.staff")
COMMAND_TTL = timedelta(days=30)
REMIND_TASK = "escalation.remind"
BUYER_KINDS = ("reply", "new_inbound")
LEAD_MAIL = ("touch", "reply", "nudge", "intro")
HARD_FAILURES = (
    "price ",
    "percentage ",
    "link ",
    "offers ",
    "carries a conversation marker",
    "contains another lead",
)
"""Guardrail failures a supervisor may not wave through with APPROVE."""


@dataclass
class Staff:
    """What staff mail needs: the outbox, the routing rules, office hours."""

    send: outbox.OutboxSettings
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    icp: Sequence[IcpCriterion] = ()
    staff_addresses: frozenset[str] = frozenset()
    window: SendWindow = field(default_factory=SendWindow)
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    authserv_id: str | None = None
    """Whose Authentication-Results to believe (a referral's DMARC)."""

    @classmethod
    def from_config(cls, loaded: LoadedConfig, send: outbox.OutboxSettings) -> Staff:
        settings = loaded.settings
        return cls(
            send=send,
            handoff=settings.handoff,
            icp=list(settings.icp.criteria),
            staff_addresses=frozenset(a.lower() for a in settings.staff.addresses),
            window=SendWindow.parse(
                settings.sending.days, settings.sending.hours, settings.sending.skip_holidays
            ),
            zone=ZoneInfo(settings.sending.default_timezone),
            authserv_id=settings.identity.authserv_id,
        )

    def supervisors(self, lead: Lead) -> list[str]:
        """Who hears of escalations and disqualifications: the configured
        supervisors, else the lead's owner, else the staff addresses."""
        if self.handoff.supervisors:
            return list(self.handoff.supervisors)
        if lead.owner:
            return [lead.owner.lower()]
        return sorted(self.staff_addresses)

    def owner_of(self, lead: Lead) -> list[str]:
        return [lead.owner.lower()] if lead.owner else self.supervisors(lead)

    def token(self, subject: str, now: datetime) -> str:
        """A single-use command token for *subject* (``e12``: escalation 12,
        ``l7``: lead 7), valid for 30 days."""
        return self.send.keys.make(
            "command", f"{subject}-{secrets.token_hex(4)}", expires=now + COMMAND_TTL
        )

    def team(self) -> set[str]:
        return {*self.handoff.sellers, *self.handoff.supervisors, *self.staff_addresses}


# -- what we know of a lead ---------------------------------------------------


async def card(session: AsyncSession, lead: Lead) -> LeadCard:
    account = await session.get(Account, lead.account_id) if lead.account_id else None
    name = " ".join(p for p in (lead.first_name, lead.last_name) if p) or lead.email
    return LeadCard(
        email=lead.email,
        name=name,
        title=lead.title,
        company=lead.company or (account.name if account else None),
        industry=account.industry if account else None,
        size=account.size if account else None,
        country=lead.country,
        owner=lead.owner,
        state=lead.state,
    )


async def turns_of(session: AsyncSession, lead: Lead) -> list[Turn]:
    """The conversation, oldest first: the buyer's mails (with the intent
    read in each) and ours."""
    turns: list[Turn] = []
    inbound = await session.scalars(
        select(InboundMessage)
        .where(InboundMessage.lead_id == lead.id, InboundMessage.kind.in_(BUYER_KINDS))
        .order_by(InboundMessage.received_at, InboundMessage.id)
    )
    for mail in inbound:
        result = mail.result or {}
        turns.append(
            Turn(
                at=mail.received_at,
                by_buyer=True,
                text=str(result.get("visible_text") or ""),
                intent=result.get("intent"),
                subject=mail.subject or "",
            )
        )
    outbound = await session.scalars(
        select(OutboundMessage)
        .where(OutboundMessage.lead_id == lead.id, OutboundMessage.kind.in_(LEAD_MAIL))
        .order_by(OutboundMessage.created_at, OutboundMessage.id)
    )
    for ours in outbound:
        turns.append(
            Turn(
                at=ours.sent_at or ours.created_at,
                by_buyer=False,
                text=str((ours.payload or {}).get("text", "")),
                subject=ours.subject or "",
            )
        )
    turns.sort(key=lambda t: (t.at is None, t.at))
    return turns


@dataclass(frozen=True)
class Evidence:
    fit: Fit
    bant: BantFit
    interest: Interest


async def evidence(
    session: AsyncSession,
    lead: Lead,
    criteria: Sequence[IcpCriterion],
) -> Evidence:
    """ICP fit, BANT over the whole conversation (every recorded
    understanding, the reply being decided included) and purchase interest."""
    rows = (
        await session.execute(
            select(Event.data, Event.inbound_id, InboundMessage.received_at)
            .join(InboundMessage, InboundMessage.id == Event.inbound_id, isouter=True)
            .where(Event.lead_id == lead.id, Event.kind == "lead.understood")
            .order_by(Event.id)
        )
    ).all()
    understood: list[tuple[datetime | None, int | None, dict[str, Any]]] = [
        (at, inbound_id, data or {}) for data, inbound_id, at in rows
    ]
    account = await session.get(Account, lead.account_id) if lead.account_id else None
    lead_fields = {
        "country": lead.country,
        "title": lead.title,
        "source": lead.source,
        "rating": lead.rating,
        "custom": lead.custom or {},
    }
    account_fields = (
        {"industry": account.industry, "size": account.size, "custom": account.custom or {}}
        if account
        else None
    )
    return Evidence(
        fit=icp_fit(lead_fields, account_fields, criteria),
        bant=bant_fitment((at, i, data.get("bant") or {}) for at, i, data in understood),
        interest=purchase_interest(data for _, _, data in understood),
    )


# -- escalations --------------------------------------------------------------


def is_hard(failures: Sequence[str]) -> bool:
    """Whether a guardrail failure is one APPROVE may not wave through."""
    return any(f.startswith(HARD_FAILURES) for f in failures)


async def escalate(
    session: AsyncSession,
    staff: Staff,
    lead: Lead,
    *,
    condition: str,
    reasons: Sequence[str],
    now: datetime,
    actor: str,
    inbound_id: int | None = None,
    draft: str | None = None,
    hard: bool = False,
) -> Escalation:
    """Pause *lead*, open an escalation and mail the supervisors."""
    reason = f"escalated: {condition}"
    if can_transition(lead, State.PAUSED):
        await transition(session, lead, State.PAUSED, actor=actor, reason=reason, now=now)
    supervisors = staff.supervisors(lead)
    remind_at = add_business_hours(
        now, staff.handoff.reminder_business_hours, staff.zone, None, staff.window
    )
    row = Escalation(
        lead_id=lead.id,
        inbound_id=inbound_id,
        condition=condition,
        reasons=list(reasons),
        status="open",
        supervisors=supervisors,
        draft=draft,
        draft_hard=hard,
        opened_at=now,
        remind_at=remind_at,
    )
    session.add(row)
    await session.flush()
    repo.add_event(
        session,
        "lead.escalated",
        actor=actor,
        now=now,
        lead_id=lead.id,
        inbound_id=inbound_id,
        reasons=[reason, *reasons],
        data={
            "condition": condition,
            "failures": list(reasons),
            "owner": lead.owner,
            "escalation": row.id,
            "supervisors": supervisors,
        },
    )
    await _mail_escalation(session, staff, row, lead, now, reminder=False)
    await repo.schedule(
        session,
        REMIND_TASK,
        remind_at,
        now=now,
        lead_id=lead.id,
        payload={"escalation": row.id},
        dedupe_key=f"escalation:{row.id}:remind",
    )
    return row


async def _mail_escalation(
    session: AsyncSession,
    staff: Staff,
    row: Escalation,
    lead: Lead,
    now: datetime,
    *,
    reminder: bool,
) -> None:
    if not row.supervisors:
        log.warning("escalation %d of lead %s: nobody to tell (no supervisors, owner or staff)",
                    row.id, lead.email)  # fmt: skip
        return
    mail = escalation_mail(
        await card(session, lead),
        number=row.id,
        condition=row.condition,
        reasons=row.reasons,
        turns=await turns_of(session, lead),
        draft=row.draft,
        hard=row.draft_hard,
        token=staff.token(f"e{row.id}", now),
        reminder=reminder,
    )
    await outbox.queue_notice(
        session,
        staff.send,
        to=row.supervisors,
        subject=mail.subject,
        text=mail.text,
        now=now,
        idempotency_key=f"escalation:{row.id}:{'reminder' if reminder else 'opened'}",
        lead=lead,
    )


@due.handler(REMIND_TASK)
async def remind(session: AsyncSession, task: ScheduledTask, now: datetime, context: Any) -> str:
    """An escalation still open after its business hours is mailed again."""
    row = await session.get(Escalation, task.payload.get("escalation"), with_for_update=True)
    if row is None or row.status != "open":
        return "the escalation is no longer open"
    staff = getattr(context, "staff", None)
    lead = await session.get(Lead, row.lead_id)
    if staff is None or lead is None:
        return "nobody to remind"
    await _mail_escalation(session, staff, row, lead, now, reminder=True)
    row.status = "reminded"
    row.reminded_at = now
    repo.add_event(
        session,
        "escalation.reminded",
        actor="scheduler",
        now=now,
        lead_id=lead.id,
        reasons=[f"escalation #{row.id} open since {row.opened_at:%Y-%m-%d %H:%M}"],
        data={"escalation": row.id, "supervisors": row.supervisors},
    )
    return f"escalation #{row.id} reminded"


async def resolve(
    session: AsyncSession, row: Escalation, *, by: str, resolution: str, now: datetime
) -> None:
    if row.status == "resolved":
        return
    row.status = "resolved"
    row.resolved_at = now
    row.resolved_by = by
    row.resolution = resolution
    repo.add_event(
        session,
        "escalation.resolved",
        actor=by,
        now=now,
        lead_id=row.lead_id,
        reasons=[resolution],
        data={"escalation": row.id},
    )


async def open_escalations(session: AsyncSession, lead: Lead) -> list[Escalation]:
    found = await session.scalars(
        select(Escalation)
        .where(Escalation.lead_id == lead.id, Escalation.status != "resolved")
        .order_by(Escalation.id)
    )
    return list(found)


# -- hand-off, disqualification, owner notices --------------------------------


@dataclass(frozen=True)
class Intro:
    """The warm introduction's text and where it answers."""

    text: str
    subject: str
    mailbox: str | None = None
    thread_id: int | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()


async def next_seller(session: AsyncSession, staff: Staff, lead: Lead) -> str | None:
    """Who gets *lead* if it is qualified now: its owner, else the team in turn."""
    turn = await session.scalar(
        select(func.count()).select_from(Event).where(Event.kind == "lead.handed_off")
    )
    return pick_seller(lead.owner, staff.handoff, int(turn or 0))


async def hand_to_seller(
    session: AsyncSession,
    staff: Staff,
    lead: Lead,
    *,
    reasons: Sequence[str],
    now: datetime,
    actor: str,
    intro: Intro | None,
    inbound_id: int | None = None,
    proof: Evidence | None = None,
) -> str:
    """``qualified``: a seller gets the lead with the evidence; the lead gets
    a warm introduction with the seller in CC (when *intro* is given)."""
    seller = await next_seller(session, staff, lead)
    proof = proof or await evidence(session, lead, staff.icp)
    if not can_transition(lead, State.QUALIFIED):
        return f"not qualified: the lead is {lead.state}"
    await transition(
        session, lead, State.QUALIFIED, actor=actor, reason="; ".join(reasons[-1:]), now=now
    )
    if seller is None:
        await escalate(
            session,
            staff,
            lead,
            condition="no_seller",
            reasons=[*reasons, "qualified, but no owner and no seller in [handoff] sellers"],
            now=now,
            actor=actor,
            inbound_id=inbound_id,
        )
        return "qualified; no seller to hand it to: escalated"
    if not lead.owner or lead.owner.lower() != seller:
        lead.owner = seller
    intro_row = None
    if intro is not None and staff.handoff.warm_intro:
        intro_row = await outbox.queue(
            session,
            staff.send,
            kind=outbox.Kind.INTRO,
            to=[lead.email],
            cc=[seller],
            subject=intro.subject,
            text=intro.text,
            now=now,
            idempotency_key=f"intro:{lead.id}",
            mailbox=intro.mailbox,
            lead=lead,
            thread_id=intro.thread_id,
            in_reply_to=intro.in_reply_to,
            references=intro.references,
        )
    await send_handoff(
        session,
        staff,
        lead,
        seller=seller,
        reasons=reasons,
        intro_sent=intro_row is not None,
        now=now,
        key=f"handoff:{lead.id}:{seller}",
        proof=proof,
    )
    repo.add_event(
        session,
        "lead.handed_off",
        actor=actor,
        now=now,
        lead_id=lead.id,
        inbound_id=inbound_id,
        reasons=list(reasons),
        data={
            "seller": seller,
            "intro_outbound": intro_row.id if intro_row else None,
            "fit": {"band": proof.fit.band, "score": proof.fit.score},
            "bant": {"level": proof.bant.level, "met": proof.bant.met},
            "interest": proof.interest.level,
        },
    )
    return f"qualified: handed to {seller}" + (" with a warm introduction" if intro_row else "")


async def send_handoff(
    session: AsyncSession,
    staff: Staff,
    lead: Lead,
    *,
    seller: str,
    reasons: Sequence[str],
    intro_sent: bool,
    now: datetime,
    key: str,
    proof: Evidence | None = None,
) -> None:
    """The hand-off mail to *seller*: the lead, its fit, BANT with the
    evidence, interest, a dated summary and the thread, and commands."""
    proof = proof or await evidence(session, lead, staff.icp)
    mail = handoff_mail(
        await card(session, lead),
        seller=seller,
        fit=proof.fit,
        bant=proof.bant,
        interest=proof.interest,
        turns=await turns_of(session, lead),
        reasons=reasons,
        intro_sent=intro_sent,
        token=staff.token(f"l{lead.id}", now),
    )
    await outbox.queue_notice(
        session,
        staff.send,
        to=[seller],
        subject=mail.subject,
        text=mail.text,
        now=now,
        idempotency_key=key,
        lead=lead,
    )


async def disqualify(
    session: AsyncSession,
    staff: Staff,
    lead: Lead,
    *,
    reasons: Sequence[str],
    now: datetime,
    actor: str,
    inbound_id: int | None = None,
) -> str:
    """``disqualified``: the supervisors get a note with the reasons."""
    if can_transition(lead, State.DISQUALIFIED):
        await transition(
            session, lead, State.DISQUALIFIED, actor=actor, reason="; ".join(reasons), now=now
        )
    elif lead.state != State.DISQUALIFIED:
        return f"not disqualified: the lead is {lead.state}"
    to = staff.supervisors(lead)
    if to:
        mail = disqualified_mail(
            await card(session, lead), reasons=reasons, turns=await turns_of(session, lead)
        )
        await outbox.queue_notice(
            session,
            staff.send,
            to=to,
            subject=mail.subject,
            text=mail.text,
            now=now,
            idempotency_key=f"disqualified:{lead.id}",
            lead=lead,
        )
    repo.add_event(
        session,
        "lead.disqualified",
        actor=actor,
        now=now,
        lead_id=lead.id,
        inbound_id=inbound_id,
        reasons=list(reasons),
        data={"supervisors": to},
    )
    return "disqualified; the supervisors have the note" if to else "disqualified"


async def notify_owner(
    session: AsyncSession,
    staff: Staff,
    lead: Lead,
    *,
    reasons: Sequence[str],
    now: datetime,
    key: str,
    headline: str | None = None,
) -> bool:
    """Mail the lead's owner (else the supervisors) that the lead is theirs,
    or (*headline*) what they should know of it."""
    to = staff.owner_of(lead)
    if not to:
        return False
    mail = owner_mail(
        await card(session, lead),
        state=lead.state,
        reasons=reasons,
        turns=await turns_of(session, lead),
        headline=headline,
    )
    await outbox.queue_notice(
        session,
        staff.send,
        to=to,
        subject=mail.subject,
        text=mail.text,
        now=now,
        idempotency_key=key,
        lead=lead,
    )
    return True


@dataclass(frozen=True)
class Referred:
    """What became of one contact a buyer referred us to."""

    email: str
    lead_id: int
    created: bool
    thread: bool
    why: str


async def record_referral(
    session: AsyncSession,
    staff: Staff,
    referrer: Lead,
    *,
    name: str | None,
    email: str,
    trusted: bool,
    inbound: InboundMessage,
    now: datetime,
    actor: str,
) -> Referred:
    """Create (or link) the referred contact at the referrer's account, with
    where it came from.  A new thread may be started only when the address is
    in the account's own domain and the referring mail passed DMARC; any
    other referred contact is kept for the owner and never mailed
    automatically (recorded without consent)."""
    address = email.strip().lower()
    account = await session.get(Account, referrer.account_id) if referrer.account_id else None
    domain = address.rsplit("@", 1)[-1]
    own_domain = referrer.email.rsplit("@", 1)[-1].lower()
    same = domain == (account.domain if account else own_domain)
    thread = same and trusted
    why = (
        "in the account's domain and the referring mail passed DMARC: a new thread may start"
        if thread
        else "kept for the owner: "
        + ("not in the account's domain" if not same else "the referring mail did not pass DMARC")
    )
    existing = await session.scalar(select(Lead).where(Lead.email == address))
    provenance = {
        "referred_by": referrer.email,
        "referred_in": inbound.id,
        "referred_at": now.isoformat(),
    }
    if existing is not None:
        existing.custom = {**(existing.custom or {}), "referrals": [
            *((existing.custom or {}).get("referrals") or []), provenance]}  # fmt: skip
        found, created = existing, False
    else:
        first, _, last = (name or "").strip().partition(" ")
        found = Lead(
            email=address,
            first_name=first or None,
            last_name=last or None,
            company=referrer.company,
            account_id=account.id if account and same else None,
            country=referrer.country,
            timezone=referrer.timezone,
            source="referral",
            owner=referrer.owner,
            consent="unknown" if thread else "denied",
            custom=provenance,
        )
        await create_lead(
            session,
            found,
            actor=actor,
            reason=f"referred by {referrer.email} (inbound {inbound.id}); {why}",
            now=now,
        )
        created = True
    repo.add_event(
        session,
        "lead.referred",
        actor=actor,
        now=now,
        lead_id=found.id,
        inbound_id=inbound.id,
        reasons=[f"referred by {referrer.email}: {why}"],
        data={**provenance, "created": created, "thread": thread and created},
    )
    return Referred(address, found.id, created, thread and created, why)


def intro_for(
    *,
    text: str,
    inbound: InboundMessage | None,
    subject: str,
    mailbox: str | None,
) -> Intro:
    """The introduction answers the buyer's latest mail when there is one."""
    if inbound is None:
        return Intro(text=text, subject=subject, mailbox=mailbox)
    chain = " ".join((inbound.headers or {}).get("references", [])).split()
    parent = (inbound.message_id or "").strip()
    references = compose.references_for(parent, chain)
    return Intro(
        text=text,
        subject=compose.reply_subject(inbound.subject),
        mailbox=mailbox,
        thread_id=inbound.thread_id,
        in_reply_to=parent if references and references[-1] == parent else None,
        references=references,
    )
