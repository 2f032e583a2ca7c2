"""Outbound throughput: the outbox's sender against plain aiosmtplib, to aiosmtpd on loopback.

What it measures, on N touch mails (default 2000) of the same shape the
outbox builds (multipart/alternative text + HTML with the footer and
List-Unsubscribe; rendered by :func:`leadloop.agent.outbox.build` itself),
to recipients spread over ``--domains`` recipient domains:

1. raw baseline: C persistent ``aiosmtplib.SMTP`` connections (C =
   ``--concurrency``, default 4, the ``[smtp] connections`` default), each
   sending its share of N pre-rendered messages one after another with
   ``sendmail(from, [rcpt], bytes)``; msgs/s from connect to the last reply.
   The messages are rendered beforehand, untimed (the time that takes is
   printed too), as the outbox renders each mail when the decision queues it
   (``outbox.queue``), outside the timed drain.
2. outbox: leadloop's real sender (:func:`leadloop.daemon.service.build_sender`)
   from a config.toml in a temporary directory, ``[smtp] connections = C`` and
   every cap off (``mailbox_per_10min``, ``mailbox_per_day``,
   ``domain_per_hour``, ``per_lead_day`` = 0), on a freshly migrated SQLite
   database (:func:`~leadloop.storage.db.open_database`).  N leads
   (:func:`~leadloop.agent.lifecycle.create_lead`) and N touch rows
   (:func:`~leadloop.agent.outbox.queue`) are created first, untimed (that is
   the decision's transaction); then only ``await sender.drain()`` is timed,
   which claims, sends and records every row.  msgs/s and that rate
   divided by the raw baseline's (the target is >= 0.8).  Also counted during
   the drain: database commits and SQL statements (engine events).
3. memory: the process's max RSS (``resource.getrusage``) after each phase;
   it only grows, so the figure after the outbox phase is the peak of the
   whole run.

The SMTP server is aiosmtpd in the same process and on the same event loop
as the client (its handler only notes each Message-ID and answers 250), so
client and server share the loop and the machine's CPUs; that holds for both
modes alike.  After each phase the script checks that the server received
exactly N distinct Message-IDs (and, for the outbox, the rows' own, with
every row ``sent``); if not, it still prints the figures but exits 1, since a
rate measured on a broken run means nothing.

Each figure comes from one run; it prints figures, never pass or fail.

Run from the repository root::

    python bench/outbound.py                     # 2000 mails, 4 connections, SQLite
    python bench/outbound.py --count 5000 --concurrency 8
    python bench/outbound.py --json              # one JSON object instead of the table
    python bench/outbound.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from ingest import scratch_postgres
from sqlalchemy import event, func, select

from leadloop.agent import outbox
from leadloop.agent.lifecycle import create_lead
from leadloop.agent.stages import token_keys
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig, loads
from leadloop.daemon.service import build_sender
from leadloop.mail import compose
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Lead, OutboundMessage

DEFAULT_COUNT = 2000
DEFAULT_CONCURRENCY = 4  # SmtpConfig.connections' default
DEFAULT_DOMAINS = 50
QUEUE_BATCH = 200  # leads and rows per (untimed) queueing transaction
DRAIN_TIMEOUT = 900.0
SUBJECT = "A question about your fleet"
FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kateřina", "Liam", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara",
)  # fmt: skip
BODY = """\
{name}, is your fleet tracking still done by hand?

Most logistics teams we talk to lose a few hours every week reconciling
driver logs, fuel receipts and delivery confirmations across spreadsheets.
Acme pulls all of it into one place and flags late or missing stops
automatically, so dispatch sees problems before the customer does.

Would a 20-minute call next week be useful? I can show you what it looks
like with data from a fleet of your size: https://acme.example/demo

Thanks,
"""

# The sending mailbox and identity; bench/cadence.py uses it too.
SENDER_CONFIG = """
[service]
state_dir = "var"

[identity]
postal_address = "Acme Corp, 1 Harbour Road, Springfield"
ai_disclosure = "This email was written with the help of an AI assistant."

[tracking]
public_url = "https://links.acme.example"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
display_name = "Acme Sales"
signature = "Ann Example, Acme"
path = "mail"
"""
CONFIG = (
    SENDER_CONFIG
    + """
