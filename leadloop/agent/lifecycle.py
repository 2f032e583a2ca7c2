"""A lead's life is a state machine.

This is DESIGN.md's state table, and :func:`transition` is the only way a
lead's state changes: it refuses any move the table does not allow and
records who made it, why and when.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.storage import repo
from leadloop.storage.models import Event, Lead, LeadStateChange, table_of

log = logging.getLogger("leadloop.agent.lifecycle")


class State(StrEnum):
    NEW = "new"
    ENGAGING = "engaging"
    CONVERSING = "conversing"
    NURTURE = "nurture"
    PAUSED = "paused"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"
    HANDED_BACK = "handed_back"
    WON = "won"
    LOST = "lost"
    INVALID = "invalid"
    OPTED_OUT = "opted_out"


# States in which lead mail may be sent (nurture only once its date is due).
SENDING_STATES = frozenset({State.NEW, State.ENGAGING, State.CONVERSING, State.NURTURE})
TERMINAL_STATES = frozenset({State.OPTED_OUT})

# target state -> the states it may be entered from ("any" rows expanded below).
_ENTERED_FROM: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.INVALID}),  # an address corrected by a person
    State.ENGAGING: frozenset({State.NEW, State.NURTURE}),
    State.CONVERSING: frozenset({State.NEW, State.ENGAGING, State.NURTURE}),
    State.NURTURE: frozenset({State.ENGAGING, State.CONVERSING}),
    State.PAUSED: SENDING_STATES,
    State.QUALIFIED: frozenset({State.CONVERSING}),
    # The agent disqualifies conversing leads; a person (DISQUALIFY by mail)
    # may close any open lead.
    State.DISQUALIFIED: frozenset(
        {
            State.CONVERSING,
            State.PAUSED,
            State.QUALIFIED,
            State.HANDED_BACK,
            State.NEW,
            State.ENGAGING,
            State.NURTURE,
        }
    ),
    State.HANDED_BACK: frozenset({State.CONVERSING}),
    State.LOST: frozenset({State.ENGAGING}),
}
_FROM_ANY = (State.WON, State.INVALID, State.OPTED_OUT)
for _target in _FROM_ANY:
    _ENTERED_FROM[_target] = frozenset(State) - TERMINAL_STATES - {_target}

ALLOWED: frozenset[tuple[State, State]] = frozenset(
    (source, target) for target, sources in _ENTERED_FROM.items() for source in sources
) | frozenset((State.PAUSED, back) for back in SENDING_STATES)
"""Every allowed (from, to) pair.  Leaving ``paused`` is further limited to
the state the lead was paused from; :func:`transition` checks that."""


class InvalidTransition(Exception):
    """The state table does not allow this move."""


def can_transition(lead: Lead, target: State) -> bool:
    source = State(lead.state)
    if (source, target) not in ALLOWED:
        return False
    return not (
        source is State.PAUSED and target in SENDING_STATES and target != lead.paused_return_state
    )


async def create_lead(
    session: AsyncSession, lead: Lead, *, actor: str, reason: str, now: datetime
) -> Lead:
    """Add a new lead in state ``new`` and record its creation."""
    lead.state = State.NEW
    lead.state_changed_at = now
    lead.created_at = lead.created_at or now
    lead.updated_at = now
    session.add(lead)
    await session.flush()
    session.add(
        LeadStateChange(
            lead_id=lead.id, from_state=None, to_state=State.NEW, actor=actor, reason=reason, at=now
        )
    )
    return lead


async def transition(
    session: AsyncSession,
    lead: Lead,
    target: State | str,
    *,
    actor: str,
    reason: str,
    now: datetime,
    until: datetime | None = None,
) -> LeadStateChange:
    """Move *lead* to *target*, or raise :class:`InvalidTransition`.

    *actor* says who (``pipeline.screen``, ``staff:ann@acme.example``,
    ``admin:ann``), *reason* why.  Pausing keeps the state to return to and
    the optional *until*; leaving ``paused`` clears them.
    """
    target = State(target)
    source = State(lead.state)
    if not reason.strip():
        raise ValueError("a state change needs a reason")
    if (source, target) not in ALLOWED:
        raise InvalidTransition(f"lead {lead.email}: {source} -> {target} is not allowed")
    if source is State.PAUSED and target in SENDING_STATES and target != lead.paused_return_state:
        raise InvalidTransition(
            f"lead {lead.email}: paused from {lead.paused_return_state}, cannot resume to {target}"
        )
    if until is not None and target is not State.PAUSED:
        raise ValueError("only a pause has an end date")

    if target is State.PAUSED:
        lead.paused_return_state = source
        lead.paused_reason = reason
        lead.paused_until = until
    elif source is State.PAUSED:
        lead.paused_return_state = None
        lead.paused_reason = None
        lead.paused_until = None
    lead.state = target
    lead.state_changed_at = now
    lead.updated_at = now
    change = LeadStateChange(
        lead_id=lead.id, from_state=source, to_state=target, actor=actor, reason=reason, at=now
    )
    session.add(change)
    repo.add_event(
        session,
        "lead.state",
        actor=actor,
        now=now,
        lead_id=lead.id,
        reasons=[reason],
        data={"from": source.value, "to": target.value, "until": until and until.isoformat()},
    )
    if target is State.PAUSED and until is not None:
        await repo.schedule(
            session,
            "lead.resume",
            until,
            now=now,
            lead_id=lead.id,
            dedupe_key=f"lead.resume:{lead.id}",
        )
    log.info("lead=%s state %s -> %s by %s: %s", lead.id, source, target, actor, reason)
    return change


async def transition_many(
    session: AsyncSession,
    lead_ids: list[int],
    source: State,
    target: State,
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> list[int]:
    """Move every lead of *lead_ids* that is in *source* to *target*, in a
    few set-based statements (the sender's hot path: a first touch moves
    ``new`` -> ``engaging``), recording each change like :func:`transition`.
    Returns the ids that moved.  Pauses, with their kept state, go through
    :func:`transition`."""
    if (source, target) not in ALLOWED or State.PAUSED in (source, target):
        raise InvalidTransition(f"{source} -> {target} is not allowed here")
    if not lead_ids:
        return []
    leads = table_of(Lead)
    moved = [
        row[0]
        for row in await session.execute(
            update(leads)
            .where(leads.c.id.in_(lead_ids), leads.c.state == source.value)
            .values(state=target.value, state_changed_at=now, updated_at=now)
            .returning(leads.c.id)
        )
    ]
    if moved:
        await session.execute(
            insert(table_of(LeadStateChange)),
            [
                {
                    "lead_id": lead_id,
                    "from_state": source.value,
                    "to_state": target.value,
                    "actor": actor,
                    "reason": reason,
                    "at": now,
                }
                for lead_id in moved
            ],
        )
        await session.execute(
            insert(table_of(Event)),
            [
                {
                    "at": now,
                    "kind": "lead.state",
                    "actor": actor,
                    "lead_id": lead_id,
                    "reasons": [reason],
                    "data": {"from": source.value, "to": target.value, "until": None},
                }
                for lead_id in moved
            ],
        )
        log.info("%d leads state %s -> %s by %s: %s", len(moved), source, target, actor, reason)
    return moved


async def to_owner(
    session: AsyncSession,
    lead: Lead,
    target: State,
    *,
    actor: str,
    reason: str,
    now: datetime,
    inbound_id: int | None = None,
    outbound_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Hand *lead* to its owner: move it to *target* (``handed_back``, or
    ``paused`` where the table allows no hand-back) when allowed, and record
    the ``lead.owner_notice`` the owner hears of it by.  Returns whether the
    state changed."""
    moved = can_transition(lead, target)
    if moved:
        await transition(session, lead, target, actor=actor, reason=reason, now=now)
    repo.add_event(
        session,
        "lead.owner_notice",
        actor=actor,
        now=now,
        lead_id=lead.id,
        inbound_id=inbound_id,
        outbound_id=outbound_id,
        reasons=[reason],
        data={"owner": lead.owner, **(data or {})},
    )
    return moved
