"""The crash matrix: a sender killed by SIGKILL at each point of a send,
then restarted, leaves aiosmtpd holding each lead mail exactly once."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import pytest
from outbox_env import outbox_env

from leadloop.agent.outbox import Status
from leadloop.clock import ManualClock

CHILD = Path(__file__).parent / "outbox_crash_child.py"
# One connection: the mails go one after another, so the kill always comes
# at the first mail's crash point with the others still waiting.
ONE_CONNECTION = "connections = 1\n"


async def run_child(config: Path, crashpoint: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(config),
        crashpoint,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    if crashpoint == "none":
        assert process.returncode == 0, err.decode()
    return process.returncode, out.decode()


@pytest.mark.parametrize("crashpoint", ["before_smtp", "before_dot", "after_reply", "after_commit"])
async def test_killed_sender_restarts_without_losing_or_doubling_a_mail(
    tmp_path: Path, clock: ManualClock, crashpoint: str
) -> None:
    async with outbox_env(tmp_path, clock, smtp_extra=ONE_CONNECTION) as env:
        leads = [await env.lead(f"lead{i}@buyer{i}.test") for i in range(3)]
        ids = [await env.touch(lead) for lead in leads]
        code, out = await run_child(env.loaded.file, crashpoint)
        assert code == -9, out
        assert out.startswith(crashpoint)
        await run_child(env.loaded.file, "none")
        received = Counter(env.handler.message_ids())
        rows = [await env.row(i) for i in ids]
        assert all(count == 1 for count in received.values()), received
        if crashpoint == "after_reply":
            # Delivered, outcome unknown to us, no server copy to check:
            # held for an operator and alerted, never resent blindly.
            first, *rest = rows
            assert first.status == Status.HELD
            assert received[first.message_id] == 1
            assert await env.events("alert.mail_held")
            assert [r.status for r in rest] == [Status.SENT, Status.SENT]
        else:
            assert [r.status for r in rows] == [Status.SENT] * 3
        assert set(received) == {r.message_id for r in rows}
