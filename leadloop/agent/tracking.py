"""Tracked links, one-click unsubscribe and conversions: what the public and
admin listeners (``daemon/web.py``) do, kept apart from HTTP so it is tested
on its own.

A tracked link is ``<public_url>/t/<token>``; the token (``mail/tokens.py``,
purpose ``click``) signs the lead, the outbound mail and the catalog SKU, so
the only place it can lead to is that product's purchase URL in the current
catalog (with UTM parameters).  The outbox puts tracked links in place of
catalog purchase URLs when it builds a mail (:func:`track_links`); guardrails
have checked the draft with the real URLs before.

Mail scanners (Microsoft Safe Links, Proofpoint, Mimecast, ...) open links
before a person does.  A request is a scanner's when it is a HEAD, when its
user agent is a known scanner's, when it comes within ``scanner_after`` of
delivery, or when two different links of one mail are opened within
``burst`` of each other (every click of such a burst is marked).  Every
request is kept as a ``clicks`` row; a person's click counts, and moves the
lead's cadence (``cadence.record_click``), only once ``burst`` has passed
with no burst showing up (the ``click.settle`` task) and only the first time
for that mail and link.  A GET never consumes anything.

Conversions come signed: ``X-Leadloop-Timestamp`` (Unix seconds) and
``X-Leadloop-Signature: sha256=<hex>``, an HMAC-SHA256 of
``<timestamp>.<body>`` with the ``[conversions]`` secret, the timestamp within
``tolerance`` of our clock (the same scheme signs exported events).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import due
from leadloop.agent.leads import lead_by_email
from leadloop.agent.lifecycle import State, transition
from leadloop.agent.screening import suppress
from leadloop.knowledge.catalog import Catalog
from leadloop.mail.links import NotFound, open_click, with_utm
from leadloop.mail.tokens import TokenInvalid, TokenKeys
from leadloop.storage import repo
from leadloop.storage.models import Click, Lead, Order, OutboundMessage

ACTOR = "tracking"
SETTLE_TASK = "click.settle"
SIGNATURE_HEADER = "X-Leadloop-Signature"
TIMESTAMP_HEADER = "X-Leadloop-Timestamp"

# User-agent substrings of link scanners and fetchers that are not a person
# reading mail.  No maintained library lists mail-security scanners (the
# crawler lists, e.g. crawler-user-agents, miss most of them), so this list
# is ours; [tracking] scanner_agents adds to it.
SCANNER_AGENTS = (
    "safelinks",
    "microsoft office",
    "ms-office",
    "proofpoint",
    "urldefense",
    "mimecast",
    "barracuda",
    "messagelabs",
    "symantec",
    "trend micro",
    "trendmicro",
    "zscaler",
    "forcepoint",
    "sophos",
    "fortinet",
    "fortiguard",
    "cisco",
    "ironport",
    "checkpoint",
    "cloudmark",
    "vade",
    "hornetsecurity",
    "bot",
    "spider",
    "crawler",
    "preview",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "curl/",
    "wget/",
    "java/",
    "okhttp",
    "headless",
)


# -- clicks --------------------------------------------------------------------


@dataclass(frozen=True)
class ScannerRules:
    agents: tuple[str, ...] = SCANNER_AGENTS
    after: timedelta = timedelta(seconds=30)
    burst: timedelta = timedelta(seconds=10)

    @classmethod
    def from_config(cls, extra: Sequence[str], after: timedelta, burst: timedelta) -> ScannerRules:
        return cls(SCANNER_AGENTS + tuple(a.lower() for a in extra), after, burst)

    def first_look(
        self, method: str, user_agent: str | None, sent_at: datetime | None, now: datetime
    ) -> str | None:
        """Why this request is a scanner's, from the request alone; None if it may be a person."""
        if method.upper() == "HEAD":
            return "HEAD request"
        agent = (user_agent or "").lower()
        if not agent.strip():
            return "no user agent"
        for needle in self.agents:
            if needle in agent:
                return f"scanner user agent ({needle})"
        if sent_at is not None and now - sent_at < self.after:
            seconds = (now - sent_at).total_seconds()
            return f"{seconds:.0f}s after delivery (under {self.after.total_seconds():.0f}s)"
        return None


