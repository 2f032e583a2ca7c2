"""Where the knowledge, catalog and playbook come from: the configured
paths, else the sample company shipped with leadloop.

The sample lives in the repository's ``examples/`` and is copied into the
wheel as ``leadloop/samples/`` (``pyproject.toml``), so an installed
leadloop finds it without the repository; a checkout (or an editable
install) reads ``examples/`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import leadloop
from leadloop.config import LoadedConfig


class SourceMissing(Exception):
    """A configured knowledge path does not exist."""


def sample_dir() -> Path:
    packaged = Path(str(resources.files("leadloop") / "samples"))
    if (packaged / "playbook.toml").is_file():
        return packaged
    checkout = Path(leadloop.__file__).resolve().parents[1] / "examples"
    if (checkout / "playbook.toml").is_file():
        return checkout
    raise SourceMissing("the sample company is missing: neither leadloop/samples nor examples/")


@dataclass(frozen=True)
class Sources:
    documents: list[Path]
    catalog: Path
    playbook: Path
    default_language: str
    min_score: float

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> Sources:
        knowledge = loaded.settings.knowledge
        sample: Path | None = None

        def sampled(name: str) -> Path:
            nonlocal sample
            sample = sample or sample_dir()
            return sample / name

        documents = (
            [loaded.input_path(p) for p in knowledge.paths]
            if knowledge.paths is not None
            else [sampled("knowledge")]
        )
        catalog = (
            loaded.input_path(knowledge.catalog) if knowledge.catalog else sampled("catalog.toml")
        )
        playbook = (
            loaded.input_path(knowledge.playbook)
            if knowledge.playbook
            else sampled("playbook.toml")
        )
        missing = [str(p) for p in (*documents, catalog, playbook) if not p.exists()]
        if missing:
            raise SourceMissing(f"knowledge sources not found: {', '.join(missing)}")
        return cls(documents, catalog, playbook, knowledge.default_language, knowledge.min_score)
