"""Brains: what turns a buyer's text into an :class:`Understanding`."""

from __future__ import annotations

from leadloop.brain.base import Brain
from leadloop.brain.understanding import Understanding
from leadloop.config import LoadedConfig

__all__ = ["Brain", "Understanding", "build_brain"]


def build_brain(loaded: LoadedConfig) -> Brain:
    """The configured brain, ready (the local one trains here, about a second)."""
    kind = loaded.settings.brain.kind
    if kind == "local":
        from leadloop.brain.local import LocalBrain

        return LocalBrain()
    raise ValueError(f"unknown brain {kind!r}")  # the config refuses it first
