"""``/dev/devices``: device registration, provisioning and self-disabling, as GAgent speaks them.

Bodies are form-encoded both ways. GAgent finds its did with ``strstr(body, "did=")`` and reads
22 characters, and reads ``host=``, ``port=`` (the value must end with ``&``) and ``server_ts=``
from the provisioning answer. Errors use the Gizwits JSON shape (GAgent only looks at the status).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post

from iotcloud.api.gizwits.wire import form_fields, json_response, required_field
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]

TEXT = "text/plain"


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


@post("/dev/devices", status_code=201)
async def register_device(request: AnyRequest) -> Response[bytes]:
    """``passcode``, ``mac``, ``product_key`` -> 201 ``did=<did>``; the same MAC again gets the
    same did (with the new passcode)."""
    fields = await form_fields(request)
    did = await services(request).devices.register(
        required_field(fields, "product_key"),
        required_field(fields, "mac"),
        required_field(fields, "passcode"),
    )
    return Response(content=f"did={did}".encode(), status_code=201, media_type=TEXT)


@get("/dev/devices/{did:str}")
async def provision_device(request: AnyRequest, did: str) -> Response[bytes]:
    """200 ``host=<mqtt host>&port=<mqtt port>&server_ts=<unix seconds>&``."""
    where = await services(request).devices.provision(did)
    body = f"host={where.host}&port={where.port}&server_ts={where.server_ts}&"
    return Response(content=body.encode(), media_type=TEXT, headers={"Cache-Control": "no-store"})


@delete("/dev/devices", status_code=200)
async def disable_device(request: AnyRequest) -> Response[bytes]:
    """``did``, ``passcode`` -> 200 ``{}``: the device is disabled (until an operator enables
    it)."""
    fields = await form_fields(request)
    await services(request).devices.disable(
        required_field(fields, "did"), required_field(fields, "passcode")
    )
    return json_response({})


ROUTES = [register_device, provision_device, disable_device]
