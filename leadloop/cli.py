"""The ``leadloop`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from leadloop import __version__
from leadloop import config as config_module
from leadloop.config import ConfigError, LoadedConfig

if TYPE_CHECKING:
    from leadloop.storage.db import Database

# Exit codes (sysexits.h), so systemd can tell a bad config, which no restart
# fixes (RestartPreventExitStatus=78), from a database that may come back.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # another daemon holds the state directory
EXIT_TEMPFAIL = 75  # the database cannot be reached
EXIT_NOPERM = 77  # every mailbox refused the login at start
EXIT_CONFIG = 78

log = logging.getLogger("leadloop.cli")


def _setup_logging(level: str = "info", loaded: LoadedConfig | None = None) -> None:
    from leadloop import logs

    fmt = loaded.settings.service.log_format if loaded else "text"
    secrets = [s.get_secret_value() for s in loaded.secrets.values()] if loaded else []
    logs.setup(level, fmt, secrets)


def _load(args: argparse.Namespace) -> LoadedConfig:
    return config_module.load(args.config)


def _run_async(coro: Awaitable[int]) -> int:
    return asyncio.run(coro)  # type: ignore[arg-type]


@asynccontextmanager
async def _database(loaded: LoadedConfig) -> AsyncIterator[Database]:
    """The configured database, migrated, disposed of on the way out."""
    from leadloop.storage.db import open_database

    db_settings = loaded.settings.database
    db = await open_database(
        loaded.database_url,
        pool_size=db_settings.pool_size,
        busy_timeout=db_settings.busy_timeout.total_seconds(),
    )
    try:
        yield db
    finally:
        await db.dispose()


def _progress(total_hint: int) -> Callable[[Iterable[Any]], Iterable[Any]]:
    def wrap(rows: Iterable[Any]) -> Iterable[Any]:
        from tqdm import tqdm

        items = list(rows)
        # A bar only where a person watches a file large enough to wait for.
        disable = len(items) < total_hint or not sys.stderr.isatty()
        bar: Iterable[Any] = tqdm(items, unit="row", disable=disable, file=sys.stderr)
        return bar

    return wrap


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO) -> None:
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


# -- commands ------------------------------------------------------------------


def default_actor() -> str:
    """``admin:<OS user>``, as the controls record who ran a command."""
    from leadloop.agent.controls import default_actor as who

    return who()


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load(args)
    print(f"{loaded.file}: OK")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from leadloop.daemon.service import AlreadyRunning, MailboxLoginsRefused, Service
    from leadloop.storage.db import DatabaseError

    loaded = _load(args)
    _setup_logging(loaded.settings.service.log_level, loaded)

    async def main() -> int:
        service = Service(loaded)
        await service.run(once=args.once)
        return EXIT_OK

    try:
        return _run_async(main())
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return EXIT_UNAVAILABLE
    except MailboxLoginsRefused as exc:
        log.error("%s", exc)
        return EXIT_NOPERM
    except DatabaseError as exc:
        log.error("%s", exc)
        return EXIT_TEMPFAIL


def cmd_reload(args: argparse.Namespace) -> int:
    from leadloop.daemon.service import read_pid

    loaded = _load(args)  # refuse to signal with a file that would be refused
    pid = read_pid(loaded.state_dir)
    if pid is None:
        print(f"no PID file in {loaded.state_dir}: is leadloop running?", file=sys.stderr)
        return EXIT_FAILURE
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"leadloop (pid {pid}) is not running", file=sys.stderr)
        return EXIT_FAILURE
    print(f"asked leadloop (pid {pid}) to reload {loaded.file}")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from leadloop.storage.db import head_revision

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded):
            print(f"database is at schema {head_revision()}")
        return EXIT_OK

    return _run_async(main())


def cmd_leads_import(args: argparse.Namespace) -> int:
    from leadloop.agent.controls import use_privacy_key
    from leadloop.agent.leads import import_leads
    from leadloop.clock import SystemClock

    loaded = _load(args)
    use_privacy_key(loaded)  # an erased address is suppressed by its keyed HMAC

    async def main() -> int:
        async with _database(loaded) as db:
            report = await import_leads(
                db,
                Path(args.file),
                SystemClock().now(),
                actor=default_actor(),
                progress=_progress(1000),
            )
        _print_report(report.as_dict(), args.json)
        return EXIT_OK if not report.rejected else EXIT_FAILURE

    return _run_async(main())


def cmd_accounts_import(args: argparse.Namespace) -> int:
    from leadloop.agent.leads import import_accounts
    from leadloop.clock import SystemClock

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db:
            report = await import_accounts(
                db, Path(args.file), SystemClock().now(), progress=_progress(1000)
            )
        _print_report(report.as_dict(), args.json)
        return EXIT_OK if not report.rejected else EXIT_FAILURE

    return _run_async(main())


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    print(
        f"created {report['created']}, updated {report['updated']}, "
        f"unchanged {report['unchanged']}, rejected {len(report['rejected'])}"
        + (f", suppressed {report['suppressed']} (not created)" if report["suppressed"] else "")
    )
    if report["custom_columns"]:
        print(f"kept as custom fields: {', '.join(report['custom_columns'])}")
    for rejected in report["rejected"]:
        print(f"  line {rejected['line']}: {rejected['reason']}")


def cmd_leads_list(args: argparse.Namespace) -> int:
    from leadloop.storage import queries

    loaded = _load(args)
    if args.prioritized:
        return _leads_prioritized(args, loaded)

    async def main() -> int:
        async with _database(loaded) as db:
            leads = await queries.list_leads(db, state=args.state)
        if args.owner:
            leads = [lead for lead in leads if (lead["owner"] or "") == args.owner.lower()]
        if args.json:
            for lead in leads:
                print(json.dumps(lead))
        else:
            _table(
                [
                    (lead["email"], lead["name"], lead["company"], lead["state"], lead["owner"])
                    for lead in leads
                ],
                ("EMAIL", "NAME", "COMPANY", "STATE", "OWNER"),
                sys.stdout,
            )
        return EXIT_OK

    return _run_async(main())


def _leads_prioritized(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Open leads in priority order (``research/priority.py``), with the
    reason and the suggested action."""
    from leadloop.research.priority import prioritize

    async def main() -> int:
        async with _database(loaded) as db, db.sessions() as session:
            ranked = await prioritize(session, loaded, datetime.now(UTC), owner=args.owner)
        if args.state:
            ranked = [r for r in ranked if r.state == args.state]
        if args.json:
            for r in ranked:
                print(json.dumps(r.as_dict()))
            return EXIT_OK
        _table(
            [
                (r.rank, r.email, r.name, r.state, r.owner, r.suggestion.action, r.reason)
                for r in ranked
            ],
            ("RANK", "EMAIL", "NAME", "STATE", "OWNER", "ACTION", "REASON"),
            sys.stdout,
        )
        return EXIT_OK

    return _run_async(main())


