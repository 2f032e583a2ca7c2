"""When may the next touch to a lead go out: pure time arithmetic for the cadence engine.

No database, no config objects and no clock of its own: every function takes the
current time as a parameter, accepts timezone-aware datetimes and returns aware UTC.

A touch goes out inside a :class:`SendWindow` (weekdays and local wall hours) on a
business day of the lead (its weekdays minus its country's public holidays), in the
lead's own time zone.  A step that falls outside a window waits for the next one and the
later steps shift rather than bunch up: each step's delay counts from the *actual* send
time of the previous touch, which the caller passes to :func:`plan_touch` as
``previous``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

Unit = Literal["minutes", "hours", "days", "business_days", "weeks"]

SEARCH_DAYS = 400
"""How far ahead :func:`next_window_start` looks before giving up."""

_UNITS: dict[str, Unit] = {
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "minutes"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "hours"),
    **dict.fromkeys(("d", "day", "days"), "days"),
    **dict.fromkeys(("bd", "business day", "business days"), "business_days"),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), "weeks"),
}
_MINUTES = {"minutes": 1, "hours": 60, "days": 24 * 60, "weeks": 7 * 24 * 60}
_DELAY_RE = re.compile(r"^(\d+)\s*([a-z][a-z _]*?)$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Delay:
    """A cadence step's wait: elapsed time, or business days on the lead's calendar."""

    amount: int
    unit: Unit

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 0:
            raise ValueError(f"a delay amount must be a whole number >= 0, not {self.amount!r}")
        if self.unit not in _UNITS.values():
            raise ValueError(f"unknown delay unit {self.unit!r}")

    @classmethod
    def parse(cls, text: str) -> Delay:
        """Parse "2d", "36h", "30m", "1w", "5 days", "2 weeks", "3 business days", ..."""
        match = _DELAY_RE.match(text.strip().lower())
        unit = _UNITS.get(re.sub(r"[\s_]+", " ", match.group(2)).strip()) if match else None
        if match is None or unit is None:
            raise ValueError(
                f"cannot read delay {text!r}: expected a whole number and a unit, like "
                '"30m", "36h", "2d", "1w" or "3 business days"'
            )
        return cls(int(match.group(1)), unit)


@dataclass(frozen=True)
class SendWindow:
    """Weekdays (0=Monday) and local wall hours [start, end) in which touches may go out."""

    weekdays: frozenset[int] = field(default=frozenset(range(5)))
    start: time = time(9, 0)
    end: time = time(17, 0)
    skip_holidays: bool = True

    def __post_init__(self) -> None:
        if not self.weekdays or not self.weekdays <= set(range(7)):
            raise ValueError(
                f"send window weekdays must be a non-empty subset of 0..6, not "
                f"{sorted(self.weekdays)}"
            )
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("send window hours are local wall times, without a tzinfo")
        if not self.start < self.end:
            raise ValueError(f"send window start {self.start} must be before its end {self.end}")

    @classmethod
    def parse(
        cls, days: str = "mon-fri", hours: str = "09:00-17:00", skip_holidays: bool = True
    ) -> SendWindow:
        """Parse days like "mon-fri", "mon,wed,fri", "sun-thu" and hours "HH:MM-HH:MM".

        A range wraps around the week end: "sun-thu" is Sunday through Thursday.
        """
        weekdays: set[int] = set()
        for part in days.lower().split(","):
            ends = [_weekday(name, days) for name in part.split("-")]
            if len(ends) == 1:
                weekdays.add(ends[0])
            elif len(ends) == 2:
                weekdays.update((ends[0] + i) % 7 for i in range((ends[1] - ends[0]) % 7 + 1))
            else:
                raise ValueError(f"cannot read send days {days!r}: bad range {part.strip()!r}")
        match = _HOURS_RE.match(hours.strip())
        if match is None:
            raise ValueError(f'cannot read send hours {hours!r}: expected "HH:MM-HH:MM"')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        try:
            start, end = time(h1, m1), time(h2, m2)
        except ValueError as exc:
            raise ValueError(f"cannot read send hours {hours!r}: {exc}") from None
        return cls(frozenset(weekdays), start, end, skip_holidays)


def _weekday(name: str, days: str) -> int:
    name = name.strip()
    for names in (_DAYS, _FULL_DAYS):
        if name in names:
            return names.index(name)
    raise ValueError(f"cannot read send days {days!r}: unknown day {name!r} (use mon..sun)")


# A small built-in table of the most common B2B countries, not a full ISO 3166 list.  For a
# country spanning several zones it names the most populous business zone (US -> New York,
# CA -> Toronto, BR -> Sao Paulo, AU -> Sydney, MX -> Mexico City); a lead elsewhere in such
# a country needs its own ``timezone``.  Alpha-2 codes outside it still get their holidays.
_COUNTRY_TABLE = """
US America/New_York united states, united states of america, usa; CA America/Toronto canada;
MX America/Mexico_City mexico; BR America/Sao_Paulo brazil; CO America/Bogota colombia;
AR America/Argentina/Buenos_Aires argentina; CL America/Santiago chile; IE Europe/Dublin ireland;
GB Europe/London united kingdom, uk, great britain, britain, england; DE Europe/Berlin germany;
FR Europe/Paris france; NL Europe/Amsterdam netherlands, the netherlands, holland;
BE Europe/Brussels belgium; LU Europe/Luxembourg luxembourg; CH Europe/Zurich switzerland;
AT Europe/Vienna austria; IT Europe/Rome italy; ES Europe/Madrid spain; PT Europe/Lisbon portugal;
SE Europe/Stockholm sweden; NO Europe/Oslo norway; DK Europe/Copenhagen denmark;
FI Europe/Helsinki finland; PL Europe/Warsaw poland; CZ Europe/Prague czechia, czech republic;
HU Europe/Budapest hungary; RO Europe/Bucharest romania; GR Europe/Athens greece;
TR Europe/Istanbul turkey, turkiye; UA Europe/Kyiv ukraine; IL Asia/Jerusalem israel;
AE Asia/Dubai united arab emirates, uae; SA Asia/Riyadh saudi arabia; IN Asia/Kolkata india;
SG Asia/Singapore singapore; HK Asia/Hong_Kong hong kong; CN Asia/Shanghai china;
JP Asia/Tokyo japan; KR Asia/Seoul south korea, korea; AU Australia/Sydney australia;
NZ Pacific/Auckland new zealand; ZA Africa/Johannesburg south africa
"""  # "CODE Zone name, name; ..." entries
_ENTRIES = [entry.split(maxsplit=2) for entry in _COUNTRY_TABLE.split(";")]
_COUNTRIES = {code: zone for code, zone, _ in _ENTRIES}
_COUNTRY_NAMES = {
    " ".join(name.split()): code for code, _, names in _ENTRIES for name in names.split(",")
}


def country_code(country: str | None) -> str | None:
    """An alpha-2 code (any, upper-cased) or a known English name -> alpha-2; else None."""
    text = (country or "").strip()
    if len(text) == 2 and text.isalpha():
        return "GB" if text.upper() == "UK" else text.upper()
    return _COUNTRY_NAMES.get(" ".join(text.casefold().split()))


def lead_zone(timezone: str | None, country: str | None, default: str) -> ZoneInfo:
    """The lead's own IANA zone if valid, else its country's (see the table), else ``default``."""
    if timezone and timezone.strip():
        try:
            return ZoneInfo(timezone.strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass  # a typo or junk from an import: fall back to the country
    code = country_code(country)
    if code in _COUNTRIES:
        return ZoneInfo(_COUNTRIES[code])
    return ZoneInfo(default)


@lru_cache(maxsize=256)
def _holidays(code: str, year: int) -> frozenset[date]:
    try:
        return frozenset(holidays.country_holidays(code, years=year))
    except NotImplementedError:  # a country the library does not know: no holidays
        return frozenset()


def is_business_day(day: date, country: str | None, window: SendWindow) -> bool:
    """A window weekday that is not a national public holiday of ``country`` (if skipped)."""
    if day.weekday() not in window.weekdays:
        return False
    code = country_code(country) if window.skip_holidays else None
    return code is None or day not in _holidays(code, day.year)


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of local ``day`` at ``wall``.

    An ambiguous wall time (DST fold) is its earlier instant.  A wall time skipped by a DST
    gap is the first valid instant after it, i.e. the moment the clocks jumped.
    """
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=zone, fold=0)
    result = first.astimezone(UTC)
    if result.astimezone(zone).replace(tzinfo=None) == naive:
        return result
    # In a gap, fold=0 reads the wall time with the old offset (an instant after the jump)
    # and fold=1 with the new one (an instant before it); bisect for the jump itself.
    before = first.utcoffset()
    lo = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(result.timestamp()) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _business_days_after(day: date, count: int, country: str | None, window: SendWindow) -> date:
    """The ``count``-th business day after ``day`` (``day`` itself when ``count`` is 0)."""
    current, left = day, count
    for _ in range(SEARCH_DAYS + 7 * count):
        if left == 0:
            return current
        current += timedelta(days=1)
        if is_business_day(current, country, window):
            left -= 1
    raise ValueError(f"no {count} business days within reach after {day}")


