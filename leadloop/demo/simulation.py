"""The demo's world: the real daemon (``Service``) on a scratch directory,
aiosmtpd and pymap on loopback, the buyers, and an accelerated clock.

Each simulated hour is one ``Service.run_once()`` (fetch, due work,
pipeline, cadence tick, sending, alerts) at the top of the hour.  Mail the
relay accepted reaches the buyers, whose reactions are queued at their own
times; between two hours the clock moves to each reaction in turn, so a
click really comes twenty minutes after its mail and the daemon reads a
reply at the next hour, as it would poll a real mailbox."""

from __future__ import annotations

import email
import email.policy
import heapq
import itertools
import random
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aioimaplib
from sqlalchemy import select

from leadloop.agent.leads import import_leads
from leadloop.agent.tracking import signed_headers
from leadloop.channels.imap import wait_hello
from leadloop.clock import ManualClock
from leadloop.config import load
from leadloop.daemon.service import Service
from leadloop.demo.imap import pymap_server
from leadloop.demo.leads import SAMPLE_LEADS, SampleLead, write_csv
from leadloop.demo.narrate import Narrator
from leadloop.demo.personas import BROWSER, Action, Buyer, Persona, persona_for
from leadloop.demo.scenario import IMAP_USER, PUBLIC_URL, write_config
from leadloop.demo.smtp import CaptureHandler, smtp_server
from leadloop.report.metrics import build_report, catalog_urls
from leadloop.storage import repo
from leadloop.storage.models import InboundMessage, Lead

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
"""A Monday morning: 06:00 UTC, before the send window opens in Europe."""
SEED = 20260302
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Options:
    leads: int = 20
    """The first this many sample leads take part (personas dealt in turn)."""
    days: int = 21


@dataclass(frozen=True)
class Outcome:
    lead: SampleLead
    persona: Persona
    state: str
    """The lead's state when the simulation ended."""


@dataclass
class Result:
    outcomes: list[Outcome]
    failed: list[str]
    """Inbound messages the pipeline failed on (quarantined after errors)."""
    report: dict[str, Any]
    """``build_report`` over the simulated weeks."""


