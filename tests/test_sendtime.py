"""Send-time arithmetic against real zones (tzdata) and real holidays (``holidays``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from leadloop.agent.sendtime import (
    Delay,
    SendWindow,
    add_delay,
    is_business_day,
    lead_zone,
    next_window_start,
    plan_touch,
)

BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = SendWindow()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


# --- Delay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2d", Delay(2, "days")),
        ("36h", Delay(36, "hours")),
        ("30m", Delay(30, "minutes")),
        ("1w", Delay(1, "weeks")),
        ("5 days", Delay(5, "days")),
        ("2 Weeks", Delay(2, "weeks")),
        ("3 business days", Delay(3, "business_days")),
        ("1 Business Day", Delay(1, "business_days")),
        ("  4  business_days ", Delay(4, "business_days")),
        ("0d", Delay(0, "days")),
        ("90 MIN", Delay(90, "minutes")),
    ],
)
def test_delay_parse_accepts(text: str, expected: Delay) -> None:
    assert Delay.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "d", "2", "-1d", "1.5d", "2 fortnights", "3 business", "2d 3h", "two days"]
)
def test_delay_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read delay"):
        Delay.parse(text)


def test_delay_refuses_negative_amount_and_unknown_unit() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Delay(-1, "days")
    with pytest.raises(ValueError, match="unit"):
        Delay(1, "months")  # type: ignore[arg-type]


# --- SendWindow -------------------------------------------------------------------------------


def test_send_window_defaults() -> None:
    window = SendWindow.parse()
    assert window == WEEKDAYS
    assert window.weekdays == frozenset({0, 1, 2, 3, 4})
    assert (window.start, window.end, window.skip_holidays) == (time(9), time(17), True)


@pytest.mark.parametrize(
    ("days", "weekdays"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("mon,wed,fri", {0, 2, 4}),
        ("tue-thu,sat", {1, 2, 3, 5}),
        ("Sun-Thu", {6, 0, 1, 2, 3}),  # wraps around the week end
        ("saturday", {5}),
    ],
)
def test_send_window_parse_days(days: str, weekdays: set[int]) -> None:
    assert SendWindow.parse(days).weekdays == frozenset(weekdays)


def test_send_window_parse_hours() -> None:
    window = SendWindow.parse("mon", "08:30 - 18:15", skip_holidays=False)
    assert (window.start, window.end, window.skip_holidays) == (time(8, 30), time(18, 15), False)


@pytest.mark.parametrize(
    ("days", "hours", "message"),
    [
        ("mon-fry", "09:00-17:00", "unknown day"),
        ("mon-wed-fri", "09:00-17:00", "bad range"),
        ("", "09:00-17:00", "unknown day"),
        ("mon-fri", "9-17", "HH:MM-HH:MM"),
        ("mon-fri", "25:00-26:00", "cannot read send hours"),
        ("mon-fri", "17:00-09:00", "before its end"),
        ("mon-fri", "09:00-09:00", "before its end"),
    ],
)
def test_send_window_parse_refuses(days: str, hours: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SendWindow.parse(days, hours)


def test_send_window_refuses_bad_weekdays() -> None:
    with pytest.raises(ValueError, match="weekdays"):
        SendWindow(weekdays=frozenset())
    with pytest.raises(ValueError, match="weekdays"):
        SendWindow(weekdays=frozenset({7}))


# --- lead_zone --------------------------------------------------------------------------------


def test_lead_zone() -> None:
    assert lead_zone("America/Chicago", "DE", "UTC") == ZoneInfo("America/Chicago")
    assert lead_zone("Mars/Olympus_Mons", "DE", "UTC") == BERLIN
    assert lead_zone("../etc/passwd", "Japan", "UTC") == TOKYO
    assert lead_zone(None, "JP", "UTC") == TOKYO
    assert lead_zone("", " japan ", "UTC") == TOKYO
    assert lead_zone(None, "DE", "UTC") == BERLIN
    assert lead_zone(None, "United States", "UTC") == NEW_YORK
    assert lead_zone(None, "us", "UTC") == NEW_YORK
    assert lead_zone(None, "Atlantis", "Europe/Paris") == ZoneInfo("Europe/Paris")
    assert lead_zone(None, "XX", "Europe/Paris") == ZoneInfo("Europe/Paris")
    assert lead_zone(None, None, "UTC") == ZoneInfo("UTC")


# --- next_window_start ------------------------------------------------------------------------


def test_next_window_start_same_instant_three_zones() -> None:
    # Friday 2026-03-06 23:00 UTC: Tokyo is Sat 08:00, Berlin Sat 00:00, New York Fri 18:00.
    after = utc(2026, 3, 6, 23, 0)
    assert next_window_start(after, TOKYO, "JP", WEEKDAYS) == utc(2026, 3, 9, 0, 0)
    assert next_window_start(after, BERLIN, "DE", WEEKDAYS) == utc(2026, 3, 9, 8, 0)
    # US DST starts Sun 2026-03-08: Monday 09:00 is EDT (UTC-4), not EST.
    assert next_window_start(after, NEW_YORK, "US", WEEKDAYS) == utc(2026, 3, 9, 13, 0)


def test_next_window_start_inside_window_returns_after() -> None:
    # Friday 20:00 UTC is 15:00 in New York: inside the window, so unchanged.
    after = utc(2026, 3, 6, 20, 0)
    assert next_window_start(after, NEW_YORK, "US", WEEKDAYS) == after
    assert next_window_start(after, TOKYO, "JP", WEEKDAYS) == utc(2026, 3, 9, 0, 0)
    # The end is exclusive: 17:00 sharp waits for the next business morning.
    assert next_window_start(berlin(2026, 3, 5, 17, 0), BERLIN, "DE", WEEKDAYS) == berlin(
        2026, 3, 6, 9, 0
    )
    # Same day before the window opens.
    assert next_window_start(berlin(2026, 3, 5, 7, 0), BERLIN, "DE", WEEKDAYS) == berlin(
        2026, 3, 5, 9, 0
    )


def test_next_window_start_refuses_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_window_start(datetime(2026, 3, 6, 12, 0), BERLIN, "DE", WEEKDAYS)


# --- holidays ---------------------------------------------------------------------------------


def test_berlin_christmas_waits_for_monday() -> None:
    due = berlin(2026, 12, 24, 18, 0)  # Thursday evening, Christmas Eve
    assert next_window_start(due, BERLIN, "DE", WEEKDAYS) == utc(2026, 12, 28, 8, 0)
    assert next_window_start(due, BERLIN, "Germany", WEEKDAYS) == utc(2026, 12, 28, 8, 0)
    # Without holiday skipping (or without a known country) Christmas Day is a work day.
    no_skip = SendWindow(skip_holidays=False)
    assert next_window_start(due, BERLIN, "DE", no_skip) == utc(2026, 12, 25, 8, 0)
    assert next_window_start(due, BERLIN, None, WEEKDAYS) == utc(2026, 12, 25, 8, 0)
    assert next_window_start(due, BERLIN, "XX", WEEKDAYS) == utc(2026, 12, 25, 8, 0)


def test_us_thanksgiving_skips_to_friday() -> None:
    due = datetime(2026, 11, 25, 18, 0, tzinfo=NEW_YORK)  # Wednesday evening
    assert next_window_start(due, NEW_YORK, "US", WEEKDAYS) == utc(2026, 11, 27, 14, 0)
    assert next_window_start(due, NEW_YORK, "DE", WEEKDAYS) == utc(2026, 11, 26, 14, 0)


def test_is_business_day() -> None:
    assert is_business_day(date(2026, 12, 24), "DE", WEEKDAYS)
    assert not is_business_day(date(2026, 12, 25), "DE", WEEKDAYS)
    assert not is_business_day(date(2026, 12, 26), "DE", WEEKDAYS)  # Saturday anyway
    assert is_business_day(date(2026, 12, 25), "DE", SendWindow(skip_holidays=False))
    assert not is_business_day(date(2026, 11, 26), "United States", WEEKDAYS)
    # Unknown or missing countries have no holidays and never raise.
    for country in (None, "", "XX", "Atlantis", "Narnia Republic"):
        assert is_business_day(date(2026, 12, 25), country, WEEKDAYS)
    weekend = SendWindow.parse("sat,sun")
    assert is_business_day(date(2026, 3, 7), "DE", weekend)
    assert not is_business_day(date(2026, 3, 6), "DE", weekend)


# --- DST --------------------------------------------------------------------------------------


def test_window_start_in_spring_forward_gap() -> None:
    # 2026-03-29 (Sunday) Berlin jumps from 02:00 CET to 03:00 CEST: 02:30 does not exist.
    window = SendWindow.parse("sun", "02:30-17:00")
    result = next_window_start(utc(2026, 3, 28, 22, 0), BERLIN, "DE", window)
    assert result == utc(2026, 3, 29, 1, 0)  # the jump itself, 03:00 CEST
    local = result.astimezone(BERLIN)
    assert (local.hour, local.minute, local.utcoffset()) == (3, 0, timedelta(hours=2))


def test_window_start_in_autumn_fold_takes_earlier() -> None:
    # 2026-10-25 (Sunday) Berlin repeats 02:00-03:00: 02:30 CEST is the earlier instant.
    window = SendWindow.parse("sun", "02:30-17:00")
    result = next_window_start(utc(2026, 10, 24, 20, 0), BERLIN, "DE", window)
    assert result == utc(2026, 10, 25, 0, 30)


def test_window_wholly_inside_gap_is_skipped() -> None:
    window = SendWindow.parse("sun", "02:10-02:50")
    result = next_window_start(utc(2026, 3, 28, 22, 0), BERLIN, "DE", window)
    assert result == berlin(2026, 4, 5, 2, 10)  # next Sunday, CEST


# --- add_delay --------------------------------------------------------------------------------


def test_add_delay_elapsed_units() -> None:
    start = berlin(2026, 3, 27, 10, 0)  # Friday before the spring-forward Sunday
    cases = [
        (Delay(3, "days"), utc(2026, 3, 30, 9, 0)),  # 72h later: 11:00 CEST, not 10:00
        (Delay(36, "hours"), utc(2026, 3, 28, 21, 0)),
        (Delay(90, "minutes"), utc(2026, 3, 27, 10, 30)),
        (Delay(1, "weeks"), utc(2026, 4, 3, 9, 0)),
    ]
    for delay, expected in cases:
        assert add_delay(start, delay, BERLIN, "DE", WEEKDAYS) == expected


def test_add_delay_business_days() -> None:
    # Across a weekend and the DST change: same local wall time, different UTC offset.
    friday = berlin(2026, 3, 27, 10, 0)
    monday = add_delay(friday, Delay(1, "business_days"), BERLIN, "DE", WEEKDAYS)
    assert monday == utc(2026, 3, 30, 8, 0)
    # Across Christmas: Thu 24 (1), Fri 25 holiday, weekend, Mon 28 (2).
    wednesday = berlin(2026, 12, 23, 10, 0)
    assert add_delay(wednesday, Delay(2, "business_days"), BERLIN, "DE", WEEKDAYS) == berlin(
        2026, 12, 28, 10, 0
    )
    assert add_delay(wednesday, Delay(2, "business_days"), BERLIN, None, WEEKDAYS) == berlin(
        2026, 12, 25, 10, 0
    )
    # Outside the window the wall time is kept; the caller applies next_window_start.
    evening = berlin(2026, 3, 5, 20, 0)
    assert add_delay(evening, Delay(1, "business_days"), BERLIN, "DE", WEEKDAYS) == berlin(
        2026, 3, 6, 20, 0
    )
    assert add_delay(evening, Delay(0, "business_days"), BERLIN, "DE", WEEKDAYS) == evening
    # The lead's calendar decides the day: Fri 23:30 UTC is Sat 08:30 in Tokyo (-> Mon 08:30
    # JST) but still Fri 18:30 in New York (-> Mon 18:30 EDT, after the DST change).
    late = utc(2026, 3, 6, 23, 30)
    one = Delay(1, "business_days")
    assert add_delay(late, one, TOKYO, "JP", WEEKDAYS) == utc(2026, 3, 8, 23, 30)
    assert add_delay(late, one, NEW_YORK, "US", WEEKDAYS) == utc(2026, 3, 9, 22, 30)


# --- plan_touch -------------------------------------------------------------------------------


def test_plan_touch_36h_from_friday_lands_monday_morning() -> None:
    friday = berlin(2026, 3, 6, 10, 0)
    result = plan_touch(friday, Delay.parse("36h"), friday, BERLIN, "DE", WEEKDAYS)
    assert result == berlin(2026, 3, 9, 9, 0)
    # Even if Saturday were a send day, the 36h land on Sunday night -> Monday 09:00.
    six_days = SendWindow.parse("mon-sat")
    assert plan_touch(friday, Delay(36, "hours"), friday, BERLIN, "DE", six_days) == berlin(
        2026, 3, 9, 9, 0
    )


def test_plan_touch_enforces_business_day_gap() -> None:
    monday = berlin(2026, 3, 9, 10, 0)
    short = Delay(2, "hours")
    assert plan_touch(monday, short, monday, BERLIN, "DE", WEEKDAYS) == berlin(2026, 3, 10, 9, 0)
    assert plan_touch(
        monday, short, monday, BERLIN, "DE", WEEKDAYS, min_gap_business_days=0
    ) == berlin(2026, 3, 9, 12, 0)
    assert plan_touch(
        monday, short, monday, BERLIN, "DE", WEEKDAYS, min_gap_business_days=2
    ) == berlin(2026, 3, 11, 9, 0)
    # The gap counts business days: after Christmas Eve the next is Monday the 28th.
    eve = berlin(2026, 12, 24, 10, 0)
    assert plan_touch(eve, Delay(1, "hours"), eve, BERLIN, "DE", WEEKDAYS) == berlin(
        2026, 12, 28, 9, 0
    )
    with pytest.raises(ValueError, match="min_gap_business_days"):
        plan_touch(monday, short, monday, BERLIN, "DE", WEEKDAYS, min_gap_business_days=-1)


def test_plan_touch_never_before_now() -> None:
    previous = berlin(2026, 3, 2, 10, 0)  # long overdue by `now`
    inside = berlin(2026, 3, 11, 14, 0)
    assert plan_touch(previous, Delay(1, "days"), inside, BERLIN, "DE", WEEKDAYS) == inside
    evening = berlin(2026, 3, 11, 20, 0)
    result = plan_touch(previous, Delay(1, "days"), evening, BERLIN, "DE", WEEKDAYS)
    assert result == berlin(2026, 3, 12, 9, 0)
    assert result.tzinfo is UTC


def test_plan_touch_first_touch_uses_now() -> None:
    now = berlin(2026, 3, 6, 18, 0)
    result = plan_touch(None, Delay(5, "days"), now, BERLIN, "DE", WEEKDAYS)
    assert result == berlin(2026, 3, 9, 9, 0)
    inside = berlin(2026, 3, 6, 11, 0)
    assert plan_touch(None, Delay(5, "days"), inside, BERLIN, "DE", WEEKDAYS) == inside


def test_plan_touch_later_steps_shift_not_bunch() -> None:
    # Step 2 (2 business days after step 1 on Thursday) lands on Monday; because step 3's
    # delay counts from step 2's actual send time, it moves to Wednesday rather than bunching.
    step1 = berlin(2026, 3, 5, 10, 0)
    step2 = plan_touch(step1, Delay.parse("2 business days"), step1, BERLIN, "DE", WEEKDAYS)
    assert step2 == berlin(2026, 3, 9, 10, 0)
    step3 = plan_touch(step2, Delay.parse("2d"), step2, BERLIN, "DE", WEEKDAYS)
    assert step3 == berlin(2026, 3, 11, 10, 0)


def test_plan_touch_refuses_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_touch(None, Delay(1, "days"), datetime(2026, 3, 6), BERLIN, "DE", WEEKDAYS)
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_touch(datetime(2026, 3, 6), Delay(1, "days"), utc(2026, 3, 6), BERLIN, "DE", WEEKDAYS)
