"""The listed pipeline, built from the configuration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from leadloop.agent.commands import CommandSettings
from leadloop.agent.outbox import OutboxSettings
from leadloop.agent.pipeline import STAGE_NAMES, PassThrough, Stage
from leadloop.agent.policy_stages import ActStage, DecideStage, Policy
from leadloop.agent.screening import ScreenSettings, ScreenStage
from leadloop.agent.staff import Staff
from leadloop.agent.threads import ThreadSettings, ThreadStage
from leadloop.agent.understand import UnderstandStage
from leadloop.brain import Brain, build_brain
from leadloop.brain.base import Writer
from leadloop.config import LoadedConfig
from leadloop.mail.parse import ParseCache
from leadloop.mail.tokens import TokenKeys

TOKEN_KEYS_FILE = "tokens.keys"


def token_keys(loaded: LoadedConfig, directory: Path | None = None) -> TokenKeys:
    """The signing keys: from ``[tokens]``'s secret, else the file in the
    state directory (created on first use)."""
    secret = loaded.secret("tokens")
    if secret is not None:
        return TokenKeys.from_secret(secret)
    return TokenKeys.load_or_create((directory or loaded.state_dir) / TOKEN_KEYS_FILE)


def build_stages(
    loaded: LoadedConfig,
    keys: TokenKeys,
    brain: Brain | None = None,
    now: Callable[[], datetime] | None = None,
) -> list[Stage]:
    """The stages; *brain* is built from ``[brain]`` when not given (the
    local brain trains here, about a second: build stages once per process)."""
    parses = ParseCache()
    brain = brain or build_brain(loaded, now)
    send = OutboxSettings.from_config(loaded, keys)
    staff = Staff.from_config(loaded, send)
    screen = ScreenSettings.from_config(loaded, keys, parses)
    screen.commands = CommandSettings(staff, loaded.settings.identity.authserv_id)
    built: dict[str, Stage] = {
        "screen": ScreenStage(screen),
        "thread": ThreadStage(ThreadSettings.from_config(loaded, keys, parses)),
        "understand": UnderstandStage(brain, parses, loaded.settings.pipeline.max_message_size),
    }
    policy = Policy.from_config(loaded, send)
    built["decide"] = DecideStage(policy, staff)
    # A brain that writes (openai) writes the answers; else policy quotes.
    built["act"] = ActStage(policy, brain if isinstance(brain, Writer) else None, staff)
    return [built.get(name) or PassThrough(name) for name in STAGE_NAMES]
