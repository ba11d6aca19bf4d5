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

A fired run is inserted already leased to its claimer, in the transaction that advances the
schedule; the attempt then executes outside any transaction. While the run is leased its
``next_attempt_at`` is the lease's expiry: if the claimer dies, the run becomes due again at that
instant and the next claimer finds it abandoned (``lease_owner`` still set).

A claim may look ahead (``ahead``): an occurrence due within that window is claimed before its
instant, so the engine can check and encode its commands in advance. Such a run is inserted
*not started* (no attempt, ``started_at`` NULL) and leased until its instant plus the lease;
`ScheduleStore.start` marks it started (its first attempt in flight) just before the engine
sends. A run found leased but never started was claimed by a process that stopped (or let it
go, `ScheduleStore.release`) before the instant: nothing was sent for it, so the next claimer
makes its first attempt (or records it ``missed`` when that is beyond the grace window); an
attempt started and not finished is *interrupted* and counts (see `policy`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Insert,
    String,
    Table,
    bindparam,
    case,
    column,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from iotcloud.codecs.template import DATA_TEMPLATE_PROTOCOL
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
    catch_up_ahead,
    interrupted_attempt,
    merged_detail,
    outcome,
    tasks_to_send,
)
from iotcloud.storage.database import Database
from iotcloud.storage.models import (
    JSON_TYPE,
    BindingRow,
    DeviceLatestRow,
    DeviceRow,
    ProductRow,
    ScheduleRow,
    ScheduleRunRow,
    UTCDateTime,
)

log = logging.getLogger(__name__)

CLAIM_LOCK: Final = "scheduler"
_INSERT_CHUNK: Final = 500
_PURGE_CHUNK: Final = 5000
_KEYS_CHUNK: Final = 2000
"""Most keys (run ids with their leases, dids) in one statement's IN list."""
_FINISH_CHUNK: Final = 5000
"""Most attempt results in one UPDATE (they travel as one JSON parameter)."""

_T = TypeVar("_T")
_S = TypeVar("_S")


@dataclass(frozen=True, slots=True)
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
    ahead: bool = False
    """Claimed before its instant (``at``): not started until `ScheduleStore.start`."""


@dataclass(frozen=True, slots=True)
class Target:
    """A device that tasks command, as read for a batch of attempts (`ScheduleStore.targets`):
    whether it is disabled, which of the asked users are bound to it, its product (as last
    changed) and its latest reported values."""

    did: str
    disabled: bool
    bound_users: frozenset[int]
    product_key: str
    product_updated_at: datetime
    data_template: bool
    latest: Mapping[str, Any]


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


