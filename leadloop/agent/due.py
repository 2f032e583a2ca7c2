"""Due work: everything scheduled is a row with ``not_before``.

:func:`run_due` does what is due at a given time.  The daemon's scheduler
only calls it on an interval; replay, demo and tests call it themselves
after moving their clock.  Handlers register by task kind.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.lifecycle import InvalidTransition, State, transition
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import Lead, ScheduledTask

log = logging.getLogger("leadloop.agent.due")

Handler = Callable[[AsyncSession, ScheduledTask, datetime, Any], Awaitable[str]]
"""Does one task inside the given transaction; returns what it did.  The
last argument is the caller's context (the daemon's cadence planner, which
holds the settings a task may need), or None."""

HANDLERS: dict[str, Handler] = {}
MAX_ATTEMPTS = 5


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        HANDLERS[kind] = func
        return func

    return register


async def run_due(
    db: Database,
    now: datetime,
    *,
    owner: str = "local",
    lease: timedelta = timedelta(minutes=5),
    limit: int = 500,
    context: Any = None,
) -> int:
    """Do every task due at *now*; return how many ran."""
    ran = 0
    while True:
        async with db.transaction() as session:
            ids = await repo.claim_due(session, owner, now, lease, limit)
        if not ids:
            return ran
        for task_id in ids:
            await _run_one(db, task_id, now, context)
            ran += 1


async def _run_one(db: Database, task_id: int, now: datetime, context: Any) -> None:
    try:
        async with db.transaction() as session:
            task = await session.get(ScheduledTask, task_id, with_for_update=True)
            if task is None or task.status != repo.CLAIMED:
                return
            func = HANDLERS.get(task.kind)
            if func is None:
                raise LookupError(f"no handler for due task kind {task.kind!r}")
            outcome = await func(session, task, now, context)
            task.status = repo.DONE
            task.done_at = now
            task.claimed_by = task.claimed_until = None
            repo.add_event(
                session,
                f"due.{task.kind}",
                actor="scheduler",
                now=now,
                lead_id=task.lead_id,
                reasons=[outcome],
                data={"task": task.id},
            )
    except Exception as exc:
        log.exception("due task=%d failed", task_id)
        error = "".join(traceback.format_exception_only(exc)).strip()
        async with db.transaction() as session:
            task = await session.get(ScheduledTask, task_id, with_for_update=True)
            if task is None:
                return
            task.attempts += 1
            task.last_error = error
            task.claimed_by = task.claimed_until = None
            if task.attempts >= MAX_ATTEMPTS:
                task.status = repo.FAILED
                log.error("due task=%d kind=%s failed for good: %s", task.id, task.kind, error)
            else:
                task.status = repo.PENDING
                task.not_before = now + timedelta(minutes=2**task.attempts)
            repo.add_event(
                session,
                f"due.{task.kind}.failed",
                actor="scheduler",
                now=now,
                lead_id=task.lead_id,
                reasons=[error],
                data={"task": task.id, "attempts": task.attempts},
            )


@handler("lead.resume")
async def resume_lead(
    session: AsyncSession, task: ScheduledTask, now: datetime, context: Any
) -> str:
    """A pause with an end date ends: back to the state the lead was paused from."""
    lead = await session.get(Lead, task.lead_id, with_for_update=True) if task.lead_id else None
    if lead is None or lead.state != State.PAUSED:
        return "nothing to resume: the lead is no longer paused"
    if lead.paused_until is None or lead.paused_until > now:
        return "the pause was changed; not resumed"
    back = lead.paused_return_state
    try:
        await transition(
            session, lead, State(back or ""), actor="scheduler", reason="pause ended", now=now
        )
    except (InvalidTransition, ValueError) as exc:
        return f"not resumed: {exc}"
    return f"resumed to {back}"
