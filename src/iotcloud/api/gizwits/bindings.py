"""Binding users to devices: ``/app/bind_mac``, ``/app/bindings`` and ``/app/{did}/bindings``.

Every call needs ``X-Gizwits-Application-Id`` and ``X-Gizwits-User-token``; ``bind_mac`` also
``X-Gizwits-Timestamp`` and ``X-Gizwits-Signature``. Bodies are JSON objects whose unknown fields
are refused (9015 naming them); devices are rendered as the ``DeviceItem`` of
``GET /app/devices/{did}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, delete, get, post, put

from iotcloud.api.gizwits.accounts import current_user, services
from iotcloud.api.gizwits.app_devices import device_item
from iotcloud.api.gizwits.query import query_form
from iotcloud.api.gizwits.wire import convert, header, json_object, json_response
from iotcloud.errors import FormInvalid
from iotcloud.services.bindings import (
    LIST_LIMIT_MAX,
    BatchOutcome,
    BoundDevice,
    DeviceUser,
    PasscodeBind,
)

AnyRequest = Request[Any, Any, Any]

TIMESTAMP: Final = "X-Gizwits-Timestamp"
SIGNATURE: Final = "X-Gizwits-Signature"
#: ``GAgent`` frames (and so every device here) carry protocol version 00000003.
PROTO_VER: Final = "03"


class _Form(msgspec.Struct, forbid_unknown_fields=True):
    pass


class BindMacForm(_Form):
    product_key: str
    mac: str
    remark: str | None = None
    dev_alias: str | None = None
    # Gizwits takes it on sharing-enabled products; here the first binder always owns
    set_owner: Literal[0, 1] | None = None


class PasscodeItem(_Form):
    did: str
    passcode: str
    remark: str | None = None
    dev_alias: str | None = None


class BindForm(_Form):
    devices: list[PasscodeItem]


class UnbindItem(_Form):
    did: str


class UnbindForm(_Form):
    devices: list[UnbindItem]


class ChangeForm(_Form):
    dev_alias: str | msgspec.UnsetType = msgspec.UNSET
    remark: str | msgspec.UnsetType = msgspec.UNSET
    dev_label: list[str] | msgspec.UnsetType = msgspec.UNSET


Flag = Annotated[int, msgspec.Meta(ge=0, le=1)]


class BindingsQuery(_Form):
    limit: Annotated[int, msgspec.Meta(ge=1, le=LIST_LIMIT_MAX)] = 20
    skip: Annotated[int, msgspec.Meta(ge=0)] = 0
    show_disabled: Flag = 0
    show_proto_ver: Flag = 0
    lan_prot_ver: Flag = 0


class NoQuery(_Form):
    pass


class RemoveQuery(_Form):
    uid: str


def _outcome(outcome: BatchOutcome) -> Response[bytes]:
    return json_response({"success": outcome.success, "failed": outcome.failed})


def _user_view(user: DeviceUser) -> dict[str, Any]:
    return {
        "uid": user.uid,
        "username": user.username,
        "phone": user.phone,
        "email": user.email,
        "role": user.role,
        "created_at": user.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@post("/app/bind_mac", status_code=201)
async def bind_mac(request: AnyRequest) -> Response[bytes]:
    """``{product_key, mac, remark?, dev_alias?}`` signed with the product secret -> 201 with
    the ``DeviceItem``."""
    _, user = await current_user(request)
    svc = services(request)
    timestamp, signature = header(request, TIMESTAMP), header(request, SIGNATURE)
    form = convert(await json_object(request), BindMacForm)
    bound = await svc.bindings.bind_by_mac(
        user,
        form.product_key,
        form.mac,
        timestamp=timestamp,
        signature=signature,
        dev_alias=form.dev_alias or "",
        remark=form.remark or "",
    )
    return json_response(device_item(bound, svc.settings), 201)


@post("/app/bindings", status_code=200)
async def bind_devices(request: AnyRequest) -> Response[bytes]:
    """``{"devices": [{did, passcode, remark?, dev_alias?}, ...]}`` ->
    ``{"success": [did...], "failed": [did...]}``."""
    _, user = await current_user(request)
    form = convert(await json_object(request), BindForm)
    outcome = await services(request).bindings.bind_by_passcode(
        user,
        [
            PasscodeBind(
                did=item.did,
                passcode=item.passcode,
                dev_alias=item.dev_alias or "",
                remark=item.remark or "",
            )
            for item in form.devices
        ],
    )
    return _outcome(outcome)


@delete("/app/bindings", status_code=200)
async def unbind_devices(request: AnyRequest) -> Response[bytes]:
    """``{"devices": [{did}, ...]}`` -> ``{"success": [did...], "failed": [did...]}``."""
    _, user = await current_user(request)
    form = convert(await json_object(request), UnbindForm)
    outcome = await services(request).bindings.unbind_many(
        user, [item.did for item in form.devices]
    )
    return _outcome(outcome)


@get("/app/bindings")
async def list_bindings(request: AnyRequest) -> Response[bytes]:
    """``?limit&skip&show_disabled&show_proto_ver&lan_prot_ver`` -> ``{"devices": [...]}``."""
    _, user = await current_user(request)
    form = query_form(request, BindingsQuery)
    svc = services(request)
    devices = await svc.bindings.list_bound(
        user, limit=form.limit, skip=form.skip, show_disabled=bool(form.show_disabled)
    )
    items: list[Any] = []
    for device in devices:
        item = msgspec.to_builtins(device_item(device, svc.settings))
        if form.show_proto_ver:
            item["proto_ver"] = PROTO_VER
        if form.lan_prot_ver:
            item["lan_prot_ver"] = PROTO_VER
        items.append(item)
    return json_response({"devices": items})


@put("/app/bindings/{did:str}")
async def change_binding(request: AnyRequest, did: str) -> Response[bytes]:
    """``{dev_alias?, remark?, dev_label?}`` -> the ``DeviceItem`` with the new names."""
    _, user = await current_user(request)
    form = convert(await json_object(request), ChangeForm)
    svc = services(request)
    bound: BoundDevice = await svc.bindings.update(
        user,
        did,
        dev_alias=None if form.dev_alias is msgspec.UNSET else form.dev_alias,
        remark=None if form.remark is msgspec.UNSET else form.remark,
        dev_label=None if form.dev_label is msgspec.UNSET else form.dev_label,
    )
    return json_response(device_item(bound, svc.settings))


@get("/app/{did:str}/bindings")
async def device_users(request: AnyRequest, did: str) -> Response[bytes]:
    """The users of the caller's app bound to ``did``, personal data masked:
    ``[{uid, username, phone, email, role, created_at}, ...]``."""
    _, user = await current_user(request)
    query_form(request, NoQuery)
    users = await services(request).bindings.bound_users(user, did)
    return json_response([_user_view(entry) for entry in users])


@delete("/app/{did:str}/bindings", status_code=200)
async def remove_device_users(request: AnyRequest, did: str) -> Response[bytes]:
    """``?uid=a[,b...]``: the owner unbinds guests -> ``{"success": [uid...],
    "failed": [uid...]}``."""
    _, user = await current_user(request)
    form = query_form(request, RemoveQuery)
    uids = [part.strip() for part in form.uid.split(",")]
    if any(not uid for uid in uids):
        raise FormInvalid("uid: an empty uid in the list")
    outcome = await services(request).bindings.remove_users(user, did, uids)
    return _outcome(outcome)


ROUTES = [
    bind_mac,
    bind_devices,
    unbind_devices,
    list_bindings,
    change_binding,
    device_users,
    remove_device_users,
]
