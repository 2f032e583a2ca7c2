"""Cadences end to end: the planner on an injected clock, the real outbox,
aiosmtpd on loopback; weeks of hourly ticks in seconds."""

from __future__ import annotations

import email
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

from outbox_env import OutboxEnv, outbox_env, write_config
from sqlalchemy import select

from leadloop.agent.cadence import nurture, preview, record_click, record_conversion
from leadloop.agent.due import run_due
from leadloop.agent.lifecycle import State, transition
from leadloop.clock import ManualClock
from leadloop.daemon.service import build_planner
from leadloop.storage import repo
from leadloop.storage.models import CadenceEnrollment, Lead

CADENCE = """
[sending]
days = "mon-fri"
hours = "09:00-17:00"

[[cadences]]
name = "launch"
product = "FleetTrack"
lost_after = "5 business days"

[[cadences.steps]]
id = "intro"
subject = "{company} and {product}"
body = "Hi {first_name}, is fleet tracking at {company} still done by hand?"

[[cadences.steps]]
id = "f1"
delay = "3 business days"
subject = "Re: {product}"
body = "Hi {first_name}, following up."

[[cadences.steps]]
id = "f2"
delay = "4 business days"
subject = "Re: {product}"
body = "Hi {first_name}, one last note."
"""
# Friday before Easter 2026, after 17:00 in New York, Berlin and Tokyo alike.
FRIDAY_EVENING = datetime(2026, 3, 27, 22, 0, tzinfo=UTC)


def utc(day: str, hour: int) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


class Simulation:
    def __init__(self, env: OutboxEnv) -> None:
        self.env = env
        self.planner = build_planner(env.loaded, env.db, env.settings)
        self.sent: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self.seen = 0

    async def run(
        self, until: datetime, on_tick: Callable[[datetime], object] | None = None
    ) -> None:
        clock = self.env.clock
        while clock.now() <= until:
            await self.planner.tick(clock.now())
            await self.planner.tick(clock.now())  # twice: idempotent
            await self.env.drain()
            for item in self.env.handler.received[self.seen :]:
                subject = str(email.message_from_bytes(item.data)["Subject"])
                self.sent[item.rcpt_tos[0]].append((clock.now(), subject))
            self.seen = len(self.env.handler.received)
            if on_tick is not None:
                await on_tick(clock.now())  # type: ignore[misc]
            clock.advance(timedelta(hours=1))


async def lead(env: OutboxEnv, email_: str, **fields: object) -> Lead:
    return await env.lead(email_, first_name="Kim", company="Northwind", **fields)


async def test_touches_follow_each_leads_clock_holidays_replies_and_end_lost(
    tmp_path: Path,
) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        tokyo = await lead(env, "kim@tokyo.test", country="JP")
        berlin = await lead(env, "kim@berlin.test", country="DE")
        newyork = await lead(env, "kim@ny.test", country="US", timezone="America/New_York")
        sim = Simulation(env)

        async def tokyo_replies(now: datetime) -> None:
            if len(sim.sent["kim@tokyo.test"]) == 2 and now == utc("2026-04-02", 3):
                async with env.db.transaction() as session:
                    fresh = await session.get(Lead, tokyo.id)
                    assert fresh is not None
                    await transition(
                        session, fresh, State.CONVERSING, actor="test", reason="reply", now=now
                    )

        await sim.run(utc("2026-04-20", 0), tokyo_replies)

    times = {address: [t for t, _ in sends] for address, sends in sim.sent.items()}
    # The first touch at 09:00 local on Monday: Tokyo (JST), Berlin (CEST), New York (EDT).
    assert times["kim@tokyo.test"] == [utc("2026-03-30", 0), utc("2026-04-02", 0)]
    assert times["kim@berlin.test"] == [
        utc("2026-03-30", 7),
        utc("2026-04-02", 7),
        utc("2026-04-10", 7),  # 4 business days skipping Good Friday and Easter Monday
    ]
    assert times["kim@ny.test"] == [
        utc("2026-03-30", 13),
        utc("2026-04-02", 13),
        utc("2026-04-08", 13),  # no federal holiday at Easter
    ]
    assert sim.sent["kim@berlin.test"][0][1] == "Northwind and FleetTrack"
    assert await env_state(tmp_path, tokyo.id) == "conversing"
    assert await env_state(tmp_path, berlin.id) == "lost"
    assert await env_state(tmp_path, newyork.id) == "lost"


