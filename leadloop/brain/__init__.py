"""Brains: what turns a buyer's text into an :class:`Understanding`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from leadloop.brain.base import Brain
from leadloop.brain.understanding import Understanding
from leadloop.config import LoadedConfig

__all__ = ["Brain", "Understanding", "build_brain"]


def build_brain(loaded: LoadedConfig, now: Callable[[], datetime] | None = None) -> Brain:
    """The configured brain, ready.  The local one is trained once per
    process (about a second) and shared: the same data gives the same model."""
    kind = loaded.settings.brain.kind
    if kind == "local":
        from leadloop.brain.local import shared_local_brain

        return shared_local_brain()
    if kind == "openai":
        from leadloop.brain.local import shared_local_brain
        from leadloop.brain.openai_brain import OpenAIBrain

        return OpenAIBrain(
            loaded.settings.brain.openai,
            loaded.secret("brain.openai"),
            shared_local_brain(),
            now=now,
        )
    raise ValueError(f"unknown brain {kind!r}")  # the config refuses it first
