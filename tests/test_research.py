"""Lead research (seed 003, "Research insights"): facts from our own data in a
real migrated SQLite database, and the company-website provider against a
real HTTP server on 127.0.0.1 that logs every request it gets."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from conftest import T0
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.leads import import_leads
from leadloop.agent.lifecycle import State, transition
from leadloop.channels.base import RawMail
from leadloop.config import LoadedConfig, ResearchConfig
from leadloop.daemon.ingest import to_new_inbound
from leadloop.research.facts import (
    LeadResearch,
    MailIndex,
    refresh_research,
    research_lead,
    research_summaries,
    save_domain_result,
)
from leadloop.research.providers import ProviderResult, company_domain
from leadloop.research.website import OVERVIEW_CHARS, WebsiteProvider
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    InboundMessage,
    Lead,
    MailThread,
    OutboundMessage,
    ResearchResult,
)

CONFIG = """
[identity]
domain = "acme.example"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
display_name = "Acme Sales"

[handoff]
sellers = ["sam@acme.example"]

[[sellers]]
address = "sam@acme.example"
name = "Sam Seller"

[[sellers]]
address = "tia@acme.example"
name = "Tia Trader"

[research]
mode = "engage"
outside = {outside}
allow_private_addresses = true
fetch_timeout = "5s"
"""

LEADS = """\
email,first_name,last_name,company,account_domain,account_name,open_opportunity_value,\
owner
ana@buyer.example,Ana,Alves,Buyer Inc,buyer.example,Buyer Inc,12500,tia@acme.example
bob@buyer.example,Bob,Brown,Buyer Inc,,,,tia@acme.example
zed@gmail.com,Zed,Zeta,,,,,tia@acme.example
cy@nocorp.example,Cy,Cole,,,,,sam@acme.example
di@nocorp.example,Di,Dunn,,,,,sam@acme.example
eve@unowned.example,Eve,Ezra,,,,,
"""
_n = itertools.count(1)


def at(day: int, hour: int = 9, month: int = 2) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


async def load(db: Database, tmp_path: Path) -> dict[str, Lead]:
    path = tmp_path / "leads.csv"
    path.write_text(LEADS)
    report = await import_leads(db, path, at(1))
    assert (report.created, report.rejected) == (6, [])
    async with db.transaction() as session:
        return {lead.email.split("@")[0]: lead for lead in await session.scalars(select(Lead))}


async def receive(
    db: Database,
    mailbox_id: int,
    sender: str,
    to: str,
    when: datetime,
    *,
    cc: str | None = None,
    kind: str = "reply",
    lead: Lead | None = None,
    thread_id: int | None = None,
    intent: str | None = None,
) -> None:
    """Store a mail the way ingest does (its headers parsed from the bytes),
    then give it the outcome the pipeline would have."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    if cc:
        mail["Cc"] = cc
    mail["Subject"] = "Re: widgets"
    mail["Date"] = format_datetime(when)
    mail["Message-ID"] = make_msgid(domain="mail.test")
    mail.set_content("Hello.")
    new = to_new_inbound(RawMail(f"u{next(_n)}", mail.as_bytes()), 1_000_000)
    async with db.transaction() as session:
        [row_id] = await repo.store_inbound(session, mailbox_id, [new], when)
        await session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == row_id)
            .values(
                stage="done",
                status="done",
                kind=kind,
                lead_id=lead.id if lead else None,
                thread_id=thread_id,
                result={"intent": intent} if intent else {},
                finished_at=when,
            )
        )


async def send(
    db: Database,
    mailbox_id: int,
    lead: Lead,
    to: list[str],
    when: datetime,
    *,
    kind: str = "touch",
    status: str = "sent",
) -> None:
    n = next(_n)
    async with db.transaction() as session:
        session.add(
            OutboundMessage(
                mailbox_id=mailbox_id,
                lead_id=lead.id,
                message_id=f"<o{n}@acme.example>",
                idempotency_key=f"k{n}",
                kind=kind,
                to_addrs=to,
                status=status,
                not_before=when,
                created_at=when,
                sent_at=when if status == "sent" else None,
                payload={"text": "Hello."},
            )
        )


