"""`leadloop outbox list|show|release|cancel` and `leadloop resume --mailbox`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import T0
from sqlalchemy import select

from leadloop import cli
from leadloop.agent import outbox
from leadloop.agent.controls import default_actor
from leadloop.agent.lifecycle import create_lead
from leadloop.agent.stages import token_keys
from leadloop.config import load
from leadloop.storage import repo
from leadloop.storage.db import open_database
from leadloop.storage.models import Event, Lead, Mailbox, OutboundMessage

CONFIG = """
[service]
state_dir = "var"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
path = "mail"

[smtp]
host = "127.0.0.1"
port = 2525
"""


async def seed(config: Path) -> int:
    loaded = load(config)
    db = await open_database(loaded.database_url)
    settings = outbox.OutboxSettings.from_config(loaded, token_keys(loaded))
    async with db.transaction() as session:
        box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
        box.send_paused_at = T0
        box.send_paused_reason = "test"
        lead = await create_lead(
            session, Lead(email="dana@buyer.test"), actor="t", reason="t", now=T0
        )
        row = await outbox.queue(
            session,
            settings,
            kind="touch",
            to=[lead.email],
            subject="Fleet tracking",
            text="Hello",
            now=T0,
            idempotency_key="t:1",
            lead=lead,
        )
        outbox.hold(session, row, "outcome unknown; no server copy", T0)
        row_id = row.id
    await db.dispose()
    return row_id


async def fetch(config: Path, row_id: int) -> tuple[OutboundMessage, Mailbox, list[Event]]:
    loaded = load(config)
    db = await open_database(loaded.database_url)
    async with db.transaction() as session:
        row = await session.get(OutboundMessage, row_id)
        box = await session.scalar(select(Mailbox))
        events = list((await session.scalars(select(Event).order_by(Event.id))).all())
    await db.dispose()
    assert row is not None and box is not None
    return row, box, events


def test_operator_lists_shows_releases_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    row_id = asyncio.run(seed(config))
    args = ["--config", str(config)]

    assert cli.main(["outbox", "list", "--json", *args]) == 0
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["id"] == row_id and listed["status"] == "held"
    assert "no server copy" in listed["reason"]

    assert cli.main(["outbox", "show", str(row_id), *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["to"] == ["dana@buyer.test"]
    assert [e["kind"] for e in shown["events"]] == ["outbound.queued", "alert.mail_held"]

    assert cli.main(["outbox", "release", str(row_id), *args]) == 0
    assert cli.main(["outbox", "release", str(row_id), *args]) == 1  # now queued
    assert "only held or failed" in capsys.readouterr().err
    assert cli.main(["outbox", "show", "999", *args]) == 1
    assert cli.main(["resume", "--mailbox", "sales", *args]) == 0
    assert "sends again" in capsys.readouterr().out
    assert cli.main(["resume", "--mailbox", "nope", *args]) == 1

    row, box, events = asyncio.run(fetch(config, row_id))
    assert row.status == "queued" and row.attempts == 0
    assert box.send_paused_at is None
    used = [(e.kind, e.actor) for e in events if e.actor.startswith("admin:")]
    me = default_actor()  # commands record the OS user (`--by` may say otherwise)
    assert used == [
        ("outbox.released", me),
        ("outbox.resumed", me),
        ("control.resume", me),
    ]

    assert cli.main(["outbox", "cancel", str(row_id), *args]) == 0
    row, _, _ = asyncio.run(fetch(config, row_id))
    assert row.status == "cancelled"


def test_preview_prints_the_next_touch_for_a_lead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG
        + '\n[[cadences]]\nname = "launch"\n\n[[cadences.steps]]\nid = "intro"\n'
        + 'subject = "Hello {first_name}"\nbody = "About {company}."\n'
    )

    async def add_lead() -> None:
        db = await open_database(load(config).database_url)
        async with db.transaction() as session:
            await create_lead(
                session,
                Lead(email="kim@berlin.test", first_name="Kim", country="DE"),
                actor="t",
                reason="t",
                now=T0,
            )
        await db.dispose()

    asyncio.run(add_lead())
    args = ["--config", str(config)]
    assert cli.main(["preview", "--lead", "kim@berlin.test", "--json", *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["next_step"] == "intro" and shown["zone"] == "Europe/Berlin"
    assert shown["missing_fields"] == ["company"]  # waits rather than send "About ."
    assert cli.main(["preview", *args]) == 0
    assert "waits: the lead has no company" in capsys.readouterr().out
    assert cli.main(["preview", "--lead", "nobody@x.test", *args]) == 1
