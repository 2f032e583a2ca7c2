"""The understand stage: what did the buyer say?

For a buyer's mail (a reply, or a hand-raiser's first mail) the configured
brain reads the message and its verdict is kept on the row
(``result["understanding"]``, ``result["intent"]``) and in a
``lead.understood`` event with the reasons (the rules that fired, the
model's score), so a lead's timeline says why.  Deciding what to do about it
is the next stage's business; nothing here acts.
"""

from __future__ import annotations

from leadloop.agent.pipeline import Next, Outcome, StageContext
from leadloop.brain.base import Brain
from leadloop.mail.parse import ParseCache
from leadloop.storage import repo
from leadloop.storage.models import InboundMessage

BUYER_KINDS = frozenset({"reply", "new_inbound"})


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
        understood = await self.brain.classify(
            parsed.body_text, subject=parsed.subject, received=received, headers=parsed.headers
        )
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
            now=ctx.clock.now(),
            lead_id=item.lead_id,
            inbound_id=item.id,
            reasons=reasons,
            data=summary,
        )
        return Next(
            reasons=reasons[:1],
            updates={"result": {"intent": understood.intent, "understanding": summary}},
        )
