"""``/console``: every console route behind the session guard, with the console's own error
pages (a redirect to sign-in for pages, 401 JSON for data routes)."""

from __future__ import annotations

from typing import Any

from litestar import Response, Router
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from iotcloud.api.console import devices, pages, session
from iotcloud.api.console.auth import (
    AnyRequest,
    ConsoleClosed,
    RequestRefused,
    SignInRequired,
    console_guard,
    redirect,
)
from iotcloud.api.console.render import SECURITY_HEADERS, page
from iotcloud.errors import (
    AppIdInvalid,
    DeviceNotFound,
    IotCloudError,
    ProductKeyInvalid,
    ScheduleNotFound,
    UserNotFound,
)

_NOT_FOUND = (AppIdInvalid, DeviceNotFound, ProductKeyInvalid, ScheduleNotFound, UserNotFound)
"""What a console URL names and the database lacks: 404, whatever the API dialects answer."""


def _is_data(request: AnyRequest) -> bool:
    return bool(request.route_handler.opt.get("data"))


def _json(status: int, message: str, **extra: Any) -> Response[Any]:
    return Response(
        {"error": message, **extra},
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _sign_in_required(request: AnyRequest, exc: SignInRequired) -> Response[Any]:
    if exc.data or _is_data(request):
        return _json(401, "sign in to the console first", sign_in="/console/login")
    return redirect("/console/login")


def _closed(request: AnyRequest, _exc: ConsoleClosed) -> Response[Any]:
    message = "The console is disabled: set IOTCLOUD_ADMIN_TOKEN on the server to enable it."
    if _is_data(request):
        return _json(403, message)
    return page("disabled.html", 403, message=message)


def _refused(request: AnyRequest, exc: RequestRefused) -> Response[Any]:
    if _is_data(request):
        return _json(403, str(exc))
    return page("refused.html", 403, message=str(exc))


def _too_large(request: AnyRequest, _exc: RequestEntityTooLarge) -> Response[Any]:
    message = "file: the upload is too large"
    if _is_data(request):
        return _json(413, message)
    return page("refused.html", 413, message=message)


def _iot_error(request: AnyRequest, exc: IotCloudError) -> Response[Any]:
    message = exc.detail or exc.message
    if isinstance(exc, _NOT_FOUND):
        status = 404
    else:
        status = exc.http_status if exc.http_status >= 400 else 400
    if _is_data(request):
        return _json(status, message, code=exc.code)
    response = page("refused.html", status, message=message)
    response.headers.update(SECURITY_HEADERS)
    return response


ROUTER = Router(
    path="/console",
    route_handlers=[*session.ROUTES, *pages.ROUTES, *devices.ROUTES],
    guards=[console_guard],
    exception_handlers={
        SignInRequired: _sign_in_required,
        ConsoleClosed: _closed,
        RequestRefused: _refused,
        RequestEntityTooLarge: _too_large,
        IotCloudError: _iot_error,
    },
    include_in_schema=False,
)