def cmd_digest_preview(args: argparse.Namespace) -> int:
    from leadloop.report.digest import build_digest

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db, db.sessions() as session:
            digest = await build_digest(session, loaded, args.seller, datetime.now(UTC))
        print(f"Subject: {digest.subject}\n")
        sys.stdout.write(digest.html if args.html else digest.text)
        return EXIT_OK

    return _run_async(main())


def cmd_leads_show(args: argparse.Namespace) -> int:
    from leadloop.storage import queries

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db:
            detail = await queries.lead_detail(db, args.email)
        if detail is None:
            print(f"no lead {args.email}", file=sys.stderr)
            return EXIT_FAILURE
        if args.json:
            print(json.dumps(detail, indent=2))
            return EXIT_OK
        for key, value in detail["lead"].items():
            print(f"{key:24} {value if value is not None else ''}")
        print("\nstate history:")
        for change in detail["history"]:
            print(
                f"  {change['at']}  {change['from'] or '-'} -> {change['to']}  "
                f"by {change['actor']}: {change['reason']}"
            )
        print("\nevents:")
        for event in detail["events"]:
            print(
                f"  {event['at']}  {event['kind']}  by {event['actor']}: "
                f"{'; '.join(event['reasons'])}"
            )
        return EXIT_OK

    return _run_async(main())


