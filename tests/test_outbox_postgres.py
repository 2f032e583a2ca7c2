"""The outbox's set-based statements on a real PostgreSQL (asyncpg): a
batch sent through aiosmtpd, a permanent refusal, the breaker and a restart
that finds a mail in doubt."""

from __future__ import annotations

from itertools import count
from pathlib import Path

from outbox_env import outbox_env
from postgres import create_database
from smtp_servers import ScriptedHandler

from leadloop.agent import outbox
from leadloop.agent.outbox import Status
from leadloop.clock import ManualClock

_names = count()


async def test_a_batch_with_refusals_on_postgresql(
    tmp_path: Path, clock: ManualClock, postgres_base: str
) -> None:
    url = await create_database(postgres_base, f"outbox{next(_names)}")
    refused = ["a@one.test", "b@two.test", "c@three.test"]
    handler = ScriptedHandler(rcpt_replies={a: "550 5.7.1 Rejected as spam" for a in refused})
    handler.rcpt_replies["gone@buyer.test"] = "550 5.1.1 No such user"
    async with outbox_env(tmp_path, clock, handler=handler, url=url) as env:
        good = [await env.touch(await env.lead(f"p{i}@fine{i}.test")) for i in range(6)]
        gone = await env.touch(await env.lead("gone@buyer.test"))
        for address in refused:
            await env.touch(await env.lead(address))
        result = await env.drain()
        assert result.claimed == 10
        assert [(await env.row(i)).status for i in good] == [Status.SENT] * 6
        assert (await env.row(gone)).status == Status.REJECTED
        assert len(handler.received) == 6
        [alert] = await env.events("alert.sender_paused")
        assert "3 policy rejections" in alert.reasons[0]
        states = [e.data["to"] for e in await env.events("lead.state")]
        assert states.count("engaging") == 6 and "invalid" in states


async def test_a_restart_on_postgresql_holds_the_mail_after_the_dot(
    tmp_path: Path, clock: ManualClock, postgres_base: str
) -> None:
    url = await create_database(postgres_base, f"outbox{next(_names)}")
    async with outbox_env(tmp_path, clock, url=url) as env:
        row_id = await env.touch(await env.lead("dana@buyer.test"))
        async with env.db.transaction() as session:
            [ready] = await outbox.claim(session, env.settings, worker="dead", now=env.now)
            await outbox.mark_dot(session, [ready.id])
        # Another daemon finds the claim after its lease: in doubt, held.
        clock.advance(env.settings.lease * 2)
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.HELD
        assert env.handler.received == []
