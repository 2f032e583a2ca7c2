"""The outbox: every mail leadloop sends is a row here first.

The decision to send and the row (with its final Message-ID, In-Reply-To,
References and an idempotency key) commit together (:func:`queue`,
:func:`queue_reply`, :func:`queue_notice`).  The sender (``daemon/sender.py``)
claims due rows (:func:`claim`), which re-checks at send time everything that
may have changed since queueing: the lead's state, suppression, consent, the
per-lead cap, the mailbox and recipient-domain caps, a paused mailbox.  It
then reports each SMTP outcome to :func:`record`, which applies the outcome
table below.  A row's life::

    queued -> sending -> sent
                      -> queued again (temporary failure, with backoff)
                      -> in_doubt -> sent | held      (connection lost after the dot)
                      -> held       (operator: `leadloop outbox release|cancel`)
                      -> rejected | failed
    queued -> skipped   (the send rule no longer allows it: recorded, not sent)
    queued -> cancelled (operator)

Outcomes (also in the README):

=================================================  ==================================
SMTP outcome                                       what happens
=================================================  ==================================
250 after the final dot                            sent
4xx anywhere, 552 / 5.2.2 (mailbox full),          retry on the ``retry`` schedule (3 in
connection error before the final dot              the first hour, then over 3 days);
                                                   then failed, lead to its owner
5.1.1 5.1.2 5.1.3 5.1.6 5.1.10 5.2.1               rejected; address suppressed, lead
                                                   ``invalid``
5.1.7 5.1.8 (our sender), any 5xx to our          mailbox paused, alert; the row waits
login or MAIL FROM
5.7.x policy rejection of one recipient            rejected; that lead to its owner
a breaker code (5.7.26, 5.7.515, 4.7.28, ...)      mailbox paused, alert; the row waits
connection lost after the final dot                in doubt: settled in the Sent folder
                                                   (sent_copy = "server"), else held
                                                   and alerted; staff notices resent
any other 5xx                                      failed, lead to its owner
=================================================  ==================================
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import String, bindparam, cast, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import controls
from leadloop.agent.alerts import raise_alert
from leadloop.agent.drafting import Drafting, divert
from leadloop.agent.lifecycle import (
    SENDING_STATES,
    State,
    can_transition,
    to_owner,
    transition,
    transition_many,
)
from leadloop.config import LoadedConfig
from leadloop.knowledge.catalog import CatalogError, load_catalog
from leadloop.knowledge.sources import SourceMissing, Sources
from leadloop.mail import compose
from leadloop.mail.headers import safe_address, safe_header_value
from leadloop.mail.links import track_links
from leadloop.mail.smtpreply import (
    INVALID_STATUSES,
    SENDER_STATUSES,
    Delivery,
    Reply,
    SmtpFailure,
)
from leadloop.mail.tokens import TokenKeys
from leadloop.storage import repo
from leadloop.storage.models import (
    Event,
    InboundMessage,
    Lead,
    Mailbox,
    OutboundMessage,
    table_of,
)

log = logging.getLogger("leadloop.agent.outbox")
ACTOR = "outbox"


class Status(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    IN_DOUBT = "in_doubt"
    HELD = "held"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class Kind(StrEnum):
    TOUCH = "touch"  # a cadence touch
    REPLY = "reply"  # a conversational reply
    NUDGE = "nudge"  # a follow-up in a quiet conversation; a checkout reminder
    INTRO = "intro"  # the warm introduction, sent in `qualified`
    NOTICE = "notice"  # staff: escalations, hand-offs, digests, confirmations
    DRAFT = "draft"  # research mode: a draft for a lead, mailed to its seller
    FILED = "filed"  # research mode: a draft filed in the seller's Drafts folder


LEAD_KINDS = frozenset({Kind.TOUCH, Kind.REPLY, Kind.NUDGE, Kind.INTRO})
# Counted against caps while the outcome is open or the mail has gone.
_IN_FLIGHT = (Status.SENDING, Status.IN_DOUBT)
UNSUBSCRIBE_TTL = timedelta(days=90)  # DESIGN.md: at least 60 days
STALE_RENDER = timedelta(hours=1)
# A cadence touch that went out moves its lead to `engaging` (DESIGN.md).
_TOUCH_MOVES = {
    State.NEW: "first touch sent",
    State.NURTURE: "re-engagement date reached: touch sent",
}


class Verdict(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    INVALID = "invalid"
    SENDER = "sender"
    POLICY = "policy"
    REPUTATION = "reputation"
    IN_DOUBT = "in_doubt"
    FAILED = "failed"


def verdict(
    reply: Reply | None,
    *,
    in_doubt: bool,
    breaker_codes: Iterable[str],
    stage: str = "rcpt",
) -> Verdict:
    """The outcome table for one reply (``None``: no reply, connection broke)
    at *stage* (connect, mail, rcpt, data, dot)."""
    if in_doubt:
        return Verdict.IN_DOUBT
    if reply is None:
        return Verdict.RETRY
    enhanced = reply.enhanced
    if enhanced is not None and enhanced in set(breaker_codes):
        return Verdict.REPUTATION
    if 200 <= reply.code < 300:
        return Verdict.SENT
    if (reply.code == 552 and enhanced in (None, "5.2.2")) or enhanced == "5.2.2":
        return Verdict.RETRY  # mailbox full: RFC 5321 treats 552 as temporary in practice
    if 400 <= reply.code < 500:
        return Verdict.RETRY
    if stage in ("connect", "mail"):
        # A permanent refusal of our connection, login or envelope sender is
        # about us, never about the lead.
        return Verdict.SENDER
    if enhanced in INVALID_STATUSES:
        return Verdict.INVALID
    if enhanced in SENDER_STATUSES:
        return Verdict.SENDER
    if enhanced is not None and enhanced.startswith("5.7."):
        return Verdict.POLICY
    return Verdict.FAILED


@dataclass(frozen=True)
class SenderBox:
    name: str
    address: str
    display_name: str
    signature: str
    sent_copy: str
    sent_folder: str


@dataclass(frozen=True)
class OutboxSettings:
    domain: str
    unsubscribe_address: str | None
    postal_address: str | None
    ai_disclosure: str | None
    public_url: str | None
    subaddressing: bool
    verp: bool
    consent: str
    per_lead_day: int
    mailbox_per_10min: int
    mailbox_per_day: int
    domain_per_hour: int
    retry: tuple[timedelta, ...]
    in_doubt_lookups: int
    in_doubt_interval: timedelta
    claim_batch: int
    lease: timedelta
    breaker_window: int
    breaker_bounce_rate: float
    breaker_policy_rejections: int
    breaker_policy_domains: int
    breaker_codes: frozenset[str]
    mailboxes: dict[str, SenderBox]
    keys: TokenKeys
    dkim: compose.DkimSigner | None = None
    tracked: Mapping[str, str] = field(default_factory=dict)
    """Catalog purchase URL -> SKU: links that become tracked links when
    ``public_url`` is set (``mail/links.py``)."""
    drafting: Drafting = field(default_factory=Drafting)
    """Research mode: which leads get drafts for their seller instead of mail."""

    @classmethod
    def from_config(cls, loaded: LoadedConfig, keys: TokenKeys) -> OutboxSettings:
        s = loaded.settings
        out = s.outbox
        domain = loaded.our_domain or "localhost"
        dkim = None
        key = loaded.secret("dkim")
        if s.dkim.selector and key:
            dkim = compose.DkimSigner(
                domain=s.dkim.domain or domain, selector=s.dkim.selector, private_key=key.encode()
            )
        lease = s.smtp.data_timeout + 6 * s.smtp.timeout
        return cls(
            domain=domain,
            unsubscribe_address=loaded.unsubscribe_address,
            postal_address=s.identity.postal_address,
            ai_disclosure=s.identity.ai_disclosure,
            public_url=s.tracking.public_url,
            subaddressing=s.identity.subaddressing,
            verp=s.smtp.verp,
            consent=out.consent,
            per_lead_day=out.per_lead_day,
            mailbox_per_10min=out.mailbox_per_10min,
            mailbox_per_day=out.mailbox_per_day,
            domain_per_hour=out.domain_per_hour,
            retry=tuple(out.retry),
            in_doubt_lookups=out.in_doubt_lookups,
            in_doubt_interval=out.in_doubt_interval,
            claim_batch=out.claim_batch,
            lease=lease,
            breaker_window=out.breaker_window,
            breaker_bounce_rate=out.breaker_bounce_rate,
            breaker_policy_rejections=out.breaker_policy_rejections,
            breaker_policy_domains=out.breaker_policy_domains,
            breaker_codes=frozenset(out.breaker_codes),
            mailboxes={
                box.name: SenderBox(
                    name=box.name,
                    address=box.address,
                    display_name=box.display_name,
                    signature=box.signature,
                    sent_copy=box.sent_copy,
                    sent_folder=box.sent_folder,
                )
                for box in s.mailboxes
            },
            keys=keys,
            dkim=dkim,
            tracked=_tracked_links(loaded) if s.tracking.public_url else {},
            drafting=Drafting.from_config(loaded),
        )

    def box(self, name: str | None) -> SenderBox:
        if name and name in self.mailboxes:
            return self.mailboxes[name]
        if not self.mailboxes:
            raise LookupError("no mailbox is configured to send from")
        return next(iter(self.mailboxes.values()))


def _tracked_links(loaded: LoadedConfig) -> dict[str, str]:
    """The catalog's purchase URLs and their SKUs (read once; a catalog edit
    that adds a product is tracked from the next reload)."""
    try:
        catalog = load_catalog(Sources.from_config(loaded).catalog)
    except (CatalogError, SourceMissing) as exc:
        log.warning("purchase links are not tracked: %s", exc)
        return {}
    return {p.purchase_url: p.sku for p in catalog.products}


def _event(
    session: AsyncSession,
    row: OutboundMessage,
    kind: str,
    reasons: list[str],
    now: datetime,
    *,
    actor: str = ACTOR,
    data: dict[str, Any] | None = None,
) -> None:
    """Record what happened to *row* (and so to its lead)."""
    repo.add_event(
        session,
        kind,
        actor=actor,
        now=now,
        lead_id=row.lead_id,
        outbound_id=row.id,
        reasons=reasons,
        data=data,
    )


# -- queueing -----------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """One mail to queue (:func:`queue_many`)."""

    kind: Kind | str
    to: Sequence[str]
    subject: str
    text: str
    idempotency_key: str
    mailbox: str | None = None
    lead: Lead | None = None
    thread_id: int | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    cc: Sequence[str] = ()
    attachments: Sequence[compose.Attachment] = ()
    not_before: datetime | None = None
    closing: bool = False
    """A reply that closes the conversation: it may still go out after the
    lead became ``disqualified`` (the close-politely reply)."""
    html: str | None = None
    """A staff notice's own HTML alternative (the seller digest); other mail
    makes its HTML part from the text, with the footer."""
    seller: str | None = None
    """Research mode: whose draft this is (``agent/drafting.py``)."""


async def queue(
    session: AsyncSession,
    settings: OutboxSettings,
    *,
    kind: Kind | str,
    to: Sequence[str],
    subject: str,
    text: str,
    now: datetime,
    idempotency_key: str,
    mailbox: str | None = None,
    lead: Lead | None = None,
    thread_id: int | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    cc: Sequence[str] = (),
    attachments: Sequence[compose.Attachment] = (),
    not_before: datetime | None = None,
    actor: str = ACTOR,
    closing: bool = False,
) -> OutboundMessage:
    """Put one mail in the outbox, in the caller's transaction (see :func:`queue_many`)."""
    draft = Draft(
        kind=kind,
        to=to,
        subject=subject,
        text=text,
        idempotency_key=idempotency_key,
        mailbox=mailbox,
        lead=lead,
        thread_id=thread_id,
        in_reply_to=in_reply_to,
        references=references,
        cc=cc,
        attachments=attachments,
        not_before=not_before,
        closing=closing,
    )
    [row] = await queue_many(session, settings, [draft], now=now, actor=actor)
    return row


