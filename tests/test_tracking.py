"""Tracked links, one-click unsubscribe, the conversion webhook, /metrics and
/healthz, through real HTTP: the daemon's own listeners on loopback, the
aiohttp client, mail sent through aiosmtpd and read back from what it got."""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from sqlalchemy import func, select
from test_cadence import CADENCE
from test_cadence_service import World, text_of, utc, world

from leadloop.agent import outbox
from leadloop.agent.tracking import signed_headers
from leadloop.mail.links import click_token
from leadloop.mail.tokens import TokenKeys
from leadloop.storage.models import Click, Lead, Order

SECRET = "test-conversion-secret-0123456789"
ESSENTIALS = "https://acme.example/buy/essentials"
PRO = "https://acme.example/buy/professional"
PUBLIC = "https://links.acme.example"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
LISTENERS = """
[conversions]
password_env = "LL_TEST_CONVERSION_SECRET"
"""


@asynccontextmanager
async def tracked_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = CADENCE
) -> AsyncIterator[tuple[World, aiohttp.ClientSession]]:
    monkeypatch.setenv("LL_TEST_CONVERSION_SECRET", SECRET)
    # The shared test config already has [tracking] public_url; the public
    # listener takes any free port.
    async with world(tmp_path, extra + LISTENERS, identity="") as w:
        config = w.service.loaded
        assert config.settings.tracking.public_url == PUBLIC
        await w.service.start_listeners()
        async with aiohttp.ClientSession() as http:
            yield w, http


def local(w: World, url: str) -> str:
    """A public URL as the reverse proxy would pass it to our listener."""
    assert w.service.web is not None
    return url.replace(PUBLIC, f"http://127.0.0.1:{w.service.web.ports['public']}")


def admin(w: World, path: str) -> str:
    assert w.service.web is not None
    return f"http://127.0.0.1:{w.service.web.ports['admin']}{path}"


async def send_mail(w: World, lead: Lead, text: str) -> str:
    """Queue a reply to *lead* through the outbox, send it, return the text the
    buyer received."""
    assert w.service.db is not None and w.service.sender is not None
    async with w.service.db.transaction() as session:
        await outbox.queue(
            session,
            w.service.sender.settings,
            kind=outbox.Kind.REPLY,
            to=[lead.email],
            subject="Your order",
            text=text,
            now=w.clock.now(),
            idempotency_key=f"t:{lead.id}:{len(w.handler.received)}",
            lead=lead,
        )
    await w.service.run_once()  # sent now: the clock has not moved
    item = w.handler.received[-1]
    assert item.rcpt_tos == [lead.email]
    return text_of(email.message_from_bytes(item.data, policy=email.policy.default))  # type: ignore[arg-type]


def links(text: str) -> list[str]:
    return re.findall(rf"{re.escape(PUBLIC)}/t/\S+", text)


async def clicks(w: World) -> list[Click]:
    assert w.service.db is not None
    async with w.service.db.sessions() as session:
        return list(await session.scalars(select(Click).order_by(Click.id)))


async def settle(w: World) -> None:
    """Let the burst window pass and run the due work that counts a click."""
    w.clock.advance(timedelta(seconds=11))
    await w.service.run_once()


async def test_a_signed_link_redirects_to_the_catalog_target_and_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch, extra="") as (w, http):
        lead = await w.lead("kim@northwind.test")
        text = await send_mail(w, lead, f"You can order here: {ESSENTIALS}")
        assert ESSENTIALS not in text  # the buyer only sees the tracked link
        (link,) = links(text)
        w.clock.advance(timedelta(minutes=30))
        for _ in range(2):
            async with http.get(
                local(w, link), headers={"User-Agent": BROWSER}, allow_redirects=False
            ) as response:
                assert response.status == 302
                target = response.headers["Location"]
                assert response.headers["Cache-Control"] == "no-store"
        parts = urlsplit(target)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == ESSENTIALS
        query = parse_qs(parts.query)
        assert query["utm_source"] == ["leadloop"]
        assert query["utm_medium"] == ["email"]
        assert query["utm_content"] == ["FT-ESS"]
        assert [(c.scanner, c.sku) for c in await clicks(w)] == [(False, "FT-ESS")] * 2
        await settle(w)
        counted = await w.events("lead.clicked", lead)
        assert len(counted) == 1
        assert counted[0].data["url"] == ESSENTIALS

        async with http.get(admin(w, "/metrics")) as response:
            body = await response.text()
        assert 'leadloop_clicks_total{scanner="false"} 2.0' in body


