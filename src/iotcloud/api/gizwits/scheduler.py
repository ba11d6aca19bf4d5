"""Gizwits cloud schedules: ``/app/scheduler`` (multi-device tasks with retries, seed 定时任务)
and the per-device family ``/app/devices/{did}/scheduler`` (spec §1.4).

Both families store Gizwits-dialect schedules in UTC; the engine fires them. ``/app/scheduler``
lists the schedules made through it; its ``DELETE``, ``logs`` and ``runs`` address any Gizwits
schedule of the caller, so a per-device schedule's run log can be read too. Times go out as the
seed shows them: ``YYYY-MM-DDTHH:MM:SS`` in UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post, put

from iotcloud.api.gizwits.accounts import current_user, services
from iotcloud.api.gizwits.query import Skip
from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import (
    DEVICE_ERRORS,
    Decorator,
    Empty,
    declare,
    declared_body,
    declared_query,
)
from iotcloud.domain.schedules import MonthDays as MonthDaysRule
from iotcloud.domain.schedules import (
    Once,
    Recurrence,
    ScheduleInvalid,
    format_gizwits_repeat,
    format_time,
    parse_gizwits_device_scheduler,
    parse_gizwits_scheduler,
)
from iotcloud.errors import FormInvalid
from iotcloud.scheduler.policy import Task
from iotcloud.services.bindings import BoundDevice
from iotcloud.services.control import raw_bytes
from iotcloud.services.scheduler import (
    LIST_LIMIT_MAX,
    NO_DEVICE,
    Run,
    Schedule,
    ScheduleSpec,
)

AnyRequest = Request[Any, Any, Any]

RAW_HEX_MAX = 65_535


class _Form(msgspec.Struct, forbid_unknown_fields=True):
    pass


class TaskForm(_Form):
    did: str
    product_key: str
    attrs: dict[str, Any] | None = None
    raw: list[Any] | None = None


class SchedulerForm(_Form):
    """``POST /app/scheduler``. ``date``/``time``/``repeat`` stay untyped here so the recurrence
    parser names what is wrong with them."""

    time: Any
    repeat: Any
    task: list[TaskForm]
    date: Any = None
    retry_count: int = 0
    retry_task: str = "all"


class DeviceSchedulerForm(_Form):
    """``POST``/``PUT /app/devices/{did}/scheduler``: one command, ``attrs`` or ``raw`` (hex of
    the 0x0090 payload). ``retry_count``/``retry_task`` are accepted as in ``/app/scheduler``."""

    time: Any
    repeat: Any
    attrs: dict[str, Any] | None = None
    raw: str | None = None
    date: Any = None
    days: Any = None
    start_date: Any = None
    end_date: Any = None
    enabled: bool | None = None
    remark: str = ""
    retry_count: int = 0
    retry_task: str = "all"


class PageQuery(_Form):
    limit: Annotated[int, msgspec.Meta(ge=1, le=LIST_LIMIT_MAX)] = 20
    skip: Skip = 0


class NoQuery(_Form):
    pass


# -- answers ---------------------------------------------------------------------------------

Stamp = str | None
"""``YYYY-MM-DDTHH:MM:SS`` in UTC, or null."""


class Created(msgspec.Struct):
    id: str


class TaskView(msgspec.Struct):
    did: str
    product_key: str
    attrs: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    raw: list[int] | msgspec.UnsetType = msgspec.UNSET


class SchedulerView(msgspec.Struct):
    id: str
    created_at: Stamp
    date: str | None
    time: str
    repeat: str
    task: list[TaskView]
    retry_count: int
    retry_task: str


class DeviceSchedulerView(msgspec.Struct):
    id: str
    created_at: Stamp
    date: str | None
    time: str
    repeat: str
    days: list[int]
    start_date: str | None
    end_date: str | None
    enabled: bool
    remark: str
    retry_count: int
    retry_task: str
    attrs: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    raw: str | msgspec.UnsetType = msgspec.UNSET


class LogView(msgspec.Struct):
    datetime: Stamp
    status: Literal["succeed", "failed"] | None
    detail: dict[str, bool]
    result: Literal["succeed", "failed", "missed"] | msgspec.UnsetType = msgspec.UNSET
    note: str | msgspec.UnsetType | None = msgspec.UNSET


class AttemptView(msgspec.Struct):
    at: Stamp
    detail: dict[str, bool] | None
    interrupted: bool


class RunView(msgspec.Struct):
    datetime: Stamp
    status: Literal["running", "succeed", "failed", "missed"]
    detail: dict[str, bool]
    note: str | None
    started_at: Stamp
    finished_at: Stamp
    attempts: list[AttemptView]


def _declare(summary: str, **kwargs: Any) -> Decorator:
    return declare(
        summary, tag="gizwits schedules", security=("app", "user"), errors=DEVICE_ERRORS, **kwargs
    )


# -- /app/scheduler --------------------------------------------------------------------------


@_declare("Create a schedule", body=SchedulerForm, responses={201: Created})
@post("/app/scheduler", status_code=201)
async def create_schedule(request: AnyRequest) -> Response[bytes]:
    """``{date, time, repeat, task: [{did, product_key, attrs|raw}], retry_count, retry_task}``
    -> 201 ``{"id"}``."""
    _, user = await current_user(request)
    form = await declared_body(request, SchedulerForm)
    try:
        timing = parse_gizwits_scheduler(date=form.date, time=form.time, repeat=form.repeat)
    except ScheduleInvalid as exc:
        raise FormInvalid(str(exc)) from exc
    spec = ScheduleSpec(
        dialect="gizwits",
        timing=timing,
        tasks=[_task(index, item) for index, item in enumerate(form.task)],
        retry_count=form.retry_count,
        retry_task=form.retry_task,  # type: ignore[arg-type]  # the service checks the word
    )
    schedule_id = await services(request).scheduler.create(user, spec)
    return json_response({"id": schedule_id}, 201)


@_declare("List schedules", query=PageQuery, responses={200: list[SchedulerView]})
@get("/app/scheduler")
async def list_schedules(request: AnyRequest) -> Response[bytes]:
    """``?limit&skip`` -> the caller's ``/app/scheduler`` schedules, oldest first."""
    _, user = await current_user(request)
    page = declared_query(request, PageQuery)
    schedules = await services(request).scheduler.list(
        user, limit=page.limit, skip=page.skip, dialect="gizwits", device=NO_DEVICE
    )
    return json_response([_scheduler_view(schedule) for schedule in schedules])


