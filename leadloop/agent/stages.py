"""The listed pipeline, built from the configuration."""

from __future__ import annotations

from pathlib import Path

from leadloop.agent.pipeline import STAGE_NAMES, PassThrough, Stage
from leadloop.agent.screening import ScreenSettings, ScreenStage
from leadloop.agent.threads import ThreadSettings, ThreadStage
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


def build_stages(loaded: LoadedConfig, keys: TokenKeys) -> list[Stage]:
    parses = ParseCache()
    built: dict[str, Stage] = {
        "screen": ScreenStage(ScreenSettings.from_config(loaded, keys, parses)),
        "thread": ThreadStage(ThreadSettings.from_config(loaded, keys, parses)),
    }
    # understand, decide and act come with the brain and policy issues.
    return [built.get(name) or PassThrough(name) for name in STAGE_NAMES]
