"""``POST /app/control/{did}``: write data points or raw bytes to a bound device."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post

from iotcloud.api.gizwits.accounts import current_user, services
from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import DEVICE_ERRORS, Empty, declare, declared_body
from iotcloud.errors import FormInvalid

AnyRequest = Request[Any, Any, Any]


class ControlForm(msgspec.Struct, forbid_unknown_fields=True):
    attrs: dict[str, Any] | None = None
    raw: list[Any] | None = None


@declare(
    "Send a command",
    tag="gizwits devices",
    security=("app", "user"),
    body=ControlForm,
    responses={200: Empty},
    errors=DEVICE_ERRORS,
)
@post("/app/control/{did:str}", status_code=200)
async def control(request: AnyRequest, did: str) -> Response[bytes]:
    """``{"attrs": {name: display value}}`` or ``{"raw": [bytes]}`` -> ``{}`` once the command
    is handed to the broker for the online device."""
    _, user = await current_user(request)
    form = await declared_body(request, ControlForm)
    if (form.attrs is None) == (form.raw is None):
        raise FormInvalid("give exactly one of attrs and raw")
    control = services(request).control
    if form.attrs is not None:
        await control.write_attrs(user, did, form.attrs)
    else:
        assert form.raw is not None
        await control.write_raw(user, did, form.raw)
    return json_response({})


ROUTES = [control]
