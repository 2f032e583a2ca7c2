"""`leadloop demo`, shortened: one lead per persona for 15 simulated days,
through the command's own code path (aiosmtpd and pymap on loopback, the
real daemon, simulated buyers), ends each persona in the state the policy
gives, prints the conversation, the report table and one line per persona,
and writes the HTML report."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from leadloop.demo import run_demo
from leadloop.demo.personas import Persona

# What the daemon makes of each persona by the end of day 15 (Mon 2 Mar
# 06:00 UTC to Tue 17 Mar 06:00 UTC); DESIGN.md's state table.
EXPECTED = {
    # Objects to the price, gets the annual-billing answer, then stays quiet:
    # after two nudges the conversation closes through the hand-off rules,
    # and negative purchase interest sends it to the supervisor.
    Persona.PRICE: "disqualified",
    # Asks about the free trial (answered from pricing.md), then for a call
    # (the booking link), then stays quiet: the conversation closes with no
    # BANT element met (BANT low), which the state table disqualifies.
    Persona.QUESTION: "disqualified",
    # Asks to buy with need and timing stated: qualified (warm introduction
    # with the tracked order link), clicks it, the shop's signed webhook
    # reports the order: won.
    Persona.PURCHASE: "won",
    # Asks for a call after the first follow-up, gets the booking link, says
    # it booked and names fleet size and timing: BANT medium, qualified.
    Persona.MEETING: "qualified",
    # Out of office until Monday 16 March: the next touch moves to the 17th,
    # so the lead is still in its cadence.
    Persona.OUT_OF_OFFICE: "engaging",
    # Its server bounces the first touch with a DSN, status 5.1.1.
    Persona.BOUNCE: "invalid",
    # One-click unsubscribe (RFC 8058) from the first follow-up's header.
    Persona.OPT_OUT: "opted_out",
    # Asks for a person: escalated to the supervisor, the agent is silent.
    Persona.HUMAN: "paused",
    # Instructions aimed at the AI: escalated, never answered.
    Persona.INJECTION: "paused",
    # Never answers: four touches, then lost two business days after the last.
    Persona.SILENCE: "lost",
}


def test_a_short_demo_ends_every_persona_in_its_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "report.html"
    args = argparse.Namespace(leads=10, days=15, html=str(html), quiet=False)
    assert run_demo(args) == 0
    out = capsys.readouterr().out

    # One line per persona: lead, persona, final state.
    personas = out.split("Personas (lead, persona, final state)\n", 1)[1]
    found = {
        m.group(2): m.group(3)
        for m in re.finditer(r"^  (\S+@\S+)\s+(\S.*?)\s{2,}(\w+)$", personas, re.MULTILINE)
    }
    assert found == {persona.value: state for persona, state in EXPECTED.items()}

    # The conversation, as the pipeline recorded it.
    assert re.search(r"kim\.berger@northwind\.example\s+objection\(price\) -> reply", out)
    assert re.search(r"-> kim\.berger@northwind\.example\s+touch \"Northwind Logistik", out)
    tom = r"tom\.hughes@brightbake\.example\s+"
    assert re.search(tom + r"purchase_intent -> qualify => qualified", out)
    assert re.search(tom + r"qualified -> won: order AC-", out)
    assert re.search(r"maria\.lopez@iberfresh\.example\s+bounce 5\.1\.1 => invalid", out)
    assert re.search(r"sean\.obrien@greenisle\.example\s+other -> escalate => paused", out)
    assert re.search(r"jonas\.weber@alpenbau\.example\s+next touch moved: out of office", out)
    # The report table and the HTML page.
    assert "Report 2026-03-02 .. 2026-03-17" in out
    assert re.search(r"^Won\s+1\s", out, re.MULTILINE)
    assert f"HTML report: {html.resolve()}" in out
    assert html.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


def test_quiet_prints_only_the_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(leads=1, days=1, html=str(tmp_path / "r.html"), quiet=True)
    assert run_demo(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("\nReport 2026-03-02 .. 2026-03-03")
    assert "kim.berger@northwind.example  price objection   conversing" in out
    assert "objection(price)" not in out  # no conversation lines


def test_options_out_of_range_are_refused(tmp_path: Path) -> None:
    args = argparse.Namespace(leads=21, days=21, html=str(tmp_path / "r.html"), quiet=True)
    assert run_demo(args) == 2
    assert not (tmp_path / "r.html").exists()