@pytest.fixture
async def world(
    db: Database, make_config: Callable[[str], LoadedConfig], tmp_path: Path
) -> tuple[Database, LoadedConfig, dict[str, Lead]]:
    """Leads imported from CSV; mail between them and our people (on SQLite
    and on PostgreSQL: the facts lean on JSON columns read as text)."""
    loaded = make_config(CONFIG.format(outside="false"))
    leads = await load(db, tmp_path)
    async with db.transaction() as session:
        sales = (await repo.ensure_mailbox(session, "sales", "imap", "sales@acme.example")).id
        thread = MailThread(lead_id=leads["ana"].id, subject="widgets", created_at=at(10))
        session.add(thread)
        await session.flush()
        thread_id = thread.id
    ana, bob, zed = leads["ana"], leads["bob"], leads["zed"]
    # Ana answers our touch, copying Tia; an older question from Ana too.
    await send(db, sales, ana, ["ana@buyer.example"], at(10))
    await receive(
        db, sales, "Ana Alves <ana@buyer.example>", "sales@acme.example", at(12), lead=ana,
        thread_id=thread_id, intent="question",
    )  # fmt: skip
    await receive(
        db, sales, "Ana <ana@buyer.example>", "Acme Sales <sales@acme.example>", at(20),
        cc="Tia Trader <tia@acme.example>", lead=ana, thread_id=thread_id, intent="meeting_request",
    )  # fmt: skip
    # Carl, not a lead, wrote to Sam; Tia wrote to Bob (her mail reached our mailbox by Cc).
    await receive(
        db, sales, "carl@buyer.example", "Sam Seller <sam@acme.example>", at(15), kind="held"
    )
    await receive(
        db, sales, "tia@acme.example", "bob@buyer.example", at(18),
        cc="sales@acme.example", kind="staff",
    )  # fmt: skip
    # Not exchanges: a bounce from their mail server, a touch still queued, a
    # draft filed in a seller's Drafts folder.
    await receive(
        db, sales, "mailer-daemon@buyer.example", "sales@acme.example", at(21), kind="bounce"
    )
    await send(db, sales, ana, ["ana@buyer.example"], at(22), status="queued")
    await send(db, sales, ana, ["ana@buyer.example"], at(23), kind="filed")
    # Zed writes from gmail.com; a stranger at gmail.com wrote to Sam.
    await receive(db, sales, "zed@gmail.com", "sales@acme.example", at(16), lead=zed)
    await receive(db, sales, "stranger@gmail.com", "sam@acme.example", at(17), kind="held")
    await send(db, sales, bob, ["bob@buyer.example"], at(11))
    return db, loaded, leads


async def researched(
    session: AsyncSession, lead: Lead, loaded: LoadedConfig, now: datetime, indexed: bool
) -> LeadResearch:
    """One lead's research the way ``research_lead`` alone reads it (SQL
    narrowed to the lead), or the way a refresh does (the run's MailIndex)."""
    index = await MailIndex.load(session) if indexed else None
    return await research_lead(session, lead, loaded, now, index=index)


@pytest.mark.parametrize("indexed", [False, True], ids=["scoped", "indexed"])
async def test_facts_of_a_lead_at_an_account(
    world: tuple[Database, LoadedConfig, dict[str, Lead]], indexed: bool
) -> None:
    """Who knows Ana (from From/To/Cc and the sent outbox, most recent first),
    the other lead and contact at her account, the conversation so far, the
    open opportunity value, and a short plain-text summary."""
    db, loaded, leads = world
    now = at(25)
    async with db.transaction() as session:
        research = await researched(session, leads["ana"], loaded, now, indexed)

    assert [(c.address, c.name, c.role, c.messages, c.last_at) for c in research.colleagues] == [
        # Ana's mail of the 20th (To, Cc); Tia's to Bob on the 18th (Cc), Ana's
        # on the 12th, our touches to Ana (10th) and Bob (11th).
        ("sales@acme.example", "Acme Sales", "mailbox", 5, at(20)),
        ("tia@acme.example", "Tia Trader", "seller", 2, at(20)),
        ("sam@acme.example", "Sam Seller", "seller", 1, at(15)),
    ]
    assert [(o.email, o.name, o.state) for o in research.other_leads] == [
        ("bob@buyer.example", "Bob Brown", "new")
    ]
    assert (research.other_lead_count, research.account_lead_count) == (1, 2)
    # Carl is someone there who is not a lead; the bounce's sender is no one.
    assert [(c.address, c.messages, c.last_at) for c in research.contacts] == [
        ("carl@buyer.example", 1, at(15))
    ]
    conversation = research.conversation
    assert (conversation.threads, conversation.inbound, conversation.outbound) == (1, 2, 1)
    assert conversation.last_intent == "meeting_request"
    assert conversation.last_inbound_at == at(20)
    assert conversation.last_contact_at == at(20)
    assert research.open_opportunity_value == Decimal("12500")
    assert (research.domain, research.account_name) == ("buyer.example", "Buyer Inc")
    assert research.overview is None  # outside research is off

    summary = research.summary()
    lines = summary.splitlines()
    assert 2 <= len(lines) <= 4
    assert "<" not in summary.replace("<sales@", "").replace("<tia@", "").replace("<sam@", "")
    assert lines[0] == (
        "Account: Buyer Inc (buyer.example); 2 leads; open opportunities 12,500.00; "
        "also there: Bob Brown (new)."
    )
    # With [research] currency the value says what it is.
    assert "open opportunities EUR 12,500.00;" in replace(research, currency="EUR").summary()
    assert lines[1] == (
        "History: 1 thread, 2 from them, 1 from us, last contact 2026-02-20, "
        "last intent meeting_request."
    )
    assert lines[2].startswith("Knows them: Acme Sales <sales@acme.example> (5 mails, last 2026")
    assert "Tia Trader <tia@acme.example> (2 mails, last 2026-02-20)" in lines[2]


