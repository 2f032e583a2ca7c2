"""The weekly summary: the past seven days' report and the open escalations,
by mail to the supervisors (``[report]``), once per week at the configured
day and hour in ``[sending] default_timezone``.  The outbox's idempotency key
(the ISO week) makes it once, however many daemons or restarts."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from leadloop.agent import outbox
from leadloop.config import LoadedConfig
from leadloop.report.metrics import build_report, catalog_urls
from leadloop.report.table import render_table
from leadloop.storage.db import Database
from leadloop.storage.models import Lead, OutboundMessage

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ACTOR = "report.weekly"


def recipients(loaded: LoadedConfig) -> list[str]:
    s = loaded.settings
    return list(s.report.to or s.handoff.supervisors)


async def send_weekly_summary(
    db: Database, loaded: LoadedConfig, send: outbox.OutboxSettings, now: datetime
) -> int | None:
    """Queue this week's summary when it is due and not yet queued; returns
    the outbound id, or None when there is nothing to do."""
    cfg = loaded.settings.report
    to = recipients(loaded)
    if not cfg.weekly or not to:
        return None
    zone = ZoneInfo(loaded.settings.sending.default_timezone)
    local = now.astimezone(zone)
    if local.weekday() != DAYS.index(cfg.day) or local.hour < cfg.hour:
        return None
    year, week, _ = local.isocalendar()
    key = f"weekly:{year}-W{week:02d}"
    async with db.sessions() as session:
        if await session.scalar(
            select(OutboundMessage.id).where(OutboundMessage.idempotency_key == key)
        ):
            return None
    until = local.replace(hour=0, minute=0, second=0, microsecond=0)
    since = until - timedelta(days=7)
    async with db.sessions() as session:
        first_lead = await session.scalar(select(func.min(Lead.created_at)))
    if first_lead is None or first_lead >= until:
        return None  # a week before there was anything to report on
    report = await build_report(db, since, until, catalog_urls=catalog_urls(loaded), now=now)
    last_day = (until - timedelta(days=1)).date()
    subject = f"leadloop weekly summary {since.date().isoformat()} to {last_day.isoformat()}"
    text = (
        f"The agent's week, {since.date().isoformat()} to {last_day.isoformat()} "
        f"({zone.key}).\n\n{render_table(report)}\n"
        "Details: leadloop report --html FILE; escalations: leadloop escalations list.\n"
    )
    async with db.transaction() as session:
        row = await outbox.queue_notice(
            session,
            send,
            to=to,
            subject=subject,
            text=text,
            now=now,
            idempotency_key=key,
            actor=ACTOR,
        )
        return row.id
