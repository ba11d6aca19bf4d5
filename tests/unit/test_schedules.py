"""Recurrence rules: DST, month lengths, weekday sets, windows, and the wire parsers."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcloud.domain.accounts import FieldInvalid
from iotcloud.domain.schedules import (
    Daily,
    MonthDays,
    Once,
    Recurrence,
    Rule,
    ScheduleInvalid,
    TooManyOccurrences,
    Weekly,
    format_gizwits_repeat,
    format_tencent_days,
    format_time,
    next_occurrence,
    occurrences_between,
    parse_gizwits_device_scheduler,
    parse_gizwits_scheduler,
    parse_tencent_timer,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold)  # type: ignore[misc]


def walls(instants: list[datetime], zone: str) -> list[str]:
    """Each instant as the local wall clock a user would read, with its UTC offset."""
    return [t.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M%z") for t in instants]


# --- DST ---------------------------------------------------------------------------------------


def test_berlin_spring_forward_daily_0230_fires_once_shifted_then_back_on_time() -> None:
    daily = Recurrence(Daily(), time(2, 30), BERLIN)
    fired = occurrences_between(daily, utc(2026, 3, 27), utc(2026, 4, 1))
    assert fired == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 30),  # 02:30 does not exist: fold=0 reads it at +01:00
        utc(2026, 3, 30, 0, 30),
        utc(2026, 3, 31, 0, 30),
    ]
    assert walls(fired, BERLIN) == [
        "03-27 02:30+0100",
        "03-28 02:30+0100",
        "03-29 03:30+0200",
        "03-30 02:30+0200",
        "03-31 02:30+0200",
    ]


def test_berlin_fall_back_daily_0230_fires_at_the_first_0230_only() -> None:
    daily = Recurrence(Daily(), time(2, 30), BERLIN)
    fired = occurrences_between(daily, utc(2026, 10, 23), utc(2026, 10, 28))
    assert walls(fired, BERLIN) == [
        "10-23 02:30+0200",
        "10-24 02:30+0200",
        "10-25 02:30+0200",
        "10-26 02:30+0100",
        "10-27 02:30+0100",
    ]
    assert utc(2026, 10, 25, 1, 30) not in fired  # the second 02:30 (CET)


def test_berlin_repeated_hour_is_not_fired_again_from_inside_it() -> None:
    daily = Recurrence(Daily(), time(2, 30), BERLIN)
    first = utc(2026, 10, 25, 0, 30)
    assert next_occurrence(daily, first - timedelta(seconds=1)) == first
    assert next_occurrence(daily, first) == utc(2026, 10, 26, 1, 30)
    # 02:00 CET, the second pass through the repeated hour, before the second 02:30
    inside = local(BERLIN, 2026, 10, 25, 2, 0, fold=1)
    assert inside.astimezone(UTC) == utc(2026, 10, 25, 1, 0)
    assert next_occurrence(daily, inside) == utc(2026, 10, 26, 1, 30)


def test_gap_firing_is_strictly_after_and_the_next_day_has_no_drift() -> None:
    daily = Recurrence(Daily(), time(2, 30), BERLIN)
    shifted = utc(2026, 3, 29, 1, 30)
    assert next_occurrence(daily, utc(2026, 3, 29, 0, 0)) == shifted
    assert next_occurrence(daily, shifted) == local(BERLIN, 2026, 3, 30, 2, 30)
    # after = 03:00 CEST on the gap day, i.e. before the shifted 03:30: it still fires that day
    assert next_occurrence(daily, local(BERLIN, 2026, 3, 29, 3, 0)) == shifted


@pytest.mark.parametrize(
    ("at", "expected_wall"),
    [(time(2, 0), "03:00+0200"), (time(2, 59, 59), "03:59:59+0200"), (time(3, 0), "03:00+0200")],
)
def test_gap_edges_in_berlin(at: time, expected_wall: str) -> None:
    fired = next_occurrence(Recurrence(Daily(), at, BERLIN), utc(2026, 3, 28, 12))
    assert fired is not None
    fmt = "%H:%M:%S%z" if at.second else "%H:%M%z"
    assert fired.astimezone(ZoneInfo(BERLIN)).strftime(fmt) == expected_wall


def test_new_york_spring_forward_and_fall_back() -> None:
    daily_0230 = Recurrence(Daily(), time(2, 30), NEW_YORK)
    spring = occurrences_between(daily_0230, utc(2026, 3, 7), utc(2026, 3, 10))
    assert spring == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    assert walls(spring, NEW_YORK) == ["03-07 02:30-0500", "03-08 03:30-0400", "03-09 02:30-0400"]

    daily_0130 = Recurrence(Daily(), time(1, 30), NEW_YORK)
    fall = occurrences_between(daily_0130, utc(2026, 10, 31), utc(2026, 11, 3))
    assert fall == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    assert walls(fall, NEW_YORK) == ["10-31 01:30-0400", "11-01 01:30-0400", "11-02 01:30-0500"]

    # 02:30 is neither skipped nor repeated on the fall-back day in New York
    fall_0230 = occurrences_between(daily_0230, utc(2026, 11, 1), utc(2026, 11, 2))
    assert fall_0230 == [utc(2026, 11, 1, 7, 30)]


def test_weekly_sunday_0230_across_the_spring_forward_sunday() -> None:
    sundays = Recurrence(Weekly(frozenset({SUN})), time(2, 30), BERLIN)
    fired = occurrences_between(sundays, utc(2026, 3, 20), utc(2026, 4, 6))
    assert walls(fired, BERLIN) == ["03-22 02:30+0100", "03-29 03:30+0200", "04-05 02:30+0200"]


def test_a_skipped_calendar_day_fires_once_not_twice() -> None:
    # Pacific/Apia jumped from 2011-12-29 23:59 (-10) to 2011-12-31 00:00 (+14): the 30th's
    # 12:00 (read at -10) and the 31st's 12:00 (+14) are one instant.
    daily = Recurrence(Daily(), time(12, 0), "Pacific/Apia")
    fired = occurrences_between(daily, utc(2011, 12, 28), utc(2012, 1, 2))
    assert fired == [
        utc(2011, 12, 28, 22, 0),
        utc(2011, 12, 29, 22, 0),
        utc(2011, 12, 30, 22, 0),  # "30 Dec 12:00" and 31 Dec 12:00 (+14)
        utc(2011, 12, 31, 22, 0),  # 1 Jan 12:00 (+14)
        utc(2012, 1, 1, 22, 0),
    ]
    assert walls(fired, "Pacific/Apia")[2:4] == ["12-31 12:00+1400", "01-01 12:00+1400"]


def test_a_gap_across_midnight_fires_the_previous_dates_time_after_midnight() -> None:
    # America/Nuuk springs forward at 23:00 (-02) -> 00:00 (-01) on Saturday 2026-03-28
    nuuk = "America/Nuuk"
    daily = Recurrence(Daily(), time(23, 30), nuuk)
    fired = occurrences_between(daily, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert walls(fired, nuuk) == [
        "03-27 23:30-0200",
        "03-29 00:30-0100",  # Saturday's 23:30, shifted past midnight
        "03-29 23:30-0100",
        "03-30 23:30-0100",
    ]
    # Asked just after midnight on Sunday, Saturday's shifted firing is still ahead
    just_after_midnight = local(nuuk, 2026, 3, 29, 0, 10)
    assert next_occurrence(daily, just_after_midnight) == fired[1]
    saturdays = Recurrence(Weekly(frozenset({SAT})), time(23, 30), nuuk)
    assert next_occurrence(saturdays, just_after_midnight) == fired[1]


# --- Month lengths, Feb 29 ---------------------------------------------------------------------


def test_day_29_skips_february_in_non_leap_years() -> None:
    day_29 = Recurrence(MonthDays(frozenset({29})), time(8, 0))
    fired = occurrences_between(day_29, utc(2023, 1, 1), utc(2025, 1, 1))
    assert len(fired) == 11 + 12
    assert [t.date() for t in fired if t.month == 2] == [date(2024, 2, 29)]
    assert next_occurrence(day_29, utc(2023, 1, 29, 8)) == utc(2023, 3, 29, 8)


def test_day_31_fires_only_in_months_that_have_it() -> None:
    day_31 = Recurrence(MonthDays(frozenset({31})), time(0, 0), "Asia/Shanghai")
    fired = occurrences_between(day_31, utc(2025, 12, 31), utc(2026, 12, 31))
    assert [t.astimezone(ZoneInfo("Asia/Shanghai")).month for t in fired] == [1, 3, 5, 7, 8, 10, 12]


def test_one_shot_on_feb_29_of_a_leap_year() -> None:
    once = parse_gizwits_scheduler(date="2024-02-29", time="12:00", repeat="none")
    assert once == Recurrence(Once(date(2024, 2, 29)), time(12, 0), "UTC")
    assert next_occurrence(once, utc(2024, 1, 1)) == utc(2024, 2, 29, 12)
    with pytest.raises(ScheduleInvalid, match=r"^date: 2023-02-29 is not a date$"):
        parse_gizwits_scheduler(date="2023-02-29", time="12:00", repeat="none")


# --- Weekdays, windows, strictly-after ---------------------------------------------------------


def test_weekday_sets_wrap_across_week_and_year_boundaries() -> None:
    fri_mon = parse_gizwits_scheduler(date=None, time="22:00", repeat="fri,mon")
    assert next_occurrence(fri_mon, utc(2026, 6, 5, 22)) == utc(2026, 6, 8, 22)
    assert next_occurrence(fri_mon, utc(2026, 6, 8, 21, 59)) == utc(2026, 6, 8, 22)
    weekend = parse_gizwits_scheduler(date=None, time="09:00", repeat="sat,sun")
    assert occurrences_between(weekend, utc(2026, 12, 31), utc(2027, 1, 10, 9)) == [
        utc(2027, 1, 2, 9),
        utc(2027, 1, 3, 9),
        utc(2027, 1, 9, 9),
        utc(2027, 1, 10, 9),
    ]
    # Tencent "1000001" = Sunday and Saturday; Saturday after 06:30 Shanghai -> Sunday 06:30
    timer = parse_tencent_timer(
        days="1000001", time_point="6:30", repeat=1, time_zone=None, default_zone="Asia/Shanghai"
    )
    armed = timer.recurrence(utc(2026, 6, 6, 0))
    assert next_occurrence(armed, local("Asia/Shanghai", 2026, 6, 6, 7, 0)) == local(
        "Asia/Shanghai", 2026, 6, 7, 6, 30
    )


def test_start_and_end_dates_are_inclusive_local_dates() -> None:
    window = Recurrence(
        Daily(), time(0, 30), BERLIN, start_date=date(2026, 5, 10), end_date=date(2026, 5, 12)
    )
    fired = occurrences_between(window, utc(2026, 1, 1), utc(2027, 1, 1))
    # 00:30 CEST is 22:30 UTC on the day before: the window is on local dates, not UTC ones
    assert fired == [utc(2026, 5, 9, 22, 30), utc(2026, 5, 10, 22, 30), utc(2026, 5, 11, 22, 30)]
    assert next_occurrence(window, utc(2026, 1, 1)) == fired[0]
    assert next_occurrence(window, fired[-1]) is None


def test_one_shot_in_the_past_or_just_fired_has_no_next_occurrence() -> None:
    once = Recurrence(Once(date(2026, 6, 1)), time(8, 0))
    assert next_occurrence(once, utc(2026, 6, 1, 7, 59, 59)) == utc(2026, 6, 1, 8)
    assert next_occurrence(once, utc(2026, 6, 1, 8)) is None
    assert next_occurrence(once, utc(2026, 7, 1)) is None


def test_occurrences_between_is_half_open_and_bounded() -> None:
    daily = Recurrence(Daily(), time(8, 0))
    assert occurrences_between(daily, utc(2026, 1, 1, 8), utc(2026, 1, 3, 8)) == [
        utc(2026, 1, 2, 8),
        utc(2026, 1, 3, 8),
    ]
    assert occurrences_between(daily, utc(2026, 1, 1, 9), utc(2026, 1, 1, 9)) == []
    assert len(occurrences_between(daily, utc(2026, 1, 1), utc(2026, 1, 4), limit=3)) == 3
    with pytest.raises(TooManyOccurrences, match="more than 3"):
        occurrences_between(daily, utc(2026, 1, 1), utc(2026, 1, 5), limit=3)
    with pytest.raises(ValueError, match="end is before start"):
        occurrences_between(daily, utc(2026, 1, 2), utc(2026, 1, 1))


def test_naive_instants_are_refused() -> None:
    daily = Recurrence(Daily(), time(8, 0))
    with pytest.raises(ValueError, match="after must be an aware datetime"):
        next_occurrence(daily, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="start must be an aware datetime"):
        occurrences_between(daily, datetime(2026, 1, 1), utc(2026, 1, 2))


def test_recurrence_refuses_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="IANA"):
        Recurrence(Daily(), time(8, 0), "Mars/Olympus")
    with pytest.raises(ValueError, match="naive"):
        Recurrence(Daily(), time(8, 0, tzinfo=UTC))
    with pytest.raises(ValueError, match="end_date is before start_date"):
        Recurrence(Daily(), time(8, 0), start_date=date(2026, 2, 1), end_date=date(2026, 1, 31))
    for bad_weekdays in (frozenset(), frozenset({7})):
        with pytest.raises(ValueError, match="weekdays"):
            Weekly(bad_weekdays)
    for bad_days in (frozenset(), frozenset({0}), frozenset({32})):
        with pytest.raises(ValueError, match="days"):
            MonthDays(bad_days)


# --- Gizwits parsers ---------------------------------------------------------------------------


def test_gizwits_scheduler_shapes() -> None:
    assert parse_gizwits_scheduler(date=None, time="00:05", repeat="tue,mon") == Recurrence(
        Weekly(frozenset({MON, TUE})), time(0, 5), "UTC"
    )
    assert parse_gizwits_scheduler(date="2015-01-01", time="23:59", repeat="sun") == Recurrence(
        Weekly(frozenset({SUN})), time(23, 59), "UTC", start_date=date(2015, 1, 1)
    )


def test_gizwits_device_scheduler_shapes() -> None:
    parse = parse_gizwits_device_scheduler
    assert parse(time="02:30", repeat="day") == Recurrence(Daily(), time(2, 30))
    assert parse(time="02:30", repeat="day", days=[]) == Recurrence(Daily(), time(2, 30))
    assert parse(time="02:30", repeat="day", days=[15, 1]) == Recurrence(
        MonthDays(frozenset({1, 15})), time(2, 30)
    )
    assert parse(
        time="02:30", repeat="mon", start_date="2026-01-01", end_date="2026-01-31"
    ) == Recurrence(
        Weekly(frozenset({MON})), time(2, 30), "UTC", date(2026, 1, 1), date(2026, 1, 31)
    )
    # date is a floor for a repeating schedule: the later of date and start_date wins
    assert parse(
        time="02:30", repeat="day", date="2026-01-10", start_date="2026-01-01"
    ).start_date == date(2026, 1, 10)
    assert parse(
        time="02:30",
        repeat="none",
        date="2026-01-10",
        start_date="2026-01-10",
        end_date="2026-01-10",
    ) == Recurrence(
        Once(date(2026, 1, 10)), time(2, 30), "UTC", date(2026, 1, 10), date(2026, 1, 10)
    )


GIZWITS_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({"date": "2015-01-01", "time": "1:00", "repeat": "none"}, "time", "HH:MM"),
    ({"date": "2015-01-01", "time": "24:00", "repeat": "none"}, "time", "00:00 to 23:59"),
    ({"date": "2015-01-01", "time": "12:60", "repeat": "none"}, "time", "00:00 to 23:59"),
    ({"date": "2015-01-01", "time": "12:00:00", "repeat": "none"}, "time", "HH:MM"),
    ({"date": "2015-01-01", "time": " 12:00", "repeat": "none"}, "time", "HH:MM"),
    ({"date": "2015-01-01", "time": 1200, "repeat": "none"}, "time", "HH:MM"),
    ({"date": "2015-01-01", "time": "１２:００", "repeat": "none"}, "time", "HH:MM"),
    ({"date": "2015-1-01", "time": "12:00", "repeat": "none"}, "date", "YYYY-MM-DD"),
    ({"date": "2015/01/01", "time": "12:00", "repeat": "none"}, "date", "YYYY-MM-DD"),
    ({"date": 20150101, "time": "12:00", "repeat": "none"}, "date", "YYYY-MM-DD"),
    ({"date": "2015-13-01", "time": "12:00", "repeat": "none"}, "date", "not a date"),
    ({"date": "0000-01-01", "time": "12:00", "repeat": "none"}, "date", "not a date"),
    ({"date": "2025-04-31", "time": "12:00", "repeat": "mon"}, "date", "not a date"),
    ({"date": None, "time": "12:00", "repeat": "none"}, "date", "required when repeat is none"),
    ({"date": None, "time": "12:00", "repeat": ""}, "repeat", "empty item"),
    ({"date": None, "time": "12:00", "repeat": "Mon"}, "repeat", "unknown token 'Mon'"),
    ({"date": None, "time": "12:00", "repeat": "mon,"}, "repeat", "empty item"),
    ({"date": None, "time": "12:00", "repeat": ",mon"}, "repeat", "empty item"),
    ({"date": None, "time": "12:00", "repeat": "mon,,tue"}, "repeat", "empty item"),
    ({"date": None, "time": "12:00", "repeat": "mon,mon"}, "repeat", "repeats 'mon'"),
    ({"date": None, "time": "12:00", "repeat": "mon, tue"}, "repeat", "unknown token ' tue'"),
    ({"date": None, "time": "12:00", "repeat": "none,mon"}, "repeat", "unknown token 'none'"),
    ({"date": None, "time": "12:00", "repeat": "day"}, "repeat", "unknown token 'day'"),
    ({"date": None, "time": "12:00", "repeat": "daily"}, "repeat", "none or a comma list"),
    ({"date": None, "time": "12:00", "repeat": None}, "repeat", "must be a string"),
    ({"date": None, "time": "12:00", "repeat": ["mon"]}, "repeat", "must be a string"),
]


@pytest.mark.parametrize(("body", "field", "reason"), GIZWITS_REFUSALS)
def test_gizwits_scheduler_refusals_name_the_field(
    body: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ScheduleInvalid, match=reason) as err:
        parse_gizwits_scheduler(**body)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert isinstance(err.value, FieldInvalid)  # so services turn it into 9015


DEVICE_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({"repeat": "mon", "days": [1]}, "days", "only allowed with repeat day"),
    ({"repeat": "none", "date": "2026-01-01", "days": [1]}, "days", "only allowed with repeat"),
    ({"repeat": "day", "days": "1,2"}, "days", "must be a list"),
    ({"repeat": "day", "days": [0]}, "days", "0 is not a day of the month"),
    ({"repeat": "day", "days": [32]}, "days", "32 is not a day of the month"),
    ({"repeat": "day", "days": [True]}, "days", "True is not a day of the month"),
    ({"repeat": "day", "days": ["1"]}, "days", "'1' is not a day of the month"),
    ({"repeat": "day", "days": [1, 1]}, "days", "repeats 1"),
    ({"repeat": "day", "start_date": "2026-02-30"}, "start_date", "not a date"),
    ({"repeat": "day", "end_date": "26-01-01"}, "end_date", "YYYY-MM-DD"),
    (
        {"repeat": "day", "start_date": "2026-02-02", "end_date": "2026-02-01"},
        "end_date",
        "must not be before start_date",
    ),
    (
        {"repeat": "day", "date": "2026-03-01", "end_date": "2026-02-01"},
        "end_date",
        "must not be before date",
    ),
    (
        {"repeat": "none", "date": "2026-03-01", "end_date": "2026-02-01"},
        "date",
        "between start_date and end_date",
    ),
    (
        {"repeat": "none", "date": "2026-01-01", "start_date": "2026-02-01"},
        "date",
        "between start_date and end_date",
    ),
    (  # Tuesday to Sunday: no Monday in the window
        {"repeat": "mon", "start_date": "2026-06-02", "end_date": "2026-06-07"},
        "end_date",
        "no date that repeat selects",
    ),
    (
        {"repeat": "day", "days": [31], "start_date": "2026-04-01", "end_date": "2026-04-30"},
        "end_date",
        "no date that repeat selects",
    ),
    ({"repeat": "weekly"}, "repeat", "none, day or a comma list"),
]


@pytest.mark.parametrize(("body", "field", "reason"), DEVICE_REFUSALS)
def test_gizwits_device_scheduler_refusals_name_the_field(
    body: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ScheduleInvalid, match=reason) as err:
        parse_gizwits_device_scheduler(time="02:30", **body)
    assert err.value.field == field


def test_a_window_long_enough_always_contains_a_selected_date() -> None:
    # 31 Jan -> 31 Mar is the longest gap between two 31sts; 1 Feb..31 Mar must be accepted
    recurrence = parse_gizwits_device_scheduler(
        time="02:30", repeat="day", days=[31], start_date="2026-02-01", end_date="2026-03-31"
    )
    assert occurrences_between(recurrence, utc(2026, 1, 1), utc(2027, 1, 1)) == [
        utc(2026, 3, 31, 2, 30)
    ]


def test_gizwits_repeat_round_trips_in_canonical_order() -> None:
    for size in range(1, 8):
        for chosen in itertools.permutations(
            ("mon", "tue", "wed", "thu", "fri", "sat", "sun"), size
        ):
            if len(chosen) > 3 and chosen != tuple(sorted(chosen)):
                continue  # every subset is still covered by its sorted permutation
            recurrence = parse_gizwits_scheduler(date=None, time="10:10", repeat=",".join(chosen))
            canonical = [
                t for t in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if t in chosen
            ]
            assert format_gizwits_repeat(recurrence.rule) == ",".join(canonical)
    assert format_gizwits_repeat(Once(date(2026, 1, 1))) == "none"
    assert format_gizwits_repeat(Daily()) == "day"
    assert format_gizwits_repeat(MonthDays(frozenset({1}))) == "day"
    assert format_time(parse_gizwits_scheduler(date=None, time="07:05", repeat="mon").at) == "07:05"


# --- Tencent parser ----------------------------------------------------------------------------


def tencent(**fields: Any) -> Any:
    wire = {"days": "1000000", "time_point": "06:30", "repeat": 1, "time_zone": None}
    return parse_tencent_timer(**(wire | fields), default_zone="Asia/Shanghai")


def test_tencent_timer_shapes() -> None:
    timer = tencent()
    assert (timer.weekdays, timer.at, timer.repeat, timer.zone) == (
        frozenset({SUN}),
        time(6, 30),
        True,
        "Asia/Shanghai",
    )
    assert tencent(days="0111110").weekdays == frozenset({MON, TUE, WED, THU, FRI})
    assert tencent(time_point="9:30").time_point == "09:30"
    assert tencent(time_point="0:00").at == time(0, 0)
    assert tencent(time_point="23:59").at == time(23, 59)
    assert tencent(time_zone=BERLIN).zone == BERLIN
    assert tencent(repeat=1).recurrence(utc(2026, 1, 1)) == Recurrence(
        Weekly(frozenset({SUN})), time(6, 30), "Asia/Shanghai"
    )


def test_tencent_days_round_trip_for_all_128_strings() -> None:
    for bits in itertools.product("01", repeat=7):
        days = "".join(bits)
        assert tencent(days=days, repeat=0).days == days
        assert format_tencent_days(tencent(days=days, repeat=0).weekdays) == days


TENCENT_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({"days": "100000"}, "Days", "7 characters of 0 or 1"),
    ({"days": "10000000"}, "Days", "7 characters of 0 or 1"),
    ({"days": "1000002"}, "Days", "7 characters of 0 or 1"),
    ({"days": ""}, "Days", "7 characters"),
    ({"days": 1000000}, "Days", "7 characters"),
    ({"days": "0000000", "repeat": 1}, "Days", "at least one day when Repeat is 1"),
    ({"time_point": "24:00"}, "TimePoint", "0:00 to 23:59"),
    ({"time_point": "9:60"}, "TimePoint", "0:00 to 23:59"),
    ({"time_point": "9:5"}, "TimePoint", "H:mm or HH:mm"),
    ({"time_point": "009:30"}, "TimePoint", "H:mm or HH:mm"),
    ({"time_point": "9.30"}, "TimePoint", "H:mm or HH:mm"),
    ({"time_point": "09:30:00"}, "TimePoint", "H:mm or HH:mm"),
    ({"time_point": ""}, "TimePoint", "H:mm or HH:mm"),
    ({"time_point": 930}, "TimePoint", "H:mm or HH:mm"),
    ({"repeat": 2}, "Repeat", "0 or 1"),
    ({"repeat": -1}, "Repeat", "0 or 1"),
    ({"repeat": True}, "Repeat", "0 or 1"),
    ({"repeat": "1"}, "Repeat", "0 or 1"),
    ({"repeat": 1.0}, "Repeat", "0 or 1"),
    ({"repeat": None}, "Repeat", "0 or 1"),
    ({"time_zone": "Mars/Olympus"}, "TimeZone", "not an IANA time zone"),
    ({"time_zone": ""}, "TimeZone", "not an IANA time zone"),
    ({"time_zone": "../etc/passwd"}, "TimeZone", "not an IANA time zone"),
    ({"time_zone": 8}, "TimeZone", "IANA time zone name"),
]


@pytest.mark.parametrize(("fields", "field", "reason"), TENCENT_REFUSALS)
def test_tencent_refusals_name_the_field(fields: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ScheduleInvalid, match=reason) as err:
        tencent(**fields)
    assert err.value.field == field


def test_tencent_one_shot_fires_once_at_the_next_chosen_day() -> None:
    shanghai = "Asia/Shanghai"
    monday_0700 = local(shanghai, 2026, 6, 1, 7, 0)
    # all-zero Days with Repeat 0: the next 06:30 on any day, i.e. Tuesday
    any_day = tencent(days="0000000", repeat=0).recurrence(monday_0700)
    assert any_day == Recurrence(Once(date(2026, 6, 2)), time(6, 30), shanghai)
    assert tencent(days="1111111", repeat=0).recurrence(monday_0700) == any_day
    fired = next_occurrence(any_day, monday_0700)
    assert fired == local(shanghai, 2026, 6, 2, 6, 30)
    assert next_occurrence(any_day, fired) is None  # then the timer is switched off
    # Monday only, armed Monday 07:00 -> next Monday; armed exactly at 06:30 -> next Monday too
    monday = tencent(days="0100000", repeat=0)
    assert monday.recurrence(monday_0700).rule == Once(date(2026, 6, 8))
    assert monday.recurrence(local(shanghai, 2026, 6, 1, 6, 30)).rule == Once(date(2026, 6, 8))
    assert monday.recurrence(local(shanghai, 2026, 6, 1, 6, 29)).rule == Once(date(2026, 6, 1))


def test_tencent_one_shot_armed_before_a_dst_gap_fires_at_the_shifted_time() -> None:
    timer = tencent(days="0000000", repeat=0, time_point="2:30", time_zone=BERLIN)
    armed = timer.recurrence(local(BERLIN, 2026, 3, 28, 3, 0))
    assert armed.rule == Once(date(2026, 3, 29))
    assert next_occurrence(armed, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 30)


# --- Properties --------------------------------------------------------------------------------

ZONES = [
    "UTC",
    BERLIN,
    NEW_YORK,
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # transitions at midnight
    "America/Sao_Paulo",  # midnight gaps, until 2019
    "America/St_Johns",
    "Asia/Kolkata",
    "America/Nuuk",  # gap 23:00 -> 00:00 from 2024
]
START = datetime(2000, 1, 1, tzinfo=UTC)


def selects(rule: Rule, day: date) -> bool:
    if isinstance(rule, Once):
        return day == rule.on
    if isinstance(rule, Weekly):
        return day.weekday() in rule.weekdays
    if isinstance(rule, MonthDays):
        return day.day in rule.days
    return True


def in_window(recurrence: Recurrence, day: date) -> bool:
    return (recurrence.start_date is None or recurrence.start_date <= day) and (
        recurrence.end_date is None or day <= recurrence.end_date
    )


def fired_date(recurrence: Recurrence, instant: datetime) -> date:
    """The local date whose firing ``instant`` is, found without the code under test.

    The wall time read back is either the requested one (and then it must be its first, fold=0,
    occurrence), or the requested wall time sat in a gap on that date and the clock shows it
    shifted forward by exactly the gap's length.
    """
    tz = ZoneInfo(recurrence.zone)
    seen = instant.astimezone(tz)
    if seen.time().replace(fold=0) == recurrence.at:
        assert seen.fold == 0 or seen.replace(fold=0).astimezone(UTC) == instant
        return seen.date()
    for day in (seen.date(), seen.date() - timedelta(days=1)):
        wall = datetime.combine(day, recurrence.at, tz)
        exists = wall.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall.replace(
            tzinfo=None
        )
        gap = wall.replace(fold=1).utcoffset() - wall.utcoffset()  # type: ignore[operator]
        if not exists and seen.replace(tzinfo=None) == wall.replace(tzinfo=None) + gap:
            return day
    raise AssertionError(f"{instant} ({seen}) is not {recurrence.at} on any date")


RULES = st.one_of(
    st.just(Daily()),
    st.frozensets(st.integers(0, 6), min_size=1).map(Weekly),
    st.frozensets(st.integers(1, 31), min_size=1, max_size=4).map(MonthDays),
    st.dates(date(2000, 1, 1), date(2030, 12, 31)).map(Once),
)
# Wall times bunched around the small hours, where transitions happen.
WALL_TIMES = st.builds(
    time,
    hour=st.one_of(st.integers(0, 3), st.integers(22, 23), st.integers(0, 23)),
    minute=st.sampled_from([0, 1, 15, 29, 30, 45, 59]),
    second=st.sampled_from([0, 0, 0, 59]),
)


@st.composite
def recurrences(draw: st.DrawFn) -> Recurrence:
    start = draw(st.none() | st.dates(date(2000, 1, 1), date(2030, 12, 31)))
    end = draw(st.none() | st.dates(start or date(2000, 1, 1), date(2031, 12, 31)))
    return Recurrence(draw(RULES), draw(WALL_TIMES), draw(st.sampled_from(ZONES)), start, end)


AFTER = st.integers(0, 31 * 366 * 86400).map(lambda s: START + timedelta(seconds=s))


@settings(max_examples=300, deadline=None)
@given(recurrences(), AFTER, st.integers(1, 400))
def test_occurrences_are_increasing_on_the_wall_time_and_one_per_selected_date(
    recurrence: Recurrence, after: datetime, days: int
) -> None:
    fired = occurrences_between(recurrence, after, after + timedelta(days=days))
    assert all(t.tzinfo is UTC for t in fired)
    assert all(a < b for a, b in itertools.pairwise([after, *fired]))
    dates = [fired_date(recurrence, t) for t in fired]
    assert len(set(dates)) == len(dates)
    if recurrence.zone != "America/Nuuk":  # the only zone here whose gap straddles midnight
        calendar = [t.astimezone(ZoneInfo(recurrence.zone)).date() for t in fired]
        assert calendar == dates
    assert all(selects(recurrence.rule, d) and in_window(recurrence, d) for d in dates)
    # No selected date is skipped between two consecutive firings
    for earlier, later in itertools.pairwise(dates):
        skipped = [
            earlier + timedelta(days=n)
            for n in range(1, (later - earlier).days)
            if selects(recurrence.rule, earlier + timedelta(days=n))
            and in_window(recurrence, earlier + timedelta(days=n))
        ]
        assert skipped == []


@settings(max_examples=300, deadline=None)
@given(recurrences(), AFTER, st.integers(0, 200 * 86400), st.integers(0, 200 * 86400))
def test_next_occurrence_agrees_with_occurrences_between_and_windows_split_cleanly(
    recurrence: Recurrence, after: datetime, first: int, second: int
) -> None:
    middle = after + timedelta(seconds=first)
    end = middle + timedelta(seconds=second)
    whole = occurrences_between(recurrence, after, end)
    assert whole == occurrences_between(recurrence, after, middle) + occurrences_between(
        recurrence, middle, end
    )
    following = next_occurrence(recurrence, after)
    if whole:
        assert following == whole[0]
        # strictly after: from an occurrence itself, the next one is the following occurrence
        for current, upcoming in itertools.pairwise(whole):
            assert next_occurrence(recurrence, current) == upcoming
    elif following is not None:
        assert following > end
    # Nothing to fire once the window or the one-shot is over
    last_day = recurrence.end_date or (
        recurrence.rule.on if isinstance(recurrence.rule, Once) else None
    )
    if last_day is not None:
        beyond = datetime.combine(last_day + timedelta(days=2), time(), UTC)
        assert next_occurrence(recurrence, beyond) is None


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(ZONES),
    WALL_TIMES,
    st.dates(date(2000, 1, 1), date(2030, 12, 31)),
    st.integers(1, 120),
)
def test_daily_fires_exactly_once_per_local_date(
    zone: str, at: time, first: date, days: int
) -> None:
    last = first + timedelta(days=days - 1)
    recurrence = Recurrence(Daily(), at, zone, start_date=first, end_date=last)
    fired = occurrences_between(recurrence, START - timedelta(days=2), START.replace(year=2032))
    assert [fired_date(recurrence, t) for t in fired] == [
        first + timedelta(days=n) for n in range(days)
    ]


# --- Purity ------------------------------------------------------------------------------------

PROBE = """
import json, sys
before = set(sys.modules)
import iotcloud.domain.schedules
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_schedule_rules_import_only_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    top_level = {name.split(".")[0] for name in json.loads(result.stdout)}
    # zoneinfo reads TZPATH through sysconfig, which loads this platform-named stdlib module
    top_level = {name for name in top_level if not name.startswith("_sysconfigdata")}
    assert top_level - sys.stdlib_module_names <= {"iotcloud"}


def test_parsers_are_total_over_their_fields() -> None:
    """Every parser turns any JSON-ish junk into ScheduleInvalid, never another exception."""
    junk: list[object] = [None, 0, 1, -1, 1.5, True, "", " ", "x", [], {}, ["mon"], "２"]
    parsers: list[Callable[[object], object]] = [
        lambda v: parse_gizwits_scheduler(date=v, time="10:00", repeat="none"),
        lambda v: parse_gizwits_scheduler(date=None, time=v, repeat="mon"),
        lambda v: parse_gizwits_scheduler(date=None, time="10:00", repeat=v),
        lambda v: parse_gizwits_device_scheduler(time="10:00", repeat="day", days=v),
        lambda v: parse_gizwits_device_scheduler(time="10:00", repeat="day", start_date=v),
        lambda v: parse_gizwits_device_scheduler(time="10:00", repeat="day", end_date=v),
        lambda v: tencent(days=v),
        lambda v: tencent(time_point=v),
        lambda v: tencent(repeat=v),
        lambda v: tencent(time_zone=v),
    ]
    for parser, value in itertools.product(parsers, junk):
        with contextlib.suppress(ScheduleInvalid):
            parser(value)
