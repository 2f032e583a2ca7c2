"""Cluster throughput: 1, 2 and 3 ``leadloop run`` daemons on one PostgreSQL
database, one Dovecot mailbox and one aiosmtpd relay, on this machine.

What it measures, for each N in ``--daemons`` (default 1, 2, 3), each on
fresh servers' state (a new database on one throwaway PostgreSQL cluster,
:func:`tests.postgres.postgres_cluster`; a new user on one throwaway Dovecot,
:func:`tests.imap_servers.dovecot_server`; a new aiosmtpd in this process,
:func:`leadloop.demo.smtp.smtp_server` with a handler that notes each mail's
Message-ID and the time it was accepted):

1. setup, untimed, as tests/test_cluster.py does it (tests/cluster_env.py):
   the config (:func:`cluster_config`: 1 s scheduler tick, 6 s leases, a
   0.5 s IMAP poll of 200 messages, 2 SMTP connections a daemon, every
   outbox cap off), one lead per reply sender and ``--touches`` lead mails
   (default 3000) queued due now through the outbox (:func:`seed`), then
   ``--replies`` inbound replies (default 1000) APPENDed into the mailbox's
   INBOX (:func:`deliver_replies`).  The daemons each answer a reply (the
   buyer asks about price), so the outbox gains one row per reply.
   ``--smtp-delay MS`` makes aiosmtpd wait that long before it answers each
   DATA (a slower relay; default 0).
2. the run: N daemons started at once (:class:`Cluster`, real processes of
   ``python -m leadloop run``, each with a state directory of its own); the
   clock starts just before the first one.  One daemon polls the mailbox
   (an advisory lock); every daemon claims stored messages and outbox rows.
   The script polls the database every 0.25 s until every inbound message
   is ``done`` and no outbox row is ``queued`` or ``sending``.
3. figures, from the recorded times rather than the poll:

   * inbound msgs/s: replies / (the last ``inbound_messages.finished_at``
     - the start);
   * outbound mails/s: mails aiosmtpd accepted (touches and answers) /
     (the time it accepted the last one - the start).  The answers can only
     go out as the replies are processed, so this rate is bounded by the
     inbound one;
   * start-up, printed beside them: the time to the first message stored
     and to the first mail accepted (both rates include it);
   * ratio: each rate divided by the 1-daemon run's (with ``--daemons``
     lacking 1, by the first run's);
   * claim latency: per inbound message, the ``at`` of its first
     ``stage.screen`` event (written by the daemon that claimed it, as the
     screen stage commits) minus its ``received_at`` (when the poller stored
     it); p50 and p95 in ms.  Every reply is in the mailbox before the
     daemons start, so this is latency under a backlog: mostly the time a
     message waits behind the ones stored before it;
   * peak RSS: each daemon's ``VmHWM`` from /proc/<pid>/status, read just
     before it is stopped; the largest daemon's and the sum.

   The daemons are then stopped with SIGTERM; each must exit 0.
4. exactly-once, checked after each run: the mailbox's messages stored once
   each (inbound count == replies, distinct Message-IDs), every message
   ``done`` with exactly one ``stage.screen`` event; aiosmtpd received no
   Message-ID twice, every outbox row is ``sent`` and the Message-IDs
   received are exactly the rows' (so every touch went out).  A broken run
   still prints its figures but the script exits 1, since a rate measured on
   it means nothing.  Each daemon's log (a.log, b.log, ... beside the
   config) is scanned for ERROR/CRITICAL lines and tracebacks (counted, and
   the first few printed) and WARNING lines (counted); the events that say a
   claim was cut short or taken over (``inbound.failed``,
   ``inbound.quarantined``, ``outbound.requeued``, ``outbound.in_doubt``)
   are counted by kind.

PostgreSQL, Dovecot, aiosmtpd, this script and the daemons all share the
machine's CPUs (the load average is printed with the figures), so the ratios
say how far extra daemons help *on one machine*, not across machines.  Each
figure comes from one run; it prints figures, never pass or fail.

Run from the repository root::

    python bench/cluster.py                           # 1000 replies, 3000 touches; 1, 2, 3
    python bench/cluster.py --replies 100 --touches 300 --daemons 1 2
    python bench/cluster.py --smtp-delay 300          # a relay answering DATA after 300 ms
    python bench/cluster.py --json                    # one JSON object instead of the table
    python bench/cluster.py --keep                    # keep the configs and the daemons' logs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The cluster harness (tests/cluster_env.py) and the throwaway PostgreSQL and
# Dovecot servers are modules in tests/, which is no package: they import each
# other by bare name, as pytest puts tests/ on sys.path.  Run as
# ``python bench/cluster.py``, only bench/ is on it, so tests/ is added here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from aiosmtpd.smtp import SMTP, Envelope, Session
from cluster_env import (
    PASSWORD_ENV,
    TOKEN_KEYS,
    TOKENS_ENV,
    Cluster,
    cluster_config,
    deliver_replies,
    seed,
)
from imap_servers import Dovecot, dovecot_server
from postgres import create_database, postgres_cluster
from sqlalchemy import func, select

from leadloop.config import load
from leadloop.demo.smtp import smtp_server
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Event, InboundMessage, OutboundMessage

DEFAULT_REPLIES = 1000
DEFAULT_TOUCHES = 3000
DEFAULT_DAEMONS = (1, 2, 3)
LEASE = "6s"
POLL = 0.25  # seconds between the script's checks of the shared state
RUN_TIMEOUT = 1800.0  # only bounds a hung run
NAMES = "abcdefghij"
# Events that a claim was taken over or cut short: a message's failed
# attempt (a lease that ran out counts as one), mail requeued before its dot
# or in doubt after it.
TAKEOVER_EVENTS = (
    "inbound.failed",
    "inbound.quarantined",
    "outbound.requeued",
    "outbound.in_doubt",
)
LOG_LINE = 400  # characters of a daemon's log line printed (tracebacks are one line)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)
_LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback ", re.MULTILINE)


class TimingHandler:
    """aiosmtpd's handler: notes each mail's Message-ID and when it was
    accepted (``time.monotonic()``), answers 250."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds before the reply to DATA (a slower relay)
        self.ids: list[str] = []
        self.first = 0.0
        self.last = 0.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data: Any = envelope.original_content or envelope.content
        raw = data if isinstance(data, bytes) else str(data).encode()
        match = _MESSAGE_ID.search(raw.split(b"\r\n\r\n", 1)[0])
        if self.delay:
            await asyncio.sleep(self.delay)
        self.ids.append(match.group(1).decode() if match else "")
        self.last = time.monotonic()
        self.first = self.first or self.last
        return "250 2.0.0 OK queued"


