"""The local writer: the tactic's template with quoted, cited passages, in the
buyer's language, and every answer sentence passes the support check."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadloop.knowledge.index import KnowledgeIndex
from leadloop.policy.playbook import load_playbook
from leadloop.policy.support import check_sentence
from leadloop.policy.write import write_reply

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLAYBOOK = load_playbook(EXAMPLES / "playbook.toml")
SLOTS = {
    "first_name": "Kim",
    "sender_name": "Acme Sales",
    "product": "Acme FleetTrack",
    "booking_link": "https://acme.example/book",
}


@pytest.fixture(scope="module")
def index() -> KnowledgeIndex:
    return KnowledgeIndex([EXAMPLES / "knowledge"])


@pytest.mark.parametrize(
    ("question", "language", "word"),
    [
        ("Where is our data hosted, and are you ISO 27001 certified?", "en", "Frankfurt"),
        ("Do you have a connector for SAP?", "en", "SAP"),
        ("Wie viel kostet Professional pro Fahrzeug?", "de", "Professional"),
    ],
)
def test_answers_quote_the_passages_they_cite(
    index: KnowledgeIndex, question: str, language: str, word: str
) -> None:
    hits = index.search(question, language, 3)
    written = write_reply(
        PLAYBOOK.tactic("question"),
        language,
        playbook=PLAYBOOK,
        question=question,
        hits=hits,
        slots=SLOTS,
        bant_element=None,
    )
    assert written.language == language and written.answer
    assert word in written.text
    passages = {hit.passage.id: hit.passage.text for hit in hits}
    for sentence in written.answer:
        cited = [passages[c] for c in sentence.citations]
        verdict = check_sentence(sentence.text, cited, language)
        assert verdict.supported, (sentence.text, verdict.reasons)
    assert "{" not in written.text and "\n\n\n" not in written.text


def test_the_bant_question_is_asked_in_the_buyers_language(index: KnowledgeIndex) -> None:
    written = write_reply(
        PLAYBOOK.tactic("interested"),
        "fr",
        playbook=PLAYBOOK,
        question="Oui, ça m'intéresse.",
        hits=index.search("intéresse flotte", "fr", 2),
        slots=SLOTS,
        bant_element="timing",
    )
    assert written.language == "fr"
    assert PLAYBOOK.bant.questions["timing"].text("fr") in written.text
    assert "https://acme.example/book" in written.text
