"""The daemon's two HTTP listeners (aiohttp).

- **public** (``[tracking]``, reached through ``tracking.public_url`` behind a
  reverse proxy): ``GET``/``HEAD /t/<token>`` records a click and redirects to
  the catalog target; ``GET /u/<token>`` shows a confirm page and never opts
  out by itself; ``POST /u/<token>`` with ``List-Unsubscribe=One-Click``
  (RFC 8058) opts the lead out at once.
- **admin** (``[admin]``, loopback by default): ``/metrics`` (Prometheus),
  ``/healthz`` (JSON) and ``POST /hooks/conversion``.

What a request means is decided in ``agent/tracking.py``; this module only
speaks HTTP.  Pages carry no outside resources and no lead data beyond a
masked address.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from html import escape
from typing import Any

from aiohttp import web

from leadloop.agent import controls, tracking
from leadloop.clock import Clock
from leadloop.daemon.prom import CONTENT_TYPE, MailboxHealth, Metrics
from leadloop.knowledge.catalog import Catalog
from leadloop.mail.links import NotFound
from leadloop.mail.tokens import TokenKeys
from leadloop.storage.db import Database

log = logging.getLogger("leadloop.daemon.web")

NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "none"}
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Health:
    database: str | None
    """None when the database answers; else the error."""
    mailboxes: list[dict[str, Any]]
    paused_senders: list[dict[str, Any]]
    daemon: str = ""
    """This daemon's id (host:pid), the owner name on its claims."""
    claims: dict[str, int] = field(default_factory=dict)
    send_paused: dict[str, Any] | None = None
    """``leadloop pause`` (all sending): since when, by whom, why."""

    @property
    def status(self) -> str:
        if self.database is not None:
            return "failing"
        if any(not box["ok"] for box in self.mailboxes) or self.paused_senders or self.send_paused:
            return "degraded"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "daemon": self.daemon,
            "claims": self.claims,
            "database": {"ok": self.database is None, "error": self.database},
            "mailboxes": self.mailboxes,
            "paused_senders": self.paused_senders,
            "send_paused": self.send_paused,
        }


@dataclass
class WebSettings:
    keys: TokenKeys
    catalog: Callable[[], Catalog]
    """The current catalog (edits are picked up by the policy's reload)."""
    rules: tracking.ScannerRules
    utm: dict[str, str]
    conversion_secret: str | None
    tolerance: timedelta


class Web:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: WebSettings,
        *,
        metrics: Metrics,
        health: Callable[[], Awaitable[Health]],
        mailboxes: Callable[[], list[MailboxHealth]],
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self.mailboxes = mailboxes
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    # -- apps -------------------------------------------------------------
    def public_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/t/{token}", self.click)  # and HEAD, which scanners send
        app.router.add_get("/u/{token}", self.unsubscribe_page)
        app.router.add_post("/u/{token}", self.unsubscribe)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/hooks/conversion", self.conversion)
        return app

    async def start(self, name: str, app: web.Application, host: str, port: int) -> int:
        """Listen; returns the bound port (*port* 0 picks one)."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runners.append(runner)
        bound = int(runner.addresses[0][1])
        self.ports[name] = bound
        log.info("listening %s=%s:%d", name, host, bound)
        return bound

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _send_paused(self) -> dict[str, Any] | None:
        async with self.db.sessions() as session:
            row = await controls.send_paused(session)
        if row is None:
            return None
        return {"since": row.value.get("since"), "by": row.actor, "reason": row.reason}

    # -- public -----------------------------------------------------------
    async def click(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        now = self.clock.now()
        try:
            async with self.db.transaction() as session:
                found = await tracking.record_request(
                    session,
                    keys=s.keys,
                    catalog=s.catalog(),
                    rules=s.rules,
                    utm=s.utm,
                    token=request.match_info["token"],
                    method=request.method,
                    user_agent=request.headers.get("User-Agent"),
                    remote=_remote(request),
                    now=now,
                )
        except NotFound as exc:
            log.info("click refused: %s", exc)
            return _page(404, "Link not found", "This link is not valid or no longer exists.")
        log.info(
            "click lead=%d outbound=%d sku=%s scanner=%s",
            found.click.lead_id,
            found.click.outbound_id,
            found.click.sku,
            found.click.reason or "no",
        )
        raise web.HTTPFound(found.url, headers=NO_STORE)

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        try:
            tracking.unsubscribe_lead_id(
                self.settings.keys, request.match_info["token"], self.clock.now()
            )
        except NotFound:
            return _page(404, "Link not found", "This unsubscribe link is not valid any more.")
        return _page(
            200,
            "Unsubscribe",
            "Do you want to stop receiving these emails?",
            form=(
                '<form method="post"><input type="hidden" name="List-Unsubscribe" '
                'value="One-Click"><button type="submit">Unsubscribe</button></form>'
            ),
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        try:
            lead_id = tracking.unsubscribe_lead_id(
                self.settings.keys, request.match_info["token"], now
            )
        except NotFound:
            return _page(404, "Link not found", "This unsubscribe link is not valid any more.")
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":
            return _page(
                400, "Unsubscribe", "This request is missing List-Unsubscribe=One-Click (RFC 8058)."
            )
        try:
            async with self.db.transaction() as session:
                await tracking.unsubscribe(session, lead_id, how="one-click link", now=now)
        except NotFound:
            return _page(404, "Link not found", "This unsubscribe link is not valid any more.")
        log.info("unsubscribed lead=%d by one-click", lead_id)
        return _page(200, "Unsubscribed", "You will not receive these emails again.")

    # -- admin ------------------------------------------------------------
    async def prometheus(self, request: web.Request) -> web.Response:
        body = await self.metrics.render(self.db, self.mailboxes())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        health = await self.health()
        if health.database is None and health.send_paused is None:
            health = replace(health, send_paused=await self._send_paused())
        return web.json_response(
            health.as_dict(), status=503 if health.status == "failing" else 200
        )

    async def conversion(self, request: web.Request) -> web.Response:
        s = self.settings
        body = await request.read()
        now = self.clock.now()
        try:
            tracking.verify(
                s.conversion_secret,
                request.headers.get(tracking.TIMESTAMP_HEADER),
                request.headers.get(tracking.SIGNATURE_HEADER),
                body,
                now=now,
                tolerance=s.tolerance,
            )
        except tracking.BadSignature as exc:
            log.warning("conversion refused: %s", exc)
            return web.json_response({"error": str(exc)}, status=401)
        try:
            event = tracking.OrderEvent.parse(json.loads(body))
        except (ValueError, tracking.BadOrder) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            async with self.db.transaction() as session:
                status, lead = await tracking.record_order(session, event, keys=s.keys, now=now)
                email = lead.email
        except NotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        log.info("conversion order=%s lead=%s status=%s", event.order_id, email, status)
        return web.json_response({"status": status, "lead": email, "order_id": event.order_id})


def _remote(request: web.Request) -> str | None:
    """The client: behind the reverse proxy on loopback, the first
    X-Forwarded-For hop; else the peer address."""
    peer = request.remote
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and peer in ("127.0.0.1", "::1"):
        return forwarded.split(",")[0].strip()
    return peer


def _page(status: int, title: str, text: str, *, form: str = "") -> web.Response:
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>body{{font:16px/1.5 sans-serif;"
        "max-width:32em;margin:4em auto;padding:0 1em}button{font-size:1em;"
        "padding:.5em 1.5em}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(text)}</p>{form}</body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=NO_STORE)
