"""``/metrics``: the daemon in Prometheus' text format.

Most figures are counts in the database, read when Prometheus scrapes (so
several daemons sharing a PostgreSQL database report the same totals, and a
restart loses nothing): mails in by kind, mails out by kind, intents,
escalations, hand-offs, clicks, orders, queue depths, lead states and the
brain's tokens.  What only this process sees (SMTP transaction time, errors
it logged, mailbox state) is kept in process with prometheus-client's own
instruments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Executable, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    BrainUsage,
    Click,
    Escalation,
    Event,
    InboundMessage,
    Lead,
    Order,
    OutboundMessage,
    ScheduledTask,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class _Snapshot:
    counters: list[tuple[str, str, list[str], list[tuple[list[str], float]]]] = field(
        default_factory=list
    )
    gauges: list[tuple[str, str, list[str], list[tuple[list[str], float]]]] = field(
        default_factory=list
    )


@dataclass(frozen=True)
class MailboxHealth:
    name: str
    up: bool
    last_poll: float | None
    """Unix time of the last successful poll."""


class _FromDatabase(Collector):
    def __init__(self) -> None:
        self.snapshot = _Snapshot()
        self.mailboxes: list[MailboxHealth] = []

    def collect(self) -> Iterator[Metric]:
        for name, doc, labels, samples in self.snapshot.counters:
            counter = CounterMetricFamily(name, doc, labels=labels)
            for values, value in samples:
                counter.add_metric(values, value)
            yield counter
        for name, doc, labels, samples in self.snapshot.gauges:
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in samples:
                gauge.add_metric(values, value)
            yield gauge
        up = GaugeMetricFamily(
            "leadloop_mailbox_up", "1 while the mailbox polls", labels=["mailbox"]
        )
        last = GaugeMetricFamily(
            "leadloop_mailbox_last_poll_timestamp_seconds",
            "Unix time of the mailbox's last successful poll",
            labels=["mailbox"],
        )
        for box in self.mailboxes:
            up.add_metric([box.name], 1.0 if box.up else 0.0)
            if box.last_poll is not None:
                last.add_metric([box.name], box.last_poll)
        yield up
        yield last


class Metrics:
    """One registry per daemon (tests start several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.send_seconds = Histogram(
            "leadloop_send_seconds",
            "Time of one SMTP transaction, connection reuse included",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.errors = Counter(
            "leadloop_errors",
            "Errors this process logged, by where they happened",
            ["where"],
            registry=self.registry,
        )
        self._db = _FromDatabase()
        self.registry.register(self._db)

    def observe_send(self, seconds: float) -> None:
        self.send_seconds.observe(seconds)

    def error(self, where: str) -> None:
        self.errors.labels(where).inc()

    async def render(self, db: Database, mailboxes: Iterable[MailboxHealth]) -> bytes:
        self._db.snapshot = await _read(db)
        self._db.mailboxes = list(mailboxes)
        return generate_latest(self.registry)


async def _read(db: Database) -> _Snapshot:
    snap = _Snapshot()
    intent = InboundMessage.result["intent"].as_string()
    async with db.sessions() as session:

        async def grouped(query: Executable) -> list[tuple[list[str], float]]:
            rows = (await session.execute(query)).all()
            return [([_label(v) for v in row[:-1]], float(row[-1] or 0)) for row in rows]

        snap.counters += [
            (
                "leadloop_mails_in",
                "Mails stored from the mailboxes, by what screening found",
                ["kind"],
                await grouped(
                    select(func.coalesce(InboundMessage.kind, "unscreened"), func.count()).group_by(
                        InboundMessage.kind
                    )
                ),
            ),
            (
                "leadloop_mails_out",
                "Mails accepted by the SMTP relay, by kind",
                ["kind"],
                await grouped(
                    select(OutboundMessage.kind, func.count())
                    .where(OutboundMessage.sent_at.is_not(None))
                    .group_by(OutboundMessage.kind)
                ),
            ),
            (
                "leadloop_intents",
                "Buyer mails understood, by intent",
                ["intent"],
                await grouped(
                    select(intent, func.count()).where(intent.is_not(None)).group_by(intent)
                ),
            ),
            (
                "leadloop_escalations",
                "Escalations opened, by condition",
                ["condition"],
                await grouped(
                    select(Escalation.condition, func.count()).group_by(Escalation.condition)
                ),
            ),
            (
                "leadloop_handoffs",
                "Leads handed to a seller",
                [],
                await grouped(
                    select(func.count()).select_from(Event).where(Event.kind == "lead.handed_off")
                ),
            ),
            (
                "leadloop_clicks",
                "Requests for tracked links, by whether a mail scanner made them",
                ["scanner"],
                await grouped(select(Click.scanner, func.count()).group_by(Click.scanner)),
            ),
            (
                "leadloop_orders",
                "Conversions reported to the webhook",
                [],
                await grouped(select(func.count()).select_from(Order)),
            ),
            (
                "leadloop_pipeline_failures",
                "Messages a stage failed on (retried, then quarantined)",
                [],
                await grouped(
                    select(func.count()).select_from(Event).where(Event.kind == "inbound.failed")
                ),
            ),
            (
                "leadloop_brain_tokens",
                "Tokens the brain spent",
                ["brain", "type"],
                [
                    *await grouped(
                        select(
                            BrainUsage.brain,
                            literal("prompt"),
                            func.sum(BrainUsage.prompt_tokens),
                        ).group_by(BrainUsage.brain)
                    ),
                    *await grouped(
                        select(
                            BrainUsage.brain,
                            literal("completion"),
                            func.sum(BrainUsage.completion_tokens),
                        ).group_by(BrainUsage.brain)
                    ),
                ],
            ),
        ]
        snap.gauges += [
            (
                "leadloop_queue_depth",
                "Work waiting: inbound messages, outbound mails, due tasks",
                ["queue"],
                [
                    (["inbound"], await _count(session, InboundMessage.status, repo.PENDING)),
                    (["outbox"], await _count(session, OutboundMessage.status, "queued")),
                    (["due"], await _count(session, ScheduledTask.status, repo.PENDING)),
                ],
            ),
            (
                "leadloop_open_escalations",
                "Escalations not yet resolved",
                [],
                [
                    (
                        [],
                        float(
                            await session.scalar(
                                select(func.count())
                                .select_from(Escalation)
                                .where(Escalation.status != "resolved")
                            )
                            or 0
                        ),
                    )
                ],
            ),
            (
                "leadloop_leads",
                "Leads by state",
                ["state"],
                await grouped(select(Lead.state, func.count()).group_by(Lead.state)),
            ),
        ]
    return snap


async def _count(session: AsyncSession, status: InstrumentedAttribute[str], value: str) -> float:
    return float(await session.scalar(select(func.count()).where(status == value)) or 0)


def _label(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
