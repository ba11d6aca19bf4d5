"""Failures under ``/api/exploreropen`` in the Tencent envelope: never a framework page, never
the Gizwits shape.

Errors an Action raises answer HTTP 200, as Tencent does (its official clients read the body
only after a 200). Requests that never reach an Action keep their HTTP status, like the
Gizwits side: an unknown path 404 and a wrong method 405 (``InvalidAction``, with ``Allow``),
an oversized body 413 (``InvalidParameterValue``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException
from litestar.status_codes import HTTP_405_METHOD_NOT_ALLOWED

from iotcloud.api.tencent.wire import (
    INTERNAL_ERROR,
    error_body,
    json_response,
    new_request_id,
    tencent_error,
)
from iotcloud.errors import IotCloudError, Throttled

__all__ = ["PATH_PREFIX", "remember_request_id", "render_tencent_error", "with_tencent_errors"]

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]
ExceptionHandler = Callable[[AnyRequest, Any], Response[Any]]

PATH_PREFIX: Final = "/api/exploreropen"
_REQUEST_ID: Final = "tencent_request_id"


def remember_request_id(request: AnyRequest, request_id: str) -> None:
    """Keep the RequestId of ``request`` for the error answer, should one be needed."""
    request.scope.setdefault("state", {})[_REQUEST_ID] = request_id


def render_tencent_error(request: AnyRequest, exc: Exception) -> Response[bytes]:
    """The envelope for ``exc``, with the request's RequestId (a new one if it had none yet)."""
    request_id = request.scope.get("state", {}).get(_REQUEST_ID) or new_request_id()
    status, headers = 200, None
    if isinstance(exc, HTTPException):
        code, message, status, headers = _http_error(request, exc)
    else:
        code, message = tencent_error(exc)
        if isinstance(exc, Throttled):
            headers = {"Retry-After": str(exc.retry_after)}
    if code == INTERNAL_ERROR:  # an IotCloudError was raised on purpose, its cause logged
        traceback = None if isinstance(exc, IotCloudError | HTTPException) else exc
        log.error(
            "%s %s (RequestId %s) failed: %s",
            request.method,
            request.url.path,
            request_id,
            message,
            exc_info=traceback,
        )
    return json_response(error_body(request_id, code, message), status, headers)


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
        return "InvalidParameterValue", "body: too large", status, None
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
