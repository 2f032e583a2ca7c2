"""Ingest throughput: Maildir -> database -> pipeline, against a raw parse baseline.

What it measures, all on the same N generated messages (~5 KB each,
multipart/alternative text + HTML, distinct Message-IDs), written into a
fresh Maildir's ``new/`` in a temporary directory:

1. raw baseline: read every file in ``new/`` and parse its headers with
   ``BytesParser(policy=compat32).parsebytes(raw, headersonly=True)``; the
   floor any Maildir ingest pays (timed on a second pass; the first warms up).
2. leadloop ingest: :func:`leadloop.daemon.ingest.ingest_once` from a
   :class:`~leadloop.channels.maildir.MaildirInbox` (``acknowledge="seen"``,
   so every file is renamed to ``cur/``) into a freshly migrated database;
   msgs/s and that rate divided by the raw baseline's.
3. pipeline: :meth:`leadloop.agent.pipeline.Pipeline.run_pending` over the
   stored messages with the default stages (five pass-throughs, one commit
   per stage per message, besides the claim's own); msgs/s.
4. memory: the tracemalloc peak of an ingest step, taken on a second, traced
   run over a fresh copy of the same messages and a fresh database (tracing
   slows Python down, so the timed run is untraced), and the process's max
   RSS at the end (``resource.getrusage``), which includes the N messages
   the benchmark keeps in memory to write its Maildirs.

Steps 2 to 4 run on SQLite (``sqlite+aiosqlite``, a file in the temporary
directory) and, with ``--postgres URL``, on PostgreSQL too.  The URL's
database is only used to connect: each run creates a scratch database beside
it and drops it afterwards, so the role needs CREATEDB.

Each figure comes from one run; it prints figures, never pass or fail.

Run from the repository root::

    python bench/ingest.py                     # 2000 messages, SQLite
    python bench/ingest.py --messages 500
    python bench/ingest.py --json              # one JSON object instead of the table
    python bench/ingest.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mailbox
import os
import platform
import random
import resource
import secrets
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import time
import tracemalloc
import unicodedata
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import compat32
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from leadloop.agent.pipeline import Pipeline
from leadloop.channels.maildir import MaildirInbox
from leadloop.clock import SystemClock
from leadloop.daemon.ingest import ingest_once
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database

DEFAULT_MESSAGES = 2000
DEFAULT_BATCH = 200  # MailboxConfig.fetch_batch's default
MAX_SIZE = 25 * 1000**2  # PipelineConfig.max_message_size's default
MAILBOX = "bench"
ADDRESS = "sales@leadloop.example"
MIB = 1024 * 1024

FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kateřina", "Liam", "Maya", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara",
)  # fmt: skip
LAST_NAMES = (
    "Andersen", "Brown", "Costa", "Dubois", "Eriksen", "Fischer", "García", "Horvat",
    "Ito", "Jansen", "Kowalski", "López", "Müller", "Novak", "O'Brien", "Petrov",
)  # fmt: skip
COMPANIES = (
    "Acme", "Brightwave", "Cobalt", "Driftwood", "Evergreen", "Foxglove", "Granite",
    "Harbor", "Ironbark", "Juniper", "Keystone", "Lumen", "Meridian", "Northwind",
)  # fmt: skip
SUBJECTS = (
    "Re: Pricing for {company}",
    "Question about your enterprise plan",
    "Re: Follow-up on our call",
    "Demo next week?",
    "Re: Proposal for {company} — next steps",
    "Out of office until Monday",
    "Budget approval for Q3",
)
SAMPLE_TEXT = (
    "the team reviewed your proposal and we would like to understand pricing for "
    "additional seats before the end of the quarter our procurement process needs a "
    "security questionnaire and a signed data processing agreement could you also share "
    "references from customers of similar size we are evaluating two other vendors and "
    "plan to decide within three weeks the integration with our CRM is the most important "
    "requirement followed by reporting single sign-on and support response times please "
    "send over the updated quote and let me know which afternoon works for a call"
)
WORDS = tuple(SAMPLE_TEXT.split())


@dataclass
class Timing:
    seconds: float
    count: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class BackendResult:
    backend: str
    ingest: Timing
    fetched: int
    stored: int
    pipeline: Timing
    done: int
    quarantined: int
    retried: int
    ingest_peak_bytes: int


# --------------------------------------------------------------------------
# Messages and Maildirs


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(12, 24))]
    return " ".join(words).capitalize() + "."


def _paragraphs(rng: random.Random, target: int) -> list[str]:
    paragraphs: list[str] = []
    size = 0
    while size < target:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 4)))
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
    return paragraphs


def _folded(value: str, width: int = 64) -> str:
    """Split a long base64 value with spaces, where a header may fold (DKIM allows FWS)."""
    return " ".join(value[start : start + width] for start in range(0, len(value), width))


def build_message(index: int, rng: random.Random, start: datetime) -> bytes:
    """One ~5 KB multipart/alternative message with a unique Message-ID."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    company = rng.choice(COMPANIES)
    domain = f"{company.lower()}.example"
    ascii_name = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore")
    local = ascii_name.decode().lower().replace("'", "")
    sender = f"{local}@{domain}"
    sent = start + timedelta(seconds=37 * index)
    token = rng.randbytes(6).hex()

    message = EmailMessage()
    message["Return-Path"] = f"<{sender}>"
    message["Received"] = (
        f"from mail.{domain} (mail.{domain} [192.0.2.{index % 250 + 1}]) "
        f"by mx.leadloop.example (Postfix) with ESMTPS id {token.upper()} "
        f"for <{ADDRESS}>; {format_datetime(sent + timedelta(seconds=2))}"
    )
    message["Received"] = (
        f"from [10.1.{index % 200}.{index % 7 + 10}] by mail.{domain} with ESMTPSA id "
        f"{rng.randbytes(8).hex()}; {format_datetime(sent + timedelta(seconds=1))}"
    )
    message["DKIM-Signature"] = (
        f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=mail; "
        f"h=from:to:subject:date:message-id; bh={b64encode(rng.randbytes(32)).decode()}; "
        f"b={_folded(b64encode(rng.randbytes(128)).decode())}"
    )
    message["From"] = f"{first} {last} <{sender}>"
    message["To"] = f"Leadloop Sales <{ADDRESS}>"
    message["Subject"] = rng.choice(SUBJECTS).format(company=company)
    message["Date"] = format_datetime(sent)
    message["Message-ID"] = f"<{index:07d}.{token}@{domain}>"
    if index % 3 == 0:
        parent = f"<{rng.randbytes(8).hex()}@leadloop.example>"
        message["In-Reply-To"] = parent
        message["References"] = f"<{rng.randbytes(8).hex()}@leadloop.example> {parent}"
    message["List-Unsubscribe"] = f"<mailto:unsubscribe@{domain}?subject=unsubscribe>"

    paragraphs = _paragraphs(rng, 1300)
    signature = f"{first} {last}\nHead of Operations, {company}\n+1 555 {index % 10000:04d}"
    text_paragraphs = "\n\n".join(textwrap.fill(paragraph, 76) for paragraph in paragraphs)
    body = f"Hi,\n\n{text_paragraphs}\n\nBest regards,\n{signature}\n"
    message.set_content(body)
    html_paragraphs = "\n".join(
        f'<p style="margin:0 0 12px 0;font-family:Arial,sans-serif;font-size:14px">{p}</p>'
        for p in paragraphs
    )
    html = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        '<body style="margin:0;padding:0">\n<div dir="ltr">\n<p>Hi,</p>\n'
        f"{html_paragraphs}\n<p>Best regards,<br>\n"
        f"<b>{first} {last}</b><br>\nHead of Operations, {company}</p>\n"
        "</div>\n</body></html>\n"
    )
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def build_messages(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    return [build_message(index, rng, start) for index in range(count)]


def write_maildir(path: Path, messages: list[bytes]) -> Path:
    """A fresh Maildir holding *messages* in ``new/`` (tmp/ then rename, as a MDA does)."""
    box = mailbox.Maildir(path, factory=None, create=True)
    for raw in messages:
        box.add(raw)
    return path


# --------------------------------------------------------------------------
# Measurements


def raw_baseline(new_dir: Path) -> Timing:
    """Read every file in new/ and parse its headers, nothing else; the second
    of two passes, so the parser's first-use costs are not counted."""
    _read_and_parse(new_dir)
    return _read_and_parse(new_dir)


def _read_and_parse(new_dir: Path) -> Timing:
    count = 0
    start = time.perf_counter()
    with os.scandir(new_dir) as listing:
        for entry in listing:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            with open(entry.path, "rb") as handle:
                raw = handle.read()
            BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
            count += 1
    return Timing(time.perf_counter() - start, count)


async def _prepare(url: str, maildir: Path) -> tuple[Database, MaildirInbox, int]:
    db = await open_database(url)
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, MAILBOX, "maildir", ADDRESS)
        mailbox_id = box.id
    inbox = MaildirInbox(MAILBOX, maildir, acknowledge="seen")
    await inbox.open()
    return db, inbox, mailbox_id