async def queue_many(
    session: AsyncSession,
    settings: OutboxSettings,
    drafts: Sequence[Draft],
    *,
    now: datetime,
    actor: str = ACTOR,
) -> list[OutboundMessage]:
    """Put mails in the outbox, in the caller's transaction, their final
    bytes made now, with the decision; they never change once made.

    The same idempotency key twice returns the first row: a decision
    replayed after a crash never queues a second mail.  Bulk callers that
    need only the ids use :func:`queue_bulk` (bytes made by the sender).
    """
    drafts = await divert(session, settings.drafting, drafts, now)
    keys = [d.idempotency_key for d in drafts]
    rows = {
        row.idempotency_key: row
        for row in await session.scalars(
            select(OutboundMessage).where(OutboundMessage.idempotency_key.in_(keys))
        )
    }
    box_ids = await _mailbox_ids(session)
    made: list[OutboundMessage] = []
    for draft in drafts:
        if draft.idempotency_key not in rows:
            row = _new_row(settings, draft, box_ids, now)
            session.add(row)
            rows[draft.idempotency_key] = row
            made.append(row)
    if made:
        await session.flush()
    for row in made:
        row.raw = build(settings, row, now)
        row.envelope_from = envelope_sender(settings, row)
        reason = f"{row.kind} to {', '.join(row.to_addrs)}"
        _event(session, row, "outbound.queued", [reason], now, actor=actor)
    return [rows[key] for key in keys]


