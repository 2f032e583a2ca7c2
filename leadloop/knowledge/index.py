"""BM25 retrieval over knowledge passages (``bm25s``), one index per language,
words reduced to their Snowball stems (``PyStemmer``), each language's
stopwords removed.  Rebuilt when a source file changes."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import bm25s
import Stemmer

from leadloop.knowledge.passages import KnowledgePassage, collect

log = logging.getLogger("leadloop.knowledge")
# Importing bm25s sets its own logger to DEBUG (bm25s/__init__.py), which
# would print every index build whatever the daemon's log level.
logging.getLogger("bm25s").setLevel(logging.WARNING)
_STEMMERS = {"en": "english", "de": "german", "fr": "french", "es": "spanish"}


@dataclass(frozen=True)
class Hit:
    passage: KnowledgePassage
    score: float


class _LanguageIndex:
    def __init__(self, language: str, passages: list[KnowledgePassage]) -> None:
        self.language = language
        self.passages = passages
        self.stemmer = Stemmer.Stemmer(_STEMMERS.get(language, "english"))
        self.stopwords = language if language in _STEMMERS else "en"
        self.bm25 = bm25s.BM25()
        tokens = self._tokens([p.text for p in passages])
        self.bm25.index(tokens, show_progress=False)

    def _tokens(self, texts: list[str]) -> bm25s.tokenization.Tokenized:
        return bm25s.tokenize(
            texts, stopwords=self.stopwords, stemmer=self.stemmer.stemWords, show_progress=False
        )

    def search(self, query: str, k: int) -> list[Hit]:
        if not self.passages:
            return []
        tokens = self._tokens([query])
        k = min(k, len(self.passages))
        found, scores = self.bm25.retrieve(tokens, k=k, show_progress=False)
        return [
            Hit(self.passages[int(i)], float(s))
            for i, s in zip(found[0], scores[0], strict=True)
            if s > 0
        ]


class KnowledgeIndex:
    """Passages from *roots*, searchable per language."""

    def __init__(self, roots: list[Path], default_language: str = "en") -> None:
        self.roots = roots
        self.default_language = default_language
        self._fingerprint = ""
        self._by_language: dict[str, _LanguageIndex] = {}
        self.passages: dict[str, KnowledgePassage] = {}
        self.refresh()

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for root in self.roots:
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for path in files:
                try:
                    stat = path.stat()
                except OSError:
                    continue
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def refresh(self) -> bool:
        """Rebuild when a source file changed; returns whether it did."""
        seen = self.fingerprint()
        if seen == self._fingerprint:
            return False
        passages = collect(self.roots, self.default_language)
        languages = sorted({p.language for p in passages})
        self._by_language = {
            lang: _LanguageIndex(lang, [p for p in passages if p.language == lang])
            for lang in languages
        }
        self.passages = {p.id: p for p in passages}
        self._fingerprint = seen
        log.info("knowledge indexed: %d passages in %s", len(passages), ", ".join(languages))
        return True

    def languages(self) -> list[str]:
        return sorted(self._by_language)

    def search(self, query: str, language: str | None = None, k: int = 3) -> list[Hit]:
        """The best passages for *query* in *language* (else the default)."""
        index = self._by_language.get(language or self.default_language)
        if index is None:
            index = self._by_language.get(self.default_language)
        return index.search(query, k) if index else []