async def test_tampered_and_foreign_tokens_lead_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch, extra="") as (w, http):
        lead = await w.lead("kim@northwind.test")
        other = await w.lead("ola@northwind.test")
        (link,) = links(await send_mail(w, lead, f"Order: {ESSENTIALS}"))
        token = link.rsplit("/", 1)[1]
        payload, expiry, key_id, mac = token.split(".")
        assert w.service.web is not None
        keys = w.service.web.settings.keys
        outbound_id = int(payload.split("-")[1])
        refused = [
            # one character of the signature changed
            f"{payload}.{expiry}.{key_id}.{mac[:-1]}{'a' if mac[-1] != 'a' else 'b'}",
            # the payload changed to another product, the signature kept
            f"{payload[:-2]}00.{expiry}.{key_id}.{mac}",
            # signed by us, but for a SKU the catalog does not have
            click_token(keys, lead.id, outbound_id, "NOT-IN-CATALOG"),
            # signed by us, for a mail that went to another lead
            click_token(keys, other.id, outbound_id, "FT-ESS"),
            # an unsubscribe token is not a click token
            keys.make("unsubscribe", str(lead.id)),
            "not-a-token",
        ]
        w.clock.advance(timedelta(minutes=30))
        for bad in refused:
            async with http.get(
                local(w, f"{PUBLIC}/t/{bad}"),
                headers={"User-Agent": BROWSER},
                allow_redirects=False,
            ) as response:
                assert response.status == 404, bad
                assert "Location" not in response.headers
        assert await clicks(w) == []


async def test_scanner_traffic_is_kept_but_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch, extra="") as (w, http):
        lead = await w.lead("kim@northwind.test")
        text = await send_mail(w, lead, f"Essentials: {ESSENTIALS}\nProfessional: {PRO}")
        first, second = links(text)
        # Within seconds of delivery: a scanner.
        async with http.get(
            local(w, first), headers={"User-Agent": BROWSER}, allow_redirects=False
        ) as response:
            assert response.status == 302
        w.clock.advance(timedelta(minutes=30))
        async with http.head(local(w, first), allow_redirects=False) as response:
            assert response.status == 302
        safe_links = "Mozilla/5.0 (compatible; MSIE 9.0) Microsoft Office SafeLinks"
        async with http.get(
            local(w, second), headers={"User-Agent": safe_links}, allow_redirects=False
        ) as response:
            assert response.status == 302
        # A burst: both links of the mail opened a second apart, by an agent
        # that looks like a browser.
        w.clock.advance(timedelta(minutes=30))
        for link in (first, second):
            async with http.get(
                local(w, link), headers={"User-Agent": BROWSER}, allow_redirects=False
            ) as response:
                assert response.status == 302
            w.clock.advance(timedelta(seconds=1))
        reasons = [c.reason or "" for c in await clicks(w)]
        assert [r.split(" ")[0] for r in reasons] == ["0s", "HEAD", "scanner", "burst:", "burst:"]
        assert all(c.scanner for c in await clicks(w))
        await settle(w)
        assert await w.events("lead.clicked", lead) == []
        async with http.get(admin(w, "/metrics")) as response:
            body = await response.text()
        assert 'leadloop_clicks_total{scanner="true"} 5.0' in body
        assert 'scanner="false"' not in body


async def test_a_link_signed_with_a_rotated_out_key_verifies_while_the_key_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch, extra="") as (w, http):
        lead = await w.lead("kim@northwind.test")
        (link,) = links(await send_mail(w, lead, f"Order: {ESSENTIALS}"))
        assert ".k1." in link
        key_file = w.service.loaded.state_dir / "tokens.keys"
        old = key_file.read_text()
        assert w.service.web is not None
        web_settings = w.service.web.settings
        key_file.write_text(f"k2:{'ab' * 32}\n{old}")  # a new key signs, k1 still verifies
        web_settings.keys = TokenKeys.load_or_create(key_file)
        assert ".k2." in click_token(web_settings.keys, lead.id, 1, "FT-ESS")
        w.clock.advance(timedelta(minutes=30))
        async with http.get(
            local(w, link), headers={"User-Agent": BROWSER}, allow_redirects=False
        ) as response:
            assert response.status == 302
        key_file.write_text(f"k2:{'ab' * 32}\n")  # k1 dropped: its links end
        web_settings.keys = TokenKeys.load_or_create(key_file)
        async with http.get(
            local(w, link), headers={"User-Agent": BROWSER}, allow_redirects=False
        ) as response:
            assert response.status == 404


