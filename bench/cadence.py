"""Cadence planning: one planner tick over many enrolled leads, few of them due.

What it measures (default: 100,000 leads, 1,000 of them due):

1. setup, untimed, in a child process (so its memory does not count in the
   tick's peak RSS): a config.toml in a temporary directory (a Maildir
   mailbox; ``[smtp]`` on a loopback port nothing listens on, as the bench
   never sends; a ``[sending]`` window of every day and hour without
   holidays or a minimum gap, ``plan_batch`` above the due count; one
   ``[[cadences]]`` of three steps for ``new`` and ``engaging`` leads), a
   freshly migrated database (:func:`~leadloop.storage.db.open_database`),
   then N ``engaging`` leads (each with a first name and a company, so the
   templates render) and N ``cadence_enrollments`` rows, set-based
   (SQLAlchemy Core executemany in chunks): N - M ``active`` with the first
   step 1 to 30 days ahead, and M ``active`` for the second step (the first
   one went out), due a minute ago, spread evenly over the leads.
2. the tick: a fresh planner (:func:`leadloop.daemon.service.build_planner`)
   and one timed ``await planner.tick(now)``: enroll (nobody left), advance
   the waiting (nobody yet), queue the M due touches in the outbox.  Then
   the outbox rows written are counted: they must be exactly M.  The outbox
   caps (``[outbox]`` per mailbox, domain, lead) apply when the sender
   claims a row, not when the planner queues it, so every due touch is
   queued whatever the caps.
3. the idle tick: a second timed tick right after, with nothing due (the M
   enrollments now wait for their touches to go out); it must queue nothing.
4. memory: the process's max RSS (``resource.getrusage``) after the ticks;
   the process only opened the database and ran the ticks (the setup ran in
   its own process), so it is the tick's peak plus the interpreter and
   imports.

``--profile`` runs the first tick under cProfile instead (its time is then
inflated) and prints the top functions by cumulative and by own time.

Runs on SQLite (``sqlite+aiosqlite``, a file in the temporary directory) or,
with ``--postgres URL``, on a scratch PostgreSQL database created beside the
URL's and dropped afterwards (the role needs CREATEDB).  Exits 1 if the tick
did not queue exactly the due touches: its time would mean nothing.

Run from the repository root::

    python bench/cadence.py                       # 100,000 leads, 1,000 due, SQLite
    python bench/cadence.py --leads 20000 --due 500
    python bench/cadence.py --json                # one JSON object instead of the table
    python bench/cadence.py --profile             # where the tick's time goes
    python bench/cadence.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import resource
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingest import scratch_postgres
from outbound import SENDER_CONFIG
from sqlalchemy import func, insert, select

from leadloop.agent import outbox
from leadloop.agent.stages import token_keys
from leadloop.config import LoadedConfig, load, loads
from leadloop.daemon.service import build_planner
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import CadenceEnrollment, Lead, OutboundMessage, table_of

DEFAULT_LEADS = 100_000
DEFAULT_DUE = 1_000
CHUNK = 5_000  # rows per executemany
TICK_TARGET = 0.5  # seconds
RSS_TARGET = 300  # MiB
MIB = 1024 * 1024
CADENCE = "bench"
STEPS = ("intro", "follow-up", "last-note")
FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kateřina", "Liam", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara",
)  # fmt: skip
COMPANIES = (
    "Acme", "Brightwave", "Cobalt", "Driftwood", "Evergreen", "Foxglove", "Granite",
    "Harbor", "Ironbark", "Juniper", "Keystone", "Lumen", "Meridian", "Northwind",
)  # fmt: skip
COUNTRIES = ("US", "DE", "GB", "FR", "JP", None)

CONFIG = (
    SENDER_CONFIG
    + """
[smtp]
host = "127.0.0.1"
port = 9

[validation]
dns = false

[sending]
days = "mon-sun"
hours = "00:00-23:59"
skip_holidays = false
min_gap_business_days = 0
plan_batch = {batch}

[[cadences]]
name = "{cadence}"
product = "FleetTrack"
lost_after = "5 business days"

