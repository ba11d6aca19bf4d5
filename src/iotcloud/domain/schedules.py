"""When a schedule fires: the recurrence rules both dialects share, and their wire parsers.

A :class:`Recurrence` is a local wall-clock time in an IANA zone plus one rule: :class:`Once` on
a date, :class:`Daily`, :class:`Weekly` on a set of weekdays, or :class:`MonthDays` on a set of
days of the month, optionally bounded by an inclusive local ``start_date``/``end_date``.

Occurrence rules (DESIGN.md "Scheduling semantics"):

* Occurrences are computed per local date: for each date the rule selects, the wall time is
  combined with that date in the schedule's zone and converted to UTC.
* The conversion is the instant that the wall time with ``fold=0`` denotes (PEP 495), i.e. the
  wall time read with the UTC offset in force *before* the transition. Consequences:

  - a wall time inside a DST gap fires once, shifted forward by the length of the gap
    (02:30 on 2026-03-29 in Europe/Berlin fires at 03:30 CEST = 01:30 UTC);
  - a wall time in a repeated hour fires once, at its first occurrence
    (02:30 on 2026-10-25 in Europe/Berlin fires at 02:30 CEST = 00:30 UTC, not again at 02:30 CET);
  - the next date is computed afresh, so nothing drifts after a transition;
  - a gap that straddles midnight can push a date's firing onto the next calendar date
    (America/Nuuk springs forward 23:00 -> 00:00 on a Saturday: a daily 23:30 fires at 00:30 on
    Sunday for Saturday, and again at 23:30 for Sunday). Each selected date fires exactly once,
    but that one calendar date then sees two firings.

* A day of the month that a month lacks (31 in April, 29 in a non-leap February) is skipped for
  that month; there is no "last day of month" substitution.
* ``start_date`` and ``end_date`` are inclusive local dates and bound every rule, one-shots too.
* If two dates map to the same instant (a zone that skips a whole calendar day, such as
  Pacific/Apia on 2011-12-30), the instant fires once. Occurrences are strictly increasing.
* :func:`next_occurrence` is strictly after its argument; :func:`occurrences_between` covers the
  half-open interval ``(start, end]``, so consecutive calls neither repeat nor lose an occurrence.

Wire parsers raise :class:`ScheduleInvalid` (a :class:`~iotcloud.domain.accounts.FieldInvalid`)
naming the wire field and the rule it broke; the services map it to their dialect's error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from iotcloud.domain.accounts import FieldInvalid

__all__ = [
    "OCCURRENCES_LIMIT",
    "WEEKDAY_TOKENS",
    "Daily",
    "MonthDays",
    "Once",
    "Recurrence",
    "Rule",
    "ScheduleInvalid",
    "TencentTimerRule",
    "TooManyOccurrences",
    "Weekly",
    "format_gizwits_repeat",
    "format_tencent_days",
    "format_time",
    "next_occurrence",
    "occurrences_between",
    "parse_gizwits_device_scheduler",
    "parse_gizwits_scheduler",
    "parse_tencent_timer",
]

WEEKDAY_TOKENS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Gizwits ``repeat`` tokens, indexed like :meth:`datetime.date.weekday` (0 = Monday)."""
OCCURRENCES_LIMIT: Final = 1000
"""Default cap on :func:`occurrences_between`."""

_ALL_WEEKDAYS: Final = frozenset(range(7))
_DATE: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_GIZWITS_TIME: Final = re.compile(r"([0-9]{2}):([0-9]{2})")
_TENCENT_TIME: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_TENCENT_DAYS: Final = re.compile(r"[01]{7}")
# Any window this long contains every day of the month that exists somewhere (the longest
# gap, e.g. 31 Jan -> 31 Mar, is 59 days), so a rule that selects no date in it never fires.
_LONGEST_GAP_DAYS: Final = 62


class ScheduleInvalid(FieldInvalid):
    """A schedule field broke a rule; ``field`` is the wire name, ``reason`` says which rule."""


