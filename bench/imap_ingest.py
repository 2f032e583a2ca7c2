"""IMAP ingest throughput and IDLE push latency, against a throwaway Dovecot.

What it measures, all on one Dovecot instance the script starts and stops
(``tests/imap_servers.py``: loopback, no TLS, Maildirs in a temporary
directory):

1. APPEND: N generated messages (bench/ingest.py's generator: ~5 KB,
   multipart/alternative text + HTML, distinct Message-IDs; sent with CRLF
   line ends, as IMAP wants) APPENDed one after another on one connection to
   user A's INBOX; msgs/s.
2. raw baseline: a plain aioimaplib client logs in as A, SELECTs INBOX and
   runs ``UID FETCH lo:hi (UID BODY.PEEK[])`` in batches of 200 UIDs, parsing
   every message with ``mailparser.parse_from_bytes``; msgs/s from SELECT to
   the last parse, timed on the second of two passes (the first warms up
   Dovecot and the parser).
3. leadloop ingest: :func:`leadloop.daemon.ingest.ingest_once` from an
   :class:`~leadloop.channels.imap.ImapInbox` on user A (``security="none"``,
   ``acknowledge="keep"``: nothing on the server changes, so this reads
   exactly the state the baseline read) into a fresh SQLite database
   (:func:`~leadloop.storage.db.open_database`, mailbox row from
   :func:`~leadloop.storage.repo.ensure_mailbox`), fetch batch 200; msgs/s
   and that rate divided by the baseline's (the issue's target: >= 0.5).
4. memory: the tracemalloc peak of step 3, taken on a second, traced run
   into another fresh database (tracing slows Python down, so the timed run
   is untraced), and the process's max RSS (``resource.getrusage``) after
   step 3 and at the end; both include the N messages the script keeps.
5. push latency: the real daemon (:class:`~leadloop.daemon.service.Service`
   from a config.toml written to a temporary directory, its one imap mailbox
   on a fresh user B, ``poll_interval = "1h"`` so only IDLE can wake it,
   default ``acknowledge = "seen"``) runs ``service.run()`` as a task.  Once
   its IDLE connection is idling (the server answered ``+ idling``), K times:
   APPEND one message to B from another connection and poll the database
   every 10 ms until the row is in ``inbound_messages``; the clock starts
   just before the APPEND is sent.  Also noted, to within that polling: when
   the IDLE connection left IDLE (the server's push arrived).  Median, p90 (nearest rank) and
   max; the target is < 1.5 s, Dovecot's own notify delay being ~0.5 s.
   Before each push the script waits for the listener to be idling again.

Each figure comes from one run; it prints figures, never pass or fail.

Run from the repository root (Dovecot must be installed)::

    python bench/imap_ingest.py                 # 2000 messages, 20 pushes
    python bench/imap_ingest.py --messages 500 --pushes 5
    python bench/imap_ingest.py --json          # one JSON object instead of the table
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import os
import platform
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioimaplib
import mailparser
from ingest import ADDRESS, MAX_SIZE, MIB, Timing, build_messages
from sqlalchemy import select

from leadloop import config as config_module
from leadloop.channels.imap import ImapInbox, ImapSettings
from leadloop.clock import SystemClock
from leadloop.daemon.ingest import ingest_once
from leadloop.daemon.service import Service
from leadloop.mail.envelope import read_envelope
from leadloop.storage import repo
from leadloop.storage.db import open_database
from leadloop.storage.models import InboundMessage

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MESSAGES = 2000
DEFAULT_PUSHES = 20
DEFAULT_BATCH = 200  # MailboxConfig.fetch_batch's default
MAX_IMAP_BATCH = 250  # MailboxConfig refuses more for imap (aioimaplib's parser)
MAILBOX = "bench"
PUSH_MAILBOX = "push"
POLL_SECONDS = 0.010  # how often the push step looks at the database
PUSH_TIMEOUT = 30.0  # per push; a push not stored by then is counted as lost
START_TIMEOUT = 60.0  # for the daemon's first poll and IDLE
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")


def _imap_servers() -> Any:
    """tests/imap_servers.py (throwaway Dovecot), imported from the tests folder."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("imap_servers")


@dataclass
class PushResult:
    latencies: list[float]  # APPEND sent -> row in inbound_messages, seconds
    woken: list[float]  # APPEND sent -> the IDLE connection left IDLE, seconds
    lost: int  # pushes not stored within PUSH_TIMEOUT


@dataclass
class Results:
    append: Timing
    raw: Timing
    ingest: Timing
    fetched: int
    stored: int
    ingest_peak_bytes: int
    rss_after_ingest_kib: int
    push: PushResult