async def env_state(tmp_path: Path, lead_id: int) -> str:
    from leadloop.config import load
    from leadloop.storage.db import open_database

    loaded = load(tmp_path / "config.toml")
    db = await open_database(loaded.database_url)
    try:
        async with db.sessions() as session:
            found = await session.get(Lead, lead_id)
            assert found is not None
            return found.state
    finally:
        await db.dispose()


async def test_out_of_office_moves_the_next_touch_to_the_return_date(tmp_path: Path) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        berlin = await lead(env, "kim@berlin.test", country="DE")
        sim = Simulation(env)

        async def away(now: datetime) -> None:
            if now == utc("2026-03-31", 10):
                async with env.db.transaction() as session:
                    repo.add_event(
                        session,
                        "lead.out_of_office",
                        actor="pipeline.screen",
                        now=now,
                        lead_id=berlin.id,
                        data={"out_of_office": True, "return_date": "2026-04-14"},
                    )

        await sim.run(utc("2026-04-16", 0), away)
        times = [t for t, _ in sim.sent["kim@berlin.test"]]
        # Back on Tue 14 April: the next touch one business day later, 09:00 Berlin.
        assert times == [utc("2026-03-30", 7), utc("2026-04-15", 7)]
        assert await env.lead_state(berlin.id) == "engaging"  # no state change


async def test_a_missing_merge_field_holds_the_step_and_tells_the_owner(
    tmp_path: Path,
) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        nameless = await env.lead(
            "info@berlin.test", country="DE", company="Northwind", owner="ann@acme.example"
        )
        sim = Simulation(env)
        await sim.run(utc("2026-03-31", 12))
        assert sim.sent == {}
        [event] = await env.events("cadence.missing_field")
        assert event.data["owner"] == "ann@acme.example"
        assert event.data["fields"] == ["first_name"]
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, nameless.id)
            assert fresh is not None
            fresh.first_name = "Jo"
        await sim.run(utc("2026-04-01", 12))
        assert len(sim.sent["info@berlin.test"]) == 1
        assert len(await env.events("cadence.missing_field")) == 1


async def test_a_bounce_stops_the_cadence_for_good(tmp_path: Path) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        env.handler.rcpt_replies["gone@berlin.test"] = "550 5.1.1 No such user"
        gone = await lead(env, "gone@berlin.test", country="DE")
        sim = Simulation(env)
        await sim.run(utc("2026-04-10", 0))
        assert env.handler.transactions == 1
        assert await env.lead_state(gone.id) == "invalid"
        async with env.db.sessions() as session:
            enrollment = await session.get(CadenceEnrollment, 1)
            assert enrollment is not None
            assert enrollment.status == "stopped"
            assert "not sent" in (enrollment.reason or "")


