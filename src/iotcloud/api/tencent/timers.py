"""Tencent cloud timers (spec §1.5): ``AppCreateTimer``, ``AppGetTimerList``,
``AppModifyTimer``, ``AppModifyTimerStatus`` and ``AppDeleteTimer``, stored as ``tencent``
schedules of `SchedulerService` and fired by the shared engine.

* ``ProductId`` is the product_key (32 hex digits) and ``DeviceName`` the device's MAC (12 hex
  digits in either case, ``:``/``-`` separated pairs accepted as everywhere else); the device
  must be bound to the caller. A timer belongs to the device it was made for: any other
  device's, user's or dialect's ``TimerId`` is not found.
* ``Data`` is a string holding a JSON object of writable data points (at most `DATA_MAX`
  characters), checked as a real control would be; it fires as that write. Lists answer the
  string as it was sent (kept in the schedule's ``remark``), so clients that match timers by
  their ``Data`` find them.
* ``Days``/``TimePoint``/``Repeat`` follow ``parse_tencent_timer``. ``TimeZone`` (an IANA
  name) is an extension: when absent, a new timer takes ``IOTCLOUD_TIMEZONE`` and a modified
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

from iotcloud.api.tencent.actions import Action, Call
from iotcloud.api.tencent.wire import (
    JsonInvalid,
    optional_int,
    required,
    required_str,
)
from iotcloud.domain import devices as device_rules
from iotcloud.domain.schedules import TencentTimerRule, parse_tencent_timer
from iotcloud.errors import (
    AttrInvalid,
    DeviceDisabled,
    DeviceNotBound,
    DeviceNotFound,
    FormInvalid,
    ProductKeyInvalid,
    ScheduleNotFound,
)
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
class _Target:
    """``ProductId`` and ``DeviceName``, normalised (both lower case)."""

    product_key: str
    mac: str


@dataclasses.dataclass(frozen=True)
class _TimerForm:
    """The fields ``AppCreateTimer`` and ``AppModifyTimer`` share."""

    target: _Target
    name: str
    timing: TencentTimerRule
    zone_given: bool
    data: str
    attrs: dict[str, Any]


# -- actions ---------------------------------------------------------------------------------


async def create_timer(call: Call) -> Mapping[str, Any]:
    """``AppCreateTimer`` -> ``{"Data": {"TimerId", "TimerName"}}``; the timer is on."""
    form = _timer_form(call)
    device = await _device(call, form.target, writing=True)
    with _named_errors():
        timer_id = await call.services.scheduler.create(call.user, _spec(form, device))
    return {"Data": {"TimerId": timer_id, "TimerName": form.name}}


async def list_timers(call: Call) -> Mapping[str, Any]:
    """``AppGetTimerList`` -> ``{"Total", "TimerList"}``: the caller's timers of the device,
    oldest first, ``Offset`` (default 0) skipped, at most ``Limit`` (1-50, default 20)."""
    target = _target(call.params)
    offset = optional_int(call.params, "Offset", 0, 0, OFFSET_MAX)
    limit = optional_int(call.params, "Limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    device = await _device(call, target)
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
    device = await _device(call, form.target, writing=True)
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
    target = _target(call.params)
    timer_id = required_str(call.params, "TimerId")
    keep = call.params.get("Status") is None
    status = optional_int(call.params, "Status", 0, 0, 1)
    device = await _device(call, target)
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
    target = _target(call.params)
    timer_id = required_str(call.params, "TimerId")
    device = await _device(call, target)
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


def _target(params: Mapping[str, Any]) -> _Target:
    product_id = required_str(params, "ProductId")
    device_name = required_str(params, "DeviceName")
    return _Target(
        product_key=device_rules.check_product_key(product_id, "ProductId"),
        mac=device_rules.check_mac(device_name, "DeviceName"),
    )


def _timer_form(call: Call) -> _TimerForm:
    params = call.params
    target = _target(params)
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
    value = required(params, "Data")
    if not isinstance(value, str):
        raise FormInvalid('Data: must be a string holding a JSON object, like "{\\"power\\": 1}"')
    if len(value) > DATA_MAX:
        raise FormInvalid(f"Data: at most {DATA_MAX} characters")
    try:
        attrs = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise JsonInvalid(f"Data: not JSON ({exc})") from exc
    if not isinstance(attrs, dict):
        raise FormInvalid("Data: must hold a JSON object of data point values")
    if not attrs:
        raise FormInvalid("Data: at least one data point is needed")
    return value, attrs


# -- translation -----------------------------------------------------------------------------


async def _device(call: Call, target: _Target, *, writing: bool = False) -> BoundDevice:
    """The caller's bound device named by ``target``; ``writing``: it must not be disabled.

    Raises `ProductKeyInvalid`, `DeviceNotFound`, `DeviceNotBound` or `DeviceDisabled` with
    messages in the Tencent field names (and without the did of a device not bound).
    """
    try:
        device = await call.services.bindings.find_bound(call.user, target.product_key, target.mac)
    except ProductKeyInvalid as exc:
        raise ProductKeyInvalid(f"ProductId: no product {target.product_key}") from exc
    except DeviceNotFound as exc:
        raise DeviceNotFound(
            f"DeviceName: product {target.product_key} has no device {target.mac}"
        ) from exc
    except DeviceNotBound as exc:
        raise DeviceNotBound(f"DeviceName: device {target.mac} is not bound to this user") from exc
    if writing and device.is_disabled:
        raise DeviceDisabled(f"DeviceName: device {target.mac} is disabled")
    return device


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
        "DeviceName": device.mac,
        "Days": rule.days,
        "TimePoint": rule.time_point,
        "Repeat": 1 if rule.repeat else 0,
        "Data": data,
        "Status": 1 if timer.enabled else 0,
        "CreateTime": int(timer.created_at.timestamp()),
        "UpdateTime": int(timer.updated_at.timestamp()),
        "TimeZone": rule.zone,
    }
