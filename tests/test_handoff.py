"""Sellers and supervisors in the loop, through the daemon on a real IMAP
server (pymap, and Dovecot as the reference) with aiosmtpd as the SMTP peer.

A buyer with purchase intent and two BANT facts goes to a seller (warm
introduction with the seller in CC, hand-off mail with the evidence); a
request for a person becomes an escalation mail; the supervisor's TAKE OVER
silences the agent, RESUME restarts it, EDIT sends exactly their text;
forged, replayed and DMARC-failing commands do nothing; an unanswered
escalation is reminded; APPROVE of a draft that failed a hard check is
refused."""

from __future__ import annotations

import email.utils
import itertools
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from imap_servers import ImapServer
from sqlalchemy import select
from test_cadence import CADENCE
from test_cadence_service import World, buyer_mail, text_of, utc, world

from leadloop.agent.staff import escalate
from leadloop.storage.models import Escalation, Event, Lead

HANDOFF = """
[handoff]
sellers = ["ann@acme.example", "cem@acme.example"]
supervisors = ["boss@acme.example"]
reminder_business_hours = 8
"""
IDENTITY = 'authserv_id = "mx.acme.example"\n'
BOSS = "boss@acme.example"
_ids = itertools.count(1)


@pytest.fixture(params=["pymap", "dovecot"])
def inbox(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ImapServer:
    server: ImapServer = request.getfixturevalue(f"{request.param}_imap")
    monkeypatch.setenv("LL_TEST_IMAP_PASSWORD", server.password)
    return server


def staff_reply(
    parent: Message, body: str, *, sender: str = BOSS, dmarc: str = "pass", domain: str = ""
) -> bytes:
    """A staff member's answer to a notice, quoting it, with the border
    server's Authentication-Results on top (RFC 8601: above Received)."""
    msg = EmailMessage()
    msg["Authentication-Results"] = (
        f"mx.acme.example; dkim={dmarc} header.d={domain or sender.split('@')[1]}; "
        f"dmarc={dmarc} header.from={domain or sender.split('@')[1]}"
    )
    msg["Received"] = "from mail.example (mail.example [192.0.2.1]) by mx.acme.example"
    msg["From"] = sender
    msg["To"] = "sales@acme.example"
    msg["Subject"] = f"Re: {parent['Subject']}"
    msg["Message-ID"] = f"<staff-{next(_ids)}@client.example>"
    msg["In-Reply-To"] = parent["Message-ID"]
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    quoted = "\n".join(f"> {line}" for line in text_of(parent).splitlines())
    msg.set_content(f"{body}\n\nOn Monday, leadloop wrote:\n{quoted}\n")
    return msg.as_bytes()


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "leadloop", *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def notices(w: World, to: str, subject: str) -> list[EmailMessage]:
    return [s.message for s in w.sent[to] if subject in str(s.message["Subject"])]


async def lead_row(w: World, lead: Lead) -> Lead:
    assert w.service.db is not None
    async with w.service.db.sessions() as session:
        found = await session.get(Lead, lead.id)
        assert found is not None
        return found


async def test_sellers_and_supervisors_act_from_their_inbox(
    tmp_path: Path, inbox: ImapServer
) -> None:
    async with world(tmp_path, CADENCE + HANDOFF, imap=inbox, identity=IDENTITY) as w:
        buyer = await w.lead("buy@northwind.test")
        person = await w.lead("person@northwind.test")
        edit = await w.lead("edit@northwind.test")
        bodies = {
            buyer.email: "We run 40 delivery vans and need live tracking to cut fuel costs. "
            "We want to go live next month, so please send me the order link for Acme "
            "FleetTrack Professional.",
            person.email: "Can I talk to a real person please?",
            edit.email: "Am I talking to a bot? I want a human.",
        }

        async def answer(now: datetime) -> None:
            if now == utc("2026-03-02", 11):
                for address, body in bodies.items():
                    await w.post(buyer_mail(address, w.sent[address][0].message, body))

        await w.run_until(utc("2026-03-02", 13), answer)

        # -- qualified: to a seller, with a warm introduction ----------------
        assert await w.state(buyer) == "qualified"
        [intro] = [s.message for s in w.sent[buyer.email][1:]]
        assert intro["Cc"] == "ann@acme.example" and "Auto-Submitted" not in intro
        assert intro["In-Reply-To"]  # in the buyer's thread
        intro_text = text_of(intro)
        assert "Ann (ann@acme.example)" in intro_text
        # What they asked for, as a tracked link (the catalog URL never shows).
        assert w.linked_skus(intro_text) == ["FT-PRO"]
        assert "https://acme.example/buy/" not in intro_text
        [handoff] = notices(w, "ann@acme.example", "Qualified lead")
        assert handoff["Auto-Submitted"] == "auto-generated"
        body = text_of(handoff)
        assert "BANT medium: 2 of 4 met (need, timing)" in body
        assert '- need: met, "We run 40 delivery vans' in body and "2026-03-02" in body
        assert "purchase interest positive_high" in body
        assert "(purchase_intent): We run 40 delivery vans" in body  # the dated summary
        assert "Suggested next action: Create task" in body
        assert "> We run 40 delivery vans" in body  # the thread, quoted
        assert "hxxps://acme[.]example" in body  # links defanged for staff
        [handed] = await w.events("lead.handed_off", buyer)
        assert handed.data["seller"] == "ann@acme.example"
        assert (await lead_row(w, buyer)).owner == "ann@acme.example"

        # -- a request for a person: an escalation mail to the supervisor -----
        assert await w.state(person) == "paused"
        [mail] = notices(w, BOSS, f"({person.email})")
        assert "Escalation #" in str(mail["Subject"]) and "human_request" in str(mail["Subject"])
        assert "Can I talk to a real person please?" in text_of(mail)
        assert "TAKE OVER" in text_of(mail) and "Command token: " in text_of(mail)
        assert len(w.sent[person.email]) == 1  # no reply to the buyer

        # -- forged sender, failed DMARC: nothing happens, nobody is answered -
        await w.post(staff_reply(mail, "RESUME", sender="eve@evil.example"))
        await w.post(staff_reply(mail, "RESUME", dmarc="fail"))
        await w.hour()
        await w.hour()
        assert await w.state(person) == "paused"
        assert not w.sent["eve@evil.example"]  # no backscatter to a forged sender
        assert not notices(w, BOSS, "RESUME")  # nothing done, nothing confirmed
        assert len(w.sent[person.email]) == 1
        refused = await w.events("staff.command_refused", person)
        assert {r.reasons[0].split(":")[0] for r in refused} >= {
            "eve@evil.example is not on the team",
            "no trusted Authentication-Results with dmarc=pass",
        }

        # -- TAKE OVER: the agent is silent on the lead -----------------------
        take_over = staff_reply(mail, "TAKE OVER\n\nI'll call them today.")
        await w.post(take_over)
        await w.hour()
        [confirmed] = notices(w, BOSS, "Done: TAKE OVER")
        assert (await lead_row(w, person)).owner == BOSS
        await w.post(buyer_mail(person.email, w.sent[person.email][0].message, "Hello? Anyone?"))
        await w.run_until(utc("2026-03-04", 12))
        assert len(w.sent[person.email]) == 1  # silent, and no cadence touch either
        [silent] = [e for e in await w.events("lead.decided", person) if "silent" in e.reasons[0]]
        assert silent.data["action"] == "nothing"
        # The same token again, in a new mail (a replay): nothing more.
        await w.post(staff_reply(mail, "RESUME"))
        await w.hour()
        assert len(notices(w, BOSS, "TAKE OVER")) == 1
        assert any(
            "already used" in e.reasons[0] for e in await w.events("staff.command_refused", person)
        )

        # -- RESUME (with the confirmation's fresh token): the agent is back --
        await w.post(staff_reply(confirmed, "RESUME"))
        await w.hour()
        assert await w.state(person) == "conversing"
        question = "OK. Where is our data hosted?"
        await w.post(buyer_mail(person.email, w.sent[person.email][0].message, question))
        await w.run_until(utc("2026-03-05", 12))
        assert len(w.sent[person.email]) == 2
        assert "Frankfurt" in text_of(w.sent[person.email][1].message)

        # -- EDIT: exactly the supervisor's text goes to the lead -------------
        edit_mail, *reminders = notices(w, BOSS, f"({edit.email})")
        assert all("Reminder: Escalation" in str(m["Subject"]) for m in reminders)
        new_text = "Hi Kim,\n\nI am Bob, a person. I will call you tomorrow at 10.\n\nBob"
        await w.post(staff_reply(edit_mail, f"EDIT\n{new_text}"))
        await w.run_until(utc("2026-03-05", 15))
        assert len(w.sent[edit.email]) == 2
        sent_text = text_of(w.sent[edit.email][1].message).replace("\r\n", "\n")
        assert sent_text.startswith(new_text + "\n")
        assert "Command token" not in sent_text and "EDIT" not in sent_text
        assert await w.state(edit) == "conversing"


async def test_escalations_are_reminded_and_hard_failures_need_edit(
    tmp_path: Path, pymap_imap: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LL_TEST_IMAP_PASSWORD", pymap_imap.password)
    async with world(tmp_path, CADENCE + HANDOFF, imap=pymap_imap, identity=IDENTITY) as w:
        lead = await w.lead("held@northwind.test")
        await w.run_until(utc("2026-03-02", 11))  # the first touch went out at 09:00
        assert w.service.db is not None
        act = next(s for s in w.service.pipeline.stages if s.name == "act")  # type: ignore[union-attr]
        async with w.service.db.transaction() as session:
            found = await session.get(Lead, lead.id)
            assert found is not None
            await escalate(
                session,
                act.staff,  # type: ignore[attr-defined]
                found,
                condition="guardrail_failure",
                reasons=["price 9 is neither a catalog price nor in a cited passage"],
                now=w.clock.now(),
                actor="test",
                draft="Hi Kim,\n\nProfessional is only EUR 9 per vehicle.\n",
                hard=True,
            )
        await w.hour()
        [opened] = notices(w, BOSS, "Escalation #")
        assert "it failed a hard check: APPROVE is refused" in text_of(opened)
        # APPROVE is refused: the draft invented a price.
        await w.post(staff_reply(opened, "APPROVE"))
        await w.hour()
        [refused] = notices(w, BOSS, "Not done: APPROVE")
        assert "Reply with EDIT" in text_of(refused)
        assert len(w.sent[lead.email]) == 1 and await w.state(lead) == "paused"
        # Nobody acts: 8 business hours later (Monday 12:00 Berlin + 8 h in
        # a 09:00-17:00 window is Tuesday 12:00 Berlin) the supervisor hears
        # again.
        await w.run_until(utc("2026-03-03", 12))
        [reminder] = notices(w, BOSS, "Reminder: Escalation #")
        assert w.sent[BOSS][-1].at >= utc("2026-03-03", 11)
        assert "still open" in text_of(reminder)
        async with w.service.db.sessions() as session:
            row = await session.scalar(select(Escalation).where(Escalation.lead_id == lead.id))
            assert row is not None and row.status == "reminded"
            events = await session.scalars(
                select(Event).where(Event.kind == "escalation.reminded", Event.lead_id == lead.id)
            )
            assert len(list(events)) == 1
        assert re.search(r"Command token: \S+", text_of(reminder))
        # The CLI shows it.
        config = str(tmp_path / "config.toml")
        listed = run_cli("escalations", "list", "--json", "--config", config)
        [row] = [json.loads(line) for line in listed.splitlines()]
        assert (row["lead"], row["status"]) == (lead.email, "reminded")
        shown = run_cli("escalations", "show", str(row["id"]), "--config", config)
        assert "held draft (failed a hard check: APPROVE is refused)" in shown
        assert "| Professional is only EUR 9 per vehicle." in shown


async def test_a_looping_lead_is_escalated_once(tmp_path: Path) -> None:
    extra = CADENCE + HANDOFF + "\n[screening]\nsender_per_10min = 3\n"
    async with world(tmp_path, extra) as w:
        lead = await w.lead("bot@northwind.test")
        await w.run_until(utc("2026-03-02", 10))
        parent = w.sent[lead.email][0].message
        for n in range(5):
            w.deliver(buyer_mail(lead.email, parent, f"Automatic acknowledgement number {n}."))
        await w.hour()
        await w.hour()
        assert await w.state(lead) == "paused"
        [escalated] = await w.events("lead.escalated", lead)
        assert escalated.data["condition"] == "loop_suspected"
        assert len(notices(w, BOSS, "loop_suspected")) == 1  # once, not per looping mail
