"""Research mode: the agent drafts, sellers decide and send (seeds 001, 003).

In ``research`` mode (``[research] mode``, or a cadence's ``mode``) no mail
the agent writes ever goes to a lead.  Everything else runs as in
``engage`` mode (understanding, policy, the grounded writer and its
guardrails), and the outbox turns each mail meant for a lead into a draft
for the lead's seller as it is queued (:func:`divert`), so no code path can
forget the mode:

- the seller has a ``[[sellers]]`` entry with a ``mailbox``: the draft is
  filed in that mailbox's Drafts folder (IMAP APPEND with ``\\Draft``),
  addressed to the lead and threaded, ready to send from their own client
  (outbound kind ``filed``, never given to SMTP);
- otherwise it is mailed to the seller (kind ``draft``): the draft's
  recipient, subject and text, marked as a draft, with ``Auto-Submitted``.

The seller is the lead's owner; a lead without one is given a seller first
(``[handoff] sellers`` in turn, else the supervisors), recorded as an event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.storage import repo
from leadloop.storage.models import CadenceEnrollment, Lead

if TYPE_CHECKING:
    from leadloop.agent.outbox import Draft
    from leadloop.agent.staff import Staff
    from leadloop.config import LoadedConfig

ACTOR = "agent:research"
RESEARCH = "research"


@dataclass(frozen=True)
class Desk:
    """Where a seller's drafts go when they have a mailbox of their own."""

    mailbox: str
    folder: str


@dataclass(frozen=True)
class Drafting:
    """The modes and the sellers' desks, from the config."""

    mode: str = "engage"
    cadence_modes: Mapping[str, str] = field(default_factory=dict)
    desks: Mapping[str, Desk] = field(default_factory=dict)
    team: tuple[str, ...] = ()
    """``[handoff] sellers`` not away: who gets a lead without an owner."""
    supervisors: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> Drafting:
        s = loaded.settings
        away = set(s.handoff.away)
        return cls(
            mode=s.research.mode,
            cadence_modes={c.name: c.mode for c in s.cadences if c.mode is not None},
            desks={
                seller.address: Desk(seller.mailbox, seller.drafts_folder)
                for seller in s.sellers
                if seller.mailbox is not None
            },
            team=tuple(a for a in s.handoff.sellers if a not in away),
            supervisors=tuple(s.handoff.supervisors),
        )

    @property
    def anywhere(self) -> bool:
        """Whether any lead can be in research mode (else nothing is looked up)."""
        return self.mode == RESEARCH or RESEARCH in self.cadence_modes.values()

    def mode_of(self, cadence: str | None) -> str:
        """A lead's mode: its cadence's, else the global one (the quiet-
        conversation plan and leads in no cadence follow the global mode)."""
        return self.cadence_modes.get(cadence or "", self.mode)


async def modes_of(session: AsyncSession, drafting: Drafting, lead_ids: set[int]) -> dict[int, str]:
    """Each lead's mode, from the cadence it is (or was last) enrolled in."""
    if not drafting.anywhere or not lead_ids:
        return dict.fromkeys(lead_ids, drafting.mode)
    cadences = dict(
        (
            await session.execute(
                select(CadenceEnrollment.lead_id, CadenceEnrollment.cadence).where(
                    CadenceEnrollment.lead_id.in_(lead_ids)
                )
            )
        ).all()
    )
    return {id_: drafting.mode_of(cadences.get(id_)) for id_ in lead_ids}


async def seller_of(session: AsyncSession, drafting: Drafting, lead: Lead, now: datetime) -> str:
    """The lead's seller, giving it one (recorded) when it has no owner."""
    if lead.owner:
        return lead.owner
    pool = drafting.team or drafting.supervisors
    if not pool:
        raise LookupError(
            "research mode needs a seller for the draft: the lead has no owner and "
            "neither [handoff] sellers nor supervisors are configured"
        )
    # In turn by lead id: stable across restarts and daemons, spread evenly.
    seller = pool[lead.id % len(pool)]
    lead.owner = seller
    lead.updated_at = now
    repo.add_event(
        session,
        "lead.assigned",
        actor=ACTOR,
        now=now,
        lead_id=lead.id,
        reasons=[f"research mode: drafts for this lead go to {seller}"],
    )
    return seller


async def route(
    session: AsyncSession, drafting: Drafting, staff: Staff | None, lead: Lead, now: datetime
) -> str | None:
    """Seed 001's routing of a research-mode lead: ICP fit low ->
    ``disqualified`` and the supervisors told; otherwise its seller (see
    :func:`seller_of`).  None when the lead has its seller, else why not."""
    from leadloop.agent.lifecycle import State, can_transition, transition
    from leadloop.agent.staff import disqualify, evidence

    fit = (await evidence(session, lead, staff.icp if staff is not None else ())).fit
    if fit.band == "low":
        reasons = ["research mode: ICP fit low", fit.reason]
        if staff is not None:
            await disqualify(session, staff, lead, reasons=reasons, now=now, actor=ACTOR)
        elif can_transition(lead, State.DISQUALIFIED):
            await transition(
                session, lead, State.DISQUALIFIED, actor=ACTOR, reason=fit.reason, now=now
            )
        return "; ".join(reasons)
    try:
        await seller_of(session, drafting, lead, now)
    except LookupError as exc:
        repo.add_event(session, "research.skipped", actor=ACTOR, now=now, lead_id=lead.id,
                       reasons=[str(exc)])  # fmt: skip
        return str(exc)
    return None


