"""Drain the outbox in this process and die by SIGKILL at one point.

Usage: ``python outbox_crash_child.py CONFIG CRASHPOINT``.  CRASHPOINT is
one of the sender's fault points (``before_smtp``; ``before_dot``: the whole
message written, its final dot not, i.e. during DATA; ``after_reply``: the
server's 250 read, the outcome not committed; ``after_commit``) or ``none``
for a clean run, as after a restart.  The process kills itself on the first
arrival.  A real server cannot stop a client at an exact line, so the point
is a hook; the SMTP server, database and migrations are the real ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from leadloop import config as config_module
from leadloop.agent.outbox import Ready
from leadloop.clock import SystemClock
from leadloop.daemon.service import build_sender
from leadloop.storage.db import open_database


async def main(config_path: str, crashpoint: str) -> None:
    loaded = config_module.load(config_path)
    db = await open_database(loaded.database_url)
    sender = build_sender(loaded, db, SystemClock(), f"child-{os.getpid()}")

    async def fault(point: str, item: Ready) -> None:
        if point == crashpoint:
            print(f"{point} {item.message_id}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    sender.fault = fault
    await sender.recover(all_claims=True)
    await sender.drain()
    await sender.close()
    await db.dispose()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