async def queue_bulk(
    session: AsyncSession,
    settings: OutboxSettings,
    drafts: Sequence[Draft],
    *,
    now: datetime,
    actor: str = ACTOR,
) -> list[int]:
    """:func:`queue_many` for the cadence planner's chunks: the same rows and
    events, written set-based (one INSERT ... RETURNING for the rows, one for
    their events) and left unrendered for the sender.  Returns the row ids,
    in the order of *drafts*; a key already queued gives its first row."""
    table = table_of(OutboundMessage)
    drafts = await divert(session, settings.drafting, drafts, now)
    keys = [d.idempotency_key for d in drafts]
    ids: dict[str, int] = {
        key: id_
        for key, id_ in await session.execute(
            select(table.c.idempotency_key, table.c.id).where(table.c.idempotency_key.in_(keys))
        )
    }
    box_ids = await _mailbox_ids(session)
    fresh: dict[str, dict[str, Any]] = {}
    for draft in drafts:
        if draft.idempotency_key not in ids and draft.idempotency_key not in fresh:
            fresh[draft.idempotency_key] = _new_values(settings, draft, box_ids, now)
    if fresh:
        values = list(fresh.values())
        inserted = await session.execute(
            insert(table).returning(table.c.id, sort_by_parameter_order=True), values
        )
        events = []
        for value, (id_,) in zip(values, inserted.all(), strict=True):
            ids[value["idempotency_key"]] = id_
            events.append(
                {
                    "at": now,
                    "kind": "outbound.queued",
                    "actor": actor,
                    "lead_id": value.get("lead_id"),
                    "outbound_id": id_,
                    "reasons": [f"{value['kind']} to {', '.join(value['to_addrs'])}"],
                    "data": {},
                }
            )
        await session.execute(insert(table_of(Event)), events)
    return [ids[key] for key in keys]


async def _mailbox_ids(session: AsyncSession) -> dict[str, int]:
    return {name: id_ for id_, name in await session.execute(select(Mailbox.id, Mailbox.name))}


def _new_row(
    settings: OutboxSettings, draft: Draft, box_ids: dict[str, int], now: datetime
) -> OutboundMessage:
    return OutboundMessage(**_new_values(settings, draft, box_ids, now))


def _new_values(
    settings: OutboxSettings, draft: Draft, box_ids: dict[str, int], now: datetime
) -> dict[str, Any]:
    """A new outbox row's columns."""
    kind = Kind(draft.kind)
    recipients = [safe_address(a) for a in draft.to]
    copies = [safe_address(a) for a in draft.cc]
    if not recipients:
        raise ValueError("a mail needs a recipient")
    if kind in LEAD_KINDS and draft.lead is None:
        raise ValueError(f"{kind} mail needs its lead")
    box = settings.box(draft.mailbox)
    return dict(
        mailbox_id=box_ids.get(box.name),
        lead_id=draft.lead.id if draft.lead else None,
        thread_id=draft.thread_id,
        message_id=compose.new_message_id(settings.domain),
        in_reply_to=draft.in_reply_to,
        references=list(draft.references),
        idempotency_key=draft.idempotency_key,
        kind=kind.value,
        to_addrs=recipients + copies,
        subject=safe_header_value(draft.subject),
        status=Status.QUEUED,
        attempts=0,
        not_before=draft.not_before or now,
        created_at=now,
        recipient_domain=recipients[0].rsplit("@", 1)[1],
        payload={
            **({"closing": True} if draft.closing else {}),
            **({"html": draft.html} if draft.html and kind is Kind.NOTICE else {}),
            **({"seller": draft.seller} if draft.seller else {}),
            "mailbox": box.name,
            "to": recipients,
            "cc": copies,
            "text": draft.text,
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "data": base64.b64encode(a.data).decode("ascii"),
                }
                for a in draft.attachments
            ],
        },
    )


async def queue_reply(
    session: AsyncSession,
    settings: OutboxSettings,
    *,
    lead: Lead,
    inbound: InboundMessage,
    text: str,
    now: datetime,
    mailbox: str | None = None,
    actor: str = ACTOR,
    closing: bool = False,
    attachments: Sequence[compose.Attachment] = (),
) -> OutboundMessage:
    """Answer *inbound*: to the lead's own address only (never the From of
    the mail, never its CCs), threaded under it.  A *closing* reply may
    still go out once the lead is ``disqualified``."""
    parents = (inbound.headers or {}).get("references", [])
    chain = " ".join(parents).split()
    parent = (inbound.message_id or "").strip()
    references = compose.references_for(parent, chain)
    # A malformed parent id is dropped by references_for; then no In-Reply-To.
    in_reply_to = parent if references and references[-1] == parent else None
    return await queue(
        session,
        settings,
        kind=Kind.REPLY,
        to=[lead.email],
        subject=compose.reply_subject(inbound.subject),
        text=text,
        now=now,
        idempotency_key=f"reply:{inbound.id}",
        mailbox=mailbox,
        lead=lead,
        thread_id=inbound.thread_id,
        in_reply_to=in_reply_to,
        references=references,
        actor=actor,
        closing=closing,
        attachments=attachments,
    )


async def queue_notice(
    session: AsyncSession,
    settings: OutboxSettings,
    *,
    to: Sequence[str],
    subject: str,
    text: str,
    now: datetime,
    idempotency_key: str,
    lead: Lead | None = None,
    actor: str = ACTOR,
) -> OutboundMessage:
    """A staff notice: plain text, ``Auto-Submitted: auto-generated``."""
    return await queue(
        session,
        settings,
        kind=Kind.NOTICE,
        to=to,
        subject=subject,
        text=text,
        now=now,
        idempotency_key=idempotency_key,
        lead=lead,
        actor=actor,
    )


# -- building -----------------------------------------------------------------


def envelope_sender(settings: OutboxSettings, row: OutboundMessage) -> str:
    box = settings.box(row.payload.get("mailbox"))
    if not settings.verp:
        return box.address
    token = settings.keys.make("verp", str(row.id))
    return f"bounce+{token}@{settings.domain}"


def outbound_id_from_verp(keys: TokenKeys, address: str, now: datetime) -> int | None:
    """The outbound row a VERP bounce address names, if it is one of ours."""
    local = address.rsplit("@", 1)[0]
    if not local.lower().startswith("bounce+"):
        return None
    try:
        return int(keys.open("verp", local[len("bounce+") :], now=now))
    except ValueError:
        return None


def unsubscribe_token(keys: TokenKeys, lead_id: int, now: datetime) -> str:
    return keys.make("unsubscribe", str(lead_id), expires=now + UNSUBSCRIBE_TTL)


