"""The one source of time.

Everything that reads the time takes a :class:`Clock`, so tests, ``leadloop
replay`` and ``leadloop demo`` can run weeks of cadence in seconds.  All
times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Return the current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to, and never backwards."""

    def __init__(self, start: datetime) -> None:
        self._now = _as_utc(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError(f"the clock never runs backwards (asked to move by {delta})")
        self._now += delta
        return self._now

    def move_to(self, when: datetime) -> datetime:
        """Move to *when*, or stay put when *when* lies in the past."""
        when = _as_utc(when)
        if when > self._now:
            self._now = when
        return self._now


def _as_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware one")
    return when.astimezone(UTC)
