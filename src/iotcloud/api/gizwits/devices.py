"""``/dev/devices``: device registration, provisioning and self-disabling, as GAgent speaks them,
and the encrypted variants ``/dev/{product_key}/device``.

Bodies are form-encoded both ways. GAgent finds its did with ``strstr(body, "did=")`` and reads
22 characters, and reads ``host=``, ``port=`` (the value must end with ``&``) and ``server_ts=``
from the provisioning answer. The encrypted calls carry and answer the lower-case hex of the
AES-128-ECB cipher of the same text, keyed with the product secret (``domain/registration.py``).
Which calls a product accepts is its registration policy. Errors use the Gizwits JSON shape
(GAgent only looks at the status).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, delete, get, post

from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import Decorator, Empty, declare, declared_fields
from iotcloud.errors import FormInvalid
from iotcloud.services.devices import provisioning_body
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]

TEXT = "text/plain"
_FORM: Final = "application/x-www-form-urlencoded"
_ERRORS: Final = (400, 403, 404, 429, 503)


class RegisterForm(msgspec.Struct):
    product_key: str
    mac: str
    passcode: str


class EncryptedForm(msgspec.Struct):
    data: str
    """hex(AES-128-ECB(``mac=..&passcode=..&type=normal``)) keyed with the product secret"""


class EncryptedDidQuery(msgspec.Struct):
    did: str
    """hex(AES-128-ECB(did)) keyed with the product secret"""


class DisableForm(msgspec.Struct):
    did: str
    passcode: str


def _text(pattern: str, description: str) -> dict[str, str]:
    return {"type": "string", "pattern": pattern, "description": description}


def _declare(summary: str, status: int, answer: Any, **kwargs: Any) -> Decorator:
    media = {} if answer is Empty else {status: TEXT}
    return declare(
        summary,
        tag="gizwits device",
        responses={status: answer},
        response_media=media,
        errors=_ERRORS,
        body_media=_FORM,
        **kwargs,
    )


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


@_declare("Register a device", 201, _text("^did=", "did=<did>"), body=RegisterForm)
@post("/dev/devices", status_code=201)
async def register_device(request: AnyRequest) -> Response[bytes]:
    """``passcode``, ``mac``, ``product_key`` -> 201 ``did=<did>``; the same MAC again gets the
    same did (with the new passcode)."""
    form = await declared_fields(request, RegisterForm)
    did = await services(request).devices.register(
        form.product_key,
        form.mac,
        form.passcode,
        peer=_peer(request),
    )
    return Response(content=f"did={did}".encode(), status_code=201, media_type=TEXT)


@_declare(
    "Register a device, encrypted",
    201,
    _text("^[0-9a-f]*$", "hex(AES(did=<did>))"),
    body=EncryptedForm,
)
@post("/dev/{product_key:str}/device", status_code=201)
async def register_device_encrypted(request: AnyRequest, product_key: str) -> Response[bytes]:
    """``data=hex(AES(mac=..&passcode=..&type=normal))`` -> 201 ``hex(AES(did=<did>))``."""
    form = await declared_fields(request, EncryptedForm)
    answer = await services(request).devices.register_encrypted(
        product_key, form.data, peer=_peer(request)
    )
    return Response(content=answer.encode(), status_code=201, media_type=TEXT)


@_declare(
    "Provision a device, encrypted",
    200,
    _text("^[0-9a-f]*$", "hex(AES(host=..&port=..&server_ts=..&))"),
    query=EncryptedDidQuery,
)
@get("/dev/{product_key:str}/device")
async def provision_device_encrypted(request: AnyRequest, product_key: str) -> Response[bytes]:
    """``?did=hex(AES(did))`` -> 200 ``hex(AES(host=..&port=..&server_ts=..&))``."""
    did = request.query_params.get("did")
    if not did:
        raise FormInvalid("did: is required (the hex of the encrypted did)")
    answer = await services(request).devices.provision_encrypted(product_key, did)
    return Response(content=answer.encode(), media_type=TEXT, headers={"Cache-Control": "no-store"})


@_declare(
    "Provision a device",
    200,
    _text("^host=.*&port=[0-9]+&server_ts=[0-9]+&$", "host=..&port=..&server_ts=..&"),
)
@get("/dev/devices/{did:str}")
async def provision_device(request: AnyRequest, did: str) -> Response[bytes]:
    """200 ``host=<mqtt host>&port=<mqtt port>&server_ts=<unix seconds>&``."""
    where = await services(request).devices.provision(did, peer=_peer(request))
    body = provisioning_body(where)
    return Response(content=body.encode(), media_type=TEXT, headers={"Cache-Control": "no-store"})


@_declare("A device disables itself", 200, Empty, body=DisableForm)
@delete("/dev/devices", status_code=200)
async def disable_device(request: AnyRequest) -> Response[bytes]:
    """``did``, ``passcode`` -> 200 ``{}``: the device is disabled (until an operator enables
    it)."""
    form = await declared_fields(request, DisableForm)
    await services(request).devices.disable(form.did, form.passcode, peer=_peer(request))
    return json_response({})


def _peer(request: AnyRequest) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else None


ROUTES = [
    register_device,
    register_device_encrypted,
    provision_device,
    provision_device_encrypted,
    disable_device,
]