class TooManyOccurrences(ValueError):
    """:func:`occurrences_between` would return more than its ``limit``."""


@dataclass(frozen=True)
class Once:
    """Fires on one local date."""

    on: date


@dataclass(frozen=True)
class Daily:
    """Fires on every local date."""


@dataclass(frozen=True)
class Weekly:
    """Fires on the given weekdays; 0 = Monday ... 6 = Sunday, as :meth:`date.weekday`."""

    weekdays: frozenset[int]

    def __post_init__(self) -> None:
        if not self.weekdays or not self.weekdays <= _ALL_WEEKDAYS:
            raise ValueError(f"weekdays must be a non-empty subset of 0..6, not {self.weekdays}")


@dataclass(frozen=True)
class MonthDays:
    """Fires on the given days of the month (1-31); a day a month lacks is skipped there."""

    days: frozenset[int]

    def __post_init__(self) -> None:
        if not self.days or not all(1 <= day <= 31 for day in self.days):
            raise ValueError(f"days must be a non-empty subset of 1..31, not {self.days}")


Rule = Once | Daily | Weekly | MonthDays


@dataclass(frozen=True)
class Recurrence:
    """When a schedule fires: ``rule`` dates at local wall time ``at`` in IANA zone ``zone``.

    ``at`` is naive (no tzinfo). ``start_date``/``end_date`` are inclusive local dates; the
    constructor raises :class:`ValueError` for an unknown zone, an aware ``at`` or an end before
    the start (the wire parsers check these first and name the field).
    """

    rule: Rule
    at: time
    zone: str = "UTC"
    start_date: date | None = None
    end_date: date | None = None
    tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.at.tzinfo is not None:
            raise ValueError("at must be a naive wall-clock time; the zone goes in zone")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        object.__setattr__(self, "tz", _zone(self.zone))


def next_occurrence(recurrence: Recurrence, after: datetime) -> datetime | None:
    """The first firing instant strictly after ``after`` (aware), in UTC.

    None when the schedule will never fire again: a one-shot already past, or past ``end_date``.
    Raises :class:`ValueError` for a naive ``after``.
    """
    return next(_firings(recurrence, _utc(after, "after")), (None, None))[1]


def occurrences_between(
    recurrence: Recurrence, start: datetime, end: datetime, *, limit: int = OCCURRENCES_LIMIT
) -> list[datetime]:
    """Every firing instant ``t`` with ``start < t <= end``, ascending, in UTC.

    Meant for catching up after downtime: pass the last instant handled and now. Raises
    :class:`TooManyOccurrences` (a :class:`ValueError`) if there are more than ``limit``, and
    :class:`ValueError` for naive bounds or ``end`` before ``start``.
    """
    start, end = _utc(start, "start"), _utc(end, "end")
    if end < start:
        raise ValueError("end is before start")
    found: list[datetime] = []
    for _, instant in _firings(recurrence, start):
        if instant > end:
            break
        if len(found) == limit:
            raise TooManyOccurrences(f"more than {limit} occurrences between {start} and {end}")
        found.append(instant)
    return found


def _firings(recurrence: Recurrence, after: datetime) -> Iterator[tuple[date, datetime]]:
    """(local date, UTC instant) of each firing strictly after ``after`` (UTC), ascending."""
    tz = recurrence.tz
    try:
        local = after.astimezone(tz).date()
        # A gap can push a date's firing past midnight, so the day before ``after``'s own local
        # date may still fire after it. Gaps are at most a day long, so one day back suffices.
        first = local - timedelta(days=1)
    except OverflowError:
        first = date.min
    previous = after
    for day in _dates(recurrence, first):
        try:
            instant = datetime.combine(day, recurrence.at.replace(fold=0), tz).astimezone(UTC)
        except OverflowError:
            return
        if instant > previous:
            previous = instant
            yield day, instant