def build(settings: OutboxSettings, row: OutboundMessage, now: datetime) -> bytes:
    """The final bytes, made once at the first claim and never changed."""
    p = row.payload
    box = settings.box(p.get("mailbox"))
    kind = Kind(row.kind)
    notice = kind in (Kind.NOTICE, Kind.DRAFT)
    # A filed draft is the seller's own mail once they send it: no footer,
    # no list headers, their signature, plain text.
    filed = kind is Kind.FILED
    footer = None
    mailto = url = None
    reply_to = None
    text = p.get("text", "")
    if not notice and settings.public_url and settings.tracked and row.lead_id is not None:
        text = track_links(
            text,
            settings.tracked,
            public_url=settings.public_url,
            keys=settings.keys,
            lead_id=row.lead_id,
            outbound_id=row.id,
        )
    if not notice and not filed:
        token = None
        if row.lead_id is not None:
            token = unsubscribe_token(settings.keys, row.lead_id, now)
        if settings.unsubscribe_address:
            subject = f"unsubscribe {token}" if token else "unsubscribe"
            mailto = f"mailto:{settings.unsubscribe_address}?subject={subject.replace(' ', '%20')}"
        if settings.public_url and token:
            url = f"{settings.public_url}/u/{token}"
        reply_token = settings.keys.reply_token(row.thread_id) if row.thread_id else None
        if reply_token and settings.subaddressing:
            local, domain = box.address.split("@")
            reply_to = f"{local}+{reply_token}@{domain}"
        footer = compose.Footer(
            postal_address=settings.postal_address,
            unsubscribe_text=_unsubscribe_text(settings.unsubscribe_address, url),
            unsubscribe_url=url,
            ai_disclosure=settings.ai_disclosure,
            reply_token=reply_token,
        )
    outgoing = compose.Outgoing(
        message_id=row.message_id,
        from_address=box.address,
        from_name=box.display_name,
        to=tuple(p.get("to") or row.to_addrs),
        cc=tuple(p.get("cc", ())),
        subject=row.subject or "",
        text=text,
        date=now,
        in_reply_to=row.in_reply_to,
        references=tuple(row.references or ()),
        reply_to=reply_to,
        signature="" if notice else box.signature,
        footer=footer,
        list_unsubscribe_mailto=mailto,
        list_unsubscribe_url=url,
        auto_submitted=notice,
        html=not notice and not filed,
        attachments=tuple(
            compose.Attachment(a["filename"], a["content_type"], base64.b64decode(a["data"]))
            for a in p.get("attachments", ())
        ),
        html_body=p.get("html") if kind is Kind.NOTICE else None,
    )
    return compose.render(outgoing, settings.dkim)


def _unsubscribe_text(address: str | None, url: str | None) -> str:
    if url:
        return "To stop receiving these emails, use the unsubscribe link below."
    if address:
        return f'To stop receiving these emails, reply "unsubscribe" or write to {address}.'
    return 'To stop receiving these emails, reply "unsubscribe".'


# -- claiming -----------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """A claimed row, with everything the sender needs and nothing lazy."""

    id: int
    kind: str
    lead_id: int | None
    mailbox: str
    message_id: str
    envelope_from: str
    recipients: list[str]
    raw: bytes


@dataclass
class _Budget:
    """What each mailbox and recipient domain has used of its caps."""

    settings: OutboxSettings
    box_10min: Counter[int | None] = field(default_factory=Counter)
    box_day: Counter[int | None] = field(default_factory=Counter)
    domain_hour: Counter[str] = field(default_factory=Counter)

    def allows(self, box: int | None, domain: str) -> bool:
        s = self.settings
        return not (
            (s.mailbox_per_10min and self.box_10min[box] >= s.mailbox_per_10min)
            or (s.mailbox_per_day and self.box_day[box] >= s.mailbox_per_day)
            or (s.domain_per_hour and self.domain_hour[domain] >= s.domain_per_hour)
        )

    def blocked(self) -> tuple[set[int], set[str]]:
        """Mailboxes and domains already at a cap: their rows need not be read."""
        s = self.settings
        boxes = {
            box
            for box in set(self.box_10min) | set(self.box_day)
            if box is not None
            and (
                (s.mailbox_per_10min and self.box_10min[box] >= s.mailbox_per_10min)
                or (s.mailbox_per_day and self.box_day[box] >= s.mailbox_per_day)
            )
        }
        domains = {
            domain
            for domain, used in self.domain_hour.items()
            if s.domain_per_hour and used >= s.domain_per_hour
        }
        return boxes, domains

    def take(self, box: int | None, domain: str) -> None:
        self.box_10min[box] += 1
        self.box_day[box] += 1
        self.domain_hour[domain] += 1


async def claim(
    session: AsyncSession,
    settings: OutboxSettings,
    *,
    worker: str,
    now: datetime,
    limit: int | None = None,
) -> list[Ready]:
    """Claim due rows, oldest first, that may be sent now.

    Rows over a cap stay queued untouched, so they keep their place; rows
    the send rule no longer allows are skipped and recorded.
    """
    limit = limit or settings.claim_batch
    if await controls.send_paused(session) is not None:
        return []  # `leadloop pause`: everything waits queued, in its place
    paused = set(
        (await session.scalars(select(Mailbox.id).where(Mailbox.send_paused_at.is_not(None)))).all()
    )
    budget = await _budget(session, settings, now)
    query = (
        select(OutboundMessage)
        .where(
            OutboundMessage.status == Status.QUEUED,
            OutboundMessage.not_before <= now,
            OutboundMessage.kind != Kind.FILED,  # filed in a Drafts folder, never sent
        )
        .order_by(OutboundMessage.not_before, OutboundMessage.id)
        .limit(limit * 2)
        .with_for_update(skip_locked=True)
    )
    blocked_boxes, blocked_domains = budget.blocked()
    if paused | blocked_boxes:
        query = query.where(
            or_(
                OutboundMessage.mailbox_id.is_(None),
                OutboundMessage.mailbox_id.not_in(paused | blocked_boxes),
            )
        )
    if blocked_domains:
        query = query.where(OutboundMessage.recipient_domain.not_in(blocked_domains))
    # A lead an admin paused keeps its mail queued for its resume (another
    # pause, an escalation's, skips the mail below: the agent's text waits
    # for a person there).
    admin_paused = select(Lead.id).where(
        Lead.state == State.PAUSED, Lead.paused_reason.startswith(controls.ADMIN_PAUSE)
    )
    query = query.where(
        or_(
            OutboundMessage.lead_id.is_(None),
            OutboundMessage.kind == Kind.NOTICE,
            OutboundMessage.lead_id.not_in(admin_paused),
        )
    )
    rows = list((await session.scalars(query)).all())
    if not rows:
        return []
    leads = await _leads(session, {r.lead_id for r in rows if r.lead_id is not None})
    suppressed = await _suppressed(session, {a for r in rows for a in r.to_addrs})
    lead_counts, lead_oldest = await _lead_counts(session, set(leads), now)
    ready: list[Ready] = []
    for row in rows:
        if len(ready) >= limit:
            break
        domain = row.recipient_domain or ""
        if not budget.allows(row.mailbox_id, domain):
            continue  # over a cap: waits, keeping its place
        lead = leads.get(row.lead_id) if row.lead_id is not None else None
        refusal = _send_rule(settings, row, lead, suppressed, now)
        if refusal is not None:
            _finish(session, row, Status.SKIPPED, now, refusal)
            _event(session, row, "outbound.skipped", [refusal], now)
            continue
        if lead is not None and Kind(row.kind) in LEAD_KINDS and settings.per_lead_day:
            if lead_counts[lead.id] >= settings.per_lead_day:
                oldest = lead_oldest.get(lead.id)
                row.not_before = (oldest or now) + timedelta(days=1)
                repo.add_event(
                    session,
                    "outbound.deferred",
                    actor=ACTOR,
                    now=now,
                    lead_id=lead.id,
                    outbound_id=row.id,
                    reasons=[f"per-lead cap: {settings.per_lead_day} agent mails in 24 hours"],
                )
                continue
            lead_counts[lead.id] += 1
        budget.take(row.mailbox_id, domain)
        if row.raw is None or (row.attempts == 0 and now - row.created_at > STALE_RENDER):
            # Never shown to a server and made long ago (a delayed touch):
            # made again, so its Date and tokens are fresh.
            row.raw = build(settings, row, now)
            row.envelope_from = envelope_sender(settings, row)
        row.status = Status.SENDING
        row.phase = "claimed"
        row.claimed_by = worker
        row.claimed_until = now + settings.lease
        row.attempts += 1
        ready.append(
            Ready(
                id=row.id,
                kind=row.kind,
                lead_id=row.lead_id,
                mailbox=row.payload.get("mailbox") or settings.box(None).name,
                message_id=row.message_id,
                envelope_from=row.envelope_from or settings.box(None).address,
                recipients=list(row.to_addrs),
                raw=row.raw,
            )
        )
    return ready


