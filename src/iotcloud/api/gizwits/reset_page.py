"""The small HTML page behind a mailed password-reset link."""

from __future__ import annotations

import html
from typing import Any

import msgspec
from litestar import Request, Response, get, post

from iotcloud.api.openapi.declare import declare
from iotcloud.errors import IotCloudError
from iotcloud.services.password_reset import RESET_PATH
from iotcloud.services.registry import Services

_HEADERS = {
    # The token is in the URL: never leak it to other sites, never cache the page.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}"
    "input{display:block;width:100%;padding:.5rem;margin:.3rem 0 1rem;box-sizing:border-box}"
    "button{padding:.6rem 1.2rem}.error{color:#b00020}"
)


class NewPasswordForm(msgspec.Struct):
    new_pwd: str
    confirm: str


HTML = {"type": "string", "contentMediaType": "text/html"}
_PAGES = {200: HTML, 400: HTML}
_MEDIA = {200: "text/html", 400: "text/html"}


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    document = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(content=document, media_type="text/html", status_code=status, headers=_HEADERS)


def _form(email: str, error: str | None = None) -> str:
    problem = f"<p class=error>{html.escape(error)}</p>" if error else ""
    return (
        f"<p>New password for <b>{html.escape(email)}</b></p>{problem}"
        "<form method=post><label>New password<input type=password name=new_pwd "
        "autocomplete=new-password required></label><label>Repeat it<input type=password "
        "name=confirm autocomplete=new-password required></label>"
        "<button type=submit>Set password</button></form>"
    )


def _services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


@declare(
    "The password-reset page of a mailed link",
    tag="gizwits users",
    responses=_PAGES,
    response_media=_MEDIA,
    errors=(503,),
)
@get(RESET_PATH + "/{token:str}")
async def reset_form(request: Request[Any, Any, Any], token: str) -> Response[str]:
    try:
        email = await _services(request).password_reset.check_link(token)
    except IotCloudError as exc:
        return _page("Link not valid", f"<p>{html.escape(exc.detail or exc.message)}</p>", 400)
    return _page("Choose a new password", _form(email))


@declare(
    "Set the new password from the reset page",
    tag="gizwits users",
    body=NewPasswordForm,
    body_media="application/x-www-form-urlencoded",
    responses=_PAGES,
    response_media=_MEDIA,
    errors=(503,),
)
@post(RESET_PATH + "/{token:str}", status_code=200)
async def reset_submit(request: Request[Any, Any, Any], token: str) -> Response[str]:
    resets = _services(request).password_reset
    try:
        email = await resets.check_link(token)
    except IotCloudError as exc:
        return _page("Link not valid", f"<p>{html.escape(exc.detail or exc.message)}</p>", 400)
    form = await request.form()
    new_pwd = str(form.get("new_pwd", ""))
    if new_pwd != str(form.get("confirm", "")):
        return _page("Choose a new password", _form(email, "The two passwords differ."), 400)
    try:
        await resets.reset_with_link(token, new_pwd)
    except IotCloudError as exc:
        return _page("Choose a new password", _form(email, exc.detail or exc.message), 400)
    return _page("Password changed", "<p>Your password is changed. Sign in with it in the app.</p>")


ROUTES = [reset_form, reset_submit]
