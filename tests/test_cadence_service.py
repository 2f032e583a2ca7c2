"""Cadences through the whole daemon: the Maildir inbox, the real stages,
the planner, the outbox and aiosmtpd on loopback, on an injected clock.

Every hour of three simulated weeks is one ``Service.run_once()``: fetch,
due tasks, pipeline, planning tick, sending.  Buyers answer by mail dropped
into the Maildir, threaded to the touch they received."""

from __future__ import annotations

import email
import email.policy
import itertools
import logging
import mailbox
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from imap_servers import ImapServer
from outbox_env import write_config
from smtp_servers import ScriptedHandler, smtp_server
from sqlalchemy import select
from test_cadence import CADENCE

from leadloop.agent.lifecycle import create_lead
from leadloop.agent.stages import token_keys
from leadloop.clock import ManualClock
from leadloop.config import load
from leadloop.daemon.service import Service
from leadloop.mail.links import open_click
from leadloop.storage.models import CadenceEnrollment, Event, Lead

_ids = itertools.count(1)
MONDAY_EARLY = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # 06:00 in Berlin


def utc(day: str, hour: int) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


@dataclass
class Sent:
    at: datetime
    message: EmailMessage


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


@dataclass
class World:
    service: Service
    clock: ManualClock
    handler: ScriptedHandler
    maildir: Path
    sent: dict[str, list[Sent]] = field(default_factory=lambda: defaultdict(list))
    seen: int = 0
    imap: ImapServer | None = None
    """The IMAP server behind the mailbox, when it is not the Maildir."""

    async def hour(self, on_hour: Callable[[datetime], object] | None = None) -> None:
        await self.service.run_once()
        for item in self.handler.received[self.seen :]:
            message = email.message_from_bytes(item.data, policy=email.policy.default)
            for rcpt in item.rcpt_tos:
                self.sent[rcpt].append(Sent(self.clock.now(), message))
        self.seen = len(self.handler.received)
        if on_hour is not None:
            await on_hour(self.clock.now())  # type: ignore[misc]
        self.clock.advance(timedelta(hours=1))

    async def run_until(
        self, until: datetime, on_hour: Callable[[datetime], object] | None = None
    ) -> None:
        while self.clock.now() <= until:
            await self.hour(on_hour)

    def deliver(self, raw: bytes) -> None:
        mailbox.Maildir(self.maildir, None, create=True).add(raw)

    async def post(self, raw: bytes) -> None:
        """Deliver into the mailbox the daemon watches: an IMAP APPEND, as an
        MTA's delivery agent would, or a Maildir file."""
        if self.imap is not None:
            await self.imap.deliver(raw)
        else:
            self.deliver(raw)

    def linked_skus(self, text: str) -> list[str]:
        """The catalog products the tracked links in *text* lead to (the
        daemon's keys open them: a forged link names none)."""
        keys = token_keys(self.service.loaded)
        found = re.findall(r"https://links\.acme\.example/t/(\S+)", text)
        return [open_click(keys, token, self.clock.now())[2] for token in found]

    def notices(self, address: str) -> list[EmailMessage]:
        """What *address* (staff) got, the daily seller digest left out."""
        return [
            s.message
            for s in self.sent[address]
            if not str(s.message["Subject"]).startswith("Your leads for ")
        ]

    def times(self, address: str) -> list[datetime]:
        return [s.at for s in self.sent[address]]

    async def lead(self, address: str, **fields: object) -> Lead:
        assert self.service.db is not None
        async with self.service.db.transaction() as session:
            return await create_lead(
                session,
                Lead(email=address, first_name="Kim", company="Northwind", country="DE", **fields),
                actor="test",
                reason="test",
                now=self.clock.now(),
            )

    async def state(self, lead: Lead) -> str:
        assert self.service.db is not None
        async with self.service.db.sessions() as session:
            found = await session.get(Lead, lead.id)
            assert found is not None
            return found.state

    async def enrollment(self, lead: Lead) -> CadenceEnrollment:
        assert self.service.db is not None
        async with self.service.db.sessions() as session:
            found = await session.scalar(
                select(CadenceEnrollment).where(CadenceEnrollment.lead_id == lead.id)
            )
            assert found is not None
            return found

    async def events_all(self, kind: str) -> list[Event]:
        assert self.service.db is not None
        async with self.service.db.sessions() as session:
            return list(await session.scalars(select(Event).where(Event.kind == kind)))

    async def events(self, kind: str, lead: Lead) -> list[Event]:
        assert self.service.db is not None
        async with self.service.db.sessions() as session:
            found = await session.scalars(
                select(Event).where(Event.kind == kind, Event.lead_id == lead.id)
            )
            return list(found)