def _send_rule(
    settings: OutboxSettings,
    row: OutboundMessage,
    lead: Lead | None,
    suppressed: set[str],
    now: datetime,
) -> str | None:
    """Why this row may not go out now (DESIGN.md's send rule), or None."""
    kind = Kind(row.kind)
    if kind in (Kind.NOTICE, Kind.DRAFT):
        return None
    blocked = [a for a in row.to_addrs if a in suppressed]
    if blocked:
        return f"suppressed: {', '.join(blocked)}"
    if lead is None:
        return "the lead no longer exists"
    state = State(lead.state)
    if kind is Kind.INTRO:
        if state is not State.QUALIFIED:
            return f"the warm introduction needs a qualified lead; it is {state}"
    elif state is State.NURTURE:
        if lead.nurture_until is None or lead.nurture_until > now:
            return "the lead is in nurture and its date is not due"
    elif state not in SENDING_STATES and not (
        kind is Kind.REPLY and state is State.DISQUALIFIED and row.payload.get("closing")
    ):
        return f"the lead is {state}"
    if lead.consent == "denied":
        return "the lead was imported without consent"
    if settings.consent == "explicit" and lead.consent != "granted":
        return "consent policy is explicit and the lead has no recorded consent"
    return None


async def _leads(session: AsyncSession, ids: set[int]) -> dict[int, Lead]:
    if not ids:
        return {}
    found = await session.scalars(select(Lead).where(Lead.id.in_(ids)))
    return {lead.id: lead for lead in found}


async def _suppressed(session: AsyncSession, addresses: set[str]) -> set[str]:
    """By address, or by the keyed HMAC an erasure left (``controls.py``)."""
    return await controls.suppressed_among(session, addresses)


async def _lead_counts(
    session: AsyncSession, lead_ids: set[int], now: datetime
) -> tuple[Counter[int], dict[int, datetime]]:
    """Agent mails to each lead in the last 24 hours (sent or in flight)."""
    counts: Counter[int] = Counter()
    oldest: dict[int, datetime] = {}
    if not lead_ids:
        return counts, oldest
    since = now - timedelta(days=1)
    rows = await session.execute(
        select(OutboundMessage.lead_id, func.count(), func.min(OutboundMessage.sent_at))
        .where(
            OutboundMessage.lead_id.in_(lead_ids),
            OutboundMessage.kind.in_([k.value for k in LEAD_KINDS]),
            or_(
                OutboundMessage.status.in_(_IN_FLIGHT),
                (OutboundMessage.status == Status.SENT) & (OutboundMessage.sent_at > since),
            ),
        )
        .group_by(OutboundMessage.lead_id)
    )
    for lead_id, count, first in rows:
        if lead_id is None:
            continue
        counts[lead_id] = count
        if first is not None:
            oldest[lead_id] = first
    return counts, oldest


async def _budget(session: AsyncSession, settings: OutboxSettings, now: datetime) -> _Budget:
    """Mails sent (or in flight) per mailbox and recipient domain in each cap's window."""
    budget = _Budget(settings)

    def recent(window: timedelta) -> Any:
        return or_(OutboundMessage.status.in_(_IN_FLIGHT), OutboundMessage.sent_at >= now - window)

    if settings.mailbox_per_10min or settings.mailbox_per_day:
        for target, window in (
            (budget.box_10min, timedelta(minutes=10)),
            (budget.box_day, timedelta(days=1)),
        ):
            rows = await session.execute(
                select(OutboundMessage.mailbox_id, func.count())
                .where(recent(window))
                .group_by(OutboundMessage.mailbox_id)
            )
            target.update({box: int(count) for box, count in rows})
    if settings.domain_per_hour:
        rows = await session.execute(
            select(OutboundMessage.recipient_domain, func.count())
            .where(recent(timedelta(hours=1)))
            .group_by(OutboundMessage.recipient_domain)
        )
        for domain, count in rows:
            budget.domain_hour[str(domain or "")] = int(count)
    return budget


# -- outcomes -----------------------------------------------------------------


async def mark_dot(session: AsyncSession, ids: Iterable[int]) -> None:
    """The barrier before the final dot: from here the outcome may be unknown."""
    ids = list(ids)
    if ids:
        await session.execute(
            update(OutboundMessage)
            .where(OutboundMessage.id.in_(ids), OutboundMessage.status == Status.SENDING)
            .values(phase="dot")
        )


async def unclaim(session: AsyncSession, ids: Iterable[int]) -> None:
    """Give back claimed rows that never reached the server."""
    ids = list(ids)
    if ids:
        await session.execute(
            update(OutboundMessage)
            .where(
                OutboundMessage.id.in_(ids),
                OutboundMessage.status == Status.SENDING,
                OutboundMessage.phase == "claimed",
            )
            .values(
                status=Status.QUEUED,
                phase=None,
                claimed_by=None,
                claimed_until=None,
                attempts=OutboundMessage.attempts - 1,
            )
        )