async def measure_backend(
    backend: str, urls: tuple[str, str], maildirs: tuple[Path, Path], batch: int
) -> BackendResult:
    """Timed ingest then pipeline on the first database, traced ingest on the second."""
    timed_url, traced_url = urls
    timed_dir, traced_dir = maildirs
    clock = SystemClock()

    db, inbox, mailbox_id = await _prepare(timed_url, timed_dir)
    try:
        start = time.perf_counter()
        stats = await ingest_once(db, inbox, mailbox_id, clock, batch=batch, max_size=MAX_SIZE)
        ingest = Timing(time.perf_counter() - start, stats.stored)

        pipeline = Pipeline(db, clock, owner="bench")
        start = time.perf_counter()
        run = await pipeline.run_pending()
        processed = Timing(time.perf_counter() - start, run.processed)
    finally:
        await inbox.close()
        await db.dispose()

    db, inbox, mailbox_id = await _prepare(traced_url, traced_dir)
    try:
        tracemalloc.start()
        tracemalloc.reset_peak()
        try:
            await ingest_once(db, inbox, mailbox_id, clock, batch=batch, max_size=MAX_SIZE)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await inbox.close()
        await db.dispose()

    return BackendResult(
        backend=backend,
        ingest=ingest,
        fetched=stats.fetched,
        stored=stats.stored,
        pipeline=processed,
        done=run.done,
        quarantined=run.quarantined,
        retried=run.retried,
        ingest_peak_bytes=peak,
    )


