"""The local writer: a tactic's template filled with quoted, cited passages.

Extractive on purpose: ``{answer}`` is made of sentences taken from the
retrieved passages (the ones that share most with the buyer's words), each
remembered with its passage id, so every factual sentence is the approved
text itself.  Names, prices and links go in through slots that policy fills
from the catalog and configuration; the template supplies the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from leadloop.brain.drafts import Sentence
from leadloop.knowledge.index import Hit
from leadloop.policy.playbook import Playbook, Tactic
from leadloop.policy.support import content_stems

MAX_ANSWER_SENTENCES = 2
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-ZÀ-ÖØ-Þ0-9¿¡])")


@dataclass(frozen=True)
class Written:
    text: str
    language: str
    answer: list[Sentence] = field(default_factory=list)
    """The cited sentences inside the text ({answer})."""

    @property
    def citations(self) -> list[str]:
        return sorted({c for s in self.answer for c in s.citations})


def passage_sentences(hit: Hit) -> list[str]:
    """A passage's own sentences (its body, without the title prefix the
    index adds so that passages stand alone)."""
    text = hit.passage.body or hit.passage.text
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def said_before(text: str) -> set[str]:
    """*text*'s sentences as :func:`answer_from` compares them (case and
    spacing aside), to leave out what a lead already had from us."""
    return {_same(s) for s in _SENTENCE.split(text) if s.strip()}


def _same(sentence: str) -> str:
    return " ".join(sentence.split()).casefold()


def answer_from(
    question: str,
    hits: Sequence[Hit],
    language: str,
    limit: int = MAX_ANSWER_SENTENCES,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[Sentence]:
    """The sentences of the retrieved passages that share most with the
    question, best first, each citing its passage; none in *exclude*
    (:func:`said_before`)."""
    asked = content_stems(question, language)
    scored: list[tuple[float, int, Sentence]] = []
    for rank, hit in enumerate(hits):
        for sentence in passage_sentences(hit):
            if _same(sentence) in exclude:
                continue
            shared = len(asked & content_stems(sentence, language))
            if shared:
                cited = Sentence(text=sentence, citations=[hit.passage.id])
                scored.append((shared + hit.score / 100, -rank, cited))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    chosen: list[Sentence] = []
    for _, _, candidate in scored:
        if candidate.text not in {s.text for s in chosen}:
            chosen.append(candidate)
        if len(chosen) == limit:
            break
    return chosen


def write_reply(
    tactic: Tactic,
    language: str,
    *,
    playbook: Playbook,
    question: str,
    hits: Sequence[Hit],
    slots: dict[str, str],
    bant_element: str | None,
    times: bool = False,
) -> Written:
    """The tactic's template in *language* (else English), filled in with
    sentences quoted from *hits*; *times*: its meeting-proposal variant."""
    template, used = tactic.template_for(language, times)
    answer = answer_from(question, hits, used) if "{answer}" in template else []
    return fill_reply(
        tactic,
        used,
        playbook=playbook,
        answer=answer,
        slots=slots,
        bant_element=bant_element,
        times=times,
    )


def wants_answer(tactic: Tactic, language: str, times: bool = False) -> bool:
    """Whether the tactic's template (in *language*) has an ``{answer}``."""
    return "{answer}" in tactic.template_for(language, times)[0]


def fill_reply(
    tactic: Tactic,
    language: str,
    *,
    playbook: Playbook,
    answer: Sequence[Sentence],
    slots: dict[str, str],
    bant_element: str | None,
    times: bool = False,
) -> Written:
    """The tactic's template in *language* (else English) with *answer*
    (cited sentences, from this writer or a brain's) and the slots."""
    template, used = tactic.template_for(language, times)
    values = {
        **slots,
        "answer": " ".join(s.text for s in answer),
        "bant_question": (
            playbook.bant.questions[bant_element].text(used)
            if bant_element and bant_element in playbook.bant.questions
            else ""
        ),
    }
    text = _fill(template, values)
    return Written(text=text, language=used, answer=list(answer))


_FIELD = re.compile(r"\{([a-z_]+)\}")


LINK_SLOTS = ("booking_link", "purchase_link")


def fill_template(template: str, values: dict[str, str]) -> str:
    """A playbook template with its slots filled (see :func:`_fill`)."""
    return _fill(template, values)


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` slots (a missing one becomes empty) and tidy the blank
    lines an empty slot leaves; a line whose link slot is empty is left out
    ("book here: " with no link says nothing)."""
    for slot in LINK_SLOTS:
        if not values.get(slot):
            template = "\n".join(
                line for line in template.split("\n") if "{" + slot + "}" not in line
            )
    text = _FIELD.sub(lambda m: values.get(m.group(1), ""), template)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