def _finish(
    session: AsyncSession, row: OutboundMessage, status: Status, now: datetime, why: str | None
) -> None:
    row.status = status
    row.phase = None
    row.claimed_by = None
    row.claimed_until = None
    row.finished_at = now
    if why is not None:
        row.last_error = why


async def due_filed(
    session: AsyncSession, now: datetime, limit: int = 200
) -> list[OutboundMessage]:
    """Research-mode drafts waiting to be filed in their seller's Drafts folder."""
    query = (
        select(OutboundMessage)
        .where(
            OutboundMessage.kind == Kind.FILED,
            OutboundMessage.status == Status.QUEUED,
            OutboundMessage.not_before <= now,
        )
        .order_by(OutboundMessage.id)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


def record_filed(
    session: AsyncSession, row: OutboundMessage, folder: str, mailbox: str, now: datetime
) -> None:
    """*row* is in *mailbox*'s *folder* as a draft: done (never sent by us)."""
    _finish(session, row, Status.SENT, now, None)
    row.sent_at = now
    _event(
        session,
        row,
        "outbound.filed",
        [f"draft for {', '.join(row.to_addrs)} filed in {mailbox}/{folder} for the seller"],
        now,
    )


async def record(
    session: AsyncSession,
    settings: OutboxSettings,
    row: OutboundMessage,
    outcome: Delivery | SmtpFailure,
    now: datetime,
) -> Verdict:
    """Apply the outcome table to *row* (claimed and sent by the sender)."""
    lead = await session.get(Lead, row.lead_id) if row.lead_id is not None else None
    if isinstance(outcome, SmtpFailure):
        row.smtp_reply = str(outcome.reply) if outcome.reply else outcome.detail
        result = verdict(
            outcome.reply,
            in_doubt=outcome.in_doubt,
            breaker_codes=settings.breaker_codes,
            stage=outcome.stage,
        )
        await _apply(session, settings, row, lead, result, row.smtp_reply, now, row.to_addrs)
        return result
    # A finished transaction: per-recipient refusals first.
    for address, reply in outcome.rejected.items():
        result = verdict(reply, in_doubt=False, breaker_codes=settings.breaker_codes)
        if outcome.accepted:
            await _recipient_refused(session, settings, row, lead, address, result, reply, now)
    if not outcome.accepted:
        address, reply = next(iter(outcome.rejected.items()))
        row.smtp_reply = f"{address}: {reply}"
        result = verdict(reply, in_doubt=False, breaker_codes=settings.breaker_codes)
        await _apply(session, settings, row, lead, result, row.smtp_reply, now, [address])
        return result
    assert outcome.final is not None
    row.smtp_reply = str(outcome.final)
    await _apply(session, settings, row, lead, Verdict.SENT, row.smtp_reply, now, outcome.accepted)
    return Verdict.SENT


@dataclass(frozen=True)
class Sent:
    """A plain success, for :func:`record_sent_many`."""

    row_id: int
    kind: str
    lead_id: int | None
    mailbox: str
    reply: str


async def record_sent_many(
    session: AsyncSession, settings: OutboxSettings, sent: Sequence[Sent], now: datetime
) -> None:
    """Every recipient took the mail: the common case, in set-based
    statements.  The same effects as :func:`record` for a 250."""
    if not sent:
        return
    table = table_of(OutboundMessage)
    await session.execute(
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.status == Status.SENDING.value)
        .values(
            status=Status.SENT.value,
            sent_at=now,
            finished_at=now,
            phase=None,
            claimed_by=None,
            claimed_until=None,
            last_error=None,
            smtp_reply=bindparam("reply"),
            copy_pending=bindparam("copy"),
        ),
        [
            {
                "row_id": item.row_id,
                "reply": item.reply,
                "copy": settings.box(item.mailbox).sent_copy == "client",
            }
            for item in sent
        ],
    )
    await session.execute(
        insert(table_of(Event)),
        [
            {
                "at": now,
                "kind": "outbound.sent",
                "actor": ACTOR,
                "lead_id": item.lead_id,
                "outbound_id": item.row_id,
                "reasons": [item.reply],
                "data": {"verdict": Verdict.SENT.value},
            }
            for item in sent
        ],
    )
    touched = [i.lead_id for i in sent if i.kind == Kind.TOUCH and i.lead_id is not None]
    for source, reason in _TOUCH_MOVES.items():
        moved = await transition_many(
            session, touched, source, State.ENGAGING, actor=ACTOR, reason=reason, now=now
        )
        touched = [i for i in touched if i not in set(moved)]


async def _recipient_refused(
    session: AsyncSession,
    settings: OutboxSettings,
    row: OutboundMessage,
    lead: Lead | None,
    address: str,
    result: Verdict,
    reply: Reply,
    now: datetime,
) -> None:
    """One of several recipients refused while the others took the mail."""
    reason = f"{address}: {reply}"
    _event(
        session, row, "outbound.recipient_refused", [reason], now, data={"verdict": result.value}
    )
    is_lead = lead is not None and address == lead.email
    if result is Verdict.INVALID:
        await _suppress(session, address, reason, now)
        if is_lead and lead is not None:
            await _to_state(session, lead, State.INVALID, f"address refused: {reply}", now)
    elif result is Verdict.POLICY and is_lead and lead is not None:
        await _to_owner(session, lead, f"refused by the recipient's server: {reply}", now, row)


