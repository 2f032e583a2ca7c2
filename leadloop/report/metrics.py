"""The agent's metrics over a date range, overall and per mailbox (DESIGN.md,
"Metrics"; the seed's definitions made exact).

The range is ``[since, until)``.  A *lead mail* is one the agent wrote to a
lead (touch, reply, nudge, warm introduction); *delivered* means the relay
accepted it and no permanent bounce came back.  A *human reply* is a mail
from a lead that screening did not take for an auto-reply, a bounce, an
unsubscribe or a loop (kinds ``reply`` and ``new_inbound``).

- records managed: leads the agent wrote to or heard from in the range;
- reached: leads with a delivered lead mail;
- engagement rate: human replies classified interested, question,
  meeting_request or purchase_intent, or from a lead that became
  ``qualified`` / all human replies;
- CTR: mails with at least one click by a person (not a mail scanner) on a
  tracked link / delivered mails;
- won, lost, disqualified: leads that entered the state in the range;
  win rate = won / disqualified (the seed's), shown beside
  won / (won + lost + disqualified);
- escalations: escalations opened; escalation rate = leads escalated /
  leads that replied; hand-offs: leads that became ``qualified``, hand-off
  rate = hand-offs / leads that replied;
- average touches before first reply: delivered lead mails before each
  lead's first human reply (for first replies in the range);
- average time to qualification: hours from a lead's first contact (our
  first delivered mail or its first mail, whichever came first) to
  ``qualified``.
- the funnel, in leads: reached -> replied -> engaged -> pitched (sent a
  catalog purchase link or introduced to a seller) -> escalated -> won /
  lost / disqualified.

Every rate is ``None`` ("n/a") when its denominator is 0.  A lead belongs to
the mailbox its first mail went out from (or, for a hand-raiser, came in to);
mail counts use each mail's own mailbox.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from statistics import mean
from typing import Any

from sqlalchemy import select

from leadloop.config import LoadedConfig
from leadloop.knowledge.catalog import CatalogError, load_catalog
from leadloop.knowledge.sources import SourceMissing, Sources
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Click,
    Escalation,
    InboundMessage,
    Lead,
    LeadStateChange,
    Mailbox,
    OutboundMessage,
)

LEAD_MAIL = ("touch", "reply", "nudge", "intro")
HUMAN = ("reply", "new_inbound")
ENGAGED_INTENTS = frozenset({"interested", "question", "meeting_request", "purchase_intent"})
FUNNEL = ("reached", "replied", "engaged", "pitched", "escalated", "won", "lost", "disqualified")
OVERALL = ""


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


@dataclass
class _Mail:
    id: int
    lead_id: int | None
    mailbox_id: int | None
    at: datetime
    kind: str
    intent: str | None = None
    pitch: bool = False


@dataclass
class _Data:
    since: datetime
    until: datetime
    boxes: dict[int, str]
    out: list[_Mail]
    """Delivered lead mails (all time up to ``until``: first contacts need history)."""
    sent_all: list[_Mail]
    """Every mail the relay accepted in the range (the daily volume)."""
    inbound: list[_Mail]
    """Every mail stored in the range."""
    human: list[_Mail]
    """Human replies up to ``until``."""
    clicked: set[int]
    """Outbound ids with a person's click in the range."""
    changes: list[LeadStateChange]
    escalations: list[Escalation]
    ever_qualified: set[int]
    lead_box: dict[int, int | None] = field(default_factory=dict)

    def within(self, at: datetime) -> bool:
        return self.since <= at < self.until


async def build_report(
    db: Database,
    since: datetime,
    until: datetime,
    *,
    catalog_urls: Collection[str] = (),
    now: datetime,
) -> dict[str, Any]:
    """The report ``leadloop report --json`` prints (and the HTML page shows)."""
    data = await _load(db, since, until, catalog_urls)
    overall = _metrics(data, None)
    report: dict[str, Any] = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "generated_at": now.isoformat(),
        "overall": overall,
        "mailboxes": {name: _metrics(data, box) for box, name in sorted(data.boxes.items())},
        "series": _series(data),
        "open_escalations": await _open_escalations(db),
    }
    return report


