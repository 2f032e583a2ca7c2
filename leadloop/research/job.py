"""The research and prioritization job, and the daemon's other periodic jobs.

Every ``[research] interval`` (seed 003: every 4 hours) one daemon of those
sharing the database:

1. routes the research-mode leads nobody owns yet (seed 001): ICP fit low
   -> ``disqualified``, the supervisors told; otherwise a seller
   (``agent/drafting.py``); the cadence planner does the same for its leads
   just before their outreach draft;
2. opens a task for each lead whose latest mail asks for something to be
   done (seed 003's "create task"; ``research/actions.py``), once per mail;
3. refreshes the research (``research/facts.py``: what we know, and the
   company website when ``[research] outside`` is on).

Which daemon runs a job is settled by the job's ``controls`` row (its last
run), locked while it is read on PostgreSQL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from leadloop.agent import drafting
from leadloop.agent.lifecycle import SENDING_STATES, State
from leadloop.agent.staff import Staff
from leadloop.config import LoadedConfig
from leadloop.research.actions import gather_facts, open_task, suggest
from leadloop.storage.db import Database
from leadloop.storage.models import CadenceEnrollment, Control, Lead

log = logging.getLogger("leadloop.research.job")

ACTOR = "agent:research"
RESEARCH_JOB = "job.research"
RETENTION_JOB = "job.retention"
WORKING = frozenset({*SENDING_STATES, State.PAUSED, State.HANDED_BACK})
"""The leads the job looks at: open, not closed."""
BATCH = 500


async def claim_run(db: Database, name: str, every: timedelta, now: datetime) -> bool:
    """Whether this daemon runs job *name* now: its last run (by any daemon)
    is at least *every* ago.  Claiming records the run."""
    try:
        async with db.transaction() as session:
            row = await session.get(Control, name, with_for_update=True)
            if row is None:
                session.add(
                    Control(
                        name=name,
                        value={"at": now.isoformat()},
                        actor="scheduler",
                        reason="the job's last run",
                        updated_at=now,
                    )
                )
                return True  # two daemons adding it at once: one commit fails
            at = (row.value or {}).get("at")
            if at and now - datetime.fromisoformat(at) < every:
                return False
            row.value = {"at": now.isoformat()}
            row.updated_at = now
            return True
    except IntegrityError:
        return False


async def release_run(
    db: Database, name: str, every: timedelta, now: datetime, *, retry_in: timedelta
) -> None:
    """A claimed run of *name* failed: let the next claim through once
    *retry_in* has passed, not a whole *every* later (a daily job that
    failed at 03:00 is tried again at 04:00, not tomorrow)."""
    async with db.transaction() as session:
        row = await session.get(Control, name, with_for_update=True)
        if row is not None:
            row.value = {"at": (now - every + retry_in).isoformat(), "failed_at": now.isoformat()}
            row.updated_at = now


@dataclass
class ResearchRun:
    routed: int = 0
    disqualified: int = 0
    tasks: int = 0
    research: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        fetched = len(self.research.get("fetched", ()))
        return (
            f"routed={self.routed} disqualified={self.disqualified} tasks={self.tasks} "
            f"researched={self.research.get('leads', 0)} websites={fetched}"
        )


async def research_leads(db: Database, settings: drafting.Drafting) -> list[int]:
    """The open leads in research mode, by id."""
    if not settings.anywhere:
        return []
    research_cadences = [n for n, m in settings.cadence_modes.items() if m == drafting.RESEARCH]
    async with db.sessions() as session:
        query = select(Lead.id).where(Lead.state.in_(WORKING)).order_by(Lead.id)
        if settings.mode != drafting.RESEARCH:
            query = query.where(
                Lead.id.in_(
                    select(CadenceEnrollment.lead_id).where(
                        CadenceEnrollment.cadence.in_(research_cadences)
                    )
                )
            )
        return list((await session.scalars(query)).all())


async def run_research(
    db: Database, loaded: LoadedConfig, staff: Staff, now: datetime
) -> ResearchRun:
    """One run of the research and prioritization job (the module docstring)."""
    from leadloop.research.facts import refresh_research

    run = ResearchRun()
    settings = staff.send.drafting
    ids = await research_leads(db, settings)
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        async with db.transaction() as session:
            leads = list((await session.scalars(select(Lead).where(Lead.id.in_(chunk)))).all())
            for lead in leads:
                if lead.owner or lead.state not in SENDING_STATES:
                    continue
                why_not = await drafting.route(session, settings, staff, lead, now)
                if why_not is None:
                    run.routed += 1
                elif lead.state == State.DISQUALIFIED:
                    run.disqualified += 1
                else:
                    log.warning("lead=%d not routed: %s", lead.id, why_not)
            facts = await gather_facts(session, leads, now)
            for lead in leads:
                found = facts.get(lead.id)
                if found is None or found.latest is None:
                    continue
                suggestion = suggest(found)
                task = await open_task(
                    session, lead, suggestion, inbound_id=found.latest.inbound_id, now=now
                )
                if task is not None and task.created_at == now:
                    run.tasks += 1
    run.research = (await refresh_research(db, loaded, now)).as_dict()
    return run
