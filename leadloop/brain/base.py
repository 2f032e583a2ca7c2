"""The ``Brain`` protocol: what every brain offers the pipeline and policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Protocol

from leadloop.brain.understanding import Understanding


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
