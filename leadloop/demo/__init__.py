"""``leadloop demo``: the whole loop on loopback servers with simulated
buyers, on an accelerated clock.  No network, no key.

aiosmtpd is the relay and pymap the IMAP server, both in this process; a
scratch directory holds the SQLite database and the config; twenty sample
leads each play one of ten personas (``personas.py``) against the real
daemon for three simulated weeks.  The conversation is printed as the
daemon records it (``narrate.py``), then the report and each persona's
outcome."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from leadloop.demo.leads import SAMPLE_LEADS
from leadloop.demo.narrate import Narrator
from leadloop.demo.simulation import START, Options, Result, simulate
from leadloop.report.html import render_html
from leadloop.report.table import render_table

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def run_demo(args: argparse.Namespace) -> int:
    """``leadloop demo [--leads N] [--days N] [--html FILE] [--quiet]``.

    Returns the exit code: 1 when the pipeline failed on a message
    (quarantined after errors), 2 for options out of range."""
    if not 1 <= args.leads <= len(SAMPLE_LEADS) or args.days < 1:
        print(
            f"leadloop demo: --leads must be 1 to {len(SAMPLE_LEADS)} and --days at least 1",
            file=sys.stderr,
        )
        return EXIT_USAGE
    options = Options(leads=args.leads, days=args.days)
    html = Path(args.html)
    if not html.parent.is_dir():
        print(f"leadloop demo: --html: no folder {html.parent}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(
            f"leadloop demo: {options.leads} leads, {options.days} days from "
            f"{START:%a %d %b %Y %H:%M} UTC (all times UTC)\n",
            flush=True,
        )
    with _daemon_logs_quiet():
        result = asyncio.run(_simulate(options, quiet=args.quiet))
    html.write_text(render_html(result.report), encoding="utf-8")
    sys.stdout.write(summary(result, html))
    for failure in result.failed:
        print(f"leadloop demo: the pipeline failed on {failure}", file=sys.stderr)
    return EXIT_FAILED if result.failed else EXIT_OK


async def _simulate(options: Options, *, quiet: bool) -> Result:
    """The simulation with the conversation on stdout and a progress bar
    over the simulated hours on stderr (where it is a terminal)."""
    with tqdm(
        total=options.days * 24,
        unit="h",
        desc="simulated",
        file=sys.stderr,
        disable=True if quiet else None,  # None: only on a terminal
        leave=False,
    ) as bar:
        write = None if quiet else (lambda line: bar.write(line, file=sys.stdout))
        return await simulate(options, Narrator(write=write), progress=bar.update)


@contextmanager
def _daemon_logs_quiet() -> Iterator[None]:
    """The daemon's warnings (a refused recipient, a bounce) are lines of the
    conversation already; its errors still show."""
    logger = logging.getLogger("leadloop")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def summary(result: Result, html: Path) -> str:
    """The report table, one line per persona, and where the HTML report is."""
    width = max(len(o.lead.email) for o in result.outcomes)
    lines = ["", render_table(result.report), "Personas (lead, persona, final state)"]
    lines += [
        f"  {o.lead.email:<{width}}  {o.persona.value:<17} {o.state}" for o in result.outcomes
    ]
    lines += ["", f"HTML report: {html.resolve()}", ""]
    return "\n".join(lines)
