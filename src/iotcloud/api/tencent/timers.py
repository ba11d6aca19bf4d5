"""Tencent cloud timers (spec §1.5): ``AppCreateTimer``, ``AppGetTimerList``,
``AppModifyTimer``, ``AppModifyTimerStatus`` and ``AppDeleteTimer``, stored as ``tencent``
schedules of `SchedulerService` and fired by the shared engine.

* ``ProductId`` + ``DeviceName`` name a device of either protocol: a Gizwits product_key (32
  hex digits) and the device's MAC (12 hex digits in either case, ``:``/``-`` separated pairs
  accepted as everywhere else), or a data-template ProductId and DeviceName. The device must be
  bound to the caller. A timer belongs to the device it was made for: any other device's,
  user's or dialect's ``TimerId`` is not found.
* ``Data`` is a string holding a JSON object of writable data points (at most `DATA_MAX`
  characters), checked as a real control would be; it fires as that write. For a
  data-template device the values are Tencent's (checked against its template) and the timer
  sends a ``control`` with exactly them; for a Gizwits device Tencent values (bool 0/1, enum
  index) and Gizwits display values (true/false, enum label) are both taken, converted to
  display values. Lists answer the string as it was sent (kept in the schedule's ``remark``),
  so clients that match timers by their ``Data`` find them.
* ``Days``/``TimePoint``/``Repeat`` follow ``parse_tencent_timer``. ``TimeZone`` (an IANA
  name) is an extension: when absent, a new timer takes the user's zone (their
  ``AppUpdateUserSetting`` ``TimeZone``), else ``IOTCLOUD_TIMEZONE``, and a modified
  one keeps its own.
* ``Status`` is the schedule's on/off state: a ``Repeat`` 0 timer is switched off once it has
  fired. ``AppModifyTimer`` keeps it; ``AppModifyTimerStatus`` without ``Status`` changes
  nothing.

Every parameter is checked before anything is looked up or stored, so a refused request
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import msgspec

from iotcloud.api.tencent.actions import Action, Call, DeviceTarget, bound_device, device_target
from iotcloud.api.tencent.wire import (
    json_object_param,
    optional_int,
    required,
    required_str,
)
from iotcloud.codecs import CodecError, template_to_datapoints
from iotcloud.domain.schedules import TencentTimerRule, parse_tencent_timer
from iotcloud.errors import AttrInvalid, FormInvalid, ScheduleNotFound
from iotcloud.scheduler.policy import Task
from iotcloud.services.bindings import BoundDevice
from iotcloud.services.scheduler import NAME_MAX, REMARK_MAX, Schedule, ScheduleSpec

__all__ = ["ACTIONS", "DATA_MAX", "LIMIT_DEFAULT", "LIMIT_MAX"]

LIMIT_DEFAULT: Final = 20
LIMIT_MAX: Final = 50
OFFSET_MAX: Final = 2**31 - 1
DATA_MAX: Final = REMARK_MAX
_DIALECT: Final = "tencent"
# how the scheduler names the attrs of the (only) task of a timer
_TASK_ATTRS: Final = "task[0].attrs: "


@dataclasses.dataclass(frozen=True)
class _TimerForm:
    """The fields ``AppCreateTimer`` and ``AppModifyTimer`` share."""

    target: DeviceTarget
    name: str
    timing: TencentTimerRule
    zone_given: bool
    data: str
    attrs: dict[str, Any]


# -- actions ---------------------------------------------------------------------------------


async def create_timer(call: Call) -> Mapping[str, Any]:
    """``AppCreateTimer`` -> ``{"Data": {"TimerId", "TimerName"}}``; the timer is on."""
    form = _timer_form(call)
    device = await bound_device(call, form.target, writing=True)
    form = await _device_values(call, form, device)
    if not form.zone_given:  # the user's zone (AppUpdateUserSetting), else IOTCLOUD_TIMEZONE
        zone = await call.services.accounts.time_zone(call.user)
        form = dataclasses.replace(form, timing=dataclasses.replace(form.timing, zone=zone))
    with _named_errors():
        timer_id = await call.services.scheduler.create(call.user, _spec(form, device))
    return {"Data": {"TimerId": timer_id, "TimerName": form.name}}


async def list_timers(call: Call) -> Mapping[str, Any]:
    """``AppGetTimerList`` -> ``{"Total", "TimerList"}``: the caller's timers of the device,
    oldest first, ``Offset`` (default 0) skipped, at most ``Limit`` (1-50, default 20)."""
    target = device_target(call.params)
    offset = optional_int(call.params, "Offset", 0, 0, OFFSET_MAX)
    limit = optional_int(call.params, "Limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    device = await bound_device(call, target)
    scheduler = call.services.scheduler
    total = await scheduler.count(call.user, dialect=_DIALECT, device=device.did)
    timers = await scheduler.list(
        call.user, limit=limit, skip=offset, dialect=_DIALECT, device=device.did
    )
    return {"Total": total, "TimerList": [_timer_view(timer, device) for timer in timers]}


async def modify_timer(call: Call) -> Mapping[str, Any]:
    """``AppModifyTimer`` -> ``{}``: replaces name, timing and ``Data``; ``Status`` stays."""
    form = _timer_form(call)
    timer_id = required_str(call.params, "TimerId")
    device = await bound_device(call, form.target, writing=True)
    form = await _device_values(call, form, device)
    scheduler = call.services.scheduler
    with _named_errors(timer_id):
        current = await scheduler.get(call.user, timer_id, device=device.did, dialect=_DIALECT)
        if not form.zone_given and current.timer is not None:
            form = dataclasses.replace(
                form, timing=dataclasses.replace(form.timing, zone=current.timer.zone)
            )
        await scheduler.update(
            call.user, timer_id, _spec(form, device), device=device.did, dialect=_DIALECT
        )
    return {}


async def modify_timer_status(call: Call) -> Mapping[str, Any]:
    """``AppModifyTimerStatus`` -> ``{}``: ``Status`` 1 switches the timer on (a ``Repeat`` 0
    timer is armed for its next matching day), 0 off; without ``Status`` nothing changes."""
    target = device_target(call.params)
    timer_id = required_str(call.params, "TimerId")
    keep = call.params.get("Status") is None
    status = optional_int(call.params, "Status", 0, 0, 1)
    device = await bound_device(call, target)
    scheduler = call.services.scheduler
    with _named_errors(timer_id):
        if keep:
            await scheduler.get(call.user, timer_id, device=device.did, dialect=_DIALECT)
        else:
            await scheduler.set_enabled(
                call.user, timer_id, status == 1, device=device.did, dialect=_DIALECT
            )
    return {}


async def delete_timer(call: Call) -> Mapping[str, Any]:
    """``AppDeleteTimer`` -> ``{}``: the timer and its run log are gone."""
    target = device_target(call.params)
    timer_id = required_str(call.params, "TimerId")
    device = await bound_device(call, target)
    with _named_errors(timer_id):
        await call.services.scheduler.delete(
            call.user, timer_id, device=device.did, dialect=_DIALECT
        )
    return {}


ACTIONS: Final[Mapping[str, Action]] = {
    "AppCreateTimer": create_timer,
    "AppGetTimerList": list_timers,
    "AppModifyTimer": modify_timer,
    "AppModifyTimerStatus": modify_timer_status,
    "AppDeleteTimer": delete_timer,
}


# -- parameters ------------------------------------------------------------------------------


def _timer_form(call: Call) -> _TimerForm:
    params = call.params
    target = device_target(params)
    name = required_str(params, "TimerName")
    if not 1 <= len(name) <= NAME_MAX:
        raise FormInvalid(f"TimerName: must be 1 to {NAME_MAX} characters")
    days, time_point, repeat = (required(params, n) for n in ("Days", "TimePoint", "Repeat"))
    data, attrs = _data(params)
    zone = params.get("TimeZone")
    timing = parse_tencent_timer(
        days=days,
        time_point=time_point,
        repeat=repeat,
        time_zone=zone,
        default_zone=call.services.settings.timezone,
    )
    return _TimerForm(target, name, timing, zone is not None, data, attrs)


def _data(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``Data``: the text as sent, and the data point values it holds."""
    attrs = json_object_param(params, "Data", limit=DATA_MAX)
    return params["Data"], attrs


