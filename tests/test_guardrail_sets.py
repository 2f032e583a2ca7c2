"""The sentence-support check scored on the labelled sets written by
separate writers who never saw the guardrail code (tests/fixtures/guardrails).

``sentences.jsonl`` is the test set: never read while tuning, only scored.
The issue's targets there (unsupported recall >= 0.95, precision >= 0.90) are
not met by this lexical check yet: ``test_the_issue_targets`` is a strict
xfail that turns red the day they are, and ``test_no_regression`` holds the
figures measured now.  ``dev*.jsonl`` are the sets the check was tuned on
(dev4 was scored once, after tuning, as a second held-out measure).
``dev5.jsonl`` (241 sentences by a writer who saw no checker code and no
earlier rows) measured 0.664 / 0.764 before any tuning on it: the test set's
figures flatter the lexical check on unseen writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leadloop.policy.support import check_sentence

SETS = Path(__file__).parent / "fixtures" / "guardrails"


def score(name: str) -> tuple[float, float]:
    tp = fp = fn = 0
    for line in (SETS / name).read_text().splitlines():
        row = json.loads(line)
        cited = [p["text"] for p in row["passages"] if p["id"] in row["citations"]]
        flagged = not check_sentence(row["sentence"], cited, row["lang"]).supported
        wanted = row["label"] == "unsupported"
        tp += flagged and wanted
        fp += flagged and not wanted
        fn += wanted and not flagged
    return tp / (tp + fn), tp / (tp + fp)


@pytest.mark.parametrize(
    ("name", "recall", "precision"),
    [
        ("sentences.jsonl", 0.90, 0.88),  # measured 0.903 / 0.886
        ("dev.jsonl", 0.98, 0.92),  # 1.000 / 0.926
        ("dev2.jsonl", 0.95, 0.91),  # 0.964 / 0.922
        ("dev3.jsonl", 0.96, 0.92),  # 0.977 / 0.925
        ("dev4.jsonl", 0.92, 0.75),  # 0.929 / 0.752
        ("dev5.jsonl", 0.66, 0.76),  # 0.664 / 0.764: a fresh writer, scored before any tuning
    ],
)
def test_no_regression(name: str, recall: float, precision: float) -> None:
    got_recall, got_precision = score(name)
    assert got_recall >= recall and got_precision >= precision, (got_recall, got_precision)


@pytest.mark.xfail(strict=True, reason="the lexical check measures 0.903 / 0.886 on the test set")
def test_the_issue_targets() -> None:
    recall, precision = score("sentences.jsonl")
    assert recall >= 0.95 and precision >= 0.90