@dataclass(frozen=True, slots=True)
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
        ahead: timedelta = timedelta(0),
    ) -> ClaimReport:
        """Claim up to ``limit`` schedules due by ``now + ahead``, then runs due by ``now`` up
        to ``limit`` attempts in all.

        A due schedule fires its latest due occurrence (within ``grace``) as a new run leased to
        ``owner`` until ``now + lease``, records the others as ``missed`` and advances to its
        next occurrence; a schedule with no next occurrence is switched off. When nothing of it
        is due by ``now``, its occurrence within ``ahead`` is claimed the same way but *ahead*:
        leased until that instant plus ``lease``, the attempt's ``at`` its instant, the run not
        started (see the module docstring). A due run (retry, abandoned by a dead claimer, or
        never started) gets its next attempt leased, or is finished ``failed`` when its retries
        are used up or the attempt is more than ``grace`` overdue (``missed`` when it never
        had an attempt).
        """
        report = ClaimReport([])
        # SQLite: one claimer at a time in this process. PostgreSQL: no lock, SKIP LOCKED
        # lets concurrent claimers (in any process) take disjoint rows.
        lock = CLAIM_LOCK if self.db.is_sqlite else None
        async with self.db.session(lock=lock) as session:
            await self._claim_schedules(session, report, now, owner, limit, grace, lease, ahead)
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
        ahead: timedelta,
    ) -> None:
        horizon = now + ahead
        due = await session.scalars(
            select(ScheduleRow)
            .where(ScheduleRow.enabled, ScheduleRow.next_due_at <= horizon)
            .order_by(ScheduleRow.next_due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = list(due.all())
        report.schedules += len(rows)
        if not rows:
            return
        plans = {
            row.id: catch_up_ahead(recurrence_of(row), _due(row), now, horizon, grace=grace)
            for row in rows
        }
        # one compare-and-set for the batch: only rows still at the next_due_at read above move
        rowset = _RowSet(session)
        advanced = set(
            await session.scalars(
                _advance_statement(rowset.is_sqlite),
                {
                    "rows": rowset.param(
                        {
                            "id": row.id,
                            "due": rowset.instant(row.next_due_at),
                            "next": rowset.instant(plans[row.id].next_due),
                            "enabled": plans[row.id].next_due is not None,
                        }
                        for row in rows
                    )
                },
            )
        )
        new_runs: list[dict[str, Any]] = []
        fired: dict[tuple[int, datetime], tuple[ScheduleRow, str, datetime]] = {}
        leases = _Leases(owner)
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
                token = leases.next()
                at = max(plan.fire, now)
                early = plan.fire > now
                new_runs.append(
                    _run_values(
                        row,
                        plan.fire,
                        status="running",
                        tasks=row.tasks,
                        # claimed ahead: no attempt until `start`, just before the instant
                        attempts=[] if early else [Attempt(at, None).to_json()],
                        next_attempt_at=at + lease,
                        lease_owner=token,
                        started_at=None if early else at,
                    )
                )
                fired[(row.id, plan.fire)] = (row, token, at)
        for start in range(0, len(new_runs), _INSERT_CHUNK):
            chunk = new_runs[start : start + _INSERT_CHUNK]
            inserted = await session.execute(_insert_runs(session), chunk)
            for run_id, schedule_id, scheduled_at, status in inserted.all():
                if status == "missed":
                    report.missed += 1
                    continue
                row, token, at = fired[(schedule_id, scheduled_at)]
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
                        at=at,
                        tasks=tasks,
                        send=tuple(tasks_to_send(tasks, retry_task, {})),
                        retry_count=row.retry_count,
                        retry_task=retry_task,
                        detail={},
                        attempts=(Attempt(at, None),),
                        ahead=at > now,
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
        leases = _Leases(owner)
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
            if not attempts:
                # never started (claimed ahead, then let go or abandoned): nothing was sent,
                # its first attempt is due at its scheduled instant
                due_at = run.scheduled_at
            verdict: str = outcome(
                tasks, detail, attempts=len(attempts), retry_count=run.retry_count
            )
            overdue = now - due_at
            values: dict[str, Any] = {"attempts": [a.to_json() for a in attempts], "detail": detail}
            token: str | None = None
            if verdict == "retry" and overdue > grace:
                if attempts:
                    verdict = "failed"
                    note = (
                        f"{note + '; ' if note else ''}not retried: the attempt was "
                        f"{overdue.total_seconds():.0f} s overdue, beyond the grace window"
                    )
                else:
                    verdict = "missed"
                    values["detail"] = {task.did: False for task in tasks}
                    note = (
                        f"missed: {overdue.total_seconds():.0f} s late, beyond the "
                        f"{grace.total_seconds():.0f} s grace window"
                    )
            if verdict == "retry":
                token = leases.next()
                attempts.append(Attempt(now, None))
                values.update(
                    attempts=[a.to_json() for a in attempts],
                    next_attempt_at=now + lease,
                    lease_owner=token,
                    note=note,
                )
                if run.started_at is None:
                    values["started_at"] = now
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
                if verdict == "missed":
                    report.missed += 1
                else:
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
        none is recorded and their leases expire as if the process had died.

        Each chunk of results is one UPDATE joined to its rows passed as one JSON parameter
        (``jsonb_to_recordset`` on PostgreSQL, ``json_each`` on SQLite), matched on run id
        and lease and returning the ids it wrote: a burst's results cost a few statements, not
        one per run."""
        prepared = [
            _finished_record(claimed, sent, now, retry_interval) for claimed, sent in finished
        ]
        stored: set[int] = set()
        async with self.db.session() as session:
            rowset = _RowSet(session)
            statement = _finish_statement(rowset.is_sqlite)
            for chunk in _chunks([record for record, _ in prepared], _FINISH_CHUNK):
                written = await session.scalars(
                    statement,
                    {"rows": rowset.param(chunk), "now": now, "retry_at": now + retry_interval},
                )
                stored.update(written.all())
        return [
            dataclasses.replace(result, stored=claimed.run_id in stored)
            for (claimed, _), (_, result) in zip(finished, prepared, strict=True)
        ]

    async def start(
        self, claimed: Sequence[ClaimedAttempt]
    ) -> tuple[set[int], set[tuple[int, str]]]:
        """Start runs claimed ahead (``claimed.ahead``): each gets its first attempt, in flight
        since its ``at``, if it is still leased to its claimer and not started. Returns the ids
        of the runs started - a run whose schedule was deleted since its claim is gone and is
        not among them - and, read in the same transaction, which (user, did) pairs of their
        tasks may still be commanded (bound, device enabled; see `usable`)."""
        started: set[int] = set()
        by_instant: dict[datetime, list[ClaimedAttempt]] = {}
        for attempt in claimed:
            by_instant.setdefault(attempt.at, []).append(attempt)
        async with self.db.session() as session:
            rowset = _RowSet(session)
            for at, group in by_instant.items():
                result = await session.scalars(
                    _start_statement(rowset.is_sqlite),
                    {
                        "rows": rowset.param(
                            {"id": attempt.run_id, "lease": attempt.lease} for attempt in group
                        ),
                        "at": at,
                        "attempts": [Attempt(at, None).to_json()],
                    },
                )
                started.update(result.all())
            pairs = {
                (attempt.user_id, task.did)
                for attempt in claimed
                if attempt.run_id in started
                for task in attempt.send
            }
            usable = await _usable(session, pairs)
        return started, usable

    async def release(self, claimed: Sequence[ClaimedAttempt]) -> int:
        """Let go of runs claimed ahead and not started: each becomes due again at its scheduled
        instant, for any claimer (a stopping engine hands its prepared occurrences on this
        way). Returns how many were released."""
        if not claimed:
            return 0
        async with self.db.session() as session:
            rowset = _RowSet(session)
            result = await session.scalars(
                _release_statement(rowset.is_sqlite),
                {
                    "rows": rowset.param(
                        {"id": attempt.run_id, "lease": attempt.lease} for attempt in claimed
                    )
                },
            )
            return len(result.all())

    async def targets(self, dids: Collection[str], users: Collection[int]) -> dict[str, Target]:
        """The devices ``dids`` (unknown ones left out) with their products, latest values and
        which of ``users`` are bound to them: everything a batch of attempts needs to check and
        encode its commands, in one query (per chunk of dids)."""
        found: dict[str, Target] = {}
        if not dids or not users:
            return found
        wanted = sorted(set(users))
        bound: dict[str, set[int]] = {}
        async with self.db.session() as session:
            for chunk in _chunks(sorted(set(dids)), _KEYS_CHUNK):
                rows = await session.execute(
                    select(
                        DeviceRow.did,
                        DeviceRow.is_disabled,
                        ProductRow.product_key,
                        ProductRow.updated_at,
                        ProductRow.protocol_type,
                        DeviceLatestRow.attrs,
                        BindingRow.user_id,
                    )
                    .join(ProductRow, ProductRow.id == DeviceRow.product_id)
                    .outerjoin(DeviceLatestRow, DeviceLatestRow.device_id == DeviceRow.id)
                    .outerjoin(
                        BindingRow,
                        (BindingRow.device_id == DeviceRow.id) & BindingRow.user_id.in_(wanted),
                    )
                    .where(DeviceRow.did.in_(chunk))
                )
                for did, disabled, key, updated_at, protocol, attrs, user_id in rows.all():
                    users_of = bound.setdefault(did, set())
                    if user_id is not None:
                        users_of.add(user_id)
                    if did not in found:
                        found[did] = Target(
                            did,
                            disabled,
                            frozenset(),
                            key,
                            updated_at,
                            protocol == DATA_TEMPLATE_PROTOCOL,
                            attrs or {},
                        )
        return {
            did: dataclasses.replace(target, bound_users=frozenset(bound[did]))
            for did, target in found.items()
        }

    async def products(self, product_keys: Collection[str]) -> list[ProductRow]:
        """The products ``product_keys`` (unknown ones left out)."""
        if not product_keys:
            return []
        async with self.db.session() as session:
            rows = await session.scalars(
                select(ProductRow).where(ProductRow.product_key.in_(sorted(product_keys)))
            )
            return list(rows.all())

    async def usable(self, pairs: Collection[tuple[int, str]]) -> set[tuple[int, str]]:
        """Which (user id, did) ``pairs`` may be commanded now: bound, device enabled."""
        async with self.db.session() as session:
            return await _usable(session, pairs)

    async def nearest_due(self, ahead: timedelta = timedelta(0)) -> datetime | None:
        """The earliest instant at which a schedule (looked at ``ahead`` of its due instant) or
        a run needs the engine (None: nothing is scheduled at all). It may be in the past: work
        is due now."""
        async with self.db.session() as session:
            schedule = await session.scalar(
                select(func.min(ScheduleRow.next_due_at)).where(ScheduleRow.enabled)
            )
            run = await session.scalar(
                select(func.min(ScheduleRunRow.next_attempt_at)).where(
                    ScheduleRunRow.status == "running"
                )
            )
        found = [instant for instant in (schedule and schedule - ahead, run) if instant]
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


def _finished_record(
    claimed: ClaimedAttempt, sent: Mapping[str, bool], now: datetime, retry_interval: timedelta
) -> tuple[dict[str, Any], AttemptResult]:
    """The run's row after the attempt ``claimed`` sent ``sent``, as a record of the finishing
    UPDATE (`_finish_statement`: ``status`` ``running`` means a retry is due), and the result
    to report if it is stored."""
    attempts = [*claimed.attempts[:-1], Attempt(claimed.at, dict(sent))]
    detail = merged_detail(claimed.detail, sent)
    verdict = outcome(
        claimed.tasks, detail, attempts=len(attempts), retry_count=claimed.retry_count
    )
    status = "running" if verdict == "retry" else verdict
    record = {
        "id": claimed.run_id,
        "lease": claimed.lease,
        "status": status,
        "detail": detail,
        "attempts": [a.to_json() for a in attempts],
    }
    next_attempt_at = now + retry_interval if status == "running" else None
    return record, AttemptResult(True, status, detail, next_attempt_at)


class _RowSet:
    """Rows handed to one statement as a single JSON parameter ``rows`` (see `_rows`): a
    batch of any size is one statement with one bound value, compiled once, instead of a
    statement per row or a statement whose size (and cache entry) follows the batch's."""

    def __init__(self, session: AsyncSession) -> None:
        dialect = session.get_bind().dialect
        self.is_sqlite = dialect.name == "sqlite"
        self._instant = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)

    def instant(self, value: datetime | None) -> Any:
        """``value`` as the rows carry it: as SQLite stores the column, ISO 8601 for
        PostgreSQL."""
        if value is None:
            return None
        if self.is_sqlite:
            assert self._instant is not None
            return self._instant(value)
        return value.isoformat()

    def param(self, records: Iterable[Mapping[str, Any]]) -> Any:
        found = list(records)
        return json.dumps(found) if self.is_sqlite else found


def _rows(is_sqlite: bool, **columns: TypeEngine[Any]) -> dict[str, ColumnElement[Any]]:
    """The columns of the JSON records bound as ``rows``: ``jsonb_to_recordset`` on
    PostgreSQL (typed as given), ``json_each`` with ``json_extract`` on SQLite (values as
    SQLite stores them: see `_RowSet.instant`)."""
    if is_sqlite:
        each = func.json_each(bindparam("rows", type_=String())).table_valued("value").alias("v")
        return {name: func.json_extract(each.c.value, f"$.{name}") for name in columns}
    records = (
        func.jsonb_to_recordset(bindparam("rows", type_=postgresql.JSONB()))
        .table_valued(*(column(name, type_) for name, type_ in columns.items()))
        .render_derived(name="v", with_types=True)
    )
    return {name: records.c[name] for name in columns}


_STATEMENTS: dict[tuple[str, bool], Any] = {}


def _statement(name: str, is_sqlite: bool, build: Callable[[bool], _S]) -> _S:
    key = (name, is_sqlite)
    found = _STATEMENTS.get(key)
    if found is None:
        found = _STATEMENTS[key] = build(is_sqlite)
    return cast(_S, found)


def _advance_statement(is_sqlite: bool) -> ReturningUpdate[int]:
    """A claim's compare-and-set: each schedule of ``rows`` (``id``, ``due`` as read,
    ``next``, ``enabled``) still at ``due`` moves to ``next``; returns the ids moved."""

    def build(is_sqlite: bool) -> ReturningUpdate[int]:
        v = _rows(
            is_sqlite,
            id=BigInteger(),
            due=UTCDateTime(),
            next=UTCDateTime(),
            enabled=Boolean(),
        )
        return (
            update(ScheduleRow)
            .where(ScheduleRow.id == v["id"], ScheduleRow.next_due_at == v["due"])
            .values(next_due_at=v["next"], enabled=v["enabled"])
            .returning(ScheduleRow.id)
            .execution_options(synchronize_session=False)
        )

    return _statement("advance", is_sqlite, build)


def _not_started_as_leased(v: Mapping[str, ColumnElement[Any]]) -> tuple[ColumnElement[bool], ...]:
    """The run of the row ``v`` (``id``, ``lease``), if still leased as read and not started."""
    return (
        ScheduleRunRow.id == v["id"],
        ScheduleRunRow.lease_owner == v["lease"],
        ScheduleRunRow.started_at.is_(None),
    )


def _start_statement(is_sqlite: bool) -> ReturningUpdate[int]:
    """Start the not-started runs of ``rows`` (``id``, ``lease``) still leased as given:
    ``started_at`` ``at``, ``attempts`` ``attempts``; returns the ids started."""

    def build(is_sqlite: bool) -> ReturningUpdate[int]:
        v = _rows(is_sqlite, id=BigInteger(), lease=String())
        return (
            update(ScheduleRunRow)
            .where(*_not_started_as_leased(v))
            .values(
                started_at=bindparam("at", type_=UTCDateTime()),
                attempts=bindparam("attempts", type_=JSON_TYPE),
            )
            .returning(ScheduleRunRow.id)
            .execution_options(synchronize_session=False)
        )

    return _statement("start", is_sqlite, build)


def _release_statement(is_sqlite: bool) -> ReturningUpdate[int]:
    """Release the not-started runs of ``rows`` (``id``, ``lease``) still leased as given:
    no lease, due at their scheduled instant; returns the ids released."""

    def build(is_sqlite: bool) -> ReturningUpdate[int]:
        v = _rows(is_sqlite, id=BigInteger(), lease=String())
        return (
            update(ScheduleRunRow)
            .where(*_not_started_as_leased(v))
            .values(lease_owner=None, next_attempt_at=ScheduleRunRow.scheduled_at)
            .returning(ScheduleRunRow.id)
            .execution_options(synchronize_session=False)
        )

    return _statement("release", is_sqlite, build)


def _finish_statement(is_sqlite: bool) -> ReturningUpdate[int]:
    """Record a chunk of attempt results: ``rows`` (records of `_finished_record`), ``now``
    and ``retry_at``; returns the ids written (a run whose lease was lost is not)."""

    def build(is_sqlite: bool) -> ReturningUpdate[int]:
        v = _rows(
            is_sqlite,
            id=BigInteger(),
            lease=String(),
            status=String(),
            detail=postgresql.JSONB(),
            attempts=postgresql.JSONB(),
        )
        retrying = v["status"] == "running"
        return (
            update(ScheduleRunRow)
            .where(ScheduleRunRow.id == v["id"], ScheduleRunRow.lease_owner == v["lease"])
            .values(
                status=v["status"],
                detail=v["detail"],
                attempts=v["attempts"],
                lease_owner=None,
                next_attempt_at=case(
                    (retrying, bindparam("retry_at", type_=UTCDateTime())), else_=None
                ),
                finished_at=case((retrying, None), else_=bindparam("now", type_=UTCDateTime())),
            )
            .returning(ScheduleRunRow.id)
            .execution_options(synchronize_session=False)
        )

    return _statement("finish", is_sqlite, build)


async def _usable(
    session: AsyncSession, pairs: Collection[tuple[int, str]]
) -> set[tuple[int, str]]:
    """Which (user id, did) ``pairs`` are bound with the device enabled, within ``session``."""
    found: set[tuple[int, str]] = set()
    if not pairs:
        return found
    users = sorted({user for user, _ in pairs})
    for chunk in _chunks(sorted({did for _, did in pairs}), _KEYS_CHUNK):
        rows = await session.execute(
            select(BindingRow.user_id, DeviceRow.did)
            .join(BindingRow, BindingRow.device_id == DeviceRow.id)
            .where(
                DeviceRow.did.in_(chunk),
                BindingRow.user_id.in_(users),
                DeviceRow.is_disabled.is_(False),
            )
        )
        found.update((user, did) for user, did in rows.all())
    return found & set(pairs)


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


class _Leases:
    """The lease tokens of one claim: ``{owner}/{random}.{n}``. A lease is per claim, so a
    claimer never mistakes an old lease of its own for a new one, and per run within it."""

    def __init__(self, owner: str) -> None:
        self._prefix = f"{owner}/{secrets.token_hex(6)}."
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count)}"


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
