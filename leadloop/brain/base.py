"""The ``Brain`` protocol: what every brain offers the pipeline and policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Protocol, runtime_checkable

from leadloop.brain.drafts import Draft, Passage
from leadloop.brain.understanding import Understanding, Usage


class Brain(Protocol):
    name: str

    async def classify(
        self,
        text: str,
        *,
        subject: str = "",
        received: date | None = None,
        headers: Mapping[str, Sequence[str]] | None = None,
    ) -> Understanding:
        """Understand one buyer reply.  *text* may hold quoted history and a
        signature: only what the buyer wrote in this message counts.
        *received* anchors relative dates ("in two weeks"); *headers*
        (lowercased names), when known, help tell an auto-reply."""
        ...


@runtime_checkable
class Writer(Protocol):
    """A brain that also writes (the openai brain); the local brain does
    not, and policy's extractive writer quotes the passages instead."""

    name: str

    async def write(
        self, *, task: str, passages: Sequence[Passage], thread: str = "", reference: str = ""
    ) -> tuple[Draft, Usage]:
        """A draft for *task* whose statements cite *passages* by id;
        :class:`~leadloop.brain.drafts.DraftRejected` when none is usable."""
        ...
