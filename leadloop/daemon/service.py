"""The daemon: one asyncio process running the mailbox watchers, the stage
runner and the scheduler bell.

SIGTERM and SIGINT stop it gracefully: no new work is taken, the message in
hand is finished and committed, and the process exits 0.  SIGHUP reloads the
configuration; an invalid edit is refused and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from leadloop import __version__
from leadloop import config as config_module
from leadloop.agent.cadence import CadenceSettings, Planner
from leadloop.agent.controls import ControlError, send_paused, use_privacy_key
from leadloop.agent.due import run_due
from leadloop.agent.outbox import OutboxSettings
from leadloop.agent.pipeline import Pipeline, Stage
from leadloop.agent.policy_stages import ActStage, DecideStage, Policy
from leadloop.agent.screening import ScreenStage
from leadloop.agent.staff import Staff
from leadloop.agent.stages import build_stages, token_keys
from leadloop.agent.tracking import ScannerRules
from leadloop.agent.understand import seed_budget
from leadloop.auth import AlertHook, secret_source
from leadloop.channels.base import AuthError, ChannelError, Inbox, TransientChannelError
from leadloop.channels.exchange import ExchangeInbox, ExchangeSettings, ExchangeTransport
from leadloop.channels.imap import IDLE_MAX_SECONDS, ImapInbox, ImapSettings
from leadloop.channels.maildir import MaildirInbox
from leadloop.channels.smtp import SmtpSettings
from leadloop.clock import Clock, SystemClock
from leadloop.config import ConfigError, LoadedConfig, MailboxConfig
from leadloop.daemon.alerts import AlertMailer
from leadloop.daemon.ingest import ingest_once
from leadloop.daemon.notify import Heartbeats, Notifier
from leadloop.daemon.prom import MailboxHealth, Metrics
from leadloop.daemon.sender import Sender, SentFolder, Transport
from leadloop.daemon.tasks import TaskKeeper
from leadloop.daemon.web import Health, Web, WebSettings
from leadloop.knowledge.catalog import Catalog, CatalogError, load_catalog
from leadloop.knowledge.sources import SourceMissing, Sources
from leadloop.mail.validate import Validator
from leadloop.policy.playbook import PlaybookError
from leadloop.report.events import EventPusher
from leadloop.report.weekly import send_weekly_summary
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.locks import AdvisoryLock
from leadloop.storage.models import DaemonRow
from leadloop.storage.models import InboundMessage as InboundModel
from leadloop.storage.models import Mailbox as MailboxRow
from leadloop.storage.models import OutboundMessage as OutboundModel
from leadloop.storage.models import ScheduledTask as TaskModel

log = logging.getLogger("leadloop.daemon.service")

PID_FILE = "leadloop.pid"
SEND_ROUND = 200
"""Mails the stage runner sends before it looks for inbound work again."""


class MailboxLoginsRefused(Exception):
    """Every mailbox refused our login at start: a wrong password or token,
    which no restart fixes (exit 77)."""


class AlreadyRunning(Exception):
    """Another leadloop holds this state directory's instance lock."""


