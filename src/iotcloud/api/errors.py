"""Every failure in the dialect's error shape: never a framework page, never a bare 500."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_405_METHOD_NOT_ALLOWED

from iotcloud.api.gizwits.wire import error_body, json_response
from iotcloud.errors import (
    FormInvalid,
    IotCloudError,
    OperatorAuthFailed,
    ServerError,
    Throttled,
)

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]


def render_iotcloud_error(request: AnyRequest, exc: IotCloudError) -> Response[bytes]:
    headers: dict[str, str] | None = None
    if isinstance(exc, Throttled):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, OperatorAuthFailed) and exc.http_status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="iotcloud operator API"'}
    if exc.http_status >= 500:  # raised on purpose: the raiser logged the cause already
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return json_response(error_body(exc), exc.http_status, headers)


def render_http_error(request: AnyRequest, exc: HTTPException) -> Response[bytes]:
    """Routing and framework-level errors, in the Gizwits shape with a detail naming them."""
    status = exc.status_code
    if isinstance(exc, NotFoundException) and status == 404:
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif status == HTTP_405_METHOD_NOT_ALLOWED:
        detail = f"{request.method} is not allowed on {request.url.path}"
    elif status == 413:
        detail = "body: too large"
    elif isinstance(exc, ValidationException):
        detail = f"request: {exc.detail}"
    else:
        detail = str(exc.detail)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
        return json_response(error_body(ServerError(detail)), status)
    allow = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), None)
    headers = {"Allow": allow} if allow else None
    return json_response(error_body(FormInvalid(detail)), status, headers)


def render_unexpected(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.exception("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return json_response(error_body(ServerError("internal error; it has been logged")), 500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    IotCloudError: render_iotcloud_error,
    HTTPException: render_http_error,
    Exception: render_unexpected,
}
