"""Tencent device Actions of ``tokenapi`` (spec §1.6): ``AppGetDeviceData``,
``AppControlDeviceData``, ``AppGetDeviceStatuses``, ``AppListEventHistory``,
``AppSigBindDeviceInFamily`` and ``AppCallDeviceAction`` (alias ``AppCallDeviceActionSync``).

A device of either protocol is named ``ProductId`` + ``DeviceName``: a Gizwits device by its
product_key and MAC (12 hex digits, any accepted spelling), a data-template device by its
ProductId and name (exact); ``DeviceId`` is ``"PID/NAME"``. Every Action but the binding one
needs the device bound to the caller (else ``UnauthorizedOperation.DeviceNotBound``).

Values are in Tencent form whatever the device speaks (bool 0/1, enum integers): a Gizwits
device's are converted at this edge. ``Data`` of ``AppControlDeviceData`` is a string holding a
JSON object, checked against the device's template (or data points) before anything is sent;
the device gets exactly those properties. Every parameter is checked before anything is looked
up, sent or stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from iotcloud.api.tencent import families
from iotcloud.api.tencent.actions import (
    Action,
    Call,
    DeviceTarget,
    bound_device,
    device_id,
    device_target,
    usable_did,
)
from iotcloud.api.tencent.wire import json_object_param, optional_int, required, required_str
from iotcloud.codecs import CodecError
from iotcloud.errors import (
    AttrInvalid,
    DeviceNoReply,
    DeviceNotBound,
    FamilyNotFound,
    FormInvalid,
    ProductProtocolMismatch,
)

__all__ = [
    "ACTIONS",
    "DATA_MAX",
    "EVENT_SIZE_DEFAULT",
    "EVENT_SIZE_MAX",
    "STATUS_IDS_MAX",
]

#: ``Data``/``InputParams`` may be at most this many characters.
DATA_MAX: Final = 16_384
#: ``AppGetDeviceStatuses`` takes at most this many ``DeviceIds``.
STATUS_IDS_MAX: Final = 100
EVENT_SIZE_DEFAULT: Final = 10
EVENT_SIZE_MAX: Final = 100
#: without ``StartTime`` (or with 0), events of this long before ``EndTime`` are listed
EVENT_WINDOW: Final = timedelta(hours=24)
OFFSET_MAX: Final = 2**31 - 1
#: seconds ``AppCallDeviceAction`` waits for the device's ``action_reply``
ACTION_TIMEOUT: Final = 5.0
EVENT_TYPES: Final = ("info", "alert", "fault")
BIND_TYPES: Final = ("wifi_sign", "bluetooth_sign", "other_sign")
_UNIX_MAX: Final = 253_402_300_799  # 9999-12-31T23:59:59Z


# -- actions ---------------------------------------------------------------------------------


async def get_device_data(call: Call) -> Mapping[str, Any]:
    """``AppGetDeviceData`` -> ``{"Data": "<JSON>"}``: a string holding
    ``{prop: {"Value", "LastUpdate" (Unix ms)}}`` of the latest reported values."""
    device = await bound_device(call, device_target(call.params))
    data = await call.services.things.device_data(device)
    values = {
        name: {"Value": entry.value, "LastUpdate": entry.last_update}
        for name, entry in data.values.items()
    }
    return {"Data": msgspec.json.encode(values).decode()}


async def control_device_data(call: Call) -> Mapping[str, Any]:
    """``AppControlDeviceData`` -> ``{"Data": ""}`` once the control is handed to the broker
    for the online device (its ``control_reply`` is not awaited, as on Tencent)."""
    target = device_target(call.params)
    values = json_object_param(call.params, "Data", limit=DATA_MAX)
    did = await usable_did(call, target)
    with _named_values("Data"):
        await call.services.control.write_values(call.user, did, values)
    return {"Data": ""}


async def get_device_statuses(call: Call) -> Mapping[str, Any]:
    """``AppGetDeviceStatuses`` -> ``{"DeviceStatuses": [{"DeviceId", "ProductId",
    "DeviceName", "Online"}]}`` in the order asked; ``Online`` is 1 online, 0 offline."""
    ids = required(call.params, "DeviceIds")
    if not isinstance(ids, list) or not 1 <= len(ids) <= STATUS_IDS_MAX:
        raise FormInvalid(f'DeviceIds: must be a list of 1 to {STATUS_IDS_MAX} "PID/NAME"')
    targets = [_device_id_target(index, value) for index, value in enumerate(ids)]
    statuses = []
    for index, target in enumerate(targets):
        try:
            device = await bound_device(call, target)
        except DeviceNotBound as exc:
            detail = (exc.detail or exc.message).removeprefix("DeviceName: ")
            raise DeviceNotBound(f"DeviceIds[{index}]: {detail}") from exc
        statuses.append(
            {
                "DeviceId": device_id(device),
                "ProductId": device.product_key,
                "DeviceName": device.name,
                "Online": 1 if device.is_online else 0,
            }
        )
    return {"DeviceStatuses": statuses}


async def list_event_history(call: Call) -> Mapping[str, Any]:
    """``AppListEventHistory`` -> ``{"Context", "Total", "Listover", "EventHistory"}``.

    Events the device posted, newest first, in ``[StartTime, EndTime]`` (Unix seconds; 0 or
    absent: ``EndTime`` now, ``StartTime`` 24 h before ``EndTime``), of one ``EventId`` and/or
    ``Type`` (info/alert/fault; "" all). ``Size`` (alias ``Limit``, 1-100, default 10) per
    page; the next page is asked with the ``Context`` answered (or an ``Offset``). Items:
    ``{"TimeStamp" (Unix ms), "ProductId", "DeviceName", "EventId", "Type", "Data"}`` with
    ``Data`` a string holding the event's JSON params. ``Listover`` is true on the last page.
    """
    params = call.params
    target = device_target(params)
    event_id = _optional_str(params, "EventId")
    event_type = _optional_str(params, "Type")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise FormInvalid(f"Type: must be one of {', '.join(EVENT_TYPES)} or empty")
    now = call.services.things.clock.now()
    until = _instant(params, "EndTime") or now
    since = _instant(params, "StartTime") or until - EVENT_WINDOW
    if since > until:
        raise FormInvalid("StartTime: must not be after EndTime")
    size_name = "Size" if params.get("Size") is not None else "Limit"
    size = optional_int(params, size_name, EVENT_SIZE_DEFAULT, 1, EVENT_SIZE_MAX)
    offset = _offset(params)
    device = await bound_device(call, target)
    page = await call.services.things.event_history(
        device,
        since=since,
        until=until,
        event_id=event_id,
        event_type=event_type,
        limit=size,
        offset=offset,
    )
    following = offset + len(page.events)
    return {
        "Context": str(following),
        "Total": page.total,
        "Listover": following >= page.total,
        "EventHistory": [
            {
                "TimeStamp": int(event.at.timestamp() * 1000),
                "ProductId": device.product_key,
                "DeviceName": device.name,
                "EventId": event.event_id,
                "Type": event.event_type,
                "Data": msgspec.json.encode(event.params).decode(),
            }
            for event in page.events
        ],
    }


async def sig_bind_device_in_family(call: Call) -> Mapping[str, Any]:
    """``AppSigBindDeviceInFamily`` -> ``{"AppDeviceInfo": {...}}``: binds the caller to a
    data-template device that signed ``DeviceName=..&DeviceTimestamp=..&ProductId=..&ConnId=..``
    with its psk (``Signature`` hex HMAC, ``SignMethod`` hmacsha1 (default) or hmacsha256,
    ``DeviceTimestamp`` within 300 s). The first binder in the app owns the device, later ones
    are guests, as with every binding; binding again changes nothing."""
    params = call.params
    family = required_str(params, "FamilyId")
    target = device_target(params)
    timestamp = required(params, "DeviceTimestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise FormInvalid("DeviceTimestamp: must be Unix seconds (an integer)")
    conn_id = required_str(params, "ConnId")
    signature = required_str(params, "Signature")
    method = _optional_str(params, "SignMethod") or "hmacsha1"
    bind_type = _optional_str(params, "BindType")
    if bind_type is not None and bind_type not in BIND_TYPES:
        raise FormInvalid(f"BindType: must be one of {', '.join(BIND_TYPES)}")
    room = params.get("RoomId")
    if room is not None and room not in ("", families.DEFAULT_ROOM):
        raise FormInvalid(f'RoomId: the family has only the default room "{families.DEFAULT_ROOM}"')
    if family != families.family_id(call.user.uid):
        raise FamilyNotFound(f"FamilyId: {family!r} is not a family of this user")
    device = await call.services.things.bind_signed(
        call.user,
        target.product_id,
        target.device_name,
        timestamp=timestamp,
        conn_id=conn_id,
        signature=signature,
        method=method,
    )
    bound = int(device.binding.created_at.timestamp())
    return {
        "AppDeviceInfo": {
            "DeviceId": device_id(device),
            "ProductId": device.product_key,
            "DeviceName": device.name,
            "AliasName": device.binding.dev_alias,
            "UserID": call.user.uid,
            "FamilyId": family,
            "RoomId": families.DEFAULT_ROOM,
            "IconUrl": "",
            "CreateTime": bound,
            "UpdateTime": bound,
        }
    }


async def call_device_action(call: Call) -> Mapping[str, Any]:
    """``AppCallDeviceAction`` -> ``{"Status", "OutputParams", "Code"}``: the action's input
    (``InputParams``, a string holding a JSON object; absent: no input) is checked against the
    template, sent to the online data-template device, and its ``action_reply`` awaited (5 s).
    ``OutputParams`` is a string holding the device's ``response``, ``Code`` its code (an
    extension), ``Status`` ``"succ"`` for code 0, else the device's status text."""
    params = call.params
    target = device_target(params)
    action_id = required_str(params, "ActionId")
    inputs = (
        json_object_param(params, "InputParams", limit=DATA_MAX, allow_empty=True)
        if params.get("InputParams") not in (None, "")
        else {}
    )
    device = await bound_device(call, target, writing=True)
    template = await call.services.things.template(device)
    if template is None:
        raise ProductProtocolMismatch(
            f"ProductId: {device.product_key} is a Gizwits product: its devices have no actions"
        )
    try:
        code, status, response = await call.services.control.call_action(
            call.user, device.did, action_id, inputs, ACTION_TIMEOUT
        )
    except CodecError as exc:
        name = str(getattr(exc, "name", ""))
        field = "ActionId" if name == "actionId" else "InputParams"
        raise AttrInvalid(f"{field}: {exc}") from exc
    except TimeoutError as exc:
        raise DeviceNoReply(
            f"DeviceName: device {device_id(device)} did not answer action {action_id} within "
            f"{ACTION_TIMEOUT:g} s"
        ) from exc
    except ConnectionError as exc:
        raise DeviceNoReply(f"DeviceName: device {device_id(device)} cannot be reached") from exc
    return {
        "Status": "succ" if code == 0 else (status or "failed"),
        "OutputParams": msgspec.json.encode(response).decode(),
        "Code": code,
    }


