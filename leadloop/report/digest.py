"""The seller digest: a daily mail to each seller with their open leads in
priority order (``research/priority.py``), each with its rank, the reason,
the suggested action (``research/actions.py``) and a short research summary,
then their open tasks.  Plain text with an HTML alternative, a staff notice
through the outbox (``Auto-Submitted: auto-generated``).

- **Who**: every ``[[sellers]]`` entry, every ``[handoff] sellers`` address
  and every owner of an open lead; not those in ``[handoff] away``.
- **When**: ``[digest] time`` on ``[digest] days``, in the seller's time
  zone (``[[sellers]] timezone``, else ``[sending] default_timezone``); a
  daemon that was down at that time sends it when it is back the same day.
- **Once**: the outbox's idempotency key ``digest:<seller>:<local date>``,
  however many daemons or ticks; two daemons racing for it leave one row
  (the loser's insert fails in a savepoint and is skipped).
- A seller with no open lead and no open task gets no mail that day (one
  may still go out later that day, once a lead comes in).

Research summaries are read, never made, here: the ``research`` rows of
provider ``internal`` (subject ``lead:<id>``) and ``website`` (subject
``domain:<domain>``, the account's domain, else the address's).  Everything
that came from outside (names, companies, summaries, the lead's words) is
defanged and, in the HTML part, escaped.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import outbox
from leadloop.agent.notices import defang
from leadloop.config import LoadedConfig
from leadloop.research.priority import CLOSED_STATES, Ranked, prioritize
from leadloop.storage.models import Lead, OutboundMessage, ResearchResult, Task

log = logging.getLogger("leadloop.report.digest")
ACTOR = "report.digest"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SUMMARY_LIMIT = 300
ACTION_LABELS = {
    "draft_outreach": "Draft an outreach mail",
    "schedule_appointment": "Schedule an appointment",
    "send_follow_up": "Send a follow-up",
    "create_task": "Create a task",
    "wait": "Wait",
    "none": "Nothing to do",
}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Seller:
    address: str
    name: str
    zone: ZoneInfo


@dataclass(frozen=True)
class LeadEntry:
    ranked: Ranked
    research: str


@dataclass(frozen=True)
class TaskEntry:
    title: str
    lead_email: str
    created_at: datetime
    detail: str | None


@dataclass(frozen=True)
class Digest:
    seller: Seller
    local_date: date
    subject: str
    text: str
    html: str
    open_leads: int
    tasks: int

    @property
    def empty(self) -> bool:
        return not self.open_leads and not self.tasks

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.seller.address, self.local_date)


def idempotency_key(address: str, local_date: date) -> str:
    return f"digest:{address.lower()}:{local_date.isoformat()}"


def seller_of(loaded: LoadedConfig, address: str) -> Seller:
    """*address* as a seller: their ``[[sellers]]`` name and time zone, if any."""
    settings = loaded.settings
    entry = settings.seller(address)
    zone = (entry.timezone if entry else None) or settings.sending.default_timezone
    return Seller(address.lower(), entry.name if entry else "", ZoneInfo(zone))


def sellers(loaded: LoadedConfig, owners: Iterable[str]) -> list[Seller]:
    """Everyone who gets a digest (the module's "Who"), each once."""
    settings = loaded.settings
    away = set(settings.handoff.away)
    addresses = [
        *(s.address for s in settings.sellers),
        *settings.handoff.sellers,
        *sorted(o.lower() for o in owners if o),
    ]
    return [seller_of(loaded, a) for a in dict.fromkeys(addresses) if a not in away]


def due_on(seller: Seller, loaded: LoadedConfig, now: datetime) -> date | None:
    """The seller's local date when their digest is due at *now*, else None."""
    cfg = loaded.settings.digest
    local = now.astimezone(seller.zone)
    hour, minute = (int(part) for part in cfg.time.split(":"))
    if DAYS[local.weekday()] not in cfg.days or local.time() < time(hour, minute):
        return None
    return local.date()


async def owners_of_open_leads(session: AsyncSession) -> list[str]:
    rows = await session.scalars(
        select(func.lower(Lead.owner))
        .where(Lead.owner.is_not(None), Lead.state.not_in([s.value for s in CLOSED_STATES]))
        .distinct()
    )
    return [r for r in rows if r]


async def send_due_digests(
    session: AsyncSession,
    loaded: LoadedConfig,
    outbox_settings: outbox.OutboxSettings,
    now: datetime,
) -> int:
    """Queue every digest due at *now* and not yet queued, in *session*'s
    transaction; returns how many were queued.  Call it at every tick."""
    if not loaded.settings.digest.enabled:
        return 0
    due = {}
    for seller in sellers(loaded, await owners_of_open_leads(session)):
        local_date = due_on(seller, loaded, now)
        if local_date is not None:
            due[idempotency_key(seller.address, local_date)] = seller
    if not due:
        return 0
    queued_before = set(
        await session.scalars(
            select(OutboundMessage.idempotency_key).where(
                OutboundMessage.idempotency_key.in_(list(due))
            )
        )
    )
    queued = 0
    for key, seller in due.items():
        if key in queued_before:
            continue
        digest = await build_digest(session, loaded, seller, now)
        if digest.empty:
            continue
        draft = outbox.Draft(
            kind=outbox.Kind.NOTICE,
            to=[seller.address],
            subject=digest.subject,
            text=digest.text,
            idempotency_key=key,
            html=digest.html,
        )
        try:
            async with session.begin_nested():
                await outbox.queue_many(session, outbox_settings, [draft], now=now, actor=ACTOR)
        except IntegrityError:
            log.info(
                "digest seller=%s key=%s already queued by another daemon", seller.address, key
            )
            continue
        log.info(
            "digest seller=%s leads=%d tasks=%d queued",
            seller.address,
            digest.open_leads,
            digest.tasks,
        )
        queued += 1
    return queued


async def build_digest(
    session: AsyncSession, loaded: LoadedConfig, seller: Seller | str, now: datetime
) -> Digest:
    """The digest *seller* gets at *now* (``leadloop digest preview`` prints it)."""
    if isinstance(seller, str):
        seller = seller_of(loaded, seller)
    ranked = await prioritize(session, loaded, now, owner=seller.address)
    limit = loaded.settings.digest.limit
    shown = ranked[:limit]
    research = await _research(session, shown)
    entries = [LeadEntry(r, research.get(r.lead_id, "no research yet")) for r in shown]
    tasks = await _open_tasks(session, seller.address)
    local = now.astimezone(seller.zone)
    return _render(seller, local, entries, len(ranked), tasks)


async def _research(session: AsyncSession, leads: Sequence[Ranked]) -> dict[int, str]:
    """Each lead's research summary: what we know of the lead, then of its company's website."""
    if not leads:
        return {}
    lead_subjects = {f"lead:{r.lead_id}": r.lead_id for r in leads}
    domain_subjects = {f"domain:{r.domain}" for r in leads}
    rows = await session.execute(
        select(ResearchResult.provider, ResearchResult.subject, ResearchResult.summary).where(
            or_(
                (ResearchResult.provider == "internal")
                & ResearchResult.subject.in_(list(lead_subjects)),
                (ResearchResult.provider == "website")
                & ResearchResult.subject.in_(sorted(domain_subjects)),
            ),
            ResearchResult.summary.is_not(None),
        )
    )
    internal: dict[int, str] = {}
    website: dict[str, str] = {}
    for provider, subject, summary in rows:
        text = _short(summary or "")
        if not text:
            continue
        if provider == "internal":
            internal[lead_subjects[subject]] = text
        else:
            website[subject] = text
    found = {}
    for r in leads:
        parts = []
        if r.lead_id in internal:
            parts.append(internal[r.lead_id])
        if f"domain:{r.domain}" in website:
            parts.append(f"Website: {website[f'domain:{r.domain}']}")
        if parts:
            found[r.lead_id] = " ".join(parts)
    return found


def _short(text: str) -> str:
    flat = " ".join(_CONTROL.sub("", text).split())
    if len(flat) > SUMMARY_LIMIT:
        flat = flat[:SUMMARY_LIMIT].rsplit(" ", 1)[0] + " [...]"
    return defang(flat)


async def _open_tasks(session: AsyncSession, address: str) -> list[TaskEntry]:
    """The seller's open tasks: the task's own owner, else the lead's."""
    rows = await session.execute(
        select(Task.title, Lead.email, Task.created_at, Task.detail)
        .join(Lead, Lead.id == Task.lead_id)
        .where(
            Task.status == "open",
            func.lower(func.coalesce(Task.owner, Lead.owner)) == address.lower(),
        )
        .order_by(Task.created_at, Task.id)
    )
    return [TaskEntry(title, email, at, detail) for title, email, at, detail in rows]


# -- rendering -----------------------------------------------------------------


def _clean(text: str | None) -> str:
    return defang(" ".join(_CONTROL.sub("", text or "").split()))


def _who(r: Ranked) -> str:
    name = _clean(r.name)
    who = f"{name} <{r.email}>" if name else r.email
    company = _clean(r.company)
    return f"{who}, {company}" if company else who


def _next(r: Ranked) -> str:
    s = r.suggestion
    label = ACTION_LABELS.get(s.action, s.action)
    if s.action == "create_task" and s.detail:
        label = f"{label}: {_clean(s.detail)}"
    return f"{label} ({_clean(s.reason)})"


def _render(
    seller: Seller,
    local: datetime,
    entries: Sequence[LeadEntry],
    total: int,
    tasks: Sequence[TaskEntry],
) -> Digest:
    day = f"{local:%A} {local.day} {local:%B %Y}"
    subject = (
        f"Your leads for {local:%a} {local.day} {local:%b %Y}: "
        f"{total} open, {len(tasks)} task{'s' if len(tasks) != 1 else ''}"
    )
    hello = f"Good morning {_clean(seller.name) or seller.address},"
    if total:
        intro = (
            f"Your {total} open lead{'s' if total != 1 else ''} in priority order "
            f"on {day} ({seller.zone.key}): hand-raisers first, then ICP fit, engagement, "
            "the account and how new the lead is."
        )
    else:
        intro = f"You have no open leads on {day} ({seller.zone.key})."
    more = total - len(entries)
    command = f"leadloop leads list --prioritized --owner {seller.address}"
    again = f"The same list: {command}"

    lines = [hello, "", intro, ""]
    for entry in entries:
        r = entry.ranked
        lines += [
            f"{r.rank}. {_who(r)} ({r.state})",
            f"   Why: {_clean(r.reason)}",
            f"   Next: {_next(r)}",
            f"   Research: {entry.research}",
            "",
        ]
    if more > 0:
        lines += [f"... and {more} more: {command}", ""]
    if tasks:
        lines.append(f"Open tasks ({len(tasks)}):")
        for t in tasks:
            since = t.created_at.astimezone(seller.zone)
            lines.append(f"- {_clean(t.title)}, for {t.lead_email} (since {since:%Y-%m-%d})")
        lines.append("")
    lines.append(again)

    e = html.escape
    items = []
    for entry in entries:
        r = entry.ranked
        name = _clean(r.name)
        who = (
            f"<strong>{e(name)}</strong> &lt;{e(r.email)}&gt;"
            if name
            else f"<strong>{e(r.email)}</strong>"
        )
        company = f", {e(_clean(r.company))}" if r.company else ""
        items.append(
            f'<li value="{r.rank}" style="margin-bottom:12px">{who}{company} '
            f'<span style="color:#666666">({e(r.state)})</span><br>\n'
            f"<b>Why:</b> {e(_clean(r.reason))}<br>\n"
            f"<b>Next:</b> {e(_next(r))}<br>\n"
            f"<b>Research:</b> {e(entry.research)}</li>"
        )
    page = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{e(subject)}</title></head>",
        '<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222222">',
        f"<p>{e(hello)}</p>",
        f"<p>{e(intro)}</p>",
    ]
    if items:
        page += ["<ol>", *items, "</ol>"]
    if more > 0:
        page.append(f"<p>... and {more} more: {e(command)}</p>")
    if tasks:
        page.append(f"<h3>Open tasks ({len(tasks)})</h3>")
        page.append("<ul>")
        for t in tasks:
            since = t.created_at.astimezone(seller.zone)
            page.append(
                f"<li>{e(_clean(t.title))}, for {e(t.lead_email)} (since {since:%Y-%m-%d})</li>"
            )
        page.append("</ul>")
    page += [f'<p style="color:#666666;font-size:12px">{e(again)}</p>', "</body></html>", ""]
    return Digest(
        seller=seller,
        local_date=local.date(),
        subject=subject,
        text="\n".join(lines) + "\n",
        html="\n".join(page),
        open_leads=total,
        tasks=len(tasks),
    )
