"""The sentence-support check behind the guardrails (hand-written cases; the
labelled sets in tests/fixtures/guardrails score it as a whole)."""

from __future__ import annotations

import pytest

from leadloop.policy.support import check_sentence

PASSAGE = (
    "FleetTrack Team costs EUR 15 per vehicle per month. Data is hosted in Frankfurt. "
    "The driver app keeps positions for 72 hours without signal. "
    "Fuel savings of up to 12% were measured at Nordlicht Logistik. "
    "FleetTrack does not support on-premise installation. "
    "Pricing details: https://acme.example/pricing"
)


@pytest.mark.parametrize(
    "sentence",
    [
        "FleetTrack Team costs EUR 15 per vehicle per month.",
        "Your data is hosted in Frankfurt.",
        "The driver app keeps positions for three days without signal.",
        "Nordlicht Logistik measured fuel savings of up to 12%.",
        "FleetTrack does not support on-premise installation.",
        "You can see the pricing details at https://acme.example/pricing.",
    ],
)
def test_supported(sentence: str) -> None:
    verdict = check_sentence(sentence, [PASSAGE])
    assert verdict.supported, verdict.reasons


@pytest.mark.parametrize(
    ("sentence", "why"),
    [
        ("FleetTrack Team costs EUR 12 per vehicle per month.", "number 12"),
        ("Data is hosted in Dublin.", "name Dublin"),
        ("Nordlicht Logistik measured fuel savings of 12%.", "qualifier"),
        ("FleetTrack supports on-premise installation.", "negation"),
        ("FleetTrack Team costs EUR 15 per company per month.", "per company"),
        ("See https://acme-deals.example/pricing for details.", "link"),
        ("We can offer you a 20% discount on FleetTrack Team.", "number 20"),
        ("FleetTrack Team includes a free GPS tracker for every vehicle.", "offers"),
        ("FleetTrack is certified to ISO 27001 and SOC 2.", "name"),
    ],
)
def test_unsupported(sentence: str, why: str) -> None:
    verdict = check_sentence(sentence, [PASSAGE])
    assert not verdict.supported
    assert any(why in reason for reason in verdict.reasons), verdict.reasons


def test_a_sentence_citing_nothing_is_unsupported() -> None:
    assert not check_sentence("FleetTrack is great.", []).supported
