"""Background tasks that are kept and whose crashes are logged, never lost.

asyncio holds only weak references to tasks: a task nobody keeps can be
garbage-collected mid-flight, and an exception in one nobody awaits is
reported, if at all, when it is collected.  Every long-running task of the
daemon is made here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("leadloop.daemon.tasks")


class TaskKeeper:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.crashed: list[tuple[str, BaseException]] = []

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.crashed.append((task.get_name(), exc))
            log.error("task %s crashed", task.get_name(), exc_info=exc)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)