async def test_one_click_post_opts_out_at_once_and_get_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch) as (w, http):
        lead = await w.lead("kim@northwind.test", timezone="Europe/Berlin")
        await w.run_until(utc("2026-03-02", 9))
        (touch,) = w.sent[lead.email]
        header = str(touch.message["List-Unsubscribe"])
        assert touch.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        (url,) = re.findall(r"<(https://[^>]+)>", header)
        # GET shows a page with a button and changes nothing.
        async with http.get(local(w, url)) as response:
            assert response.status == 200
            page = await response.text()
        assert '<form method="post">' in page
        assert await w.state(lead) == "engaging"
        # A POST without the RFC 8058 body is refused.
        async with http.post(local(w, url), data={"x": "y"}) as response:
            assert response.status == 400
        assert await w.state(lead) == "engaging"
        # The mail client's one-click POST.
        async with http.post(local(w, url), data={"List-Unsubscribe": "One-Click"}) as response:
            assert response.status == 200
        assert await w.state(lead) == "opted_out"
        received = len(w.handler.received)
        # The first follow-up was due three business days later: nothing goes.
        await w.run_until(utc("2026-03-09", 17))
        assert len(w.handler.received) == received
        assert len(w.sent[lead.email]) == 1


def order(lead: str, order_id: str = "A-1001") -> bytes:
    return json.dumps(
        {"order_id": order_id, "email": lead, "amount": "199.00", "currency": "EUR"}
    ).encode()


async def test_conversion_webhook_wins_the_lead_once_and_refuses_bad_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch) as (w, http):
        lead = await w.lead("kim@northwind.test", timezone="Europe/Berlin")
        await w.run_until(utc("2026-03-02", 9))
        assert (await w.enrollment(lead)).status == "active"
        url = admin(w, "/hooks/conversion")
        body = order(lead.email)
        now = w.clock.now()

        async def post(data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
            async with http.post(
                url, data=data, headers={**headers, "Content-Type": "application/json"}
            ) as response:
                return response.status, await response.json()

        bad = signed_headers("another-secret", body, now)
        assert (await post(body, bad))[0] == 401
        stale = signed_headers(SECRET, body, now - timedelta(minutes=6))
        status, answer = await post(body, stale)
        assert status == 401 and "timestamp" in answer["error"]
        tampered = signed_headers(SECRET, body, now)
        assert (await post(body.replace(b"199.00", b"1.00"), tampered))[0] == 401
        assert (await post(body, {}))[0] == 401
        assert await w.state(lead) == "engaging"

        status, answer = await post(body, signed_headers(SECRET, body, now))
        assert (status, answer["status"]) == (200, "won")
        assert await w.state(lead) == "won"
        assert (await w.enrollment(lead)).status == "done"
        status, answer = await post(body, signed_headers(SECRET, body, now))
        assert (status, answer["status"]) == (200, "duplicate")
        unknown = order("nobody@nowhere.test", "A-2")
        assert (await post(unknown, signed_headers(SECRET, unknown, now)))[0] == 404
        broken = b'{"order_id": "A-3", "email": "kim@northwind.test", "amount": "x"}'
        assert (await post(broken, signed_headers(SECRET, broken, now)))[0] == 400
        assert w.service.db is not None
        async with w.service.db.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Order)) == 1
        assert len(await w.events("lead.converted", lead)) == 1


async def test_healthz_and_metrics_describe_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tracked_world(tmp_path, monkeypatch) as (w, http):
        await w.lead("kim@northwind.test", timezone="Europe/Berlin")
        async with http.get(admin(w, "/healthz")) as response:
            assert response.status == 200
            health = await response.json()
        # Not polled yet: the mailbox is not known to be up.
        assert health["database"] == {"ok": True, "error": None}
        assert health["mailboxes"][0]["name"] == "sales"
        assert health["mailboxes"][0]["ok"] is False
        assert health["status"] == "degraded"
        await w.run_until(utc("2026-03-02", 9))
        async with http.get(admin(w, "/healthz")) as response:
            health = await response.json()
        assert health["status"] == "ok"
        assert health["mailboxes"][0]["last_poll"] is not None
        assert health["paused_senders"] == []
        async with http.get(admin(w, "/metrics")) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            body = await response.text()
        assert 'leadloop_mails_out_total{kind="touch"} 1.0' in body
        assert 'leadloop_leads{state="engaging"} 1.0' in body
        assert 'leadloop_queue_depth{queue="outbox"} 0.0' in body
        assert 'leadloop_mailbox_up{mailbox="sales"} 1.0' in body
        assert "leadloop_send_seconds_count 1.0" in body
