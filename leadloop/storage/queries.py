"""Read views for the command line: plain dicts, ready to print or dump as JSON."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Account,
    DaemonRow,
    Escalation,
    Event,
    InboundMessage,
    Lead,
    LeadStateChange,
    Mailbox,
    OutboundMessage,
    ScheduledTask,
)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def lead_summary(lead: Lead) -> dict[str, Any]:
    name = " ".join(part for part in (lead.first_name, lead.last_name) if part)
    return {
        "email": lead.email,
        "name": name or None,
        "company": lead.company,
        "state": lead.state,
        "owner": lead.owner,
        "hand_raiser": lead.hand_raiser,
        "rating": lead.rating,
    }


async def list_leads(db: Database, *, state: str | None = None) -> list[dict[str, Any]]:
    async with db.transaction() as session:
        query = select(Lead).order_by(Lead.id)
        if state:
            query = query.where(Lead.state == state)
        return [lead_summary(lead) for lead in (await session.scalars(query)).all()]


async def lead_detail(db: Database, email: str) -> dict[str, Any] | None:
    async with db.transaction() as session:
        lead = await session.scalar(select(Lead).where(Lead.email == email.strip().lower()))
        if lead is None:
            return None
        account = await session.get(Account, lead.account_id) if lead.account_id else None
        history = (
            await session.scalars(
                select(LeadStateChange)
                .where(LeadStateChange.lead_id == lead.id)
                .order_by(LeadStateChange.id)
            )
        ).all()
        inbound_ids = select(InboundMessage.id).where(InboundMessage.lead_id == lead.id)
        events = (
            await session.scalars(
                select(Event)
                .where(or_(Event.lead_id == lead.id, Event.inbound_id.in_(inbound_ids)))
                .order_by(Event.id)
            )
        ).all()
    fields = {
        column.key: _iso(getattr(lead, column.key))
        for column in Lead.__table__.columns
        if column.key != "account_id"
    }
    fields["account"] = account.domain if account else None
    return {
        "lead": fields,
        "history": [
            {
                "at": _iso(c.at),
                "from": c.from_state,
                "to": c.to_state,
                "actor": c.actor,
                "reason": c.reason,
            }
            for c in history
        ],
        "events": [
            {
                "at": _iso(e.at),
                "kind": e.kind,
                "actor": e.actor,
                "reasons": e.reasons,
                "data": e.data,
            }
            for e in events
        ],
    }


async def quarantined(db: Database) -> list[dict[str, Any]]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(InboundMessage, Mailbox.name)
            .join(Mailbox, Mailbox.id == InboundMessage.mailbox_id)
            .where(InboundMessage.status == repo.QUARANTINED)
            .order_by(InboundMessage.id)
        )
        return [
            {
                "id": row.id,
                "mailbox": mailbox,
                "message_id": row.message_id,
                "from": row.from_addr,
                "subject": row.subject,
                "stage": row.stage,
                "attempts": row.attempts,
                "error": (row.last_error or "").splitlines()[0][:200] if row.last_error else None,
            }
            for row, mailbox in rows
        ]


async def inbound_detail(db: Database, inbound_id: int) -> dict[str, Any] | None:
    async with db.transaction() as session:
        row = await session.get(InboundMessage, inbound_id)
        if row is None:
            return None
        events = (
            await session.scalars(
                select(Event).where(Event.inbound_id == inbound_id).order_by(Event.id)
            )
        ).all()
    return {
        "id": row.id,
        "source_id": row.source_id,
        "message_id": row.message_id,
        "message_id_synthetic": row.message_id_synthetic,
        "from": row.from_addr,
        "subject": row.subject,
        "date": _iso(row.sent_at),
        "size": row.size,
        "stage": row.stage,
        "status": row.status,
        "attempts": row.attempts,
        "kind": row.kind,
        "last_error": row.last_error,
        "defects": row.defects,
        "events": [
            {"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "reasons": e.reasons}
            for e in events
        ],
    }


# Outbound mail an operator may need to act on.
ATTENTION = ("held", "failed", "in_doubt")


async def outbound(db: Database, statuses: tuple[str, ...] = ATTENTION) -> list[dict[str, Any]]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(OutboundMessage, Mailbox.name)
            .outerjoin(Mailbox, Mailbox.id == OutboundMessage.mailbox_id)
            .where(OutboundMessage.status.in_(statuses))
            .order_by(OutboundMessage.id)
        )
        return [_outbound_summary(row, mailbox) for row, mailbox in rows]


def _outbound_summary(row: OutboundMessage, mailbox: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "mailbox": mailbox,
        "kind": row.kind,
        "status": row.status,
        "to": row.to_addrs,
        "subject": row.subject,
        "attempts": row.attempts,
        "not_before": _iso(row.not_before),
        "reason": row.held_reason or row.last_error,
    }


async def outbound_detail(db: Database, outbound_id: int) -> dict[str, Any] | None:
    async with db.transaction() as session:
        row = await session.get(OutboundMessage, outbound_id)
        if row is None:
            return None
        mailbox = await session.get(Mailbox, row.mailbox_id) if row.mailbox_id else None
        events = (
            await session.scalars(
                select(Event).where(Event.outbound_id == outbound_id).order_by(Event.id)
            )
        ).all()
    detail = _outbound_summary(row, mailbox.name if mailbox else None)
    detail.update(
        {
            "message_id": row.message_id,
            "in_reply_to": row.in_reply_to,
            "references": row.references,
            "lead_id": row.lead_id,
            "envelope_from": row.envelope_from,
            "smtp_reply": row.smtp_reply,
            "created_at": _iso(row.created_at),
            "sent_at": _iso(row.sent_at),
            "size": len(row.raw) if row.raw else None,
            "events": [
                {"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "reasons": e.reasons}
                for e in events
            ],
        }
    )
    return detail


def _escalation(row: Escalation, email: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "lead": email,
        "condition": row.condition,
        "status": row.status,
        "opened_at": row.opened_at.isoformat(),
        "remind_at": row.remind_at.isoformat() if row.remind_at else None,
        "reminded_at": row.reminded_at.isoformat() if row.reminded_at else None,
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "resolved_by": row.resolved_by,
        "resolution": row.resolution,
        "supervisors": list(row.supervisors or []),
    }


async def escalations(db: Database, *, everything: bool = False) -> list[dict[str, Any]]:
    """Open and reminded escalations (*everything*: resolved ones too), oldest first."""
    async with db.sessions() as session:
        query = select(Escalation, Lead.email).join(Lead, Lead.id == Escalation.lead_id)
        if not everything:
            query = query.where(Escalation.status != "resolved")
        rows = await session.execute(query.order_by(Escalation.id))
        return [_escalation(row, email) for row, email in rows]


async def escalation_detail(db: Database, escalation_id: int) -> dict[str, Any] | None:
    async with db.sessions() as session:
        row = await session.get(Escalation, escalation_id)
        if row is None:
            return None
        lead = await session.get(Lead, row.lead_id)
        detail = _escalation(row, lead.email if lead else "")
        detail.update(
            reasons=list(row.reasons or []),
            draft=row.draft,
            draft_hard=row.draft_hard,
            inbound_id=row.inbound_id,
            lead_state=lead.state if lead else None,
        )
        return detail


async def cluster(db: Database, now: datetime, live_within: timedelta) -> list[dict[str, Any]]:
    """The daemons that share this database, newest first: live when seen
    within *live_within* and not stopped, with the claims each holds."""
    async with db.sessions() as session:
        daemons = list(await session.scalars(select(DaemonRow).order_by(DaemonRow.seen_at.desc())))

        async def held(model: Any, status: str) -> dict[str, int]:
            rows = await session.execute(
                select(model.claimed_by, func.count())
                .where(model.status == status)
                .group_by(model.claimed_by)
            )
            return {str(owner): int(count) for owner, count in rows}

        inbound = await held(InboundMessage, repo.CLAIMED)
        due = await held(ScheduledTask, repo.CLAIMED)
        sending = await held(OutboundMessage, "sending")
    return [
        {
            "id": d.id,
            "live": d.stopped_at is None and now - d.seen_at <= live_within,
            "version": d.version,
            "started_at": d.started_at.isoformat(),
            "seen_at": d.seen_at.isoformat(),
            "stopped_at": d.stopped_at.isoformat() if d.stopped_at else None,
            "mailboxes": list(d.mailboxes or []),
            "claims": {
                "inbound": inbound.get(d.id, 0),
                "due": due.get(d.id, 0),
                "sending": sending.get(d.id, 0),
            },
        }
        for d in daemons
    ]