# --------------------------------------------------------------------------
# Measurements


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _check(response: Any, what: str) -> Any:
    if response.result != "OK":
        raise RuntimeError(f"IMAP {what} failed: {response.result} {response.lines!r}")
    return response


async def append_all(server: Any, messages: list[bytes]) -> Timing:
    """APPEND every message, one after another, on one logged-in connection."""
    client = await server.connect(command_timeout=60)
    try:
        start = time.perf_counter()
        for raw in messages:
            _check(await client.append(raw, mailbox="INBOX"), "APPEND")
        return Timing(time.perf_counter() - start, len(messages))
    finally:
        await client.logout()


async def raw_baseline(server: Any, batch: int) -> Timing:
    """Fetch and parse the whole INBOX twice; the second pass is the figure."""
    await _fetch_and_parse(server, batch)
    return await _fetch_and_parse(server, batch)


async def _fetch_and_parse(server: Any, batch: int) -> Timing:
    client = aioimaplib.IMAP4(server.host, server.port, timeout=60)
    try:
        await client.wait_hello_from_server()
        _check(await client.login(server.user, server.password), "LOGIN")
        start = time.perf_counter()
        selected = _check(await client.select("INBOX"), "SELECT")
        joined = b" ".join(bytes(line) for line in selected.lines)
        found = _UIDNEXT.search(joined)
        if found is None:
            raise RuntimeError(f"SELECT gave no UIDNEXT: {selected.lines!r}")
        uidnext = int(found.group(1))
        count = 0
        for low in range(1, uidnext, batch):
            high = min(low + batch - 1, uidnext - 1)
            response = _check(
                await client.uid("fetch", f"{low}:{high}", "(UID BODY.PEEK[])"), "UID FETCH"
            )
            # aioimaplib hands each literal (here: a message) over as a bytearray.
            for line in response.lines:
                if isinstance(line, bytearray):
                    mailparser.parse_from_bytes(bytes(line))
                    count += 1
        return Timing(time.perf_counter() - start, count)
    finally:
        await client.logout()


def _inbox(server: Any) -> ImapInbox:
    password: str = server.password

    async def secret() -> str:
        return password

    settings = ImapSettings(
        host=server.host,
        port=server.port,
        security="none",
        username=server.user,
        acknowledge="keep",
        idle=False,
        timeout=60.0,
    )
    return ImapInbox(MAILBOX, settings, secret)


async def leadloop_ingest(
    server: Any, url: str, batch: int, *, traced: bool
) -> tuple[Timing, int, int]:
    """ingest_once over the whole INBOX into a fresh database at *url*: the
    timing (of stored messages), how many were fetched, and with *traced*
    the tracemalloc peak (else 0)."""
    db = await open_database(url)
    inbox = _inbox(server)
    try:
        async with db.transaction() as session:
            box = await repo.ensure_mailbox(session, MAILBOX, "imap", ADDRESS)
            mailbox_id = box.id
        await inbox.open()
        peak = 0
        if traced:
            tracemalloc.start()
            tracemalloc.reset_peak()
        try:
            start = time.perf_counter()
            stats = await ingest_once(
                db, inbox, mailbox_id, SystemClock(), batch=batch, max_size=MAX_SIZE
            )
            elapsed = time.perf_counter() - start
            if traced:
                _, peak = tracemalloc.get_traced_memory()
        finally:
            if traced:
                tracemalloc.stop()
    finally:
        await inbox.close()
        await db.dispose()
    return Timing(elapsed, stats.stored), stats.fetched, peak