def cmd_quarantine(args: argparse.Namespace) -> int:
    from leadloop.agent.pipeline import retry_quarantined
    from leadloop.clock import SystemClock
    from leadloop.storage import queries

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db:
            if args.action == "list":
                rows = await queries.quarantined(db)
                if args.json:
                    for row in rows:
                        print(json.dumps(row))
                else:
                    _table(
                        [
                            (r["id"], r["mailbox"], r["from"], r["subject"], r["stage"], r["error"])
                            for r in rows
                        ],
                        ("ID", "MAILBOX", "FROM", "SUBJECT", "STAGE", "ERROR"),
                        sys.stdout,
                    )
                return EXIT_OK
            if args.id is None:
                print(f"quarantine {args.action} needs a message ID", file=sys.stderr)
                return EXIT_USAGE
            if args.action == "show":
                detail = await queries.inbound_detail(db, args.id)
                if detail is None:
                    print(f"no message {args.id}", file=sys.stderr)
                    return EXIT_FAILURE
                print(json.dumps(detail, indent=2))
                return EXIT_OK
            try:
                await retry_quarantined(db, SystemClock(), args.id, actor=default_actor())
            except (LookupError, ValueError) as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_FAILURE
            print(
                f"message {args.id} is back in line; it runs with the next pass of "
                "`leadloop run` (or now with `leadloop run --once`)"
            )
            return EXIT_OK

    return _run_async(main())


def cmd_cluster(args: argparse.Namespace) -> int:
    """The daemons sharing the database: live or not, what each polls and holds."""
    from leadloop.storage import queries

    loaded = _load(args)
    tick = loaded.settings.scheduler.tick
    live_within = max(3 * tick, timedelta(seconds=90))

    async def main() -> int:
        async with _database(loaded) as db:
            rows = await queries.cluster(db, datetime.now(UTC), live_within)
        if not args.all:
            rows = [r for r in rows if r["live"]]
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return EXIT_OK
        _table(
            [
                (
                    r["id"],
                    "live" if r["live"] else ("stopped" if r["stopped_at"] else "silent"),
                    r["seen_at"][:19],
                    ",".join(r["mailboxes"]) or "-",
                    r["claims"]["inbound"],
                    r["claims"]["due"],
                    r["claims"]["sending"],
                )
                for r in rows
            ],
            ("daemon", "state", "seen", "polls", "in work", "due", "sending"),
            sys.stdout,
        )
        return EXIT_OK

    return _run_async(main())


def cmd_escalations(args: argparse.Namespace) -> int:
    from leadloop.storage import queries

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db:
            if args.action == "list":
                rows = await queries.escalations(db, everything=args.all)
                if args.json:
                    for row in rows:
                        print(json.dumps(row))
                else:
                    _table(
                        [
                            (r["id"], r["lead"], r["condition"][:40], r["status"], r["opened_at"],
                             ", ".join(r["supervisors"]))
                            for r in rows
                        ],
                        ("ID", "LEAD", "CONDITION", "STATUS", "OPENED", "SUPERVISORS"),
                        sys.stdout,
                    )  # fmt: skip
                return EXIT_OK
            if args.id is None:
                print("escalations show needs an escalation ID", file=sys.stderr)
                return EXIT_USAGE
            detail = await queries.escalation_detail(db, args.id)
            if detail is None:
                print(f"no escalation {args.id}", file=sys.stderr)
                return EXIT_FAILURE
            if args.json:
                print(json.dumps(detail, indent=2))
                return EXIT_OK
            for key, value in detail.items():
                if key in ("reasons", "draft"):
                    continue
                print(f"{key:14} {value if value is not None else ''}")
            print("\nreasons:")
            for reason in detail["reasons"]:
                print(f"  - {reason}")
            if detail["draft"]:
                hard = " (failed a hard check: APPROVE is refused)" if detail["draft_hard"] else ""
                print(f"\nheld draft{hard}:")
                print("\n".join(f"  | {line}" for line in detail["draft"].splitlines()))
            return EXIT_OK

    return _run_async(main())