def next_window_start(
    after: datetime, zone: ZoneInfo, country: str | None, window: SendWindow
) -> datetime:
    """The earliest instant >= ``after`` inside the window on a business day of the lead.

    Returns ``after`` itself (in UTC) if it already is inside a window.
    """
    after = _utc(after, "after")
    day = after.astimezone(zone).date()
    for offset in range(SEARCH_DAYS):
        current = day + timedelta(days=offset)
        if not is_business_day(current, country, window):
            continue
        candidate = max(after, _instant(current, window.start, zone))
        # A window wholly inside a DST gap is empty that day.
        if candidate < _instant(current, window.end, zone):
            return candidate
    raise ValueError(f"no send window within {SEARCH_DAYS} days after {after.isoformat()}")


def add_delay(
    start: datetime, delay: Delay, zone: ZoneInfo, country: str | None, window: SendWindow
) -> datetime:
    """``start`` plus ``delay``, in UTC.

    Minutes to weeks are plain elapsed time.  Business days count on the lead's local
    calendar and keep the local wall time of ``start``, even outside the window (the caller
    then applies :func:`next_window_start`).
    """
    start = _utc(start, "start")
    if delay.unit != "business_days":
        return start + timedelta(minutes=delay.amount * _MINUTES[delay.unit])
    local = start.astimezone(zone)
    day = _business_days_after(local.date(), delay.amount, country, window)
    return _instant(day, local.time(), zone)