def draft_text(draft: Draft, lead: Lead, why: str) -> str:
    """The mail to a seller without a mailbox of their own: the draft, marked."""
    name = " ".join(p for p in (lead.first_name, lead.last_name) if p)
    to = f"{name} <{lead.email}>" if name else lead.email
    lines = [
        "leadloop drafted this mail for you to review, edit and send from your own",
        "mailbox. Research mode: nothing was sent to the lead.",
        "",
        f"To:      {to}",
        f"Subject: {draft.subject}",
    ]
    if draft.in_reply_to:
        lines.append(f"In reply to: {draft.in_reply_to}")
    lines += [f"Why:     {why}", "", "----- draft -----", draft.text.rstrip(), "----- end -----"]
    return "\n".join(lines) + "\n"


async def divert(
    session: AsyncSession,
    drafting: Drafting,
    drafts: Sequence[Draft],
    now: datetime,
) -> list[Draft]:
    """*drafts* with every mail for a research-mode lead turned into a draft
    for its seller (see the module docstring); the rest unchanged."""
    from leadloop.agent.outbox import LEAD_KINDS, Draft, Kind

    targets = {d.lead.id for d in drafts if d.lead is not None and Kind(d.kind) in LEAD_KINDS}
    if not drafting.anywhere or not targets:
        return list(drafts)
    modes = await modes_of(session, drafting, targets)
    out: list[Draft] = []
    for d in drafts:
        lead = d.lead
        if lead is None or Kind(d.kind) not in LEAD_KINDS or modes.get(lead.id) != RESEARCH:
            out.append(d)
            continue
        seller = await seller_of(session, drafting, lead, now)
        why = _why(str(Kind(d.kind)))
        desk = drafting.desks.get(seller)
        if desk is not None:
            # Addressed to the lead only (a draft's CC would be the seller's
            # choice), filed in the seller's own mailbox.
            filed = replace(
                d, kind=Kind.FILED, to=[lead.email], cc=(), mailbox=desk.mailbox, seller=seller
            )
            out.append(filed)
        else:
            out.append(
                Draft(
                    kind=Kind.DRAFT,
                    to=[seller],
                    subject=f"Draft for {lead.email}: {d.subject}",
                    text=draft_text(d, lead, why),
                    idempotency_key=d.idempotency_key,
                    mailbox=d.mailbox,
                    lead=lead,
                    thread_id=d.thread_id,
                    attachments=d.attachments,
                    not_before=d.not_before,
                    seller=seller,
                )
            )
    return out


_WHY = {
    "touch": "initial outreach (no conversation with the lead yet)",
    "reply": "the lead wrote; this answers it",
    "nudge": "the lead has been quiet since the last answer",
    "intro": "introducing you to the lead",
}


def _why(kind: str) -> str:
    return _WHY.get(kind, "a mail the agent would have sent")


async def outreach_blockers(session: AsyncSession, lead: Lead, now: datetime) -> list[str]:
    """Why seed 003 allows no initial-outreach draft for *lead* (empty: it does)."""
    from leadloop.research.actions import gather_facts, suggest

    facts = (await gather_facts(session, [lead], now))[lead.id]
    suggestion = suggest(facts)
    return [] if suggestion.action == "draft_outreach" else [suggestion.reason]


# What a question asks for, by its words: the name of the placeholder the
# seller fills in (seed 003: "When it doesn't know the specific information,
# it adds placeholders in the email draft for you to fill in").  First match wins.
_PLACEHOLDERS = (
    (r"\b(?:deliver\w*|ship\w*|lieferb?\w*|versand\w*|livr\w*)\b", "delivery date"),
    (r"\b(?:how much|price\w*|pricing|costs?|kostet|kosten|preis\w*|prix|tarif\w*)\b", "price"),
    (r"\b(?:how long|duration|wie lange|dauer\w*)\b", "duration"),
    (r"\b(?:how many|wie viele)\b", "number"),
    (r"\b(?:when|wann|quand|date|datum)\b", "date"),
    (r"\b(?:contract\w*|terms|vertrag\w*|sla)\b", "terms"),
)
_QUESTION = re.compile(r"[^.!?\n]*\?")


def placeholder_for(question: str) -> str:
    """The placeholder a question's answer goes into, e.g. ``delivery date``."""
    for pattern, name in _PLACEHOLDERS:
        if re.search(pattern, question, re.IGNORECASE):
            return name
    return f"answer: {question.strip()}"


def placeholder_answer(first_name: str | None, text: str, sender: str = "") -> str:
    """A follow-up draft for questions the knowledge cannot answer: each
    question quoted, with a ``[[placeholder]]`` for the seller to fill."""
    questions = [q.strip() for q in _QUESTION.findall(text) if len(q.strip()) > 3]
    if not questions:
        questions = [" ".join(text.split())[:200]]
    lines = [f"Hi {first_name or 'there'},", "", "thank you for your question."]
    for question in questions[:3]:
        lines += ["", f"> {question}", f"[[{placeholder_for(question)}]]"]
    lines += ["", "Best regards,"]
    if sender:
        lines.append(sender)
    return "\n".join(lines) + "\n"