# -- translation -----------------------------------------------------------------------------


async def _device_values(call: Call, form: _TimerForm, device: BoundDevice) -> _TimerForm:
    """``form`` with its data points in the device's own dialect: a Gizwits device's Tencent
    values (bool 0/1, enum index) become display values; a data-template device's are kept
    (the scheduler checks them against its template)."""
    if not device.mac:
        return form
    definition = await call.services.products.definition(device.product_key)
    try:
        attrs = template_to_datapoints(definition, form.attrs)
    except CodecError as exc:
        raise AttrInvalid(f"Data: {exc}") from exc
    return dataclasses.replace(form, attrs=attrs)


@contextmanager
def _named_errors(timer_id: str | None = None) -> Iterator[None]:
    """The scheduler's complaints in Tencent names: ``Data`` for the timer's data points,
    ``TimerId`` for a timer not found."""
    try:
        yield
    except AttrInvalid as exc:
        detail = exc.detail or exc.message
        raise AttrInvalid(f"Data: {detail.removeprefix(_TASK_ATTRS)}") from exc
    except ScheduleNotFound as exc:
        raise ScheduleNotFound(f"TimerId: this device has no timer {timer_id!r}") from exc


def _spec(form: _TimerForm, device: BoundDevice) -> ScheduleSpec:
    task = Task(did=device.did, product_key=device.product_key, attrs=form.attrs)
    return ScheduleSpec(
        dialect=_DIALECT,
        timing=form.timing,
        tasks=[task],
        name=form.name,
        remark=form.data,
        device=device.did,
    )


def _timer_view(timer: Schedule, device: BoundDevice) -> dict[str, Any]:
    """A ``TimerList`` item, plus the ``TimeZone`` extension."""
    rule = timer.timer
    assert rule is not None  # every tencent schedule is made from a TencentTimerRule
    task = timer.tasks[0]
    data = timer.remark or msgspec.json.encode(dict(task.attrs or {})).decode()
    return {
        "TimerId": timer.id,
        "TimerName": timer.name,
        "ProductId": task.product_key,
        "DeviceName": device.name,
        "Days": rule.days,
        "TimePoint": rule.time_point,
        "Repeat": 1 if rule.repeat else 0,
        "Data": data,
        "Status": 1 if timer.enabled else 0,
        "CreateTime": int(timer.created_at.timestamp()),
        "UpdateTime": int(timer.updated_at.timestamp()),
        "TimeZone": rule.zone,
    }
