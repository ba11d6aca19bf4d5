"""Schedules and runs in SQL: claiming due work with leases, recording attempts, and the reads and
writes of the scheduler service.

Claiming is safe with several engines on one database:

* PostgreSQL: due rows are selected ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take
  disjoint rows without waiting for each other.
* SQLite: claims run under the ``scheduler`` lock of `Database.session` (one writer per process);
  engines with separate `Database` objects on one file are kept apart by the checks below.
* Everywhere: every write of a claim is a compare-and-set on the value that was read
  (``next_due_at`` of a schedule, ``next_attempt_at`` of a run), and runs are inserted with
  ``ON CONFLICT DO NOTHING`` on the unique (schedule, scheduled instant): a claimer that lost a
  race changes nothing and fires nothing.

A fired run is inserted already leased to its claimer with its first attempt marked as started,
in the transaction that advances the schedule; the attempt then executes outside any
transaction. While an attempt is in flight the run's ``next_attempt_at`` is the lease's expiry: if
the claimer dies, the run becomes due again at that instant and the next claimer finds it
abandoned (``lease_owner`` still set).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import (
    Boolean,
    Insert,
    Table,
    case,
    delete,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from iotcloud.domain.schedules import (
    Daily,
    MonthDays,
    Once,
    Recurrence,
    Rule,
    TencentTimerRule,
    Weekly,
)
from iotcloud.scheduler.policy import (
    Attempt,
    RetryTask,
    Task,
    catch_up,
    interrupted_attempt,
    merged_detail,
    outcome,
    tasks_to_send,
)
from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRow, ScheduleRunRow, UTCDateTime

log = logging.getLogger(__name__)

CLAIM_LOCK: Final = "scheduler"
_INSERT_CHUNK: Final = 500
_PURGE_CHUNK: Final = 5000


@dataclass(frozen=True)
class ClaimedAttempt:
    """An attempt this claimer must now execute: send ``send`` (a subset of the run's
    ``tasks``) and report the result with `ScheduleStore.finish_attempt` under ``lease``."""

    run_id: int
    schedule_id: str
    scheduled_at: datetime
    user_id: int
    app_id: int
    lease: str
    at: datetime
    tasks: tuple[Task, ...]
    send: tuple[Task, ...]
    retry_count: int
    retry_task: RetryTask
    detail: Mapping[str, bool]
    attempts: tuple[Attempt, ...]
    """Every attempt so far, this one (in flight, ``detail`` None) last."""


@dataclass
class ClaimReport:
    """What one claim did: attempts to execute now, runs recorded as missed, runs finished
    without a new attempt (given up or abandoned), schedules switched off after their last
    occurrence; ``schedules`` and ``due_runs`` count the rows the claim selected (when either
    reaches the limit, more may be due)."""

    attempts: list[ClaimedAttempt]
    missed: int = 0
    finished: int = 0
    exhausted: int = 0
    schedules: int = 0
    due_runs: int = 0
    more: bool = False
    """A select came back full: more may be due right now."""


@dataclass(frozen=True)
class AttemptResult:
    """How `ScheduleStore.finish_attempt` left the run: ``status`` ``succeed``, ``failed`` or
    ``running`` (a retry is due at ``next_attempt_at``); ``stored`` False when the lease was lost
    (the run was deleted or taken over) and nothing was written."""

    stored: bool
    status: str
    detail: Mapping[str, bool]
    next_attempt_at: datetime | None


class ScheduleStore:
    """The scheduler's tables. Each method is one unit of work on ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the engine ---------------------------------------------------------------------------

    async def claim_due(
        self,
        now: datetime,
        *,
        owner: str,
        limit: int,
        grace: timedelta,
        lease: timedelta,
    ) -> ClaimReport:
        """Claim up to ``limit`` due schedules, then due runs up to ``limit`` attempts in all,
        as of ``now``.

        A due schedule fires its latest due occurrence (within ``grace``) as a new run leased to
        ``owner`` until ``now + lease``, records the others as ``missed`` and advances to its
        next occurrence; a schedule with no next occurrence is switched off. A due run (retry,
        or abandoned by a dead claimer) gets its next attempt leased the same way, or is finished
        ``failed`` when its retries are used up or the attempt is more than ``grace`` overdue.
        """
        report = ClaimReport([])
        # SQLite: one claimer at a time in this process. PostgreSQL: no lock, SKIP LOCKED
        # lets concurrent claimers (in any process) take disjoint rows.
        lock = CLAIM_LOCK if self.db.is_sqlite else None
        async with self.db.session(lock=lock) as session:
            await self._claim_schedules(session, report, now, owner, limit, grace, lease)
        report.more = report.schedules >= limit
        room = limit - len(report.attempts)
        if room > 0:
            async with self.db.session(lock=lock) as session:
                await self._claim_runs(session, report, now, owner, room, grace, lease)
            report.more = report.more or report.due_runs >= room
        else:
            report.more = True
        return report

    async def _claim_schedules(
        self,
        session: AsyncSession,
        report: ClaimReport,
        now: datetime,
        owner: str,
        limit: int,
        grace: timedelta,
        lease: timedelta,
    ) -> None:
        due = await session.scalars(
            select(ScheduleRow)
            .where(ScheduleRow.enabled, ScheduleRow.next_due_at <= now)
            .order_by(ScheduleRow.next_due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(due.all())
        report.schedules += len(rows)
        if not rows:
            return
        plans = {row.id: catch_up(recurrence_of(row), _due(row), now, grace=grace) for row in rows}
        # one compare-and-set for the batch: only rows still at the next_due_at read above move
        advanced = set(
            await session.scalars(
                update(ScheduleRow)
                .where(
                    tuple_(ScheduleRow.id, ScheduleRow.next_due_at).in_(
                        [(row.id, row.next_due_at) for row in rows]
                    )
                )
                .values(
                    next_due_at=case(
                        {key: literal(plan.next_due, UTCDateTime()) for key, plan in plans.items()},
                        value=ScheduleRow.id,
                    ),
                    enabled=case(
                        {
                            key: literal(plan.next_due is not None, Boolean())
                            for key, plan in plans.items()
                        },
                        value=ScheduleRow.id,
                    ),
                )
                .returning(ScheduleRow.id)
                .execution_options(synchronize_session=False)
            )
        )
        new_runs: list[dict[str, Any]] = []
        fired: dict[tuple[int, datetime], tuple[ScheduleRow, str]] = {}
        for row in rows:
            if row.id not in advanced:
                continue  # another claimer (or an edit) got there first
            plan = plans[row.id]
            if plan.next_due is None:
                report.exhausted += 1
            dids = [task["did"] for task in row.tasks]
            for instant in plan.missed:
                late = (now - instant).total_seconds()
                new_runs.append(
                    _run_values(
                        row,
                        instant,
                        status="missed",
                        detail=dict.fromkeys(dids, False),
                        finished_at=now,
                        note=f"missed: {late:.0f} s late, beyond the {grace.total_seconds():.0f}"
                        " s grace window",
                    )
                )
            if plan.fire is not None:
                token = _lease_token(owner)
                new_runs.append(
                    _run_values(
                        row,
                        plan.fire,
                        status="running",
                        tasks=row.tasks,
                        attempts=[Attempt(now, None).to_json()],
                        next_attempt_at=now + lease,
                        lease_owner=token,
                        started_at=now,
                    )
                )
                fired[(row.id, plan.fire)] = (row, token)
        for start in range(0, len(new_runs), _INSERT_CHUNK):
            chunk = new_runs[start : start + _INSERT_CHUNK]
            inserted = await session.execute(_insert_runs(session), chunk)
            for run_id, schedule_id, scheduled_at, status in inserted.all():
                if status == "missed":
                    report.missed += 1
                    continue
                row, token = fired[(schedule_id, scheduled_at)]
                tasks = tuple(Task.from_json(task) for task in row.tasks)
                retry_task = cast(RetryTask, row.retry_task)
                report.attempts.append(
                    ClaimedAttempt(
                        run_id=run_id,
                        schedule_id=row.public_id,
                        scheduled_at=scheduled_at,
                        user_id=row.user_id,
                        app_id=row.app_id,
                        lease=token,
                        at=now,
                        tasks=tasks,
                        send=tuple(tasks_to_send(tasks, retry_task, {})),
                        retry_count=row.retry_count,
                        retry_task=retry_task,
                        detail={},
                        attempts=(Attempt(now, None),),
                    )
                )

    async def _claim_runs(
        self,
        session: AsyncSession,
        report: ClaimReport,
        now: datetime,
        owner: str,
        limit: int,
        grace: timedelta,
        lease: timedelta,
    ) -> None:
        due = await session.execute(
            select(ScheduleRunRow, ScheduleRow.public_id, ScheduleRow.user_id, ScheduleRow.app_id)
            .join(ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id)
            .where(ScheduleRunRow.status == "running", ScheduleRunRow.next_attempt_at <= now)
            .order_by(ScheduleRunRow.next_attempt_at)
            .limit(limit)
            .with_for_update(of=ScheduleRunRow, skip_locked=True)
        )
        for run, public_id, user_id, app_id in due.all():
            report.due_runs += 1
            tasks = tuple(Task.from_json(task) for task in run.tasks or [])
            retry_task = cast(RetryTask, run.retry_task)
            attempts = [Attempt.from_json(item) for item in run.attempts]
            detail = dict(run.detail)
            due_at = run.next_attempt_at
            assert due_at is not None
            note: str | None = None
            if run.lease_owner is not None and attempts and attempts[-1].detail is None:
                # its claimer stopped mid-attempt: the attempt counts, with its dids failed
                started = attempts[-1]
                attempts[-1] = interrupted_attempt(started, tasks, retry_task, detail)
                assert attempts[-1].detail is not None
                detail = merged_detail(detail, attempts[-1].detail)
                due_at = started.at
                note = "interrupted: the process running an attempt stopped"
            verdict = outcome(tasks, detail, attempts=len(attempts), retry_count=run.retry_count)
            overdue = now - due_at
            values: dict[str, Any] = {"attempts": [a.to_json() for a in attempts], "detail": detail}
            token: str | None = None
            if verdict == "retry" and overdue > grace:
                verdict = "failed"
                note = (
                    f"{note + '; ' if note else ''}not retried: the attempt was "
                    f"{overdue.total_seconds():.0f} s overdue, beyond the grace window"
                )
            if verdict == "retry":
                token = _lease_token(owner)
                attempts.append(Attempt(now, None))
                values.update(
                    attempts=[a.to_json() for a in attempts],
                    next_attempt_at=now + lease,
                    lease_owner=token,
                    note=note,
                )
            else:
                values.update(
                    status=verdict,
                    next_attempt_at=None,
                    lease_owner=None,
                    finished_at=now,
                    note=note,
                )
            taken = await session.execute(
                update(ScheduleRunRow)
                .where(
                    ScheduleRunRow.id == run.id,
                    ScheduleRunRow.next_attempt_at == run.next_attempt_at,
                    ScheduleRunRow.status == "running",
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if cast(CursorResult[Any], taken).rowcount != 1:
                continue
            if token is None:
                report.finished += 1
                log.info(
                    "schedule %s run at %s finished %s: %s",
                    public_id,
                    run.scheduled_at.isoformat(),
                    verdict,
                    note,
                )
                continue
            report.attempts.append(
                ClaimedAttempt(
                    run_id=run.id,
                    schedule_id=public_id,
                    scheduled_at=run.scheduled_at,
                    user_id=user_id,
                    app_id=app_id,
                    lease=token,
                    at=now,
                    tasks=tasks,
                    send=tuple(tasks_to_send(tasks, retry_task, detail)),
                    retry_count=run.retry_count,
                    retry_task=retry_task,
                    detail=detail,
                    attempts=tuple(attempts),
                )
            )

    async def finish_attempt(
        self,
        claimed: ClaimedAttempt,
        sent: Mapping[str, bool],
        now: datetime,
        *,
        retry_interval: timedelta,
    ) -> AttemptResult:
        """Record the result of ``claimed`` (``sent``: did -> reached its device) and release its
        lease: the run succeeds, fails for good, or waits ``retry_interval`` for its next
        attempt. Writes nothing when the lease was lost (``stored`` False)."""
        [result] = await self.finish_attempts([(claimed, sent)], now, retry_interval=retry_interval)
        return result

    async def finish_attempts(
        self,
        finished: Sequence[tuple[ClaimedAttempt, Mapping[str, bool]]],
        now: datetime,
        *,
        retry_interval: timedelta,
    ) -> list[AttemptResult]:
        """`finish_attempt` for several attempts in one transaction (one commit for a burst of
        results); the results in the same order. All or nothing: when the transaction fails,
        none is recorded and their leases expire as if the process had died."""
        prepared = [
            _finished_values(claimed, sent, now, retry_interval) for claimed, sent in finished
        ]
        results: list[AttemptResult] = []
        async with self.db.session() as session:
            for (claimed, _), (values, result) in zip(finished, prepared, strict=True):
                written = await session.execute(
                    update(ScheduleRunRow)
                    .where(
                        ScheduleRunRow.id == claimed.run_id,
                        ScheduleRunRow.lease_owner == claimed.lease,
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                stored = cast(CursorResult[Any], written).rowcount == 1
                results.append(dataclasses.replace(result, stored=stored))
        return results

    async def nearest_due(self) -> datetime | None:
        """The earliest instant at which a schedule or a run needs the engine (None: nothing
        is scheduled at all). It may be in the past: work is due now."""
        async with self.db.session() as session:
            schedule = await session.scalar(
                select(func.min(ScheduleRow.next_due_at)).where(ScheduleRow.enabled)
            )
            run = await session.scalar(
                select(func.min(ScheduleRunRow.next_attempt_at)).where(
                    ScheduleRunRow.status == "running"
                )
            )
        found = [instant for instant in (schedule, run) if instant is not None]
        return min(found) if found else None

    async def purge_runs(self, finished_before: datetime) -> int:
        """Delete runs that finished before ``finished_before``; returns how many."""
        removed = 0
        while True:
            async with self.db.session() as session:
                ids = select(ScheduleRunRow.id).where(ScheduleRunRow.finished_at < finished_before)
                result = await session.execute(
                    delete(ScheduleRunRow).where(
                        ScheduleRunRow.id.in_(ids.limit(_PURGE_CHUNK).scalar_subquery())
                    )
                )
            count = cast(CursorResult[Any], result).rowcount
            removed += count
            if count < _PURGE_CHUNK:
                return removed

    # -- the service --------------------------------------------------------------------------

    async def add(self, row: ScheduleRow) -> ScheduleRow:
        async with self.db.session() as session:
            session.add(row)
        return row

    async def get(self, user_id: int, app_id: int, public_id: str) -> ScheduleRow | None:
        async with self.db.session() as session:
            return await session.scalar(
                select(ScheduleRow).where(
                    *_owned(user_id, app_id), ScheduleRow.public_id == public_id
                )
            )

    async def page(
        self,
        user_id: int,
        app_id: int,
        *,
        limit: int,
        skip: int,
        dialect: str | None,
        device: str | None,
    ) -> list[ScheduleRow]:
        query = select(ScheduleRow).where(*_owned(user_id, app_id), *_filters(dialect, device))
        async with self.db.session() as session:
            rows = await session.scalars(query.order_by(ScheduleRow.id).offset(skip).limit(limit))
            return list(rows.all())

    async def count(
        self, user_id: int, app_id: int, *, dialect: str | None, device: str | None
    ) -> int:
        query = (
            select(func.count())
            .select_from(ScheduleRow)
            .where(*_owned(user_id, app_id), *_filters(dialect, device))
        )
        async with self.db.session() as session:
            return int(await session.scalar(query) or 0)

    async def change(
        self, user_id: int, app_id: int, public_id: str, values: Mapping[str, Any]
    ) -> ScheduleRow | None:
        """Set ``values`` on the user's schedule; None when there is no such schedule."""
        async with self.db.session() as session:
            result = await session.execute(
                update(ScheduleRow)
                .where(*_owned(user_id, app_id), ScheduleRow.public_id == public_id)
                .values(**values)
                .returning(ScheduleRow)
                .execution_options(synchronize_session=False)
            )
            return result.scalar_one_or_none()

    async def remove(self, user_id: int, app_id: int, public_id: str) -> bool:
        """Delete the user's schedule and its runs; False when there is no such schedule."""
        async with self.db.session() as session:
            result = await session.execute(
                delete(ScheduleRow).where(
                    *_owned(user_id, app_id), ScheduleRow.public_id == public_id
                )
            )
        return cast(CursorResult[Any], result).rowcount == 1

    async def runs(self, schedule: int, *, limit: int, skip: int) -> list[ScheduleRunRow]:
        """The schedule's runs, latest scheduled instant first."""
        async with self.db.session() as session:
            rows = await session.scalars(
                select(ScheduleRunRow)
                .where(ScheduleRunRow.schedule_id == schedule)
                .order_by(ScheduleRunRow.scheduled_at.desc())
                .offset(skip)
                .limit(limit)
            )
            return list(rows.all())


def _finished_values(
    claimed: ClaimedAttempt, sent: Mapping[str, bool], now: datetime, retry_interval: timedelta
) -> tuple[dict[str, Any], AttemptResult]:
    """The run's columns after the attempt ``claimed`` sent ``sent``, and the result to report
    if they are stored."""
    attempts = [*claimed.attempts[:-1], Attempt(claimed.at, dict(sent))]
    detail = merged_detail(claimed.detail, sent)
    verdict = outcome(
        claimed.tasks, detail, attempts=len(attempts), retry_count=claimed.retry_count
    )
    values: dict[str, Any] = {
        "attempts": [a.to_json() for a in attempts],
        "detail": detail,
        "lease_owner": None,
    }
    next_attempt_at: datetime | None = None
    status = "running"
    if verdict == "retry":
        next_attempt_at = now + retry_interval
        values["next_attempt_at"] = next_attempt_at
    else:
        status = verdict
        values.update(status=verdict, next_attempt_at=None, finished_at=now)
    return values, AttemptResult(True, status, detail, next_attempt_at)


def _owned(user_id: int, app_id: int) -> tuple[Any, ...]:
    return (ScheduleRow.user_id == user_id, ScheduleRow.app_id == app_id)


def _filters(dialect: str | None, device: str | None) -> list[Any]:
    found: list[Any] = []
    if dialect is not None:
        found.append(ScheduleRow.dialect == dialect)
    if device == "":  # belonging to no device
        found.append(ScheduleRow.device_did.is_(None))
    elif device is not None:
        found.append(ScheduleRow.device_did == device)
    return found


def _lease_token(owner: str) -> str:
    """A lease is per claim, so a claimer never mistakes an old lease of its own for a new one."""
    return f"{owner}/{secrets.token_hex(6)}"


def _run_values(
    schedule: ScheduleRow,
    scheduled_at: datetime,
    *,
    status: str,
    detail: dict[str, bool] | None = None,
    tasks: list[dict[str, Any]] | None = None,
    attempts: list[dict[str, Any]] | None = None,
    next_attempt_at: datetime | None = None,
    lease_owner: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    return {
        "schedule_id": schedule.id,
        "scheduled_at": scheduled_at,
        "status": status,
        "detail": detail or {},
        "attempts": attempts or [],
        "tasks": tasks,
        "retry_count": schedule.retry_count,
        "retry_task": schedule.retry_task,
        "next_attempt_at": next_attempt_at,
        "lease_owner": lease_owner,
        "started_at": started_at,
        "finished_at": finished_at,
        "note": note,
    }


def _insert_runs(session: AsyncSession) -> ReturningInsert[int, int, datetime, str]:
    """Insert runs (executemany), skipping any whose (schedule, instant) already has one;
    returns the rows inserted."""
    table = cast(Table, ScheduleRunRow.__table__)
    keys = ["schedule_id", "scheduled_at"]
    statement: Insert
    if session.get_bind().dialect.name == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    else:
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    return statement.returning(
        ScheduleRunRow.id,
        ScheduleRunRow.schedule_id,
        ScheduleRunRow.scheduled_at,
        ScheduleRunRow.status,
    )


def _due(row: ScheduleRow) -> datetime:
    assert row.next_due_at is not None  # selected by next_due_at <= now
    return row.next_due_at


# -- recurrence columns -----------------------------------------------------------------------


def recurrence_columns(recurrence: Recurrence, timer: TencentTimerRule | None) -> dict[str, Any]:
    """The schedule columns that store ``recurrence`` (and, for a Tencent one-shot, the
    ``Days`` it was armed from: ``weekdays`` with ``rearm``)."""
    rule = recurrence.rule
    values: dict[str, Any] = {
        "on_date": None,
        "weekdays": [],
        "month_days": [],
        "at_time": recurrence.at,
        "time_zone": recurrence.zone,
        "start_date": recurrence.start_date,
        "end_date": recurrence.end_date,
        "rearm": False,
    }
    if isinstance(rule, Once):
        values.update(rule="once", on_date=rule.on)
    elif isinstance(rule, Weekly):
        values.update(rule="weekly", weekdays=sorted(rule.weekdays))
    elif isinstance(rule, MonthDays):
        values.update(rule="month_days", month_days=sorted(rule.days))
    else:
        values.update(rule="daily")
    if timer is not None and not timer.repeat:
        values.update(rearm=True, weekdays=sorted(timer.weekdays))
    return values


def recurrence_of(row: ScheduleRow) -> Recurrence:
    """The recurrence a schedule row stores."""
    rule: Rule
    if row.rule == "once":
        assert row.on_date is not None
        rule = Once(row.on_date)
    elif row.rule == "weekly":
        rule = Weekly(frozenset(row.weekdays))
    elif row.rule == "month_days":
        rule = MonthDays(frozenset(row.month_days))
    elif row.rule == "daily":
        rule = Daily()
    else:
        raise ValueError(f"schedule {row.public_id} has an unknown rule {row.rule!r}")
    return Recurrence(rule, row.at_time, row.time_zone, row.start_date, row.end_date)


def timer_of(row: ScheduleRow) -> TencentTimerRule | None:
    """The Tencent timing (``Days``, ``TimePoint``, ``Repeat``) a row was made from, or None
    for a schedule that is not a Tencent timer."""
    if row.dialect != "tencent" or row.start_date or row.end_date:
        return None
    if row.rearm:
        return TencentTimerRule(frozenset(row.weekdays), row.at_time, False, row.time_zone)
    if row.rule == "weekly":
        return TencentTimerRule(frozenset(row.weekdays), row.at_time, True, row.time_zone)
    return None