ACTIONS: Final[Mapping[str, Action]] = {
    "AppGetDeviceData": get_device_data,
    "AppControlDeviceData": control_device_data,
    "AppGetDeviceStatuses": get_device_statuses,
    "AppListEventHistory": list_event_history,
    "AppSigBindDeviceInFamily": sig_bind_device_in_family,
    "AppCallDeviceAction": call_device_action,
    "AppCallDeviceActionSync": call_device_action,
}


# -- parameters ------------------------------------------------------------------------------


def _device_id_target(index: int, value: object) -> DeviceTarget:
    if not isinstance(value, str) or value.count("/") != 1:
        raise FormInvalid(f'DeviceIds[{index}]: must be a string "ProductId/DeviceName"')
    try:
        return DeviceTarget.checked(*value.split("/"))
    except FormInvalid as exc:
        raise FormInvalid(f"DeviceIds[{index}]: {exc.detail or exc.message}") from exc


def _optional_str(params: Mapping[str, Any], name: str) -> str | None:
    """``params[name]`` as a string; None when absent, null or ""."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FormInvalid(f"{name}: must be a string")
    return value


def _instant(params: Mapping[str, Any], name: str) -> datetime | None:
    """``params[name]`` as Unix seconds; None when absent, null or 0."""
    seconds = optional_int(params, name, 0, 0, _UNIX_MAX)
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _offset(params: Mapping[str, Any]) -> int:
    """Where the page starts: ``Context`` (the previous answer's, digits) or ``Offset``."""
    context = params.get("Context")
    if context is not None and context != "":
        if not isinstance(context, str) or not context.isascii() or not context.isdigit():
            raise FormInvalid("Context: must be the Context of a previous answer")
        offset = int(context)
        if offset > OFFSET_MAX:
            raise FormInvalid("Context: must be the Context of a previous answer")
        return offset
    return optional_int(params, "Offset", 0, 0, OFFSET_MAX)


@contextmanager
def _named_values(name: str) -> Iterator[None]:
    """The control's complaints about values in the Tencent parameter's name (``Data: ...``)."""
    try:
        yield
    except AttrInvalid as exc:
        raise AttrInvalid(f"{name}: {exc.detail or exc.message}") from exc
