"""What a brain writes: a draft whose factual sentences cite passage ids.

Policy hands the brain the passages it may use (knowledge retrieved for the
thread); the draft comes back as sentences, each with the ids of the
passages that support it.  A draft citing anything it was not given is
refused.  The guardrails of the policy issue check the rest (numbers and
names present in the cited passage, word overlap, links, footer).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Passage(_Model):
    id: str
    text: str


class Sentence(_Model):
    text: str = Field(min_length=1)
    citations: list[str] = Field(default_factory=list)
    """Ids of the passages that support it; empty for greetings and questions."""


class Draft(_Model):
    sentences: list[Sentence] = Field(min_length=1)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.sentences)

    def unknown_citations(self, passages: Sequence[Passage]) -> list[str]:
        known = {p.id for p in passages}
        return sorted({c for s in self.sentences for c in s.citations if c not in known})


class DraftRejected(Exception):
    """The brain gave no usable draft (after asking again)."""