@asynccontextmanager
async def world(
    tmp_path: Path,
    extra: str = CADENCE,
    service: str = "",
    imap: ImapServer | None = None,
    identity: str = "",
) -> AsyncIterator[World]:
    """The daemon on a Maildir inbox, or on *imap* (a real server on loopback;
    the caller sets ``LL_TEST_IMAP_PASSWORD``)."""
    clock = ManualClock(MONDAY_EARLY)
    handler = ScriptedHandler()
    async with smtp_server(handler) as port:
        if imap is None:
            write_config(tmp_path, port, extra)
        else:
            write_config(tmp_path, port, extra, mailbox=imap_mailbox(imap))
        config = tmp_path / "config.toml"
        text = config.read_text().replace("[service]\n", f"[service]\n{service}")
        config.write_text(text.replace("[identity]\n", f"[identity]\n{identity}"))
        daemon = Service(load(config), clock=clock)
        await daemon.start()
        try:
            yield World(daemon, clock, handler, tmp_path / "var" / "mail", imap=imap)
        finally:
            await daemon._close()
            daemon.lock.release()


def imap_mailbox(server: ImapServer) -> str:
    """The mailbox "sales" on an IMAP server instead of the Maildir."""
    return f"""
[[mailboxes]]
name = "sales"
kind = "imap"
address = "sales@acme.example"
display_name = "Acme Sales"
signature = "Ann Example, Acme"
host = "{server.host}"
port = {server.port}
security = "none"
username = "{server.user}"
password_env = "LL_TEST_IMAP_PASSWORD"
"""


