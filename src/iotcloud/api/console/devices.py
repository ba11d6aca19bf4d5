"""Console device pages: search, create one, import a CSV (a plain form post, or chunks of lines
posted as JSON by the page's script to drive its progress bar), and a device's page with its
live values (polled by the script from ``/state``), charts, frame log and a command form.

A device's passcode (or psk) is shown only on the page right after it was created.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from iotcloud.api.console.auth import (
    AnyRequest,
    check_csrf,
    checked_form,
    console,
    redirect,
    services,
)
from iotcloud.api.console.pages import UPLOAD_OVERHEAD, field_errors, render
from iotcloud.api.console.render import CHART_HEIGHT, CHART_WIDTH, chart_svg_points, when_text
from iotcloud.domain.clock import iso_utc
from iotcloud.errors import (
    DeviceDisabled,
    DeviceOffline,
    FormInvalid,
    IotCloudError,
    ProductKeyInvalid,
)
from iotcloud.services.console import (
    CHART_RANGES,
    CommandInvalid,
    DataPoint,
    FrameRow,
    LiveState,
)
from iotcloud.services.devices import ImportReport

DATA = {"data": True}
PAGE_SIZE: Final = 50
MAX_CSV_BYTES: Final = 4 * 1024 * 1024
MAX_CHUNK_LINES: Final = 1000
CREATE_FIELDS: Final = ("product_key", "mac", "name", "passcode")


class ImportChunk(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /console/devices/import.json``: lines of the CSV from line ``first_line`` on."""

    product_key: str
    lines: list[str]
    first_line: int = 1


def _page_number(raw: str | None) -> int:
    try:
        return max(1, min(10_000, int(raw or "1")))
    except ValueError:
        return 1


