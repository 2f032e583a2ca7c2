"""`leadloop replay DIR --expect FILE.yaml`: the decisions diffed against QA's
expectations, a mistyped expectations file refused before any replay, and the
exit code saying whether everything matched."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO
from test_replay import REPLAY, inbound_lines

from leadloop import cli
from leadloop.daemon.replay import (
    ExpectationError,
    Mismatch,
    compare,
    expect_summary,
    load_expectations,
)

# What the real pipeline decides for qa_folder's mails (replayed, then written
# down): Dana's question and Li's demo request are answered, the unknown sender
# is held, an out-of-office and an opt-out are screened before being understood.
ALL_MATCH = """\
# file name -> what must happen; any key left out is not checked
01-dana-reply.eml:    {kind: reply, intent: question, action: reply}
02-no-message-id.eml: {kind: reply, intent: meeting_request, action: reply}
03-bad-date.eml:      {kind: held, action: null}
04-ooo.eml:           {kind: auto_reply, intent: null, action: null}
05-stop.eml:          {kind: unsubscribe, action: null}
"""


def qa_folder(tmp_path: Path) -> Path:
    """The replay fixtures plus an out-of-office and an opt-out from the
    screening set, linked (not copied) into one folder."""
    folder = tmp_path / "qa"
    folder.mkdir()
    for name in ("01-dana-reply.eml", "02-no-message-id.eml", "03-bad-date.eml", "leads.csv"):
        (folder / name).symlink_to(REPLAY / name)
    (folder / "sent").symlink_to(REPLAY / "sent")
    (folder / "04-ooo.eml").symlink_to(FIXTURES / "screening" / "en-003.eml")
    (folder / "05-stop.eml").symlink_to(FIXTURES / "screening" / "en-002.eml")
    return folder


def replay_expecting(
    folder: Path, expectations: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    expect = tmp_path / "expect.yaml"
    expect.write_text(textwrap.dedent(expectations))
    code = cli.main(
        ["replay", str(folder), "--config", str(REPO / "config.toml"), "--expect", str(expect)]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- compare -------------------------------------------------------------------

LINES = [
    {"file": "001-price.eml", "kind": "reply", "intent": "objection", "action": "objection"},
    {"to": ["buyer@example.com"], "subject": "Re: Price", "kind": "reply"},
    {"file": "002-ooo.eml", "kind": "auto_reply", "intent": None, "action": None},
]


def test_compare_all_matching() -> None:
    """Matching decisions give no mismatch; keys left out and outbound lines are not checked."""
    expected = {
        "001-price.eml": {"kind": "reply", "action": "objection"},
        "002-ooo.eml": {"kind": "auto_reply", "intent": None},
    }
    assert compare(expected, LINES) == []
    assert expect_summary(len(expected), []) == "expect: 2 files checked, 0 mismatches"


def test_compare_reports_each_difference_in_replay_order() -> None:
    """Each differing key is one mismatch (files in name order, keys kind, intent,
    action), null spelled as in YAML; an expected file without a line was never replayed."""
    expected = {
        "003-gone.eml": {"kind": "reply"},
        "002-ooo.eml": {"action": "reply", "intent": "out_of_office"},
        "001-price.eml": {"kind": "reply", "intent": None},
    }
    mismatches = compare(expected, LINES)
    assert mismatches == [
        Mismatch("001-price.eml", "intent", None, "objection"),
        Mismatch("002-ooo.eml", "intent", "out_of_office", None),
        Mismatch("002-ooo.eml", "action", "reply", None),
        Mismatch("003-gone.eml", None),
    ]
    assert [m.describe() for m in mismatches] == [
        "001-price.eml: intent expected null, got 'objection'",
        "002-ooo.eml: intent expected 'out_of_office', got null",
        "002-ooo.eml: action expected 'reply', got null",
        "003-gone.eml: expected, but never replayed",
    ]
    assert expect_summary(3, mismatches) == (
        "expect: 3 files checked, 3 mismatches, never replayed: 003-gone.eml"
    )
    assert expect_summary(1, mismatches[:1]) == "expect: 1 file checked, 1 mismatch"


# -- load_expectations ---------------------------------------------------------


@pytest.fixture
def inbound_dir(tmp_path: Path) -> Path:
    """A replay folder with two inbound mails, a leads.csv and one earlier mail of ours."""
    folder = tmp_path / "mails"
    (folder / "sent").mkdir(parents=True)
    for name in ("001-price.eml", "002-ooo.eml", "leads.csv", "sent/000-touch.eml"):
        (folder / name).write_text("")
    return folder


def expectations_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "expect.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_mapping_and_list_forms_read_alike(tmp_path: Path, inbound_dir: Path) -> None:
    """`file: {keys}` and `- {file: ..., keys}` give the same expectations; null is kept."""
    mapping = """\
        001-price.eml: {kind: reply, intent: objection, action: objection}
        002-ooo.eml:   {kind: auto_reply, action: null}
        """
    listed = """\
        - {file: 001-price.eml, kind: reply, intent: objection, action: objection}
        - file: 002-ooo.eml
          kind: auto_reply
          action: null
        """
    want = {
        "001-price.eml": {"kind": "reply", "intent": "objection", "action": "objection"},
        "002-ooo.eml": {"kind": "auto_reply", "action": None},
    }
    assert load_expectations(expectations_file(tmp_path, mapping), inbound_dir) == want
    assert load_expectations(expectations_file(tmp_path, listed), inbound_dir) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("001-price.eml: {kind: reply, intnet: x}\n", "001-price.eml: unknown key 'intnet'"),
        ("001-price.eml: {file: 001-price.eml}\n", "001-price.eml: unknown key 'file'"),
        ("001-price.eml: reply\n", "001-price.eml: expected a mapping"),
        ("001-price.eml:\n", "001-price.eml: expected a mapping such as {kind: reply}, not null"),
        ("001-price.eml: {kind: [reply, objection]}\n", "kind must be a name or null"),
        ("009-missing.eml: {kind: reply}\n", "has no inbound file 009-missing.eml"),
        ("leads.csv: {kind: reply}\n", "has no inbound file leads.csv"),
        ("000-touch.eml: {kind: reply}\n", "has no inbound file 000-touch.eml"),
        ("- {file: 001-price.eml}\n- kind: reply\n", "entry 2: no file"),
        ("- {file: 001-price.eml}\n- 002-ooo.eml\n", "entry 2: expected a mapping"),
        ("- {file: 002-ooo.eml}\n- {file: 002-ooo.eml}\n", "entry 2 (002-ooo.eml): 002-ooo.eml is"),
        ("- {file: 001-price.eml, intnet: x}\n", "entry 1 (001-price.eml): unknown key 'intnet'"),
        (
            "001-price.eml: {}\n001-price.eml: {}\n",
            "line 2, column 1: '001-price.eml' is given twice",
        ),
        (
            "001-price.eml: {kind: reply}\n  002-ooo.eml: {}\n",
            "line 2, column 3: expected <block end>",
        ),
        ("001-price.eml: {kind: reply\n", "line 2, column 1: expected ',' or '}'"),
        ("just a string\n", "expected a mapping of file name to expectations, or a list"),
        ("# nothing yet\n", "no expectations"),
    ],
)
def test_unusable_expectations_are_refused(
    tmp_path: Path, inbound_dir: Path, text: str, message: str
) -> None:
    """Anything that would check less than it seems to is an error naming the file and entry."""
    path = expectations_file(tmp_path, text)
    with pytest.raises(ExpectationError) as caught:
        load_expectations(path, inbound_dir)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


# -- through the command -------------------------------------------------------


def test_expect_all_matching_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When every decision is as expected: exit 0, the JSON lines unchanged, a summary."""
    code, out, err = replay_expecting(qa_folder(tmp_path), ALL_MATCH, tmp_path, capsys)
    assert code == 0, err
    lines = inbound_lines(out)
    assert [line["file"] for line in lines] == [
        "01-dana-reply.eml",
        "02-no-message-id.eml",
        "03-bad-date.eml",
        "04-ooo.eml",
        "05-stop.eml",
    ]
    assert "reasons" in lines[0] and '"to": ["dana.reyes@northwind.example"]' in out
    assert err.splitlines() == ["expect: 5 files checked, 0 mismatches"]