async def _apply(
    session: AsyncSession,
    settings: OutboxSettings,
    row: OutboundMessage,
    lead: Lead | None,
    result: Verdict,
    why: str,
    now: datetime,
    recipients: Sequence[str],
) -> None:
    kind = Kind(row.kind)
    box = settings.box(row.payload.get("mailbox"))
    event_data: dict[str, Any] = {"verdict": result.value, "attempt": row.attempts}
    if result is Verdict.SENT:
        _finish(session, row, Status.SENT, now, None)
        row.sent_at = now
        row.last_error = None
        row.copy_pending = box.sent_copy == "client"
        if lead is not None and kind is Kind.TOUCH and lead.state in _TOUCH_MOVES:
            await _to_state(session, lead, State.ENGAGING, _TOUCH_MOVES[State(lead.state)], now)
    elif result is Verdict.RETRY:
        if row.attempts <= len(settings.retry):
            wait = settings.retry[row.attempts - 1]
            row.status = Status.QUEUED
            row.phase = None
            row.claimed_by = row.claimed_until = None
            row.not_before = now + wait
            row.last_error = why
            event_data["retry_at"] = row.not_before.isoformat()
        else:
            _finish(session, row, Status.FAILED, now, why)
            if lead is not None and kind in LEAD_KINDS:
                await _to_owner(
                    session, lead, f"could not be delivered after {row.attempts} tries", now, row
                )
            raise_alert(
                session,
                "send_failed",
                f"outbound {row.id} to {', '.join(row.to_addrs)} failed after "
                f"{row.attempts} tries: {why}",
                actor=ACTOR,
                now=now,
                lead_id=row.lead_id,
                outbound_id=row.id,
            )
    elif result is Verdict.INVALID:
        _finish(session, row, Status.REJECTED, now, why)
        row.bounced = True
        for address in recipients:
            await _suppress(session, address, why, now)
        if lead is not None and lead.email in recipients:
            await _to_state(session, lead, State.INVALID, f"address refused: {why}", now)
        await check_breaker(session, settings, row.mailbox_id, now)
    elif result is Verdict.SENDER:
        # Our address is refused: no lead's fault, so the row waits for resume.
        _wait_for_resume(row, why, settings, now)
        await pause_sender(session, row.mailbox_id, f"the relay refused us: {why}", now)
    elif result is Verdict.POLICY:
        _finish(session, row, Status.REJECTED, now, why)
        row.policy_rejected = True
        if lead is not None and kind in LEAD_KINDS:
            await _to_owner(session, lead, f"refused by the recipient's server: {why}", now, row)
        await check_breaker(session, settings, row.mailbox_id, now)
    elif result is Verdict.REPUTATION:
        _wait_for_resume(row, why, settings, now)
        await pause_sender(session, row.mailbox_id, f"reputation or authentication: {why}", now)
    elif result is Verdict.IN_DOUBT:
        await _in_doubt(session, settings, row, box.sent_copy, why, now)
    else:
        _finish(session, row, Status.FAILED, now, why)
        if lead is not None and kind in LEAD_KINDS:
            await _to_owner(session, lead, f"refused: {why}", now, row)
    _event(session, row, f"outbound.{result.value}", [why], now, data=event_data)


def _wait_for_resume(
    row: OutboundMessage, why: str, settings: OutboxSettings, now: datetime
) -> None:
    """Not this lead's fault: back in the queue, behind its paused mailbox.  A
    row of no known mailbox is not held back by a pause, so it waits out the
    first retry instead of being claimed again at once."""
    if row.mailbox_id is None:
        row.not_before = max(row.not_before, now + settings.retry[0])
    row.status = Status.QUEUED
    row.phase = None
    row.claimed_by = row.claimed_until = None
    row.attempts = max(row.attempts - 1, 0)
    row.last_error = why


async def _in_doubt(
    session: AsyncSession,
    settings: OutboxSettings,
    row: OutboundMessage,
    sent_copy: str,
    why: str,
    now: datetime,
) -> None:
    row.phase = None
    row.claimed_by = row.claimed_until = None
    row.last_error = f"in doubt: {why}"
    if Kind(row.kind) in (Kind.NOTICE, Kind.DRAFT):
        # Staff notices (and drafts for sellers) may be resent rather than lost (DESIGN.md).
        row.status = Status.QUEUED
        row.not_before = now
        return
    if sent_copy == "server":
        row.status = Status.IN_DOUBT
        row.not_before = now
        row.payload = {**row.payload, "lookups": 0}
        return
    hold(session, row, f"outcome unknown ({why}) and no server copy to check", now)


def hold(session: AsyncSession, row: OutboundMessage, reason: str, now: datetime) -> None:
    """Keep a lead mail for an operator: never resent blindly."""
    _finish(session, row, Status.HELD, now, row.last_error)
    row.held_reason = reason
    raise_alert(
        session,
        "mail_held",
        f"outbound {row.id} ({row.message_id}) to {', '.join(row.to_addrs)} held: {reason}; "
        f"check and run `leadloop outbox release {row.id}` or `cancel {row.id}`",
        actor=ACTOR,
        now=now,
        lead_id=row.lead_id,
        outbound_id=row.id,
    )


async def settle(
    session: AsyncSession,
    settings: OutboxSettings,
    row: OutboundMessage,
    found: bool | None,
    now: datetime,
) -> None:
    """The Sent-folder lookup for an in-doubt row: found -> sent; not found
    (or the lookup failed) -> look again later, and after the last lookup hold."""
    if found:
        _finish(session, row, Status.SENT, now, None)
        row.sent_at = now
        row.smtp_reply = "settled: found in the Sent folder"
        lead = await session.get(Lead, row.lead_id) if row.lead_id is not None else None
        if lead is not None and row.kind == Kind.TOUCH and lead.state in _TOUCH_MOVES:
            await _to_state(session, lead, State.ENGAGING, _TOUCH_MOVES[State(lead.state)], now)
        _event(session, row, "outbound.settled", ["found in the Sent folder: it was sent"], now)
        return
    lookups = int(row.payload.get("lookups", 0)) + 1
    row.payload = {**row.payload, "lookups": lookups}
    if lookups < settings.in_doubt_lookups:
        row.not_before = now + settings.in_doubt_interval
        return
    hold(session, row, f"outcome unknown and not found in Sent after {lookups} lookups", now)


async def recover(
    session: AsyncSession,
    settings: OutboxSettings,
    now: datetime,
    *,
    all_claims: bool,
    keep: Collection[str] = (),
) -> int:
    """Rows left ``sending`` by a process that died: before the dot they are
    queued again (nothing can have been delivered); after it they are in doubt.

    Claims of the daemons in *keep* (alive, sharing the database) are never
    taken, whatever their lease says: a mail waiting in a live sender's queue
    behind a slow relay is still that sender's, and taking it would send it
    twice."""
    query = select(OutboundMessage).where(OutboundMessage.status == Status.SENDING)
    if not all_claims:
        query = query.where(
            or_(OutboundMessage.claimed_until.is_(None), OutboundMessage.claimed_until < now)
        )
    if keep:
        query = query.where(
            or_(OutboundMessage.claimed_by.is_(None), OutboundMessage.claimed_by.not_in(keep))
        )
    rows = list((await session.scalars(query.with_for_update(skip_locked=True))).all())
    for row in rows:
        if row.phase == "dot":
            box = settings.box(row.payload.get("mailbox"))
            _event(
                session,
                row,
                "outbound.in_doubt",
                ["the sender stopped after the final dot, before the reply was recorded"],
                now,
            )
            await _in_doubt(session, settings, row, box.sent_copy, "restart", now)
        else:
            row.status = Status.QUEUED
            row.phase = None
            row.claimed_by = row.claimed_until = None
            row.attempts = max(row.attempts - 1, 0)
            _event(
                session,
                row,
                "outbound.requeued",
                ["the sender stopped before the final dot; sending again is safe"],
                now,
            )
    return len(rows)


