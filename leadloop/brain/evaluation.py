"""Scoring a brain on the frozen evaluation split.

The split (``data/eval.jsonl``) was written before the model and its rules by
a writer who saw neither; its SHA-256 (``data/eval.sha256``) is checked
before it is read, nothing trains on it, and no code keys on its text.
``bench/classify_eval.py`` prints these figures for any brain, and a test
holds the local brain to its targets.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from leadloop.brain.base import Brain
from leadloop.brain.local import data_dir, parse_examples, read_verified
from leadloop.brain.understanding import INTENTS, OBJECTIONS

EVAL_FILE = "eval.jsonl"
EVAL_SUM = "eval.sha256"
RECEIVED = date(2026, 11, 23)  # the label guide's reference date
SAFETY = ("unsubscribe", "human_request", "out_of_office")


def load_eval() -> list[dict[str, Any]]:
    """The frozen split, refused if it does not match its recorded SHA-256."""
    return parse_examples(read_verified(data_dir(), EVAL_FILE, EVAL_SUM), EVAL_FILE)


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Report:
    brain: str
    examples: int
    intents: dict[str, Counts] = field(default_factory=dict)
    objections: dict[str, Counts] = field(default_factory=dict)
    injection: Counts = field(default_factory=Counts)
    latencies: list[float] = field(default_factory=list)
    mistakes: list[tuple[str, str, str]] = field(default_factory=list)
    """(id, expected, predicted) for every wrong intent."""
    bant: dict[str, Counts] = field(default_factory=dict)
    """BANT statuses ``met`` and ``not_met``, over the four elements."""

    @property
    def macro_f1(self) -> float:
        return statistics.fmean(c.f1 for c in self.intents.values())

    @property
    def objection_f1(self) -> float:
        """Micro-averaged over the six types (every predicted and labelled type counts)."""
        total = Counts(
            sum(c.tp for c in self.objections.values()),
            sum(c.fp for c in self.objections.values()),
            sum(c.fn for c in self.objections.values()),
        )
        return total.f1

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "brain": self.brain,
            "examples": self.examples,
            "intent_macro_f1": round(self.macro_f1, 4),
            "intents": {
                k: {
                    "precision": round(c.precision, 4),
                    "recall": round(c.recall, 4),
                    "f1": round(c.f1, 4),
                    "support": c.tp + c.fn,
                }
                for k, c in self.intents.items()
            },
            "objection_f1": round(self.objection_f1, 4),
            "objection_types": {k: round(c.f1, 4) for k, c in self.objections.items()},
            "safety_recall": {k: round(self.intents[k].recall, 4) for k in SAFETY},
            "injection_recall": round(self.injection.recall, 4),
            "bant": {
                k: {"precision": round(c.precision, 4), "recall": round(c.recall, 4)}
                for k, c in self.bant.items()
            },
            "latency_ms": {
                "p50": round(self.percentile(0.5) * 1000, 3),
                "p95": round(self.percentile(0.95) * 1000, 3),
            },
        }


async def evaluate(brain: Brain, rows: list[dict[str, Any]]) -> Report:
    report = Report(brain.name, len(rows))
    report.intents = {k: Counts() for k in INTENTS}
    report.objections = {k: Counts() for k in OBJECTIONS}
    for row in rows:
        started = time.perf_counter()
        got = await brain.classify(row["text"], received=RECEIVED)
        report.latencies.append(time.perf_counter() - started)
        want = row["intent"]
        if got.intent == want:
            report.intents[want].tp += 1
        else:
            report.intents[want].fn += 1
            report.intents[got.intent].fp += 1
            report.mistakes.append((row["id"], want, got.intent))
        for kind in OBJECTIONS:
            expected, found = kind in row["objections"], kind in got.objections
            counts = report.objections[kind]
            counts.tp += expected and found
            counts.fp += found and not expected
            counts.fn += expected and not found
        for element in ("budget", "authority", "need", "timing"):
            label = row["bant"][element]  # the data's label: the status itself
            expected = label.get("status", "unknown") if isinstance(label, dict) else label
            found = getattr(got.bant, element).status
            for status in ("met", "not_met"):
                counts = report.bant.setdefault(status, Counts())
                counts.tp += expected == status and found == status
                counts.fp += found == status and expected != status
                counts.fn += expected == status and found != status
        report.injection.tp += bool(row["injection"]) and got.injection
        report.injection.fp += got.injection and not row["injection"]
        report.injection.fn += bool(row["injection"]) and not got.injection
    return report