def test_expect_mismatch_exits_1_with_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A decision other than expected exits 1 and stderr names file, key, expected and got."""
    expectations = """\
        - {file: 01-dana-reply.eml, kind: reply, intent: question, action: reply}
        - {file: 04-ooo.eml, kind: auto_reply, intent: out_of_office}
        - {file: 05-stop.eml, kind: unsubscribe}
        """
    code, out, err = replay_expecting(qa_folder(tmp_path), expectations, tmp_path, capsys)
    assert code == 1
    assert len(inbound_lines(out)) == 5
    assert err.splitlines() == [
        "04-ooo.eml: intent expected 'out_of_office', got null",
        "expect: 3 files checked, 1 mismatch",
    ]


@pytest.mark.parametrize(
    ("expectations", "message"),
    [
        ("04-ooo.eml: {kind: auto_reply, reason: ooo}\n", "04-ooo.eml: unknown key 'reason'"),
        ("06-later.eml: {kind: reply}\n", "has no inbound file 06-later.eml"),
    ],
)
def test_expect_usage_errors_exit_2_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], expectations: str, message: str
) -> None:
    """An unknown key or a file not in DIR is a usage error, found before any replay."""
    code, out, err = replay_expecting(qa_folder(tmp_path), expectations, tmp_path, capsys)
    assert code == cli.EXIT_USAGE == 2
    assert out == ""
    assert err.startswith(f"leadloop replay: --expect {tmp_path / 'expect.yaml'}: ")
    assert message in err
