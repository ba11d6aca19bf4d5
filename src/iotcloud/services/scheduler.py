"""Cloud schedules for both dialects: Gizwits ``/app/scheduler`` (and the per-device family) and
Tencent's ``AppCreateTimer`` family build a `ScheduleSpec` from their wire shapes and call
`SchedulerService`; the engine (`iotcloud.scheduler.engine`) fires what is stored here.

Validation happens before anything is stored, so a refused request leaves nothing behind:

* ``retry_count`` 0-60, ``retry_task`` ``all``/``failed``, ``name`` at most 128 characters,
  ``remark`` at most 1024, 1-100 tasks, at most one task per device, every task for ``device``
  when the schedule belongs to one: 9015 naming the field.
* each task's device exists (9014) and is bound to the caller (9017), is not disabled (9023),
  is of the task's ``product_key`` (9002); ``attrs`` name writable data points with valid values
  (9025, encoded as a real command would be); ``raw`` is 1 to 65,535 bytes (9015). Exactly one
  of ``attrs`` and ``raw``.
* a schedule that would never fire (a one-shot in the past, an ``end_date`` passed): 9015 naming
  ``date`` (or ``end_date``).

A schedule is only ever visible to its owner within the owner's app; any other id answers
`ScheduleNotFound` (9030), as an unknown one does.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from iotcloud.domain.clock import Clock
from iotcloud.domain.schedules import Once, Recurrence, TencentTimerRule, next_occurrence
from iotcloud.errors import (
    AttrInvalid,
    DeviceDisabled,
    FormInvalid,
    ProductKeyInvalid,
    ScheduleNotFound,
)
from iotcloud.scheduler.engine import SchedulerEngine
from iotcloud.scheduler.policy import (
    DIALECTS,
    RETRY_COUNT_MAX,
    RETRY_TASKS,
    Attempt,
    Dialect,
    RetryTask,
    RunStatus,
    Task,
)
from iotcloud.scheduler.store import ScheduleStore, recurrence_columns, recurrence_of, timer_of
from iotcloud.services.bindings import AppUser, BindingService
from iotcloud.services.control import ControlService, raw_bytes
from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRow, ScheduleRunRow

__all__ = [
    "NO_DEVICE",
    "Attempt",
    "Dialect",
    "RetryTask",
    "Run",
    "RunStatus",
    "Schedule",
    "ScheduleSpec",
    "SchedulerService",
    "Task",
]

NAME_MAX: Final = 128
REMARK_MAX: Final = 1024
TASKS_MAX: Final = 100
LIST_LIMIT_MAX: Final = 1000
NO_DEVICE: Final = ""
"""As ``device``: the schedules that belong to no device (``/app/scheduler`` ones)."""

Timing = Recurrence | TencentTimerRule


@dataclass(frozen=True)
class ScheduleSpec:
    """What a client asks for, in dialect-neutral terms.

    * ``dialect``: the API family that made it (``gizwits`` | ``tencent``); lists can filter
      on it.
    * ``timing``: a `Recurrence` (Gizwits: from ``parse_gizwits_scheduler`` /
      ``parse_gizwits_device_scheduler``, always UTC), or a `TencentTimerRule` (from
      ``parse_tencent_timer``): ``Repeat`` 1 is weekly; ``Repeat`` 0 is a one-shot armed on the
      next matching day when created, changed or enabled again, and switched off once it fired.
    * ``tasks``: the commands, at most one per device (`Task`: ``attrs`` or ``raw``).
    * ``retry_count`` (0-60) more attempts after a failed one; ``retry_task`` ``all`` resends
      every task, ``failed`` only those not delivered.
    * ``name`` (Tencent ``TimerName``), ``remark`` (Gizwits per-device ``remark``).
    * ``enabled``: None keeps the current state on update (and means True on create).
    * ``device``: the did of the device the schedule belongs to (per-device APIs; every task
      must be for it), None for ``/app/scheduler`` schedules.
    """

    dialect: Dialect
    timing: Timing
    tasks: Sequence[Task]
    retry_count: int = 0
    retry_task: RetryTask = "all"
    name: str = ""
    remark: str = ""
    enabled: bool | None = None
    device: str | None = None


@dataclass(frozen=True)
class Schedule:
    """A stored schedule. ``recurrence`` is what fires (for a Tencent one-shot: armed on its
    date); ``timer`` is the Tencent timing it was made from (``Days``/``TimePoint``/``Repeat``),
    None for other schedules. ``next_due_at`` (UTC) is None when the schedule is off or will
    not fire again."""

    id: str
    dialect: Dialect
    name: str
    remark: str
    recurrence: Recurrence
    timer: TencentTimerRule | None
    tasks: tuple[Task, ...]
    retry_count: int
    retry_task: RetryTask
    enabled: bool
    device: str | None
    next_due_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Run:
    """One occurrence of a schedule. ``scheduled_at`` is the instant it was due (the Gizwits
    log's ``datetime``); ``status`` ``running``, ``succeed``, ``failed`` or ``missed``;
    ``detail`` maps each task's did to whether its command reached the device (all False for a
    missed run); ``note`` says why a run was missed, interrupted or not retried."""

    scheduled_at: datetime
    status: RunStatus
    detail: Mapping[str, bool]
    attempts: tuple[Attempt, ...]
    started_at: datetime | None
    finished_at: datetime | None
    note: str | None


class SchedulerService:
    """Create, read, change and delete a user's schedules, and read their run logs."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        bindings: BindingService,
        control: ControlService,
        engine: SchedulerEngine,
    ) -> None:
        self.store = ScheduleStore(db)
        self.clock = clock
        self.bindings = bindings
        self.control = control
        self.engine = engine

    async def create(self, user: AppUser, spec: ScheduleSpec) -> str:
        """Validate and store ``spec`` for ``user``; returns the schedule's id (32 hex
        characters). Raises as the module docstring says; nothing is stored then."""
        await self._check(user, spec)
        now = self.clock.now()
        recurrence = _armed(spec.timing, now)
        enabled = True if spec.enabled is None else spec.enabled
        next_due = _first_due(recurrence, now)
        row = ScheduleRow(
            public_id=secrets.token_hex(16),
            user_id=user.user_id,
            app_id=user.app_id,
            next_due_at=next_due if enabled else None,
            enabled=enabled,
            created_at=now,
            updated_at=now,
            **_spec_values(spec),
            **recurrence_columns(recurrence, _timer(spec.timing)),
        )
        await self.store.add(row)
        self.engine.wake()
        return row.public_id

    async def list(
        self,
        user: AppUser,
        *,
        limit: int = 20,
        skip: int = 0,
        dialect: Dialect | None = None,
        device: str | None = None,
    ) -> builtins.list[Schedule]:
        """The user's schedules in the order they were created, ``skip`` skipped, at most
        ``limit`` (1-1000); only those of ``dialect`` and of ``device`` when given (`NO_DEVICE`:
        only those belonging to no device). Raises 9015 naming ``limit`` or ``skip``."""
        _check_page(limit, skip)
        rows = await self.store.page(
            user.user_id, user.app_id, limit=limit, skip=skip, dialect=dialect, device=device
        )
        return [_schedule(row) for row in rows]

    async def count(
        self, user: AppUser, *, dialect: Dialect | None = None, device: str | None = None
    ) -> int:
        """How many schedules `list` would page through (Tencent's ``Total``)."""
        return await self.store.count(user.user_id, user.app_id, dialect=dialect, device=device)

    async def get(
        self,
        user: AppUser,
        schedule_id: str,
        *,
        device: str | None = None,
        dialect: Dialect | None = None,
    ) -> Schedule:
        """The user's schedule ``schedule_id`` (belonging to ``device`` and made through
        ``dialect`` when given); raises `ScheduleNotFound` (9030) otherwise. Every method that
        takes an id takes ``device`` and ``dialect`` the same way."""
        return _schedule(await self._row(user, schedule_id, device, dialect))

    async def update(
        self,
        user: AppUser,
        schedule_id: str,
        spec: ScheduleSpec,
        *,
        device: str | None = None,
        dialect: Dialect | None = None,
    ) -> Schedule:
        """Replace the schedule with ``spec`` (validated as by `create`). A changed timing (or
        switching it on) takes effect from now: occurrences due before are not caught up. An
        unchanged timing keeps the next due occurrence as it is."""
        row = await self._row(user, schedule_id, device, dialect)
        await self._check(user, spec)
        enabled = row.enabled if spec.enabled is None else spec.enabled
        values = dict(_spec_values(spec))
        values.update(self._timing_change(row, spec.timing, enabled))
        return await self._change(user, schedule_id, values)

    async def set_enabled(
        self,
        user: AppUser,
        schedule_id: str,
        enabled: bool,
        *,
        device: str | None = None,
        dialect: Dialect | None = None,
    ) -> Schedule:
        """Switch the schedule on or off. On again, it fires from its next occurrence after
        now (a Tencent one-shot is armed on the next matching day); a Gizwits one-shot whose
        time has passed cannot be switched on (9015 naming ``date``)."""
        row = await self._row(user, schedule_id, device, dialect)
        timing: Timing = timer_of(row) or recurrence_of(row)
        return await self._change(user, schedule_id, self._timing_change(row, timing, enabled))

    async def delete(
        self,
        user: AppUser,
        schedule_id: str,
        *,
        device: str | None = None,
        dialect: Dialect | None = None,
    ) -> None:
        """Delete the schedule and its run log. A run in flight stops after its current
        attempt. Raises `ScheduleNotFound` (9030)."""
        await self._row(user, schedule_id, device, dialect)
        if not await self.store.remove(user.user_id, user.app_id, schedule_id):
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")

    async def latest_run(
        self,
        user: AppUser,
        schedule_id: str,
        *,
        device: str | None = None,
        dialect: Dialect | None = None,
    ) -> Run | None:
        """The run of the latest occurrence handled (any status), None before the first."""
        found = await self.runs(user, schedule_id, limit=1, device=device, dialect=dialect)
        return found[0] if found else None

    async def runs(
        self,
        user: AppUser,
        schedule_id: str,
        *,
        limit: int = 20,
        skip: int = 0,
        device: str | None = None,
        dialect: Dialect | None = None,
    ) -> builtins.list[Run]:
        """The schedule's runs, latest occurrence first (``limit`` 1-1000, ``skip``)."""
        _check_page(limit, skip)
        row = await self._row(user, schedule_id, device, dialect)
        return [_run(run) for run in await self.store.runs(row.id, limit=limit, skip=skip)]

    # -- internals ------------------------------------------------------------------------------

    async def _row(
        self, user: AppUser, schedule_id: str, device: str | None, dialect: Dialect | None
    ) -> ScheduleRow:
        row = await self.store.get(user.user_id, user.app_id, schedule_id)
        if (
            row is None
            or (device is not None and row.device_did != (device or None))
            or (dialect is not None and row.dialect != dialect)
        ):
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")
        return row

    async def _change(self, user: AppUser, schedule_id: str, values: Mapping[str, Any]) -> Schedule:
        changed = await self.store.change(
            user.user_id, user.app_id, schedule_id, {**values, "updated_at": self.clock.now()}
        )
        if changed is None:
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")
        self.engine.wake()
        return _schedule(changed)

    def _timing_change(self, row: ScheduleRow, timing: Timing, enabled: bool) -> dict[str, Any]:
        """The columns to write for ``timing`` and ``enabled``: nothing about the timing when
        both are as stored (so the due occurrence stays due), else the timing armed afresh and
        its first occurrence after now."""
        stored: Timing = timer_of(row) or recurrence_of(row)
        values: dict[str, Any] = {"enabled": enabled}
        if timing == stored and (enabled == row.enabled or not enabled):
            if not enabled:
                values["next_due_at"] = None
            return values
        now = self.clock.now()
        recurrence = recurrence_of(row)
        if timing != stored or row.rearm:
            recurrence = _armed(timing, now)
            values.update(recurrence_columns(recurrence, _timer(timing)))
        next_due = _first_due(recurrence, now)
        values["next_due_at"] = next_due if enabled else None
        return values

    async def _check(self, user: AppUser, spec: ScheduleSpec) -> None:
        _check_form(spec)
        for index, task in enumerate(spec.tasks):
            await self._check_task(user, index, task)

    async def _check_task(self, user: AppUser, index: int, task: Task) -> None:
        where = f"task[{index}]"
        device = await self.bindings.require_bound(user, task.did)
        if device.is_disabled:
            raise DeviceDisabled(f"{where}: device {task.did} is disabled")
        if task.product_key != device.product_key:
            raise ProductKeyInvalid(
                f"{where}.product_key: device {task.did} is of product {device.product_key}"
            )
        if task.attrs is not None:
            if not isinstance(task.attrs, Mapping):
                raise AttrInvalid(f"{where}.attrs: must be an object of data point values")
            try:
                await self.control.encode_attrs(task.did, task.attrs)
            except AttrInvalid as exc:
                raise AttrInvalid(f"{where}.attrs: {exc.detail or exc.message}") from exc
        else:
            assert task.raw is not None
            try:
                raw_bytes(task.raw)
            except FormInvalid as exc:
                raise FormInvalid(f"{where}.{exc.detail}") from exc