[cadences.segment]
states = ["new", "engaging"]

[[cadences.steps]]
id = "{step0}"
subject = "{{company}} and {{product}}"
body = "Hi {{first_name}}, is fleet tracking at {{company}} still done by hand?"

[[cadences.steps]]
id = "{step1}"
delay = "3 business days"
subject = "Re: {{product}} at {{company}}"
body = "Hi {{first_name}}, following up on my note about {{product}}."

[[cadences.steps]]
id = "{step2}"
delay = "4 business days"
subject = "Re: {{product}}"
body = "Hi {{first_name}}, one last note, then I will leave {{company}} in peace."
"""
)


@dataclass
class SetupResult:
    seconds: float
    leads: int
    enrollments: int
    due: int
    max_rss_kib: int


@dataclass
class TickFigures:
    seconds: float
    idle_seconds: float
    queued: int
    idle_queued: int
    rows: int  # outbound_messages after the first tick
    rows_after_idle: int
    waiting: int  # enrollments waiting after the ticks
    max_rss_kib: int
    profile: str | None


# --------------------------------------------------------------------------
# Setup (in a child process)


def write_config(directory: Path, batch: int) -> LoadedConfig:
    text = textwrap.dedent(CONFIG).format(
        batch=batch, cadence=CADENCE, step0=STEPS[0], step1=STEPS[1], step2=STEPS[2]
    )
    file = directory / "config.toml"
    file.write_text(text)
    return loads(text, file)


def due_indexes(leads: int, due: int) -> set[int]:
    """*due* lead indexes spread evenly over 0..leads-1."""
    return {index * leads // due for index in range(due)}


def lead_rows(start: int, stop: int, now: datetime) -> list[dict[str, Any]]:
    created = now - timedelta(days=60)
    return [
        {
            "email": f"lead{index:06d}@buyer{index % 500:03d}.example",
            "first_name": FIRST_NAMES[index % len(FIRST_NAMES)],
            "last_name": None,
            "company": COMPANIES[index % len(COMPANIES)],
            "country": COUNTRIES[index % len(COUNTRIES)],
            "consent": "unknown",
            "hand_raiser": False,
            "custom": {},
            "state": "engaging",
            "state_changed_at": created,
            "created_at": created,
            "updated_at": created,
        }
        for index in range(start, stop)
    ]


def enrollment_rows(
    lead_ids: list[int], start: int, due: set[int], now: datetime
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for offset, lead_id in enumerate(lead_ids):
        index = start + offset
        if index in due:
            step, last, at = STEPS[1], STEPS[0], now - timedelta(minutes=1)
        else:
            step, last = STEPS[0], None
            at = now + timedelta(days=1 + index % 30, minutes=index % 1440)
        rows.append(
            {
                "lead_id": lead_id,
                "cadence": CADENCE,
                "status": "active",
                "next_step_id": step,
                "last_step_id": last,
                "next_at": at,
                "created_at": now - timedelta(days=30),
                "updated_at": now - timedelta(days=30),
            }
        )
    return rows


def chunks(total: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, CHUNK):
        yield start, min(start + CHUNK, total)


async def _setup(config: str, url: str, leads: int, due: int, now: datetime) -> SetupResult:
    loaded = load(Path(config))
    started = time.perf_counter()
    db = await open_database(url)
    try:
        async with db.transaction() as session:
            for box in loaded.settings.mailboxes:
                await repo.ensure_mailbox(session, box.name, box.kind, box.address)
        wanted = due_indexes(leads, due)
        leads_table, enrollments = table_of(Lead), table_of(CadenceEnrollment)
        for start, stop in chunks(leads):
            async with db.transaction() as session:
                await session.execute(insert(leads_table), lead_rows(start, stop, now))
        async with db.sessions() as session:
            ids = list((await session.scalars(select(Lead.id).order_by(Lead.id))).all())
        for start, stop in chunks(len(ids)):
            async with db.transaction() as session:
                await session.execute(
                    insert(enrollments), enrollment_rows(ids[start:stop], start, wanted, now)
                )
        async with db.sessions() as session:
            enrolled = await session.scalar(select(func.count()).select_from(enrollments)) or 0
            due_now = (
                await session.scalar(
                    select(func.count())
                    .select_from(enrollments)
                    .where(CadenceEnrollment.next_at <= now)
                )
                or 0
            )
        if db.engine.dialect.name == "postgresql":
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await db.dispose()
    return SetupResult(
        seconds=time.perf_counter() - started,
        leads=len(ids),
        enrollments=enrolled,
        due=due_now,
        max_rss_kib=max_rss_kib(),
    )


def setup_process(config: str, url: str, leads: int, due: int, now: datetime) -> SetupResult:
    return asyncio.run(_setup(config, url, leads, due, now))


def run_setup(config: Path, url: str, leads: int, due: int, now: datetime) -> SetupResult:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(setup_process, str(config), url, leads, due, now).result()


# --------------------------------------------------------------------------
# Measurement


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def count_rows(db: Database) -> tuple[int, int]:
    async with db.sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(table_of(OutboundMessage)))
        waiting = await session.scalar(
            select(func.count())
            .select_from(table_of(CadenceEnrollment))
            .where(CadenceEnrollment.status == "waiting")
        )
    return rows or 0, waiting or 0


def profile_text(profiler: cProfile.Profile, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        out.write(f"\n--- top {limit} by {key} ---\n")
        stats.sort_stats(key).print_stats(limit)
    return out.getvalue()


async def measure(config: Path, url: str, now: datetime, profile: bool) -> TickFigures:
    loaded = load(config)
    db = await open_database(url)
    try:
        send = outbox.OutboxSettings.from_config(loaded, token_keys(loaded))
        planner = build_planner(loaded, db, send)
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        first = await planner.tick(now)
        seconds = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
        rows, _ = await count_rows(db)

        start = time.perf_counter()
        idle = await planner.tick(now)
        idle_seconds = time.perf_counter() - start
        rows_after_idle, waiting = await count_rows(db)
    finally:
        await db.dispose()
    return TickFigures(
        seconds=seconds,
        idle_seconds=idle_seconds,
        queued=first.queued,
        idle_queued=idle.queued,
        rows=rows,
        rows_after_idle=rows_after_idle,
        waiting=waiting,
        max_rss_kib=max_rss_kib(),
        profile=profile_text(profiler, 30) if profiler is not None else None,
    )


async def measure_postgres(
    url: str, config: Path, args: argparse.Namespace, now: datetime
) -> tuple[SetupResult, TickFigures]:
    async with scratch_postgres(url, 1) as [scratch]:
        loop = asyncio.get_running_loop()
        setup = await loop.run_in_executor(
            None, run_setup, config, scratch, args.leads, args.due, now
        )
        return setup, await measure(config, scratch, now, args.profile)


def problems_of(due: int, setup: SetupResult, tick: TickFigures) -> list[str]:
    problems: list[str] = []
    if setup.due != due:
        problems.append(f"setup: {setup.due} enrollments due; expected {due}")
    if tick.rows != due or tick.queued != due:
        problems.append(
            f"tick: {tick.rows} outbox rows written ({tick.queued} queued); expected {due}"
        )
    if tick.idle_queued != 0 or tick.rows_after_idle != tick.rows:
        problems.append(
            f"idle tick: queued {tick.idle_queued}, outbox rows {tick.rows} -> "
            f"{tick.rows_after_idle}; expected no change"
        )
    if tick.waiting != due:
        problems.append(f"{tick.waiting} enrollments waiting after the ticks; expected {due}")
    return problems


# --------------------------------------------------------------------------
# Report


def as_json(
    args: argparse.Namespace, backend: str, setup: SetupResult, tick: TickFigures
) -> dict[str, Any]:
    return {
        "backend": backend,
        "leads": setup.leads,
        "enrollments": setup.enrollments,
        "due": setup.due,
        "plan_batch": args.batch,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "setup_seconds": round(setup.seconds, 2),
        "profiled": args.profile,
        "tick_seconds": round(tick.seconds, 4),
        "tick_target_seconds": TICK_TARGET,
        "ms_per_due_touch": round(tick.seconds / max(setup.due, 1) * 1000, 3),
        "idle_tick_seconds": round(tick.idle_seconds, 4),
        "outbox_rows_written": tick.rows,
        "queued": tick.queued,
        "idle_queued": tick.idle_queued,
        "enrollments_waiting": tick.waiting,
        "max_rss_mib": round(tick.max_rss_kib / 1024, 1),
        "max_rss_target_mib": RSS_TARGET,
        "setup_process_max_rss_mib": round(setup.max_rss_kib / 1024, 1),
    }


def as_table(report: dict[str, Any]) -> str:
    def verdict(value: float, target: float) -> str:
        return "under target" if value < target else "OVER target"

    tick, rss = report["tick_seconds"], report["max_rss_mib"]
    tick_note = f"< {TICK_TARGET} s: {verdict(tick, TICK_TARGET)}"
    rss_note = f"< {RSS_TARGET} MiB: {verdict(rss, RSS_TARGET)}"
    rows: list[tuple[str, str, str]] = [
        ("figure", "value", "target"),
        ("tick (M due)", f"{tick:.3f} s", tick_note),
        ("  per due touch", f"{report['ms_per_due_touch']:.2f} ms", ""),
        ("idle tick (none due)", f"{report['idle_tick_seconds']:.3f} s", ""),
        ("outbox rows written", f"{report['outbox_rows_written']:,}", f"= {report['due']:,} due"),
        ("max RSS after ticks", f"{rss:.1f} MiB", rss_note),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    align: list[Callable[[str, int], str]] = [str.ljust, str.rjust, str.ljust]
    lines = [
        f"leadloop cadence benchmark: {report['backend']}, {report['leads']:,} leads "
        f"({report['enrollments']:,} enrolled), {report['due']:,} due, "
        f"plan_batch {report['plan_batch']:,}",
        f"python {report['python']}, sqlite {report['sqlite']}, {report['cpus']} cpus; "
        f"setup {report['setup_seconds']:.1f} s (untimed, own process, "
        f"max RSS {report['setup_process_max_rss_mib']:.1f} MiB)",
        "",
    ]
    if report["profiled"]:
        lines.insert(1, "the tick ran under cProfile: its time is inflated")
    for row in rows:
        cells = [align[column](cell, widths[column]) for column, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "the outbox caps apply when the sender claims a row, not when the planner queues it:",
        "every due touch is queued (the bench never sends)",
        "max RSS: this process opened the database and ran both ticks; the setup ran apart",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--leads", type=int, default=DEFAULT_LEADS, metavar="N")
    parser.add_argument("--due", type=int, default=DEFAULT_DUE, metavar="M")
    parser.add_argument(
        "--batch", type=int, help="[sending] plan_batch (default: the larger of 5000 and M)"
    )
    parser.add_argument(
        "--postgres", metavar="URL", help="run on PostgreSQL instead (postgresql+asyncpg://...)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the first tick")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.leads < 1 or not 1 <= args.due <= args.leads:
        parser.error("--leads must be at least 1 and --due from 1 to --leads")
    if args.batch is None:
        args.batch = max(5000, args.due)
    if not args.due <= args.batch <= 100_000:
        parser.error("--batch must be from --due to 100000 (plan_batch's range)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="leadloop-bench-"))
    try:
        loaded = write_config(workdir, args.batch)
        config = workdir / "config.toml"
        now = datetime.now(UTC).replace(microsecond=0)
        if args.postgres:
            backend = "postgresql"
            setup, tick = asyncio.run(measure_postgres(args.postgres, config, args, now))
        else:
            backend = "sqlite"
            url = loaded.database_url
            setup = run_setup(config, url, args.leads, args.due, now)
            tick = asyncio.run(measure(config, url, now, args.profile))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = as_json(args, backend, setup, tick)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(as_table(report))
    if tick.profile:
        print(tick.profile, file=sys.stderr)
    problems = problems_of(args.due, setup, tick)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print("error: the run was broken; its figures mean nothing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