[smtp]
host = "127.0.0.1"
port = {port}
connections = {connections}

[outbox]
mailbox_per_10min = 0
mailbox_per_day = 0
domain_per_hour = 0
per_lead_day = 0
"""
)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class Phase:
    name: str
    seconds: float
    count: int  # mails the server accepted
    avg_bytes: float  # as the server received them
    max_rss_kib: int  # process max RSS after the phase
    commits: int | None = None
    statements: int | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Results:
    phases: list[Phase]  # raw, then outbox
    render_seconds: float  # outbox.build() for the raw baseline's N messages


class CountingHandler:
    """aiosmtpd's handler: notes each mail's Message-ID and size, answers 250."""

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.size = 0

    def reset(self) -> None:
        self.ids = []
        self.size = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data: Any = envelope.original_content or envelope.content
        raw = data if isinstance(data, bytes) else str(data).encode()
        head = raw.split(b"\r\n\r\n", 1)[0]
        match = _MESSAGE_ID.search(head)
        self.ids.append(match.group(1) if match else b"")
        self.size += len(raw)
        return "250 OK"


# --------------------------------------------------------------------------
# Setup


def lead_address(index: int, domains: int) -> str:
    return f"lead{index:06d}@buyer{index % domains:03d}.example"


def lead_name(index: int) -> str:
    return FIRST_NAMES[index % len(FIRST_NAMES)]


def write_config(directory: Path, port: int, connections: int) -> LoadedConfig:
    text = textwrap.dedent(CONFIG).format(port=port, connections=connections)
    file = directory / "config.toml"
    file.write_text(text)
    return loads(text, file)


def render_raw(settings: outbox.OutboxSettings, count: int, domains: int) -> list[bytes]:
    """N messages through the outbox's own build(), from rows never stored
    (fresh Message-IDs, the lead ids the outbox phase will have)."""
    box = settings.box(None)
    now = datetime.now(UTC)
    messages: list[bytes] = []
    for index in range(count):
        address = lead_address(index, domains)
        row = OutboundMessage(
            lead_id=index + 1,
            thread_id=None,
            message_id=compose.new_message_id(settings.domain),
            in_reply_to=None,
            references=[],
            kind=outbox.Kind.TOUCH.value,
            to_addrs=[address],
            subject=SUBJECT,
            payload={
                "mailbox": box.name,
                "to": [address],
                "cc": [],
                "text": BODY.format(name=lead_name(index)),
                "attachments": [],
            },
        )
        messages.append(outbox.build(settings, row, now))
    return messages


async def queue_all(
    db: Database, settings: outbox.OutboxSettings, clock: ManualClock, count: int, domains: int
) -> None:
    """N leads and one queued touch each, QUEUE_BATCH per transaction (untimed)."""
    now = clock.now()
    for start in range(0, count, QUEUE_BATCH):
        async with db.transaction() as session:
            for index in range(start, min(start + QUEUE_BATCH, count)):
                lead = await create_lead(
                    session,
                    Lead(email=lead_address(index, domains), first_name=lead_name(index)),
                    actor="bench",
                    reason="bench",
                    now=now,
                )
                await outbox.queue(
                    session,
                    settings,
                    kind=outbox.Kind.TOUCH,
                    to=[lead.email],
                    subject=SUBJECT,
                    text=BODY.format(name=lead_name(index)),
                    now=now,
                    idempotency_key=f"bench:touch:{lead.id}",
                    lead=lead,
                )


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _check_ids(phase: str, ids: list[bytes], count: int) -> list[str]:
    problems: list[str] = []
    distinct = set(ids)
    if len(ids) != count or len(distinct) != count or b"" in distinct:
        problems.append(
            f"{phase}: the server received {len(ids)} mails with {len(distinct - {b''})} "
            f"distinct Message-IDs; expected {count}"
        )
    return problems


# --------------------------------------------------------------------------
# Measurements


async def measure_raw(
    port: int,
    concurrency: int,
    handler: CountingHandler,
    messages: list[bytes],
    sender: str,
    recipients: list[str],
) -> tuple[Phase, list[str]]:
    handler.reset()

    async def worker(lane: int) -> None:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, use_tls=False, start_tls=False, timeout=30
        )
        await smtp.connect()
        try:
            for index in range(lane, len(messages), concurrency):
                errors, _ = await smtp.sendmail(sender, [recipients[index]], messages[index])
                if errors:
                    raise RuntimeError(f"raw: refused {errors!r}")
        finally:
            await smtp.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker(lane) for lane in range(concurrency)))
    seconds = time.perf_counter() - start
    received = len(handler.ids)
    phase = Phase(
        name="raw aiosmtplib",
        seconds=seconds,
        count=received,
        avg_bytes=handler.size / received if received else 0.0,
        max_rss_kib=max_rss_kib(),
    )
    return phase, _check_ids("raw", handler.ids, len(messages))


async def measure_outbox(
    loaded: LoadedConfig, url: str, handler: CountingHandler, count: int, domains: int
) -> tuple[Phase, list[str]]:
    clock = ManualClock(datetime.now(UTC))
    db = await open_database(url)
    try:
        async with db.transaction() as session:
            for box in loaded.settings.mailboxes:
                await repo.ensure_mailbox(session, box.name, box.kind, box.address)
        sender = build_sender(loaded, db, clock, "bench")
        try:
            await queue_all(db, sender.settings, clock, count, domains)
            handler.reset()
            counts = {"commits": 0, "statements": 0}

            def on_commit(_conn: Any) -> None:
                counts["commits"] += 1

            def on_statement(*_args: Any) -> None:
                counts["statements"] += 1

            engine = db.engine.sync_engine
            event.listen(engine, "commit", on_commit)
            event.listen(engine, "before_cursor_execute", on_statement)
            try:
                start = time.perf_counter()
                result = await asyncio.wait_for(sender.drain(), DRAIN_TIMEOUT)
                seconds = time.perf_counter() - start
            finally:
                event.remove(engine, "commit", on_commit)
                event.remove(engine, "before_cursor_execute", on_statement)
            rss = max_rss_kib()

            async with db.sessions() as session:
                statuses = dict(
                    (
                        await session.execute(
                            select(OutboundMessage.status, func.count()).group_by(
                                OutboundMessage.status
                            )
                        )
                    ).all()
                )
                row_ids = set((await session.scalars(select(OutboundMessage.message_id))).all())
        finally:
            await sender.close()
    finally:
        await db.dispose()

    received = len(handler.ids)
    phase = Phase(
        name="leadloop outbox",
        seconds=seconds,
        count=received,
        avg_bytes=handler.size / received if received else 0.0,
        max_rss_kib=rss,
        commits=counts["commits"],
        statements=counts["statements"],
    )
    problems = _check_ids("outbox", handler.ids, count)
    if result.sent != count:
        problems.append(
            f"outbox: drain() reported {result.sent} sent, {result.other} other, "
            f"{result.claimed} claimed; expected {count} sent"
        )
    if statuses.get(outbox.Status.SENT.value, 0) != count or len(statuses) != 1:
        problems.append(f"outbox: row statuses {statuses}; expected {count} sent")
    if {raw.decode() for raw in handler.ids} != row_ids:
        problems.append("outbox: the Message-IDs received are not the rows' Message-IDs")
    return phase, problems


async def run(args: argparse.Namespace, workdir: Path) -> tuple[Results, list[str]]:
    handler = CountingHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mx.bench.example", ident="aiosmtpd-bench"),
        "127.0.0.1",
        0,
    )
    try:
        port = server.sockets[0].getsockname()[1]
        loaded = write_config(workdir, port, args.concurrency)

        # The settings build_sender() gives the outbox: token keys, footer, domain.
        settings = outbox.OutboxSettings.from_config(loaded, token_keys(loaded))
        start = time.perf_counter()
        messages = render_raw(settings, args.count, args.domains)
        render_seconds = time.perf_counter() - start
        recipients = [lead_address(index, args.domains) for index in range(args.count)]
        raw, raw_problems = await measure_raw(
            port, args.concurrency, handler, messages, settings.box(None).address, recipients
        )
        del messages

        if args.postgres:
            async with scratch_postgres(args.postgres, 1) as [url]:
                boxed, outbox_problems = await measure_outbox(
                    loaded, url, handler, args.count, args.domains
                )
        else:
            boxed, outbox_problems = await measure_outbox(
                loaded, loaded.database_url, handler, args.count, args.domains
            )
    finally:
        server.close()
        await server.wait_closed()
    return Results([raw, boxed], render_seconds), raw_problems + outbox_problems


# --------------------------------------------------------------------------
# Report


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    phases = results.phases
    raw, boxed = phases
    return {
        "count": args.count,
        "concurrency": args.concurrency,
        "domains": args.domains,
        "backend": "postgresql" if args.postgres else "sqlite",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiosmtplib": aiosmtplib.__version__,
        "cpus": os.cpu_count(),
        "phases": {
            phase.name: {
                "seconds": round(phase.seconds, 4),
                "msgs_per_s": round(phase.rate, 1),
                "received": phase.count,
                "avg_bytes": round(phase.avg_bytes),
                "max_rss_mib_after": round(phase.max_rss_kib / 1024, 1),
                **({"db_commits": phase.commits} if phase.commits is not None else {}),
                **({"sql_statements": phase.statements} if phase.statements is not None else {}),
            }
            for phase in phases
        },
        "ratio_outbox_to_raw": round(boxed.rate / raw.rate, 4),
        "render_us_per_mail": round(results.render_seconds / args.count * 1e6),
    }


def as_table(report: dict[str, Any]) -> str:
    phases = report["phases"]
    rows: list[tuple[str, str, str, str, str, str]] = [
        ("mode", "msgs/s", "seconds", "avg bytes", "vs raw", "max RSS after"),
    ]
    raw_rate = next(iter(phases.values()))["msgs_per_s"]
    for name, figures in phases.items():
        rows.append(
            (
                name,
                f"{figures['msgs_per_s']:,.0f}",
                f"{figures['seconds']:.3f}",
                f"{figures['avg_bytes']:,}",
                f"{figures['msgs_per_s'] / raw_rate:.1%}",
                f"{figures['max_rss_mib_after']:.1f} MiB",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(6)]
    align: list[Callable[[str, int], str]] = [str.ljust] + [str.rjust] * 5
    backend = report["backend"]
    lines = [
        f"leadloop outbound benchmark: {report['count']} touch mails to "
        f"{report['domains']} domains, {report['concurrency']} SMTP connections, {backend}",
        "aiosmtpd runs in this process on the same event loop (and the same "
        f"{report['cpus']} cpus) as the client, in both modes alike",
        f"python {report['python']}, sqlite {report['sqlite']}, aiosmtplib {report['aiosmtplib']}",
        "",
    ]
    for row in rows:
        cells = [align[column](cell, widths[column]) for column, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    boxed = phases["leadloop outbox"]
    lines.append(f"outbox / raw: {report['ratio_outbox_to_raw']:.1%} (target >= 80%)")
    lines.append(
        f"during drain(): {boxed['db_commits']:,} database commits, "
        f"{boxed['sql_statements']:,} SQL statements ({backend})"
    )
    render = report["render_us_per_mail"]
    lines.append(
        f"rendering (outbox.build): {render:,} us/mail, {render * report['count'] / 1e6:.2f} s "
        "for all; untimed in both modes (raw: pre-rendered; outbox: made by queue())"
    )
    lines.append(
        "max RSS is the process's peak so far (it never shrinks): the figure after the "
        "outbox phase is the peak of the whole run"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, metavar="N", help="mails")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="C",
        help="SMTP connections in both modes ([smtp] connections)",
    )
    parser.add_argument("--domains", type=int, default=DEFAULT_DOMAINS, help="recipient domains")
    parser.add_argument(
        "--postgres", metavar="URL", help="run the outbox on PostgreSQL (postgresql+asyncpg://...)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.count < 1 or args.domains < 1:
        parser.error("--count and --domains must be at least 1")
    if not 1 <= args.concurrency <= 50:
        parser.error("--concurrency must be 1 to 50 ([smtp] connections' range)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="leadloop-bench-"))
    try:
        results, problems = asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = as_json(args, results)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(as_table(report))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print("error: the run was broken; its figures mean nothing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