@pytest.mark.parametrize("indexed", [False, True], ids=["scoped", "indexed"])
async def test_free_mail_and_domain_without_account(
    world: tuple[Database, LoadedConfig, dict[str, Lead]], indexed: bool
) -> None:
    """At gmail.com only the lead's own mail counts (a stranger there is no
    contact, no colleague of theirs); leads at one domain without an account
    are each other's account leads."""
    db, loaded, leads = world
    async with db.transaction() as session:
        zed = await researched(session, leads["zed"], loaded, at(25), indexed)
        cy = await researched(session, leads["cy"], loaded, at(25), indexed)
    assert zed.domain is None
    assert [(c.address, c.messages) for c in zed.colleagues] == [("sales@acme.example", 1)]
    assert (zed.contacts, zed.other_leads, zed.account_lead_count) == ((), (), 1)
    assert (zed.conversation.inbound, zed.conversation.outbound) == (1, 0)
    assert zed.summary().splitlines()[0] == "Account: no company account."
    assert cy.domain == "nocorp.example"
    assert [o.email for o in cy.other_leads] == ["di@nocorp.example"]
    assert cy.account_lead_count == 2
    assert cy.colleagues == ()
    assert cy.summary().splitlines()[1] == "History: no mail exchanged yet."
    assert company_domain("zed@gmail.com", None) is None
    assert company_domain("zed@gmail.com", "Zeta.example") == "zeta.example"


async def test_refresh_stores_one_row_per_open_lead(
    world: tuple[Database, LoadedConfig, dict[str, Lead]],
) -> None:
    """The job stores each open, owned lead's summary once (a closed lead and
    one no seller owns get none),
    keeps it within `refresh`, and recomputes it after; the website overview
    is shown only while outside research is on."""
    db, loaded, leads = world
    async with db.transaction() as session:
        di = await session.get(Lead, leads["di"].id)
        assert di is not None
        await transition(session, di, State.WON, actor="t", reason="bought", now=at(24))
        await save_domain_result(
            session, "website", "buyer.example", ProviderResult("ok", "Buyer sells bolts."), at(24)
        )
    report = await refresh_research(db, loaded, at(25))
    assert (report.leads, report.fetched, report.errors) == (4, [], {})
    async with db.transaction() as session:
        rows = {
            r.subject: r
            for r in await session.scalars(
                select(ResearchResult).where(ResearchResult.provider == "internal")
            )
        }
        summaries = await research_summaries(session, [lead.id for lead in leads.values()])
    assert sorted(rows) == sorted(f"lead:{leads[n].id}" for n in ("ana", "bob", "zed", "cy"))
    ana_row = rows[f"lead:{leads['ana'].id}"]
    assert (ana_row.lead_id, ana_row.status, ana_row.fetched_at) == (leads["ana"].id, "ok", at(25))
    assert ana_row.data["open_opportunity_value"] == "12500.00"
    assert ana_row.data["colleagues"][0]["address"] == "sales@acme.example"
    assert summaries[leads["ana"].id] == ana_row.summary
    assert "Website" not in (ana_row.summary or "")
    assert leads["di"].id not in summaries

    again = await refresh_research(db, loaded, at(25) + timedelta(hours=23))
    assert again.leads == 0
    later = await refresh_research(db, loaded, at(26, 10))
    assert later.leads == 4

    # With outside research on, the cached overview (fresh: nothing fetched) shows.
    outside = loaded.settings.model_copy(
        update={"research": loaded.settings.research.model_copy(update={"outside": True})}
    )
    loaded_outside = LoadedConfig(loaded.file, outside, loaded.state_dir, loaded.secrets)
    async with db.transaction() as session:
        ana = await research_lead(session, leads["ana"], loaded_outside, at(24, 12))
    assert ana.overview is not None and ana.overview.text == "Buyer sells bolts."
    assert ana.summary().splitlines()[-1] == "Website (2026-02-24): Buyer sells bolts."


