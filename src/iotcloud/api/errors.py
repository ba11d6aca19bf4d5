"""Every failure in the dialect's error shape: never a framework page, never a bare 500.

An uncaught exception is a bug, and a request that triggers one can be repeated at will: its
traceback is logged at most once a minute per distinct error (`CrashLog`), so that a client
cannot fill the log by sending the same request in a loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import HTTP_405_METHOD_NOT_ALLOWED

from iotcloud.api.gizwits.wire import error_body, json_response
from iotcloud.errors import (
    DatabaseUnavailable,
    FormInvalid,
    IotCloudError,
    OperatorAuthFailed,
    ServerError,
    Throttled,
)

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]


@dataclass(slots=True)
class _Window:
    opened: float
    suppressed: int = 0


class CrashLog:
    """Logs uncaught exceptions to ``logger``: the first of each distinct error (its type and
    the innermost frame's file and line) in a ``window`` of seconds, as one summary line with
    its traceback; the others of that window are only counted, and the next record of that
    error says how many were left out, so none goes unnoticed.

    At most ``max_errors`` distinct errors are remembered (the least recently seen is
    forgotten), so memory stays bounded whatever the clients send.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float = 60.0,
        max_errors: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.window = window
        self.max_errors = max_errors
        self.clock = clock
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def report(self, what: str, exc: BaseException) -> bool:
        """Log that ``what`` (e.g. ``"POST /app/users"``) raised ``exc``, unless the same error
        was logged less than ``window`` seconds ago; returns whether it was logged."""
        key = (type(exc).__qualname__, where(exc))
        now = self.clock()
        seen = self._windows.get(key)
        if seen is not None:
            self._windows.move_to_end(key)
            if now - seen.opened < self.window:
                seen.suppressed += 1
                return False
        suppressed = seen.suppressed if seen is not None else 0
        self._windows[key] = _Window(now)
        if len(self._windows) > self.max_errors:
            self._windows.popitem(last=False)
        self.logger.error(
            "%s crashed: %s at %s%s",
            what,
            key[0],
            key[1],
            f" ({suppressed} more since it was last logged)" if suppressed else "",
            exc_info=exc,
        )
        return True


def where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc``'s traceback (``?`` without one)."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"


CRASHES: Final = CrashLog(log)
"""The process's log of uncaught exceptions, shared by both dialects' handlers."""


def render_iotcloud_error(request: AnyRequest, exc: IotCloudError) -> Response[bytes]:
    headers: dict[str, str] | None = None
    if isinstance(exc, Throttled | DatabaseUnavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, OperatorAuthFailed) and exc.http_status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="iotcloud operator API"'}
    if exc.http_status >= 500 and not isinstance(exc, DatabaseUnavailable):
        # raised on purpose: the raiser logged the cause already (an outage: once, not per
        # request)
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
        detail = body_too_large(request)
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


def body_too_large(request: AnyRequest) -> str:
    """The detail of a 413: the body is over the route's (or the app's) limit, named."""
    handler = request.scope.get("route_handler")
    limit = (
        handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
    )
    return f"body: larger than {limit} bytes" if limit else "body: too large"


def render_unexpected(request: AnyRequest, exc: Exception) -> Response[bytes]:
    CRASHES.report(f"{request.method} {request.url.path}", exc)
    return json_response(error_body(ServerError("internal error; it has been logged")), 500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    IotCloudError: render_iotcloud_error,
    HTTPException: render_http_error,
    Exception: render_unexpected,
}
