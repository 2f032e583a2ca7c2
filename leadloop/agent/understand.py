"""The understand stage: what did the buyer say?

For a buyer's mail (a reply, or a hand-raiser's first mail) the configured
brain reads the message and its verdict is kept on the row
(``result["understanding"]``, ``result["intent"]``) and in a
``lead.understood`` event with the reasons (the rules that fired, the
model's score), so a lead's timeline says why.  Deciding what to do about it
is the next stage's business; nothing here acts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import func, select

from leadloop.agent.alerts import raise_alert
from leadloop.agent.pipeline import Next, Outcome, RetryAt, Stage, StageContext
from leadloop.brain.base import Brain
from leadloop.brain.openai_brain import BrainPaused
from leadloop.mail.parse import ParseCache
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import BrainUsage, InboundMessage

BUYER_KINDS = frozenset({"reply", "new_inbound"})
MIN_WAIT = timedelta(minutes=5)


class UnderstandStage:
    name = "understand"

    def __init__(self, brain: Brain, parses: ParseCache, max_size: int) -> None:
        self.brain = brain
        self.parses = parses
        self.max_size = max_size

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        if item.kind not in BUYER_KINDS:
            return Next(reasons=[f"understand: not a buyer's mail ({item.kind}); nothing to read"])
        parsed = self.parses.parse(item.id, item.raw, max_size=self.max_size)
        received = (parsed.date or item.received_at).date()
        now = ctx.clock.now()
        try:
            understood = await self.brain.classify(
                parsed.body_text, subject=parsed.subject, received=received, headers=parsed.headers
            )
        except BrainPaused as exc:
            # The configuration says to pause when the budget is spent: the
            # mail waits for the next budget day; the operator hears once.
            if exc.alert:
                raise_alert(ctx.session, "alert.brain_budget", exc.alert, actor="brain", now=now)
            return RetryAt(delay=max(exc.until - now, MIN_WAIT), reason=str(exc))
        usage = understood.usage
        if usage is not None and usage.calls:
            ctx.session.add(
                BrainUsage(
                    at=now,
                    brain=usage.brain,
                    model=usage.model,
                    lead_id=item.lead_id,
                    inbound_id=item.id,
                    calls=usage.calls,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    outcome=usage.outcome,
                )
            )
        if usage is not None and usage.alert:
            raise_alert(ctx.session, "alert.brain_budget", usage.alert, actor="brain", now=now)
        summary = understood.summary()
        reasons = [
            f"understand ({self.brain.name}): {understood.intent}"
            f" (confidence {understood.confidence:.2f})",
            *understood.reasons,
        ]
        repo.add_event(
            ctx.session,
            "lead.understood",
            actor=f"brain.{self.brain.name}",
            now=now,
            lead_id=item.lead_id,
            inbound_id=item.id,
            reasons=reasons,
            data=summary,
        )
        return Next(
            reasons=reasons[:1],
            updates={"result": {"intent": understood.intent, "understanding": summary}},
        )


async def seed_budget(db: Database, stages: Sequence[Stage], now: datetime) -> None:
    """At start: tell a budgeted brain what today's calls already spent."""
    for stage in stages:
        brain = getattr(stage, "brain", None)
        if not isinstance(stage, UnderstandStage) or not hasattr(brain, "set_spent_today"):
            continue
        start = datetime.combine(now.date(), time(), UTC)
        async with db.sessions() as session:
            total = await session.scalar(
                select(
                    func.coalesce(
                        func.sum(BrainUsage.prompt_tokens + BrainUsage.completion_tokens), 0
                    )
                ).where(BrainUsage.at >= start, BrainUsage.brain == stage.brain.name)
            )
        brain.set_spent_today(int(total or 0))  # type: ignore[union-attr]
