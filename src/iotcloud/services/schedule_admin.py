"""The operator's view of schedules: every user's schedules, their upcoming firings, and run
history with each attempt, failed and missed runs first.

Reads only; a schedule is changed by its owner through the app APIs. Upcoming firings are
computed from each enabled schedule's ``next_due_at`` (the first occurrence the engine has not
handled yet, so an overdue one is listed too) and the domain recurrence for the ones after it,
the same rules the engine fires by.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from iotcloud.domain.clock import Clock, iso_utc
from iotcloud.domain.schedules import (
    WEEKDAY_TOKENS,
    MonthDays,
    Once,
    Recurrence,
    Weekly,
    format_time,
    next_occurrence,
)
from iotcloud.errors import FormInvalid, ScheduleNotFound
from iotcloud.scheduler.policy import Attempt
from iotcloud.scheduler.store import recurrence_of
from iotcloud.storage.database import Database
from iotcloud.storage.schedule_admin import RunListing, ScheduleAdminRepository, ScheduleListing

__all__ = [
    "AttemptView",
    "RunView",
    "ScheduleAdminService",
    "ScheduleDetail",
    "ScheduleSummary",
    "UpcomingFiring",
    "run_view",
    "schedule_detail_view",
    "schedule_summary_view",
    "upcoming_firing_view",
]

LIMIT_MAX: Final = 1000
WITHIN_MAX: Final = timedelta(days=366)
DETAIL_UPCOMING: Final = 5
"""How many next firings `ScheduleAdminService.get` lists."""


@dataclass(frozen=True)
class ScheduleSummary:
    """A schedule as an operator lists it. ``rule_text`` says when it fires in words
    (``daily 07:00 Europe/Berlin``); ``next_due_at`` is None when it is off or will not fire
    again; ``last_status`` is its latest run's status (None before the first)."""

    schedule_id: str
    dialect: str
    name: str
    uid: str
    appid: str
    did: str | None
    enabled: bool
    rule_text: str
    time_zone: str
    next_due_at: datetime | None
    last_status: str | None


@dataclass(frozen=True)
class ScheduleDetail:
    """A schedule with its tasks (``{did, product_key, attrs}`` or ``{..., raw}``), retry
    settings and next firings (at most `DETAIL_UPCOMING`; none while disabled)."""

    schedule: ScheduleSummary
    tasks: list[dict[str, Any]]
    retry_count: int
    retry_task: str
    upcoming: list[datetime]


@dataclass(frozen=True)
class UpcomingFiring:
    schedule_id: str
    name: str
    uid: str
    at: datetime


@dataclass(frozen=True)
class AttemptView:
    """One attempt of a run: per did whether the command reached the device (None while in
    flight); ``interrupted`` when its process stopped before it finished."""

    at: datetime
    detail: dict[str, bool] | None
    interrupted: bool


@dataclass(frozen=True)
class RunView:
    """One occurrence of a schedule: ``status`` ``running``, ``succeed``, ``failed`` or
    ``missed``; ``note`` says why a run was missed, interrupted or not retried."""

    run_id: int
    schedule_id: str
    schedule_name: str
    scheduled_at: datetime
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    detail: dict[str, bool]
    attempts: list[AttemptView]
    note: str | None


