"""Policy: what to do about one understood reply.

A pure function of the understanding, the lead's conversation so far, the
playbook, the catalog and what the knowledge can answer.  Deterministic, and
every decision carries its reasons (the rule that fired), so "why did it do
that" has an answer.  The brain never picks the action, the recipients, the
links or the prices: this does, from configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from leadloop.brain.understanding import Understanding
from leadloop.knowledge.catalog import Catalog, Product
from leadloop.policy.playbook import Playbook
from leadloop.policy.qualify import Handoff
from leadloop.policy.requests import approved_percents, outside_policy

# What the act stage does with a decision.
REPLY = "reply"  # write from the tactic and send
NOTHING = "nothing"  # send nothing, change nothing
ESCALATE = "escalate"  # no reply; pause the lead; tell the supervisor
HAND_BACK = "hand_back"  # no reply; the lead goes back to its owner
OPT_OUT = "opt_out"  # no reply; suppress the address; opted_out
NURTURE = "nurture"  # a short acknowledgement; nurture until the date
QUALIFY = "qualify"  # qualified: to a seller, a warm introduction to the lead
DISQUALIFY = "disqualify"  # no reply; disqualified; a note to the supervisor

BANT_ORDER_DEFAULT = ("need", "timing", "budget", "authority")


@dataclass(frozen=True)
class Conversation:
    """What policy needs to know of the lead's conversation so far."""

    bant: dict[str, str] = field(default_factory=dict)
    """Each BANT element's best status so far (met / not_met / unknown)."""
    undetected: int = 0
    """Replies in a row whose intent was ``other`` before this one."""
    product_sku: str | None = None
    """The product the lead's cadence or earlier mail was about."""


@dataclass(frozen=True)
class Decision:
    action: str
    intent: str
    reasons: list[str]
    tactic: str | None = None
    objection: str | None = None
    language: str = "en"
    state: str | None = None
    """The lead's state after acting (None: unchanged)."""
    escalation: str | None = None
    bant_element: str | None = None
    product: str | None = None
    """The catalog sku whose name, price and link the reply may use."""
    until: date | None = None
    record_referrals: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "intent": self.intent,
            "tactic": self.tactic,
            "objection": self.objection,
            "language": self.language,
            "state": self.state,
            "escalation": self.escalation,
            "bant_element": self.bant_element,
            "product": self.product,
            "until": self.until.isoformat() if self.until else None,
            "record_referrals": self.record_referrals,
            "reasons": list(self.reasons),
        }


def decide(
    understood: Understanding,
    text: str,
    conversation: Conversation,
    playbook: Playbook,
    catalog: Catalog,
    *,
    answerable: bool = True,
    knowledge_languages: frozenset[str] = frozenset({"en"}),
    handoff: Handoff | None = None,
) -> Decision:
    """The action for *understood* (the buyer's new *text*).

    *answerable*: whether the knowledge holds passages for a question (the
    caller searched); a question it cannot answer goes back to the owner.
    *handoff*: the hand-off rules applied to the whole conversation with this
    reply (:func:`leadloop.policy.qualify.handoff`)."""
    intent = understood.intent
    language = _language(understood.language, playbook, knowledge_languages)
    escalation = _escalation(understood, text, playbook)
    base: dict[str, Any] = {"intent": intent, "language": language}
    if escalation is not None:
        return Decision(
            ESCALATE,
            reasons=[f"escalation: {escalation}"],
            state="paused",
            escalation=escalation,
            **base,
        )
    if intent == "unsubscribe":
        return Decision(
            OPT_OUT, reasons=["the buyer asked not to be mailed"], state="opted_out", **base
        )
    if intent == "out_of_office":
        return Decision(NOTHING, reasons=["an absence notice: nothing to answer"], **base)
    if handoff is not None and handoff.outcome == "disqualified" and intent in _NO_ACTION:
        # A concern gets its tactic and a decline its polite close; a
        # negative reply with nothing else to act on closes the lead.
        return Decision(DISQUALIFY, reasons=handoff.reasons, state="disqualified", **base)
    if intent == "other":
        if conversation.undetected + 1 >= playbook.hand_back.undetected_replies:
            return Decision(
                HAND_BACK,
                reasons=[
                    f"{conversation.undetected + 1} replies in a row without a clear intent "
                    f"(hand_back.undetected_replies = {playbook.hand_back.undetected_replies})"
                ],
                state="handed_back",
                **base,
            )
        tactic = playbook.tactic("other")
        return Decision(
            REPLY if tactic.sends else NOTHING,
            reasons=["intent unclear: one short clarifying question"],
            tactic=tactic.tactic,
            **base,
        )
    objection = _objection(understood)
    tactic = playbook.tactic(intent, objection)
    product = _product(text, conversation, catalog)
    decision = {
        **base,
        "tactic": tactic.tactic,
        "objection": objection,
        "product": product.sku if product else None,
    }
    if intent == "objection" and objection == "timing" and understood.timing:
        until = min(t.date for t in understood.timing)
        return Decision(
            NURTURE,
            reasons=[f"timing objection: come back on {until.isoformat()}"],
            state="nurture",
            until=until,
            **decision,
        )
    if intent == "not_interested":
        return Decision(
            REPLY if tactic.sends else NOTHING,
            reasons=["a decline without a reason: close politely"],
            state="disqualified",
            **decision,
        )
    if handoff is not None and handoff.outcome == "qualified" and intent in _QUALIFYING:
        return Decision(QUALIFY, reasons=handoff.reasons, state="qualified", **decision)
    if intent == "question" and not answerable:
        return Decision(
            HAND_BACK,
            reasons=["the knowledge holds no answer to the question: over to the owner"],
            state="handed_back",
            **decision,
        )
    if intent == "referral":
        return Decision(
            REPLY if tactic.sends else NOTHING,
            reasons=["wrong person: the contact is recorded for the owner; thank the sender"],
            record_referrals=True,
            **decision,
        )
    if intent == "purchase_intent" and product is None:
        return Decision(
            HAND_BACK,
            reasons=["wants to buy, but no catalog product is clear: over to the owner"],
            state="handed_back",
            **decision,
        )
    element = _next_bant(conversation, understood, playbook) if intent in _ASKS_BANT else None
    reasons = [f"{intent}: tactic {tactic.tactic}"]
    if element:
        reasons.append(f"next missing BANT element: {element}")
    return Decision(
        REPLY if tactic.sends else NOTHING, reasons=reasons, bant_element=element, **decision
    )


