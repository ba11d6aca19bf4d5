"""``/app/devices``: a bound device as apps see it (``DeviceItem``), looked up by did or by
product_key + MAC, and its frame log (``raw_data``).

Every call needs ``X-Gizwits-Application-Id`` and ``X-Gizwits-User-token`` and a binding of the
user to the device: 9014 for an unknown device, 9017 for one not bound to the caller.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec
from litestar import Request, Response, get

from iotcloud.api.gizwits.accounts import current_user, services
from iotcloud.api.gizwits.query import Skip, page_links
from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import DEVICE_ERRORS, Decorator, declare, declared_query
from iotcloud.config import Settings
from iotcloud.services.bindings import BoundDevice
from iotcloud.services.telemetry import FRAME_LOG_LIMIT_MAX, FrameLogEntry, FrameLogType

AnyRequest = Request[Any, Any, Any]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_UNIX_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
PROTOC_WIFI: Final = 3


class DeviceItem(msgspec.Struct):
    """The Open API's ``DeviceItem`` (``bind_mac``, ``bindings``, ``devices/{did}``)."""

    product_key: str
    product_name: str
    did: str
    mac: str
    passcode: str
    is_online: bool
    is_disabled: bool
    host: str
    port: int
    port_s: int
    ws_port: int
    wss_port: int
    type: str
    role: str
    dev_alias: str
    dev_label: list[str]
    remark: str
    protoc: int
    is_sandbox: bool
    mcu_soft_version: str
    mcu_hard_version: str
    wifi_soft_version: str
    wifi_hard_version: str
    state_last_timestamp: int


class Endpoints(msgspec.Struct):
    """Where apps and devices reach this cloud, as ``DeviceItem`` names it."""

    host: str
    port: int
    port_s: int
    ws_port: int
    wss_port: int


def endpoints(settings: Settings) -> Endpoints:
    """``host`` is the public host; ``port`` the MQTT port. With TLS set (``IOTCLOUD_TLS_*``),
    ``port_s`` is the MQTT-over-TLS port and ``wss_port`` the HTTPS port; without it ``port_s``
    repeats ``port``. WebSocket runs on the HTTP port; when the public URL is ``https://`` (a TLS
    proxy in front), ``wss_port`` is its port, else without TLS it repeats ``ws_port``: no port is
    ever named that nothing listens on."""
    public = urlsplit(settings.base_url)
    if public.scheme == "https":
        ws_port = settings.http_port
        wss_port = public.port or 443
    else:
        ws_port = public.port or 80
        wss_port = settings.https_port if settings.tls_enabled else ws_port
    return Endpoints(
        host=settings.public_host,
        port=settings.mqtt_port,
        port_s=settings.mqtts_port if settings.tls_enabled else settings.mqtt_port,
        ws_port=ws_port,
        wss_port=wss_port,
    )


def device_item(device: BoundDevice, settings: Settings) -> DeviceItem:
    """``device`` as a ``DeviceItem``; versions the device never told are empty strings."""
    where = endpoints(settings)
    state_at = device.state_updated_at
    return DeviceItem(
        product_key=device.product_key,
        product_name=device.product_name,
        did=device.did,
        mac=device.mac,
        passcode=device.passcode,
        is_online=device.is_online,
        is_disabled=device.is_disabled,
        host=where.host,
        port=where.port,
        port_s=where.port_s,
        ws_port=where.ws_port,
        wss_port=where.wss_port,
        type="normal",
        role=device.binding.role,
        dev_alias=device.binding.dev_alias,
        dev_label=list(device.binding.dev_label),
        remark=device.binding.remark,
        protoc=PROTOC_WIFI,
        is_sandbox=False,
        mcu_soft_version=device.mcu_soft_version or "",
        mcu_hard_version=device.mcu_hard_version or "",
        wifi_soft_version=device.wifi_soft_version or "",
        wifi_hard_version=device.wifi_hard_version or "",
        state_last_timestamp=int(state_at.timestamp()) if state_at is not None else 0,
    )