def cmd_outbox(args: argparse.Namespace) -> int:
    from leadloop.agent import outbox
    from leadloop.clock import SystemClock
    from leadloop.storage import queries

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db:
            if args.action == "list":
                statuses = tuple(args.status) if args.status else queries.ATTENTION
                rows = await queries.outbound(db, statuses)
                if args.json:
                    for row in rows:
                        print(json.dumps(row))
                else:
                    _table(
                        [
                            (
                                r["id"],
                                r["status"],
                                r["kind"],
                                ", ".join(r["to"]),
                                r["subject"],
                                r["attempts"],
                                (r["reason"] or "")[:80],
                            )
                            for r in rows
                        ],
                        ("ID", "STATUS", "KIND", "TO", "SUBJECT", "TRIES", "WHY"),
                        sys.stdout,
                    )
                return EXIT_OK
            if args.id is None:
                print(f"outbox {args.action} needs a mail ID", file=sys.stderr)
                return EXIT_USAGE
            if args.action == "show":
                detail = await queries.outbound_detail(db, args.id)
                if detail is None:
                    print(f"no outbound mail {args.id}", file=sys.stderr)
                    return EXIT_FAILURE
                print(json.dumps(detail, indent=2))
                return EXIT_OK
            operation = outbox.release if args.action == "release" else outbox.cancel
            try:
                async with db.transaction() as session:
                    await operation(
                        session, args.id, actor=default_actor(), now=SystemClock().now()
                    )
            except outbox.OperatorError as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_FAILURE
            if args.action == "release":
                print(f"outbound {args.id} is queued again; the running daemon sends it shortly")
            else:
                print(f"outbound {args.id} is cancelled and will not be sent")
            return EXIT_OK

    return _run_async(main())


def _actor(args: argparse.Namespace) -> str:
    from leadloop.agent.controls import default_actor

    by = getattr(args, "by", None)
    return f"admin:{by}" if by and ":" not in by else (by or default_actor())


def _control(
    args: argparse.Namespace,
    action: Callable[[Any, str, datetime], Awaitable[Any]],
    *,
    checks_suppressions: bool = False,
) -> tuple[int, Any]:
    """Run one control in a transaction: (exit code, its result).  A refusal
    (``ControlError``) is printed on stderr and exits 1.  A control that
    checks suppressions needs the kept ``[privacy]`` key (made on first use)."""
    from leadloop.agent.controls import ControlError, use_privacy_key

    loaded = _load(args)

    async def main() -> tuple[int, Any]:
        if checks_suppressions:
            use_privacy_key(loaded)
        async with _database(loaded) as db:
            try:
                async with db.transaction() as session:
                    result = await action(session, _actor(args), datetime.now(UTC))
            except ControlError as exc:
                print(f"leadloop: {exc}", file=sys.stderr)
                return EXIT_FAILURE, None
        return EXIT_OK, result

    return asyncio.run(main())


def _target(args: argparse.Namespace) -> str:
    if args.lead:
        return f"lead {args.lead}"
    return f"mailbox {args.mailbox}" if args.mailbox else "all sending"


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause all sending (held mail stays queued), one mailbox, or one lead."""
    from leadloop.agent import controls

    code, changed = _control(
        args,
        lambda session, actor, now: controls.pause(
            session, actor=actor, reason=args.reason, now=now, mailbox=args.mailbox, lead=args.lead
        ),
    )
    if code == EXIT_OK:
        print(f"{_target(args)} {'paused' if changed else 'was already paused'}")
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    """Undo ``leadloop pause``; a mailbox paused by the circuit breaker too."""
    from leadloop.agent import controls

    code, changed = _control(
        args,
        lambda session, actor, now: controls.resume(
            session, actor=actor, reason=args.reason, now=now, mailbox=args.mailbox, lead=args.lead
        ),
    )
    if code == EXIT_OK:
        if args.mailbox and not args.lead:
            print(f"mailbox {args.mailbox} {'sends again' if changed else 'was not paused'}")
        else:
            print(f"{_target(args)} {'resumed' if changed else 'was not paused'}")
    return code


def cmd_suppress(args: argparse.Namespace) -> int:
    from leadloop.agent import controls

    code, added = _control(
        args,
        lambda session, actor, now: controls.suppress(
            session, args.address, actor=actor, reason=args.reason, now=now
        ),
        checks_suppressions=True,
    )
    if code == EXIT_OK:
        print(f"{args.address} {'is suppressed' if added else 'was already suppressed'}")
    return code


def cmd_unsuppress(args: argparse.Namespace) -> int:
    from leadloop.agent import controls

    code, which = _control(
        args,
        lambda session, actor, now: controls.unsuppress(
            session, args.address, actor=actor, reason=args.reason, now=now
        ),
        checks_suppressions=True,
    )
    if code == EXIT_OK:
        erased = " (an erased address, matched by its HMAC)" if which == "hmac" else ""
        print(f"{args.address} is no longer suppressed{erased}")
    return code


def cmd_suppressions(args: argparse.Namespace) -> int:
    from leadloop.agent import controls

    code, rows = _control(args, lambda session, actor, now: controls.list_suppressions(session))
    if args.json:
        for row in rows or []:
            print(json.dumps(row))
    else:
        _table(
            [
                (r["address"] or "(erased)", r["source"], r["created_at"][:19], r["reason"][:60])
                for r in rows or []
            ],
            ("ADDRESS", "SOURCE", "SINCE", "REASON"),
            sys.stdout,
        )
    return code


def cmd_leads_set_email(args: argparse.Namespace) -> int:
    """Correct a lead's address (an ``invalid`` lead goes back to ``new``)."""
    from leadloop.agent import controls

    validator = controls.validator_for(_load(args))
    code, lead = _control(
        args,
        lambda session, actor, now: controls.set_email(
            session, args.old, args.new, actor=actor, reason=args.reason, now=now,
            validator=validator,
        ),
        checks_suppressions=True,
    )  # fmt: skip
    if code == EXIT_OK:
        print(f"lead {lead.id} is now {lead.email} ({lead.state}); its address is checked again")
    return code