_CALM_ENOUGH = frozenset({"objection", "not_interested", "unsubscribe", "out_of_office"})
_QUALIFYING = frozenset({"interested", "question", "meeting_request", "purchase_intent"})
_NO_ACTION = frozenset({"other", "referral"})
_ASKS_BANT = frozenset({"interested", "question", "objection"})


def _language(buyer: str | None, playbook: Playbook, knowledge_languages: frozenset[str]) -> str:
    """The buyer's language when the playbook writes it and knowledge exists in
    it, else the default."""
    if buyer and buyer in playbook.voice.languages and buyer in knowledge_languages:
        return buyer
    return playbook.voice.default_language


def _escalation(understood: Understanding, text: str, playbook: Playbook) -> str | None:
    # A request for a person and instructions to an AI always escalate
    # (DESIGN.md); the playbook's conditions add to them.
    if understood.injection:
        return "injection"
    if understood.intent == "human_request":
        return "human_request"
    # Asks no reply may grant, whatever the brain made of the mail.
    discount = playbook.tactic("objection", "price").discount
    if asked := outside_policy(text, approved_percents(discount)):
        return f"request_outside_policy ({asked})"
    rules = playbook.escalation
    conditions = set(rules.conditions)
    lowered = text.lower()
    if "legal_or_security_topic" in conditions:
        for term in rules.legal_or_security_terms:
            if term.lower() in lowered:
                return f"legal_or_security_topic ({term})"
    # A concern is negative by nature and has its tactic; negative sentiment
    # escalates the other turns (an angry question, an upset "interested").
    if (
        "negative_sentiment" in conditions
        and understood.sentiment == "negative"
        and understood.intent not in _CALM_ENOUGH
    ):
        return "negative_sentiment"
    if "low_confidence" in conditions and understood.confidence < rules.low_confidence_below:
        return f"low_confidence ({understood.confidence:.2f} < {rules.low_confidence_below})"
    return None


def _objection(understood: Understanding) -> str | None:
    if understood.intent != "objection" or not understood.objections:
        return None
    return understood.objections[0]


def _product(text: str, conversation: Conversation, catalog: Catalog) -> Product | None:
    mentioned = catalog.mentioned(text)
    if mentioned:
        return mentioned[0]
    if conversation.product_sku:
        return catalog.by_sku(conversation.product_sku)
    return None


def _next_bant(
    conversation: Conversation, understood: Understanding, playbook: Playbook
) -> str | None:
    """The first BANT element, in the playbook's order, not yet met (this
    reply's evidence counts); one question at a time."""
    known = dict(conversation.bant)
    for element in ("budget", "authority", "need", "timing"):
        status = getattr(understood.bant, element).status
        if status != "unknown":
            known[element] = status
    for element in playbook.bant.order or BANT_ORDER_DEFAULT:
        if known.get(element, "unknown") == "unknown":
            return element
    return None