def buyer_mail(
    sender: str,
    parent: Message,
    body: str,
    *,
    subject: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "sales@acme.example"
    msg["Subject"] = subject or f"Re: {parent['Subject']}"
    msg["Message-ID"] = f"<{next(_ids)}@buyer.example>"
    msg["In-Reply-To"] = parent["Message-ID"]
    msg["References"] = parent["Message-ID"]
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


def dsn(recipient: str, parent: Message) -> bytes:
    boundary = "dsn-boundary"
    text = f"""\
From: MAILER-DAEMON@mx.northwind.example (Mail Delivery System)
To: sales@acme.example
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-1@mx.northwind.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain

Your message could not be delivered.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.northwind.example

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 no such user

--{boundary}
Content-Type: message/rfc822

From: sales@acme.example
To: {recipient}
Subject: {parent["Subject"]}
Message-ID: {parent["Message-ID"]}

Hi Kim.

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode()


async def test_a_cadence_through_the_daemon_reacts_to_each_kind_of_answer(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        talk = await w.lead("talk@northwind.test")
        away = await w.lead("away@northwind.test")
        gone = await w.lead("gone@northwind.test")
        stop = await w.lead("stop@northwind.test")
        quiet = await w.lead("quiet@northwind.test")

        async def buyers(now: datetime) -> None:
            if now != utc("2026-03-02", 11):
                return
            first = {a: w.sent[a][0].message for a in w.sent}
            w.deliver(buyer_mail(talk.email, first[talk.email], "What does it cost?"))
            w.deliver(
                buyer_mail(
                    away.email,
                    first[away.email],
                    "I am out of the office and back on Monday, 9 March 2026.",
                    subject="Out of Office: Northwind and FleetTrack",
                    headers={"Auto-Submitted": "auto-replied"},
                )
            )
            w.deliver(dsn(gone.email, first[gone.email]))
            w.deliver(buyer_mail(stop.email, first[stop.email], "Please unsubscribe me."))

        await w.run_until(utc("2026-03-02", 11), buyers)
        await w.hour()  # 12:00: the answers are read
        assert await w.state(talk) == "conversing"
        [understood] = await w.events("lead.understood", talk)
        assert understood.data["intent"] == "question"
        await w.run_until(utc("2026-03-20", 12))

        # Everyone's first touch at 09:00 in Berlin (CET), Monday.
        for lead in (talk, away, gone, stop, quiet):
            assert w.times(lead.email)[0] == utc("2026-03-02", 8)
        # No reply: three touches, then lost five business days after the last.
        assert w.times(quiet.email) == [
            utc("2026-03-02", 8),
            utc("2026-03-05", 8),
            utc("2026-03-11", 8),
        ]
        assert await w.state(quiet) == "lost"
        # Out of office until Monday 9 March: the next touch a business day
        # after the return, then the cadence goes on from there.
        assert w.times(away.email) == [
            utc("2026-03-02", 8),
            utc("2026-03-10", 8),
            utc("2026-03-16", 8),
        ]
        [moved] = await w.events("cadence.moved", away)
        assert moved.reasons[0].startswith("out of office: next touch at 2026-03-10T08:00")
        # A bounce and an opt-out stop the cadence for good.
        assert len(w.sent[gone.email]) == 1 and await w.state(gone) == "invalid"
        assert len(w.sent[stop.email]) == 1 and await w.state(stop) == "opted_out"
        # The reply stopped the cadence; our answer went at once, then the
        # buyer stayed quiet: nudges 3 and 7 business days later, in the thread.
        answer, nudge1, nudge2 = w.sent[talk.email][1:]
        assert answer.at == utc("2026-03-02", 12)  # policy answered as it read the reply
        assert [nudge1.at, nudge2.at] == [utc("2026-03-05", 12), utc("2026-03-11", 12)]
        assert nudge1.message["In-Reply-To"] == answer.message["Message-ID"]
        assert nudge2.message["In-Reply-To"] == nudge1.message["Message-ID"]
        assert nudge1.message["Subject"] == answer.message["Subject"]
        assert "did my last answer help" in text_of(nudge1.message)
        # Three business days after the last nudge the conversation closes
        # through the hand-off rules, never as lost: one question and no
        # BANT fact (BANT low) is a disqualification, with its reasons.
        assert await w.state(talk) == "disqualified"
        assert (await w.enrollment(talk)).status == "done"
        [closed] = await w.events("lead.disqualified", talk)
        assert any("BANT low" in r for r in closed.reasons)


async def test_a_buyer_who_answers_a_nudge_restarts_the_plan(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        talk = await w.lead("talk@northwind.test")

        async def buyer(now: datetime) -> None:
            if now == utc("2026-03-02", 11):
                parent = w.sent[talk.email][0].message
                w.deliver(buyer_mail(talk.email, parent, "Does it work with SAP?"))
            if now == utc("2026-03-05", 14):  # after the first nudge
                parent = w.sent[talk.email][-1].message
                question = "Thanks. Which SAP systems does the connector support?"
                w.deliver(buyer_mail(talk.email, parent, question))

        await w.run_until(utc("2026-03-20", 12), buyer)
        sent = w.sent[talk.email]
        times = [s.at for s in sent]
        # touch, answer, first nudge; the buyer answers it; our second answer
        # (read at 15:00) restarts the plan; the old second nudge never goes.
        assert times[:4] == [
            utc("2026-03-02", 8),
            utc("2026-03-02", 12),
            utc("2026-03-05", 12),
            utc("2026-03-05", 15),
        ]
        assert utc("2026-03-11", 12) not in times
        assert times[4:] == [utc("2026-03-10", 15), utc("2026-03-16", 15)]
        assert sent[4].message["In-Reply-To"] == sent[3].message["Message-ID"]
        enrollment = await w.enrollment(talk)
        assert enrollment.cadence == "conversation"
        # Quiet after the new nudges, with no BANT fact: closed by the rules.
        assert await w.state(talk) == "disqualified"


async def test_reload_moves_next_touches_and_refuses_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with world(tmp_path) as w:
        lead = await w.lead("kim@northwind.test")
        await w.run_until(utc("2026-03-02", 9))
        before = await w.enrollment(lead)
        assert (before.next_step_id, before.next_at) == ("f1", utc("2026-03-05", 8))

        config = tmp_path / "config.toml"
        text = config.read_text()
        config.write_text(
            text.replace('delay = "3 business days"', 'delay = "1 business day"').replace(
                'hours = "09:00-17:00"', 'hours = "14:00-17:00"'
            )
        )
        assert await w.service.reload()
        after = await w.enrollment(lead)
        # Same step; one business day after the intro went out, at the new window.
        assert (after.next_step_id, after.next_at) == ("f1", utc("2026-03-03", 13))

        config.write_text(text.replace('delay = "4 business days"', 'delay = "4 bananas"'))
        with caplog.at_level(logging.ERROR):
            assert not await w.service.reload()
        assert "reload refused" in caplog.text and "4 bananas" in caplog.text
        assert (await w.enrollment(lead)).next_at == utc("2026-03-03", 13)
        await w.run_until(utc("2026-03-03", 14))
        assert w.times(lead.email) == [utc("2026-03-02", 8), utc("2026-03-03", 13)]


async def test_watched_file_reloads_once_per_edit_and_restart_only_keys_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with world(tmp_path, service="watch_config = true\n") as w:
        config = tmp_path / "config.toml"
        assert not await w.service.check_config_file()  # unchanged
        good = config.read_text().replace('hours = "09:00-17:00"', 'hours = "10:00-16:00"')
        config.write_text(good)
        assert await w.service.check_config_file()
        assert w.service.planner is not None
        assert w.service.planner.settings.window.start.hour == 10
        assert not await w.service.check_config_file()  # applied once

        config.write_text(good.replace('days = "mon-fri"', 'days = "someday"'))
        with caplog.at_level(logging.ERROR):
            assert not await w.service.check_config_file()
            assert not await w.service.check_config_file()  # refused once, not again
        assert caplog.text.count("reload refused") == 1
        assert w.service.planner.settings.window.start.hour == 10

        database = w.service.loaded.database_url
        config.write_text(good + '\n[database]\nurl = "sqlite:///elsewhere.db"\n')
        with caplog.at_level(logging.WARNING):
            assert await w.service.check_config_file()
        assert "database changed; that takes a restart" in caplog.text
        assert w.service.loaded.database_url == database
