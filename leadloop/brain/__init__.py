"""Brains: what turns a buyer's text into an :class:`Understanding`."""

from __future__ import annotations

from leadloop.brain.base import Brain
from leadloop.brain.understanding import Understanding
from leadloop.config import LoadedConfig

__all__ = ["Brain", "Understanding", "build_brain"]


def build_brain(loaded: LoadedConfig) -> Brain:
    """The configured brain, ready.  The local one is trained once per
    process (about a second) and shared: the same data gives the same model."""
    kind = loaded.settings.brain.kind
    if kind == "local":
        from leadloop.brain.local import shared_local_brain

        return shared_local_brain()
    raise ValueError(f"unknown brain {kind!r}")  # the config refuses it first