@dataclass(frozen=True)
class Redirect:
    url: str
    click: Click


async def record_request(
    session: AsyncSession,
    *,
    keys: TokenKeys,
    catalog: Catalog,
    rules: ScannerRules,
    utm: Mapping[str, str],
    token: str,
    method: str,
    user_agent: str | None,
    remote: str | None,
    now: datetime,
) -> Redirect:
    """Keep one request for a tracked link and return where it leads.

    Raises :class:`NotFound` for anything that is not a live link of ours, so
    no other target is reachable."""
    lead_id, outbound_id, sku = open_click(keys, token, now)
    outbound = await session.get(OutboundMessage, outbound_id)
    if outbound is None or outbound.lead_id != lead_id:
        raise NotFound("no such mail for this lead")
    product = catalog.by_sku(sku)
    if product is None:
        raise NotFound(f"product {sku} is no longer in the catalog")
    reason = rules.first_look(method, user_agent, outbound.sent_at, now)
    click = Click(
        lead_id=lead_id,
        outbound_id=outbound_id,
        sku=sku,
        at=now,
        method=method.upper()[:10],
        user_agent=(user_agent or "")[:500] or None,
        remote=(remote or "")[:64] or None,
        scanner=reason is not None,
        reason=reason,
    )
    burst = await _burst(session, click, rules.burst)
    if burst:
        reason = f"burst: several links of one mail within {rules.burst}"
        for each in (click, *burst):
            if not each.scanner:  # a reason found first is kept
                each.scanner, each.reason = True, reason
    session.add(click)
    await session.flush()
    if not click.scanner:
        await repo.schedule(
            session,
            SETTLE_TASK,
            now + rules.burst,
            now=now,
            lead_id=lead_id,
            payload={"click": click.id, "url": product.purchase_url, "product": product.name},
        )
    target = with_utm(product.purchase_url, content=sku, **_utm(utm, outbound.kind))
    return Redirect(target, click)


def _utm(utm: Mapping[str, str], kind: str) -> dict[str, str]:
    return {
        "source": utm.get("source", "leadloop"),
        "medium": utm.get("medium", "email"),
        "campaign": utm.get("campaign") or kind,
    }


async def _burst(session: AsyncSession, click: Click, window: timedelta) -> list[Click]:
    """The clicks of a burst this one makes: when a *different* link of the
    same mail was opened within *window*, every click of the mail in that
    window not yet marked (a person opening one link many times is no burst)."""
    near = (
        Click.outbound_id == click.outbound_id,
        Click.at >= click.at - window,
        Click.at <= click.at + window,
    )
    other = await session.scalar(select(Click.id).where(*near, Click.sku != click.sku).limit(1))
    if other is None:
        return []
    return list(await session.scalars(select(Click).where(*near, Click.scanner.is_(False))))


@due.handler(SETTLE_TASK)
async def settle_click(session: AsyncSession, task: Any, now: datetime, context: Any) -> str:
    """A person's click, once no burst showed up: the lead's cadence reacts,
    the first time only for one link of one mail."""
    from leadloop.agent.cadence import Planner, record_click

    click = await session.get(Click, int(task.payload.get("click", 0)))
    if click is None:
        return "no click: it is gone"
    if click.scanner:
        return f"not counted: {click.reason}"
    earlier = await session.scalar(
        select(Click.id).where(
            Click.outbound_id == click.outbound_id,
            Click.sku == click.sku,
            Click.scanner.is_(False),
            Click.id < click.id,
        )
    )
    if earlier is not None:
        return f"already counted (click {earlier})"
    lead = await session.get(Lead, click.lead_id)
    if lead is None:
        return "no click: the lead is gone"
    if not isinstance(context, Planner):
        raise LookupError("a click needs the planner's settings")
    return await record_click(
        session,
        context.settings,
        lead,
        str(task.payload.get("url") or ""),
        purchase=True,
        now=now,
        product=task.payload.get("product"),
    )


# -- unsubscribe ---------------------------------------------------------------


def unsubscribe_lead_id(keys: TokenKeys, token: str, now: datetime) -> int:
    try:
        return int(keys.open("unsubscribe", token, now=now))
    except (TokenInvalid, ValueError) as exc:
        raise NotFound("not an unsubscribe link of ours, or an expired one") from exc