def _check_form(spec: ScheduleSpec) -> None:
    if spec.dialect not in DIALECTS:
        raise FormInvalid(f"dialect: must be one of {', '.join(DIALECTS)}")
    if not isinstance(spec.timing, Recurrence | TencentTimerRule):
        raise FormInvalid("timing: must be a Recurrence or a TencentTimerRule")
    count = spec.retry_count
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= RETRY_COUNT_MAX:
        raise FormInvalid(f"retry_count: must be an integer from 0 to {RETRY_COUNT_MAX}")
    if spec.retry_task not in RETRY_TASKS:
        raise FormInvalid("retry_task: must be all or failed")
    if not isinstance(spec.name, str) or len(spec.name) > NAME_MAX:
        raise FormInvalid(f"name: at most {NAME_MAX} characters")
    if not isinstance(spec.remark, str) or len(spec.remark) > REMARK_MAX:
        raise FormInvalid(f"remark: at most {REMARK_MAX} characters")
    if not spec.tasks:
        raise FormInvalid("task: at least one task is needed")
    if len(spec.tasks) > TASKS_MAX:
        raise FormInvalid(f"task: at most {TASKS_MAX} tasks")
    seen: dict[str, int] = {}
    for index, task in enumerate(spec.tasks):
        where = f"task[{index}]"
        if not isinstance(task, Task):
            raise FormInvalid(f"{where}: not a task")
        if not isinstance(task.did, str) or not task.did:
            raise FormInvalid(f"{where}.did: required")
        if not isinstance(task.product_key, str) or not task.product_key:
            raise FormInvalid(f"{where}.product_key: required")
        if (task.attrs is None) == (task.raw is None):
            raise FormInvalid(f"{where}: give either attrs or raw")
        if task.did in seen:
            raise FormInvalid(
                f"{where}.did: device {task.did} already has task[{seen[task.did]}]; "
                "one task per device"
            )
        seen[task.did] = index
        if spec.device is not None and task.did != spec.device:
            raise FormInvalid(f"{where}.did: this schedule belongs to device {spec.device}")