async def test_preview_shows_what_the_next_ticks_then_send(tmp_path: Path) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        berlin = await lead(env, "kim@berlin.test", country="DE")
        sim = Simulation(env)
        async with env.db.sessions() as session:
            before = await preview(sim.planner, session, berlin, clock.now())
        assert before.status == "enrolled at the next tick"
        await sim.planner.tick(clock.now())
        async with env.db.sessions() as session:
            shown = await preview(sim.planner, session, berlin, clock.now())
        assert shown.next_step == "intro" and shown.zone == "Europe/Berlin"
        assert shown.next_at == before.next_at == utc("2026-03-30", 7)
        assert shown.later == [("f1", utc("2026-04-02", 7)), ("f2", utc("2026-04-10", 7))]
        await sim.run(utc("2026-04-11", 0))
        [first, *_] = env.handler.received
    sent = sim.sent["kim@berlin.test"]
    assert [t for t, _ in sent] == [shown.next_at, *(at for _, at in shown.later)]
    assert sent[0][1] == shown.subject
    message = email.message_from_bytes(first.data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    assert shown.body is not None
    assert shown.body in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_an_edit_replans_next_touches_and_keeps_each_lead_on_its_step(
    tmp_path: Path,
) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        berlin = await lead(env, "kim@berlin.test", country="DE")
        sim = Simulation(env)
        await sim.run(utc("2026-03-30", 8))  # the intro has gone out
        edited = CADENCE.replace('hours = "09:00-17:00"', 'hours = "13:00-17:00"').replace(
            'delay = "3 business days"', 'delay = "1 business day"'
        )
        loaded = write_config(tmp_path, env.loaded.settings.smtp.port, edited)
        planner = build_planner(loaded, env.db, env.settings)
        assert await planner.replan(clock.now()) == 1
        async with env.db.sessions() as session:
            enrollment = await session.scalar(
                select(CadenceEnrollment).where(CadenceEnrollment.lead_id == berlin.id)
            )
            assert enrollment is not None
            assert enrollment.next_step_id == "f1"
            # One business day after Monday's intro, in the new window (13:00 CEST).
            assert enrollment.next_at == utc("2026-03-31", 11)
        assert await planner.replan(clock.now()) == 0  # nothing left to change


async def test_segments_pick_their_leads_even_behind_many_others(tmp_path: Path) -> None:
    segmented = CADENCE.replace(
        'lost_after = "5 business days"',
        'lost_after = "5 business days"\n\n[cadences.segment]\nsources = ["webinar"]',
    ).replace('hours = "09:00-17:00"', 'hours = "09:00-17:00"\nplan_batch = 1')
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, segmented) as env:
        for i in range(3):
            await lead(env, f"cold{i}@berlin.test", country="DE", source="list")
        wanted = await lead(env, "warm@berlin.test", country="DE", source="webinar")
        result = await build_planner(env.loaded, env.db, env.settings).tick(clock.now())
        assert result.enrolled == 1
        async with env.db.sessions() as session:
            [enrolled] = (await session.scalars(select(CadenceEnrollment.lead_id))).all()
        assert enrolled == wanted.id


REENGAGE = """
[[cadences]]
name = "reengage"
priority = 200
product = "FleetTrack"

[cadences.segment]
states = ["nurture"]

[[cadences.steps]]
id = "back"
subject = "Back to {product}"
body = "Hi {first_name}, you asked me to come back to you about this."
"""


async def test_a_timing_commitment_nurtures_then_a_nurture_cadence_re_engages(
    tmp_path: Path,
) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE + REENGAGE) as env:
        berlin = await lead(env, "kim@berlin.test", country="DE")
        sim = Simulation(env)
        await sim.run(utc("2026-03-31", 12))  # the intro went out Monday
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, berlin.id)
            assert fresh is not None
            await nurture(
                session,
                fresh,
                utc("2026-04-20", 0),
                actor="test",
                reason='"ask me again after Easter"',
                now=clock.now(),
            )
        await sim.run(utc("2026-04-22", 0))
        subjects = [(t, s) for t, s in sim.sent["kim@berlin.test"]]
        # Nothing while nurtured; on the date the nurture cadence's first touch.
        assert subjects == [
            (utc("2026-03-30", 7), "Northwind and FleetTrack"),
            (utc("2026-04-20", 7), "Back to FleetTrack"),
        ]
        assert await env.lead_state(berlin.id) == "engaging"
        async with env.db.sessions() as session:
            row = await session.scalar(
                select(CadenceEnrollment).where(CadenceEnrollment.lead_id == berlin.id)
            )
            assert row is not None and row.cadence == "reengage"


