"""`leadloop replay`: JSON lines per message, a clock that never runs backwards, and the
whole real-world corpus replayed without a pipeline failure."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS, FIXTURES, REPO

from leadloop import config
from leadloop.agent.pipeline import STAGE_NAMES, Outcome, PassThrough, StageContext
from leadloop.daemon.replay import replay
from leadloop.storage.models import InboundMessage

REPLAY = FIXTURES / "replay"


def inbound_lines(stdout: str) -> list[dict[str, Any]]:
    """The lines about inbound mail (outbound lines carry no ``file``)."""
    return [line for line in map(json.loads, stdout.splitlines()) if "file" in line]


def run_replay(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "leadloop",
            "replay",
            str(directory),
            "--config",
            str(REPO / "config.toml"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )


def test_replay_prints_one_line_per_message() -> None:
    """Each inbound .eml gives one JSON line, in name order, with the documented keys."""
    result = run_replay(REPLAY)
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    lines = [line for line in printed if "file" in line]
    replies = [line for line in printed if "file" not in line]
    assert [line["file"] for line in lines] == [
        "01-dana-reply.eml",
        "02-no-message-id.eml",
        "03-bad-date.eml",
    ]
    # Policy answers both buyers (captured, never sent); the held mail gets nothing.
    assert [(r["to"], r["kind"]) for r in replies] == [
        (["dana.reyes@northwind.example"], "reply"),
        (["li.wei@contoso.example"], "reply"),
    ]
    for line in lines:
        assert {"file", "message_id", "lead", "kind", "intent", "action", "reasons"} <= set(line)
        assert line["status"] == "done"
    # The buyers' mails are understood and answered; the held one is not read.
    assert [line["intent"] for line in lines] == ["question", "meeting_request", None]
    assert [line["action"] for line in lines] == ["reply", "reply", None]
    assert lines[0]["message_id"] == "<CAD1.reply@mail.northwind.example>"
    # The reply threads to our earlier mail in sent/, so to Dana; Li writes fresh as a
    # known lead; the unknown sender cannot be vouched for and is held.
    assert [(line["lead"], line["kind"]) for line in lines] == [
        ("dana.reyes@northwind.example", "reply"),
        ("li.wei@contoso.example", "reply"),
        (None, "held"),
    ]
    assert lines[0]["thread"] is not None and lines[0]["visible_length"] > 0
    assert lines[1]["message_id"].endswith("@synthetic.leadloop.invalid>")
    assert "no Message-ID" in lines[1]["defects"]
    assert "unusable Date" in lines[2]["defects"]


def test_replay_clock_follows_dates_never_backwards() -> None:
    """The clock moves to each Date, and by one second when the Date is unusable."""
    lines = inbound_lines(run_replay(REPLAY).stdout)
    assert [line["at"] for line in lines] == [
        "2026-03-03T16:15:00+00:00",
        "2026-03-04T07:00:00+00:00",
        "2026-03-04T07:00:01+00:00",
    ]


def test_replay_synthetic_id_is_stable() -> None:
    """A message without a Message-ID gets the same synthetic id on every replay."""
    first = inbound_lines(run_replay(REPLAY).stdout)[1]
    second = inbound_lines(run_replay(REPLAY).stdout)[1]
    assert first["message_id"] == second["message_id"]


def test_replay_exit_code_when_pipeline_fails(tmp_path: Path) -> None:
    """A stage that raises on a message makes replay exit non-zero; the others still print."""

    class Exploding(PassThrough):
        async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
            if "demo" in (item.subject or "").lower():
                raise RuntimeError("stage bug")
            return await super().process(item, ctx)

    loaded = config.load(REPO / "config.toml")
    out = io.StringIO()
    stages = [Exploding("screen"), *(PassThrough(n) for n in STAGE_NAMES[1:])]
    import asyncio

    result = asyncio.run(replay(REPLAY, loaded, out, stages=stages))
    lines = inbound_lines(out.getvalue())
    assert result.exit_code == 1
    assert [line["status"] for line in lines] == ["done", "quarantined", "done"]
    assert any("stage bug" in reason for reason in lines[1]["reasons"])


def test_replay_missing_directory(tmp_path: Path) -> None:
    """A directory that does not exist is a usage error, not a crash."""
    result = run_replay(tmp_path / "nope")
    assert result.returncode == 2
    assert "not a directory" in result.stderr


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not beside the checkout")
def test_every_corpus_message_replays(tmp_path: Path) -> None:
    """Every rfc822 file of the shared corpus replays with exit 0, one line each, its
    defects reported (the corpus is linked into a temp folder, never copied into the repo)."""
    labels = [json.loads(line) for line in (CORPUS / "labels.jsonl").read_text().splitlines()]
    files = [label["file"] for label in labels if label["format"] == "rfc822"]
    assert len(files) == 179
    for n, name in enumerate(sorted(files)):
        (tmp_path / f"{n:04d}-{Path(name).name}").symlink_to(CORPUS / name)
    result = run_replay(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = inbound_lines(result.stdout)
    assert len(lines) == len(files)
    assert all(line["status"] == "done" for line in lines)
    assert all(line["message_id"].startswith("<") for line in lines)
    malformed = [line for line in lines if "malformed" in line["file"] or "broken" in line["file"]]
    assert malformed and any(line["defects"] for line in malformed)


def test_screening_fixtures_replay(tmp_path: Path) -> None:
    """The labelled screening set (tests/fixtures/screening) is complete and replays:
    every labelled file exists, and each gives one line and no pipeline failure."""
    folder = FIXTURES / "screening"
    labels = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()]
    files = sorted(p.name for p in folder.glob("*.eml"))
    assert sorted(label["file"] for label in labels) == files
    assert {label["label"] for label in labels} == {"opt_out", "auto_reply", "negative"}
    result = run_replay(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    assert all(line["status"] == "done" and not line["defects"] for line in lines)
