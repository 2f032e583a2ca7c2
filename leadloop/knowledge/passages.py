"""Knowledge documents cut into passages with stable ids.

A Markdown document is cut at its ``##`` sections: each section is one
passage, prefixed with the document's ``#`` title so it stands alone, and its
id is ``<path>#<section slug>`` (``pricing.md#team-plan``), stable while the
heading stays.  A plain-text document is cut at blank lines
(``faq.txt#3``).  A document's language is its folder's name when that is a
language code (``de/pricing.md``), else the default.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

LANGUAGE_FOLDERS = frozenset({"en", "de", "fr", "es"})
SUFFIXES = frozenset({".md", ".markdown", ".txt"})
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class KnowledgePassage:
    id: str
    text: str
    title: str
    source: str
    language: str
    body: str = ""
    """The text without the title prefix (what a reply quotes)."""


def slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-") or "section"


def document_passages(path: Path, root: Path, default_language: str) -> list[KnowledgePassage]:
    """The passages of one document under *root*."""
    relative = path.relative_to(root).as_posix()
    folder = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else ""
    language = folder if folder in LANGUAGE_FOLDERS else default_language
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".txt":
        return _paragraphs(text, relative, language)
    return _sections(text, relative, language)


def _sections(text: str, source: str, language: str) -> list[KnowledgePassage]:
    title = ""
    heading: str | None = None
    body: list[str] = []
    found: list[KnowledgePassage] = []
    seen: dict[str, int] = {}

    def close() -> None:
        content = " ".join(" ".join(body).split())
        if not content:
            return
        name = heading or title or source
        key = slug(name)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            key = f"{key}-{seen[key]}"
        prefix = f"{title}: {heading}. " if heading and title else (f"{name}. " if name else "")
        found.append(
            KnowledgePassage(f"{source}#{key}", prefix + content, name, source, language, content)
        )

    for line in text.splitlines():
        match = _HEADING.match(line)
        if match and len(match.group(1)) == 1 and not title:
            title = match.group(2)
            continue
        if match:
            close()
            heading, body = match.group(2), []
            continue
        body.append(line)
    close()
    return found


def _paragraphs(text: str, source: str, language: str) -> list[KnowledgePassage]:
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text)]
    return [
        KnowledgePassage(f"{source}#{n}", block, source, source, language, block)
        for n, block in enumerate((b for b in blocks if b), 1)
    ]


def collect(roots: list[Path], default_language: str) -> list[KnowledgePassage]:
    """Every passage of every document under *roots*, in a stable order."""
    passages: list[KnowledgePassage] = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        base = root.parent if root.is_file() else root
        for path in files:
            if path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
                passages.extend(document_passages(path, base, default_language))
    return passages