async def test_clicks_stop_or_pause_as_configured_and_checkout_reminds_once(
    tmp_path: Path,
) -> None:
    config = CADENCE.replace(
        'lost_after = "5 business days"', 'lost_after = "5 business days"\non_click = "stop"'
    )
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, config) as env:
        buyer = await lead(env, "buyer@berlin.test", country="DE")
        browser = await lead(env, "browser@berlin.test", country="DE")
        sim = Simulation(env)
        await sim.run(utc("2026-03-30", 12))
        link = "https://shop.acme.example/checkout?plan=team"
        async with env.db.transaction() as session:
            for who, purchase in ((buyer, True), (browser, False)):
                fresh = await session.get(Lead, who.id)
                assert fresh is not None
                done = await record_click(
                    session, sim.planner.settings, fresh, link, purchase=purchase, now=clock.now()
                )
                assert "cadence launch stopped" in done
                assert ("checkout reminder" in done) is purchase

        async def due(now: datetime) -> None:
            await run_due(env.db, now, owner="t", context=sim.planner)

        await sim.run(utc("2026-04-10", 0), due)
        # The stopped cadence sent nothing more; the buyer got one reminder
        # with the same link two days after the click (13:00 UTC, queued by
        # the due task then, sent at the next hour's drain), the browser none.
        sent = {a: [(t, s) for t, s in v] for a, v in sim.sent.items()}
        assert sent["browser@berlin.test"] == [(utc("2026-03-30", 7), "Northwind and FleetTrack")]
        assert [t for t, _ in sent["buyer@berlin.test"]] == [
            utc("2026-03-30", 7),
            utc("2026-04-01", 14),
        ]
        reminder = email.message_from_bytes(env.handler.received[-1].data, policy=default_policy)
        assert isinstance(reminder, EmailMessage)
        assert link in reminder.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_a_conversion_cancels_the_checkout_reminder(tmp_path: Path) -> None:
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, CADENCE) as env:
        buyer = await lead(env, "buyer@berlin.test", country="DE")
        sim = Simulation(env)
        await sim.run(utc("2026-03-30", 12))
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, buyer.id)
            assert fresh is not None
            link = "https://shop.acme.example/checkout"
            await record_click(
                session, sim.planner.settings, fresh, link, purchase=True, now=clock.now()
            )
        clock.advance(timedelta(days=1))
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, buyer.id)
            assert fresh is not None
            await record_conversion(session, fresh, now=clock.now())

        async def due(now: datetime) -> None:
            await run_due(env.db, now, owner="t", context=sim.planner)

        await sim.run(utc("2026-04-10", 0), due)
        assert len(sim.sent["buyer@berlin.test"]) == 1  # the intro only
        assert await env.lead_state(buyer.id) == "won"


async def test_a_paused_lead_keeps_its_place_and_goes_on_after_resume(tmp_path: Path) -> None:
    config = CADENCE.replace(
        'lost_after = "5 business days"', 'lost_after = "5 business days"\non_click = "pause"'
    )
    clock = ManualClock(FRIDAY_EVENING)
    async with outbox_env(tmp_path, clock, config) as env:
        berlin = await lead(env, "kim@berlin.test", country="DE", owner="ann@acme.example")
        sim = Simulation(env)
        await sim.run(utc("2026-03-30", 12))
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, berlin.id)
            assert fresh is not None
            link = "https://acme.example/case-study"
            await record_click(
                session, sim.planner.settings, fresh, link, purchase=False, now=clock.now()
            )
        assert await env.lead_state(berlin.id) == "paused"
        [notice] = await env.events("lead.owner_notice")
        assert notice.data["owner"] == "ann@acme.example"
        await sim.run(utc("2026-04-06", 12))
        assert len(sim.sent["kim@berlin.test"]) == 1  # silent while paused
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, berlin.id)
            assert fresh is not None
            await transition(
                session, fresh, State.ENGAGING, actor="test", reason="RESUME", now=clock.now()
            )
        await sim.run(utc("2026-04-08", 12))
        # The f1 touch, due while paused, goes out at the next hour in the window.
        assert [t for t, _ in sim.sent["kim@berlin.test"]] == [
            utc("2026-03-30", 7),
            utc("2026-04-07", 7),
        ]