class ScheduleAdminService:
    """Reads of every user's schedules and runs; each call is one unit of work."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def list(
        self,
        *,
        uid: str | None = None,
        did: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[ScheduleSummary]:
        """Schedules, newest first, filtered by owner ``uid``, device ``did`` and ``enabled``
        when given (an unknown uid or did finds none). ``limit`` 1-1000, ``offset`` >= 0;
        ``FormInvalid`` naming the parameter otherwise."""
        _check_limit(limit)
        if offset < 0:
            raise FormInvalid("offset: must not be negative")
        async with self.db.session() as session:
            found = await ScheduleAdminRepository(session).page(
                uid=uid or None, did=did or None, enabled=enabled, limit=limit, offset=offset
            )
        return [_summary(listing) for listing in found]

    async def get(self, schedule_id: str) -> ScheduleDetail:
        """The schedule with public id ``schedule_id``; raises ``ScheduleNotFound`` (9030)."""
        async with self.db.session() as session:
            listing = await ScheduleAdminRepository(session).by_public_id(schedule_id)
        if listing is None:
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")
        row = listing.schedule
        upcoming: builtins.list[datetime] = []
        if row.enabled and row.next_due_at is not None:
            upcoming = _firings(recurrence_of(row), row.next_due_at, None, DETAIL_UPCOMING)
        return ScheduleDetail(
            schedule=_summary(listing),
            tasks=[dict(task) for task in row.tasks],
            retry_count=row.retry_count,
            retry_task=row.retry_task,
            upcoming=upcoming,
        )

    async def upcoming(
        self, *, within: timedelta, limit: int = 100
    ) -> builtins.list[UpcomingFiring]:
        """The firings of enabled schedules from now until ``within`` from now (overdue ones
        too), soonest first, at most ``limit``. ``within`` is more than 0 and at most 366
        days."""
        _check_limit(limit)
        if not timedelta(0) < within <= WITHIN_MAX:
            raise FormInvalid("within: must be more than 0 and at most 366 days")
        horizon = self.clock.now() + within
        async with self.db.session() as session:
            # the `limit` soonest firings all belong to the `limit` soonest-due schedules
            due = await ScheduleAdminRepository(session).due_before(horizon, limit)
        firings: builtins.list[UpcomingFiring] = []
        for listing in due:
            row = listing.schedule
            assert row.next_due_at is not None
            for at in _firings(recurrence_of(row), row.next_due_at, horizon, limit):
                firings.append(UpcomingFiring(row.public_id, row.name, listing.uid, at))
        firings.sort(key=lambda firing: (firing.at, firing.schedule_id))
        return firings[:limit]

    async def runs(
        self, schedule_id: str | None = None, *, problems_first: bool = True, limit: int = 100
    ) -> builtins.list[RunView]:
        """Runs of ``schedule_id`` (of every schedule when None), newest occurrence first;
        with ``problems_first`` failed and missed runs come before the rest. Raises
        ``ScheduleNotFound`` (9030) for an unknown id."""
        _check_limit(limit)
        async with self.db.session() as session:
            repo = ScheduleAdminRepository(session)
            pk = None
            if schedule_id is not None:
                pk = await repo.schedule_pk(schedule_id)
                if pk is None:
                    raise ScheduleNotFound(f"no schedule {schedule_id!r}")
            found = await repo.runs(
                schedule=pk, problems_first=problems_first, problems_only=False, limit=limit
            )
        return [_run(listing) for listing in found]

    async def recent_problems(self, limit: int = 10) -> builtins.list[RunView]:
        """The latest failed or missed runs of any schedule, newest occurrence first."""
        _check_limit(limit)
        async with self.db.session() as session:
            found = await ScheduleAdminRepository(session).runs(
                schedule=None, problems_first=False, problems_only=True, limit=limit
            )
        return [_run(listing) for listing in found]


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= LIMIT_MAX:
        raise FormInvalid(f"limit: must be 1 to {LIMIT_MAX}")


def _firings(
    recurrence: Recurrence, first: datetime, horizon: datetime | None, limit: int
) -> list[datetime]:
    """``first`` and the occurrences after it up to ``horizon`` (inclusive; None: no bound),
    at most ``limit``."""
    found: list[datetime] = []
    at: datetime | None = first
    while at is not None and len(found) < limit and (horizon is None or at <= horizon):
        found.append(at)
        at = next_occurrence(recurrence, at)
    return found


def rule_text(recurrence: Recurrence) -> str:
    """When a recurrence fires, in words: ``daily 07:00 Europe/Berlin``, ``weekly mon,fri
    07:00 UTC``, ``monthly 1,15 07:00 UTC``, ``once 2026-12-24 07:00 UTC``, with ``from``
    and ``until`` dates when bounded."""
    rule = recurrence.rule
    if isinstance(rule, Once):
        when = f"once {rule.on.isoformat()}"
    elif isinstance(rule, Weekly):
        when = "weekly " + ",".join(WEEKDAY_TOKENS[day] for day in sorted(rule.weekdays))
    elif isinstance(rule, MonthDays):
        when = "monthly " + ",".join(str(day) for day in sorted(rule.days))
    else:
        when = "daily"
    text = f"{when} {format_time(recurrence.at)} {recurrence.zone}"
    if recurrence.start_date is not None:
        text += f" from {recurrence.start_date.isoformat()}"
    if recurrence.end_date is not None:
        text += f" until {recurrence.end_date.isoformat()}"
    return text


def _summary(listing: ScheduleListing) -> ScheduleSummary:
    row = listing.schedule
    return ScheduleSummary(
        schedule_id=row.public_id,
        dialect=row.dialect,
        name=row.name,
        uid=listing.uid,
        appid=listing.appid,
        did=row.device_did,
        enabled=row.enabled,
        rule_text=rule_text(recurrence_of(row)),
        time_zone=row.time_zone,
        next_due_at=row.next_due_at,
        last_status=listing.last_status,
    )


def _run(listing: RunListing) -> RunView:
    row = listing.run
    attempts = [Attempt.from_json(item) for item in row.attempts]
    return RunView(
        run_id=row.id,
        schedule_id=listing.schedule_id,
        schedule_name=listing.schedule_name,
        scheduled_at=row.scheduled_at,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        detail=dict(row.detail),
        attempts=[
            AttemptView(
                at=item.at,
                detail=None if item.detail is None else dict(item.detail),
                interrupted=item.interrupted,
            )
            for item in attempts
        ],
        note=row.note,
    )


def _time(instant: datetime | None) -> str | None:
    return iso_utc(instant) if instant is not None else None


def schedule_summary_view(schedule: ScheduleSummary) -> dict[str, Any]:
    """A schedule as JSON (``iotcloud schedule list --json``, the console)."""
    return {
        "schedule_id": schedule.schedule_id,
        "dialect": schedule.dialect,
        "name": schedule.name,
        "uid": schedule.uid,
        "appid": schedule.appid,
        "did": schedule.did,
        "enabled": schedule.enabled,
        "rule": schedule.rule_text,
        "time_zone": schedule.time_zone,
        "next_due_at": _time(schedule.next_due_at),
        "last_status": schedule.last_status,
    }


def schedule_detail_view(detail: ScheduleDetail) -> dict[str, Any]:
    """A schedule with ``tasks``, retry settings and ``upcoming`` firings as JSON."""
    return {
        **schedule_summary_view(detail.schedule),
        "tasks": detail.tasks,
        "retry_count": detail.retry_count,
        "retry_task": detail.retry_task,
        "upcoming": [iso_utc(at) for at in detail.upcoming],
    }


def upcoming_firing_view(firing: UpcomingFiring) -> dict[str, Any]:
    return {
        "schedule_id": firing.schedule_id,
        "name": firing.name,
        "uid": firing.uid,
        "at": iso_utc(firing.at),
    }


def run_view(run: RunView) -> dict[str, Any]:
    """A run with every attempt as JSON (``iotcloud schedule runs --json``)."""
    return {
        "run_id": run.run_id,
        "schedule_id": run.schedule_id,
        "schedule_name": run.schedule_name,
        "scheduled_at": iso_utc(run.scheduled_at),
        "status": run.status,
        "started_at": _time(run.started_at),
        "finished_at": _time(run.finished_at),
        "detail": run.detail,
        "attempts": [
            {
                "at": iso_utc(attempt.at),
                "detail": attempt.detail,
                "interrupted": attempt.interrupted,
            }
            for attempt in run.attempts
        ],
        "note": run.note,
    }
