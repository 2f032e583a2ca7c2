"""The seeds' CRM / e-commerce events as JSON lines: every click on a tracked
link (people's and scanners', marked), order, escalation, hand-off, lead
state change and opt-out.

Each line: ``{"id": "<source>:<n>", "type", "at", "lead", "data"}``.  The id is
stable, so a consumer that gets a line twice (a retried webhook delivery)
can drop the copy.  ``leadloop events export --since`` prints them; with
``[events] webhook_url`` the daemon POSTs new ones in batches, signed like
the conversion webhook (``X-Leadloop-Timestamp``, ``X-Leadloop-Signature``
over ``<timestamp>.<body>``), retried with exponential backoff.  The push
runs as its own scheduler job and only reads the database, so a slow or
dead endpoint never holds up mail.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import Select, select

from leadloop.agent.tracking import signed_headers
from leadloop.storage.db import Database
from leadloop.storage.models import Click, Cursor, Event, Lead, LeadStateChange

log = logging.getLogger("leadloop.report.events")

# events.kind -> exported type
EVENT_TYPES = {
    "lead.converted": "order",
    "lead.escalated": "escalation",
    "lead.handed_off": "handoff",
}
SOURCES = ("event", "click", "state")


def _event_line(row: Event, email: str | None) -> dict[str, Any]:
    return {
        "id": f"event:{row.id}",
        "type": EVENT_TYPES[row.kind],
        "at": row.at.isoformat(),
        "lead": email,
        "data": {**(row.data or {}), "reasons": list(row.reasons or [])},
    }


def _click_line(row: Click, email: str | None) -> dict[str, Any]:
    return {
        "id": f"click:{row.id}",
        "type": "click",
        "at": row.at.isoformat(),
        "lead": email,
        "data": {
            "outbound_id": row.outbound_id,
            "sku": row.sku,
            "scanner": row.scanner,
            "reason": row.reason,
        },
    }


def _state_lines(row: LeadStateChange, email: str | None) -> Iterator[dict[str, Any]]:
    data = {"from": row.from_state, "to": row.to_state, "actor": row.actor, "reason": row.reason}
    yield {
        "id": f"state:{row.id}",
        "type": "state_change",
        "at": row.at.isoformat(),
        "lead": email,
        "data": data,
    }
    if row.to_state == "opted_out":
        yield {
            "id": f"opt_out:{row.id}",
            "type": "opt_out",
            "at": row.at.isoformat(),
            "lead": email,
            "data": data,
        }


def _queries(since: datetime | None, after: dict[str, int]) -> dict[str, Select[Any, str]]:
    events = (
        select(Event, Lead.email)
        .outerjoin(Lead, Lead.id == Event.lead_id)
        .where(Event.kind.in_(EVENT_TYPES), Event.id > after.get("event", 0))
        .order_by(Event.id)
    )
    clicks = (
        select(Click, Lead.email)
        .outerjoin(Lead, Lead.id == Click.lead_id)
        .where(Click.id > after.get("click", 0))
        .order_by(Click.id)
    )
    states = (
        select(LeadStateChange, Lead.email)
        .outerjoin(Lead, Lead.id == LeadStateChange.lead_id)
        .where(LeadStateChange.id > after.get("state", 0))
        .order_by(LeadStateChange.id)
    )
    if since is not None:
        events = events.where(Event.at >= since)
        clicks = clicks.where(Click.at >= since)
        states = states.where(LeadStateChange.at >= since)
    return {"event": events, "click": clicks, "state": states}


def _lines(source: str, row: Any, email: str | None) -> list[dict[str, Any]]:
    if source == "event":
        return [_event_line(row, email)]
    if source == "click":
        return [_click_line(row, email)]
    return list(_state_lines(row, email))


def _keyed(
    source: str, row: Any, email: str | None
) -> list[tuple[tuple[str, str, int, int], dict[str, Any]]]:
    """Lines with the key that orders them the same everywhere: time, then
    source, then row id."""
    return [
        ((line["at"], source, row.id, n), line) for n, line in enumerate(_lines(source, row, email))
    ]


async def export_events(
    db: Database, *, since: datetime | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every exported event at or after *since*, oldest first."""
    async with db.sessions() as session:
        streams = [
            [
                keyed
                for row in (await session.execute(query)).all()
                for keyed in _keyed(source, row[0], row[1])
            ]
            for source, query in _queries(since, {}).items()
        ]
    for _, line in heapq.merge(*streams, key=lambda keyed: keyed[0]):
        yield line


@dataclass
class EventPusher:
    """POSTs new events to ``[events] webhook_url``; the cursors (one per
    source, in the ``cursors`` table) move only after a 2xx answer."""

    url: str
    secret: str
    batch: int = 100
    timeout: timedelta = timedelta(seconds=10)
    max_backoff: timedelta = timedelta(hours=1)
    failures: int = 0
    retry_at: datetime | None = None

    async def sweep(self, db: Database, now: datetime) -> int:
        """Push what is new; returns how many lines went.  Never raises for
        a failing endpoint: it waits (1 min, 2, 4, ... up to max_backoff)."""
        if self.retry_at is not None and now < self.retry_at:
            return 0
        async with db.sessions() as session:
            after = {
                c.name.removeprefix("events."): c.position
                for c in await session.scalars(
                    select(Cursor).where(Cursor.name.in_([f"events.{s}" for s in SOURCES]))
                )
            }
            keyed: list[tuple[tuple[str, str, int, int], dict[str, Any]]] = []
            moved: dict[str, int] = {}
            for source, query in _queries(None, after).items():
                for row in (await session.execute(query.limit(self.batch))).all():
                    keyed += _keyed(source, row[0], row[1])
                    moved[source] = row[0].id
        if not keyed:
            return 0
        lines = [line for _, line in sorted(keyed, key=lambda item: item[0])]
        body = json.dumps({"events": lines}, ensure_ascii=False).encode()
        headers = {**signed_headers(self.secret, body, now), "Content-Type": "application/json"}
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout.total_seconds())
                ) as http,
                http.post(self.url, data=body, headers=headers) as response,
            ):
                problem = None if response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = str(exc) or type(exc).__name__
        if problem is not None:
            self.failures += 1
            wait = min(self.max_backoff, timedelta(minutes=2 ** (self.failures - 1)))
            self.retry_at = now + wait
            log.warning(
                "event webhook failed (%s); %d events wait, next try in %s",
                problem,
                len(lines),
                wait,
            )
            return 0
        self.failures, self.retry_at = 0, None
        async with db.transaction() as session:
            for source, position in moved.items():
                cursor = await session.get(Cursor, f"events.{source}")
                if cursor is None:
                    session.add(Cursor(name=f"events.{source}", position=position, updated_at=now))
                else:
                    cursor.position, cursor.updated_at = position, now
        log.info("event webhook: %d events delivered", len(lines))
        return len(lines)