async def unsubscribe(session: AsyncSession, lead_id: int, *, how: str, now: datetime) -> Lead:
    """Opt the lead out at once: suppressed and ``opted_out`` (idempotent)."""
    lead = await session.get(Lead, lead_id)
    if lead is None:
        raise NotFound("no such lead")
    reason = f"unsubscribed by {how}"
    await suppress(session, lead.email, reason=reason, source=ACTOR, now=now)
    if lead.state != State.OPTED_OUT:
        await transition(session, lead, State.OPTED_OUT, actor=ACTOR, reason=reason, now=now)
    return lead


# -- signatures and conversions ----------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signed_headers(secret: str, body: bytes, now: datetime) -> dict[str, str]:
    stamp = int(now.timestamp())
    return {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: sign(secret, stamp, body)}


class BadSignature(ValueError):
    """Missing, wrong or stale signature."""


def verify(
    secret: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: datetime,
    tolerance: timedelta,
) -> None:
    if not secret:
        raise BadSignature("no [conversions] secret is configured")
    if not timestamp or not signature:
        raise BadSignature(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    try:
        stamp = int(timestamp)
    except ValueError:
        raise BadSignature(f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    if not hmac.compare_digest(sign(secret, stamp, body), signature.strip()):
        raise BadSignature("signature does not match")
    if abs(now.timestamp() - stamp) > tolerance.total_seconds():
        raise BadSignature(f"timestamp is more than {tolerance} away from now")


class BadOrder(ValueError):
    """The event's body is not a usable order."""


@dataclass(frozen=True)
class OrderEvent:
    order_id: str
    amount: str
    currency: str
    email: str | None
    token: str | None

    @classmethod
    def parse(cls, data: Any) -> OrderEvent:
        if not isinstance(data, dict):
            raise BadOrder("the body must be a JSON object")
        order_id = data.get("order_id")
        if not isinstance(order_id, str | int) or not str(order_id).strip():
            raise BadOrder("order_id is required")
        try:
            amount = Decimal(str(data.get("amount")))
        except InvalidOperation:
            raise BadOrder("amount must be a decimal number") from None
        if not amount.is_finite() or amount < 0:
            raise BadOrder("amount must be a number >= 0")
        currency = str(data.get("currency") or "")
        if not re.fullmatch(r"[A-Z]{3}", currency):
            raise BadOrder("currency must be an ISO 4217 code like EUR")
        email, token = data.get("email"), data.get("token")
        if not email and not token:
            raise BadOrder("give the lead's email or a link token")
        return cls(str(order_id).strip()[:255], str(amount), currency, email, token)


async def record_order(
    session: AsyncSession, event: OrderEvent, *, keys: TokenKeys, now: datetime
) -> tuple[str, Lead]:
    """``won`` for the lead (its cadence and checkout reminder end); a
    repeated order id changes nothing.  Returns ("won" | "duplicate", lead)."""
    from leadloop.agent.cadence import record_conversion

    lead: Lead | None = None
    if event.token:
        try:
            lead_id = open_click(keys, event.token, now)[0]
        except NotFound:
            lead_id = unsubscribe_lead_id(keys, event.token, now)
        lead = await session.get(Lead, lead_id)
    elif event.email:
        lead = await lead_by_email(session, str(event.email).strip().lower())
    if lead is None:
        raise NotFound("no lead with that email or token")
    seen = await session.scalar(select(Order).where(Order.order_id == event.order_id))
    if seen is not None:
        return "duplicate", lead
    session.add(
        Order(
            order_id=event.order_id,
            lead_id=lead.id,
            amount=event.amount,
            currency=event.currency,
            at=now,
            data={},
        )
    )
    await session.flush()
    await record_conversion(session, lead, now=now, reason=f"order {event.order_id}")
    repo.add_event(
        session,
        "lead.converted",
        actor=ACTOR,
        now=now,
        lead_id=lead.id,
        reasons=[f"order {event.order_id}: {event.currency} {event.amount}"],
        data={"order_id": event.order_id, "amount": event.amount, "currency": event.currency},
    )
    return "won", lead