async def _devices_page(
    request: AnyRequest,
    status_code: int = 200,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    import_report: ImportReport | None = None,
    import_errors: dict[str, str] | None = None,
) -> Response[Any]:
    query = request.query_params.get("q", "")
    product_key = request.query_params.get("product_key", "")
    number = _page_number(request.query_params.get("page"))
    found = await console(request).search_devices(
        query[:100], product_key or None, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
    )
    return render(
        request,
        "devices.html",
        status_code,
        nav="devices",
        q=query,
        product_key=product_key,
        page_number=number,
        pages=max(1, -(-found.total // PAGE_SIZE)),
        found=found,
        products=await services(request).products.list(),
        errors=errors or {},
        values=values or {},
        import_report=import_report,
        import_errors=import_errors or {},
        max_csv_mib=MAX_CSV_BYTES // (1024 * 1024),
    )


@get("/devices")
async def devices_page(request: AnyRequest) -> Response[Any]:
    """``?q=`` (part of a did, MAC or name), ``?product_key=``, ``?page=``."""
    return await _devices_page(request)


def _text(form: dict[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@post("/devices", status_code=201)
async def create_device(request: AnyRequest) -> Response[Any]:
    """Form ``product_key``, ``mac`` (Gizwits product) or ``name`` (data-template product),
    optional ``passcode``: the new device's did and passcode (or psk), shown this once."""
    form = await checked_form(request)
    values = {name: _text(form, name) for name in CREATE_FIELDS}
    devices = services(request).devices
    try:
        if not values["product_key"]:
            raise FormInvalid("product_key: choose a product")
        product = await services(request).products.get(values["product_key"])
        passcode = values["passcode"] or None
        if product.is_data_template:
            if not values["name"]:
                raise FormInvalid("name: a data-template product's devices are created by name")
            named = await devices.create_named(product.product_key, values["name"], None, passcode)
            return render(
                request,
                "device_created.html",
                201 if named.created else 200,
                nav="devices",
                did=named.did,
                created=named.created,
                mac="",
                name=named.device_name,
                passcode=named.passcode if named.created else None,
                psk=named.psk if named.created else None,
            )
        if not values["mac"]:
            raise FormInvalid("mac: enter the device's MAC (12 hex digits)")
        creds = await devices.create(product.product_key, values["mac"], passcode)
    except ProductKeyInvalid as exc:
        return await _devices_page(
            request, 400, errors={"product_key": exc.detail or exc.message}, values=values
        )
    except FormInvalid as exc:
        return await _devices_page(
            request, 400, errors=field_errors(exc, CREATE_FIELDS), values=values
        )
    return render(
        request,
        "device_created.html",
        201 if creds.created else 200,
        nav="devices",
        did=creds.did,
        created=creds.created,
        mac=creds.mac,
        name="",
        passcode=creds.passcode if creds.created else None,
        psk=None,
    )


def _csv_lines(data: bytes) -> list[str] | None:
    """The lines of an uploaded CSV; None when it is not text."""
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return text.splitlines()


@post("/devices/import", request_max_body_size=MAX_CSV_BYTES + UPLOAD_OVERHEAD, status_code=200)
async def import_devices(request: AnyRequest) -> Response[Any]:
    """Multipart ``file`` (a MAC, or a name, per line; optional header) and ``product_key``:
    the devices page with the import's result."""
    too_large = f"file: the file is larger than {MAX_CSV_BYTES // (1024 * 1024)} MiB"
    try:
        form = await checked_form(request)
    except RequestEntityTooLarge:
        return await _devices_page(request, 413, import_errors={"file": too_large})
    product_key = _text(form, "product_key")
    upload = form.get("file")
    if not product_key:
        return await _devices_page(
            request, 400, import_errors={"product_key": "product_key: choose a product"}
        )
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await _devices_page(request, 400, import_errors={"file": "file: choose a CSV file"})
    data = await upload.read()
    if len(data) > MAX_CSV_BYTES:
        return await _devices_page(request, 413, import_errors={"file": too_large})
    lines = _csv_lines(data)
    if lines is None:
        return await _devices_page(
            request,
            400,
            import_errors={
                "file": f"file: {upload.filename} is not a CSV text file (UTF-8, a MAC per line)"
            },
        )
    try:
        report = await console(request).import_devices(product_key, lines)
    except ProductKeyInvalid as exc:
        return await _devices_page(
            request, 400, import_errors={"product_key": exc.detail or exc.message}
        )
    return await _devices_page(request, import_report=report)


@post("/devices/import.json", opt=DATA, status_code=200)
async def import_devices_chunk(request: AnyRequest) -> Response[Any]:
    """JSON `ImportChunk` (header ``X-CSRF-Token``): ``{"created", "existing", "failed":
    [{"line", "error"}]}`` of these lines; 400 ``{"error", "field"}`` for a bad chunk."""
    check_csrf(request, None)
    try:
        chunk = msgspec.json.decode(await request.body(), type=ImportChunk)
    except msgspec.ValidationError as exc:
        return _bad_chunk(str(exc), "lines")
    except msgspec.DecodeError:
        return _bad_chunk("the body is not JSON", "lines")
    if len(chunk.lines) > MAX_CHUNK_LINES:
        return _bad_chunk(f"lines: at most {MAX_CHUNK_LINES} lines per request", "lines")
    if "\x00" in chunk.product_key:
        return _bad_chunk("product_key: must not contain NUL characters", "product_key")
    if any("\x00" in line for line in chunk.lines):
        return _bad_chunk("lines: must not contain NUL characters", "lines")
    if not 1 <= chunk.first_line <= 10_000_000:
        return _bad_chunk("first_line: must be 1 or more", "first_line")
    try:
        report = await console(request).import_devices(
            chunk.product_key, chunk.lines, chunk.first_line
        )
    except ProductKeyInvalid as exc:
        return _bad_chunk(exc.detail or exc.message, "product_key")
    return Response(
        {
            "created": report.created,
            "existing": report.existing,
            "failed": [{"line": failure.line, "error": failure.error} for failure in report.failed],
        },
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _bad_chunk(message: str, field: str) -> Response[Any]:
    return Response(
        {"error": message, "field": field}, status_code=400, media_type="application/json"
    )


# -- one device ----------------------------------------------------------------------------------


async def _device_page(
    request: AnyRequest,
    did: str,
    status_code: int = 200,
    *,
    errors: dict[str, str] | None = None,
    result: str | None = None,
    submitted: dict[str, Any] | None = None,
) -> Response[Any]:
    svc = console(request)
    device = await services(request).devices.get(did)
    points = await svc.data_points(device.product_key)
    live = await svc.live(did)
    span = request.query_params.get("range", "24h")
    if span not in CHART_RANGES:
        span = "24h"
    end = svc.clock.now()
    start = end - CHART_RANGES[span]
    charts = [
        {"name": series.name, **chart_svg_points(series, start, end)}
        for series in await svc.chart(did, points, span)
    ]
    return render(
        request,
        "device.html",
        status_code,
        nav="devices",
        device=device,
        points=points,
        live=live,
        live_updated_at=iso_utc(live.updated_at) if live.updated_at else "",
        command_values=_command_values(points, live, submitted),
        charts=charts,
        chart_width=CHART_WIDTH,
        chart_height=CHART_HEIGHT,
        span=span,
        spans=list(CHART_RANGES),
        frames=await svc.frames(did),
        errors=errors or {},
        result=result,
    )


def _command_values(
    points: list[DataPoint], live: LiveState, submitted: dict[str, Any] | None
) -> dict[str, Any]:
    """What each command field shows: what was just submitted, else the latest value."""
    values: dict[str, Any] = {}
    for point in points:
        if not point.writable:
            continue
        if submitted is not None:
            raw = submitted.get(point.name)
            values[point.name] = (raw is not None) if point.kind == "bool" else (raw or "")
        else:
            latest = live.values.get(point.name)
            values[point.name] = bool(latest) if point.kind == "bool" else latest
    return values


@get("/devices/{did:str}")
async def device_page(request: AnyRequest, did: str) -> Response[Any]:
    """``?range=1h|24h|7d``: the span of the charts."""
    return await _device_page(request, did)


def _state(live: LiveState, frames: list[FrameRow]) -> dict[str, Any]:
    return {
        "did": live.did,
        "online": live.online,
        "disabled": live.disabled,
        "updated_at": iso_utc(live.updated_at) if live.updated_at else None,
        "updated_at_text": when_text(live.updated_at),
        "values": {
            name: ("true" if value else "false") if isinstance(value, bool) else value
            for name, value in live.values.items()
        },
        "frames": [
            {
                "at": iso_utc(frame.at),
                "at_text": when_text(frame.at),
                "kind": frame.kind,
                "payload": frame.payload_hex,
                "detail": frame.detail,
            }
            for frame in frames
        ],
    }


@get("/devices/{did:str}/state", opt=DATA)
async def device_state(request: AnyRequest, did: str) -> Response[Any]:
    """The device's presence, latest values and newest frame log entries (the page polls it)."""
    svc = console(request)
    live = await svc.live(did)
    return Response(
        _state(live, await svc.frames(did)),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@post("/devices/{did:str}/command", status_code=200)
async def send_command(request: AnyRequest, did: str) -> Response[Any]:
    """The command form: one field per writable data point. With ``Accept: application/json``
    (the page's script) ``{"ok", "message", "errors": {field: message}}``, else the device page
    with the result or the messages next to the fields."""
    form = await checked_form(request)
    wants_json = "application/json" in request.headers.get("accept", "")
    svc = console(request)
    device = await services(request).devices.get(did)
    points = await svc.data_points(device.product_key)
    errors: dict[str, str] = {}
    status = 200
    try:
        await svc.send_command(did, points, {k: v for k, v in form.items() if isinstance(v, str)})
        message = "Command sent to the device."
    except CommandInvalid as exc:
        message = exc.detail or exc.message
        errors = {exc.field or "form": message}
        status = 400
    except (DeviceOffline, DeviceDisabled) as exc:
        message = exc.detail or exc.message
        errors = {"form": message}
        status = 409
    except IotCloudError as exc:
        message = exc.detail or exc.message
        errors = {"form": message}
        status = 400
    if wants_json:
        return Response(
            {"ok": not errors, "message": message, "errors": errors},
            status_code=status,
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
    return await _device_page(request, did, status, errors=errors, result=message, submitted=form)


@post("/devices/{did:str}/disable", status_code=303)
async def disable_device(request: AnyRequest, did: str) -> Response[Any]:
    await checked_form(request)
    await services(request).devices.set_disabled(did, True)
    return redirect(f"/console/devices/{did}?notice=device-disabled")


@post("/devices/{did:str}/enable", status_code=303)
async def enable_device(request: AnyRequest, did: str) -> Response[Any]:
    await checked_form(request)
    await services(request).devices.set_disabled(did, False)
    return redirect(f"/console/devices/{did}?notice=device-enabled")


ROUTES = [
    devices_page,
    create_device,
    import_devices,
    import_devices_chunk,
    device_page,
    device_state,
    send_command,
    disable_device,
    enable_device,
]