async def _load(
    db: Database, since: datetime, until: datetime, catalog_urls: Collection[str]
) -> _Data:
    async with db.sessions() as session:
        boxes = {m.id: m.name for m in await session.scalars(select(Mailbox))}
        out_rows = (
            await session.execute(
                select(
                    OutboundMessage.id,
                    OutboundMessage.lead_id,
                    OutboundMessage.mailbox_id,
                    OutboundMessage.sent_at,
                    OutboundMessage.kind,
                    OutboundMessage.bounced,
                    OutboundMessage.payload,
                ).where(OutboundMessage.sent_at.is_not(None), OutboundMessage.sent_at < until)
            )
        ).all()
        in_rows = (
            await session.execute(
                select(
                    InboundMessage.id,
                    InboundMessage.lead_id,
                    InboundMessage.mailbox_id,
                    InboundMessage.received_at,
                    InboundMessage.kind,
                    InboundMessage.result,
                ).where(InboundMessage.received_at < until, InboundMessage.duplicate_of.is_(None))
            )
        ).all()
        clicked = set(
            await session.scalars(
                select(Click.outbound_id).where(
                    Click.scanner.is_(False), Click.at >= since, Click.at < until
                )
            )
        )
        changes = list(
            await session.scalars(
                select(LeadStateChange)
                .where(LeadStateChange.at < until)
                .order_by(LeadStateChange.at, LeadStateChange.id)
            )
        )
        escalations = list(
            await session.scalars(
                select(Escalation).where(
                    Escalation.opened_at >= since, Escalation.opened_at < until
                )
            )
        )
    out: list[_Mail] = []
    sent_all: list[_Mail] = []
    first_mails: list[_Mail] = []  # bounced ones too: they say which mailbox a lead is in
    for row in out_rows:
        mail = _Mail(row.id, row.lead_id, row.mailbox_id, row.sent_at, row.kind)
        if since <= row.sent_at < until:
            sent_all.append(mail)
        if row.kind in LEAD_MAIL and row.lead_id is not None:
            first_mails.append(mail)
            if not row.bounced:
                text = str((row.payload or {}).get("text") or "")
                mail.pitch = row.kind == "intro" or any(url in text for url in catalog_urls)
                out.append(mail)
    inbound: list[_Mail] = []
    human: list[_Mail] = []
    for row in in_rows:
        result = row.result or {}
        mail = _Mail(
            row.id,
            row.lead_id,
            row.mailbox_id,
            row.received_at,
            row.kind or "",
            result.get("intent"),
        )
        if since <= row.received_at < until:
            inbound.append(mail)
        if row.kind in HUMAN and row.lead_id is not None:
            human.append(mail)
    data = _Data(
        since,
        until,
        boxes,
        sorted(out, key=lambda m: (m.at, m.id)),
        sent_all,
        inbound,
        sorted(human, key=lambda m: (m.at, m.id)),
        clicked,
        changes,
        escalations,
        {c.lead_id for c in changes if c.to_state == "qualified"},
    )
    for mail in sorted([*first_mails, *data.human], key=lambda m: (m.at, m.id)):
        if mail.lead_id is not None:  # the first contact wins
            data.lead_box.setdefault(mail.lead_id, mail.mailbox_id)
    return data