@_declare("Delete a schedule", query=NoQuery, responses={200: Empty})
@delete("/app/scheduler/{schedule_id:str}", status_code=200)
async def delete_schedule(request: AnyRequest, schedule_id: str) -> Response[bytes]:
    """Delete one of the caller's Gizwits schedules and its run log -> ``{}``; 9030 otherwise."""
    _, user = await current_user(request)
    declared_query(request, NoQuery)
    await services(request).scheduler.delete(user, schedule_id, dialect="gizwits")
    return json_response({})


@_declare("The latest finished run", query=NoQuery, responses={200: LogView})
@get("/app/scheduler/{schedule_id:str}/logs")
async def latest_log(request: AnyRequest, schedule_id: str) -> Response[bytes]:
    """The latest finished run: ``{"datetime", "status": "succeed"|"failed", "detail": {did:
    bool}}`` plus ``result`` (``succeed``, ``failed`` or ``missed``) and ``note``. Before the
    first run has finished: ``{"datetime": null, "status": null, "detail": {}}``."""
    _, user = await current_user(request)
    declared_query(request, NoQuery)
    # the newest run may still be in flight; the log shows the newest one with an outcome
    runs = await services(request).scheduler.runs(user, schedule_id, limit=2, dialect="gizwits")
    finished = next((run for run in runs if run.status != "running"), None)
    if finished is None:
        return json_response({"datetime": None, "status": None, "detail": {}})
    return json_response(_log_view(finished))


@_declare("Run history with attempts", query=PageQuery, responses={200: list[RunView]})
@get("/app/scheduler/{schedule_id:str}/runs")
async def run_history(request: AnyRequest, schedule_id: str) -> Response[bytes]:
    """``?limit&skip`` -> every run, latest occurrence first, with each attempt (an iotcloud
    extension): ``[{datetime, status, detail, note, started_at, finished_at, attempts: [{at,
    detail, interrupted}]}]`` with ``status`` ``running``, ``succeed``, ``failed`` or
    ``missed``."""
    _, user = await current_user(request)
    page = declared_query(request, PageQuery)
    runs = await services(request).scheduler.runs(
        user, schedule_id, limit=page.limit, skip=page.skip, dialect="gizwits"
    )
    return json_response([_run_view(run) for run in runs])


