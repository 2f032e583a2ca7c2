"""Several daemons on one PostgreSQL database: two, then three `leadloop run`
processes against one Dovecot mailbox and one aiosmtpd relay, with 2,000
inbound replies and 5,000 lead mails due.  Every message is processed once,
every mail delivered once, the mailbox polled by one daemon at a time; one
daemon is killed with SIGKILL mid-run and the others finish its work once its
leases run out.  (A second daemon on one SQLite file: test_daemon.)"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cluster_env import (
    PASSWORD_ENV,
    TOKEN_KEYS,
    TOKENS_ENV,
    Cluster,
    cluster_config,
    deliver_replies,
    seed,
)
from imap_servers import ImapServer
from postgres import create_database
from smtp_servers import ScriptedHandler, smtp_server
from sqlalchemy import func, select

from leadloop.config import load
from leadloop.storage import queries
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Event, InboundMessage, OutboundMessage

REPLIES = 2000
TOUCHES = 5000
LEASE = "6s"
LIVE = timedelta(seconds=5)  # the daemons register every tick (1 s)


async def live_daemons(db: Database) -> list[dict[str, object]]:
    return [r for r in await queries.cluster(db, datetime.now(UTC), LIVE) if r["live"]]


async def test_three_daemons_share_the_work_without_losing_or_doubling_a_mail(
    postgres_base: str, dovecot_imap: ImapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, dovecot_imap.password)
    monkeypatch.setenv(TOKENS_ENV, TOKEN_KEYS)
    url = await create_database(postgres_base, "cluster")
    handler = ScriptedHandler()
    async with smtp_server(handler) as port:
        config = tmp_path / "config.toml"
        config.write_text(cluster_config(url, dovecot_imap, port, LEASE))
        loaded = load(config)
        touch_ids = await seed(loaded, REPLIES, TOUCHES)
        await deliver_replies(dovecot_imap, REPLIES)
        db = await open_database(loaded.database_url)
        cluster = Cluster(config, dict(os.environ))

        killed_name = ""

        async def count(query: Any) -> int:
            async with db.sessions() as session:
                return int(await session.scalar(query) or 0)

        async def wait(what: str, done: Callable[[], Awaitable[bool]], limit: float = 300) -> None:
            """Poll the shared state; the limit only bounds a hung test."""
            deadline = time.monotonic() + limit
            while not await done():
                assert time.monotonic() < deadline, f"gave up waiting for {what}"
                for name, proc in cluster.procs.items():
                    assert proc.returncode is None or name == killed_name, f"{name} exited"
                await asyncio.sleep(0.5)

        try:
            await cluster.start("a")
            await cluster.start("b")

            async def some_sent() -> bool:
                return len(handler.received) >= 1000

            await wait("the first thousand mails", some_sent)
            await cluster.start("c")

            async def third_working() -> bool:
                return len(await live_daemons(db)) == 3 and len(handler.received) >= 2500

            await wait("the third daemon", third_working)
            # Kill the daemon that polls the mailbox, mid-run: another must
            # take the mailbox over, and all three's claims must be finished.
            owners = {cluster.owner(name): name for name in cluster.procs}
            poller = next(str(r["id"]) for r in await live_daemons(db) if r["mailboxes"])
            killed_name, killed = owners[poller], poller
            await cluster.kill(killed_name)

            async def finished() -> bool:
                pending = await count(
                    select(func.count())
                    .select_from(InboundMessage)
                    .where(InboundMessage.status != "done")
                )
                stored = await count(select(func.count()).select_from(InboundMessage))
                unsent = await count(
                    select(func.count())
                    .select_from(OutboundMessage)
                    .where(OutboundMessage.status.in_(("queued", "sending")))
                )
                return stored == REPLIES and pending == 0 and unsent == 0

            await wait("all the work", finished, limit=600)
            live = [str(r["id"]) for r in await live_daemons(db)]
            codes = await cluster.stop_all()
        finally:
            for proc in cluster.procs.values():
                if proc.returncode is None:
                    proc.kill()
        received = list(handler.received)

        async with db.sessions() as session:
            inbound = list(await session.scalars(select(InboundMessage)))
            rows = list(await session.scalars(select(OutboundMessage)))
            stage_events = Counter(
                (e.inbound_id, e.kind)
                for e in await session.scalars(select(Event).where(Event.kind.like("stage.%")))
                if not e.kind.endswith(".retry")
            )
            pollers = [
                (e.actor, e.at)
                for e in await session.scalars(
                    select(Event).where(Event.kind == "mailbox.poller").order_by(Event.id)
                )
            ]
        await db.dispose()

    assert [code for name, code in codes.items() if name != killed_name] == [0, 0]
    # Every inbound message stored once and processed once: one event per stage.
    assert len(inbound) == REPLIES
    assert len({m.message_id for m in inbound}) == REPLIES
    assert all(m.status == "done" for m in inbound)
    doubled = [key for key, n in stage_events.items() if n > 1]
    assert doubled == [], doubled[:5]
    # Every lead mail delivered exactly once: the touches and the answers.
    got = Counter(
        str(email.message_from_bytes(r.data, policy=email.policy.default)["Message-ID"])
        for r in received
    )
    assert [m for m, n in got.items() if n > 1] == []
    delivered = {r.message_id for r in rows if r.status in ("sent", "in_doubt", "held")}
    assert set(got) == delivered
    assert set(touch_ids) <= set(got)
    assert not [r for r in rows if r.status in ("queued", "sending")]
    # The killed daemon's mail caught between the dot and the reply is held,
    # never sent twice.
    assert all(r.claimed_by == killed for r in rows if r.status == "in_doubt")
    # One poller at a time: the mailbox went to a second daemon only when
    # the first one's lock went with its process.
    assert pollers[0][0] == killed
    assert len(pollers) == 2 and pollers[1][0] != killed
    assert len(live) == 2 and killed not in live


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
