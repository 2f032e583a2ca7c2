"""Policy decisions: an action for every intent, from the sample playbook and
catalog, each with its reasons."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from leadloop.brain.understanding import Bant, Evidence, Timing, Understanding
from leadloop.knowledge.catalog import load_catalog
from leadloop.policy.decide import (
    ESCALATE,
    HAND_BACK,
    NOTHING,
    NURTURE,
    OPT_OUT,
    REPLY,
    Conversation,
    Decision,
    decide,
)
from leadloop.policy.playbook import load_playbook

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLAYBOOK = load_playbook(EXAMPLES / "playbook.toml")
CATALOG = load_catalog(EXAMPLES / "catalog.toml")
LANGUAGES = frozenset({"en", "de", "fr", "es"})


def understood(intent: str, **fields: Any) -> Understanding:
    return Understanding(intent=intent, confidence=fields.pop("confidence", 0.9), **fields)


def run(
    got: Understanding,
    text: str = "Thanks.",
    conversation: Conversation | None = None,
    **options: Any,
) -> Decision:
    return decide(
        got,
        text,
        conversation or Conversation(),
        PLAYBOOK,
        CATALOG,
        knowledge_languages=options.pop("languages", LANGUAGES),
        **options,
    )


@pytest.mark.parametrize(
    ("intent", "fields", "action", "state"),
    [
        ("interested", {}, REPLY, None),
        ("question", {}, REPLY, None),
        ("objection", {"objections": ["price"]}, REPLY, None),
        ("meeting_request", {}, REPLY, None),
        ("not_interested", {}, REPLY, "disqualified"),
        ("unsubscribe", {}, OPT_OUT, "opted_out"),
        ("human_request", {"human_request": True}, ESCALATE, "paused"),
        ("referral", {}, REPLY, None),
        ("out_of_office", {}, NOTHING, None),
        ("other", {}, REPLY, None),
        ("other", {"injection": True}, ESCALATE, "paused"),
    ],
)
def test_every_intent_has_an_action(
    intent: str, fields: dict[str, Any], action: str, state: str | None
) -> None:
    decision = run(understood(intent, **fields))
    assert (decision.action, decision.state) == (action, state)
    assert decision.reasons


def test_purchase_intent_uses_the_product_discussed() -> None:
    decision = run(
        understood("purchase_intent", purchase_intent=True),
        "Please send the order link for Acme FleetTrack Professional, 40 vehicles.",
    )
    assert (decision.action, decision.product) == (REPLY, "FT-PRO")
    # Nothing in the mail or the conversation names a product: the owner decides.
    unclear = run(understood("purchase_intent", purchase_intent=True), "Let's buy it.")
    assert (unclear.action, unclear.state) == (HAND_BACK, "handed_back")
    known = run(understood("purchase_intent"), "Let's buy it.", Conversation(product_sku="FT-ESS"))
    assert known.product == "FT-ESS"


def test_the_price_objection_gets_its_own_tactic() -> None:
    price = run(understood("objection", objections=["price"]))
    risk = run(understood("objection", objections=["risk"]))
    assert price.tactic == PLAYBOOK.tactic("objection", "price").tactic
    assert price.tactic != risk.tactic
    assert price.objection == "price"


def test_a_timing_objection_with_a_date_nurtures() -> None:
    decision = run(
        understood(
            "objection",
            objections=["timing"],
            timing=[Timing(phrase="after Q3", date=date(2027, 10, 1))],
        )
    )
    assert (decision.action, decision.state, decision.until) == (
        NURTURE,
        "nurture",
        date(2027, 10, 1),
    )


def test_an_unanswerable_question_goes_back_to_the_owner() -> None:
    decision = run(understood("question"), answerable=False)
    assert (decision.action, decision.state) == (HAND_BACK, "handed_back")


def test_bant_is_asked_one_element_at_a_time_in_order() -> None:
    first = run(understood("interested"))
    assert first.bant_element == "need"
    told = understood(
        "interested",
        bant=Bant(need=Evidence(status="met", quote="we run 40 vans")),
    )
    assert run(told).bant_element == "timing"
    known = Conversation(bant={"need": "met", "timing": "met", "budget": "not_met"})
    assert run(understood("question"), conversation=known).bant_element == "authority"
    done = Conversation(bant=dict.fromkeys(("need", "timing", "budget", "authority"), "met"))
    assert run(understood("question"), conversation=done).bant_element is None


def test_unclear_replies_hand_back_after_n() -> None:
    # The seed's default: two unclear replies in a row go back to the owner.
    assert run(understood("other"), conversation=Conversation(undetected=0)).action == REPLY
    second = run(understood("other"), conversation=Conversation(undetected=1))
    assert (second.action, second.state) == (HAND_BACK, "handed_back")


@pytest.mark.parametrize(
    ("fields", "text", "why"),
    [
        ({"sentiment": "negative"}, "This is useless and a waste of my time.", "negative"),
        ({"confidence": 0.2}, "Hmm.", "low_confidence"),
        ({}, "Our legal department needs contract changes first.", "legal_or_security"),
    ],
)
def test_risk_conditions_escalate(fields: dict[str, Any], text: str, why: str) -> None:
    decision = run(understood("question", **fields), text)
    assert decision.action == ESCALATE and decision.escalation
    assert decision.escalation.startswith(why)


def test_the_reply_language_follows_the_buyer_when_knowledge_exists() -> None:
    german = understood("question", language="de")
    assert run(german).language == "de"
    assert run(german, languages=frozenset({"en"})).language == "en"
    assert run(understood("question", language=None)).language == "en"