# -- /app/devices/{did}/scheduler ------------------------------------------------------------


@_declare("List a device's schedules", query=PageQuery, responses={200: list[DeviceSchedulerView]})
@get("/app/devices/{did:str}/scheduler")
async def list_device_schedules(request: AnyRequest, did: str) -> Response[bytes]:
    """``?limit&skip`` -> the caller's schedules of the bound device ``did``, oldest first."""
    _, user = await current_user(request)
    page = declared_query(request, PageQuery)
    svc = services(request)
    await svc.bindings.require_bound(user, did)
    schedules = await svc.scheduler.list(
        user, limit=page.limit, skip=page.skip, dialect="gizwits", device=did
    )
    return json_response([_device_view(schedule) for schedule in schedules])


@_declare(
    "Create a device schedule",
    query=NoQuery,
    body=DeviceSchedulerForm,
    responses={201: Created},
)
@post("/app/devices/{did:str}/scheduler", status_code=201)
async def create_device_schedule(request: AnyRequest, did: str) -> Response[bytes]:
    """A ``DeviceSchedulerForm`` -> 201 ``{"id"}``."""
    _, user = await current_user(request)
    declared_query(request, NoQuery)
    svc = services(request)
    device = await svc.bindings.require_bound(user, did)
    spec = await _device_spec(request, device)
    schedule_id = await svc.scheduler.create(user, spec)
    return json_response({"id": schedule_id}, 201)


@_declare(
    "Replace a device schedule",
    query=NoQuery,
    body=DeviceSchedulerForm,
    responses={200: DeviceSchedulerView},
)
@put("/app/devices/{did:str}/scheduler/{schedule_id:str}")
async def replace_device_schedule(
    request: AnyRequest, did: str, schedule_id: str
) -> Response[bytes]:
    """A whole ``DeviceSchedulerForm`` replaces the schedule -> the schedule as stored.
    ``enabled`` left out keeps the current state."""
    _, user = await current_user(request)
    declared_query(request, NoQuery)
    svc = services(request)
    device = await svc.bindings.require_bound(user, did)
    scheduler = svc.scheduler
    await scheduler.get(user, schedule_id, device=did, dialect="gizwits")
    spec = await _device_spec(request, device)
    changed = await scheduler.update(user, schedule_id, spec, device=did, dialect="gizwits")
    return json_response(_device_view(changed))


@_declare("Delete a device schedule", query=NoQuery, responses={200: Empty})
@delete("/app/devices/{did:str}/scheduler/{schedule_id:str}", status_code=200)
async def delete_device_schedule(
    request: AnyRequest, did: str, schedule_id: str
) -> Response[bytes]:
    """Delete the device's schedule and its run log -> ``{}``; 9014/9017 unless ``did`` is
    bound to the caller, 9030 for an id that is not one of its schedules."""
    _, user = await current_user(request)
    declared_query(request, NoQuery)
    svc = services(request)
    await svc.bindings.require_bound(user, did)
    await svc.scheduler.delete(user, schedule_id, device=did, dialect="gizwits")
    return json_response({})


# -- translation -----------------------------------------------------------------------------


def _task(index: int, item: TaskForm) -> Task:
    raw: bytes | None = None
    if item.raw is not None:
        try:
            raw = raw_bytes(item.raw)
        except FormInvalid as exc:
            raise FormInvalid(f"task[{index}].{exc.detail}") from exc
    return Task(did=item.did, product_key=item.product_key, attrs=item.attrs, raw=raw)


async def _device_spec(request: AnyRequest, device: BoundDevice) -> ScheduleSpec:
    """The spec of a ``DeviceSchedulerForm`` body for ``device`` (bound to the caller)."""
    form = await declared_body(request, DeviceSchedulerForm)
    try:
        timing = parse_gizwits_device_scheduler(
            time=form.time,
            repeat=form.repeat,
            date=form.date,
            days=form.days,
            start_date=form.start_date,
            end_date=form.end_date,
        )
    except ScheduleInvalid as exc:
        raise FormInvalid(str(exc)) from exc
    if (form.attrs is None) == (form.raw is None):
        raise FormInvalid("give exactly one of attrs and raw")
    raw = None if form.raw is None else _hex_payload(form.raw)
    task = Task(did=device.did, product_key=device.product_key, attrs=form.attrs, raw=raw)
    return ScheduleSpec(
        dialect="gizwits",
        timing=timing,
        tasks=[task],
        retry_count=form.retry_count,
        retry_task=form.retry_task,  # type: ignore[arg-type]  # the service checks the word
        remark=form.remark,
        enabled=form.enabled,
        device=device.did,
    )