def write_daemon_config(directory: Path, server: Any) -> Path:
    """config.toml for one imap mailbox on *server*, state and SQLite beside it."""
    state = directory / "state"
    password_file = directory / "imap-password"
    password_file.write_text(f"{server.password}\n")
    password_file.chmod(0o600)

    def toml(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    text = f"""\
[service]
state_dir = {toml(str(state))}

[database]
url = {toml(f"sqlite:///{state}/leadloop.db")}

[[mailboxes]]
name = "{PUSH_MAILBOX}"
kind = "imap"
address = "{ADDRESS}"
host = {toml(server.host)}
port = {int(server.port)}
security = "none"
username = {toml(server.user)}
password_file = {toml(str(password_file))}
poll_interval = "1h"
"""
    file = directory / "config.toml"
    file.write_text(text)
    return file


def _idling(service: Service) -> bool:
    """True while the listener's IDLE is in progress and the server has
    answered it with its ``+ idling`` continuation."""
    watcher = service.watchers.get(PUSH_MAILBOX)
    if watcher is None or not isinstance(watcher.inbox, ImapInbox):
        return False
    client = watcher.inbox._idle.client
    if client is None:
        return False
    protocol = client.protocol
    return bool(protocol.has_pending_idle_command() and protocol._idle_event.is_set())


async def _wait_until(check: Callable[[], bool], task: asyncio.Task[None], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not check():
        if task.done():
            task.result()  # raises what ended the daemon
            raise RuntimeError(f"the daemon stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(0.005)


async def _row_exists(service: Service, message_id: str) -> bool:
    assert service.db is not None
    async with service.db.transaction() as session:
        found = await session.scalar(
            select(InboundMessage.id).where(InboundMessage.message_id == message_id).limit(1)
        )
    return found is not None


async def push_latency(server: Any, workdir: Path, pushes: int, seed: int) -> PushResult:
    """Run the daemon on *server*; time *pushes* deliveries until they are stored."""
    loaded = config_module.load(write_daemon_config(workdir, server))
    messages = [_crlf(raw) for raw in build_messages(pushes, seed)]
    sender = await server.connect(command_timeout=30)  # "another connection": the MTA
    service = Service(loaded)
    task = asyncio.create_task(service.run())
    result = PushResult([], [], 0)
    try:
        await _wait_until(lambda: _idling(service), task, "the IDLE listener")
        for raw in messages:
            await _wait_until(lambda: _idling(service), task, "the listener to idle again")
            message_id = read_envelope(raw).message_id
            woken: float | None = None
            start = time.perf_counter()
            _check(await sender.append(raw, mailbox="INBOX"), "APPEND")
            while True:
                now = time.perf_counter()
                if woken is None and not _idling(service):
                    woken = now - start
                if await _row_exists(service, message_id):
                    result.latencies.append(time.perf_counter() - start)
                    result.woken.append(woken if woken is not None else now - start)
                    break
                if now - start > PUSH_TIMEOUT or task.done():
                    result.lost += 1
                    break
                await asyncio.sleep(POLL_SECONDS)
            if task.done():
                break
    finally:
        service.stop()
        try:
            await asyncio.wait_for(task, 60)
        finally:
            await sender.logout()
    return result


async def measure(
    dovecot: Any, messages: list[bytes], workdir: Path, args: argparse.Namespace
) -> Results:
    user = dovecot.new_user()
    append = await append_all(user, messages)
    raw = await raw_baseline(user, args.batch)
    ingest, fetched, _ = await leadloop_ingest(
        user, f"sqlite+aiosqlite:///{workdir}/bench.db", args.batch, traced=False
    )
    rss_after_ingest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, _, peak = await leadloop_ingest(
        user, f"sqlite+aiosqlite:///{workdir}/bench-traced.db", args.batch, traced=True
    )
    daemon_dir = workdir / "daemon"
    daemon_dir.mkdir()
    push = await push_latency(dovecot.new_user(), daemon_dir, args.pushes, args.seed + 1)
    return Results(
        append=append,
        raw=raw,
        ingest=ingest,
        fetched=fetched,
        stored=ingest.count,
        ingest_peak_bytes=peak,
        rss_after_ingest_kib=rss_after_ingest,
        push=push,
    )


# --------------------------------------------------------------------------
# Report


def _nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "p90_s": None, "max_s": None}
    return {
        "median_s": round(statistics.median(values), 4),
        "p90_s": round(_nearest_rank(values, 0.9), 4),
        "max_s": round(max(values), 4),
    }


def _dovecot_version(servers: Any) -> str:
    binary = servers.find_dovecot_bin("dovecot")
    if binary is None:
        return "?"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.split(" ", 1)[0].strip() or "?"


def _sanity(args: argparse.Namespace, results: Results) -> list[str]:
    notes: list[str] = []
    if results.raw.count != args.messages:
        notes.append(f"raw baseline parsed {results.raw.count} of {args.messages}")
    if results.stored != args.messages:
        notes.append(f"leadloop ingest stored {results.stored} of {args.messages}")
    if results.push.lost:
        notes.append(
            f"{results.push.lost} of {args.pushes} pushes not stored within {PUSH_TIMEOUT}s"
        )
    return notes


def as_json(
    args: argparse.Namespace,
    sizes: list[int],
    dovecot_version: str,
    results: Results,
    max_rss_kib: int,
) -> dict[str, Any]:
    def timing(value: Timing) -> dict[str, float]:
        return {"seconds": round(value.seconds, 4), "msgs_per_s": round(value.rate, 1)}

    return {
        "messages": args.messages,
        "avg_message_bytes": round(sum(sizes) / len(sizes)),
        "batch": args.batch,
        "pushes": args.pushes,
        "seed": args.seed,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "dovecot": dovecot_version,
        "aioimaplib": _version("aioimaplib"),
        "cpus": os.cpu_count(),
        "append": timing(results.append),
        "raw_baseline": timing(results.raw),
        "ingest": {
            **timing(results.ingest),
            "ratio_to_raw": round(results.ingest.rate / results.raw.rate, 4),
            "fetched": results.fetched,
            "stored": results.stored,
        },
        "ingest_tracemalloc_peak_mib": round(results.ingest_peak_bytes / MIB, 2),
        "push": {
            "stored": len(results.push.latencies),
            "lost": results.push.lost,
            "append_to_row": _summary(results.push.latencies),
            "append_to_idle_wake": _summary(results.push.woken),
        },
        "max_rss_after_ingest_mib": round(results.rss_after_ingest_kib / 1024, 1),
        "max_rss_mib": round(max_rss_kib / 1024, 1),
    }


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _render(rows: list[tuple[str, ...]], align: list[Callable[[str, int], str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [align[column](cell, widths[column]) for column, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def as_table(report: dict[str, Any]) -> str:
    append, raw, ingest = report["append"], report["raw_baseline"], report["ingest"]
    rows: list[tuple[str, ...]] = [
        ("step", "msgs/s", "seconds", "vs raw"),
        ("APPEND, 1 connection", f"{append['msgs_per_s']:,.0f}", f"{append['seconds']:.3f}", ""),
        (
            "raw UID FETCH + mailparser",
            f"{raw['msgs_per_s']:,.0f}",
            f"{raw['seconds']:.3f}",
            "",
        ),
        (
            "leadloop ingest_once (sqlite)",
            f"{ingest['msgs_per_s']:,.0f}",
            f"{ingest['seconds']:.3f}",
            f"{ingest['ratio_to_raw']:.3f}x",
        ),
    ]
    push = report["push"]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    push_rows: list[tuple[str, ...]] = [("push latency (s)", "median", "p90", "max")]
    for label, key in (
        ("APPEND -> row stored", "append_to_row"),
        ("APPEND -> IDLE wakes", "append_to_idle_wake"),
    ):
        figures = push[key]
        push_rows.append(
            (
                label,
                seconds(figures["median_s"]),
                seconds(figures["p90_s"]),
                seconds(figures["max_s"]),
            )
        )
    right = str.rjust
    lines = [
        f"leadloop IMAP ingest benchmark: {report['messages']} messages, "
        f"avg {report['avg_message_bytes']:,} bytes (multipart/alternative, CRLF), "
        f"fetch batch {report['batch']}",
        f"dovecot {report['dovecot']}, aioimaplib {report['aioimaplib']}, "
        f"python {report['python']}, sqlite {report['sqlite']}, {report['cpus']} cpus",
        "",
        *_render(rows, [str.ljust, right, right, right]),
        "",
        *_render(push_rows, [str.ljust, right, right, right]),
        f"({push['stored']} of {report['pushes']} pushes stored, {push['lost']} lost; "
        "daemon idling, poll_interval 1h)",
        "",
        f"ingest tracemalloc peak: {report['ingest_tracemalloc_peak_mib']:.2f} MiB",
        f"max RSS after ingest: {report['max_rss_after_ingest_mib']:.1f} MiB, "
        f"at end: {report['max_rss_mib']:.1f} MiB",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, metavar="N")
    parser.add_argument("--pushes", type=int, default=DEFAULT_PUSHES, metavar="K")
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="UID FETCH batch, baseline and ingest"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the message text")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.pushes < 1:
        parser.error("--messages and --pushes must be at least 1")
    if not 1 <= args.batch <= MAX_IMAP_BATCH:
        parser.error(f"--batch must be between 1 and {MAX_IMAP_BATCH}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = _imap_servers()
    if not servers.dovecot_installed():
        print(servers.DOVECOT_MISSING, file=sys.stderr)
        return 2
    messages = [_crlf(raw) for raw in build_messages(args.messages, args.seed)]
    sizes = [len(raw) for raw in messages]
    workdir = Path(tempfile.mkdtemp(prefix="leadloop-bench-imap-"))
    try:
        with servers.dovecot_server() as dovecot:
            results = asyncio.run(measure(dovecot, messages, workdir, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = as_json(args, sizes, _dovecot_version(servers), results, max_rss_kib)
    for note in _sanity(args, results):
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(as_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