def _check_page(limit: int, skip: int) -> None:
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise FormInvalid(f"limit: must be 1 to {LIST_LIMIT_MAX}")
    if skip < 0:
        raise FormInvalid("skip: must not be negative")


def _armed(timing: Timing, now: datetime) -> Recurrence:
    return timing.recurrence(now) if isinstance(timing, TencentTimerRule) else timing


def _timer(timing: Timing) -> TencentTimerRule | None:
    return timing if isinstance(timing, TencentTimerRule) else None


def _first_due(recurrence: Recurrence, now: datetime) -> datetime:
    """The first occurrence after ``now``; 9015 when there is none."""
    first = next_occurrence(recurrence, now)
    if first is None:
        if isinstance(recurrence.rule, Once):
            raise FormInvalid(f"date: {recurrence.rule.on.isoformat()} at that time is past")
        raise FormInvalid("end_date: the schedule has no occurrence left after now")
    return first


def _spec_values(spec: ScheduleSpec) -> dict[str, Any]:
    return {
        "dialect": spec.dialect,
        "name": spec.name,
        "remark": spec.remark,
        "device_did": spec.device,
        "retry_count": spec.retry_count,
        "retry_task": spec.retry_task,
        "tasks": [task.to_json() for task in spec.tasks],
    }


def _schedule(row: ScheduleRow) -> Schedule:
    return Schedule(
        id=row.public_id,
        dialect=cast(Dialect, row.dialect),
        name=row.name,
        remark=row.remark,
        recurrence=recurrence_of(row),
        timer=timer_of(row),
        tasks=tuple(Task.from_json(task) for task in row.tasks),
        retry_count=row.retry_count,
        retry_task=cast(RetryTask, row.retry_task),
        enabled=row.enabled,
        device=row.device_did,
        next_due_at=row.next_due_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _run(row: ScheduleRunRow) -> Run:
    return Run(
        scheduled_at=row.scheduled_at,
        status=cast(RunStatus, row.status),
        detail=dict(row.detail),
        attempts=tuple(Attempt.from_json(item) for item in row.attempts),
        started_at=row.started_at,
        finished_at=row.finished_at,
        note=row.note,
    )
