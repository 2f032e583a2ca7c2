"""Guardrails on whole drafts: each kind of bad draft is blocked with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadloop.brain.drafts import Sentence
from leadloop.knowledge.catalog import load_catalog
from leadloop.mail.tokens import TokenKeys
from leadloop.policy.guardrails import check_draft
from leadloop.policy.playbook import load_playbook

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CATALOG = load_catalog(EXAMPLES / "catalog.toml")
PLAYBOOK = load_playbook(EXAMPLES / "playbook.toml")
PASSAGES = {
    "security.md#hosting": "Acme FleetTrack runs in two data centres in Frankfurt am Main.",
    "case-studies.md#nordlicht": "Nordlicht Logistik cut fuel costs by 12% in six months.",
}
GOOD = Sentence(
    text="Acme FleetTrack runs in two data centres in Frankfurt am Main.",
    citations=["security.md#hosting"],
)
LINKS = ["https://acme.example/book", "https://acme.example/"]


def check(text: str, answer: list[Sentence] | None = None, **options: object) -> list[str]:
    return check_draft(
        text,
        [GOOD] if answer is None else answer,
        PASSAGES,
        catalog=CATALOG,
        playbook=PLAYBOOK,
        links=LINKS,
        **options,  # type: ignore[arg-type]
    ).failures


def draft(extra: str) -> str:
    return f"Hi Kim,\n\n{GOOD.text} {extra}\n\nBest regards,\nAcme Sales\n"


def test_a_grounded_draft_passes() -> None:
    text = draft(
        "Professional is EUR 25.00 per vehicle per month: https://acme.example/buy/professional "
        "and you can book a demo at https://acme.example/book"
    )
    assert check(text) == []


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("Professional is only EUR 19 per vehicle per month.", "price 19"),
        ("Details: https://cheap-fleet.example/offer", "link https://cheap-fleet.example/offer"),
        ("We can give you a 15% discount this week.", "percentage 15"),
        ("As a thank-you we add a free month on top.", "offers"),
        ("This is a no-brainer for your team.", "banned phrase"),
        ("By the way, dana@northwind.example said the same.", "another lead"),
    ],
)
def test_bad_drafts_are_blocked(extra: str, why: str) -> None:
    failures = check(draft(extra), forbidden=["dana@northwind.example", "CANARY-7731"])
    assert any(why in failure for failure in failures), failures


def test_an_unsupported_claim_is_blocked() -> None:
    claim = Sentence(
        text="Acme FleetTrack runs in three data centres in Dublin.",
        citations=["security.md#hosting"],
    )
    failures = check(draft(""), [claim])
    assert any(f.startswith("unsupported:") for f in failures)


def test_a_citation_of_an_unknown_passage_is_blocked() -> None:
    ghost = Sentence(text="Acme FleetTrack is SOC 2 certified.", citations=["security.md#soc2"])
    assert any("not given" in f for f in check(draft(""), [ghost]))


def test_a_canary_from_another_thread_is_blocked() -> None:
    failures = check(draft("Reference CANARY-7731."), forbidden=["CANARY-7731"])
    assert any("another lead" in f for f in failures)


def test_a_conversation_marker_is_blocked() -> None:
    marker = TokenKeys.from_secret("k1:" + "ab" * 16).canary(42)
    failures = check(draft(f"As noted in {marker}, we are glad to help."))
    assert any(f"conversation marker ({marker})" in f for f in failures)


def test_an_uncited_statement_is_blocked_and_a_question_is_not() -> None:
    said = Sentence(text="Acme FleetTrack is the market leader.", citations=[])
    asked = Sentence(text="How many vehicles do you run?", citations=[])
    assert any("without citing" in f for f in check(draft(""), [GOOD, said]))
    assert check(draft(""), [GOOD, asked]) == []


def test_the_sellers_own_product_names_need_no_passage() -> None:
    named = Sentence(
        text="Professional runs in two data centres in Frankfurt am Main.",
        citations=["security.md#hosting"],
    )
    assert check(draft(""), [named]) == []
    other = Sentence(
        text="Today Fleetio runs in two data centres in Frankfurt am Main.",
        citations=["security.md#hosting"],
    )
    assert any("name Fleetio" in f for f in check(draft(""), [other]))
