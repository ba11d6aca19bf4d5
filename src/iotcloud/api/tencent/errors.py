"""Failures under ``/api/exploreropen`` in the Tencent envelope: never a framework page, never
the Gizwits shape.

Errors an Action raises answer HTTP 200, as Tencent does (its official clients read the body
only after a 200). Requests that never reach an Action keep their HTTP status, like the
Gizwits side: an unknown path 404 and a wrong method 405 (``InvalidAction``, with ``Allow``),
an oversized body 413 (``InvalidParameterValue``).

Successes and failures alike are shaped by the server's ``IOTCLOUD_TENCENT_ENVELOPE``
(`envelope_of`): `answer` renders a success, `render_tencent_error` a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException
from litestar.status_codes import HTTP_405_METHOD_NOT_ALLOWED

from iotcloud.api.errors import CRASHES, body_too_large
from iotcloud.api.tencent.wire import (
    INTERNAL_ERROR,
    ActionUnknown,
    Envelope,
    error_body,
    error_number,
    json_response,
    new_request_id,
    parse_body,
    read_request_id,
    required_str,
    success_body,
    tencent_error,
)
from iotcloud.errors import DatabaseUnavailable, IotCloudError, Throttled

__all__ = [
    "PATH_PREFIX",
    "answer",
    "envelope_of",
    "read_call",
    "remember_request_id",
    "render_tencent_error",
    "with_tencent_errors",
]

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]
ExceptionHandler = Callable[[AnyRequest, Any], Response[Any]]

PATH_PREFIX: Final = "/api/exploreropen"
_REQUEST_ID: Final = "tencent_request_id"
A = TypeVar("A")


def remember_request_id(request: AnyRequest, request_id: str) -> None:
    """Keep the RequestId of ``request`` for the error answer, should one be needed."""
    request.scope.setdefault("state", {})[_REQUEST_ID] = request_id


async def read_call(
    request: AnyRequest, actions: Mapping[str, A], api: str
) -> tuple[Mapping[str, Any], str, A]:
    """The common part of every call to ``api`` (``"tokenapi"``, ``"appapi"``): the body's
    parameters, its ``RequestId`` (remembered for the answer, an error's included) and the
    handler of its ``Action`` in ``actions``.

    Checks in this order: the body (`JsonInvalid`, `FormInvalid`), ``RequestId``, ``Action``
    (``ErrorRequiredParamNotFound`` when missing, ``InvalidAction`` when unknown).
    """
    params = parse_body(await request.body())
    request_id, problem = read_request_id(params)
    remember_request_id(request, request_id)
    if problem is not None:
        raise problem
    name = required_str(params, "Action")
    action = actions.get(name)
    if action is None:
        raise ActionUnknown(f"Action: {name!r} is not an action of {api}")
    return params, request_id, action


def envelope_of(request: AnyRequest) -> Envelope:
    """The envelope the server answers in (``response`` before its services are up)."""
    services = getattr(request.app.state, "services", None)
    envelope = getattr(getattr(services, "settings", None), "tencent_envelope", "response")
    return "sdk" if envelope == "sdk" else "response"


def answer(request: AnyRequest, request_id: str, content: Mapping[str, Any]) -> Response[bytes]:
    """HTTP 200 with the Action's ``content`` and ``RequestId`` in the server's envelope."""
    return json_response(success_body(request_id, content, envelope_of(request)))


def render_tencent_error(request: AnyRequest, exc: Exception) -> Response[bytes]:
    """The envelope for ``exc``, with the request's RequestId (a new one if it had none yet)."""
    request_id = request.scope.get("state", {}).get(_REQUEST_ID) or new_request_id()
    status, headers = 200, None
    if isinstance(exc, HTTPException):
        code, message, status, headers = _http_error(request, exc)
    else:
        code, message = tencent_error(exc)
        if isinstance(exc, Throttled | DatabaseUnavailable):
            headers = {"Retry-After": str(exc.retry_after)}
    if code == INTERNAL_ERROR and not isinstance(exc, DatabaseUnavailable):  # logged once
        what = f"{request.method} {request.url.path} (RequestId {request_id})"
        if isinstance(exc, IotCloudError | HTTPException):  # raised on purpose, cause logged
            log.error("%s failed: %s", what, message)
        else:
            CRASHES.report(what, exc)
    body = error_body(request_id, code, message, envelope_of(request), error_number(exc, code))
    return json_response(body, status, headers)


def _http_error(
    request: AnyRequest, exc: HTTPException
) -> tuple[str, str, int, dict[str, str] | None]:
    status = exc.status_code
    if status >= 500:
        return INTERNAL_ERROR, "internal error; it has been logged", 200, None
    if isinstance(exc, NotFoundException) and status == 404:
        return "InvalidAction", f"no such endpoint: {request.method} {request.url.path}", 404, None
    if status == HTTP_405_METHOD_NOT_ALLOWED:
        allow = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), None)
        message = f"{request.method} is not allowed on {request.url.path}; use POST"
        return "InvalidAction", message, status, {"Allow": allow} if allow else None
    if status == 413:
        return "InvalidParameterValue", body_too_large(request), status, None
    return "InvalidParameterValue", f"request: {exc.detail}", 200, None


def with_tencent_errors(handlers: Mapping[Any, ExceptionHandler]) -> dict[Any, ExceptionHandler]:
    """The app's exception ``handlers`` (which must include a catch-all for ``Exception``), each
    answering in the Tencent envelope instead for requests under `PATH_PREFIX`.

    Routing errors (unknown path, wrong method) are handled at the application layer, before any
    router is chosen, so the choice has to be made by path there.
    """

    def by_path(other: ExceptionHandler) -> ExceptionHandler:
        def handle(request: AnyRequest, exc: Any) -> Response[Any]:
            path = request.url.path
            if path == PATH_PREFIX or path.startswith(PATH_PREFIX + "/"):
                return render_tencent_error(request, exc)
            return other(request, exc)

        return handle

    if Exception not in handlers:
        raise ValueError("the app's handlers need a catch-all for Exception")
    return {cls: by_path(handler) for cls, handler in handlers.items()}
