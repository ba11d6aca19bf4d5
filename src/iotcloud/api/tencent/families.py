"""Tencent family Actions of ``tokenapi`` (spec §1.6): ``AppGetFamilyList``,
``AppGetFamilyDeviceList``, ``AppDeleteDeviceInFamily`` and ``AppUpdateDeviceInFamily``.

iotcloud has no families: a user's devices are their bindings. So every user has exactly one
family, derived from the user and stored nowhere: ``FamilyId`` is ``"f_"`` + the uid, its
``Name`` `FAMILY_NAME`, the caller its admin (``Role`` 1), its times the user's sign-up. It has
only the default room ``"0"``. Its devices are the caller's bindings in their app, of both kinds
of devices: a Gizwits device is ``ProductId`` = product_key, ``DeviceName`` = its MAC; a
data-template device is its PID and name; ``DeviceId`` is ``"PID/NAME"``. ``AliasName`` is the
binding's alias, the one ``PUT /app/bindings/{did}`` sets; deleting a device from the family
unbinds it (``DELETE /app/bindings``). A ``FamilyId`` not the caller's is
``ResourceNotFound.FamilyNotExist``; a device not bound to the caller
``UnauthorizedOperation.DeviceNotBound``.

Every parameter is checked before anything is looked up or written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from iotcloud.api.tencent.actions import Action, Call, bound_device, device_id, device_target
from iotcloud.api.tencent.wire import optional_int, required_str
from iotcloud.errors import (
    FamilyNotFound,
    FormInvalid,
)
from iotcloud.services.bindings import DEV_ALIAS_MAX, LIST_LIMIT_MAX, BoundDevice

__all__ = ["ACTIONS", "FAMILY_NAME", "LIMIT_DEFAULT", "LIMIT_MAX", "family_id"]

FAMILY_NAME: Final = "My Home"
FAMILY_PREFIX: Final = "f_"
DEFAULT_ROOM: Final = "0"
LIMIT_DEFAULT: Final = 20
LIMIT_MAX: Final = 50
OFFSET_MAX: Final = 2**31 - 1


def family_id(uid: str) -> str:
    """The ``FamilyId`` of the one family of the user ``uid``."""
    return FAMILY_PREFIX + uid


# -- actions ---------------------------------------------------------------------------------


async def get_family_list(call: Call) -> Mapping[str, Any]:
    """``AppGetFamilyList`` -> ``{"FamilyList": [...], "Total": 1}``: the caller's one family,
    unless ``Offset`` (default 0) skips it; ``Limit`` 1-50 (default 20)."""
    offset = optional_int(call.params, "Offset", 0, 0, OFFSET_MAX)
    optional_int(call.params, "Limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    user = await call.services.accounts.user_record(call.user)
    created = int(user.created_at.timestamp())
    family = {
        "FamilyId": family_id(user.uid),
        "Name": FAMILY_NAME,
        "Role": 1,
        "CreateTime": created,
        "UpdateTime": created,
    }
    return {"FamilyList": [family][offset:], "Total": 1}


async def get_family_device_list(call: Call) -> Mapping[str, Any]:
    """``AppGetFamilyDeviceList`` -> ``{"DeviceList": [...], "Total"}``: the caller's bound
    devices (disabled ones too), in the order they were bound, ``Offset`` (default 0) skipped,
    at most ``Limit`` (1-50, default 20). ``RoomId`` may be absent, ``""`` (every room) or
    ``"0"`` (the default room): all the same, the family has one room."""
    _check_family(call, required=True)
    room = call.params.get("RoomId")
    if room is not None and room not in ("", DEFAULT_ROOM):
        raise FormInvalid(f'RoomId: the family has only the default room "{DEFAULT_ROOM}"')
    offset = optional_int(call.params, "Offset", 0, 0, OFFSET_MAX)
    limit = optional_int(call.params, "Limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    devices = await _all_bound(call)
    return {
        "DeviceList": [_device_view(call, d) for d in devices[offset : offset + limit]],
        "Total": len(devices),
    }


async def delete_device_in_family(call: Call) -> Mapping[str, Any]:
    """``AppDeleteDeviceInFamily`` -> ``{}``: the caller's binding to the device is removed
    (an owner's guests in the app lose it too, as with ``DELETE /app/bindings``)."""
    _check_family(call, required=True)
    device = await bound_device(call, device_target(call.params))
    await call.services.bindings.unbind(call.user, device.did)
    return {}


async def update_device_in_family(call: Call) -> Mapping[str, Any]:
    """``AppUpdateDeviceInFamily`` -> ``{}``: the device's ``AliasName`` (at most 128
    characters, trimmed; ``""`` removes it). ``FamilyId`` is optional, checked when sent."""
    _check_family(call, required=False)
    target = device_target(call.params)
    alias = required_str(call.params, "AliasName").strip()
    if len(alias) > DEV_ALIAS_MAX:
        raise FormInvalid(f"AliasName: at most {DEV_ALIAS_MAX} characters")
    device = await bound_device(call, target)
    await call.services.bindings.update(call.user, device.did, dev_alias=alias)
    return {}


ACTIONS: Final[Mapping[str, Action]] = {
    "AppGetFamilyList": get_family_list,
    "AppGetFamilyDeviceList": get_family_device_list,
    "AppDeleteDeviceInFamily": delete_device_in_family,
    "AppUpdateDeviceInFamily": update_device_in_family,
}


# -- parameters ------------------------------------------------------------------------------


def _check_family(call: Call, *, required: bool) -> None:
    """``FamilyId``, when sent (or ``required``), must name the caller's family."""
    if not required and call.params.get("FamilyId") is None:
        return
    given = required_str(call.params, "FamilyId")
    if given != family_id(call.user.uid):
        raise FamilyNotFound(f"FamilyId: {given!r} is not a family of this user")


async def _all_bound(call: Call) -> list[BoundDevice]:
    """Every device bound to the caller, disabled ones included, oldest binding first."""
    devices: list[BoundDevice] = []
    while True:
        page = await call.services.bindings.list_bound(
            call.user, limit=LIST_LIMIT_MAX, skip=len(devices), show_disabled=True
        )
        devices.extend(page)
        if len(page) < LIST_LIMIT_MAX:
            return devices


def _device_view(call: Call, device: BoundDevice) -> dict[str, Any]:
    """A ``DeviceList`` item. ``UserID`` is the caller's (the binding in this family is
    theirs); no time of a binding's changes is kept, so ``UpdateTime`` is its creation too."""
    bound = int(device.binding.created_at.timestamp())
    return {
        "ProductId": device.product_key,
        "DeviceName": device.name,
        "DeviceId": device_id(device),
        "AliasName": device.binding.dev_alias,
        "UserID": call.user.uid,
        "RoomId": DEFAULT_ROOM,
        "IconUrl": "",
        "CreateTime": bound,
        "UpdateTime": bound,
    }