# -- leads, suppression, the breaker ------------------------------------------------


async def _suppress(session: AsyncSession, address: str, reason: str, now: datetime) -> None:
    await controls.add_suppression(session, address, reason=reason, source="smtp", now=now)


async def _to_state(
    session: AsyncSession, lead: Lead, target: State, reason: str, now: datetime
) -> None:
    if can_transition(lead, target):
        await transition(session, lead, target, actor=ACTOR, reason=reason, now=now)


async def _to_owner(
    session: AsyncSession, lead: Lead, reason: str, now: datetime, row: OutboundMessage
) -> None:
    """Hand the lead to its owner.  The state table allows ``handed_back``
    only from ``conversing``; a lead not yet conversing is paused instead,
    which also silences the agent.  The owner hears of it from the event."""
    target = State.HANDED_BACK if can_transition(lead, State.HANDED_BACK) else State.PAUSED
    await to_owner(session, lead, target, actor=ACTOR, reason=reason, now=now, outbound_id=row.id)


async def pause_sender(
    session: AsyncSession, mailbox_id: int | None, reason: str, now: datetime
) -> None:
    box = await session.get(Mailbox, mailbox_id) if mailbox_id is not None else None
    if box is None:
        box = await session.scalar(select(Mailbox).order_by(Mailbox.id).limit(1))
    if box is None or box.send_paused_at is not None:
        return
    box.send_paused_at = now
    box.send_paused_reason = reason
    raise_alert(
        session,
        "sender_paused",
        f"mailbox {box.name} stopped sending: {reason}; "
        f"after fixing, run `leadloop resume --mailbox {box.name}`",
        actor=ACTOR,
        now=now,
        data={"mailbox": box.name},
    )


async def resume_sender(session: AsyncSession, name: str, *, actor: str, now: datetime) -> bool:
    box = await session.scalar(select(Mailbox).where(Mailbox.name == name))
    if box is None:
        raise LookupError(f"no mailbox named {name!r}")
    if box.send_paused_at is None:
        return False
    reason = box.send_paused_reason
    box.send_paused_at = None
    box.send_paused_reason = None
    repo.add_event(
        session,
        "outbox.resumed",
        actor=actor,
        now=now,
        reasons=[f"mailbox {name} resumed (was paused: {reason})"],
        data={"mailbox": name},
    )
    return True


async def check_breaker(
    session: AsyncSession, settings: OutboxSettings, mailbox_id: int | None, now: datetime
) -> None:
    """Pause the mailbox on too many permanent bounces or policy rejections."""
    await session.flush()  # the outcomes recorded so far in this group count
    recent = (
        select(OutboundMessage.bounced)
        .where(
            OutboundMessage.mailbox_id == mailbox_id,
            OutboundMessage.finished_at.is_not(None),
            OutboundMessage.status.in_([Status.SENT, Status.REJECTED, Status.FAILED]),
        )
        .order_by(OutboundMessage.finished_at.desc(), OutboundMessage.id.desc())
        .limit(settings.breaker_window)
        .subquery()
    )
    bounced = await session.scalar(select(func.count()).where(recent.c.bounced.is_(True))) or 0
    # Over a full window; a short history counts as if the rest were delivered,
    # so one early bounce does not stop a new mailbox.
    if bounced > settings.breaker_bounce_rate * settings.breaker_window:
        await pause_sender(
            session,
            mailbox_id,
            f"{bounced} permanent bounces in the last {settings.breaker_window} sends "
            f"(over {settings.breaker_bounce_rate:.0%})",
            now,
        )
        return
    rows = (
        await session.execute(
            select(OutboundMessage.recipient_domain).where(
                OutboundMessage.mailbox_id == mailbox_id,
                OutboundMessage.policy_rejected.is_(True),
                OutboundMessage.finished_at >= now - timedelta(hours=1),
            )
        )
    ).all()
    domains = {d for (d,) in rows}
    if (
        len(rows) >= settings.breaker_policy_rejections
        and len(domains) >= settings.breaker_policy_domains
    ):
        await pause_sender(
            session,
            mailbox_id,
            f"{len(rows)} policy rejections from {len(domains)} domains within an hour",
            now,
        )


async def mark_bounced(
    session: AsyncSession, address: str, now: datetime, outbound_id: int | None = None
) -> OutboundMessage | None:
    """A DSN reported a permanent failure: mark the mail it answers (the VERP
    row, else the latest sent to *address*) so the breaker counts it."""
    row: OutboundMessage | None
    if outbound_id is not None:
        row = await session.get(OutboundMessage, outbound_id)
    else:
        row = await session.scalar(
            select(OutboundMessage)
            .where(
                OutboundMessage.status == Status.SENT,
                cast(OutboundMessage.to_addrs, String).like(f'%"{address.lower()}"%'),
            )
            .order_by(OutboundMessage.sent_at.desc())
            .limit(1)
        )
    if row is not None and not row.bounced:
        row.bounced = True
        row.finished_at = row.finished_at or now
    return row


# -- operator controls ----------------------------------------------------------


class OperatorError(Exception):
    """An outbox command that does not apply to this row."""


RELEASABLE = frozenset({Status.HELD, Status.FAILED, Status.IN_DOUBT})
CANCELLABLE = frozenset({Status.QUEUED, Status.HELD, Status.FAILED, Status.IN_DOUBT})


async def release(
    session: AsyncSession, row_id: int, *, actor: str, now: datetime
) -> OutboundMessage:
    """Send a held or failed mail again: the operator has checked that it
    did not arrive.  The send rule still applies when it goes out."""
    row = await session.get(OutboundMessage, row_id)
    if row is None:
        raise OperatorError(f"no outbound mail {row_id}")
    if row.status not in RELEASABLE:
        raise OperatorError(
            f"outbound {row_id} is {row.status}; only held or failed mail is released"
        )
    previous = row.status
    row.status = Status.QUEUED
    row.not_before = now
    row.attempts = 0
    row.held_reason = None
    row.finished_at = None
    row.phase = None
    _event(
        session, row, "outbox.released", [f"released from {previous} by {actor}"], now, actor=actor
    )
    return row


async def cancel(
    session: AsyncSession, row_id: int, *, actor: str, now: datetime
) -> OutboundMessage:
    row = await session.get(OutboundMessage, row_id)
    if row is None:
        raise OperatorError(f"no outbound mail {row_id}")
    if row.status not in CANCELLABLE:
        raise OperatorError(f"outbound {row_id} is {row.status}; it cannot be cancelled")
    previous = row.status
    _finish(session, row, Status.CANCELLED, now, None)
    row.copy_pending = False
    _event(
        session,
        row,
        "outbox.cancelled",
        [f"cancelled from {previous} by {actor}"],
        now,
        actor=actor,
    )
    return row
