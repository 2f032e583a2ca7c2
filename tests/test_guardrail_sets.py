"""The sentence-support check scored on the labelled sets written by
separate writers who never saw the guardrail code (tests/fixtures/guardrails).

``sentences.jsonl`` is the test set: never read while tuning, only scored.
The issue's targets there (unsupported recall >= 0.95, precision >= 0.90) are
not met by this lexical check: ``test_the_issue_targets`` is a strict xfail
that turns red the day they are, and ``test_no_regression`` holds the figures
measured now (floors are the measured figures cut to three places).

``dev*.jsonl`` are the sets the check was tuned on.  Each later one was
written by a new writer who read no checker code and no earlier rows, and
was scored before any tuning on it: dev5 0.664 / 0.764, dev6 0.740 / 0.725,
dev7 0.770 / 0.694 (with the check as it was before dev5 and dev6 tuning,
0.790 / 0.693 after it, 0.800 / 0.696 with one more rule written from dev6
and kept because dev7's totals did not get worse).  Rules written for one writer's sentences barely
move the next writer's: the test set's figures flatter the lexical check on
unseen writing."""

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
        ("sentences.jsonl", 0.912, 0.894),  # measured 0.913 / 0.895 (94/103, 94/105)
        ("dev.jsonl", 0.988, 0.955),  # 0.989 / 0.956
        ("dev2.jsonl", 0.972, 0.929),  # 0.973 / 0.930
        ("dev3.jsonl", 0.977, 0.934),  # 0.977 / 0.935
        ("dev4.jsonl", 0.979, 0.827),  # 0.980 / 0.828
        ("dev5.jsonl", 0.901, 0.956),  # 0.902 / 0.957: a fresh writer (0.664 / 0.764 before)
        ("dev6.jsonl", 0.920, 0.836),  # 0.920 / 0.836: another (0.740 / 0.725 before)
        ("dev7.jsonl", 0.800, 0.695),  # 0.800 / 0.696: held out, never tuned on
    ],
)
def test_no_regression(name: str, recall: float, precision: float) -> None:
    got_recall, got_precision = score(name)
    assert got_recall >= recall and got_precision >= precision, (got_recall, got_precision)


@pytest.mark.xfail(strict=True, reason="the lexical check measures 0.913 / 0.895 on the test set")
def test_the_issue_targets() -> None:
    recall, precision = score("sentences.jsonl")
    assert recall >= 0.95 and precision >= 0.90
