"""Lead research from what the system already knows (seed 003, "Research
insights"): who knows whom, the other people at the account, the
conversation so far, the open opportunity value; plus the website's cached
business overview.  Nothing here leaves the machine.

:func:`research_lead` gathers it for one lead; :func:`save_research` keeps it
as one ``research`` row per lead (provider ``internal``, subject
``lead:<id>``) so the digest reads summaries without recomputing them;
:func:`refresh_research` is the scheduled job that keeps both the lead rows
and the website rows (``domain:<name>``) no older than ``[research] refresh``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from email.utils import getaddresses
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.lifecycle import State
from leadloop.config import Config, LoadedConfig
from leadloop.research.providers import (
    ProviderResult,
    ResearchProvider,
    company_domain,
    is_personal_domain,
)
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Account,
    InboundMessage,
    Lead,
    Mailbox,
    MailThread,
    OutboundMessage,
    ResearchResult,
)

log = logging.getLogger("leadloop.research.facts")

INTERNAL = "internal"
WEBSITE = "website"
CLOSED_STATES = frozenset(
    {State.WON, State.LOST, State.DISQUALIFIED, State.OPTED_OUT, State.INVALID}
)
# Mail a person wrote to us (agent/screening.py's kinds); bounces, auto-replies,
# loops and duplicates are not an exchange with anyone.
PERSON_KINDS = ("reply", "new_inbound")
# Mail we sent to the lead (agent/outbox.py's LEAD_KINDS; not imported, since
# the outbox will want these facts for research-mode drafts).  Drafts filed
# in a seller's own folder never reached the lead and are not counted.
LEAD_MAIL_KINDS = ("touch", "reply", "nudge", "intro")
LISTED = 10
"""Colleagues, other leads and contacts kept per lead (the counts are exact)."""
WEBSITE_CONCURRENCY = 4


def money(value: Decimal, currency: str, places: int) -> str:
    """*value* with its currency code when one is known: "EUR 12,000"."""
    amount = f"{value:,.{places}f}"
    return f"{currency} {amount}" if currency else amount


@dataclass(frozen=True)
class Colleague:
    """One of ours who exchanged mail with the lead or someone at its domain."""

    address: str
    name: str
    role: str
    """seller, supervisor, staff or mailbox (the agent's own mailbox)."""
    messages: int
    last_at: datetime

    def label(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


@dataclass(frozen=True)
class AccountLead:
    """Another lead at the same account (or domain)."""

    lead_id: int
    email: str
    name: str
    state: str


@dataclass(frozen=True)
class Contact:
    """Someone at the lead's domain seen in our mail who is not a lead."""

    address: str
    messages: int
    last_at: datetime


@dataclass(frozen=True)
class Conversation:
    threads: int = 0
    inbound: int = 0
    """Mail the lead wrote (replies, a first inbound mail)."""
    outbound: int = 0
    """Mail we sent the lead."""
    last_intent: str | None = None
    last_inbound_at: datetime | None = None
    last_contact_at: datetime | None = None


@dataclass(frozen=True)
class WebsiteOverview:
    domain: str
    text: str
    fetched_at: datetime
    url: str | None = None


@dataclass(frozen=True)
class LeadResearch:
    """Everything known about one lead, as of ``researched_at``.

    For staff only: it names colleagues and other leads, so no part of it may
    go into a mail to the lead."""

    lead_id: int
    email: str
    domain: str | None
    """The company domain (the account's, else the address's); None for a
    free-mail address without an account."""
    account_id: int | None
    account_name: str | None
    colleagues: tuple[Colleague, ...]
    """Most recent first."""
    other_leads: tuple[AccountLead, ...]
    other_lead_count: int
    contacts: tuple[Contact, ...]
    """Most recent first."""
    conversation: Conversation
    open_opportunity_value: Decimal | None
    account_lead_count: int
    """Leads at the account (or the domain), this one included."""
    overview: WebsiteOverview | None
    researched_at: datetime
    currency: str = ""
    """Of ``open_opportunity_value`` (``[research] currency``)."""

    def summary(self) -> str:
        """Two to four plain-text lines for the seller digest and drafts."""
        lines = [self._account_line(), self._history_line()]
        if self.colleagues:
            known = "; ".join(
                f"{c.label()} ({plural(c.messages, 'mail')}, last {c.last_at:%Y-%m-%d})"
                for c in self.colleagues[:3]
            )
            lines.append(f"Knows them: {known}.")
        if self.overview is not None:
            text = _shorten(self.overview.text, 220)
            lines.append(f"Website ({self.overview.fetched_at:%Y-%m-%d}): {text}")
        return "\n".join(lines[:4])

    def _account_line(self) -> str:
        where = self.account_name or self.domain or "no company account"
        if self.account_name and self.domain:
            where = f"{self.account_name} ({self.domain})"
        parts = [f"Account: {where}"]
        if self.domain is not None:
            parts.append(plural(self.account_lead_count, "lead"))
        if self.open_opportunity_value is not None:
            value = money(self.open_opportunity_value, self.currency, 2)
            parts.append(f"open opportunities {value}")
        if self.other_leads:
            others = ", ".join(f"{o.name or o.email} ({o.state})" for o in self.other_leads[:3])
            parts.append(f"also there: {others}")
        elif self.contacts:
            parts.append(f"other contacts: {', '.join(c.address for c in self.contacts[:3])}")
        return "; ".join(parts) + "."

    def _history_line(self) -> str:
        c = self.conversation
        if not (c.inbound or c.outbound):
            return "History: no mail exchanged yet."
        text = (
            f"History: {plural(c.threads, 'thread')}, {c.inbound} from them, {c.outbound} from us"
        )
        if c.last_contact_at is not None:
            text += f", last contact {c.last_contact_at:%Y-%m-%d}"
        if c.last_intent:
            text += f", last intent {c.last_intent}"
        return text + "."

    def as_data(self) -> dict[str, Any]:
        """JSON-ready, for ``ResearchResult.data``."""
        return {
            "email": self.email,
            "domain": self.domain,
            "account_id": self.account_id,
            "account_name": self.account_name,
            "colleagues": [
                {
                    "address": c.address,
                    "name": c.name,
                    "role": c.role,
                    "messages": c.messages,
                    "last_at": c.last_at.isoformat(),
                }
                for c in self.colleagues
            ],
            "other_leads": [
                {"lead_id": o.lead_id, "email": o.email, "name": o.name, "state": o.state}
                for o in self.other_leads
            ],
            "other_lead_count": self.other_lead_count,
            "contacts": [
                {"address": c.address, "messages": c.messages, "last_at": c.last_at.isoformat()}
                for c in self.contacts
            ],
            "conversation": {
                "threads": self.conversation.threads,
                "inbound": self.conversation.inbound,
                "outbound": self.conversation.outbound,
                "last_intent": self.conversation.last_intent,
                "last_inbound_at": _iso(self.conversation.last_inbound_at),
                "last_contact_at": _iso(self.conversation.last_contact_at),
            },
            "open_opportunity_value": (
                None if self.open_opportunity_value is None else str(self.open_opportunity_value)
            ),
            "currency": self.currency or None,
            "account_lead_count": self.account_lead_count,
            "overview": (
                None
                if self.overview is None
                else {
                    "domain": self.overview.domain,
                    "text": self.overview.text,
                    "url": self.overview.url,
                    "fetched_at": self.overview.fetched_at.isoformat(),
                }
            ),
        }


# --- who is ours -------------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    """Our people: configured addresses with a name and role, plus the
    domains whose every address is staff (``[staff] domains``, our own)."""

    people: dict[str, tuple[str, str]]
    domains: frozenset[str]

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> Directory:
        settings: Config = loaded.settings
        people: dict[str, tuple[str, str]] = {}
        # Later entries win: a seller's own name beats a mailbox's display name.
        for box in settings.mailboxes:
            people[box.address.lower()] = (box.display_name, "mailbox")
        for address in settings.staff.addresses:
            people[address.lower()] = ("", "staff")
        for address in settings.handoff.supervisors:
            people[address] = ("", "supervisor")
        for address in settings.handoff.sellers:
            people[address] = ("", "seller")
        for seller in settings.sellers:
            people[seller.address] = (seller.name, "seller")
        domains = {d.lower() for d in settings.staff.domains}
        if loaded.our_domain:
            domains.add(loaded.our_domain)
        return cls(people, frozenset(domains))

    def knows(self, address: str) -> bool:
        return address in self.people or address.rsplit("@", 1)[-1] in self.domains

    def who(self, address: str) -> tuple[str, str]:
        return self.people.get(address, ("", "staff"))


@dataclass(frozen=True)
class _Scope:
    """Whose mail counts: the lead's address, and everyone at its company
    domain unless that is a free-mail domain."""

    email: str
    domain: str | None

    def holds(self, address: str) -> bool:
        return address == self.email or (
            self.domain is not None and address.endswith("@" + self.domain)
        )

    @property
    def needle(self) -> str:
        """A substring every matching stored address list contains."""
        return f"@{self.domain}" if self.domain else self.email


@dataclass
class _Tally:
    messages: int = 0
    last_at: datetime | None = None

    def add(self, when: datetime | None) -> None:
        self.messages += 1
        if when is not None and (self.last_at is None or when > self.last_at):
            self.last_at = when


@dataclass
class _Exchanges:
    colleagues: dict[str, _Tally] = field(default_factory=dict)
    people: dict[str, _Tally] = field(default_factory=dict)
    """Everyone in scope seen in that mail (the lead too)."""

    def credit(self, book: dict[str, _Tally], addresses: Iterable[str], when: datetime) -> None:
        for address in set(addresses):
            book.setdefault(address, _Tally()).add(when)


def _addresses(values: Iterable[str]) -> list[str]:
    return [a.strip().lower() for _, a in getaddresses(list(values)) if "@" in a]


def _recipients(headers: dict[str, Any]) -> list[str]:
    return _addresses([*(headers.get("to") or []), *(headers.get("cc") or [])])


@dataclass(frozen=True)
class _Mail:
    """One stored mail as who-knows-whom sees it."""

    inbound: bool
    mailbox_id: int | None
    author: str
    """Inbound: the From; outbound: empty (the mailbox sent it)."""
    recipients: tuple[str, ...]
    when: datetime


def _inbound_mail(
    mailbox_id: int, from_addr: str | None, headers: Any, sent_at: Any, received_at: Any
) -> _Mail:
    return _Mail(
        True,
        mailbox_id,
        (from_addr or "").lower(),
        tuple(_recipients(headers or {})),
        sent_at or received_at,
    )


def _outbound_mail(mailbox_id: int | None, to_addrs: Any, sent_at: datetime) -> _Mail:
    return _Mail(False, mailbox_id, "", tuple(a.lower() for a in to_addrs or []), sent_at)


_INBOUND_COLUMNS = (
    InboundMessage.mailbox_id,
    InboundMessage.from_addr,
    InboundMessage.headers,
    InboundMessage.sent_at,
    InboundMessage.received_at,
)
_INBOUND_COUNTED = (
    InboundMessage.duplicate_of.is_(None),
    or_(InboundMessage.kind.is_(None), InboundMessage.kind != "bounce"),
)
_OUTBOUND_COUNTED = (
    OutboundMessage.status == "sent",
    OutboundMessage.kind.in_(LEAD_MAIL_KINDS),
    OutboundMessage.sent_at.is_not(None),
)


class MailIndex:
    """Every stored mail's people, read in one pass over the inbound and the
    sent mail, so each lead's who-knows-whom is a lookup: a refresh over N
    leads and M mails costs O(N + M) instead of two table scans per lead
    (``bench/research.py``).  Keyed by address and by ``@domain``."""

    def __init__(self) -> None:
        self._by: dict[str, list[_Mail]] = {}

    def add(self, mail: _Mail) -> None:
        keys: set[str] = set()
        for address in (mail.author, *mail.recipients):
            if "@" in address:
                keys.update((address, "@" + address.rsplit("@", 1)[1]))
        for key in keys:
            self._by.setdefault(key, []).append(mail)

    @classmethod
    async def load(cls, session: AsyncSession) -> MailIndex:
        index = cls()
        inbound = await session.execute(select(*_INBOUND_COLUMNS).where(*_INBOUND_COUNTED))
        for row in inbound:
            index.add(_inbound_mail(*row))
        outbound = await session.execute(
            select(
                OutboundMessage.mailbox_id, OutboundMessage.to_addrs, OutboundMessage.sent_at
            ).where(*_OUTBOUND_COUNTED)
        )
        for mailbox_id, to_addrs, sent_at in outbound:
            if sent_at is not None:
                index.add(_outbound_mail(mailbox_id, to_addrs, sent_at))
        return index

    def around(self, scope: _Scope) -> list[_Mail]:
        """The mails anyone in *scope* took part in (each once)."""
        found = {id(m): m for m in self._by.get(scope.email, ())}
        if scope.domain:
            found.update((id(m), m) for m in self._by.get("@" + scope.domain, ()))
        return list(found.values())


async def _scoped_mail(session: AsyncSession, scope: _Scope, directory: Directory) -> list[_Mail]:
    """The mails that may involve *scope*, narrowed in SQL (one lead's research)."""
    sender = func.lower(InboundMessage.from_addr)
    wanted = [sender == scope.email, sender.like(f"%{scope.needle}")]
    ours = [sender.like(f"%@{domain}") for domain in directory.domains]
    if directory.people:
        ours.append(sender.in_(list(directory.people)))
    if ours:
        # Our people's mail that copied someone in scope: narrowed by the
        # stored headers' text, then checked address by address.
        headers_text = func.lower(cast(InboundMessage.headers, Text))
        wanted.append(or_(*ours) & headers_text.like(f"%{scope.needle}%"))
    inbound = await session.execute(
        select(*_INBOUND_COLUMNS).where(*_INBOUND_COUNTED, or_(*wanted))
    )
    mails = [_inbound_mail(*row) for row in inbound]
    outbound = await session.execute(
        select(OutboundMessage.mailbox_id, OutboundMessage.to_addrs, OutboundMessage.sent_at).where(
            *_OUTBOUND_COUNTED,
            func.lower(cast(OutboundMessage.to_addrs, Text)).like(f"%{scope.needle}%"),
        )
    )
    mails += [_outbound_mail(m, to, at) for m, to, at in outbound if at is not None]
    return mails


async def _exchanges(
    session: AsyncSession,
    scope: _Scope,
    directory: Directory,
    boxes: dict[int, str],
    index: MailIndex | None = None,
) -> _Exchanges:
    """Mail between our people and the scope, from the stored inbound rows
    (their From and the To/Cc kept in ``headers``) and the sent outbox."""
    found = _Exchanges()
    mails = (
        index.around(scope) if index is not None else await _scoped_mail(session, scope, directory)
    )
    for mail in mails:
        when, author, recipients = mail.when, mail.author, mail.recipients
        in_scope = [a for a in recipients if scope.holds(a)]
        if not mail.inbound:
            if not in_scope:
                continue
            senders = [a for a in recipients if directory.knows(a)]
            if mail.mailbox_id in boxes:
                senders.append(boxes[mail.mailbox_id])
            found.credit(found.colleagues, senders, when)
            found.credit(found.people, in_scope, when)
            continue
        colleagues = [a for a in recipients if directory.knows(a)]
        if scope.holds(author):
            # Delivered to one of our mailboxes: if no colleague is named in
            # To/Cc (a Bcc, an alias), the mailbox that received it knew them.
            if not colleagues and mail.mailbox_id in boxes:
                colleagues = [boxes[mail.mailbox_id]]
            found.credit(found.colleagues, colleagues, when)
            found.credit(found.people, [author, *in_scope], when)
        elif directory.knows(author) and in_scope:
            found.credit(found.colleagues, [author, *colleagues], when)
            found.credit(found.people, in_scope, when)
    return found


def _recent_first(book: dict[str, _Tally]) -> Iterator[tuple[str, int, datetime]]:
    """(address, messages, last date), the most recent first."""
    rows = [(a, t.messages, t.last_at) for a, t in book.items() if t.last_at is not None]
    rows.sort(key=lambda row: (row[2], row[1], row[0]), reverse=True)
    yield from rows


# --- the lead ----------------------------------------------------------------


async def _conversation(session: AsyncSession, lead_id: int) -> Conversation:
    threads = await session.scalar(
        select(func.count()).select_from(MailThread).where(MailThread.lead_id == lead_id)
    )
    person_mail = (
        InboundMessage.lead_id == lead_id,
        InboundMessage.duplicate_of.is_(None),
        InboundMessage.kind.in_(PERSON_KINDS),
    )
    inbound, last_inbound = (
        await session.execute(
            select(
                func.count(),
                func.max(func.coalesce(InboundMessage.sent_at, InboundMessage.received_at)),
            ).where(*person_mail)
        )
    ).one()
    # The intent of the newest message that has one (it is set by the understand stage).
    results = await session.scalars(
        select(InboundMessage.result)
        .where(*person_mail)
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
        .limit(20)
    )
    last_intent = next((r["intent"] for r in results if r and r.get("intent")), None)
    outbound, last_outbound = (
        await session.execute(
            select(func.count(), func.max(OutboundMessage.sent_at)).where(
                OutboundMessage.lead_id == lead_id,
                OutboundMessage.status == "sent",
                OutboundMessage.kind.in_(LEAD_MAIL_KINDS),
            )
        )
    ).one()
    last_in = _aware(last_inbound)
    last_out = _aware(last_outbound)
    dates = [d for d in (last_in, last_out) if d is not None]
    return Conversation(
        threads=threads or 0,
        inbound=inbound or 0,
        outbound=outbound or 0,
        last_intent=last_intent,
        last_inbound_at=last_in,
        last_contact_at=max(dates) if dates else None,
    )


async def _account_leads(
    session: AsyncSession, lead: Lead, domain: str | None
) -> tuple[list[AccountLead], int]:
    if lead.account_id is not None:
        same = Lead.account_id == lead.account_id
    elif domain is not None and not is_personal_domain(domain):
        same = func.lower(Lead.email).like(f"%@{domain}")
    else:
        return [], 0
    count = await session.scalar(
        select(func.count()).select_from(Lead).where(same, Lead.id != lead.id)
    )
    rows = await session.scalars(
        select(Lead)
        .where(same, Lead.id != lead.id)
        .order_by(Lead.updated_at.desc(), Lead.id.desc())
        .limit(LISTED)
    )
    others = [
        AccountLead(
            lead_id=other.id,
            email=other.email,
            name=" ".join(n for n in (other.first_name, other.last_name) if n),
            state=other.state,
        )
        for other in rows
    ]
    return others, count or 0


async def _cached_overview(session: AsyncSession, domain: str) -> WebsiteOverview | None:
    row = await session.scalar(
        select(ResearchResult).where(
            ResearchResult.provider == WEBSITE, ResearchResult.subject == domain_subject(domain)
        )
    )
    if row is None or row.status != "ok" or not row.summary:
        return None
    return WebsiteOverview(domain, row.summary, row.fetched_at, (row.data or {}).get("url"))


async def research_lead(
    session: AsyncSession,
    lead: Lead,
    loaded_config: LoadedConfig,
    now: datetime,
    *,
    index: MailIndex | None = None,
) -> LeadResearch:
    """What the system knows about *lead* (reads only; see :func:`save_research`).

    The website overview is the cached one (``refresh_research`` fetches it),
    and only while ``[research] outside`` is on."""
    account = await session.get(Account, lead.account_id) if lead.account_id else None
    email = lead.email.lower()
    domain = company_domain(email, account.domain if account else None)
    directory = Directory.from_config(loaded_config)
    boxes = {
        box_id: address.lower()
        for box_id, address in await session.execute(select(Mailbox.id, Mailbox.address))
    }
    # Everyone at a free-mail domain is a stranger; the lead's own address
    # is the whole scope there.
    address_domain = email.rsplit("@", 1)[-1]
    scope_domain = None if is_personal_domain(address_domain) else address_domain
    if account is not None:
        scope_domain = account.domain.lower()
    found = await _exchanges(session, _Scope(email, scope_domain), directory, boxes, index)
    colleagues = tuple(
        Colleague(address, *directory.who(address), messages, last_at)
        for address, messages, last_at in _recent_first(found.colleagues)
    )[:LISTED]
    lead_addresses = set(
        await session.scalars(
            select(func.lower(Lead.email)).where(
                func.lower(Lead.email).in_([a for a in found.people if a != email])
            )
        )
    )
    contacts = tuple(
        Contact(address, messages, last_at)
        for address, messages, last_at in _recent_first(found.people)
        if address != email and address not in lead_addresses and not directory.knows(address)
    )[:LISTED]
    others, other_count = await _account_leads(session, lead, scope_domain)
    overview = None
    if loaded_config.settings.research.outside and domain is not None:
        overview = await _cached_overview(session, domain)
    return LeadResearch(
        lead_id=lead.id,
        email=email,
        domain=domain,
        account_id=account.id if account else None,
        account_name=account.name if account else None,
        colleagues=colleagues,
        other_leads=tuple(others),
        other_lead_count=other_count,
        contacts=contacts,
        conversation=await _conversation(session, lead.id),
        open_opportunity_value=account.open_opportunity_value if account else None,
        currency=loaded_config.settings.research.currency,
        account_lead_count=other_count + 1 if scope_domain or account else 1,
        overview=overview,
        researched_at=now,
    )


# --- the cache -----------------------------------------------------------------


def lead_subject(lead_id: int) -> str:
    return f"lead:{lead_id}"


def domain_subject(domain: str) -> str:
    return f"domain:{domain.lower()}"


async def _upsert(session: AsyncSession, values: dict[str, Any]) -> None:
    """One row per (provider, subject); two daemons refreshing at once both
    succeed and the later one wins."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(ResearchResult).values(**values)
    changed = {k: statement.excluded[k] for k in values if k not in ("provider", "subject")}
    await session.execute(
        statement.on_conflict_do_update(index_elements=["provider", "subject"], set_=changed)
    )


async def save_research(session: AsyncSession, research: LeadResearch) -> None:
    """Keep *research* as the lead's ``internal`` research row."""
    await _upsert(
        session,
        {
            "provider": INTERNAL,
            "subject": lead_subject(research.lead_id),
            "lead_id": research.lead_id,
            "status": "ok",
            "summary": research.summary(),
            "data": research.as_data(),
            "error": None,
            "fetched_at": research.researched_at,
        },
    )


async def save_domain_result(
    session: AsyncSession, provider: str, domain: str, result: ProviderResult, now: datetime
) -> None:
    await _upsert(
        session,
        {
            "provider": provider,
            "subject": domain_subject(domain),
            "lead_id": None,
            "status": result.status,
            "summary": result.summary,
            "data": result.data,
            "error": result.error,
            "fetched_at": now,
        },
    )


async def research_summaries(session: AsyncSession, lead_ids: Collection[int]) -> dict[int, str]:
    """The stored research summary of each of *lead_ids* that has one (for the digest)."""
    if not lead_ids:
        return {}
    rows = await session.execute(
        select(ResearchResult.lead_id, ResearchResult.summary).where(
            ResearchResult.provider == INTERNAL,
            ResearchResult.subject.in_([lead_subject(i) for i in lead_ids]),
        )
    )
    return {lead_id: summary for lead_id, summary in rows if lead_id is not None and summary}


# --- the scheduled job -----------------------------------------------------------


@dataclass
class RefreshReport:
    leads: int = 0
    """Leads whose internal research was computed and stored."""
    fetched: list[str] = field(default_factory=list)
    """Domains looked up outside in this run."""
    reused: int = 0
    """Domains whose cached website research was still fresh."""
    errors: dict[str, str] = field(default_factory=dict)
    """Per domain (or ``lead:<id>``): what went wrong."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "leads": self.leads,
            "fetched": list(self.fetched),
            "reused": self.reused,
            "errors": dict(self.errors),
        }


def default_provider(loaded: LoadedConfig) -> ResearchProvider:
    from leadloop.research.website import WebsiteProvider

    return WebsiteProvider(loaded.settings.research)


async def refresh_research(
    db: Database,
    loaded: LoadedConfig,
    now: datetime,
    *,
    provider_factory: Callable[[LoadedConfig], ResearchProvider] | None = None,
) -> RefreshReport:
    """Bring every open, owned lead's research up to date: the website of each
    company domain (only with ``[research] outside``; each domain once per
    run, at most :data:`WEBSITE_CONCURRENCY` at a time), then each lead
    whose stored research is missing, older than ``[research] refresh``, or
    older than its domain's website research.  A failure is recorded for
    its domain (or lead) and the job goes on; nothing is raised."""
    settings = loaded.settings.research
    stale_before = now - settings.refresh
    report = RefreshReport()
    async with db.transaction() as session:
        leads = (
            await session.execute(
                select(Lead.id, Lead.email, Account.domain)
                .outerjoin(Account, Account.id == Lead.account_id)
                # Seed 003: open leads owned by a seller (a research-mode
                # lead gets one when routed); nobody reads the others' notes.
                .where(Lead.state.not_in([s.value for s in CLOSED_STATES]), Lead.owner.is_not(None))
                .order_by(Lead.id)
            )
        ).all()
        stored = {
            (provider, subject): fetched_at
            for provider, subject, fetched_at in await session.execute(
                select(ResearchResult.provider, ResearchResult.subject, ResearchResult.fetched_at)
            )
        }
    domains = {lead_id: company_domain(email, account) for lead_id, email, account in leads}

    website_at: dict[str, datetime] = {}
    if settings.outside:
        wanted = sorted({d for d in domains.values() if d is not None})
        stale: list[str] = []
        for domain in wanted:
            at = stored.get((WEBSITE, domain_subject(domain)))
            if at is not None and at > stale_before:
                website_at[domain] = at
                report.reused += 1
            else:
                stale.append(domain)
        if stale:
            try:
                provider = (provider_factory or default_provider)(loaded)
            except Exception as exc:
                log.exception("research provider could not be made")
                report.errors.update({d: f"no provider: {exc}" for d in stale})
            else:
                await _fetch_websites(db, provider, stale, now, report)
                website_at.update({domain: now for domain in stale})

    index: MailIndex | None = None
    for lead_id, _email, _account in leads:
        at = stored.get((INTERNAL, lead_subject(lead_id)))
        lead_domain = domains[lead_id]
        if (
            at is not None
            and at > stale_before
            and not (lead_domain in website_at and website_at[lead_domain] > at)
        ):
            continue
        try:
            async with db.transaction() as session:
                lead = await session.get(Lead, lead_id)
                if lead is None:
                    continue
                if index is None:  # read once per run, when a lead needs it
                    index = await MailIndex.load(session)
                found = await research_lead(session, lead, loaded, now, index=index)
                await save_research(session, found)
            report.leads += 1
        except Exception as exc:  # one lead's failure must not stop the others
            log.exception("lead=%s research failed", lead_id)
            report.errors[lead_subject(lead_id)] = f"{exc.__class__.__name__}: {exc}"
    log.info(
        "research refreshed leads=%d fetched=%d reused=%d errors=%d",
        report.leads,
        len(report.fetched),
        report.reused,
        len(report.errors),
    )
    return report


async def _fetch_websites(
    db: Database,
    provider: ResearchProvider,
    domains: list[str],
    now: datetime,
    report: RefreshReport,
) -> None:
    limit = asyncio.Semaphore(WEBSITE_CONCURRENCY)

    async def one(domain: str) -> None:
        async with limit:
            try:
                result = await provider.research(domain)
            except Exception as exc:  # a provider must not raise; if it does, it is its error
                log.exception("domain=%s %s research raised", domain, provider.name)
                result = ProviderResult("error", error=f"{exc.__class__.__name__}: {exc}")
        report.fetched.append(domain)
        if result.status == "error":
            report.errors[domain] = result.error or "error"
        try:
            async with db.transaction() as session:
                await save_domain_result(session, provider.name, domain, result, now)
        except Exception as exc:  # kept for the next run; the other domains go on
            log.exception("domain=%s research not stored", domain)
            report.errors[domain] = f"not stored: {exc.__class__.__name__}: {exc}"

    await asyncio.gather(*(one(domain) for domain in domains))


def _aware(value: Any) -> datetime | None:
    """A datetime from an aggregate (SQLite hands back naive UTC, or text)."""
    from datetime import UTC

    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if isinstance(value, datetime) else None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def plural(count: int, one: str, many: str | None = None) -> str:
    """ "1 mail", "2 mails"; *many* for the irregular ("2 replies")."""
    return f"{count} {one if count == 1 else many or one + 's'}"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0] + "…"
