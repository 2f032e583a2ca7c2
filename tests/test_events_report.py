"""Event export (JSON lines and the signed webhook), the weekly summary to the
supervisors and ``leadloop report`` from the command line, on a daemon that
really sent, was clicked, converted and was unsubscribed from."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_cadence import CADENCE
from test_cadence_service import World, utc
from test_tracking import BROWSER, ESSENTIALS, SECRET, links, local, send_mail, tracked_world

from leadloop import cli
from leadloop.agent.tracking import BadSignature, signed_headers, verify
from leadloop.report.events import EventPusher, export_events

HOOK_SECRET = "test-events-secret-abcdef"
SUPERVISED = (
    CADENCE
    + """
[handoff]
supervisors = ["boss@acme.example"]

[report]
day = "mon"
hour = 8
"""
)


async def story(w: World, http: aiohttp.ClientSession) -> None:
    """Kim gets a touch and a mail with a link, clicks it and buys; Ola
    unsubscribes with one click."""
    kim = await w.lead("kim@northwind.test", timezone="Europe/Berlin")
    ola = await w.lead("ola@northwind.test", timezone="Europe/Berlin")
    await w.run_until(utc("2026-03-02", 9))
    (link,) = links(await send_mail(w, kim, f"Order: {ESSENTIALS}"))
    w.clock.advance(timedelta(minutes=5))
    async with http.get(local(w, link), headers={"User-Agent": BROWSER}, allow_redirects=False):
        pass
    body = json.dumps(
        {"order_id": "A-1", "email": kim.email, "amount": "15.00", "currency": "EUR"}
    ).encode()
    assert w.service.web is not None
    admin = f"http://127.0.0.1:{w.service.web.ports['admin']}/hooks/conversion"
    async with http.post(admin, data=body, headers=signed_headers(SECRET, body, w.clock.now())):
        pass
    unsubscribe = next(
        m.message["List-Unsubscribe"] for m in w.sent[ola.email] if m.message["List-Unsubscribe"]
    )
    (url,) = re.findall(r"<(https://[^>]+)>", str(unsubscribe))
    async with http.post(local(w, url), data={"List-Unsubscribe": "One-Click"}):
        pass


async def test_events_export_lists_clicks_orders_state_changes_and_opt_outs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with tracked_world(tmp_path, monkeypatch) as (w, http):
        await story(w, http)
        assert w.service.db is not None
        lines = [line async for line in export_events(w.service.db)]
    types = [(line["type"], line["lead"]) for line in lines]
    assert ("click", "kim@northwind.test") in types
    assert ("order", "kim@northwind.test") in types
    assert ("opt_out", "ola@northwind.test") in types
    changes = [(x["lead"], x["data"]["to"]) for x in lines if x["type"] == "state_change"]
    assert ("kim@northwind.test", "engaging") in changes
    assert ("kim@northwind.test", "won") in changes
    assert ("ola@northwind.test", "opted_out") in changes
    order = next(x for x in lines if x["type"] == "order")
    assert (order["data"]["order_id"], order["data"]["amount"]) == ("A-1", "15.00")
    assert len({x["id"] for x in lines}) == len(lines)
    assert [x["at"] for x in lines] == sorted(x["at"] for x in lines)

    # The same through the CLI, from a given time on.
    config = str(tmp_path / "config.toml")
    argv = ["events", "export", "--config", config, "--since", "2026-03-02T09:30"]
    assert await asyncio.to_thread(cli.main, argv) == 0  # the CLI runs its own loop
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert printed and all(x["at"] >= "2026-03-02T09:30" for x in printed)
    assert {x["type"] for x in printed} >= {"click", "order", "opt_out", "state_change"}
    assert len(printed) < len(lines)  # the earlier state changes are left out


@asynccontextmanager
async def receiver(answers: list[int]) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A CRM's webhook on loopback: checks the signature like a careful
    receiver would, answers with the next status of *answers*."""
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                HOOK_SECRET,
                request.headers.get("X-Leadloop-Timestamp"),
                request.headers.get("X-Leadloop-Signature"),
                body,
                now=utc("2026-03-02", 9),
                tolerance=timedelta(days=30),
            )
        except BadSignature:
            return web.Response(status=401)
        status = answers.pop(0) if answers else 200
        if status == 200:
            got.append(json.loads(body))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/crm", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/crm", got
    finally:
        await runner.cleanup()