def plan_touch(
    previous: datetime | None,
    delay: Delay,
    now: datetime,
    zone: ZoneInfo,
    country: str | None,
    window: SendWindow,
    *,
    min_gap_business_days: int = 1,
) -> datetime:
    """When the next touch may go out, in UTC.

    ``previous`` is when the previous touch to this person *actually* went out (None for
    the first touch, which goes out at the next window from ``now``).  The delay counts
    from it, so a step pushed out by a weekend shifts the later steps instead of letting
    them bunch up.  The result is never before ``now``, and lies on a date at least
    ``min_gap_business_days`` business days after the previous touch's local date (so with
    the default of 1, a touch on Friday allows the next on Monday at the earliest).
    """
    if min_gap_business_days < 0:
        raise ValueError(f"min_gap_business_days must be >= 0, not {min_gap_business_days}")
    now = _utc(now, "now")
    if previous is None:
        return next_window_start(now, zone, country, window)
    base = max(add_delay(previous, delay, zone, country, window), now)
    if min_gap_business_days:
        prev_day = previous.astimezone(zone).date()
        gap_day = _business_days_after(prev_day, min_gap_business_days, country, window)
        base = max(base, _instant(gap_day, time(0, 0), zone))
    return next_window_start(base, zone, country, window)


def add_business_hours(
    start: datetime, hours: float, zone: ZoneInfo, country: str | None, window: SendWindow
) -> datetime:
    """``start`` plus ``hours`` counted only inside the window on business
    days (an escalation raised Friday at 16:00 with 8 business hours and a
    09:00-17:00 window is due Monday at 16:00), in UTC."""
    left = timedelta(hours=hours)
    moment = next_window_start(start, zone, country, window)
    for _ in range(SEARCH_DAYS):
        day = moment.astimezone(zone).date()
        close = _instant(day, window.end, zone)
        if moment + left <= close:
            return moment + left
        left -= close - moment
        moment = next_window_start(close + timedelta(seconds=1), zone, country, window)
    raise ValueError(f"no {hours} business hours within {SEARCH_DAYS} days of {start}")