def _metrics(data: _Data, box: int | None) -> dict[str, Any]:
    def mine_lead(lead_id: int | None) -> bool:
        return lead_id is not None and (box is None or data.lead_box.get(lead_id) == box)

    def mine_mail(mail: _Mail) -> bool:
        return mail.lead_id is not None and (box is None or mail.mailbox_id == box)

    delivered = [m for m in data.out if data.within(m.at) and mine_mail(m)]
    replies = [m for m in data.human if data.within(m.at) and mine_mail(m)]
    engaged = [
        m for m in replies if m.intent in ENGAGED_INTENTS or m.lead_id in data.ever_qualified
    ]
    entered: dict[str, set[int]] = defaultdict(set)
    qualified_at: dict[int, datetime] = {}
    for change in data.changes:
        if data.within(change.at) and mine_lead(change.lead_id):
            entered[change.to_state].add(change.lead_id)
            if change.to_state == "qualified":
                qualified_at.setdefault(change.lead_id, change.at)
    escalations = [e for e in data.escalations if mine_lead(e.lead_id)]

    first_reply = _first(data.human)
    first_contact = _first([*data.out, *data.human])
    touches = [
        sum(1 for m in data.out if m.lead_id == lead and m.at < at)
        for lead, at in first_reply.items()
        if data.within(at) and mine_lead(lead)
    ]
    to_qualify = [
        (at - first_contact[lead]).total_seconds() / 3600
        for lead, at in qualified_at.items()
        if lead in first_contact
    ]

    reached = {m.lead_id for m in delivered}
    replied = {m.lead_id for m in replies}
    funnel: dict[str, Collection[int | None]] = {
        "reached": reached,
        "replied": replied,
        "engaged": {m.lead_id for m in engaged},
        "pitched": {m.lead_id for m in delivered if m.pitch},
        "escalated": {e.lead_id for e in escalations},
        "won": entered["won"],
        "lost": entered["lost"],
        "disqualified": entered["disqualified"],
    }
    records = (
        reached
        | replied
        | {m.lead_id for m in data.inbound if mine_lead(m.lead_id)}
        | {lead for states in entered.values() for lead in states}
    )
    clicks = sum(1 for m in delivered if m.id in data.clicked)
    won, lost, disq = (len(entered[s]) for s in ("won", "lost", "disqualified"))
    handoffs = len(entered["qualified"])
    return {
        "records_managed": len(records - {None}),
        "reached": len(reached),
        "delivered": len(delivered),
        "human_replies": len(replies),
        "engaged_replies": len(engaged),
        "engagement_rate": ratio(len(engaged), len(replies)),
        "clicks": clicks,
        "ctr": ratio(clicks, len(delivered)),
        "won": won,
        "lost": lost,
        "disqualified": disq,
        "win_rate": ratio(won, disq),
        "win_rate_closed": ratio(won, won + lost + disq),
        "escalations": len(escalations),
        "escalation_rate": ratio(len(funnel["escalated"]), len(replied)),
        "handoffs": handoffs,
        "handoff_rate": ratio(handoffs, len(replied)),
        "avg_touches_before_first_reply": mean(touches) if touches else None,
        "avg_hours_to_qualification": mean(to_qualify) if to_qualify else None,
        "funnel": [{"stage": stage, "leads": len(funnel[stage])} for stage in FUNNEL],
    }


def _first(mails: Iterable[_Mail]) -> dict[int, datetime]:
    first: dict[int, datetime] = {}
    for mail in mails:
        if mail.lead_id is not None and (
            mail.lead_id not in first or mail.at < first[mail.lead_id]
        ):
            first[mail.lead_id] = mail.at
    return first


def _series(data: _Data) -> dict[str, Any]:
    days = _days(data.since, data.until)
    volume_in = Counter(m.at.date() for m in data.inbound)
    volume_out = Counter(m.at.date() for m in data.sent_all)
    intents = Counter((m.at.date(), m.intent) for m in data.human if data.within(m.at) and m.intent)
    first_out = _first(data.out)
    first_reply = _first(data.human)
    hours = [
        round((at - first_out[lead]).total_seconds() / 3600, 2)
        for lead, at in sorted(first_reply.items())
        if data.within(at) and lead in first_out and first_out[lead] < at
    ]
    return {
        "daily": [{"date": d.isoformat(), "in": volume_in[d], "out": volume_out[d]} for d in days],
        "intents": [
            {"date": d.isoformat(), "intent": intent, "count": n}
            for (d, intent), n in sorted(intents.items())
        ],
        "first_reply_hours": hours,
        "escalations_by_reason": dict(
            sorted(Counter(e.condition for e in data.escalations).items())
        ),
    }


def _days(since: datetime, until: datetime) -> list[date]:
    days: list[date] = []
    day = since.date()
    while datetime.combine(day, datetime.min.time(), since.tzinfo) < until:
        days.append(day)
        day += timedelta(days=1)
    return days


async def _open_escalations(db: Database) -> list[dict[str, Any]]:
    async with db.sessions() as session:
        rows = (
            await session.execute(
                select(Escalation, Lead.email)
                .join(Lead, Lead.id == Escalation.lead_id)
                .where(Escalation.status != "resolved")
                .order_by(Escalation.opened_at, Escalation.id)
            )
        ).all()
    return [
        {
            "id": esc.id,
            "lead": email,
            "condition": esc.condition,
            "status": esc.status,
            "opened_at": esc.opened_at.isoformat(),
            "reasons": list(esc.reasons or []),
        }
        for esc, email in rows
    ]


def catalog_urls(loaded: LoadedConfig) -> list[str]:
    """The purchase URLs of the configured catalog: a lead mail carrying one
    pitched a product."""
    try:
        return sorted(load_catalog(Sources.from_config(loaded).catalog).urls())
    except (CatalogError, SourceMissing):
        return []