def cmd_leads_erase(args: argparse.Namespace) -> int:
    """Erase a person: their lead, mail and records; a keyed suppression stays."""
    from leadloop.agent import controls

    loaded = _load(args)
    own = [box.address for box in loaded.settings.mailboxes]
    code, report = _control(
        args,
        lambda session, actor, now: controls.erase(
            session, args.email, actor=actor, reason=args.reason, now=now,
            key=controls.use_privacy_key(loaded), own_addresses=own,
        ),
        checks_suppressions=True,
    )  # fmt: skip
    if code != EXIT_OK:
        return code
    if args.json:
        print(json.dumps(report.as_dict()))
        return code
    what = "the lead and " if report.lead else "no lead; "
    deleted = ", ".join(f"{n} {t}" for t, n in sorted(report.deleted.items())) or "nothing"
    print(f"erased {what}its records: {deleted}")
    if report.redacted:
        places = ", ".join(f"{n} in {c}" for c, n in sorted(report.redacted.items()))
        print(f"the address was replaced in other records: {places}")
    print("kept: a suppression keyed by the address's HMAC (no mail goes there again)")
    return code


def cmd_retention(args: argparse.Namespace) -> int:
    """``[privacy] raw_mail_days``: strip raw mail older than that now."""
    from leadloop.agent.controls import run_retention

    loaded = _load(args)
    days = loaded.settings.privacy.raw_mail_days

    async def main() -> int:
        async with _database(loaded) as db:
            return await run_retention(db, loaded, datetime.now(UTC), actor=_actor(args))

    stripped = asyncio.run(main())
    if args.json:
        print(json.dumps({"raw_mail_days": days, "stripped": stripped}))
    elif days <= 0:
        print("[privacy] raw_mail_days is 0: raw mail is kept; nothing to do")
    else:
        print(f"stripped the raw mail of {stripped} messages older than {days} days")
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from leadloop.agent.cadence import preview
    from leadloop.clock import SystemClock
    from leadloop.daemon.service import build_planner, build_sender
    from leadloop.storage.models import CadenceEnrollment, Lead

    loaded = _load(args)

    async def main() -> int:
        async with _database(loaded) as db:
            clock = SystemClock()
            sender = build_sender(loaded, db, clock, "preview")
            planner = build_planner(loaded, db, sender.settings)
            now = clock.now()
            async with db.sessions() as session:
                if args.lead:
                    lead = await session.scalar(select(Lead).where(Lead.email == args.lead.lower()))
                    if lead is None:
                        print(f"no lead {args.lead}", file=sys.stderr)
                        return EXIT_FAILURE
                    leads = [lead]
                else:
                    # A sample of five: the next due first, then leads not yet enrolled.
                    leads = list(
                        await session.scalars(
                            select(Lead)
                            .join(CadenceEnrollment, CadenceEnrollment.lead_id == Lead.id)
                            .where(CadenceEnrollment.status == "active")
                            .order_by(CadenceEnrollment.next_at)
                            .limit(5)
                        )
                    )
                    if len(leads) < 5:
                        enrolled = select(CadenceEnrollment.lead_id)
                        leads += list(
                            await session.scalars(
                                select(Lead)
                                .where(Lead.id.not_in(enrolled))
                                .order_by(Lead.id)
                                .limit(5 - len(leads))
                            )
                        )
                for lead in leads:
                    shown = await preview(planner, session, lead, now)
                    if args.json:
                        print(json.dumps(shown.as_dict()))
                    else:
                        _print_preview(shown)
            await sender.close()
        return EXIT_OK

    return _run_async(main())


