"""Signing in and out of the console, and its static assets (the only routes without a
session)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get, post

from iotcloud.api.console.auth import (
    COOKIE,
    AnyRequest,
    address,
    check_csrf,
    check_origin,
    cleared_cookie,
    console,
    current,
    limiter,
    redirect,
    session_cookie,
)
from iotcloud.api.console.render import STATIC_TYPES, page, static_asset
from iotcloud.errors import OperatorAuthFailed

PUBLIC = {"public": True}
_MAX_TOKEN_CHARS = 1024


@get("/login", opt=PUBLIC)
async def login_page(request: AnyRequest) -> Response[Any]:
    svc = console(request)
    if not svc.enabled:
        return page("disabled.html", 403, message=_DISABLED)
    if await svc.session(request.cookies.get(COOKIE)) is not None:
        return redirect("/console")
    return page("login.html", errors={})


_DISABLED = "The console is disabled: set IOTCLOUD_ADMIN_TOKEN on the server to enable it."


@post("/login", opt=PUBLIC, status_code=303)
async def login(request: AnyRequest) -> Response[Any]:
    """Form ``token``: the operator token. A session cookie and a redirect to the overview, or
    the sign-in page again with the reason (401; 429 after too many wrong tokens)."""
    svc = console(request)
    if not svc.enabled:
        return page("disabled.html", 403, message=_DISABLED)
    check_origin(request)
    form = await request.form()
    token = form.get("token")
    who = address(request)
    wait = limiter(request).wait(who)
    if wait > 0:
        return page(
            "login.html",
            429,
            errors={"form": f"too many wrong tokens; try again in {int(wait) + 1} s"},
        )
    if not isinstance(token, str) or not token.strip():
        return page("login.html", 400, errors={"token": "token: enter the operator token"})
    try:
        session = await svc.sign_in(token[:_MAX_TOKEN_CHARS], who)
    except OperatorAuthFailed as exc:
        limiter(request).failed(who)
        return page("login.html", 401, errors={"token": exc.detail or "wrong token"})
    response = redirect("/console")
    response.set_cookie(session_cookie(request, session))
    return response


@post("/logout", status_code=303)
async def logout(request: AnyRequest) -> Response[Any]:
    form = await request.form()
    check_csrf(request, form.get("csrf"))
    await console(request).sign_out(current(request).token)
    response = redirect("/console/login")
    response.set_cookie(cleared_cookie(request))
    return response


@get("/static/{name:str}", opt=PUBLIC)
async def static(name: str) -> Response[bytes]:
    body = static_asset(name)
    if body is None:
        return Response(b"not found", status_code=404, media_type="text/plain")
    return Response(
        body,
        media_type=STATIC_TYPES[name],
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


ROUTES = [login_page, login, logout, static]
