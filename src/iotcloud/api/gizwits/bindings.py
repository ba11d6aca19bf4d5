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
from iotcloud.api.gizwits.app_devices import DeviceItem, device_item
from iotcloud.api.gizwits.query import Skip
from iotcloud.api.gizwits.wire import header, json_response
from iotcloud.api.openapi.declare import (
    DEVICE_ERRORS,
    Decorator,
    declare,
    declared_body,
    declared_query,
)
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
    skip: Skip = 0
    show_disabled: Flag = 0
    show_proto_ver: Flag = 0
    lan_prot_ver: Flag = 0


class NoQuery(_Form):
    pass


class RemoveQuery(_Form):
    uid: str


# -- answers ---------------------------------------------------------------------------------


class Outcome(msgspec.Struct):
    success: list[str]
    failed: list[str]


class ListedDevice(DeviceItem):
    proto_ver: str | msgspec.UnsetType = msgspec.UNSET
    lan_prot_ver: str | msgspec.UnsetType = msgspec.UNSET


class DeviceList(msgspec.Struct):
    devices: list[ListedDevice]


class DeviceUserView(msgspec.Struct):
    uid: str
    username: str | None
    phone: str | None
    email: str | None
    role: str
    created_at: str


def _declare(summary: str, **kwargs: Any) -> Decorator:
    return declare(
        summary, tag="gizwits bindings", security=("app", "user"), errors=DEVICE_ERRORS, **kwargs
    )


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


@_declare(
    "Bind a device by MAC (signed with the product secret)",
    body=BindMacForm,
    responses={201: DeviceItem},
    headers={
        TIMESTAMP: "Unix seconds, when the product requires a signed bind",
        SIGNATURE: "md5(product_secret + timestamp), when the product requires a signed bind",
    },
)
@post("/app/bind_mac", status_code=201)
async def bind_mac(request: AnyRequest) -> Response[bytes]:
    """``{product_key, mac, remark?, dev_alias?}`` signed with the product secret -> 201 with
    the ``DeviceItem``."""
    _, user = await current_user(request)
    svc = services(request)
    timestamp, signature = header(request, TIMESTAMP), header(request, SIGNATURE)
    form = await declared_body(request, BindMacForm)
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


@_declare("Bind devices by passcode", body=BindForm, responses={200: Outcome})
@post("/app/bindings", status_code=200)
async def bind_devices(request: AnyRequest) -> Response[bytes]:
    """``{"devices": [{did, passcode, remark?, dev_alias?}, ...]}`` ->
    ``{"success": [did...], "failed": [did...]}``."""
    _, user = await current_user(request)
    form = await declared_body(request, BindForm)
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


@_declare("Unbind devices", body=UnbindForm, responses={200: Outcome})
@delete("/app/bindings", status_code=200)
async def unbind_devices(request: AnyRequest) -> Response[bytes]:
    """``{"devices": [{did}, ...]}`` -> ``{"success": [did...], "failed": [did...]}``."""
    _, user = await current_user(request)
    form = await declared_body(request, UnbindForm)
    outcome = await services(request).bindings.unbind_many(
        user, [item.did for item in form.devices]
    )
    return _outcome(outcome)


@_declare("The caller's bound devices", query=BindingsQuery, responses={200: DeviceList})
@get("/app/bindings")
async def list_bindings(request: AnyRequest) -> Response[bytes]:
    """``?limit&skip&show_disabled&show_proto_ver&lan_prot_ver`` -> ``{"devices": [...]}``."""
    _, user = await current_user(request)
    form = declared_query(request, BindingsQuery)
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


@_declare("Rename a bound device", body=ChangeForm, responses={200: DeviceItem})
@put("/app/bindings/{did:str}")
async def change_binding(request: AnyRequest, did: str) -> Response[bytes]:
    """``{dev_alias?, remark?, dev_label?}`` -> the ``DeviceItem`` with the new names."""
    _, user = await current_user(request)
    form = await declared_body(request, ChangeForm)
    svc = services(request)
    bound: BoundDevice = await svc.bindings.update(
        user,
        did,
        dev_alias=None if form.dev_alias is msgspec.UNSET else form.dev_alias,
        remark=None if form.remark is msgspec.UNSET else form.remark,
        dev_label=None if form.dev_label is msgspec.UNSET else form.dev_label,
    )
    return json_response(device_item(bound, svc.settings))


@_declare("The users bound to a device", query=NoQuery, responses={200: list[DeviceUserView]})
@get("/app/{did:str}/bindings")
async def device_users(request: AnyRequest, did: str) -> Response[bytes]:
    """The users of the caller's app bound to ``did``, personal data masked:
    ``[{uid, username, phone, email, role, created_at}, ...]``."""
    _, user = await current_user(request)
    declared_query(request, NoQuery)
    users = await services(request).bindings.bound_users(user, did)
    return json_response([_user_view(entry) for entry in users])


@_declare("The owner unbinds guests", query=RemoveQuery, responses={200: Outcome})
@delete("/app/{did:str}/bindings", status_code=200)
async def remove_device_users(request: AnyRequest, did: str) -> Response[bytes]:
    """``?uid=a[,b...]``: the owner unbinds guests -> ``{"success": [uid...],
    "failed": [uid...]}``."""
    _, user = await current_user(request)
    form = declared_query(request, RemoveQuery)
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
