"""The listed stages a stored message moves through, and the loop that runs them.

Each stage reads the row and returns an :data:`Outcome`; the runner commits
that result (the row's new stage, the event with its reasons) for that one
message before the next stage runs, so a crash resumes where it stopped.
The one catch-all ``except Exception`` of the pipeline lives in
:meth:`Pipeline.process`: it counts the failure and, at the configured
number of attempts, quarantines that message with its error.  The loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.clock import Clock
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import InboundMessage

log = logging.getLogger("leadloop.agent.pipeline")

STAGE_NAMES = ("screen", "thread", "understand", "decide", "act")
DONE_STAGE = "done"


@dataclass(frozen=True)
class Next:
    """Pass the message to the next stage."""

    reasons: list[str] = field(default_factory=list)
    updates: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """Nothing more to do for this message (a bounce handled, list mail ignored)."""

    reasons: list[str] = field(default_factory=list)
    updates: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetryAt:
    """Run this stage again later (a dependency is not ready)."""

    delay: timedelta
    reason: str


@dataclass(frozen=True)
class Quarantine:
    """Put the message aside for a person, with the reason."""

    reason: str


Outcome = Next | Done | RetryAt | Quarantine

# Columns a stage may set on the message through ``updates``.
UPDATABLE = frozenset({"kind", "lead_id", "thread_id", "result"})


@dataclass
class StageContext:
    session: AsyncSession
    clock: Clock


class Stage(Protocol):
    name: str

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        """Decide about *item*; return, do not raise, what happens next.

        Changes made through ``ctx.session`` commit together with the outcome.
        """
        ...


class PassThrough:
    """A stage whose issue has not landed yet: it passes the message on and
    records that it did."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        return Next(reasons=[f"{self.name}: no {self.name} rules yet; passed on"])


def default_stages() -> list[Stage]:
    return [PassThrough(name) for name in STAGE_NAMES]


@dataclass
class RunStats:
    processed: int = 0
    done: int = 0
    retried: int = 0
    quarantined: int = 0


