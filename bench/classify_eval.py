"""Score a brain on the frozen evaluation split and time it.

Prints intent macro-F1, per-intent precision and recall, BANT status
precision and recall, objection-type F1,
the recall of unsubscribe, human_request and out_of_office (targets: macro-F1
>= 0.85, each recall >= 0.98), injection recall, the classify latency per
message (p50 and p95; target p50 < 5 ms) and the brain's load time.

The split's SHA-256 is checked before it is read (``leadloop/brain/data/
eval.sha256``).  The brain comes from ``--config`` (its ``[brain]``
section); else, when ``LEADLOOP_EVAL_OPENAI_BASE_URL`` is set, the openai
brain against that endpoint (``LEADLOOP_EVAL_OPENAI_API_KEY``,
``LEADLOOP_EVAL_OPENAI_MODEL``, default ``gpt-4o-mini``, and
``LEADLOOP_EVAL_OPENAI_OUTPUT``, default ``json_schema``); else the embedded
local brain.  Every brain is scored the same way.

Run from the repository root::

    python bench/classify_eval.py
    python bench/classify_eval.py --config config.toml --json
    python bench/classify_eval.py --mistakes      # ids and labels of the misses (no text)
    LEADLOOP_EVAL_OPENAI_BASE_URL=http://127.0.0.1:11434/v1 LEADLOOP_EVAL_OPENAI_MODEL=qwen2.5 \
        python bench/classify_eval.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time

from leadloop.brain import build_brain
from leadloop.brain.base import Brain
from leadloop.brain.evaluation import SAFETY, evaluate, load_eval
from leadloop.config import load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="use this config's [brain] (default: the local brain)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--mistakes", action="store_true", help="list wrong intents by id")
    args = parser.parse_args()

    started = time.perf_counter()
    brain: Brain
    if args.config:
        brain = build_brain(load(args.config))
    elif os.environ.get("LEADLOOP_EVAL_OPENAI_BASE_URL"):
        from leadloop.brain.local import shared_local_brain
        from leadloop.brain.openai_brain import OpenAIBrain
        from leadloop.config import OpenAIConfig

        settings = OpenAIConfig(
            base_url=os.environ["LEADLOOP_EVAL_OPENAI_BASE_URL"],
            model=os.environ.get("LEADLOOP_EVAL_OPENAI_MODEL", "gpt-4o-mini"),
            output=os.environ.get("LEADLOOP_EVAL_OPENAI_OUTPUT", "json_schema"),  # type: ignore[arg-type]
        )
        key = os.environ.get("LEADLOOP_EVAL_OPENAI_API_KEY")
        brain = OpenAIBrain(settings, key, shared_local_brain())
    else:
        from leadloop.brain.local import LocalBrain

        brain = LocalBrain()
    load_seconds = time.perf_counter() - started
    rows = load_eval()
    report = asyncio.run(evaluate(brain, rows))
    figures = report.as_dict()
    figures["load_seconds"] = round(load_seconds, 3)
    if args.json:
        print(json.dumps(figures))
        return 0

    print(
        f"brain {brain.name} on the frozen split: {len(rows)} replies; "
        f"python {platform.python_version()}, loaded in {load_seconds:.2f} s"
    )
    print()
    print(f"{'intent':18} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>4}")
    for intent, scores in figures["intents"].items():
        print(
            f"{intent:18} {scores['precision']:9.3f} {scores['recall']:7.3f} "
            f"{scores['f1']:6.3f} {scores['support']:4d}"
        )
    print()
    macro = figures["intent_macro_f1"]
    print(f"intent macro-F1        {macro:.3f}   target >= 0.85: {_verdict(macro >= 0.85)}")
    for intent in SAFETY:
        recall = figures["safety_recall"][intent]
        print(f"recall {intent:15} {recall:.3f}   target >= 0.98: {_verdict(recall >= 0.98)}")
    print(f"injection recall       {figures['injection_recall']:.3f}")
    for status, scores in figures["bant"].items():
        print(
            f"BANT {status:8}          precision {scores['precision']:.3f} "
            f"recall {scores['recall']:.3f}  (over the four elements)"
        )
    print(f"objection-type F1      {figures['objection_f1']:.3f}  (micro over the six types)")
    for kind, f1 in figures["objection_types"].items():
        print(f"  {kind:20} {f1:.3f}")
    p50, p95 = figures["latency_ms"]["p50"], figures["latency_ms"]["p95"]
    print(
        f"latency p50 / p95      {p50:.2f} / {p95:.2f} ms   p50 target < 5 ms: {_verdict(p50 < 5)}"
    )
    if args.mistakes:
        print()
        for row_id, want, got in report.mistakes:
            print(f"  {row_id}: {want} -> {got}")
    return 0


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


if __name__ == "__main__":
    sys.exit(main())