# --- the website provider against a real server --------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Site:
    """An HTTP server on 127.0.0.1 that serves *pages* and logs every request."""

    port: int = 0
    pages: dict[str, Handler] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    streamed: list[int] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
            }
        )
        handler = self.pages.get(request.path)
        if handler is None:
            return web.Response(status=404, text="not here")
        return await handler(request)


def html(body: str, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body, content_type="text/html")

    return handler


def text(body: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type="text/plain")

    return handler


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    state = Site()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    state.port = runner.addresses[0][1]
    yield state
    state.release.set()
    await runner.cleanup()


class HostsResolver(AbstractResolver):
    """Names to addresses, as /etc/hosts would give them (tests cannot edit it)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"{host}: no such name")
        return [
            {
                "hostname": host,
                "host": self.names[host],
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


def closed_port() -> int:
    """A port nothing listens on: https there fails to connect."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def provider(site: Site, **settings: Any) -> WebsiteProvider:
    config = ResearchConfig.model_validate(
        {"allow_private_addresses": True, "fetch_timeout": "5s", **settings}
    )
    return WebsiteProvider(
        config,
        resolver=HostsResolver({"buyer.example": "127.0.0.1", "www.buyer.example": "127.0.0.1"}),
        ports={"https": closed_port(), "http": site.port},
    )


HOME = """<!doctype html><html><head><title>Buyer Inc - bolts for boats</title>
<meta name="description" content="Buyer Inc makes marine bolts and fasteners.">
</head><body><nav><a href="/">Home</a> <a href="https://evil.example/about">About</a>
<a href="/about-us">About us</a></nav>
<p>Welcome to our shop, where every bolt is checked twice before it ships.</p></body></html>"""
PARAGRAPH = (
    "Founded in 1987 in Porto, Buyer Inc supplies stainless steel fasteners to shipyards "
    "in twelve countries and employs 140 people. "
)
ABOUT = f"""<html><body><header><p>{"Header text that should never be part of it. " * 3}</p>
</header><main><h1>Über uns</h1>
<p>We use cookies to make this site work; by staying you accept all of them gladly.</p>
<p>{PARAGRAPH}</p><p>Short.</p><p>{"Our mission is to keep every hull together. " * 12}</p>
</main><footer><p>{"Footer text that should never be part of it. " * 3}</p></footer>
</body></html>"""


async def test_overview_from_home_and_about_page(site: Site) -> None:
    """https cannot connect so http is used; robots.txt first, then home, then
    the same-site about page (never the off-site "About"); the overview is the
    description and the about page's first substantial paragraphs, capped."""
    site.pages = {"/": html(HOME), "/about-us": html(ABOUT)}
    result = await provider(site).research("Buyer.Example")
    assert result.status == "ok", result
    assert site.paths == ["/robots.txt", "/", "/about-us"]
    assert result.summary is not None
    assert result.summary.startswith(
        "Buyer Inc makes marine bolts and fasteners. Founded in 1987 in Porto"
    )
    assert "Our mission is to keep every hull together." in result.summary
    assert len(result.summary) <= OVERVIEW_CHARS and result.summary.endswith("…")
    for boilerplate in ("cookies", "Header text", "Footer text", "Welcome"):
        assert boilerplate not in result.summary
    assert result.data["title"] == "Buyer Inc - bolts for boats"
    assert result.data["about_url"] == f"http://buyer.example:{site.port}/about-us"
    assert result.data["scheme"] == "http"
    assert [(p["url"], p["status"]) for p in result.data["pages"]] == [
        (f"http://buyer.example:{site.port}/robots.txt", 404),
        (f"http://buyer.example:{site.port}/", 200),
        (f"http://buyer.example:{site.port}/about-us", 200),
    ]
    assert all(r["headers"]["User-Agent"] == "leadloop-research/1.0" for r in site.requests)
    assert not any("Cookie" in r["headers"] or "Referer" in r["headers"] for r in site.requests)