def _print_preview(shown: Any) -> None:
    print(f"{shown.email}  [{shown.cadence or '-'}, {shown.state}, {shown.status}, {shown.zone}]")
    if shown.next_step:
        when = shown.next_at.isoformat() if shown.next_at else "when the last touch goes out"
        print(f"  next: {shown.next_step} at {when}")
        if shown.missing:
            print(f"  waits: the lead has no {', '.join(shown.missing)}")
        else:
            print(f"  subject: {shown.subject}")
            for line in (shown.body or "").splitlines():
                print(f"  | {line}")
        for step, at in shown.later:
            print(f"  then: {step} at {at.isoformat()}")
    if shown.note:
        print(f"  note: {shown.note}")
    print()


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay DIR.  With ``--expect``, the decisions are then diffed against
    the file on standard error (standard output keeps only the JSON lines),
    and any difference fails the command as a pipeline failure does."""
    from leadloop.daemon.replay import (
        ExpectationError,
        Expectations,
        compare,
        expect_summary,
        load_expectations,
        replay,
    )

    loaded = _load(args)
    _setup_logging("warning")
    directory = Path(args.directory)

    async def main(expected: Expectations | None) -> int:
        result = await replay(directory, loaded, sys.stdout)
        if expected is None:
            return result.exit_code
        mismatches = compare(expected, result.lines)
        for mismatch in mismatches:
            print(mismatch.describe(), file=sys.stderr)
        print(expect_summary(len(expected), mismatches), file=sys.stderr)
        return EXIT_FAILURE if mismatches else result.exit_code

    try:
        # Read before replaying, so a mistyped file costs no replay.
        expected = load_expectations(Path(args.expect), directory) if args.expect else None
        return _run_async(main(expected))
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except ExpectationError as exc:
        print(f"leadloop replay: --expect {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_classify(args: argparse.Namespace) -> int:
    """Understand each input with the configured brain (trained once) and
    print one JSON object per input.  ``.eml`` files are parsed and their
    headers help tell an auto-reply; other files (and ``-``, standard
    input) are a body, plain text."""
    from leadloop.brain import build_brain
    from leadloop.mail.parse import parse_mail

    if config_module.config_path(args.config).exists():
        brain = build_brain(_load(args))
    else:  # no configuration at all: the embedded default
        from leadloop.brain.local import LocalBrain

        brain = LocalBrain()

    async def one(name: str, raw: bytes) -> dict[str, Any]:
        result: dict[str, Any] = {"file": name}
        if name.lower().endswith(".eml") or (name == "-" and _looks_like_mail(raw)):
            parsed = parse_mail(raw)
            result["message_id"] = parsed.message_id
            understood = await brain.classify(
                parsed.body_text,
                subject=parsed.subject,
                received=parsed.date.date() if parsed.date else None,
                headers=parsed.headers,
            )
        else:
            understood = await brain.classify(raw.decode("utf-8", "replace"))
        result.update(understood.summary())
        return result

    def read(name: str) -> bytes:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()

    async def main() -> int:
        failed = 0
        for name in args.files:
            try:
                line = await one(name, read(name))
            except OSError as exc:
                print(f"leadloop classify: {name}: {exc.strerror or exc}", file=sys.stderr)
                failed += 1
                continue
            print(json.dumps(line, ensure_ascii=False), flush=True)
        return EXIT_FAILURE if failed else EXIT_OK

    return _run_async(main())


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on loopback servers, a scratch database and simulated
    buyers, on an accelerated clock (``leadloop/demo/``)."""
    from leadloop.demo import run_demo

    return run_demo(args)