@dataclass
class Run:
    daemons: int
    inbound: int = 0  # messages stored
    inbound_seconds: float = 0.0  # start -> the last finished_at
    outbound: int = 0  # mails aiosmtpd accepted
    answers: int = 0  # outbox rows other than the touches
    outbound_seconds: float = 0.0  # start -> the last mail accepted
    wall_seconds: float = 0.0  # start -> the poll that saw everything finished
    first_stored_seconds: float = 0.0  # start -> the first inbound message stored
    first_sent_seconds: float = 0.0  # start -> the first mail accepted
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)  # VmHWM per daemon
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    log_warnings: dict[str, int] = field(default_factory=dict)
    takeovers: dict[str, int] = field(default_factory=dict)  # event kind -> count
    problems: list[str] = field(default_factory=list)

    @property
    def inbound_rate(self) -> float:
        return self.inbound / self.inbound_seconds if self.inbound_seconds > 0 else 0.0

    @property
    def outbound_rate(self) -> float:
        return self.outbound / self.outbound_seconds if self.outbound_seconds > 0 else 0.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def vm_hwm_kib(pid: int) -> int:
    """A live process's peak resident set (VmHWM), 0 if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def log_lines(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime (the database's are UTC, naive or not)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _count(db: Database, query: Any) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(query) or 0)


async def _finished(db: Database, replies: int) -> bool:
    stored = await _count(db, select(func.count()).select_from(InboundMessage))
    pending = await _count(
        db, select(func.count()).select_from(InboundMessage).where(InboundMessage.status != "done")
    )
    unsent = await _count(
        db,
        select(func.count())
        .select_from(OutboundMessage)
        .where(OutboundMessage.status.in_(("queued", "sending"))),
    )
    return stored >= replies and pending == 0 and unsent == 0


async def measure(
    dovecot: Dovecot,
    base_url: str,
    workdir: Path,
    daemons: int,
    args: argparse.Namespace,
) -> Run:
    replies, touches = args.replies, args.touches
    run = Run(daemons)
    directory = workdir / f"n{daemons}"
    directory.mkdir()
    imap = dovecot.new_user()
    url = await create_database(base_url, f"cluster_n{daemons}_{os.getpid()}")
    handler = TimingHandler(args.smtp_delay / 1000)
    async with smtp_server(handler, hostname="mx.bench.example") as port:
        config = directory / "config.toml"
        config.write_text(cluster_config(url, imap, port, LEASE))
        # load() reads these, the daemons inherit them.
        os.environ[PASSWORD_ENV] = imap.password
        os.environ[TOKENS_ENV] = TOKEN_KEYS
        loaded = load(config)
        touch_ids = await seed(loaded, replies, touches)
        await deliver_replies(imap, replies)
        db = await open_database(loaded.database_url)
        cluster = Cluster(config, dict(os.environ))
        try:
            started_wall = datetime.now(UTC)
            started = time.monotonic()
            await asyncio.gather(*(cluster.start(name) for name in NAMES[:daemons]))
            deadline = started + RUN_TIMEOUT
            while not await _finished(db, replies):
                exited = [n for n, proc in cluster.procs.items() if proc.returncode is not None]
                if exited:
                    run.problems.append(f"daemon(s) {exited} exited mid-run")
                    break
                if time.monotonic() > deadline:
                    run.problems.append(f"gave up after {RUN_TIMEOUT:.0f} s")
                    break
                await asyncio.sleep(POLL)
            run.wall_seconds = time.monotonic() - started
            run.peak_rss_kib = [vm_hwm_kib(proc.pid) for proc in cluster.procs.values()]
            run.exit_codes = await cluster.stop_all()
        finally:
            for proc in cluster.procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        received = list(handler.ids)
        run.outbound = len(received)
        if received:
            run.outbound_seconds = handler.last - started
            run.first_sent_seconds = handler.first - started

        try:
            async with db.sessions() as session:
                inbound = (
                    await session.execute(
                        select(
                            InboundMessage.id,
                            InboundMessage.message_id,
                            InboundMessage.status,
                            InboundMessage.received_at,
                            InboundMessage.finished_at,
                        )
                    )
                ).all()
                screens = (
                    await session.execute(
                        select(Event.inbound_id, Event.at).where(Event.kind == "stage.screen")
                    )
                ).all()
                run.takeovers = {
                    kind: int(n)
                    for kind, n in await session.execute(
                        select(Event.kind, func.count())
                        .where(Event.kind.in_(TAKEOVER_EVENTS))
                        .group_by(Event.kind)
                    )
                }
                rows = (
                    await session.execute(
                        select(
                            OutboundMessage.message_id,
                            OutboundMessage.status,
                            OutboundMessage.kind,
                        )
                    )
                ).all()
        finally:
            await db.dispose()

    # Inbound: stored once, done, one screen event each; rate and latency.
    run.inbound = len(inbound)
    finished = [row.finished_at for row in inbound if row.finished_at is not None]
    if finished:
        run.inbound_seconds = (_utc(max(finished)) - started_wall).total_seconds()
    if inbound:
        first = min(_utc(row.received_at) for row in inbound)
        run.first_stored_seconds = (first - started_wall).total_seconds()
    first_screen: dict[int, datetime] = {}
    screen_count: Counter[int] = Counter()
    for inbound_id, at in screens:
        screen_count[inbound_id] += 1
        if inbound_id not in first_screen or at < first_screen[inbound_id]:
            first_screen[inbound_id] = at
    run.latencies_ms = [
        (_utc(first_screen[row.id]) - _utc(row.received_at)).total_seconds() * 1000
        for row in inbound
        if row.id in first_screen
    ]
    if len(inbound) != replies:
        run.problems.append(f"{len(inbound)} inbound messages stored; expected {replies}")
    if len({row.message_id for row in inbound}) != len(inbound):
        run.problems.append("an inbound Message-ID was stored twice")
    statuses = Counter(row.status for row in inbound)
    if set(statuses) != {"done"}:
        run.problems.append(f"inbound statuses {dict(statuses)}; expected all done")
    screened = [n for n in screen_count.values() if n > 1]
    if screened or len(first_screen) != len(inbound):
        run.problems.append(
            f"{len(first_screen)} of {len(inbound)} messages screened, "
            f"{len(screened)} of them more than once"
        )

    # Outbound: every row sent once, the Message-IDs received are the rows'.
    run.answers = sum(1 for row in rows if row.kind != "touch")
    got = Counter(received)
    twice = [message_id for message_id, n in got.items() if n > 1]
    if twice:
        run.problems.append(f"{len(twice)} Message-ID(s) received more than once: {twice[:3]}")
    row_statuses = Counter(row.status for row in rows)
    if set(row_statuses) != {"sent"}:
        run.problems.append(f"outbox row statuses {dict(row_statuses)}; expected all sent")
    if set(got) != {row.message_id for row in rows}:
        missing = len({row.message_id for row in rows} - set(got))
        extra = len(set(got) - {row.message_id for row in rows})
        run.problems.append(
            f"the Message-IDs received are not the rows': {missing} missing, {extra} extra"
        )
    if not set(touch_ids) <= set(got):
        run.problems.append(f"{len(set(touch_ids) - set(got))} touch(es) never received")

    # The daemons: exit codes and their logs.
    bad = {name: code for name, code in run.exit_codes.items() if code != 0}
    if bad:
        run.problems.append(f"daemon exit codes {bad}; expected 0")
    for name, log in cluster.logs.items():
        lines = log_lines(log)
        run.log_problems[name] = [line for line in lines if _LOG_PROBLEM.search(line)]
        run.log_warnings[name] = sum(1 for line in lines if " WARNING " in line)
    return run


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


async def run_all(args: argparse.Namespace, workdir: Path) -> tuple[list[Run], list[str]]:
    runs: list[Run] = []
    loads: list[str] = [f"before: {load_average()}"]
    with postgres_cluster() as base_url, dovecot_server(tls=False, oauth2=False) as dovecot:
        for daemons in args.daemons:
            runs.append(await measure(dovecot, base_url, workdir, daemons, args))
            loads.append(f"after {daemons}: {load_average()}")
    return runs, loads


# --------------------------------------------------------------------------
# Report


def as_json(
    args: argparse.Namespace, runs: list[Run], loads: list[str], seconds: float
) -> dict[str, Any]:
    base = next((run for run in runs if run.daemons == 1), runs[0])

    def ratio(value: float, reference: float) -> float | None:
        return round(value / reference, 3) if reference > 0 else None

    return {
        "replies": args.replies,
        "touches": args.touches,
        "smtp_delay_ms": args.smtp_delay,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": loads,
        "total_seconds": round(seconds, 1),
        "runs": [
            {
                "daemons": run.daemons,
                "inbound": run.inbound,
                "first_stored_seconds": round(run.first_stored_seconds, 3),
                "inbound_seconds": round(run.inbound_seconds, 3),
                "inbound_msgs_per_s": round(run.inbound_rate, 1),
                "inbound_ratio": ratio(run.inbound_rate, base.inbound_rate),
                "outbound": run.outbound,
                "answers": run.answers,
                "first_sent_seconds": round(run.first_sent_seconds, 3),
                "outbound_seconds": round(run.outbound_seconds, 3),
                "outbound_mails_per_s": round(run.outbound_rate, 1),
                "outbound_ratio": ratio(run.outbound_rate, base.outbound_rate),
                "claim_latency_ms": {
                    "p50": round(percentile(run.latencies_ms, 0.50)),
                    "p95": round(percentile(run.latencies_ms, 0.95)),
                    "max": round(max(run.latencies_ms, default=0.0)),
                },
                "peak_rss_mib": [round(kib / 1024, 1) for kib in run.peak_rss_kib],
                "exit_codes": run.exit_codes,
                "log_problems": {name: len(lines) for name, lines in run.log_problems.items()},
                "log_warnings": run.log_warnings,
                "takeover_events": run.takeovers,
                "exactly_once": not run.problems,
                "problems": run.problems,
            }
            for run in runs
        ],
    }


def as_table(report: dict[str, Any], runs: list[Run]) -> str:
    rows: list[tuple[str, ...]] = [
        (
            "daemons",
            "inbound msg/s",
            "ratio",
            "outbound mails/s",
            "ratio",
            "claim p50",
            "claim p95",
            "peak RSS max / sum",
            "exactly once",
        )
    ]
    for figures in report["runs"]:
        rss = figures["peak_rss_mib"]
        rows.append(
            (
                str(figures["daemons"]),
                f"{figures['inbound_msgs_per_s']:,.1f}",
                f"{figures['inbound_ratio']:.2f}" if figures["inbound_ratio"] else "-",
                f"{figures['outbound_mails_per_s']:,.1f}",
                f"{figures['outbound_ratio']:.2f}" if figures["outbound_ratio"] else "-",
                f"{figures['claim_latency_ms']['p50']:,} ms",
                f"{figures['claim_latency_ms']['p95']:,} ms",
                f"{max(rss, default=0):.1f} / {sum(rss):.1f} MiB",
                "yes" if figures["exactly_once"] else "NO",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    align: list[Callable[[str, int], str]] = [str.rjust] * len(widths)
    lines = [
        f"leadloop cluster benchmark: {report['replies']} inbound replies and "
        f"{report['touches']} due lead mails per run; PostgreSQL, Dovecot, aiosmtpd, "
        f"this script and the daemons share {report['cpus']} cpus"
        + (
            f"; aiosmtpd answers DATA after {report['smtp_delay_ms']:g} ms"
            if report["smtp_delay_ms"]
            else ""
        ),
        f"python {report['python']}",
        "",
    ]
    for row in rows:
        cells = [align[column](cell, widths[column]) for column, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    for figures in report["runs"]:
        lines.append(
            f"{figures['daemons']} daemon(s): {figures['inbound']} inbound done in "
            f"{figures['inbound_seconds']:.1f} s (the first stored at "
            f"{figures['first_stored_seconds']:.1f} s); {figures['outbound']} mails "
            f"({figures['outbound'] - figures['answers']} touches + {figures['answers']} answers) "
            f"in {figures['outbound_seconds']:.1f} s (the first at "
            f"{figures['first_sent_seconds']:.1f} s); claim latency max "
            f"{figures['claim_latency_ms']['max']:,} ms; exit codes "
            f"{figures['exit_codes']}; log ERROR/traceback lines {figures['log_problems']}, "
            f"WARNING lines {figures['log_warnings']}; claims taken over "
            f"{figures['takeover_events'] or 'none'}"
        )
    lines.append("")
    lines.append(
        "times run from just before the first daemon starts (its start-up included); "
        "claim latency = first stage.screen event - received_at (all replies are in the "
        "mailbox before the start: latency under a backlog)"
    )
    lines.append(f"load average (1, 5, 15 min): {'; '.join(report['load_average'])}")
    lines.append(f"whole run, setup included: {report['total_seconds']:.0f} s")
    for run in runs:
        for name, problems in run.log_problems.items():
            for line in problems[:5]:
                cut = line if len(line) <= LOG_LINE else line[: LOG_LINE - 3] + "..."
                lines.append(f"{run.daemons} daemon(s), {name}.log: {cut}")
            if len(problems) > 5:
                lines.append(f"{run.daemons} daemon(s), {name}.log: ... {len(problems) - 5} more")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--replies", type=int, default=DEFAULT_REPLIES, metavar="N", help="inbound replies per run"
    )
    parser.add_argument(
        "--touches", type=int, default=DEFAULT_TOUCHES, metavar="N", help="due lead mails per run"
    )
    parser.add_argument(
        "--daemons",
        type=int,
        nargs="+",
        default=list(DEFAULT_DAEMONS),
        metavar="N",
        help="daemon counts to run, in order (default: 1 2 3)",
    )
    parser.add_argument(
        "--smtp-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="aiosmtpd waits this long before answering each DATA (a slower relay; default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, daemons' logs)"
    )
    args = parser.parse_args(argv)
    if args.replies < 1 or args.touches < 0:
        parser.error("--replies must be at least 1 and --touches at least 0")
    if not all(1 <= n <= len(NAMES) for n in args.daemons) or len(set(args.daemons)) != len(
        args.daemons
    ):
        parser.error(f"--daemons: distinct counts from 1 to {len(NAMES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="leadloop-bench-cluster-"))
    start = time.monotonic()
    try:
        runs, loads = asyncio.run(run_all(args, workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = as_json(args, runs, loads, time.monotonic() - start)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(as_table(report, runs))
    problems = [f"{run.daemons} daemon(s): {problem}" for run in runs for problem in run.problems]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print("error: the run was broken; its figures mean nothing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