# Reconnect backoff: 1 s doubling to 5 minutes, with jitter so that many
# mailboxes on one server do not retry in step.  After the third refused
# login, at most one login per 5 minutes, so the server never locks us out.
JOB_RETRY = timedelta(hours=1)
"""A periodic job (research, retention) that failed is tried again this much later."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
AUTH_FAILURES_BEFORE_SLOWDOWN = 3


def build_inbox(box: MailboxConfig, loaded: LoadedConfig, alert: AlertHook | None = None) -> Inbox:
    if box.kind == "maildir":
        return MaildirInbox(
            box.name,
            loaded.data_path(box.maildir_path),
            acknowledge=box.acknowledge,
            move_to=box.move_to,
        )
    if box.kind == "exchange":
        return build_exchange_inbox(box, loaded, alert)
    assert box.host is not None and box.username is not None
    secret = _mailbox_secret(box, loaded, alert)
    settings = ImapSettings(
        host=box.host,
        port=box.imap_port,
        security=box.security,
        username=box.username,
        auth=box.auth,
        folder=box.folder,
        acknowledge=box.acknowledge,
        keyword=box.keyword,
        move_to=box.move_to,
        idle=box.idle,
        timeout=box.timeout.total_seconds(),
        tls_verify=box.tls_verify,
        ca_file=loaded.input_path(box.ca_file) if box.ca_file else None,
    )
    return ImapInbox(box.name, settings, secret)


def _mailbox_secret(
    box: MailboxConfig, loaded: LoadedConfig, alert: AlertHook | None
) -> Callable[[], Awaitable[str]]:
    """The mailbox's password (IMAP, NTLM, basic), static token or current
    OAuth2 access token, fetched at each login."""
    source = secret_source(loaded, box, alert=alert)

    async def secret() -> str:
        value = await source()
        if value is None:
            raise AuthError(f"mailbox {box.name} has no password or token")
        return value

    return secret


def build_exchange_inbox(
    box: MailboxConfig, loaded: LoadedConfig, alert: AlertHook | None = None
) -> ExchangeInbox:
    """An Exchange mailbox over EWS; its inbox and its transport share one
    session (one semaphore and throttle gate) per event loop."""
    assert box.ews_url is not None and box.username is not None
    secret = _mailbox_secret(box, loaded, alert)
    settings = ExchangeSettings(
        url=box.ews_url,
        address=box.address,
        username=box.username,
        auth=box.auth,
        access=box.access,
        folder=box.folder,
        acknowledge=box.acknowledge,
        move_to=box.move_to,
        timeout=box.timeout.total_seconds(),
    )
    return ExchangeInbox(box.name, settings, secret)


def build_planner(
    loaded: LoadedConfig, db: Database, send: OutboxSettings, stages: Sequence[Stage] = ()
) -> Planner:
    """The cadence planner; the act stage among *stages* writes the touches'
    ``{insight}`` from knowledge."""
    writer = next((s for s in stages if isinstance(s, ActStage)), None)
    check = loaded.settings.validation
    validator = (
        Validator(check.nameservers or None, port=check.port, timeout=check.timeout.total_seconds())
        if check.dns
        else None
    )
    return Planner(db, CadenceSettings.from_config(loaded), send, writer, validator)


def build_sender(
    loaded: LoadedConfig, db: Database, clock: Clock, owner: str, alert: AlertHook | None = None
) -> Sender:
    """The outbox's sender for *loaded*: its SMTP relay and, for mailboxes
    with ``sent_copy``, an IMAP connection to their Sent folder."""
    settings = loaded.settings
    folders: dict[str, SentFolder] = {}
    for box in settings.mailboxes:
        if box.sent_copy != "none" and box.kind == "imap":
            inbox = build_inbox(box, loaded, alert)
            assert isinstance(inbox, ImapInbox)
            folders[box.name] = inbox
    # Exchange mailboxes send through their own server (EWS), which files the
    # sent copy; an in-doubt send is looked up in their Sent Items.
    transports: dict[str, Transport] = {}
    for box in settings.mailboxes:
        if box.kind == "exchange":
            exchange = build_exchange_inbox(box, loaded, alert)
            transports[box.name] = ExchangeTransport(exchange)
            if box.sent_copy == "server":
                folders[box.name] = exchange
    drafts: dict[str, SentFolder] = {}
    for seller in settings.sellers:
        own = next((b for b in settings.mailboxes if b.name == seller.mailbox), None)
        if own is not None and own.kind != "maildir" and own.name not in drafts:
            inbox = build_inbox(own, loaded, alert)  # IMAP or Exchange: both file drafts
            assert isinstance(inbox, (ImapInbox, ExchangeInbox))
            drafts[own.name] = inbox
    return Sender(
        db,
        OutboxSettings.from_config(loaded, token_keys(loaded)),
        SmtpSettings.from_config(settings.smtp, loaded.config_dir),
        secret_source(loaded, "smtp", alert=alert),
        clock,
        worker=owner,
        connections=settings.smtp.connections,
        sent_folders=folders,
        transports=transports,
        draft_folders=drafts,
    )


@dataclass
class Watcher:
    """One mailbox being watched; its failures are its own."""

    config: MailboxConfig
    inbox: Inbox
    mailbox_id: int
    poller: AdvisoryLock
    """This daemon polls the mailbox only while it holds this lock (one
    poller per mailbox across daemons sharing a PostgreSQL database)."""
    polling: bool = False
    opened: bool = False
    failing: str | None = None
    failures: int = 0
    auth_failures: int = 0
    retry_at: float = 0.0
    last_ok: datetime | None = None
    """When the last poll succeeded (``/healthz``, ``/metrics``)."""
    polled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the first poll has an outcome (logged in, or failed)."""
    again: bool = False
    listener: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while the last poll succeeded: the IDLE listener logs in only then,
    so a refused password is tried by one connection, not two."""

    def backoff(self, exc: ChannelError) -> float:
        """Count a failure and return how long to wait before the next try."""
        self.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (self.failures - 1))
        if isinstance(exc, AuthError):
            self.auth_failures += 1
            if self.auth_failures >= AUTH_FAILURES_BEFORE_SLOWDOWN:
                return BACKOFF_MAX
        return delay * random.uniform(0.8, 1.2)

    def recovered(self) -> None:
        self.failures = self.auth_failures = 0
        self.retry_at = 0.0


class InstanceLock:
    """One daemon per state directory and per SQLite database: lock files
    held for the life of the process, plus the PID file that ``leadloop
    reload`` reads.  Two state directories pointing at one SQLite file
    would each pass the first lock; the second lock, beside the database,
    refuses that (several daemons need PostgreSQL)."""

    def __init__(self, state_dir: Path, sqlite_file: Path | None = None) -> None:
        self.lock_path = state_dir / "leadloop.lock"
        self.pid_path = state_dir / PID_FILE
        self.db_lock_path = (
            sqlite_file.with_name(sqlite_file.name + ".leadloop-lock") if sqlite_file else None
        )
        self._handle: IO[str] | None = None
        self._db_handle: IO[str] | None = None

    def acquire(self) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            pid = read_pid(self.pid_path.parent)
            raise AlreadyRunning(
                f"another leadloop (pid {pid or 'unknown'}) is running with state directory "
                f"{self.lock_path.parent}"
            ) from None
        if self.db_lock_path is not None:
            try:
                self._db_handle = self._lock_database(self.db_lock_path)
            except AlreadyRunning:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
                raise
        self._handle = handle
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.pid_path)

    def _lock_database(self, path: Path) -> IO[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            database = path.with_name(path.name.removesuffix(".leadloop-lock"))
            raise AlreadyRunning(
                f"another leadloop ({holder}) is running on the SQLite database {database}; "
                "SQLite serves one daemon: give each its own database, or use PostgreSQL "
                "for several"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, state directory {self.lock_path.parent}\n")
        handle.flush()
        return handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if read_pid(self.pid_path.parent) == os.getpid():
                self.pid_path.unlink()
        if self._db_handle is not None:
            fcntl.flock(self._db_handle, fcntl.LOCK_UN)
            self._db_handle.close()
            self._db_handle = None
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def sqlite_file(loaded: LoadedConfig) -> Path | None:
    """The SQLite database file the daemon uses; None on PostgreSQL or in memory."""
    from sqlalchemy.engine import make_url

    url = make_url(loaded.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve()


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


class Service:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        clock: Clock | None = None,
        stages: list[Stage] | None = None,
    ) -> None:
        self.loaded = loaded
        self.clock = clock or SystemClock()
        self.stages = stages
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.tasks = TaskKeeper()
        self.watchers: dict[str, Watcher] = {}
        self.lock = InstanceLock(loaded.state_dir, sqlite_file(loaded))
        self.db: Database | None = None
        self.pipeline: Pipeline | None = None
        self.sender: Sender | None = None
        self.planner: Planner | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.beats = Heartbeats()
        self.logins_refused = False
        self.pusher = _event_pusher(loaded)
        self.planner_lock: AdvisoryLock | None = None
        self.web: Web | None = None
        self._config_seen = _fingerprint(loaded.file)

    # -- start and stop ---------------------------------------------------
    async def start(self) -> None:
        settings = self.loaded.settings
        self.lock.acquire()
        try:
            # The kept key erased addresses are suppressed by (``leads erase``).
            use_privacy_key(self.loaded)
            self.db = await open_database(
                self.loaded.database_url,
                pool_size=settings.database.pool_size,
                busy_timeout=settings.database.busy_timeout.total_seconds(),
            )
            self.pipeline = Pipeline(
                self.db,
                self.clock,
                owner=self.owner,
                stages=self.stages
                or build_stages(self.loaded, token_keys(self.loaded), now=self.clock.now),
                max_attempts=settings.pipeline.max_attempts,
                retry_backoff=settings.pipeline.retry_backoff,
                lease=settings.pipeline.lease,
            )
            # On SQLite this is the only daemon (the instance lock), so every
            # claim left in the database is a crashed one.
            await self.pipeline.recover(all_claims=self.db.is_sqlite)
            await seed_budget(self.db, self.pipeline.stages, self.clock.now())
            await self._sync_watchers()
            self.sender = build_sender(self.loaded, self.db, self.clock, self.owner, self._alert)
            self.sender.observe = self.metrics.observe_send
            if not self.db.is_sqlite:
                self.sender.live_owners = self.live_owners
            await self.sender.recover(all_claims=self.db.is_sqlite)
            self.planner = build_planner(
                self.loaded, self.db, self.sender.settings, self.pipeline.stages
            )
            await self._register()
        except BaseException:
            await self._close()
            raise
        log.info(
            "started pid=%d mailboxes=%d state_dir=%s",
            os.getpid(),
            len(self.watchers),
            self.loaded.state_dir,
        )

    async def _sync_watchers(self) -> None:
        assert self.db is not None
        wanted = {box.name: box for box in self.loaded.settings.mailboxes}
        for name in list(self.watchers):
            if name not in wanted or wanted[name] != self.watchers[name].config:
                watcher = self.watchers.pop(name)
                self.beats.forget(f"mailbox {name}")
                if watcher.listener is not None:
                    watcher.listener.cancel()
                await watcher.inbox.close()
                await watcher.poller.release()
        for name, box in wanted.items():
            if name in self.watchers:
                continue
            async with self.db.transaction() as session:
                row = await repo.ensure_mailbox(session, box.name, box.kind, box.address)
            inbox = build_inbox(box, self.loaded, self._alert)
            self.watchers[name] = Watcher(
                box, inbox, row.id, AdvisoryLock(self.db, f"mailbox:{box.name}")
            )
            silence = self.loaded.settings.service.watchdog_silence.total_seconds()
            self.beats.expect(
                f"mailbox {name}", max(silence, 3 * box.poll_interval.total_seconds())
            )
            if self.scheduler is not None:  # running: a reload added or changed it
                self._start_watcher(self.watchers[name])

    async def run(self, *, once: bool = False) -> None:
        """Start, work until stopped (or, with *once*, until nothing is left), stop."""
        await self.start()
        try:
            if once:
                await self.run_once()
                return
            self._install_signals()
            await self.start_listeners()
            self._start_scheduler()
            self.beats.expect(
                "stages", self.loaded.settings.service.watchdog_silence.total_seconds()
            )
            assert self.pipeline is not None
            self.pipeline.on_claim = lambda: self.beats.beat("stages")
            runner = self.tasks.start(self._runner(), "stage-runner")
            for watcher in self.watchers.values():
                self._start_watcher(watcher)
            # The configuration and the database are good: ready.  Mailboxes
            # report in STATUS= and /healthz; one that is down is an alert,
            # never a restart loop.
            self.notifier.ready(await self.status_line())
            self.tasks.start(self._watchdog(), "watchdog")
            self.tasks.start(self._check_logins(), "first-logins")
            await self.stop_event.wait()
            self.notifier.stopping()
            log.info("stopping: finishing the message in hand")
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
            self.wake.set()
            timeout = self.loaded.settings.service.stop_timeout.total_seconds()
            try:
                await asyncio.wait_for(asyncio.shield(runner), timeout)
            except TimeoutError:
                log.error(
                    "the stage runner did not finish within %.0fs; its claim is kept", timeout
                )
            except Exception:
                pass  # it crashed earlier; the task keeper logged it then
        finally:
            await self._close()
        log.info("stopped")
        if self.logins_refused:
            raise MailboxLoginsRefused("every mailbox refused the login at start")

    async def run_once(self) -> None:
        """Fetch every mailbox, do due work and process everything, then return."""
        assert self.pipeline is not None and self.db is not None
        for watcher in self.watchers.values():
            await self.poll(watcher)
        await run_due(
            self.db,
            self.clock.now(),
            owner=self.owner,
            lease=self.loaded.settings.scheduler.lease,
            context=self.planner,
        )
        await self.pipeline.run_pending()
        await self.plan_touches()
        await self.weekly_summary()
        await self.periodic_jobs()
        await self.send_due()
        await self.mail_alerts()
        await self.push_events()

    def _start_watcher(self, watcher: Watcher) -> None:
        name = watcher.config.name
        self.tasks.start(self.poll(watcher), f"poll-{name}")
        if isinstance(watcher.inbox, ImapInbox) and watcher.inbox.can_push:
            watcher.listener = self.tasks.start(self.listen(watcher), f"idle-{name}")

    def stop(self) -> None:
        self.stop_event.set()

    async def _close(self) -> None:
        await self.tasks.cancel_all()
        if self.web is not None:
            with contextlib.suppress(Exception):
                await self.web.stop()
        if self.sender is not None:
            with contextlib.suppress(Exception):
                await self.sender.close()
        for watcher in self.watchers.values():
            with contextlib.suppress(Exception):
                await watcher.inbox.close()
            with contextlib.suppress(Exception):
                await watcher.poller.release()
        if self.planner_lock is not None:
            with contextlib.suppress(Exception):
                await self.planner_lock.release()
        if self.db is not None:
            with contextlib.suppress(Exception):
                await self._register(stopped=True)
            await self.db.dispose()
        self.lock.release()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)

    def _start_scheduler(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._schedule_jobs()
        self.scheduler.start()

    def _schedule_jobs(self) -> None:
        assert self.scheduler is not None
        scheduler = self.scheduler
        scheduler.remove_all_jobs()
        settings = self.loaded.settings
        tick = settings.scheduler.tick.total_seconds()

        def every(seconds: float, job: Any, job_id: str, *args: Any, instances: int = 1) -> None:
            scheduler.add_job(
                job,
                "interval",
                args=list(args),
                seconds=seconds,
                id=job_id,
                max_instances=instances,
                coalesce=True,
            )

        every(tick, self.bell, "bell")
        # Its own job: a research run over thousands of leads (a minute or
        # more, once a day; bench/research.py) never holds up the bell.
        every(tick, self.periodic_jobs, "periodic")
        if self.pusher is not None:
            every(tick, self.push_events, "events")
        if settings.service.watch_config:
            every(
                settings.service.watch_interval.total_seconds(),
                self.check_config_file,
                "config-watch",
            )
        for watcher in self.watchers.values():
            # poll() itself folds overlapping calls into one; a second
            # instance only marks that another round is wanted.
            seconds = watcher.config.poll_interval.total_seconds()
            every(seconds, self.poll, f"poll-{watcher.config.name}", watcher, instances=2)

    # -- several daemons -------------------------------------------------------
    async def _may_poll(self, watcher: Watcher) -> bool:
        """Hold the mailbox's poll lock, or let the daemon that holds it poll."""
        name = watcher.config.name
        if await watcher.poller.hold():
            if not watcher.polling:
                watcher.polling = True
                with contextlib.suppress(SQLAlchemyError):
                    await self._register()  # cluster status shows it at once
                if not self.db or not self.db.is_sqlite:
                    log.info("mailbox=%s polled by this daemon (%s)", name, self.owner)
                    why = f"mailbox {name} polled by {self.owner}"
                    await self._record("mailbox.poller", why)
            return True
        if watcher.polling or not watcher.polled.is_set():
            log.info("mailbox=%s polled by another daemon", name)
        watcher.polling = False
        watcher.ready.clear()
        if watcher.opened:
            watcher.opened = False
            with contextlib.suppress(Exception):
                await watcher.inbox.close()
        watcher.polled.set()
        return False

    async def _record(self, kind: str, reason: str) -> None:
        """An event that is not an alert (no mail to the operators)."""
        assert self.db is not None
        with contextlib.suppress(Exception):
            async with self.db.transaction() as session:
                repo.add_event(
                    session, kind, actor=self.owner, now=self.clock.now(), reasons=[reason]
                )

    async def _register(self, *, stopped: bool = False) -> None:
        """This daemon's row in ``daemons`` (``leadloop cluster status``)."""
        assert self.db is not None
        now = self.clock.now()
        mine = sorted(n for n, w in self.watchers.items() if w.polling and not stopped)
        async with self.db.transaction() as session:
            row = await session.get(DaemonRow, self.owner)
            if row is None:
                host, _, pid = self.owner.rpartition(":")
                row = DaemonRow(
                    id=self.owner,
                    host=host,
                    pid=int(pid) if pid.isdigit() else 0,
                    version=__version__,
                    started_at=now,
                    seen_at=now,
                    mailboxes=mine,
                )
                session.add(row)
            row.seen_at, row.mailboxes = now, mine
            row.stopped_at = now if stopped else None

    async def reclaim(self) -> int:
        """Claims whose lease ran out (a daemon died holding them) go back to
        the others: messages in work, due tasks, mail being sent.  Only where
        several daemons share the database; on SQLite the start does it."""
        if self.db is None or self.db.is_sqlite or self.pipeline is None:
            return 0
        # Only a gone daemon's claims: a live one (this one included) may be
        # slow, and taking its work would do it twice.
        live = await self.live_owners()
        count = await self.pipeline.recover(all_claims=False, keep=live)
        async with self.db.transaction() as session:
            count += await repo.release_expired_due(session, self.clock.now(), keep=live)
        if self.sender is not None:
            count += await self.sender.recover(all_claims=False, keep=live)
        return count

    async def live_owners(self) -> set[str]:
        """The daemons sharing the database that showed they are alive within
        three ticks (at least 30 s), and this one."""
        assert self.db is not None
        window = max(3 * self.loaded.settings.scheduler.tick, timedelta(seconds=30))
        async with self.db.sessions() as session:
            seen = await session.scalars(
                select(DaemonRow.id).where(
                    DaemonRow.stopped_at.is_(None), DaemonRow.seen_at >= self.clock.now() - window
                )
            )
            return {*seen, self.owner}

    async def claims(self) -> dict[str, int]:
        """What this daemon holds now: messages in work, due tasks, mail being sent."""
        assert self.db is not None
        async with self.db.sessions() as session:
            return {
                "inbound": await session.scalar(
                    select(func.count()).where(
                        InboundModel.status == repo.CLAIMED, InboundModel.claimed_by == self.owner
                    )
                )
                or 0,
                "due": await session.scalar(
                    select(func.count()).where(
                        TaskModel.status == repo.CLAIMED, TaskModel.claimed_by == self.owner
                    )
                )
                or 0,
                "outbox": await session.scalar(
                    select(func.count()).where(
                        OutboundModel.status == "sending", OutboundModel.claimed_by == self.owner
                    )
                )
                or 0,
            }

    # -- systemd ------------------------------------------------------------
    async def _watchdog(self) -> None:
        """WATCHDOG=1 while every loop beats; STATUS= kept current."""
        interval = self.notifier.watchdog or 10.0
        wedged: list[str] = []
        last_status = ""
        while not self.stop_event.is_set():
            silent = self.beats.silent()
            if not silent:
                if self.notifier.watchdog:
                    self.notifier.ping()
                if wedged:
                    log.info("watchdog: every loop beats again")
            elif silent != wedged:
                log.error("watchdog: %s silent too long; withholding WATCHDOG=1", ", ".join(silent))
                self.metrics.error("watchdog")
            wedged = silent
            try:
                status = await self.status_line()
            except Exception:
                status = "database unavailable"
            if status != last_status:
                self.notifier.status(status)
                last_status = status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), interval)

    async def status_line(self) -> str:
        """``STATUS=``: mailboxes up, queue depth, paused senders."""
        mine = {n: w for n, w in self.watchers.items() if w.polling or not w.polled.is_set()}
        up = [n for n, w in mine.items() if w.failing is None and w.last_ok is not None]
        down = [
            f"{n}: {w.failing}" if w.failing else f"{n}: not polled yet"
            for n, w in mine.items()
            if n not in up
        ]
        text = f"mailboxes {len(up)}/{len(mine)} up"
        if down:
            text += f" ({'; '.join(down)[:120]})"
        if elsewhere := len(self.watchers) - len(mine):
            text += f", {elsewhere} polled by other daemons"
        if self.db is None:
            return text
        async with self.db.sessions() as session:
            inbound = await session.scalar(
                select(func.count())
                .select_from(InboundModel)
                .where(InboundModel.status == repo.PENDING)
            )
            outbox = await session.scalar(
                select(func.count())
                .select_from(OutboundModel)
                .where(OutboundModel.status == "queued")
            )
            paused = list(
                await session.scalars(
                    select(MailboxRow.name).where(MailboxRow.send_paused_at.is_not(None))
                )
            )
        text += f"; queue: {inbound or 0} in, {outbox or 0} out"
        text += f"; paused senders: {', '.join(paused) if paused else 'none'}"
        async with self.db.sessions() as session:
            stopped = await send_paused(session)
        if stopped is not None:
            text += f"; all sending paused by {stopped.actor}: {stopped.reason}"
        if not self.db.is_sqlite:
            held = await self.claims()
            text += (
                f"; daemon {self.owner} claims {held['inbound']} in, "
                f"{held['due']} due, {held['outbox']} sending"
            )
        return text

    async def _check_logins(self) -> None:
        """Stop with exit 77 when every mailbox refused the login at start
        (a wrong password or token: no restart fixes it).  One that is down
        or refuses while another works is an alert, and the daemon goes on."""
        watchers = list(self.watchers.values())
        if not watchers or any(w.config.kind == "maildir" for w in watchers):
            return  # a local Maildir cannot refuse a login: not every mailbox can fail
        await asyncio.gather(*(w.polled.wait() for w in watchers))
        if all(w.auth_failures and w.last_ok is None for w in watchers):
            log.error(
                "every mailbox refused the login at start (%s); stopping",
                ", ".join(w.config.name for w in watchers),
            )
            self.logins_refused = True
            self.stop()

    # -- the listeners ----------------------------------------------------
    async def start_listeners(self) -> None:
        """The public and admin listeners.  One that cannot bind (a port in
        use) is an alert, not a reason to stop working the leads."""
        assert self.db is not None and self.pipeline is not None
        s = self.loaded.settings
        act = next((st for st in self.pipeline.stages if isinstance(st, ActStage)), None)
        if act is not None:
            policy = act.policy

            def catalog() -> Catalog:
                return policy.catalog
        else:
            loaded_catalog = load_catalog(Sources.from_config(self.loaded).catalog)

            def catalog() -> Catalog:
                return loaded_catalog

        settings = WebSettings(
            keys=token_keys(self.loaded),
            catalog=catalog,
            rules=ScannerRules.from_config(
                s.tracking.scanner_agents, s.tracking.scanner_after, s.tracking.burst
            ),
            utm={
                "source": s.tracking.utm_source,
                "medium": s.tracking.utm_medium,
                "campaign": s.tracking.utm_campaign,
            },
            conversion_secret=self.loaded.secret("conversions"),
            tolerance=s.conversions.tolerance,
        )
        self.web = Web(
            self.db,
            self.clock,
            settings,
            metrics=self.metrics,
            health=self.health,
            mailboxes=self.mailbox_health,
        )
        listeners = [
            ("public", s.tracking.enabled, self.web.public_app, s.tracking.host, s.tracking.port),
            ("admin", s.admin.enabled, self.web.admin_app, s.admin.host, s.admin.port),
        ]
        for name, enabled, app, host, port in listeners:
            if not enabled:
                continue
            try:
                await self.web.start(name, app(), host, port)
            except OSError as exc:
                log.error("the %s listener cannot listen on %s:%d: %s", name, host, port, exc)
                self.metrics.error("listener")
                await self._alert("alert.listener", f"{name} listener on {host}:{port}: {exc}")

    def mailbox_health(self) -> list[MailboxHealth]:
        return [
            MailboxHealth(
                name,
                w.failing is None and w.last_ok is not None,
                w.last_ok.timestamp() if w.last_ok else None,
            )
            for name, w in self.watchers.items()
        ]

    async def health(self) -> Health:
        """The database, each mailbox, the last successful poll, paused senders."""
        assert self.db is not None
        mailboxes = [
            {
                "name": name,
                # Polled by another daemon sharing the database: its business.
                "ok": (w.failing is None and w.last_ok is not None)
                or (w.polled.is_set() and not w.polling),
                "polled_here": w.polling,
                "last_poll": w.last_ok.isoformat() if w.last_ok else None,
                "error": w.failing,
            }
            for name, w in self.watchers.items()
        ]
        try:
            async with self.db.sessions() as session:
                paused = (
                    await session.scalars(
                        select(MailboxRow).where(MailboxRow.send_paused_at.is_not(None))
                    )
                ).all()
                senders = [
                    {
                        "mailbox": m.name,
                        "since": m.send_paused_at.isoformat() if m.send_paused_at else None,
                        "reason": m.send_paused_reason,
                    }
                    for m in paused
                ]
            claims = await self.claims()
        except Exception as exc:
            return Health(f"{type(exc).__name__}: {exc}", mailboxes, [], self.owner)
        return Health(None, mailboxes, senders, self.owner, claims)

    # -- the work ---------------------------------------------------------
    async def bell(self) -> None:
        """The scheduler's tick: do due work, then let the runner look again."""
        if self.stop_event.is_set():
            return
        assert self.db is not None
        try:
            await self._register()
            if reclaimed := await self.reclaim():
                log.warning("took over %d claims whose lease ran out", reclaimed)
        except (SQLAlchemyError, OSError) as exc:
            log.error("the database failed (%s); due work waits for the next tick", exc)
            self.metrics.error("database")
            return
        except Exception:
            log.exception("the cluster sweep failed; will try at the next tick")
            self.metrics.error("database")
        try:
            ran = await run_due(
                self.db,
                self.clock.now(),
                owner=self.owner,
                lease=self.loaded.settings.scheduler.lease,
                context=self.planner,
            )
        except Exception:
            log.exception("due work failed; will try at the next tick")
            self.metrics.error("due")
            return
        if ran:
            log.info("due tasks run=%d", ran)
        await self.plan_touches()
        await self.mail_alerts()
        await self.weekly_summary()
        self.wake.set()

    async def mail_alerts(self) -> None:
        """Alerts raised since the last sweep go to ``[alerts] to``."""
        mailer = AlertMailer.from_config(self.loaded)
        if mailer is None or self.db is None:
            return
        try:
            sent = await mailer.sweep(self.db, self.loaded, self.clock.now())
        except Exception:
            log.exception("mailing alerts failed; will try at the next tick")
            self.metrics.error("alerts")
            return
        if sent:
            log.info("alerts mailed=%d to=%s", sent, ",".join(mailer.to))

    async def weekly_summary(self) -> None:
        """The supervisors' weekly summary, once it is due (``[report]``)."""
        if self.db is None or self.sender is None:
            return
        try:
            queued = await send_weekly_summary(
                self.db, self.loaded, self.sender.settings, self.clock.now()
            )
        except Exception:
            log.exception("the weekly summary failed; will try at the next tick")
            self.metrics.error("report")
            return
        if queued is not None:
            log.info("weekly summary queued outbound=%d", queued)
            self.wake.set()

    async def periodic_jobs(self) -> None:
        """Research and prioritization (``[research] interval``), the sellers'
        digests (each tick; each is queued once per seller and local day) and
        retention (daily, with ``[privacy] raw_mail_days``).  Each job runs
        on one daemon of those sharing the database; a failure waits for the
        next tick."""
        if self.db is None or self.sender is None:
            return
        from leadloop.report.digest import send_due_digests
        from leadloop.research.job import (
            RESEARCH_JOB,
            RETENTION_JOB,
            claim_run,
            run_research,
        )

        settings = self.loaded.settings
        now = self.clock.now()
        staff = self.planner.staff if self.planner is not None else None
        interval, claimed = settings.research.interval, False
        try:
            if staff is not None and await claim_run(self.db, RESEARCH_JOB, interval, now):
                claimed = True
                log.info("research run %s", await run_research(self.db, self.loaded, staff, now))
        except Exception:
            log.exception("the research job failed; will try again in %s", JOB_RETRY)
            self.metrics.error("research")
            if claimed:
                await self._release(RESEARCH_JOB, interval, now)
        try:
            async with self.db.transaction() as session:
                queued = await send_due_digests(session, self.loaded, self.sender.settings, now)
            if queued:
                log.info("seller digests queued=%d", queued)
                self.wake.set()
        except Exception:
            log.exception("the seller digests failed; will try at the next tick")
            self.metrics.error("digest")
        day, claimed = timedelta(days=1), False
        try:
            if settings.privacy.raw_mail_days and await claim_run(self.db, RETENTION_JOB, day, now):
                from leadloop.agent.controls import run_retention

                claimed = True
                stripped = await run_retention(self.db, self.loaded, now)
                log.info("retention stripped=%d messages older than %d days",
                         stripped, settings.privacy.raw_mail_days)  # fmt: skip
        except Exception:
            log.exception("retention failed; will try again in %s", JOB_RETRY)
            self.metrics.error("retention")
            if claimed:
                await self._release(RETENTION_JOB, day, now)

    async def _release(self, job: str, every: timedelta, now: datetime) -> None:
        """Give a failed periodic job back, to be tried again in JOB_RETRY."""
        from leadloop.research.job import release_run

        assert self.db is not None
        try:
            await release_run(self.db, job, every, now, retry_in=JOB_RETRY)
        except Exception:  # the database itself is failing: the next period then
            log.exception("could not give back the %s run", job)

    async def push_events(self) -> None:
        """New events to ``[events] webhook_url`` (its own job: a slow
        endpoint never holds up the bell)."""
        if self.pusher is None or self.db is None:
            return
        try:
            await self.pusher.sweep(self.db, self.clock.now())
        except Exception:
            log.exception("pushing events failed; will try at the next tick")
            self.metrics.error("events")

    async def plan_touches(self) -> None:
        """The cadence tick; a failure is logged and tried again next tick.
        Daemons sharing a PostgreSQL database plan one at a time: the one
        holding the planner lock (another takes it over when it dies)."""
        if self.planner is None or self.db is None:
            return
        if self.planner_lock is None:
            self.planner_lock = AdvisoryLock(self.db, "planner")
        if not await self.planner_lock.hold():
            return
        try:
            result = await self.planner.tick(self.clock.now())
        except Exception:
            log.exception("cadence planning failed; will try at the next tick")
            self.metrics.error("cadence")
            return
        if result.enrolled or result.queued or result.stopped or result.lost:
            log.info(
                "cadence enrolled=%d queued=%d stopped=%d lost=%d",
                result.enrolled,
                result.queued,
                result.stopped,
                result.lost,
            )

    async def poll(self, watcher: Watcher) -> None:
        """Fetch one mailbox.  One failing mailbox never stops the others: it
        backs off on its own, and its outage and recovery are each logged once.

        A poll asked for while one runs (an IDLE push during a scheduled poll)
        is not dropped: the running one goes round again."""
        if self.stop_event.is_set():
            return
        if watcher.lock.locked():
            watcher.again = True
            return
        assert self.db is not None
        async with watcher.lock:
            watcher.again = True
            while watcher.again and not self.stop_event.is_set():
                watcher.again = False
                self.beats.beat(f"mailbox {watcher.config.name}")
                if time.monotonic() < watcher.retry_at:
                    return
                if not await self._may_poll(watcher):
                    return
                try:
                    if not watcher.opened:
                        await watcher.inbox.open()
                        watcher.opened = True
                    stats = await ingest_once(
                        self.db,
                        watcher.inbox,
                        watcher.mailbox_id,
                        self.clock,
                        batch=watcher.config.fetch_batch,
                        max_size=self.loaded.settings.pipeline.max_message_size,
                    )
                except ChannelError as exc:
                    await self._mailbox_failed(watcher, exc)
                    watcher.polled.set()
                    return
                except OSError as exc:
                    await self._mailbox_failed(watcher, TransientChannelError(str(exc)))
                    watcher.polled.set()
                    return
                except SQLAlchemyError as exc:
                    # The database, not the mailbox: nothing was acknowledged;
                    # the next poll (with the usual backoff) fetches it again.
                    log.error("mailbox=%s: the database failed: %s", watcher.config.name, exc)
                    self.metrics.error("database")
                    watcher.retry_at = time.monotonic() + watcher.backoff(
                        TransientChannelError("database")
                    )
                    watcher.polled.set()
                    return
                self.beats.beat(f"mailbox {watcher.config.name}")
                watcher.ready.set()
                watcher.polled.set()
                watcher.last_ok = self.clock.now()
                if watcher.failing is not None:
                    await self._mailbox_recovered(watcher)
                if stats.stored:
                    self.wake.set()

    async def _mailbox_failed(self, watcher: Watcher, exc: ChannelError) -> None:
        watcher.ready.clear()
        self.metrics.error("poll")
        delay = watcher.backoff(exc)
        watcher.retry_at = time.monotonic() + delay
        watcher.opened = False
        with contextlib.suppress(Exception):
            await watcher.inbox.close()
        if watcher.failing is not None:
            log.debug("mailbox=%s still unavailable: %s", watcher.config.name, exc)
            return
        watcher.failing = str(exc)
        is_auth = isinstance(exc, AuthError)
        log.error(
            "mailbox=%s %s: %s; retrying with backoff",
            watcher.config.name,
            "login refused" if is_auth else "unavailable",
            exc,
        )
        # An alert: a system problem, no lead's fault (DESIGN.md).  The
        # notifier that mails [alerts] comes later; the event row is its input.
        await self._alert(
            "alert.mailbox_auth" if is_auth else "alert.mailbox_down",
            f"mailbox {watcher.config.name}: {exc}",
        )

    async def _mailbox_recovered(self, watcher: Watcher) -> None:
        log.info("mailbox=%s recovered", watcher.config.name)
        await self._alert("alert.mailbox_recovered", f"mailbox {watcher.config.name} recovered")
        watcher.failing = None
        watcher.recovered()

    async def _alert(self, kind: str, reason: str) -> None:
        assert self.db is not None
        try:
            async with self.db.transaction() as session:
                repo.add_event(
                    session, kind, actor="daemon", now=self.clock.now(), reasons=[reason]
                )
        except Exception:
            log.exception("could not record %s", kind)

    async def listen(self, watcher: Watcher) -> None:
        """Wait for the server to push new mail (IMAP IDLE) and poll at once
        when it does; the scheduler's interval poll stays as the safety net.

        The fetching connection owns outage handling (backoff, alerts): when
        IDLE fails, the listener polls, which reconnects or records the
        outage, and tries IDLE again after its own growing pause."""
        inbox = watcher.inbox
        assert isinstance(inbox, ImapInbox)
        idle_failures = 0
        while not self.stop_event.is_set():
            await watcher.ready.wait()
            try:
                changed = await inbox.wait_for_mail(IDLE_MAX_SECONDS)
            except ChannelError as exc:
                if self.stop_event.is_set():
                    return
                idle_failures += 1
                pause = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (idle_failures - 1))
                log.debug("mailbox=%s IDLE failed (%s); polling", watcher.config.name, exc)
                await self.poll(watcher)
                await asyncio.sleep(pause * random.uniform(0.8, 1.2))
                continue
            idle_failures = 0
            if changed:
                await self.poll(watcher)
            elif not inbox.can_push:
                return  # the server has no IDLE: the interval poll does the work

    async def _runner(self) -> None:
        assert self.pipeline is not None
        tick = self.loaded.settings.scheduler.tick.total_seconds()
        failures = 0
        while not self.stop_event.is_set():
            self.beats.beat("stages")
            self.wake.clear()
            try:
                stats = await self.pipeline.run_pending(self.stop_event)
            except (SQLAlchemyError, OSError) as exc:  # a refused connect is an OSError
                # A lost database: pause, retry with backoff.  Claims stay
                # correct: what was claimed is retaken after its lease.
                failures += 1
                pause = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 1))
                log.error("the database failed (%s); stages pause %.0fs", exc, pause)
                self.metrics.error("database")
                with contextlib.suppress(TimeoutError):  # new mail or a stop ends the pause
                    await asyncio.wait_for(self.wake.wait(), pause)
                continue
            failures = 0
            if stats.processed:
                log.info(
                    "pipeline processed=%d done=%d retried=%d quarantined=%d",
                    stats.processed,
                    stats.done,
                    stats.retried,
                    stats.quarantined,
                )
            # A bounded share of the outbox per round, so a reply that came in
            # meanwhile is not kept waiting behind thousands of due touches.
            if not self.stop_event.is_set() and await self.send_due(limit=SEND_ROUND):
                self.wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), tick)

    async def send_due(self, limit: int | None = None) -> bool:
        """Drain the outbox (about *limit* mails at most); a failure is logged
        and retried at the next tick.  True when the limit cut it short."""
        if self.sender is None:
            return False
        try:
            result = await self.sender.drain(stop=self.stop_event, limit=limit)
        except Exception:
            log.exception("sending failed; will try at the next tick")
            self.metrics.error("send")
            return False
        if result.claimed:
            log.info(
                "outbox claimed=%d sent=%d other=%d", result.claimed, result.sent, result.other
            )
        return limit is not None and result.claimed >= limit

    # -- reload -----------------------------------------------------------
    def _request_reload(self) -> None:
        self.tasks.start(self.reload(), "reload")

    async def reload(self) -> bool:
        """Apply the configuration file again; keep the running one if it is invalid.

        Cadences, windows, caps, segments and the other policy settings apply
        at once; a mailbox added, changed or removed is watched accordingly.
        The database, the state directory and the brain change only with a
        restart: a reload reports them and keeps running with the old values."""
        self.notifier.reloading()
        try:
            return await self._reload()
        finally:
            self.notifier.ready(await self.status_line())

    async def _reload(self) -> bool:
        self._config_seen = _fingerprint(self.loaded.file)
        try:
            loaded = config_module.load(self.loaded.file)
        except ConfigError as exc:
            log.error("reload refused; the running configuration is kept:\n%s", exc.render())
            return False
        loaded = self._keep_restart_only(loaded)
        try:
            use_privacy_key(loaded)
        except (ControlError, OSError) as exc:
            log.error("reload refused; the running configuration is kept: [privacy]: %s", exc)
            return False
        self.loaded = loaded
        await self._sync_watchers()
        if self.sender is not None and self.db is not None:
            old = self.sender
            self.sender = build_sender(loaded, self.db, self.clock, self.owner, self._alert)
            self.sender.observe = self.metrics.observe_send
            if not self.db.is_sqlite:
                self.sender.live_owners = self.live_owners
            stages = self.pipeline.stages if self.pipeline else ()
            self.planner = build_planner(loaded, self.db, self.sender.settings, stages)
            await old.close()
            self._reload_policy(loaded)
            moved = await self.planner.replan(self.clock.now())
            if moved:
                log.info("cadence: %d next touches planned again for the new configuration", moved)
        if self.scheduler is not None:
            self._schedule_jobs()
        log.info("configuration reloaded from %s", loaded.file)
        return True

    def _reload_policy(self, loaded: LoadedConfig) -> None:
        """[knowledge] (documents, catalog, playbook) applies at once."""
        if self.pipeline is None or self.sender is None:
            return
        stages = [s for s in self.pipeline.stages if isinstance(s, DecideStage | ActStage)]
        if not stages:
            return
        try:
            policy = Policy.from_config(loaded, self.sender.settings)
        except (SourceMissing, CatalogError, PlaybookError) as exc:
            log.error("reload: knowledge not applied, the running one is kept:\n%s", exc)
            return
        staff = Staff.from_config(loaded, self.sender.settings)
        for stage in stages:
            stage.policy = policy
            stage.staff = staff
        for screen in (s for s in self.pipeline.stages if isinstance(s, ScreenStage)):
            if screen.settings.commands is not None:
                screen.settings.commands.staff = staff

    def _keep_restart_only(self, loaded: LoadedConfig) -> LoadedConfig:
        """The new configuration with the running values of the settings that
        need a restart, each one that changed named in a warning."""
        old, new = self.loaded.settings, loaded.settings
        changed = [
            name
            for name, before, after in (
                ("database", old.database, new.database),
                ("service.state_dir", old.service.state_dir, new.service.state_dir),
                ("brain", old.brain, new.brain),
            )
            if before != after
        ]
        if loaded.state_dir != self.loaded.state_dir and "service.state_dir" not in changed:
            changed.append("service.state_dir")
        if not changed:
            return loaded
        log.warning(
            "reload: %s changed; that takes a restart (running with the old values until then)",
            ", ".join(changed),
        )
        service = new.service.model_copy(update={"state_dir": old.service.state_dir})
        settings = new.model_copy(
            update={"database": old.database, "service": service, "brain": old.brain}
        )
        secrets = dict(loaded.secrets)
        if "database" in self.loaded.secrets:
            secrets["database"] = self.loaded.secrets["database"]
        return dataclasses.replace(
            loaded, settings=settings, state_dir=self.loaded.state_dir, secrets=secrets
        )

    async def check_config_file(self) -> bool:
        """With ``service.watch_config``: reload when the file changed on disk
        (an edit in place or a new file renamed over it).  A refused edit is
        not tried again until the file changes once more."""
        seen = _fingerprint(self.loaded.file)
        if seen is None or seen == self._config_seen:
            return False
        log.info("%s changed on disk; reloading", self.loaded.file)
        return await self.reload()


def _event_pusher(loaded: LoadedConfig) -> EventPusher | None:
    events = loaded.settings.events
    secret = loaded.secret("events")
    if not events.webhook_url or not secret:
        return None
    return EventPusher(events.webhook_url, secret, events.batch, events.timeout, events.max_backoff)


def _fingerprint(path: Path) -> str | None:
    """A version of the config file: the digest of its bytes.  Plain polling,
    written here: an inotify library would add a native dependency, and
    reading a small file every few seconds also sees edits on network file
    systems and files renamed into place, and ignores a mere ``touch``."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