async def test_same_site_redirect_followed_and_off_site_refused(site: Site) -> None:
    """A redirect to www. of the same site is followed (unless that host's
    robots.txt forbids the target); one to another site is not."""

    async def to_www(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://www.buyer.example:{site.port}/home")

    async def away(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://elsewhere.example/")

    site.pages = {"/": to_www, "/home": html(HOME)}
    followed = await provider(site).research("buyer.example")
    assert followed.status == "ok"
    assert followed.data["url"] == f"http://www.buyer.example:{site.port}/home"

    async def www_forbids_home(request: web.Request) -> web.StreamResponse:
        rules = "Disallow: /home" if request.host.startswith("www.") else ""
        return web.Response(text=f"User-agent: *\n{rules}\n", content_type="text/plain")

    site.pages["/robots.txt"] = www_forbids_home
    site.requests.clear()
    forbidden = await provider(site).research("buyer.example")
    assert forbidden.status == "skipped"
    assert site.paths == ["/robots.txt", "/", "/robots.txt"]  # /home never asked for

    site.pages = {"/": away}
    refused = await provider(site).research("buyer.example")
    assert refused.status == "skipped"
    assert "off the site" in (refused.error or "")


async def test_timeout_is_an_error(site: Site) -> None:
    """A home page slower than `fetch_timeout` ends the lookup as an error."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(site.release.wait(), 30)
        return web.Response(text="late", content_type="text/html")

    site.pages = {"/": slow}
    result = await provider(site, fetch_timeout="300ms").research("buyer.example")
    assert result.status == "error"
    assert result.error is not None and "timed out after 0.3s" in result.error
    assert site.paths == ["/robots.txt", "/"]


async def test_oversize_page_read_only_to_the_limit(site: Site) -> None:
    """A page larger than `max_page_size` is read up to the limit and no
    further (the server's endless page is cut off); what was read is used."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        sent = 0
        head = b'<html><head><meta name="description" content="Bolts, by the tonne.">'
        await response.write(head)
        sent += len(head)
        try:
            while sent < 200_000_000:
                chunk = b"<!-- " + b"filler " * 2000 + b"-->"
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            pass  # the client stopped reading and hung up, as it should
        site.streamed.append(sent)
        return response

    site.pages = {"/": endless}
    result = await provider(site, max_page_size="64KiB").research("buyer.example")
    assert result.status == "ok", result
    assert result.summary == "Bolts, by the tonne."
    [robots, home] = result.data["pages"]
    assert robots["status"] == 404
    assert (home["bytes"], home["oversize"]) == (64 * 1024, True)
    assert result.data["oversize"] is True
    for _ in range(100):  # the server notices the closed connection on its next writes
        if site.streamed:
            break
        await asyncio.sleep(0.05)
    assert site.streamed and site.streamed[0] < 200_000_000


async def test_robots_txt_disallow_respected(site: Site) -> None:
    """A disallowed page is never requested: all of the site (skipped), or
    just the about page (the overview comes from the home page alone)."""
    site.pages = {
        "/robots.txt": text("User-agent: *\nDisallow: /\n"),
        "/": html(HOME),
        "/about-us": html(ABOUT),
    }
    result = await provider(site).research("buyer.example")
    assert result.status == "skipped"
    assert "robots.txt disallows" in (result.error or "")
    assert site.paths == ["/robots.txt"]

    site.requests.clear()
    site.pages["/robots.txt"] = text("User-agent: leadloop-research\nDisallow: /about\n")
    partial = await provider(site).research("buyer.example")
    assert partial.status == "ok"
    assert site.paths == ["/robots.txt", "/"]
    assert partial.summary == "Buyer Inc makes marine bolts and fasteners. " + (
        "Welcome to our shop, where every bolt is checked twice before it ships."
    )
    assert any("robots.txt disallows" in note for note in partial.data["notes"])


async def test_robots_txt_server_error_means_nothing_is_fetched(site: Site) -> None:
    """RFC 9309: robots.txt answering 5xx means the whole site is disallowed."""
    site.pages = {"/robots.txt": html("oops", status=503), "/": html(HOME)}
    result = await provider(site).research("buyer.example")
    assert result.status == "skipped"
    assert site.paths == ["/robots.txt"]


async def test_private_address_refused(site: Site) -> None:
    """Without allow_private_addresses a domain resolving to loopback is
    skipped before any request, through a given resolver or the system's."""
    site.pages = {"/": html(HOME)}
    guarded = provider(site, allow_private_addresses=False)
    result = await guarded.research("buyer.example")
    assert result.status == "skipped"
    assert "non-public address" in (result.error or "")
    system = WebsiteProvider(
        ResearchConfig(), ports={"https": closed_port(), "http": site.port}
    )  # the system resolver: localhost is 127.0.0.1 (or ::1)
    assert (await system.research("localhost")).status == "skipped"
    assert (await system.research("127.0.0.1")).status == "skipped"
    assert site.requests == []


async def test_refresh_fetches_each_domain_once_sends_nothing_personal_and_caches(
    world: tuple[Database, LoadedConfig, dict[str, Lead]], site: Site
) -> None:
    """The job looks buyer.example up once for Ana and Bob, never gmail.com;
    the server sees no name or address of a lead; the result is reused within
    `refresh` and fetched again after it; an unreachable domain is an error
    recorded for that domain only."""
    db, _, leads = world
    site.pages = {"/": html(HOME), "/about-us": html(ABOUT)}
    loaded = make_loaded(world[1], outside=True)
    made: list[WebsiteProvider] = []

    def factory(config: LoadedConfig) -> WebsiteProvider:
        made.append(provider(site))
        return made[-1]

    first = await refresh_research(db, loaded, T0, provider_factory=factory)
    assert sorted(first.fetched) == ["buyer.example", "nocorp.example"]
    assert list(first.errors) == ["nocorp.example"]  # no such name in our hosts
    assert first.leads == 5
    assert site.paths == ["/robots.txt", "/", "/about-us"]
    seen = " ".join(
        f"{r['path']} {r['query']} "
        + " ".join(f"{name}: {value}" for name, value in r["headers"].items())
        for r in site.requests
    ).lower()
    words = set(re.findall(r"[a-z0-9]+", seen))
    assert "buyer.example" in seen  # the domain, in Host: that much leaves
    for lead in leads.values():
        assert lead.email not in seen and lead.email.split("@")[0] not in words
        assert not {n.lower() for n in (lead.first_name, lead.last_name) if n} & words
    async with db.transaction() as session:
        cached = {
            r.subject: r
            for r in await session.scalars(
                select(ResearchResult).where(ResearchResult.provider == "website")
            )
        }
        summaries = await research_summaries(session, [leads["ana"].id])
    assert cached["domain:buyer.example"].status == "ok"
    assert cached["domain:buyer.example"].fetched_at == T0
    assert cached["domain:nocorp.example"].status == "error"
    assert "Website (2026-03-02): Buyer Inc makes marine bolts" in summaries[leads["ana"].id]

    within = await refresh_research(db, loaded, T0 + timedelta(hours=23), provider_factory=factory)
    assert (within.fetched, within.reused, within.leads) == ([], 2, 0)
    assert len(site.requests) == 3

    after = await refresh_research(db, loaded, T0 + timedelta(hours=25), provider_factory=factory)
    assert sorted(after.fetched) == ["buyer.example", "nocorp.example"]
    assert site.paths == ["/robots.txt", "/", "/about-us"] * 2
    async with db.transaction() as session:
        row = await session.scalar(
            select(ResearchResult).where(ResearchResult.subject == "domain:buyer.example")
        )
    assert row is not None and row.fetched_at == T0 + timedelta(hours=25)


def make_loaded(loaded: LoadedConfig, **research: Any) -> LoadedConfig:
    settings = loaded.settings.model_copy(
        update={"research": loaded.settings.research.model_copy(update=research)}
    )
    return LoadedConfig(loaded.file, settings, loaded.state_dir, loaded.secrets)
