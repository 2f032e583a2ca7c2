"""The seed's qualification rules as tables: ICP bands, BANT fitment,
purchase interest, each hand-off rule and seller routing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from leadloop.config import HandoffConfig, IcpCriterion
from leadloop.policy.qualify import (
    band_of,
    bant_fitment,
    handoff,
    icp_fit,
    pick_seller,
    purchase_interest,
)

CRITERIA = [
    IcpCriterion.model_validate({"field": "industry", "in": ["Logistics", "Retail"], "weight": 4}),
    IcpCriterion(field="size", min=50, max=5000, weight=3),
    IcpCriterion.model_validate({"field": "country", "in": ["DE", "AT", "CH"], "weight": 2}),
    IcpCriterion(field="title", keywords=["fleet", "logistics"], weight=1),
]


@pytest.mark.parametrize(
    ("score", "band"),
    [(1.0, "high"), (0.71, "high"), (0.7, "moderate"), (0.5, "moderate"), (0.49, "low"),
     (0.0, "low")],
)  # fmt: skip
def test_icp_bands(score: float, band: str) -> None:
    assert band_of(score) == band


@pytest.mark.parametrize(
    ("lead", "account", "score", "band"),
    [
        # all four: 10/10
        ({"country": "DE", "title": "Head of Fleet"}, {"industry": "logistics", "size": 140},
         1.0, "high"),
        # industry + size: 7/10 is not above 70 %
        ({"country": "FR", "title": "CFO"}, {"industry": "Retail", "size": 900}, 0.7, "moderate"),
        # industry + country: 6/10
        ({"country": "AT", "title": "CEO"}, {"industry": "Logistics", "size": 12}, 0.6, "moderate"),
        # size + country: 5/10
        ({"country": "CH"}, {"industry": "Banking", "size": 60}, 0.5, "moderate"),
        # country + title: 3/10
        ({"country": "DE", "title": "Fleet manager"}, {"industry": "Banking"}, 0.3, "low"),
        # nothing known: every criterion missed
        ({}, None, 0.0, "low"),
    ],
)  # fmt: skip
def test_icp_fit_is_the_weighted_share_met(
    lead: dict[str, Any], account: dict[str, Any] | None, score: float, band: str
) -> None:
    fit = icp_fit(lead, account, CRITERIA)
    assert (fit.score, fit.band) == (score, band)
    assert len(fit.matched) + len(fit.missed) == 4
    assert fit.band in fit.reason


def test_icp_reasons_name_the_criteria_and_values() -> None:
    fit = icp_fit({"country": "FR"}, {"industry": "Retail", "size": 10}, CRITERIA)
    assert fit.matched == ["industry in Logistics, Retail (Retail)"]
    assert (
        "size 50-5000 (10)" in fit.missed
        and "title mentions fleet / logistics (unknown)" in fit.missed
    )


def test_custom_fields_come_from_the_lead_then_the_account() -> None:
    criterion = IcpCriterion(field="custom.fleet_size", min=20, weight=1)
    assert icp_fit({"custom": {"fleet_size": "40"}}, None, [criterion]).band == "high"
    assert icp_fit({}, {"custom": {"fleet_size": 25}}, [criterion]).band == "high"
    assert icp_fit({"custom": {"fleet_size": "a few"}}, None, [criterion]).band == "low"


def test_without_a_profile_fit_is_unknown() -> None:
    assert icp_fit({"country": "DE"}, None, []).band == "unknown"


AT = datetime(2026, 3, 2, 12, tzinfo=UTC)


def bant(**met: str) -> dict[str, Any]:
    return {k: {"status": v, "quote": f"{k} words"} for k, v in met.items()}


@pytest.mark.parametrize(
    ("replies", "level", "met"),
    [
        ([], "low", []),
        ([bant(need="met")], "low", ["need"]),
        ([bant(need="met"), bant(timing="met")], "medium", ["need", "timing"]),
        ([bant(need="met", budget="met", authority="met")], "high",
         ["need", "budget", "authority"]),
        ([bant(need="met", timing="met", budget="met", authority="met")], "high",
         ["need", "timing", "budget", "authority"]),
        # A later reply takes an element back: budget met, then not met.
        ([bant(need="met", budget="met"), bant(budget="not_met")], "low", ["need"]),
        # "unknown" in a later reply changes nothing.
        ([bant(need="met", timing="met"), bant(need="unknown")], "medium", ["need", "timing"]),
    ],
)  # fmt: skip
def test_bant_fitment_two_of_four_is_medium(
    replies: list[dict[str, Any]], level: str, met: list[str]
) -> None:
    fit = bant_fitment((AT, i, r) for i, r in enumerate(replies, 1))
    assert (fit.level, fit.met) == (level, met)
    for element in met:
        assert fit.proofs[element].quote == f"{element} words" and fit.proofs[element].at == AT


def test_purchase_interest_is_the_latest_detected_level() -> None:
    seen = purchase_interest(
        [
            {"interest": "positive_low", "signals": ["pricing_question"]},
            {"interest": "positive_high", "signals": ["demo_or_trial", "pricing_question"]},
            {"interest": "undetected", "signals": []},
        ]
    )
    assert seen.level == "positive_high" and seen.signals == ["pricing_question", "demo_or_trial"]
    assert purchase_interest([{"intent": "purchase_intent"}]).purchase_intent
    gone = purchase_interest(
        [{"intent": "purchase_intent"}, {"intent": "not_interested", "interest": "negative_high"}]
    )
    assert gone.negative and not gone.purchase_intent


RULES = HandoffConfig()


@pytest.mark.parametrize(
    ("understood", "bant_replies", "ended", "outcome"),
    [
        # positive interest and BANT medium: a seller
        ([{"interest": "positive_medium"}], [bant(need="met", timing="met")], False, "qualified"),
        # a purchase intent counts as positive
        ([{"intent": "purchase_intent", "interest": "positive_low"}],
         [bant(need="met", budget="met")], False, "qualified"),
        # positive but BANT low: not yet
        ([{"interest": "positive_high"}], [bant(need="met")], False, "continue"),
        # a low positive level is not positive by default
        ([{"interest": "positive_low"}], [bant(need="met", timing="met")], False, "continue"),
        # negative interest: the supervisor
        ([{"interest": "negative_medium"}], [bant(need="met", timing="met")], False,
         "disqualified"),
        # the conversation ends with BANT low: the supervisor
        ([{"interest": "undetected"}], [bant(need="met")], True, "disqualified"),
        # ends with BANT medium but no positive interest: the owner
        ([{"interest": "undetected"}], [bant(need="met", timing="met")], True, "handed_back"),
    ],
)  # fmt: skip
def test_hand_off_rules(
    understood: list[dict[str, Any]], bant_replies: list[dict[str, Any]], ended: bool, outcome: str
) -> None:
    result = handoff(
        purchase_interest(understood),
        bant_fitment((AT, i, r) for i, r in enumerate(bant_replies, 1)),
        RULES,
        conversation_ended=ended,
    )
    assert result.outcome == outcome
    assert any("BANT" in r for r in result.reasons)


def test_bant_minimum_is_configurable() -> None:
    strict = HandoffConfig(bant_minimum="high")
    medium = bant_fitment([(AT, 1, bant(need="met", timing="met"))])
    assert handoff(purchase_interest([{"interest": "positive_high"}]), medium, strict).outcome == (
        "continue"
    )


@pytest.mark.parametrize(
    ("owner", "turn", "seller"),
    [
        ("Kim@Acme.example", 0, "kim@acme.example"),  # the owner first
        ("bob@acme.example", 0, "ann@acme.example"),  # an owner away: the team
        (None, 0, "ann@acme.example"),
        (None, 1, "cem@acme.example"),  # bob is away: skipped
        (None, 2, "ann@acme.example"),
    ],
)
def test_sellers_owner_first_then_round_robin_skipping_away(
    owner: str | None, turn: int, seller: str
) -> None:
    rules = HandoffConfig(
        sellers=["ann@acme.example", "bob@acme.example", "cem@acme.example"],
        away=["bob@acme.example"],
    )
    assert pick_seller(owner, rules, turn) == seller
    assert pick_seller(None, HandoffConfig(), 0) is None