@asynccontextmanager
async def scratch_postgres(url: str, count: int) -> AsyncIterator[list[str]]:
    """Create *count* empty databases on the server of *url*; drop them afterwards."""
    base = make_url(url)
    names = [f"leadloop_bench_{os.getpid()}_{secrets.token_hex(4)}" for _ in range(count)]
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    created: list[str] = []
    try:
        async with admin.connect() as conn:
            for name in names:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        yield [base.set(database=name).render_as_string(hide_password=False) for name in names]
    finally:
        if created:
            async with admin.connect() as conn:
                for name in created:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def measure_postgres(url: str, maildirs: tuple[Path, Path], batch: int) -> BackendResult:
    async with scratch_postgres(url, 2) as urls:
        return await measure_backend("postgresql", (urls[0], urls[1]), maildirs, batch)


# --------------------------------------------------------------------------
# Report


def _sanity(count: int, result: BackendResult) -> list[str]:
    notes: list[str] = []
    if result.stored != count:
        notes.append(f"{result.backend}: ingest stored {result.stored} of {count}")
    if result.done != count:
        notes.append(
            f"{result.backend}: pipeline finished {result.done} of {count} "
            f"(quarantined {result.quarantined}, retried {result.retried})"
        )
    return notes


def as_json(
    args: argparse.Namespace,
    sizes: list[int],
    baseline: Timing,
    results: list[BackendResult],
    max_rss_kib: int,
) -> dict[str, Any]:
    return {
        "messages": args.messages,
        "avg_message_bytes": round(sum(sizes) / len(sizes)),
        "batch": args.batch,
        "seed": args.seed,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "raw_baseline": {
            "seconds": round(baseline.seconds, 4),
            "msgs_per_s": round(baseline.rate, 1),
        },
        "backends": {
            result.backend: {
                "ingest": {
                    "seconds": round(result.ingest.seconds, 4),
                    "msgs_per_s": round(result.ingest.rate, 1),
                    "ratio_to_raw": round(result.ingest.rate / baseline.rate, 4),
                    "fetched": result.fetched,
                    "stored": result.stored,
                },
                "pipeline": {
                    "seconds": round(result.pipeline.seconds, 4),
                    "msgs_per_s": round(result.pipeline.rate, 1),
                    "processed": result.pipeline.count,
                    "done": result.done,
                    "quarantined": result.quarantined,
                    "retried": result.retried,
                },
                "ingest_tracemalloc_peak_mib": round(result.ingest_peak_bytes / MIB, 2),
            }
            for result in results
        },
        "max_rss_mib": round(max_rss_kib / 1024, 1),
    }


