"""The lead state machine: exactly DESIGN.md's transitions, each recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from leadloop.agent.due import run_due
from leadloop.agent.lifecycle import (
    ALLOWED,
    SENDING_STATES,
    InvalidTransition,
    State,
    create_lead,
    transition,
)
from leadloop.clock import ManualClock
from leadloop.storage.db import Database
from leadloop.storage.models import Event, Lead, LeadStateChange

# DESIGN.md's table, written out by hand so the code's table is checked
# against it rather than against itself.
EXPECTED_NON_ANY = {
    (State.INVALID, State.NEW),
    (State.NEW, State.ENGAGING),
    (State.NURTURE, State.ENGAGING),
    (State.NEW, State.CONVERSING),
    (State.ENGAGING, State.CONVERSING),
    (State.NURTURE, State.CONVERSING),
    (State.ENGAGING, State.NURTURE),
    (State.CONVERSING, State.NURTURE),
    *((s, State.PAUSED) for s in (State.NEW, State.ENGAGING, State.CONVERSING, State.NURTURE)),
    *((State.PAUSED, s) for s in (State.NEW, State.ENGAGING, State.CONVERSING, State.NURTURE)),
    (State.CONVERSING, State.QUALIFIED),
    (State.CONVERSING, State.DISQUALIFIED),
    (State.CONVERSING, State.HANDED_BACK),
    (State.ENGAGING, State.LOST),
    # Beyond DESIGN.md's table (the agent only disqualifies conversing leads):
    # a person's DISQUALIFY by mail may close any open lead.
    *(
        (s, State.DISQUALIFIED)
        for s in (
            State.PAUSED,
            State.QUALIFIED,
            State.HANDED_BACK,
            State.NEW,
            State.ENGAGING,
            State.NURTURE,
        )
    ),
}
ANY_TARGETS = (State.WON, State.INVALID, State.OPTED_OUT)


def test_table_matches_design() -> None:
    """The allowed set is the design table: named moves plus won/invalid/opted_out from any
    state except the terminal opted_out."""
    expected = set(EXPECTED_NON_ANY)
    for target in ANY_TARGETS:
        expected |= {(s, target) for s in State if s is not State.OPTED_OUT and s is not target}
    assert set(ALLOWED) == expected


async def _lead_in(session, state: State, clock: ManualClock, n: int) -> Lead:  # type: ignore[no-untyped-def]
    lead = await create_lead(
        session,
        Lead(email=f"l{n}@buyer.example", custom={}),
        actor="test",
        reason="fixture",
        now=clock.now(),
    )
    if state is not State.NEW:
        lead.state = state  # set directly: the fixture's starting point, not a transition
        if state is State.PAUSED:
            lead.paused_return_state = State.CONVERSING
    return lead


async def test_every_allowed_transition_records_its_reason(
    db: Database, clock: ManualClock
) -> None:
    """Each allowed move succeeds and leaves a history row and an event with who and why."""
    pairs = sorted(ALLOWED)
    async with db.transaction() as session:
        for n, (source, target) in enumerate(pairs):
            lead = await _lead_in(session, source, clock, n)
            if source is State.PAUSED and target in SENDING_STATES:
                lead.paused_return_state = target
            await transition(
                session, lead, target, actor="tester", reason=f"because {n}", now=clock.now()
            )
            assert lead.state == target
    async with db.transaction() as session:
        changes = (
            await session.scalars(select(LeadStateChange).where(LeadStateChange.actor == "tester"))
        ).all()
        events = (await session.scalars(select(Event).where(Event.kind == "lead.state"))).all()
    assert sorted((c.from_state, c.to_state) for c in changes) == [
        (s.value, t.value) for s, t in pairs
    ]
    assert {c.reason for c in changes} == {f"because {n}" for n in range(len(pairs))}
    assert len(events) == len(pairs)
    assert all(c.at == clock.now() for c in changes)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (State.OPTED_OUT, State.ENGAGING),
        (State.OPTED_OUT, State.WON),
        (State.NEW, State.QUALIFIED),
        (State.LOST, State.DISQUALIFIED),
        (State.CONVERSING, State.LOST),
        (State.QUALIFIED, State.ENGAGING),
        (State.PAUSED, State.PAUSED),
        (State.WON, State.CONVERSING),
        (State.CONVERSING, State.CONVERSING),
    ],
)
async def test_forbidden_transition_raises(
    sqlite_db: Database, clock: ManualClock, source: State, target: State
) -> None:
    """A move the table does not allow raises and changes nothing."""
    async with sqlite_db.transaction() as session:
        lead = await _lead_in(session, source, clock, 0)
        with pytest.raises(InvalidTransition):
            await transition(session, lead, target, actor="t", reason="r", now=clock.now())
        assert lead.state == source


async def test_resume_only_to_the_kept_state(sqlite_db: Database, clock: ManualClock) -> None:
    """A paused lead returns only to the state it was paused from, and the pause is cleared."""
    async with sqlite_db.transaction() as session:
        lead = await _lead_in(session, State.ENGAGING, clock, 0)
        await transition(
            session,
            lead,
            State.PAUSED,
            actor="staff:a@acme.example",
            reason="TAKE OVER",
            now=clock.now(),
        )
        assert (lead.paused_return_state, lead.paused_reason) == ("engaging", "TAKE OVER")
        with pytest.raises(InvalidTransition):
            await transition(
                session, lead, State.CONVERSING, actor="t", reason="r", now=clock.now()
            )
        await transition(
            session,
            lead,
            State.ENGAGING,
            actor="staff:a@acme.example",
            reason="RESUME",
            now=clock.now(),
        )
        assert lead.paused_return_state is None and lead.paused_reason is None


async def test_pause_until_resumes_through_due_work(
    sqlite_db: Database, clock: ManualClock
) -> None:
    """A pause with an end date ends by run_due at that time, back to the kept state."""
    async with sqlite_db.transaction() as session:
        lead = await _lead_in(session, State.CONVERSING, clock, 0)
        await transition(
            session,
            lead,
            State.PAUSED,
            actor="admin:cli",
            reason="holiday",
            now=clock.now(),
            until=clock.now() + timedelta(days=3),
        )
        lead_id = lead.id
    assert await run_due(sqlite_db, clock.advance(timedelta(days=2))) == 0
    assert await run_due(sqlite_db, clock.advance(timedelta(days=1))) == 1
    async with sqlite_db.transaction() as session:
        lead = await session.get(Lead, lead_id)
        assert lead is not None and lead.state == State.CONVERSING
        last = await session.scalar(
            select(LeadStateChange).order_by(LeadStateChange.id.desc()).limit(1)
        )
        assert last is not None and (last.actor, last.reason) == ("scheduler", "pause ended")


async def test_reason_is_required(sqlite_db: Database, clock: ManualClock) -> None:
    """Every change says why."""
    async with sqlite_db.transaction() as session:
        lead = await _lead_in(session, State.NEW, clock, 0)
        with pytest.raises(ValueError, match="reason"):
            await transition(session, lead, State.ENGAGING, actor="t", reason=" ", now=clock.now())
