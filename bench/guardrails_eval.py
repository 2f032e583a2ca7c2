"""Score the sentence-support guardrail on a labelled set.

Prints the recall and precision of *unsupported* sentences (the test asserts
recall >= 0.95 and precision >= 0.90 on ``sentences.jsonl``), the misses by
kind, and the check's speed.  ``dev.jsonl`` is the set to tune on;
``sentences.jsonl`` is the test set and is scored, not read.

Run from the repository root::

    python bench/guardrails_eval.py                       # the development set
    python bench/guardrails_eval.py tests/fixtures/guardrails/sentences.jsonl
    python bench/guardrails_eval.py --mistakes            # ids, kinds and reasons
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from leadloop.policy.support import check_sentence

DEV = Path("tests/fixtures/guardrails/dev.jsonl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEV)
    parser.add_argument("--mistakes", action="store_true", help="list each miss")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.path.read_text().splitlines() if line.strip()]
    counts: Counter[str] = Counter()
    misses: Counter[str] = Counter()
    started = time.perf_counter()
    for row in rows:
        cited = [p["text"] for p in row["passages"] if p["id"] in row["citations"]]
        verdict = check_sentence(row["sentence"], cited, row["lang"])
        flagged, wanted = not verdict.supported, row["label"] == "unsupported"
        outcome = {(True, True): "tp", (True, False): "fp", (False, True): "fn"}.get(
            (flagged, wanted), "tn"
        )
        counts[outcome] += 1
        if outcome in ("fp", "fn"):
            misses[f"{outcome} {row['kind']}"] += 1
            if args.mistakes:
                print(f"{outcome} {row['id']} {row['lang']} {row['kind']}: {verdict.reasons}")
    elapsed = time.perf_counter() - started
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    recall = tp / (tp + fn) if tp + fn else 1.0
    precision = tp / (tp + fp) if tp + fp else 1.0
    print(f"{args.path}: {len(rows)} sentences")
    print(f"unsupported recall {recall:.3f}  precision {precision:.3f}  ({dict(counts)})")
    for miss, n in sorted(misses.items()):
        print(f"  {miss}: {n}")
    print(f"{elapsed / len(rows) * 1000:.2f} ms a sentence")
    return 0


if __name__ == "__main__":
    sys.exit(main())
