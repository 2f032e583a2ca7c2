"""Meeting proposals when no booking link is configured: three times on the
next business days inside the buyer's send window, listed in the reply and
attached as an iCalendar file (RFC 5545, built with ``icalendar``).

The agent has no calendar: the times are proposals (``STATUS:TENTATIVE``,
``METHOD:PUBLISH``), and the buyer's answer goes to a person like any reply.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, vCalAddress, vText

from leadloop.agent.sendtime import SendWindow, is_business_day

LENGTH = timedelta(minutes=30)
_WALL = (time(10, 0), time(14, 0), time(11, 0))  # morning, afternoon, morning
_WEEKDAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "de": ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
    "fr": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}


def proposed_times(
    now: datetime,
    zone: ZoneInfo,
    country: str | None,
    window: SendWindow,
    count: int = 3,
    length: timedelta = LENGTH,
) -> list[datetime]:
    """*count* start times (UTC) on the business days after the next one, in
    the buyer's zone, inside the window's hours."""
    day = now.astimezone(zone).date() + timedelta(days=1)
    times: list[datetime] = []
    skipped_first = False
    for _ in range(60):
        if len(times) == count:
            break
        day += timedelta(days=1)
        if not is_business_day(day, country, window):
            continue
        if not skipped_first:  # leave the buyer a business day to answer
            skipped_first = True
            continue
        wall = _WALL[len(times) % len(_WALL)]
        latest = (datetime.combine(day, window.end) - length).time()
        wall = min(max(wall, window.start), latest)
        times.append(datetime.combine(day, wall, zone).astimezone(UTC))
    return times


def format_times(times: list[datetime], zone: ZoneInfo, language: str) -> str:
    """One line per proposal in the buyer's zone: "- Tuesday 2026-03-10, 10:00 (Europe/Berlin)"."""
    names = _WEEKDAYS.get(language, _WEEKDAYS["en"])
    lines = []
    for moment in times:
        local = moment.astimezone(zone)
        lines.append(f"- {names[local.weekday()]} {local:%Y-%m-%d}, {local:%H:%M} ({zone.key})")
    return "\n".join(lines)


def calendar_file(
    times: list[datetime],
    *,
    summary: str,
    organizer: str,
    attendee: str,
    uid_prefix: str,
    now: datetime,
    length: timedelta = LENGTH,
) -> bytes:
    """An iCalendar file with each proposal as a tentative event."""
    calendar = Calendar()
    calendar.add("prodid", "-//leadloop//meeting proposals//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    for number, start in enumerate(times, 1):
        event = Event()
        event.add("uid", f"{uid_prefix}-{number}")
        event.add("dtstamp", now.astimezone(UTC))
        event.add("dtstart", start.astimezone(UTC))
        event.add("dtend", (start + length).astimezone(UTC))
        event.add("summary", summary)
        event.add("status", "TENTATIVE")
        event.add("description", vText("Proposed time: reply to the mail to confirm one."))
        event["organizer"] = vCalAddress(f"mailto:{organizer}")
        event.add("attendee", vCalAddress(f"mailto:{attendee}"))
        calendar.add_component(event)
    return bytes(calendar.to_ical())
