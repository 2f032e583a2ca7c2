"""The seller digest: each seller's open leads in priority order with the
reason, the suggested action and the research summary, then their open
tasks; text and HTML; at [digest] time on [digest] days in each seller's
own time zone, once per local day, through the real outbox to aiosmtpd."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from outbox_env import OutboxEnv, outbox_env
from postgres import create_database
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from test_priority import ICP, NOW, World

from leadloop import cli
from leadloop.brain.local import shared_local_brain
from leadloop.clock import ManualClock
from leadloop.report.digest import build_digest, sellers, send_due_digests
from leadloop.storage.models import Mailbox, OutboundMessage, ResearchResult, Task

SELLERS = """
[sending]
default_timezone = "Europe/Berlin"

[digest]
time = "08:00"
days = ["mon", "tue", "wed", "thu", "fri"]
limit = 4

[handoff]
sellers = ["dora@acme.example"]
away = ["eve@acme.example"]

[[sellers]]
address = "ann@acme.example"
name = "Ann"
timezone = "Asia/Tokyo"

[[sellers]]
address = "bob@acme.example"
name = "Bob"
timezone = "America/Los_Angeles"
"""
TOKYO = ZoneInfo("Asia/Tokyo")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
# Monday 2 March 2026, 08:00 in Tokyo.
ANN_DUE = datetime(2026, 3, 2, 8, 0, tzinfo=TOKYO).astimezone(UTC)


async def in_world(session: AsyncSession) -> World:
    box = await session.scalar(select(Mailbox).where(Mailbox.name == "sales"))
    assert box is not None
    return World(session, box.id)


def received(env: OutboxEnv) -> list[EmailMessage]:
    return [
        email.message_from_bytes(r.data, policy=email.policy.default)  # type: ignore[misc]
        for r in env.handler.received
    ]


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    page = message.get_body(("html",))
    assert text is not None and page is not None
    return str(text.get_content()).replace("\r\n", "\n"), str(page.get_content())


@pytest.fixture
async def env(tmp_path: Path, clock: ManualClock) -> AsyncIterator[OutboxEnv]:
    async with outbox_env(tmp_path, clock, extra=ICP + SELLERS) as made:
        yield made


async def test_the_digest_lists_a_hand_raiser_first_then_seed_order(
    env: OutboxEnv, clock: ManualClock
) -> None:
    """Ann's digest: the weak hand-raiser first, then ICP, engagement, the
    account; each with its reason, the suggested action (the meeting request
    read by the real local brain) and the research summary or "no research
    yet"; the limit counts the rest; her open tasks; text and an escaped,
    defanged HTML part, delivered as a staff notice."""
    brain = shared_local_brain()
    understood = await brain.classify(
        "Could we meet next Tuesday at 10 to go through it?",
        subject="Re: your fleet",
        received=NOW.date(),
        headers={},
    )
    assert understood.intent == "meeting_request"
    async with env.db.transaction() as session:
        w = await in_world(session)
        await w.lead("ned", icp="low", age=1)
        await w.lead("max", icp="moderate")
        await w.lead("lou", icp="high")
        kim = await w.lead("kim", icp="high", account="value", company="Kim <Co>")
        await w.reply(
            kim,
            "Could we meet next Tuesday at 10 to go through it?",
            intent=understood.intent,
            understanding=understood.summary(),
        )
        await w.lead(
            "rae", hand_raiser=True, icp="low", age=30, last_name="Raiser", account="linked"
        )
        await w.lead("gone", icp="high", state="won")
        await w.lead("bobs", icp="high", owner="bob@acme.example")
        session.add_all(
            [
                ResearchResult(
                    provider="internal",
                    subject=f"lead:{kim.id}",
                    lead_id=kim.id,
                    status="ok",
                    summary="Kim wrote once; Bob at Acme has mailed her domain before.",
                    fetched_at=NOW,
                ),
                ResearchResult(
                    provider="website",
                    subject="domain:kim-co.example",
                    status="ok",
                    summary="Kim Co builds <b>fleet</b> software; see https://kim-co.example/about",
                    fetched_at=NOW,
                ),
                Task(lead_id=kim.id, owner="ann@acme.example", title="Send a quote",
                     status="open", created_at=NOW - timedelta(days=1)),
                Task(lead_id=kim.id, owner="ann@acme.example", title="Old chore",
                     status="done", created_at=NOW - timedelta(days=9)),
                Task(lead_id=kim.id, owner="bob@acme.example", title="Bob's chore",
                     status="open", created_at=NOW),
            ]
        )  # fmt: skip

    async with env.db.transaction() as session:
        assert await send_due_digests(session, env.loaded, env.settings, ANN_DUE) == 1
    clock.advance(timedelta(days=1))
    await env.drain()
    (mail,) = received(env)
    assert mail["To"] == "ann@acme.example"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_content_type() == "multipart/alternative"
    assert str(mail["Subject"]) == "Your leads for Mon 2 Mar 2026: 5 open, 1 task"
    text, page = parts(mail)
    lines = text.splitlines()
    ranks = [line for line in lines if line[:1].isdigit()]
    assert ranks == [
        "1. Rae Raiser <rae@rae-co.example> (new)",
        "2. Kim Example <kim@kim-co.example>, Kim <Co> (new)",
        "3. Lou Example <lou@lou-co.example> (new)",
        "4. Max Example <max@max-co.example> (new)",
    ]
    assert "... and 1 more: leadloop leads list --prioritized --owner ann@acme.example" in text
    assert "ned@" not in text and "gone@" not in text and "bobs@" not in text
    at_kim = lines.index(ranks[1])
    assert lines[at_kim + 1] == (
        "   Why: ICP high (100 %); engagement high (1 reply, interest positive high); "
        "account Kim Co: 40,000 in open opportunities; created 1 day ago"
    )
    assert lines[at_kim + 2].startswith(
        '   Next: Schedule an appointment (the lead asked to meet (2026-03-02): "Could we meet'
    )
    assert lines[at_kim + 3] == (
        "   Research: Kim wrote once; Bob at Acme has mailed her domain before. "
        "Website: Kim Co builds <b>fleet</b> software; see hxxps://kim-co[.]example/about"
    )
    at_rae = lines.index(ranks[0])
    assert lines[at_rae + 1].startswith("   Why: hand-raiser; ICP low (0 %)")
    assert lines[at_rae + 2].startswith("   Next: Draft an outreach mail")
    assert lines[at_rae + 3] == "   Research: no research yet"
    assert "Open tasks (1):\n- Send a quote, for kim@kim-co.example (since 2026-03-01)" in text
    assert "Old chore" not in text and "Bob's chore" not in text
    assert "Good morning Ann," in text and "(Asia/Tokyo)" in text

    assert page.startswith("<!DOCTYPE html>")
    assert '<li value="1"' in page and '<li value="4"' in page and '<li value="5"' not in page
    assert page.index("rae@rae-co.example") < page.index("kim@kim-co.example")
    assert "Kim &lt;Co&gt;" in page and "<Co>" not in page
    assert "&lt;b&gt;fleet&lt;/b&gt;" in page and "<b>fleet" not in page
    assert "hxxps://kim-co[.]example/about" in page and "https://kim-co" not in page
    assert "<h3>Open tasks (1)</h3>" in page


async def test_each_seller_gets_theirs_at_local_eight_on_local_weekdays_once(
    env: OutboxEnv, clock: ManualClock
) -> None:
    """From Saturday to Tuesday in 15-minute ticks: Ann (Tokyo) and Bob (Los
    Angeles) each get one digest per local weekday at the first tick at or
    after 08:00 local, never at the weekend; Carl (a lead owner without an
    entry) at 08:00 in the default zone; Dora (a team seller with no leads)
    gets none, nor Eve (away)."""
    async with env.db.transaction() as session:
        w = await in_world(session)
        await w.lead("ana", owner="ann@acme.example")
        await w.lead("bea", owner="bob@acme.example")
        await w.lead("cy", owner="carl@acme.example")
        await w.lead("ed", owner="eve@acme.example")
    who = [s.address for s in sellers(env.loaded, ["carl@acme.example", "eve@acme.example"])]
    assert who == ["ann@acme.example", "bob@acme.example", "dora@acme.example", "carl@acme.example"]

    now = datetime(2026, 2, 28, 12, 0, tzinfo=UTC)  # Saturday everywhere
    queued_at: list[datetime] = []
    while now <= datetime(2026, 3, 3, 17, 0, tzinfo=UTC):
        async with env.db.transaction() as session:
            if await send_due_digests(session, env.loaded, env.settings, now):
                queued_at.append(now)
        now += timedelta(minutes=15)
    async with env.db.sessions() as session:
        rows = (
            await session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.kind == "notice")
                .order_by(OutboundMessage.id)
            )
        ).all()
    local = {
        "ann@acme.example": TOKYO,
        "bob@acme.example": LOS_ANGELES,
        "carl@acme.example": ZoneInfo("Europe/Berlin"),
    }
    got = [
        (
            row.to_addrs[0],
            row.created_at.astimezone(local[row.to_addrs[0]]).strftime("%a %d %H:%M"),
            row.idempotency_key,
        )
        for row in rows
    ]
    assert got == [
        ("ann@acme.example", "Mon 02 08:00", "digest:ann@acme.example:2026-03-02"),
        ("carl@acme.example", "Mon 02 08:00", "digest:carl@acme.example:2026-03-02"),
        ("bob@acme.example", "Mon 02 08:00", "digest:bob@acme.example:2026-03-02"),
        ("ann@acme.example", "Tue 03 08:00", "digest:ann@acme.example:2026-03-03"),
        ("carl@acme.example", "Tue 03 08:00", "digest:carl@acme.example:2026-03-03"),
        ("bob@acme.example", "Tue 03 08:00", "digest:bob@acme.example:2026-03-03"),
    ]
    assert len(queued_at) == 6

    clock.advance(timedelta(days=2))
    await env.drain()
    mails = received(env)
    assert sorted(m["To"] for m in mails) == sorted(r[0] for r in got)
    assert sorted((str(m["To"]), str(m["Subject"])) for m in mails) == [
        (who, f"Your leads for {day} Mar 2026: 1 open, 0 tasks")
        for who in ("ann@acme.example", "bob@acme.example", "carl@acme.example")
        for day in ("Mon 2", "Tue 3")
    ]


async def test_a_disabled_digest_and_an_empty_one_send_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    """[digest] enabled = false: nothing; a seller with no open lead and no
    task: nothing either."""
    async with outbox_env(tmp_path, clock, extra=SELLERS) as env:
        async with env.db.transaction() as session:
            assert await send_due_digests(session, env.loaded, env.settings, ANN_DUE) == 0
            w = await in_world(session)
            await w.lead("ana", owner="ann@acme.example")
        settings = env.loaded.settings.model_copy(
            update={"digest": env.loaded.settings.digest.model_copy(update={"enabled": False})}
        )
        disabled = replace(env.loaded, settings=settings)
        async with env.db.transaction() as session:
            assert await send_due_digests(session, disabled, env.settings, ANN_DUE) == 0
            assert await send_due_digests(session, env.loaded, env.settings, ANN_DUE) == 1


async def test_two_daemons_racing_queue_one_digest(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> None:
    """On PostgreSQL, a second daemon whose tick runs while the first one's
    is still open leaves the digest to it: one row, the loser's insert
    rolled back to its savepoint, its own transaction still usable."""
    url = await create_database(request.getfixturevalue("postgres_base"), "digest_race")
    async with outbox_env(tmp_path, clock, extra=SELLERS, url=url) as env:
        async with env.db.transaction() as session:
            w = await in_world(session)
            await w.lead("ana", owner="ann@acme.example")

        async def second_daemon() -> int:
            async with env.db.transaction() as session:
                queued = await send_due_digests(session, env.loaded, env.settings, ANN_DUE)
                await session.scalar(select(OutboundMessage.id).limit(1))  # still usable
                return queued

        async with env.db.transaction() as first:
            assert await send_due_digests(first, env.loaded, env.settings, ANN_DUE) == 1
            racing = asyncio.create_task(second_daemon())
            await asyncio.sleep(0.2)  # let it reach the insert, which waits for us
        assert await racing == 0
        async with env.db.sessions() as session:
            keys = (await session.scalars(select(OutboundMessage.idempotency_key))).all()
        assert keys == ["digest:ann@acme.example:2026-03-02"]


async def test_digest_preview_command(env: OutboxEnv, capsys: pytest.CaptureFixture[str]) -> None:
    """`leadloop digest preview --seller ADDRESS` prints the subject and the
    text (or --html the page) without queueing anything."""
    async with env.db.transaction() as session:
        w = await in_world(session)
        await w.lead("ana", owner="ann@acme.example", icp="high")
        await w.lead("rae", owner="ann@acme.example", hand_raiser=True)
    base = ["--config", str(env.loaded.file), "digest", "preview", "--seller", "ANN@acme.example"]
    assert await asyncio.to_thread(cli.main, base) == 0
    out = capsys.readouterr().out
    assert out.startswith("Subject: Your leads for ")
    assert "Good morning Ann," in out
    assert out.index("1. Rae Example") < out.index("2. Ana Example")
    assert await asyncio.to_thread(cli.main, [*base, "--html"]) == 0
    assert "<ol>" in capsys.readouterr().out
    async with env.db.sessions() as session:
        assert (await session.scalars(select(OutboundMessage))).all() == []


async def test_build_digest_for_an_unconfigured_address_uses_the_default_zone(
    env: OutboxEnv,
) -> None:
    """A lead owner with no [[sellers]] entry: the default time zone, the
    address as the greeting."""
    async with env.db.transaction() as session:
        w = await in_world(session)
        await w.lead("cy", owner="carl@acme.example")
    async with env.db.sessions() as session:
        digest = await build_digest(session, env.loaded, "carl@acme.example", ANN_DUE)
    assert digest.seller.zone.key == "Europe/Berlin"
    assert digest.local_date.isoformat() == "2026-03-02"  # Sunday 23:00 UTC is Monday 00:00
    assert "Good morning carl@acme.example," in digest.text
    assert digest.open_leads == 1 and digest.tasks == 0
