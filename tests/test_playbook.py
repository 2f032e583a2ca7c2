"""The playbook: the shipped sample loads; mistakes name the key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadloop.policy.playbook import PlaybookError, load_playbook

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "playbook.toml"


def test_the_sample_playbook_covers_every_intent_and_objection() -> None:
    playbook = load_playbook(SAMPLE)
    assert playbook.group_of("objection") == "handle_objection"
    price = playbook.tactic("objection", "price")
    assert price.tactic != playbook.tactic("objection", None).tactic
    assert price.discount and "20%" in price.discount
    assert playbook.tactic("question").documents  # where its passages come from
    assert not playbook.tactic("unsubscribe").sends  # an empty template sends nothing
    text, language = playbook.tactic("question").template_for("de")
    assert language == "de" and "{answer}" in text
    assert playbook.bant.order == ["need", "timing", "budget", "authority"]
    assert playbook.bant.questions["budget"].text("es").startswith("¿")
    assert playbook.hand_back.undetected_replies == 2  # the seed default


def test_mistakes_name_the_key_and_line(tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    broken = text.replace("[tactics.referral]", '[tactics.referral]\ncolour = "blue"', 1)
    path = tmp_path / "playbook.toml"
    path.write_text(broken)
    with pytest.raises(PlaybookError) as error:
        load_playbook(path)
    message = str(error.value)
    assert "tactics.referral.colour: unknown key" in message
    assert "line " in message


def test_every_intent_needs_a_group(tmp_path: Path) -> None:
    text = SAMPLE.read_text().replace(
        'intents = ["interested", "question"]', 'intents = ["interested"]', 1
    )
    path = tmp_path / "playbook.toml"
    path.write_text(text)
    with pytest.raises(PlaybookError, match="no group for question"):
        load_playbook(path)
