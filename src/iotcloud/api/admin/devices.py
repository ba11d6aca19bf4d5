"""``/admin/v1/devices``: create devices, show them, disable and enable them."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post, put

from iotcloud.api.admin.views import (
    DeviceCredentialsShape,
    DeviceShape,
    NamedDeviceCredentialsShape,
    device_credentials_view,
    device_view,
    named_device_credentials_view,
)
from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import OPERATOR_ERRORS, Decorator, declare, declared_body
from iotcloud.errors import FormInvalid
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


class CreateDeviceForm(msgspec.Struct, forbid_unknown_fields=True):
    product_key: str
    mac: str | None = None
    name: str | None = None
    psk: str | None = None
    passcode: str | None = None


class ChangeDeviceForm(msgspec.Struct, forbid_unknown_fields=True):
    is_disabled: bool


Created = DeviceCredentialsShape | NamedDeviceCredentialsShape


def _declare(summary: str, **kwargs: Any) -> Decorator:
    return declare(
        summary, tag="operator", security=("operator",), errors=OPERATOR_ERRORS, **kwargs
    )


@_declare("Create a device", body=CreateDeviceForm, responses={201: Created, 200: Created})
@post("/devices")
async def create_device(request: AnyRequest) -> Response[bytes]:
    """``{"product_key", "mac"[, "passcode"]}`` (Gizwits product) -> 201 ``{"did", "passcode",
    "mac"}``, or ``{"product_key", "name"[, "psk"][, "passcode"]}`` (data-template product) ->
    201 ``{"did", "device_name", "psk"}``; 200 with the existing device when the MAC or name
    is already registered in the product. Exactly one of ``mac`` and ``name`` (9015)."""
    form = await declared_body(request, CreateDeviceForm)
    devices = services(request).devices
    if (form.mac is None) == (form.name is None):
        raise FormInvalid("mac: give exactly one of mac (Gizwits product) or name (data template)")
    if form.name is not None:
        named = await devices.create_named(form.product_key, form.name, form.psk, form.passcode)
        return json_response(named_device_credentials_view(named), 201 if named.created else 200)
    if form.psk is not None:
        raise FormInvalid("psk: only a data-template device (created by name) has a psk")
    assert form.mac is not None
    creds = await devices.create(form.product_key, form.mac, form.passcode)
    return json_response(device_credentials_view(creds), 201 if creds.created else 200)


@_declare("A device", responses={200: DeviceShape})
@get("/devices/{did:str}")
async def show_device(request: AnyRequest, did: str) -> Response[bytes]:
    return json_response(device_view(await services(request).devices.get(did)))


@_declare("Disable or enable a device", body=ChangeDeviceForm, responses={200: DeviceShape})
@put("/devices/{did:str}")
async def change_device(request: AnyRequest, did: str) -> Response[bytes]:
    """``{"is_disabled": bool}`` -> the device."""
    form = await declared_body(request, ChangeDeviceForm)
    device = await services(request).devices.set_disabled(did, form.is_disabled)
    return json_response(device_view(device))


ROUTES = [create_device, show_device, change_device]
