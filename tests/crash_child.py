"""Run ``leadloop run --once`` in this process and die by SIGKILL at one point.

Usage: ``python crash_child.py CONFIG CRASHPOINT [CALL [MESSAGE_ID]]``.  The
process kills itself on the CALL-th (default first) arrival at CRASHPOINT:

- ``before_commit``: in ingest's transaction, after ``repo.store_inbound``
  and ``repo.advance_cursor`` ran, before the commit.  It prints how many
  inbound rows that uncommitted transaction holds.
- ``before_ack``: on entering ``acknowledge`` (Maildir or IMAP), after the commit,
  before any file is renamed.
- ``in_stage``: inside the first stage's (screen) ``process``, in the transaction that
  would commit its result (only for MESSAGE_ID, when given).  It prints the
  Message-ID of the message in hand.

A real server cannot stop a process at an exact line, so the point is reached
through a patched function; the database, the Maildir and the migrations are
the real ones.  Anything printed is flushed before the kill, which loses
buffered output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from leadloop import config as config_module
from leadloop.agent.pipeline import Outcome, StageContext
from leadloop.agent.screening import ScreenStage
from leadloop.channels.base import RawMail
from leadloop.channels.imap import ImapInbox
from leadloop.channels.maildir import MaildirInbox
from leadloop.daemon.service import Service
from leadloop.storage import repo
from leadloop.storage.models import InboundMessage

CRASHPOINTS = ("before_commit", "before_ack", "in_stage")


def die(report: str) -> None:
    print(report, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def patch_acknowledge(inbox_class: Any, arrived: Any) -> None:
    acknowledge = inbox_class.acknowledge

    async def die_before_acknowledging(self: Any, mails: Sequence[RawMail]) -> None:
        if arrived():
            die(f"acknowledging={len(mails)}")
        await acknowledge(self, mails)

    inbox_class.acknowledge = die_before_acknowledging


def arm(crashpoint: str, call: int, target: str | None = None) -> None:
    arrivals = 0

    def arrived() -> bool:
        nonlocal arrivals
        arrivals += 1
        return arrivals == call

    if crashpoint == "before_commit":
        advance_cursor = repo.advance_cursor

        async def advance_then_die(session: Any, *args: Any, **kwargs: Any) -> None:
            await advance_cursor(session, *args, **kwargs)
            if arrived():
                held = await session.scalar(select(func.count()).select_from(InboundMessage))
                die(f"uncommitted_rows={held}")

        # ingest calls it as repo.advance_cursor, so the module attribute is the hook.
        repo.advance_cursor = advance_then_die  # type: ignore[assignment]
    elif crashpoint == "before_ack":
        for inbox_class in (MaildirInbox, ImapInbox):
            patch_acknowledge(inbox_class, arrived)
    elif crashpoint == "in_stage":
        process = ScreenStage.process

        async def die_in_first_stage(
            self: ScreenStage, item: InboundMessage, ctx: StageContext
        ) -> Outcome:
            wanted = target is None or item.message_id == target
            if wanted and arrived():
                die(f"in_work={item.message_id}")
            return await process(self, item, ctx)

        ScreenStage.process = die_in_first_stage  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crashpoint {crashpoint!r}; use one of {CRASHPOINTS}")


async def main(config: str, crashpoint: str, call: int, target: str | None) -> None:
    arm(crashpoint, call, target)
    service = Service(config_module.load(config))
    await service.run(once=True)


if __name__ == "__main__":
    config_file, point = sys.argv[1], sys.argv[2]
    nth = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    message_id = sys.argv[4] if len(sys.argv) > 4 else None
    asyncio.run(main(config_file, point, nth, message_id))
    # Reaching here means the crash point was never reached.
    raise SystemExit(f"crashpoint {point!r} (call {nth}) was not reached")