def _hex_payload(text: str) -> bytes:
    """The per-device ``raw``: the 0x0090 payload as hex (``"010203"``)."""
    cleaned = text.strip()
    if not cleaned:
        raise FormInvalid("raw: at least one byte is needed")
    if len(cleaned) % 2 or any(char not in "0123456789abcdefABCDEF" for char in cleaned):
        raise FormInvalid(f"raw: must be bytes in hex like 010203, not {text!r}")
    if len(cleaned) > 2 * RAW_HEX_MAX:
        raise FormInvalid(f"raw: at most {RAW_HEX_MAX} bytes")
    return bytes.fromhex(cleaned)


def _stamp(instant: datetime | None) -> str | None:
    if instant is None:
        return None
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _first_date(recurrence: Recurrence) -> str | None:
    if isinstance(recurrence.rule, Once):
        return recurrence.rule.on.isoformat()
    return _day(recurrence.start_date)


def _task_view(task: Task, *, raw_as_hex: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"did": task.did, "product_key": task.product_key}
    if task.attrs is not None:
        view["attrs"] = dict(task.attrs)
    if task.raw is not None:
        view["raw"] = task.raw.hex() if raw_as_hex else list(task.raw)
    return view


def _scheduler_view(schedule: Schedule) -> dict[str, Any]:
    """The seed's list item."""
    recurrence = schedule.recurrence
    return {
        "id": schedule.id,
        "created_at": _stamp(schedule.created_at),
        "date": _first_date(recurrence),
        "time": format_time(recurrence.at),
        "repeat": format_gizwits_repeat(recurrence.rule),
        "task": [_task_view(task, raw_as_hex=False) for task in schedule.tasks],
        "retry_count": schedule.retry_count,
        "retry_task": schedule.retry_task,
    }


def _device_view(schedule: Schedule) -> dict[str, Any]:
    """The per-device model: the form's fields plus ``id`` and ``created_at``."""
    recurrence = schedule.recurrence
    task = schedule.tasks[0]
    view: dict[str, Any] = {
        "id": schedule.id,
        "created_at": _stamp(schedule.created_at),
        "date": recurrence.rule.on.isoformat() if isinstance(recurrence.rule, Once) else None,
        "time": format_time(recurrence.at),
        "repeat": format_gizwits_repeat(recurrence.rule),
        "days": sorted(recurrence.rule.days) if isinstance(recurrence.rule, MonthDaysRule) else [],
        "start_date": _day(recurrence.start_date),
        "end_date": _day(recurrence.end_date),
        "enabled": schedule.enabled,
        "remark": schedule.remark,
        "retry_count": schedule.retry_count,
        "retry_task": schedule.retry_task,
    }
    if task.attrs is not None:
        view["attrs"] = dict(task.attrs)
    if task.raw is not None:
        view["raw"] = task.raw.hex()
    return view


def _log_view(run: Run) -> dict[str, Any]:
    return {
        "datetime": _stamp(run.scheduled_at),
        "status": "succeed" if run.status == "succeed" else "failed",
        "detail": dict(run.detail),
        "result": run.status,
        "note": run.note,
    }


def _run_view(run: Run) -> dict[str, Any]:
    return {
        "datetime": _stamp(run.scheduled_at),
        "status": run.status,
        "detail": dict(run.detail),
        "note": run.note,
        "started_at": _stamp(run.started_at),
        "finished_at": _stamp(run.finished_at),
        "attempts": [
            {
                "at": _stamp(attempt.at),
                "detail": None if attempt.detail is None else dict(attempt.detail),
                "interrupted": attempt.interrupted,
            }
            for attempt in run.attempts
        ],
    }


ROUTES = [
    create_schedule,
    list_schedules,
    delete_schedule,
    latest_log,
    run_history,
    list_device_schedules,
    create_device_schedule,
    replace_device_schedule,
    delete_device_schedule,
]