@dataclass
class World:
    """The daemon, its servers and the buyers, on one clock."""

    service: Service
    clock: ManualClock
    relay: CaptureHandler
    deliver: Callable[[bytes], Awaitable[None]]
    """Puts a mail into the watched IMAP inbox."""
    http: aiohttp.ClientSession
    buyers: dict[str, Buyer]
    conversion_secret: str
    narrator: Narrator
    queue: list[tuple[datetime, int, Action]] = field(default_factory=list)
    """The buyers' actions to come, by time (then in the order planned)."""
    seen: int = 0
    """Mails of ``relay.received`` already handed to their buyers."""
    _order: itertools.count[int] = field(default_factory=itertools.count)

    # -- one hour ----------------------------------------------------------
    async def hour(self) -> None:
        """Run the daemon once now, hand the new mail to its buyers, then
        play the buyers' actions due before the next hour."""
        await self.service.run_once()
        await self.narrator.catch_up()
        self.deliver_new_mail()
        next_hour = self.clock.now() + HOUR
        while self.queue and self.queue[0][0] < next_hour:
            at, _, action = heapq.heappop(self.queue)
            self.clock.move_to(at)
            await self.act(action)
            await self.narrator.catch_up()
        self.clock.move_to(next_hour)

    def deliver_new_mail(self) -> None:
        """Give each buyer the mail the relay accepted for it since the last hour."""
        now = self.clock.now()
        for item in self.relay.received[self.seen :]:
            message = email.message_from_bytes(item.data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            for rcpt in item.rcpt_tos:
                buyer = self.buyers.get(rcpt.lower())
                if buyer is None:
                    continue  # staff: sellers and supervisors read, never answer here
                for action in buyer.receive(message, now):
                    heapq.heappush(self.queue, (action.at, next(self._order), action))
        self.seen = len(self.relay.received)

    async def act(self, action: Action) -> None:
        """Do what a buyer (or the shop) does: mail lands in the inbox; a
        click, an unsubscribe or an order is an HTTP request to the daemon's
        own listeners."""
        self.narrator.buyer(action, self.clock.now())
        if action.kind == "mail":
            await self.deliver(action.raw)
            return
        if action.kind == "click":
            request = self.http.get(
                self.local(action.url), headers={"User-Agent": BROWSER}, allow_redirects=False
            )  # a 302 to the shop, not followed: no network
        elif action.kind == "unsubscribe":
            request = self.http.post(self.local(action.url), data={"List-Unsubscribe": "One-Click"})
        else:
            headers = signed_headers(self.conversion_secret, action.body, self.clock.now())
            headers["Content-Type"] = "application/json"
            request = self.http.post(
                self.admin("/hooks/conversion"), data=action.body, headers=headers
            )
        async with request as response:
            await response.read()
        if response.status >= 400:
            self.narrator.refused(
                action, self.clock.now(), f"HTTP {response.status} {response.reason}"
            )

    def local(self, url: str) -> str:
        """A public URL as the reverse proxy in front of the listener passes it on."""
        assert self.service.web is not None
        return url.replace(PUBLIC_URL, f"http://127.0.0.1:{self.service.web.ports['public']}")

    def admin(self, path: str) -> str:
        assert self.service.web is not None
        return f"http://127.0.0.1:{self.service.web.ports['admin']}{path}"


@asynccontextmanager
async def world(directory: Path, options: Options, narrator: Narrator) -> AsyncIterator[World]:
    """Servers up, config written, daemon started with its listeners, the
    leads imported; everything stopped again on the way out."""
    rng = random.Random(SEED)
    leads = SAMPLE_LEADS[: options.leads]
    buyers = {
        lead.email: Buyer(lead, persona_for(i), (i // 10) % 2, random.Random(rng.random()))
        for i, lead in enumerate(leads)
    }
    relay = CaptureHandler(
        rcpt_replies={
            b.lead.email: f"550 5.1.1 <{b.lead.email}>: Recipient address rejected: User unknown"
            for b in buyers.values()
            if b.refused_at_rcpt
        }
    )
    clock = ManualClock(START)
    imap_password = f"demo-{rng.getrandbits(64):016x}"
    conversion_secret = f"demo-{rng.getrandbits(128):032x}"
    async with (
        smtp_server(relay, hostname="mx.acme.example") as smtp_port,
        pymap_server(IMAP_USER, imap_password) as imap,
    ):
        config = write_config(
            directory,
            smtp_port=smtp_port,
            imap_port=imap.port,
            imap_password=imap_password,
            conversion_secret=conversion_secret,
        )
        service = Service(load(config), clock=clock)
        await service.start()
        try:
            assert service.db is not None
            csv_path = directory / "leads.csv"
            write_csv(len(leads), csv_path)
            await import_leads(service.db, csv_path, clock.now(), actor="demo")
            await service.start_listeners()
            narrator.attach(service.db)

            async def deliver(raw: bytes) -> None:
                await append(imap.host, imap.port, imap.user, imap.password, raw)

            async with aiohttp.ClientSession() as http:
                yield World(
                    service, clock, relay, deliver, http, buyers, conversion_secret, narrator
                )
        finally:
            await service._close()
            service.lock.release()


async def append(host: str, port: int, user: str, password: str, raw: bytes) -> None:
    """APPEND *raw* to INBOX, as the MTA's delivery agent would."""
    client = aioimaplib.IMAP4(host, port, timeout=10)
    await wait_hello(client, 10)
    try:
        response = await client.login(user, password)
        if response.result != "OK":
            raise RuntimeError(f"IMAP LOGIN refused: {response.lines!r}")
        response = await client.append(raw, mailbox="INBOX")
        if response.result != "OK":
            raise RuntimeError(f"IMAP APPEND refused: {response.lines!r}")
    finally:
        await client.logout()


async def simulate(
    options: Options,
    narrator: Narrator,
    *,
    progress: Callable[[int], object] = lambda hours: None,
) -> Result:
    """Run the demo in a scratch directory (removed after); *progress* hears
    of each simulated hour."""
    with tempfile.TemporaryDirectory(prefix="leadloop-demo-") as scratch:
        async with world(Path(scratch), options, narrator) as w:
            for _ in range(options.days * 24):
                await w.hour()
                progress(1)
            return await _result(w)


async def _result(w: World) -> Result:
    """The personas' final states, the messages the pipeline failed on, and
    the report over the simulated weeks."""
    db = w.service.db
    assert db is not None
    loaded = w.service.loaded
    now = w.clock.now()
    async with db.sessions() as session:
        states = {lead.email: lead.state for lead in await session.scalars(select(Lead))}
        quarantined = await session.scalars(
            select(InboundMessage).where(
                InboundMessage.status == repo.QUARANTINED,
                InboundMessage.attempts >= loaded.settings.pipeline.max_attempts,
            )
        )
        failed = [f"{m.message_id}: {m.last_error}" for m in quarantined]
    report = await build_report(db, START, now, catalog_urls=catalog_urls(loaded), now=now)
    return Result(
        outcomes=[
            Outcome(b.lead, b.persona, states.get(b.lead.email, "?")) for b in w.buyers.values()
        ],
        failed=failed,
        report=report,
    )
