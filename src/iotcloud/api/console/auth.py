"""Console sign-in: the session cookie, the guard every console route sits behind, CSRF and
Origin checks on state-changing requests, and the limit on wrong sign-in attempts.

The cookie (`COOKIE`) is HttpOnly, SameSite=Strict, ``Path=/console``, and Secure when the
console is served over TLS (the request's scheme, or an ``https`` ``IOTCLOUD_BASE_URL`` behind a
proxy). Without a live session an HTML route redirects (303) to ``/console/login`` and a data
route (JSON) answers 401. Every POST must carry the session's CSRF token, as the ``csrf`` form
field or the ``X-CSRF-Token`` header, and an ``Origin`` header, when sent, must be this
server's; otherwise 403. Tokens never travel in URLs.

Wrong operator tokens are limited per client address (`SignInLimiter`): a few in a row are
allowed, then every attempt from that address is refused (429, without checking the token)
until the allowance refills. The limit is per process: an attacker spreading guesses over
several processes gains a factor of their number, not an open door.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers.base import BaseRouteHandler

from iotcloud.api.client_address import client_address, trusted_proxies
from iotcloud.errors import FormInvalid
from iotcloud.services.console import ConsoleService, ConsoleSession
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]
AnyConnection = ASGIConnection[Any, Any, Any, Any]

COOKIE: Final = "iotcloud_console"
PATH: Final = "/console"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "x-csrf-token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """No live console session; ``data``: the route answers JSON (401) rather than a redirect."""

    def __init__(self, *, data: bool) -> None:
        super().__init__("sign in to the console first")
        self.data = data


class ConsoleClosed(Exception):
    """No operator token is configured: the console is disabled."""


class RequestRefused(Exception):
    """A state-changing request without this session's CSRF token, or from another origin."""


class SignInLimiter:
    """Wrong sign-in attempts per client address: ``allowed`` in a row, refilled at one per
    ``refill_seconds``; at most ``max_keys`` addresses are remembered (least recent forgotten)."""

    def __init__(
        self,
        allowed: int = 10,
        refill_seconds: float = 6.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        """Failures still counted against ``key`` now."""
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        level, stamp = entry
        return max(0.0, level - (now - stamp) / self.refill_seconds)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        level = self._level(key, self.clock())
        if level <= self.allowed - 1:
            return 0.0
        return (level - (self.allowed - 1)) * self.refill_seconds

    def failed(self, key: str) -> None:
        now = self.clock()
        self._failures[key] = (self._level(key, now) + 1.0, now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)


def services(connection: AnyConnection) -> Services:
    return connection.app.state.services  # type: ignore[no-any-return]


def console(connection: AnyConnection) -> ConsoleService:
    """The console service of the running app."""
    return services(connection).console


def limiter(connection: AnyConnection) -> SignInLimiter:
    state = connection.app.state
    found: SignInLimiter | None = state.get("console_limiter")
    if found is None:
        found = state["console_limiter"] = SignInLimiter()
    return found


def address(connection: AnyConnection) -> str:
    return client_address(
        connection.scope, trusted_proxies(services(connection).settings.trusted_proxies)
    )


async def console_guard(connection: AnyConnection, handler: BaseRouteHandler) -> None:
    """Admit a request only with a live session (routes marked ``public`` always); keeps the
    session in ``connection.state.console_session``."""
    _refuse_nul(connection.scope.get("path", ""), "path")
    for name, value in connection.query_params.items():
        _refuse_nul(value, name)
    if handler.opt.get("public"):
        return
    svc = console(connection)
    if not svc.enabled:
        raise ConsoleClosed
    session = await svc.session(connection.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired(data=bool(handler.opt.get("data")))
    connection.state.console_session = session
    if connection.scope.get("method", "GET") not in SAFE_METHODS:
        check_origin(connection)


def current(request: AnyRequest) -> ConsoleSession:
    """The session the guard admitted."""
    session: ConsoleSession = request.state.console_session
    return session


def check_origin(connection: AnyConnection) -> None:
    """Refuse a request whose ``Origin`` is not this server (the Host it was sent to, or
    ``IOTCLOUD_BASE_URL``)."""
    origin = connection.headers.get("origin")
    if origin is None:
        return
    host = connection.headers.get("host", "")
    allowed = {f"{connection.url.scheme}://{host}"}
    base = urlsplit(services(connection).settings.base_url)
    if base.scheme and base.netloc:
        allowed.add(f"{base.scheme}://{base.netloc}")
    if origin.rstrip("/") not in allowed:
        raise RequestRefused("this request came from another site (Origin)")


async def checked_form(request: AnyRequest) -> dict[str, Any]:
    """The posted form (text fields and uploads), once its CSRF token was checked."""
    form = await request.form()
    values: dict[str, Any] = {key: form.get(key) for key in form}
    check_csrf(request, values.get(CSRF_FIELD))
    for name, value in values.items():
        if isinstance(value, str):
            _refuse_nul(value, name)
    return values


def _refuse_nul(text: str, name: str) -> None:
    """No text with NUL characters reaches the database (PostgreSQL refuses them)."""
    if "\x00" in text:
        raise FormInvalid(f"{name}: must not contain NUL characters")


def check_csrf(request: AnyRequest, sent: Any) -> None:
    """Refuse unless ``sent`` (or the ``X-CSRF-Token`` header) is the session's CSRF token."""
    token = sent if isinstance(sent, str) and sent else request.headers.get(CSRF_HEADER, "")
    expected = current(request).csrf_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise RequestRefused("the form is stale or was not sent by the console (CSRF token)")


def secure(connection: AnyConnection) -> bool:
    return connection.url.scheme == "https" or services(connection).settings.base_url.startswith(
        "https:"
    )


def session_cookie(connection: AnyConnection, session: ConsoleSession) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=session.token,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=secure(connection),
        max_age=int((session.expires_at - session.created_at).total_seconds()),
    )


def cleared_cookie(connection: AnyConnection) -> Cookie:
    return Cookie(
        key=COOKIE,
        value="",
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=secure(connection),
        max_age=0,
    )


def redirect(location: str, status_code: int = 303) -> Response[str]:
    return Response(
        "", status_code=status_code, headers={"Location": location}, media_type="text/plain"
    )