def _dates(recurrence: Recurrence, first: date) -> Iterator[date]:
    """The local dates from ``first`` on that the rule and the start/end window select."""
    if recurrence.start_date and first < recurrence.start_date:
        first = recurrence.start_date
    last = recurrence.end_date or date.max
    rule = recurrence.rule
    if isinstance(rule, Once):
        if first <= rule.on <= last:
            yield rule.on
        return
    day = first
    while day <= last:
        if _selects(rule, day):
            yield day
        if day == date.max:
            return
        day += timedelta(days=1)


def _selects(rule: Rule, day: date) -> bool:
    if isinstance(rule, Once):
        return day == rule.on
    if isinstance(rule, Weekly):
        return day.weekday() in rule.weekdays
    if isinstance(rule, MonthDays):
        return day.day in rule.days
    return True


def _utc(instant: datetime, name: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")
    return instant.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone") from exc


# --- Gizwits: /app/scheduler and /app/devices/{did}/scheduler --------------------------------


def parse_gizwits_scheduler(*, date: object, time: object, repeat: object) -> Recurrence:
    """The recurrence of a Gizwits ``POST /app/scheduler`` body (seed, 定时任务).

    * ``time``: ``HH:MM`` (two digits each, 00:00-23:59), UTC; the zone is always UTC.
    * ``repeat``: ``none``, or a comma list of ``mon,tue,wed,thu,fri,sat,sun`` in lower case,
      any order, no duplicates, no empty items, no spaces.
    * ``date``: ``YYYY-MM-DD`` and a real date (2023-02-29 is refused). Required with
      ``none`` (the one-shot's date); optional with a weekday list, where it is the first date
      the schedule may fire.

    Whether a one-shot is already in the past depends on the clock: the service refuses it when
    :func:`next_occurrence` returns None. Raises :class:`ScheduleInvalid`.
    """
    return _gizwits(date, time, repeat, days=None, start=None, end=None, allow_day=False)


def parse_gizwits_device_scheduler(
    *,
    time: object,
    repeat: object,
    date: object = None,
    days: object = None,
    start_date: object = None,
    end_date: object = None,
) -> Recurrence:
    """The recurrence of a Gizwits ``/app/devices/{did}/scheduler`` body (spec §1.4).

    As :func:`parse_gizwits_scheduler`, and also:

    * ``repeat`` ``day``: every day, or with a non-empty ``days`` list, on those days of the
      month (integers 1-31, no duplicates; a day a month lacks is skipped in that month).
      ``days`` with any other ``repeat`` is refused; an empty list counts as absent.
    * ``start_date``/``end_date``: ``YYYY-MM-DD``, inclusive; ``end_date`` must not be before
      ``start_date`` (nor before ``date`` for a repeating schedule, which bounds it the same
      way). A one-shot ``date`` must lie inside them, and a repeating window must contain at
      least one date the repeat selects: a schedule that could never fire is refused.

    Raises :class:`ScheduleInvalid`.
    """
    return _gizwits(date, time, repeat, days=days, start=start_date, end=end_date, allow_day=True)


def _gizwits(
    date_field: object,
    time_field: object,
    repeat: object,
    *,
    days: object,
    start: object,
    end: object,
    allow_day: bool,
) -> Recurrence:
    at = _gizwits_time(time_field)
    kind = _gizwits_repeat(repeat, allow_day=allow_day)
    on = None if date_field is None else _parse_date(date_field, "date")
    start_date = None if start is None else _parse_date(start, "start_date")
    end_date = None if end is None else _parse_date(end, "end_date")
    month_days = _month_days(days)
    if start_date and end_date and end_date < start_date:
        raise ScheduleInvalid("end_date", "must not be before start_date")
    if month_days and kind != "day":
        raise ScheduleInvalid("days", "is only allowed with repeat day")

    if kind == "none":
        if on is None:
            raise ScheduleInvalid("date", "is required when repeat is none")
        if (start_date and on < start_date) or (end_date and on > end_date):
            raise ScheduleInvalid("date", "must lie between start_date and end_date")
        return Recurrence(Once(on), at, "UTC", start_date, end_date)
    rule: Rule = Daily()
    if isinstance(kind, frozenset):
        rule = Weekly(kind)
    elif month_days:
        rule = MonthDays(month_days)
    if on and (start_date is None or on > start_date):
        start_date = on
    if start_date and end_date:
        if end_date < start_date:
            raise ScheduleInvalid("end_date", "must not be before date")
        window = min((end_date - start_date).days + 1, _LONGEST_GAP_DAYS)
        if not any(_selects(rule, start_date + timedelta(days=n)) for n in range(window)):
            raise ScheduleInvalid("end_date", "leaves no date that repeat selects")
    return Recurrence(rule, at, "UTC", start_date, end_date)


def _gizwits_time(value: object) -> time:
    if not isinstance(value, str) or not (m := _GIZWITS_TIME.fullmatch(value)):
        raise ScheduleInvalid("time", "must be HH:MM (UTC)")
    return _clock_time(int(m.group(1)), int(m.group(2)), "time", "00:00 to 23:59")


def _gizwits_repeat(value: object, *, allow_day: bool) -> Literal["none", "day"] | frozenset[int]:
    expected = "none, day or" if allow_day else "none or"
    if not isinstance(value, str):
        raise ScheduleInvalid("repeat", f"must be a string: {expected} a comma list of mon..sun")
    if value == "none":
        return "none"
    if allow_day and value == "day":
        return "day"
    weekdays: set[int] = set()
    for item in value.split(","):
        if not item:
            raise ScheduleInvalid("repeat", f"has an empty item in {value!r}")
        if item not in WEEKDAY_TOKENS:
            raise ScheduleInvalid(
                "repeat",
                f"unknown token {item!r}; use {expected} a comma list of "
                + ",".join(WEEKDAY_TOKENS),
            )
        index = WEEKDAY_TOKENS.index(item)
        if index in weekdays:
            raise ScheduleInvalid("repeat", f"repeats {item!r}")
        weekdays.add(index)
    return frozenset(weekdays)


def _month_days(value: object) -> frozenset[int]:
    if value is None:
        return frozenset()
    if not isinstance(value, list | tuple):
        raise ScheduleInvalid("days", "must be a list of days of the month (1-31)")
    seen: set[int] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 31:
            raise ScheduleInvalid("days", f"{item!r} is not a day of the month (1-31)")
        if item in seen:
            raise ScheduleInvalid("days", f"repeats {item}")
        seen.add(item)
    return frozenset(seen)


def _parse_date(value: object, name: str) -> date:
    if not isinstance(value, str) or not (m := _DATE.fullmatch(value)):
        raise ScheduleInvalid(name, "must be YYYY-MM-DD")
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as exc:
        raise ScheduleInvalid(name, f"{value} is not a date") from exc


def _clock_time(hour: int, minute: int, name: str, span: str) -> time:
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ScheduleInvalid(name, f"must be a time of day, {span}")
    return time(hour, minute)


def format_time(at: time) -> str:
    """``HH:MM``: the Gizwits ``time`` and the normalised Tencent ``TimePoint``."""
    return f"{at.hour:02d}:{at.minute:02d}"


def format_gizwits_repeat(rule: Rule) -> str:
    """The Gizwits ``repeat`` for a rule: ``none``, ``day`` (daily and days of the month; the
    days go in ``days``) or the weekday tokens in ``mon..sun`` order."""
    if isinstance(rule, Once):
        return "none"
    if isinstance(rule, Weekly):
        return ",".join(WEEKDAY_TOKENS[day] for day in sorted(rule.weekdays))
    return "day"


# --- Tencent: AppCreateTimer / AppModifyTimer --------------------------------------------------


@dataclass(frozen=True)
class TencentTimerRule:
    """The timing fields of a Tencent timer as the client sent them, normalised.

    ``weekdays`` uses :meth:`date.weekday` numbering (0 = Monday); it is empty only for a
    one-shot sent with ``Days`` ``0000000``. ``repeat`` is the wire ``Repeat`` (1 = True).
    """

    weekdays: frozenset[int]
    at: time
    repeat: bool
    zone: str

    @property
    def days(self) -> str:
        """The wire ``Days``: seven 0/1 characters, Sunday first."""
        return format_tencent_days(self.weekdays)

    @property
    def time_point(self) -> str:
        """The wire ``TimePoint``, zero-padded ``HH:mm``."""
        return format_time(self.at)

    def recurrence(self, now: datetime) -> Recurrence:
        """The recurrence to arm at ``now`` (aware).

        ``Repeat`` 1: weekly on ``weekdays`` at ``at``. ``Repeat`` 0: a one-shot on the local
        date of the first firing strictly after ``now`` on one of ``weekdays`` (any day when
        ``Days`` is all zero); once it has fired :func:`next_occurrence` is None, which is when
        the timer is switched off. Re-enabling a one-shot arms it again from the new ``now``.
        """
        weekly = Recurrence(Weekly(self.weekdays or _ALL_WEEKDAYS), self.at, self.zone)
        if self.repeat:
            return weekly
        first = next(_firings(weekly, _utc(now, "now")), None)
        if first is None:
            raise ValueError(f"no date after {now} to arm a one-shot timer on")
        return Recurrence(Once(first[0]), self.at, self.zone)


def parse_tencent_timer(
    *, days: object, time_point: object, repeat: object, time_zone: object, default_zone: str
) -> TencentTimerRule:
    """The timing of a Tencent ``AppCreateTimer``/``AppModifyTimer`` request.

    * ``Days``: exactly 7 characters of ``0``/``1``, Sunday to Saturday. All zero is refused with
      ``Repeat`` 1 (it would never fire); with ``Repeat`` 0 it means "any day", as does
      ``1111111`` (the official iOS app sends that for one-shots).
    * ``TimePoint``: ``H:mm`` or ``HH:mm``, 0:00-23:59, minutes always two digits; stored and
      returned as ``HH:mm``.
    * ``Repeat``: the integer 0 or 1 (a JSON boolean is refused).
    * ``TimeZone`` (extension): an IANA zone name; when absent (None) ``default_zone`` is used
      (the user's setting, else ``IOTCLOUD_TIMEZONE``), which the caller has already validated.

    Raises :class:`ScheduleInvalid` naming the wire field.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat not in (0, 1):
        raise ScheduleInvalid("Repeat", "must be 0 or 1")
    if not isinstance(days, str) or not _TENCENT_DAYS.fullmatch(days):
        raise ScheduleInvalid("Days", "must be 7 characters of 0 or 1, Sunday to Saturday")
    weekdays = frozenset((index - 1) % 7 for index, flag in enumerate(days) if flag == "1")
    if repeat == 1 and not weekdays:
        raise ScheduleInvalid("Days", "must select at least one day when Repeat is 1")
    if not isinstance(time_point, str) or not (m := _TENCENT_TIME.fullmatch(time_point)):
        raise ScheduleInvalid("TimePoint", "must be H:mm or HH:mm")
    at = _clock_time(int(m.group(1)), int(m.group(2)), "TimePoint", "0:00 to 23:59")
    zone = default_zone
    if time_zone is not None:
        if not isinstance(time_zone, str):
            raise ScheduleInvalid("TimeZone", "must be an IANA time zone name")
        try:
            _zone(time_zone)
        except ValueError as exc:
            raise ScheduleInvalid("TimeZone", f"{time_zone!r} is not an IANA time zone") from exc
        zone = time_zone
    return TencentTimerRule(weekdays, at, repeat == 1, zone)


def format_tencent_days(weekdays: frozenset[int]) -> str:
    """Seven 0/1 characters, Sunday first (the wire ``Days``)."""
    return "".join("1" if (index - 1) % 7 in weekdays else "0" for index in range(7))