def _when(text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"leadloop: not a date: {text!r} (use YYYY-MM-DD)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _range(args: argparse.Namespace) -> tuple[datetime, datetime]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    until = _when(args.until, today + timedelta(days=1))
    since = _when(args.since, until - timedelta(days=args.days))
    if since >= until:
        raise SystemExit("leadloop: --since must be before --until")
    return since, until


def cmd_report(args: argparse.Namespace) -> int:
    from leadloop.report.html import render_html
    from leadloop.report.metrics import build_report, catalog_urls
    from leadloop.report.table import render_table

    loaded = _load(args)
    since, until = _range(args)

    async def main() -> dict[str, Any]:
        async with _database(loaded) as db:
            return await build_report(
                db, since, until, catalog_urls=catalog_urls(loaded), now=datetime.now(UTC)
            )

    report = asyncio.run(main())
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(render_table(report))
        if args.html:
            print(f"\nHTML report: {Path(args.html).resolve()}")
    return EXIT_OK


def cmd_events_export(args: argparse.Namespace) -> int:
    from leadloop.report.events import export_events

    loaded = _load(args)
    since = _when(args.since, datetime(1970, 1, 1, tzinfo=UTC))

    async def main() -> int:
        async with _database(loaded) as db:
            async for line in export_events(db, since=since):
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        return EXIT_OK

    return _run_async(main())


def _looks_like_mail(raw: bytes) -> bool:
    """Standard input holds a whole message (headers first) or just a body."""
    head = raw[:2000].split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    names = {line.split(b":", 1)[0].strip().lower() for line in head.splitlines() if b":" in line}
    return bool(names & {b"from", b"subject", b"message-id", b"date"}) and b"\n" in raw[:2000]


# -- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $LEADLOOP_CONFIG, else ./config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="leadloop", description="Works sales leads over email.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"leadloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "run the daemon")
    run.add_argument(
        "--once", action="store_true", help="fetch and process what is waiting, then exit"
    )
    add("check-config", cmd_check_config, "validate the configuration")
    add("reload", cmd_reload, "ask the running daemon to reload its configuration")

    db = sub.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    add("upgrade", cmd_db_upgrade, "apply migrations", into=db)

    leads = sub.add_parser("leads", help="leads").add_subparsers(
        dest="leads_command", required=True, metavar="ACTION"
    )
    p = add("import", cmd_leads_import, "import or update leads from a CSV file", into=leads)
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p = add("list", cmd_leads_list, "list leads", into=leads)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--state", help="only leads in this state")
    p.add_argument(
        "--prioritized",
        action="store_true",
        help="open leads in priority order with RANK, ACTION and REASON",
    )
    p.add_argument("--owner", metavar="ADDRESS", help="only this seller's leads")
    p = add("show", cmd_leads_show, "a lead's fields, state history and events", into=leads)
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p = add("set-email", cmd_leads_set_email, "correct a lead's address", into=leads)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--reason", metavar="TEXT", help="why (in the event)")
    p.add_argument("--by", metavar="NAME", help="who (default: admin:<OS user>)")
    p = add("erase", cmd_leads_erase, "erase a person: lead, mail, records", into=leads)
    p.add_argument("email")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (in the event)")
    p.add_argument("--by", metavar="NAME", help="who (default: admin:<OS user>)")
    p.add_argument("--json", action="store_true", help="what was deleted, as JSON")

    accounts = sub.add_parser("accounts", help="accounts").add_subparsers(
        dest="accounts_command", required=True, metavar="ACTION"
    )
    p = add(
        "import", cmd_accounts_import, "import or update accounts from a CSV file", into=accounts
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true")

    p = add("quarantine", cmd_quarantine, "messages put aside after failures")
    p.add_argument("action", choices=("list", "show", "retry"))
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--json", action="store_true")

    p = add("outbox", cmd_outbox, "outbound mail held, failed or in doubt")
    p.add_argument("action", choices=("list", "show", "release", "cancel"))
    p.add_argument("id", nargs="?", type=int)
    p.add_argument(
        "--status",
        action="append",
        help="list mail in this status (repeatable; default: held, failed, in_doubt)",
    )
    p.add_argument("--json", action="store_true")

    cluster = sub.add_parser("cluster", help="several daemons on one database").add_subparsers(
        dest="cluster_command", required=True, metavar="ACTION"
    )
    p = add("status", cmd_cluster, "the live daemons, what each polls and holds", into=cluster)
    p.add_argument("--all", action="store_true", help="stopped and silent ones too")
    p.add_argument("--json", action="store_true", help="one JSON object per daemon")

    p = add("escalations", cmd_escalations, "leads a person must look at")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--all", action="store_true", help="resolved ones too")
    p.add_argument("--json", action="store_true")

    def who(p: argparse.ArgumentParser, *, reason_required: bool) -> None:
        p.add_argument(
            "--reason", required=reason_required, metavar="TEXT", help="why (in the event)"
        )
        p.add_argument("--by", metavar="NAME", help="who (default: admin:<OS user>)")

    for name, func, text in (
        ("pause", cmd_pause, "pause all sending (mail stays queued), one mailbox or one lead"),
        ("resume", cmd_resume, "resume what `leadloop pause` or the circuit breaker paused"),
    ):
        p = add(name, func, text)
        target = p.add_mutually_exclusive_group()
        target.add_argument("--mailbox", metavar="NAME")
        target.add_argument("--lead", metavar="EMAIL")
        who(p, reason_required=name == "pause")
    p = add("suppress", cmd_suppress, "never mail this address")
    p.add_argument("address")
    who(p, reason_required=True)
    p = add("unsuppress", cmd_unsuppress, "lift a suppression (an erased one by its HMAC)")
    p.add_argument("address")
    who(p, reason_required=False)
    p = add("suppressions", cmd_suppressions, "the suppressed addresses")
    p.add_argument("--json", action="store_true", help="one JSON object per entry")

    retention = sub.add_parser("retention", help="[privacy] raw_mail_days").add_subparsers(
        dest="retention_command", required=True, metavar="ACTION"
    )
    p = add("run", cmd_retention, "strip raw mail older than raw_mail_days now", into=retention)
    p.add_argument("--json", action="store_true")
    p.add_argument("--by", metavar="NAME", help="who (default: admin:<OS user>)")

    p = add("preview", cmd_preview, "the next cadence touch for a lead (or five), unsent")
    p.add_argument("--lead", metavar="EMAIL")
    p.add_argument("--json", action="store_true", help="one JSON object per lead")

    p = add("classify", cmd_classify, "understand replies: one JSON object per input")
    p.add_argument("files", nargs="+", metavar="FILE", help=".eml, a text body, or - (stdin)")

    p = add("replay", cmd_replay, "replay a folder of .eml files (JSON lines)")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="JSON lines (the only output format)")
    p.add_argument(
        "--expect",
        metavar="FILE.yaml",
        help="expected kind, intent and action per file; mismatches go to stderr, exit 1",
    )

    p = add("report", cmd_report, "the agent's metrics: a table, --json, or --html FILE")
    p.add_argument("--since", metavar="DATE", help="start (default: --days before --until)")
    p.add_argument("--until", metavar="DATE", help="end, exclusive (default: tomorrow, UTC)")
    p.add_argument("--days", type=int, default=7, help="length of the range (default 7)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")

    digest = sub.add_parser("digest", help="the sellers' daily digest").add_subparsers(
        dest="digest_command", required=True, metavar="ACTION"
    )
    p = add("preview", cmd_digest_preview, "a seller's digest as it would go out now", into=digest)
    p.add_argument("--seller", required=True, metavar="ADDRESS")
    p.add_argument("--html", action="store_true", help="print the HTML part instead of the text")

    events = sub.add_parser("events", help="CRM / e-commerce events").add_subparsers(
        dest="events_command", required=True, metavar="ACTION"
    )
    p = add("export", cmd_events_export, "events as JSON lines", into=events)
    p.add_argument("--since", metavar="DATE", help="only events at or after this time")

    p = add("demo", cmd_demo, "the whole loop on loopback servers with simulated buyers")
    p.add_argument("--leads", type=int, default=20, help="sample leads (default 20)")
    p.add_argument("--days", type=int, default=21, help="simulated days (default 21)")
    p.add_argument(
        "--html",
        metavar="FILE",
        default="leadloop-demo-report.html",
        help="where the HTML report goes (default: ./leadloop-demo-report.html)",
    )
    p.add_argument("--quiet", action="store_true", help="no conversation lines, no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    _setup_logging("warning")
    from leadloop.storage.db import DatabaseError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    except DatabaseError as exc:
        print(f"leadloop: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except KeyboardInterrupt:
        return 130
