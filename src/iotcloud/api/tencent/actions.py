"""What an Action handler of the Tencent API receives and returns, and how it names a device.

A device of either protocol is named ``ProductId`` + ``DeviceName``: a Gizwits device by its
product_key and MAC (12 hex digits, any accepted spelling), a data-template device by its
ProductId and name (exact). `device_target` checks the two parameters before anything is
looked up; `bound_device` finds the caller's device through `BindingService.find_bound_named`,
the one lookup of a device by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from iotcloud.api.tencent.wire import required_str
from iotcloud.domain import devices as device_rules
from iotcloud.domain.accounts import FieldInvalid
from iotcloud.errors import DeviceDisabled, DeviceNotBound, DeviceNotFound, FormInvalid
from iotcloud.services.accounts import CurrentUser
from iotcloud.services.bindings import BoundDevice
from iotcloud.services.registry import Services

__all__ = [
    "Action",
    "Call",
    "DeviceTarget",
    "bound_device",
    "device_id",
    "device_target",
    "usable_did",
]


@dataclass(frozen=True)
class Call:
    """One authenticated Action call: the caller, and the body's parameters (the common ones
    included; parameters an Action does not know are ignored, since Tencent's apps add their
    own, such as ``Platform``, ``Agent`` and ``lang``)."""

    services: Services
    user: CurrentUser
    params: Mapping[str, Any]


Action = Callable[[Call], Awaitable[Mapping[str, Any]]]
"""An Action handler: the content of ``Response`` on success (``RequestId`` is added by the
endpoint); raises an iotcloud error (rendered through ``wire.TENCENT_CODES``) on failure."""


@dataclass(frozen=True)
class DeviceTarget:
    """``ProductId`` and ``DeviceName`` as stored: a Gizwits product_key lower case with its MAC
    as 12 lower-case hex digits, or a data-template ProductId and name exactly as sent."""

    product_id: str
    device_name: str

    @classmethod
    def checked(cls, product_id: str, device_name: str) -> DeviceTarget:
        """The target named by the two values; ``FormInvalid`` naming ``ProductId`` or
        ``DeviceName`` when they cannot name a device."""
        try:
            return cls(*device_rules.check_device_named(product_id, device_name))
        except FieldInvalid as exc:
            raise FormInvalid(str(exc)) from exc


def device_target(params: Mapping[str, Any]) -> DeviceTarget:
    """The device the Action names by its ``ProductId`` and ``DeviceName`` parameters (both
    required strings, checked)."""
    return DeviceTarget.checked(
        required_str(params, "ProductId"), required_str(params, "DeviceName")
    )


async def bound_device(call: Call, target: DeviceTarget, *, writing: bool = False) -> BoundDevice:
    """The caller's bound device named by ``target``; ``writing``: it must not be disabled.

    Raises ``ResourceNotFound.ProductNotExist``/``DeviceNotExist``,
    ``UnauthorizedOperation.DeviceNotBound`` or ``ResourceUnavailable.DeviceDisabled``, with
    messages in the Tencent field names (never a did).
    """
    device = await call.services.bindings.find_bound_named(
        call.user, target.product_id, target.device_name
    )
    if writing and device.is_disabled:
        raise DeviceDisabled(f"DeviceName: device {device_id(device)} is disabled")
    return device


async def usable_did(call: Call, target: DeviceTarget) -> str:
    """The did of the caller's device named by ``target``, which the caller may command now
    (bound, not disabled): what `bound_device` with ``writing`` checks, answered from the
    caches the Gizwits commands use (the name's did, passed binding checks), so a burst of
    commands costs no database read. Raises as `bound_device` does."""
    services = call.services
    did = await services.bindings.did_named(target.product_id, target.device_name)
    name = f"{target.product_id}/{target.device_name}"
    try:
        await services.control.require_usable(call.user, did)
    except DeviceNotBound as exc:
        raise DeviceNotBound(f"DeviceName: device {name} is not bound to this user") from exc
    except DeviceDisabled as exc:
        raise DeviceDisabled(f"DeviceName: device {name} is disabled") from exc
    except DeviceNotFound as exc:  # deleted between the two reads
        raise DeviceNotFound(f"DeviceName: no device {name}") from exc
    return did


def device_id(device: BoundDevice) -> str:
    """The Tencent ``DeviceId`` of a device: ``"PID/NAME"``."""
    return f"{device.product_key}/{device.name}"
