"""``POST /api/exploreropen/tokenapi``: the Tencent app API for signed-in users.

The JSON body carries the common parameters ``Action``, ``AccessToken`` (an iotcloud user
token, as ``POST /app/login`` issues; it names its own app) and ``RequestId`` (echoed; a UUID is
made up when absent), and the Action's own parameters beside them. Checks run in this order:
body, ``RequestId``, ``Action`` (``InvalidAction`` when unknown), ``AccessToken``, then the
Action's parameters. Answers are HTTP 200 ``{"Response": {...}}`` (see ``wire``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from litestar import Request, Response, Router, post

from iotcloud.api.openapi.declare import declare
from iotcloud.api.tencent import appapi, devices, families, timers, users
from iotcloud.api.tencent.actions import Action, Call
from iotcloud.api.tencent.errors import PATH_PREFIX, answer, read_call
from iotcloud.api.tencent.params import (
    TOKENAPI_PARAMS,
    DeclaredParams,
    TokenCommon,
    success_schema,
)
from iotcloud.errors import TokenExpired, TokenInvalid
from iotcloud.services.registry import Services

__all__ = ["ACTIONS", "ROUTER"]

AnyRequest = Request[Any, Any, Any]

ACTIONS: Final[Mapping[str, Action]] = {
    **timers.ACTIONS,
    **users.ACTIONS,
    **families.ACTIONS,
    **devices.ACTIONS,
}


@declare(
    "Tencent app API for signed-in users (Action in the body)",
    tag="tencent",
    dialect="tencent",
    body=TokenCommon,
    actions=TOKENAPI_PARAMS,
    responses={200: success_schema()},
    errors=(413,),
)
@post("/tokenapi", status_code=200)
async def tokenapi(request: AnyRequest) -> Response[bytes]:
    """Dispatch the body's ``Action``; its result becomes ``Response`` with ``RequestId``."""
    params, request_id, action = await read_call(request, ACTIONS, "tokenapi")
    token = params.get("AccessToken")
    if not isinstance(token, str) or not token:
        raise TokenInvalid("AccessToken: is required, a string")
    services: Services = request.app.state.services
    try:
        user = await services.accounts.authenticate_token(token)
    except TokenExpired as exc:
        raise TokenExpired(f"AccessToken: {exc.detail or exc.message}") from exc
    except TokenInvalid as exc:
        raise TokenInvalid(f"AccessToken: {exc.detail or exc.message}") from exc
    declared = DeclaredParams(params, TOKENAPI_PARAMS[params["Action"]], TokenCommon)
    content = await action(Call(services, user, declared))
    return answer(request, request_id, content)


ROUTER: Final = Router(path=PATH_PREFIX, route_handlers=[tokenapi, appapi.appapi])
"""Both tiers of the Tencent app API: ``/tokenapi`` here, the signed ``/appapi`` in `appapi`."""