class Pipeline:
    """Claims stored messages and runs them through the stages."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        owner: str,
        stages: Sequence[Stage] | None = None,
        max_attempts: int = 3,
        retry_backoff: timedelta = timedelta(seconds=30),
        lease: timedelta = timedelta(minutes=10),
    ) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner
        self.stages = list(stages) if stages is not None else default_stages()
        self.names = [stage.name for stage in self.stages]
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.lease = lease
        self.on_claim: Callable[[], None] | None = None
        """Called as each message is claimed (the daemon's heartbeat)."""

    async def recover(self, *, all_claims: bool, keep: Collection[str] = ()) -> int:
        """Return rows left claimed by a crash to pending with attempts + 1
        (quarantining those that reach the limit): at start, and (sharing a
        PostgreSQL database) for daemons that are gone, never those in *keep*."""
        now = self.clock.now()
        async with self.db.transaction() as session:
            rows = await repo.stale_claims(session, now, all_claims=all_claims, keep=keep)
            for row in rows:
                error = f"interrupted in stage {row.stage} (claimed by {row.claimed_by})"
                self._count_failure(session, row, error)
        if rows:
            log.warning("recovered %d message(s) left in work by a stopped process", len(rows))
        return len(rows)

    async def run_pending(self, stop: asyncio.Event | None = None) -> RunStats:
        """Process every message that is due now; return when none is left
        (or, with *stop* set, after the message in hand).

        Messages are claimed one at a time, so a claim left by a crash always
        names the message that was in work: recovery counts the failure on it
        alone, and one message that kills the process cannot drag others into
        quarantine with it.
        """
        stats = RunStats()
        while stop is None or not stop.is_set():
            async with self.db.transaction() as session:
                ids = await repo.claim_inbound(
                    session, self.owner, self.clock.now(), self.lease, limit=1
                )
            if not ids:
                break
            if self.on_claim is not None:
                self.on_claim()
            status = await self.process(ids[0])
            stats.processed += 1
            if status == repo.DONE:
                stats.done += 1
            elif status == repo.QUARANTINED:
                stats.quarantined += 1
            else:
                stats.retried += 1
        return stats

    async def process(self, inbound_id: int) -> str:
        """Run one claimed message through its remaining stages; return its status."""
        while True:
            try:
                async with self.db.transaction() as session:
                    row = await session.get(InboundMessage, inbound_id, with_for_update=True)
                    if row is None or row.status != repo.CLAIMED or row.claimed_by != self.owner:
                        return row.status if row is not None else repo.DONE
                    if row.stage == DONE_STAGE:
                        self._finish(row)
                        return row.status
                    stage = self.stages[self.names.index(row.stage)]
                    outcome = await stage.process(row, StageContext(session, self.clock))
                    self._apply(session, row, stage.name, outcome)
                    if row.status != repo.CLAIMED:
                        return row.status
            except Exception as exc:
                log.exception("message=%d failed in the pipeline", inbound_id)
                error = "".join(traceback.format_exception_only(exc)).strip()
                async with self.db.transaction() as session:
                    row = await session.get(InboundMessage, inbound_id, with_for_update=True)
                    if row is None:
                        raise
                    self._count_failure(session, row, error)
                    return row.status

    def _apply(
        self, session: AsyncSession, row: InboundMessage, stage: str, outcome: Outcome
    ) -> None:
        now = self.clock.now()
        if isinstance(outcome, Next | Done):
            self._update(row, outcome.updates)
            repo.add_event(
                session,
                f"stage.{stage}",
                actor=f"pipeline.{stage}",
                now=now,
                inbound_id=row.id,
                lead_id=row.lead_id,
                reasons=outcome.reasons,
            )
            position = self.names.index(stage) + 1
            row.stage = (
                DONE_STAGE
                if isinstance(outcome, Done) or position == len(self.names)
                else self.names[position]
            )
            if row.stage == DONE_STAGE:
                self._finish(row)
        elif isinstance(outcome, RetryAt):
            row.status = repo.PENDING
            row.not_before = now + outcome.delay
            row.claimed_by = row.claimed_until = None
            repo.add_event(
                session,
                f"stage.{stage}.retry",
                actor=f"pipeline.{stage}",
                now=now,
                inbound_id=row.id,
                reasons=[outcome.reason],
            )
        else:
            self._quarantine(session, row, outcome.reason)

    def _update(self, row: InboundMessage, updates: dict[str, Any]) -> None:
        unknown = set(updates) - UPDATABLE
        if unknown:
            raise ValueError(f"a stage may not set {sorted(unknown)}")
        for key, value in updates.items():
            if key == "result":
                row.result = {**row.result, **value}
            else:
                setattr(row, key, value)

    def _finish(self, row: InboundMessage) -> None:
        row.stage = DONE_STAGE
        row.status = repo.DONE
        row.finished_at = self.clock.now()
        row.claimed_by = row.claimed_until = None

    def _count_failure(self, session: AsyncSession, row: InboundMessage, error: str) -> None:
        now = self.clock.now()
        row.attempts += 1
        row.last_error = error
        row.claimed_by = row.claimed_until = None
        if row.attempts >= self.max_attempts:
            self._quarantine(
                session, row, f"failed {row.attempts} times in stage {row.stage}: {error}"
            )
            return
        row.status = repo.PENDING
        row.not_before = now + self.retry_backoff * 2 ** (row.attempts - 1)
        repo.add_event(
            session,
            "inbound.failed",
            actor="pipeline",
            now=now,
            inbound_id=row.id,
            reasons=[error],
            data={"attempts": row.attempts, "stage": row.stage},
        )

    def _quarantine(self, session: AsyncSession, row: InboundMessage, reason: str) -> None:
        row.status = repo.QUARANTINED
        row.last_error = reason if row.last_error is None else row.last_error
        row.claimed_by = row.claimed_until = None
        repo.add_event(
            session,
            "inbound.quarantined",
            actor="pipeline",
            now=self.clock.now(),
            inbound_id=row.id,
            reasons=[reason],
            data={"stage": row.stage},
        )
        log.error("message=%d quarantined: %s", row.id, reason)


async def retry_quarantined(
    db: Database, clock: Clock, inbound_id: int, *, actor: str
) -> InboundMessage:
    """Put a quarantined message back in line, attempts reset, at the stage it failed in."""
    async with db.transaction() as session:
        row = await session.get(InboundMessage, inbound_id, with_for_update=True)
        if row is None:
            raise LookupError(f"no message {inbound_id}")
        if row.status != repo.QUARANTINED:
            raise ValueError(f"message {inbound_id} is {row.status}, not quarantined")
        row.status = repo.PENDING
        row.attempts = 0
        row.not_before = clock.now()
        repo.add_event(
            session,
            "inbound.retry",
            actor=actor,
            now=clock.now(),
            inbound_id=row.id,
            reasons=[f"retry requested; last error: {row.last_error}"],
        )
        return row