def as_table(report: dict[str, Any]) -> str:
    raw = report["raw_baseline"]
    rows: list[tuple[str, str, str, str, str]] = [
        ("step", "backend", "msgs/s", "seconds", "vs raw"),
        ("raw read + header parse", "-", f"{raw['msgs_per_s']:,.0f}", f"{raw['seconds']:.3f}", ""),
    ]
    for backend, figures in report["backends"].items():
        ingest, pipeline = figures["ingest"], figures["pipeline"]
        rows.append(
            (
                "leadloop ingest",
                backend,
                f"{ingest['msgs_per_s']:,.0f}",
                f"{ingest['seconds']:.3f}",
                f"{ingest['ratio_to_raw']:.3f}x",
            )
        )
        rows.append(
            (
                "pipeline (5 stages)",
                backend,
                f"{pipeline['msgs_per_s']:,.0f}",
                f"{pipeline['seconds']:.3f}",
                "",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    align: list[Callable[[str, int], str]] = [str.ljust, str.ljust, str.rjust, str.rjust, str.rjust]
    lines = [
        f"leadloop ingest benchmark: {report['messages']} messages, "
        f"avg {report['avg_message_bytes']:,} bytes (multipart/alternative), "
        f"fetch batch {report['batch']}",
        f"python {report['python']}, sqlite {report['sqlite']}, {report['cpus']} cpus",
        "",
    ]
    for row in rows:
        cells = [align[column](cell, widths[column]) for column, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    for backend, figures in report["backends"].items():
        peak = figures["ingest_tracemalloc_peak_mib"]
        lines.append(f"ingest tracemalloc peak ({backend}): {peak:.2f} MiB")
    lines.append(f"max RSS at end: {report['max_rss_mib']:.1f} MiB")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, metavar="N")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="ingest fetch batch")
    parser.add_argument("--seed", type=int, default=1, help="seed for the message text")
    parser.add_argument(
        "--postgres", metavar="URL", help="also run against PostgreSQL (postgresql+asyncpg://...)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.batch < 1:
        parser.error("--messages and --batch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    messages = build_messages(args.messages, args.seed)
    sizes = [len(raw) for raw in messages]
    workdir = Path(tempfile.mkdtemp(prefix="leadloop-bench-"))
    try:
        runs = ["sqlite", "sqlite-traced"]
        if args.postgres:
            runs += ["postgresql", "postgresql-traced"]
        maildirs = {run: write_maildir(workdir / f"maildir-{run}", messages) for run in runs}

        baseline = raw_baseline(maildirs["sqlite"] / "new")
        results = [
            asyncio.run(
                measure_backend(
                    "sqlite",
                    (
                        f"sqlite+aiosqlite:///{workdir}/bench.db",
                        f"sqlite+aiosqlite:///{workdir}/bench-traced.db",
                    ),
                    (maildirs["sqlite"], maildirs["sqlite-traced"]),
                    args.batch,
                )
            )
        ]
        if args.postgres:
            results.append(
                asyncio.run(
                    measure_postgres(
                        args.postgres,
                        (maildirs["postgresql"], maildirs["postgresql-traced"]),
                        args.batch,
                    )
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = as_json(args, sizes, baseline, results, max_rss_kib)
    for result in results:
        for note in _sanity(args.messages, result):
            print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(as_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