async def test_the_webhook_gets_every_event_once_signed_and_retries_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch) as (w, http), receiver([503]) as (url, got):
        await story(w, http)
        db = w.service.db
        assert db is not None
        pusher = EventPusher(url, HOOK_SECRET, batch=1000)
        now = w.clock.now()
        assert await pusher.sweep(db, now) == 0  # 503: nothing delivered
        assert pusher.retry_at == now + timedelta(minutes=1)
        assert await pusher.sweep(db, now + timedelta(seconds=30)) == 0  # still waiting
        assert got == []
        sent = await pusher.sweep(db, now + timedelta(minutes=1))
        assert sent > 0 and len(got) == 1
        exported = [line async for line in export_events(db)]
        assert [e["id"] for e in got[0]["events"]] == [e["id"] for e in exported]
        assert await pusher.sweep(db, now + timedelta(minutes=2)) == 0  # nothing new, nothing twice

        # A wrong secret is refused by the receiver: a failure, with backoff.
        w.clock.advance(timedelta(hours=1))
        lead = await w.lead("new@northwind.test")
        assert lead.id
        wrong = EventPusher(url, "not-the-secret", batch=1000)
        assert await wrong.sweep(db, w.clock.now()) == 0
        assert wrong.failures == 1
        assert await pusher.sweep(db, w.clock.now()) == 1  # the new lead's creation... only
        assert got[-1]["events"][0]["data"]["to"] == "new"


async def test_the_weekly_summary_goes_to_the_supervisors_once_a_week(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch, extra=SUPERVISED) as (w, http):
        await story(w, http)
        await w.run_until(utc("2026-03-16", 9))

        def summaries() -> list[email.message.EmailMessage]:
            found = []
            for item in w.handler.received:
                message = email.message_from_bytes(item.data, policy=email.policy.default)
                if str(message["Subject"]).startswith("leadloop weekly summary"):
                    assert item.rcpt_tos == ["boss@acme.example"]
                    found.append(message)
            return found  # type: ignore[return-value]

        # Monday 2 March: the week before had nothing (no lead existed), so
        # no summary; Mondays 9 and 16 March at 08:00: one each.
        (second, third) = summaries()
        assert "2026-03-09 to 2026-03-15" in str(third["Subject"])
        assert second["Auto-Submitted"] == "auto-generated"
        body = str(second.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        assert "2026-03-02 to 2026-03-08" in str(second["Subject"])
        assert re.search(r"Won\s+1\b", body)
        assert re.search(r"Mails delivered\s+\d", body)
        assert "Open escalations: 0" in body


async def test_report_command_prints_a_table_json_and_writes_the_html_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with tracked_world(tmp_path, monkeypatch) as (w, http):
        await story(w, http)
    config = str(tmp_path / "config.toml")
    html = tmp_path / "report.html"
    period = ["--since", "2026-03-02", "--until", "2026-03-09"]
    argv = ["report", "--config", config, *period, "--html", str(html)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    table = capsys.readouterr().out
    assert "Report 2026-03-02 .. 2026-03-09" in table
    assert re.search(r"Won\s+1\b", table)
    assert re.search(r"Win rate \(won / disqualified\)\s+n/a", table)
    assert "Funnel (leads): reached 2 -> replied 0" in table
    assert str(html.resolve()) in table
    page = html.read_text()
    for chart in ("chart-funnel", "chart-volume", "chart-intents", "chart-escalations"):
        assert f'id="{chart}"' in page
    argv = ["report", "--config", config, *period, "--json"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["won"] == 1
    assert report["overall"]["clicks"] == 1
    assert report["overall"]["win_rate"] is None
    assert report["mailboxes"]["sales"]["delivered"] == report["overall"]["delivered"]
