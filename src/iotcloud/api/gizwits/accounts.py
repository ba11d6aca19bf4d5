"""``/app/users``, ``/app/login``, ``/app/logout``, ``/app/request_token``, verification codes and
password reset, as the Gizwits Open API defines them."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.status_codes import HTTP_204_NO_CONTENT

from iotcloud.api.gizwits.wire import (
    APP_AUTH,
    APP_ID,
    APP_TOKEN,
    USER_TOKEN,
    header,
    json_object,
    json_response,
)
from iotcloud.api.openapi.declare import (
    APP_ERRORS,
    Decorator,
    Empty,
    declare,
    declared_body,
    declared_form,
)
from iotcloud.domain.clock import iso_utc
from iotcloud.errors import FormInvalid
from iotcloud.notify.oauth import ThirdPartyIdentity
from iotcloud.services.accounts import CurrentUser, IssuedToken, UserChange
from iotcloud.services.apps import App
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def current_app(request: AnyRequest) -> App:
    """The app named by ``X-Gizwits-Application-Id`` (9003 when missing or unknown)."""
    return await services(request).apps.get(header(request, APP_ID) or "")


async def current_user(request: AnyRequest) -> tuple[App, CurrentUser]:
    app = await current_app(request)
    user = await services(request).accounts.authenticate(app, header(request, USER_TOKEN))
    return app, user


async def app_with_token(request: AnyRequest) -> App:
    """For SMS and captcha calls: the app plus a valid ``X-Gizwits-Application-Token``."""
    app = await current_app(request)
    await services(request).verification.check_app_token(app, header(request, APP_TOKEN))
    return app


class _Form(msgspec.Struct, forbid_unknown_fields=True):
    pass


class AnonymousForm(_Form):
    phone_id: str
    lang: str | None = None


class UsernameForm(_Form):
    username: str
    password: str
    lang: str | None = None


class EmailForm(_Form):
    email: str
    password: str
    lang: str | None = None


class PhoneForm(_Form):
    phone: str
    code: str
    password: str | None = None
    lang: str | None = None


class AuthData(_Form):
    src: str
    uid: str
    token: str
    token_secret: str | None = None


class ThirdPartyForm(_Form):
    authData: AuthData
    lang: str | None = None


class LoginForm(_Form):
    username: str
    password: str
    lang: str | None = None


class UserChangeForm(_Form):
    username: str | None = None
    password: str | None = None
    phone: str | None = None
    code: str | None = None
    old_pwd: str | None = None
    new_pwd: str | None = None
    email: str | None = None
    name: str | None = None
    gender: str | None = None
    birthday: str | None = None
    address: str | None = None
    lang: str | None = None
    remark: str | None = None


class CaptchaSmsForm(_Form):
    captcha_id: str
    captcha_code: str
    phone: str


class VerifySmsForm(_Form):
    phone: str
    sms_code: str


class SmsCodeForm(_Form):
    phone: str
    code: str | None = None


class EmailResetForm(_Form):
    email: str


class PhoneResetForm(_Form):
    phone: str
    code: str
    new_pwd: str


# -- answers ---------------------------------------------------------------------------------


class Issued(msgspec.Struct):
    uid: str
    token: str
    expire_at: int
    """Unix seconds"""


class Updated(msgspec.Struct):
    updatedAt: str


class Profile(msgspec.Struct):
    uid: str
    is_anonymous: bool
    username: str | None
    phone: str | None
    email: str | None
    name: str | None
    gender: str | None
    birthday: str | None
    address: str | None
    lang: str | None
    remark: str | None


class AppToken(msgspec.Struct):
    token: str
    expired_at: int


class Captcha(msgspec.Struct):
    captcha_url: str
    captcha_id: str


PNG = {"type": "string", "contentMediaType": "image/png"}
APP = ("app",)
USER = ("app", "user")
WITH_APP_TOKEN = ("app", "app_token")


def _declare(summary: str, security: tuple[str, ...], **kwargs: Any) -> Decorator:
    return declare(summary, tag="gizwits users", security=security, errors=APP_ERRORS, **kwargs)


def _issued(issued: IssuedToken, status_code: int) -> Response[bytes]:
    return json_response(
        {"uid": issued.uid, "token": issued.token, "expire_at": issued.expire_at}, status_code
    )


@_declare(
    "Sign up",
    APP,
    body=(AnonymousForm, UsernameForm, EmailForm, PhoneForm, ThirdPartyForm),
    responses={201: Issued},
)
@post("/app/users", status_code=201)
async def create_user(request: AnyRequest) -> Response[bytes]:
    """Sign up: anonymous (``phone_id``), username, e-mail, phone + code, or ``authData``."""
    app = await current_app(request)
    body = await json_object(request)
    accounts = services(request).accounts
    if "authData" in body:
        tp = declared_form(request, body, ThirdPartyForm)
        identity = ThirdPartyIdentity(
            src=tp.authData.src,
            uid=tp.authData.uid,
            token=tp.authData.token,
            token_secret=tp.authData.token_secret,
        )
        issued = await accounts.create_with_third_party(app, identity, tp.lang)
    elif "phone_id" in body:
        anon = declared_form(request, body, AnonymousForm)
        issued = await accounts.create_anonymous(app, anon.phone_id, anon.lang)
    elif "email" in body:
        em = declared_form(request, body, EmailForm)
        issued = await accounts.create_with_email(app, em.email, em.password, em.lang)
    elif "phone" in body:
        ph = declared_form(request, body, PhoneForm)
        issued = await accounts.create_with_phone(app, ph.phone, ph.code, ph.password, ph.lang)
    elif "username" in body:
        un = declared_form(request, body, UsernameForm)
        issued = await accounts.create_with_username(app, un.username, un.password, un.lang)
    else:
        raise FormInvalid(
            "body: send phone_id, username+password, email+password, phone+code or authData"
        )
    return _issued(issued, 201)


@_declare("Change the profile", USER, body=UserChangeForm, responses={200: Updated})
@put("/app/users")
async def update_user(request: AnyRequest) -> Response[bytes]:
    app, user = await current_user(request)
    form = await declared_body(request, UserChangeForm)
    profile = {
        name: value
        for name in ("name", "gender", "birthday", "address", "lang", "remark")
        if (value := getattr(form, name)) is not None
    }
    change = UserChange(
        username=form.username,
        password=form.password,
        phone=form.phone,
        code=form.code,
        old_pwd=form.old_pwd,
        new_pwd=form.new_pwd,
        email=form.email,
        profile=profile,
    )
    updated = await services(request).accounts.update(app, user, change)
    return json_response({"updatedAt": iso_utc(updated)})


@_declare("The caller's profile", USER, responses={200: Profile})
@get("/app/users")
async def get_user(request: AnyRequest) -> Response[bytes]:
    _, user = await current_user(request)
    return json_response(dataclasses.asdict(user.profile))


@_declare("Sign in", APP, body=LoginForm, responses={200: Issued})
@post("/app/login", status_code=200)
async def login(request: AnyRequest) -> Response[bytes]:
    """Sign in with a username, e-mail or phone in ``username``."""
    app = await current_app(request)
    form = await declared_body(request, LoginForm)
    issued = await services(request).accounts.login(app, form.username, form.password)
    return _issued(issued, 200)


@_declare("Sign out (the token ends)", USER, responses={204: None})
@delete("/app/logout", status_code=HTTP_204_NO_CONTENT)
async def logout(request: AnyRequest) -> None:
    _, user = await current_user(request)
    await services(request).accounts.logout(user)


@_declare("An app token for SMS and captcha calls", ("app", "app_auth"), responses={200: AppToken})
@post("/app/request_token", status_code=200)
async def request_token(request: AnyRequest) -> Response[bytes]:
    app = await current_app(request)
    token, expires = await services(request).verification.request_app_token(
        app, header(request, APP_AUTH) or ""
    )
    return json_response({"token": token, "expired_at": int(expires.timestamp())})


@_declare("A new captcha", WITH_APP_TOKEN, responses={200: Captcha})
@get("/app/verify/codes")
async def new_captcha(request: AnyRequest) -> Response[bytes]:
    app = await app_with_token(request)
    svc = services(request)
    captcha_id = await svc.verification.new_captcha(app)
    return json_response(
        {
            "captcha_url": f"{svc.settings.base_url}/app/verify/captcha/{captcha_id}",
            "captcha_id": captcha_id,
        }
    )


@_declare("A captcha's image", (), responses={200: PNG}, response_media={200: "image/png"})
@get("/app/verify/captcha/{captcha_id:str}")
async def captcha_image(request: AnyRequest, captcha_id: str) -> Response[bytes]:
    """The captcha PNG; public, since an ``<img>`` tag cannot send headers."""
    png = await services(request).verification.captcha_png(captcha_id)
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "no-store"})


@_declare(
    "Send an SMS code (captcha solved)", WITH_APP_TOKEN, body=CaptchaSmsForm, responses={201: Empty}
)
@post("/app/verify/codes", status_code=201)
async def send_sms_with_captcha(request: AnyRequest) -> Response[bytes]:
    app = await app_with_token(request)
    form = await declared_body(request, CaptchaSmsForm)
    await services(request).verification.send_code_with_captcha(
        app, form.captcha_id, form.captcha_code, form.phone
    )
    return json_response({}, 201)


@_declare("Check an SMS code", WITH_APP_TOKEN, body=VerifySmsForm, responses={200: Empty})
@put("/app/verify/codes")
async def verify_sms_code(request: AnyRequest) -> Response[bytes]:
    app = await app_with_token(request)
    form = await declared_body(request, VerifySmsForm)
    await services(request).verification.verify_code(app, form.phone, form.sms_code)
    return json_response({})


@_declare("Send or check an SMS code", WITH_APP_TOKEN, body=SmsCodeForm, responses={200: Empty})
@post("/app/sms_code", status_code=200)
async def sms_code(request: AnyRequest) -> Response[bytes]:
    """``{phone}`` sends a code; ``{phone, code}`` verifies (and consumes) one."""
    app = await app_with_token(request)
    form = await declared_body(request, SmsCodeForm)
    verification = services(request).verification
    if form.code is None:
        await verification.send_code(app, form.phone)
    else:
        await verification.verify_code(app, form.phone, form.code)
    return json_response({})


@_declare(
    "Reset a password",
    APP,
    body=(EmailResetForm, PhoneResetForm),
    responses={200: Empty},
)
@post("/app/reset_password", status_code=200)
async def reset_password(request: AnyRequest) -> Response[bytes]:
    """``{email}`` mails a reset link; ``{phone, code, new_pwd}`` resets at once."""
    app = await current_app(request)
    body = await json_object(request)
    resets = services(request).password_reset
    if "email" in body:
        em = declared_form(request, body, EmailResetForm)
        await resets.send_reset_link(app, em.email)
    elif "phone" in body:
        ph = declared_form(request, body, PhoneResetForm)
        await resets.reset_by_phone(app, ph.phone, ph.code, ph.new_pwd)
    else:
        raise FormInvalid("body: send email, or phone with code and new_pwd")
    return json_response({})


ROUTES = [
    create_user,
    update_user,
    get_user,
    login,
    logout,
    request_token,
    new_captcha,
    captcha_image,
    send_sms_with_captcha,
    verify_sms_code,
    sms_code,
    reset_password,
]
