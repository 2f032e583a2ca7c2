"""Reading quality and speed on ../shared/corpus and the screening set.

Prints, per category and source: bounce recall, precision, failed-address
exact-set match and permanent-vs-temporary accuracy (from
``leadloop.mail.bounce.score_corpus``); auto-reply accuracy on the corpus's
auto_reply files (negatives included); parse exceptions on malformed mail;
on tests/fixtures/screening, opt-out and auto-reply recall per language and
the share of negatives either detector flags; and messages per second for
parse + screen + visible-text extraction over every rfc822 corpus file.

The corpus is read in place, never copied.  Run from the repository root::

    python bench/corpus_eval.py           # a table
    python bench/corpus_eval.py --json    # one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from leadloop.mail.autoreply import detect_auto_reply
from leadloop.mail.bounce import read_bounce, score_corpus
from leadloop.mail.optout import detect_list_mail, detect_opt_out
from leadloop.mail.parse import parse_mail
from leadloop.mail.reply import visible_text

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SCREENING = ROOT / "tests" / "fixtures" / "screening"


def labels() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (CORPUS / "labels.jsonl").read_text().splitlines()]


def screen(raw: bytes) -> tuple[str, Any]:
    """The content half of the screen stage, without a database."""
    parsed = parse_mail(raw)
    if read_bounce(raw).is_bounce:
        return "bounce", parsed
    auto = detect_auto_reply(parsed.headers, parsed.subject, parsed.body_text, parsed.date)
    if auto.is_auto:
        return "auto_reply", auto
    if detect_list_mail(parsed.headers):
        return "list", parsed
    visible = visible_text(parsed.text, parsed.html)
    if detect_opt_out(visible, parsed.subject):
        return "opt_out", parsed
    return "human", visible


def auto_reply_scores() -> dict[str, Any]:
    rows = [e for e in labels() if e["category"] == "auto_reply"]
    right = 0
    for entry in rows:
        expected = bool(
            entry["expected"].get("is_auto_reply", entry["expected"].get("is_auto_generated"))
        )
        parsed = parse_mail((CORPUS / entry["file"]).read_bytes())
        got = detect_auto_reply(parsed.headers, parsed.subject, parsed.body_text, parsed.date)
        right += got.is_auto == expected
    return {"files": len(rows), "accuracy": right / len(rows) if rows else None}


def malformed_exceptions() -> dict[str, Any]:
    rows = [e for e in labels() if e["category"] == "malformed"]
    failures = 0
    for entry in rows:
        try:
            screen((CORPUS / entry["file"]).read_bytes())
        except Exception:
            failures += 1
    return {"files": len(rows), "exceptions": failures}


def screening_scores() -> dict[str, Any]:
    entries = [json.loads(line) for line in (SCREENING / "labels.jsonl").read_text().splitlines()]
    found: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    negatives_flagged = negatives = 0
    dates_right = dates = 0
    for entry in entries:
        raw = (SCREENING / entry["file"]).read_bytes()
        kind, detail = screen(raw)
        label, language = entry["label"], entry["language"]
        if label == "negative":
            negatives += 1
            negatives_flagged += kind in ("opt_out", "auto_reply")
            continue
        hit = kind == label
        found[(label, language)][0] += hit
        found[(label, language)][1] += 1
        if label == "auto_reply" and entry.get("return_date") and kind == "auto_reply":
            dates += 1
            got = detail.return_date.isoformat() if detail.return_date else None
            dates_right += got == entry["return_date"]
    per_label: dict[str, Any] = {}
    for (label, language), (hits, total) in sorted(found.items()):
        per_label.setdefault(label, {})[language] = hits / total
    for label in ("opt_out", "auto_reply"):
        hits = sum(v[0] for (lab, _), v in found.items() if lab == label)
        total = sum(v[1] for (lab, _), v in found.items() if lab == label)
        per_label.setdefault(label, {})["all"] = hits / total if total else None
    return {
        "recall": per_label,
        "negatives_flagged": negatives_flagged / negatives if negatives else None,
        "return_date_accuracy": dates_right / dates if dates else None,
    }


def visible_text_scores() -> dict[str, Any]:
    """Exact match and quoted-line leaks on human_reply_quoted, scored the way
    tests/test_reply.py scores them (the label formats differ per source)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_reply import evaluate, summary

    result: dict[str, Any] = summary(evaluate())
    return result


def throughput() -> dict[str, Any]:
    files = [CORPUS / e["file"] for e in labels() if e["format"] == "rfc822"]
    raws = [path.read_bytes() for path in files]
    for raw in raws[:20]:
        screen(raw)  # warm up imports and regex caches
    started = time.perf_counter()
    for raw in raws:
        screen(raw)
    elapsed = time.perf_counter() - started
    return {"messages": len(raws), "seconds": elapsed, "msgs_per_s": len(raws) / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"no corpus at {CORPUS}", file=sys.stderr)
        return 2
    report = {
        "bounce": score_corpus(CORPUS),
        "auto_reply_corpus": auto_reply_scores(),
        "malformed": malformed_exceptions(),
        "visible_text": visible_text_scores(),
        "screening": screening_scores(),
        "throughput": throughput(),
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    bounce = report["bounce"]
    sources = sorted({key.split(".")[0] for key in bounce if "." in key})
    print("bounces (../shared/corpus)")
    print(f"  {'source':14} {'recall':>7} {'precision':>9} {'failed':>7} {'perm':>6}")
    for source in sources:
        positives = (bounce.get(f"{source}.tp") or 0) + (bounce.get(f"{source}.fn") or 0)
        cells = [
            bounce.get(f"{source}.{m}") if positives or m == "precision" else None
            for m in ("recall", "precision", "failed_match", "permanence_accuracy")
        ]
        if not bounce.get(f"{source}.failed_labelled"):
            cells[2] = None
        if not bounce.get(f"{source}.permanence_labelled"):
            cells[3] = None
        shown = [f"{c:.3f}" if isinstance(c, float) else "-" for c in cells]
        print(f"  {source:14} {shown[0]:>7} {shown[1]:>9} {shown[2]:>7} {shown[3]:>6}")
    auto = report["auto_reply_corpus"]
    print(
        f"auto-reply accuracy on corpus auto_reply/: {auto['accuracy']:.3f} ({auto['files']} files)"
    )
    visible = report["visible_text"]
    print(
        f"visible text: exact {visible['exact'][0]}/{visible['exact'][1]} "
        f"({visible['exact_match']:.3f}), quoted-line leaks {visible['leaked'][0]}/"
        f"{visible['leaked'][1]} ({visible['leak_rate']:.3f})"
    )
    for source, counts in visible["sources"].items():
        if counts["exact"][1]:
            print(f"  {source:40} {counts['exact'][0]}/{counts['exact'][1]}")
    malformed = report["malformed"]
    print(f"malformed: {malformed['exceptions']} exceptions in {malformed['files']} files")
    scr = report["screening"]
    print("screening set recall:")
    for label, by_language in scr["recall"].items():
        cells = ", ".join(
            f"{lang} {value:.3f}" for lang, value in by_language.items() if value is not None
        )
        print(f"  {label:10} {cells}")
    print(f"  negatives flagged: {scr['negatives_flagged']:.3f}")
    if scr["return_date_accuracy"] is not None:
        print(f"  return dates right: {scr['return_date_accuracy']:.3f}")
    speed = report["throughput"]
    print(
        f"parse + screen + extract: {speed['msgs_per_s']:.0f} msgs/s "
        f"({speed['messages']} corpus messages in {speed['seconds']:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