class _Query(msgspec.Struct, forbid_unknown_fields=True):
    pass


class MacQuery(_Query):
    product_key: str
    mac: str


UnixSeconds = Annotated[int, msgspec.Meta(ge=0, le=MAX_UNIX_SECONDS)]


class RawDataQuery(_Query):
    type: FrameLogType
    start_time: UnixSeconds
    end_time: UnixSeconds
    skip: Skip = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=FRAME_LOG_LIMIT_MAX)] = 20
    sort: Literal["asc", "desc"] = "desc"


class FrameLogMeta(msgspec.Struct):
    did: str
    type: FrameLogType
    start_time: int
    end_time: int
    sort: Literal["asc", "desc"]
    limit: int
    skip: int
    total: int
    previous: str | None
    next: str | None


class FrameObject(msgspec.Struct):
    type: str
    """``app2dev``/``dev2app`` (``type=cmd``), ``dev_online``/``dev_offline``/``dev_refused``"""
    timestamp: float
    ip: str | None
    payload_bin: str
    reason: str | msgspec.UnsetType = msgspec.UNSET


class FrameLog(msgspec.Struct):
    meta: FrameLogMeta
    objects: list[FrameObject]


def _declare(summary: str, **kwargs: Any) -> Decorator:
    return declare(
        summary, tag="gizwits devices", security=("app", "user"), errors=DEVICE_ERRORS, **kwargs
    )


def unix_seconds(value: int) -> datetime:
    return EPOCH + timedelta(seconds=value)


@_declare("A bound device", responses={200: DeviceItem})
@get("/app/devices/{did:str}")
async def device(request: AnyRequest, did: str) -> Response[bytes]:
    """The ``DeviceItem`` of a device bound to the caller."""
    _, user = await current_user(request)
    svc = services(request)
    bound = await svc.bindings.require_bound(user, did)
    return json_response(device_item(bound, svc.settings))


@_declare("A bound device by product and MAC", query=MacQuery, responses={200: DeviceItem})
@get("/app/devices")
async def device_by_mac(request: AnyRequest) -> Response[bytes]:
    """``?product_key=&mac=``: the ``DeviceItem`` of that device, if bound to the caller."""
    _, user = await current_user(request)
    form = declared_query(request, MacQuery)
    svc = services(request)
    bound = await svc.bindings.find_bound(user, form.product_key, form.mac)
    return json_response(device_item(bound, svc.settings))


@_declare("The frame log", query=RawDataQuery, responses={200: FrameLog})
@get("/app/devices/{did:str}/raw_data")
async def raw_data(request: AnyRequest, did: str) -> Response[bytes]:
    """The frame log: ``type=cmd`` (``app2dev``/``dev2app`` frames) or ``type=online``
    (``dev_online``/``dev_offline``) between ``start_time`` and ``end_time`` (Unix seconds,
    both included)."""
    _, user = await current_user(request)
    form = declared_query(request, RawDataQuery)
    page = await services(request).telemetry.frame_log(
        user,
        did,
        log_type=form.type,
        start=unix_seconds(form.start_time),
        end=unix_seconds(form.end_time),
        limit=form.limit,
        skip=form.skip,
        descending=form.sort == "desc",
    )
    previous, following = page_links(request, page.total, form.limit, form.skip)
    return json_response(
        {
            "meta": {
                "did": did,
                "type": form.type.value,
                "start_time": form.start_time,
                "end_time": form.end_time,
                "sort": form.sort,
                "limit": form.limit,
                "skip": form.skip,
                "total": page.total,
                "previous": previous,
                "next": following,
            },
            "objects": [_frame_object(entry) for entry in page.entries],
        }
    )


def _frame_object(entry: FrameLogEntry) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": entry.kind,
        "timestamp": entry.at.timestamp(),
        "ip": entry.ip,
        "payload_bin": entry.payload.hex() if entry.payload is not None else "",
    }
    if entry.reason is not None:
        item["reason"] = entry.reason
    return item


ROUTES = [device, device_by_mac, raw_data]
