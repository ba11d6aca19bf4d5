"""``GET /app/devdata/{did}/latest``: the last values a device reported."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from iotcloud.api.gizwits.accounts import current_app, services
from iotcloud.api.gizwits.wire import json_response

AnyRequest = Request[Any, Any, Any]


@get("/app/devdata/{did:str}/latest")
async def latest(request: AnyRequest, did: str) -> Response[bytes]:
    """Needs only ``X-Gizwits-Application-Id`` (as the Open API's swagger says).

    ``updated_at`` is Unix seconds (0 before the first report); ``attr`` holds display values:
    enums as labels, bools as true/false, numbers scaled, binary as hex.
    """
    await current_app(request)
    state = await services(request).telemetry.latest(did)
    updated = int(state.updated_at.timestamp()) if state.updated_at else 0
    return json_response({"did": state.did, "updated_at": updated, "attr": state.attrs})


ROUTES = [latest]
