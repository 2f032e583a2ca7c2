"""Tracked-link redirects per second: leadloop's ``/t/<token>`` against a bare
aiohttp redirect, both on loopback.

1. raw baseline: an aiohttp app whose only handler answers ``302`` to a fixed
   URL (no token, no database): what aiohttp and the client cost.
2. leadloop: the daemon's public listener (:class:`leadloop.daemon.web.Web`)
   on a freshly migrated SQLite database with one lead and one sent mail;
   every request opens and checks the token, looks the mail up, classifies
   the request (scanner rules, burst query), inserts a ``clicks`` row and
   schedules the settle task, commits, then redirects.

N requests (default 2000) from C concurrent clients (default 8) with a
browser user agent, over one keep-alive ``aiohttp.ClientSession``.  Prints
requests/s for each, the ratio leadloop / raw, and the peak RSS.  Checks
that every request got a 302 and that N click rows exist; if not, exits 1.
Client and servers share one event loop and the machine's 2 cores.

    python bench/tracking.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import func, select

from leadloop.agent.lifecycle import create_lead
from leadloop.agent.tracking import ScannerRules
from leadloop.clock import SystemClock
from leadloop.daemon.prom import Metrics
from leadloop.daemon.web import Health, Web, WebSettings
from leadloop.knowledge.catalog import Catalog, Product
from leadloop.mail.links import click_token
from leadloop.mail.tokens import TokenKeys
from leadloop.storage.db import open_database
from leadloop.storage.models import Click, Lead, OutboundMessage

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TARGET = "https://acme.example/buy/essentials"


async def hammer(url: str, n: int, concurrency: int) -> tuple[float, int]:
    ok = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:

        async def client() -> None:
            nonlocal ok
            while not queue.empty():
                queue.get_nowait()
                async with http.get(url, allow_redirects=False) as response:
                    await response.read()
                    ok += response.status == 302

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - started, ok


async def start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    n, c = args.requests, args.concurrency

    async def raw(request: web.Request) -> web.Response:
        raise web.HTTPFound(TARGET)

    app = web.Application()
    app.router.add_get("/t/{token}", raw)
    runner, port = await start(app)
    raw_seconds, raw_ok = await hammer(f"http://127.0.0.1:{port}/t/x", n, c)
    await runner.cleanup()
    raw_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as scratch:
        db = await open_database(f"sqlite+aiosqlite:///{scratch}/bench.db")
        clock = SystemClock()
        now = clock.now()
        keys = TokenKeys.load_or_create(Path(scratch) / "tokens.keys")
        async with db.transaction() as session:
            lead = await create_lead(
                session, Lead(email="kim@northwind.example"), actor="bench", reason="b", now=now
            )
            mail = OutboundMessage(
                lead_id=lead.id,
                message_id="<bench@acme.example>",
                idempotency_key="bench",
                kind="reply",
                to_addrs=[lead.email],
                status="sent",
                not_before=now,
                created_at=now,
                sent_at=now - timedelta(hours=1),
                payload={},
            )
            session.add(mail)
            await session.flush()
            token = click_token(keys, lead.id, mail.id, "FT-ESS")
        catalog = Catalog(
            (
                Product(
                    name="Essentials", sku="FT-ESS", price=15, currency="EUR", purchase_url=TARGET
                ),
            )
        )

        async def health() -> Health:
            return Health(None, [], [])

        site = Web(
            db,
            clock,
            WebSettings(
                keys=keys,
                catalog=lambda: catalog,
                # A burst needs two different links of one mail: one link here.
                rules=ScannerRules(burst=timedelta(seconds=10)),
                utm={"source": "leadloop", "medium": "email", "campaign": "bench"},
                conversion_secret=None,
                tolerance=timedelta(minutes=5),
            ),
            metrics=Metrics(),
            health=health,
            mailboxes=list,
        )
        port = await site.start("public", site.public_app(), "127.0.0.1", 0)
        seconds, ok = await hammer(f"http://127.0.0.1:{port}/t/{token}", n, c)
        await site.stop()
        async with db.sessions() as session:
            rows = await session.scalar(select(func.count()).select_from(Click))
        await db.dispose()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    raw_rate, rate = n / raw_seconds, n / seconds
    print(f"requests={n} concurrency={c} at={datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"raw aiohttp redirect: {raw_rate:8.0f} req/s  ({raw_ok} x 302)  rss={raw_rss:.0f} MiB")
    print(
        f"leadloop /t/<token>:  {rate:8.0f} req/s  ({ok} x 302, {rows} clicks)  rss={rss:.0f} MiB"
    )
    print(f"ratio leadloop / raw: {rate / raw_rate:.2f}")
    return 0 if ok == raw_ok == n and rows == n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
