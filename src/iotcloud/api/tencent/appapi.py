"""``POST /api/exploreropen/appapi``: the signed Tencent app API for users not signed in yet
(spec §1.1-1.4): sign-up, sign-in and password reset with verification codes by SMS or e-mail.

The JSON body carries the common parameters ``Action``, ``RequestId`` (echoed on every answer),
``AppKey`` (an iotcloud appid), ``Timestamp`` (Unix seconds), ``Nonce`` (a positive integer)
and ``Signature`` (`signing.sign` with the app's secret over every other top-level parameter),
and the Action's own parameters beside them. Checks run in this order: body, ``RequestId``,
``Action`` (``InvalidAction`` when unknown), ``AppKey``, ``Timestamp`` (at most
``IOTCLOUD_TENCENT_SIGNATURE_WINDOW`` seconds from the server's clock), ``Signature``,
``Nonce`` (spent once the signature passed: a signed request is accepted once, whatever its
Action then answers), then the Action's parameters -- all of them before anything is written.

Users are the app's users on the Gizwits side too (one user store per app): a token issued
here is an ordinary user token, good for ``tokenapi`` and the Gizwits API alike. A phone is
stored as Gizwits apps send it (see `stored_phone`), so the same user is found from both APIs.
Codes go through the server's SMS and mail senders.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from litestar import Request, Response, post

from iotcloud.api.openapi.declare import declare
from iotcloud.api.tencent.errors import answer, read_call
from iotcloud.api.tencent.params import (
    APPAPI_PARAMS,
    DeclaredParams,
    SignedCommon,
    success_schema,
)
from iotcloud.api.tencent.signing import signature_matches, within_window
from iotcloud.api.tencent.users import HOME_COUNTRY_CODE
from iotcloud.api.tencent.wire import (
    AppKeyUnknown,
    AppSignatureInvalid,
    AppTimestampInvalid,
    PhoneNumberInvalid,
    RequiredParamMissing,
    required,
    required_str,
)
from iotcloud.domain.accounts import FieldInvalid, check_email, check_password, check_phone
from iotcloud.errors import AppIdInvalid, FormInvalid
from iotcloud.services.apps import App
from iotcloud.services.registry import Services

__all__ = ["ACTIONS", "CODE_PURPOSES", "NONCE_MAX_DIGITS", "appapi", "stored_phone"]

AnyRequest = Request[Any, Any, Any]

#: ``Type`` of a code request -> (purpose the message carries, whether a user must have the
#: phone/e-mail: True for sign-in and reset, False for sign-up).
CODE_PURPOSES: Final[Mapping[str, tuple[str, bool]]] = {
    "register": ("register", False),
    "login": ("login", True),
    "resetpass": ("reset_password", True),
}
#: ``api_nonces.nonce`` holds the decimal text of a Nonce.
NONCE_MAX_DIGITS: Final = 32
_COUNTRY_CODE = re.compile(r"\+?([0-9]{1,4})")
_NATIONAL_NUMBER = re.compile(r"[0-9]{4,17}")


@dataclass(frozen=True)
class SignedCall:
    """One Action call whose signature passed: the app that signed it and the body's
    parameters (common ones included; unknown ones are ignored)."""

    services: Services
    app: App
    params: Mapping[str, Any]


SignedAction = Callable[[SignedCall], Awaitable[Mapping[str, Any]]]


# -- parameters ------------------------------------------------------------------------------


def stored_phone(country_code: str, number: str) -> str:
    """The phone as the user store keeps it, given Tencent's ``CountryCode`` and
    ``PhoneNumber``: a Chinese number (``86``) bare, as Gizwits apps send it, any other as
    ``+{CountryCode}{PhoneNumber}`` (the Gizwits form of a foreign number). Raises
    `PhoneNumberInvalid` naming the parameter at fault."""
    code = _COUNTRY_CODE.fullmatch(country_code.strip())
    if code is None:
        raise PhoneNumberInvalid("CountryCode: must be 1 to 4 digits, such as 86")
    if not _NATIONAL_NUMBER.fullmatch(number):
        raise PhoneNumberInvalid("PhoneNumber: must be 4 to 17 digits, without the country code")
    digits = code.group(1)
    phone = number if digits == HOME_COUNTRY_CODE else f"+{digits}{number}"
    try:
        return check_phone(phone, "PhoneNumber")
    except FieldInvalid as exc:
        raise PhoneNumberInvalid(str(exc)) from exc


def _phone(params: Mapping[str, Any]) -> str:
    return stored_phone(required_str(params, "CountryCode"), required_str(params, "PhoneNumber"))


def _email(params: Mapping[str, Any]) -> str:
    return _checked(check_email, required_str(params, "Email"), "Email")


def _new_password(call: SignedCall) -> str:
    minimum = call.services.settings.password_min_length
    password = required_str(call.params, "Password")
    return _checked(lambda v, f: check_password(v, minimum, f), password, "Password")


def _code(params: Mapping[str, Any]) -> str:
    code = required_str(params, "VerificationCode").strip()
    if not code:
        raise FormInvalid("VerificationCode: must not be empty")
    return code


def _purpose(params: Mapping[str, Any]) -> tuple[str, bool]:
    kind = required_str(params, "Type")
    found = CODE_PURPOSES.get(kind)
    if found is None:
        raise FormInvalid(f"Type: must be one of {', '.join(CODE_PURPOSES)}, not {kind!r}")
    return found


def _checked(rule: Callable[[str, str], str], value: str, name: str) -> str:
    try:
        return rule(value, name)
    except FieldInvalid as exc:
        raise FormInvalid(str(exc)) from exc


def _identity(params: Mapping[str, Any]) -> tuple[str, str]:
    """``("phone", stored phone)`` or ``("email", address)`` of ``AppGetToken``: by ``Type``
    when sent, else by which of ``Email`` and ``PhoneNumber`` is there."""
    kind = params.get("Type")
    if kind is None:
        kind = "email" if params.get("Email") is not None else "phone"
        if kind == "phone" and params.get("PhoneNumber") is None:
            raise RequiredParamMissing("PhoneNumber: is required (or Email)")
    if kind == "email":
        return "email", _email(params)
    if kind == "phone":
        return "phone", _phone(params)
    raise FormInvalid(f"Type: must be phone or email, not {kind!r}")


# -- actions ---------------------------------------------------------------------------------


async def get_token(call: SignedCall) -> Mapping[str, Any]:
    """``AppGetToken`` -> ``{"Data": {"Token", "ExpireAt"}}`` (Unix seconds): sign in with
    ``Password``, or with ``VerificationCode`` (a code of Type ``login``, used up)."""
    field, value = _identity(call.params)
    accounts = call.services.accounts
    if call.params.get("Password") is not None:
        password = required_str(call.params, "Password")
        issued = await accounts.sign_in(call.app, field, value, password)
    elif call.params.get("VerificationCode") is not None:
        issued = await accounts.sign_in_with_code(call.app, field, value, _code(call.params))
    else:
        raise RequiredParamMissing("Password: is required (or VerificationCode)")
    return {"Data": {"Token": issued.token, "ExpireAt": issued.expire_at}}


async def send_phone_code(call: SignedCall) -> Mapping[str, Any]:
    """``AppSendVerificationCode`` -> ``{}``: an SMS code for ``Type`` register (the phone
    must be free), login or resetpass (a user must have it)."""
    phone = _phone(call.params)
    purpose, registered = _purpose(call.params)
    await call.services.verification.send_code(call.app, phone, purpose, registered=registered)
    return {}


async def check_phone_code(call: SignedCall) -> Mapping[str, Any]:
    """``AppCheckVerificationCode`` -> ``{}`` when the code is right; it stays usable."""
    phone = _phone(call.params)
    await call.services.verification.check_code(call.app, phone, _code(call.params))
    return {}


async def create_phone_user(call: SignedCall) -> Mapping[str, Any]:
    """``AppCreateCellphoneUser`` -> ``{"Data": {"UserID"}}``: phone, password and the code
    sent to the phone (used up)."""
    phone = _phone(call.params)
    password = _new_password(call)
    code = _code(call.params)
    uid = await call.services.accounts.register_with_code(call.app, "phone", phone, code, password)
    return {"Data": {"UserID": uid}}


async def send_email_code(call: SignedCall) -> Mapping[str, Any]:
    """``AppSendEmailVerificationCode`` -> ``{}``: a mailed code, ``Type`` as for SMS."""
    email = _email(call.params)
    purpose, registered = _purpose(call.params)
    await call.services.verification.send_email_code(
        call.app, email, purpose, registered=registered
    )
    return {}


async def check_email_code(call: SignedCall) -> Mapping[str, Any]:
    """``AppCheckEmailVerificationCode`` -> ``{}`` when the code is right; it stays usable."""
    email = _email(call.params)
    await call.services.verification.check_email_code(call.app, email, _code(call.params))
    return {}


async def create_email_user(call: SignedCall) -> Mapping[str, Any]:
    """``AppCreateEmailUser`` -> ``{"Data": {"UserID"}}``: e-mail, password and the code
    mailed to it (used up)."""
    email = _email(call.params)
    password = _new_password(call)
    code = _code(call.params)
    uid = await call.services.accounts.register_with_code(call.app, "email", email, code, password)
    return {"Data": {"UserID": uid}}


async def reset_by_phone(call: SignedCall) -> Mapping[str, Any]:
    """``AppResetPasswordByCellphone`` -> ``{}``: the new ``Password`` after the code sent to
    the phone; every session of the user ends."""
    phone = _phone(call.params)
    password = _new_password(call)
    code = _code(call.params)
    await call.services.password_reset.reset_with_code(call.app, "phone", phone, code, password)
    return {}


async def reset_by_email(call: SignedCall) -> Mapping[str, Any]:
    """``AppResetPasswordByEmail`` -> ``{}``: as by phone, with a mailed code."""
    email = _email(call.params)
    password = _new_password(call)
    code = _code(call.params)
    await call.services.password_reset.reset_with_code(call.app, "email", email, code, password)
    return {}


ACTIONS: Final[Mapping[str, SignedAction]] = {
    "AppGetToken": get_token,
    "AppSendVerificationCode": send_phone_code,
    "AppCheckVerificationCode": check_phone_code,
    "AppCreateCellphoneUser": create_phone_user,
    "AppSendEmailVerificationCode": send_email_code,
    "AppCheckEmailVerificationCode": check_email_code,
    "AppCreateEmailUser": create_email_user,
    "AppResetPasswordByCellphone": reset_by_phone,
    "AppResetPasswordByEmail": reset_by_email,
}


# -- endpoint --------------------------------------------------------------------------------


@declare(
    "Tencent app API for signing up and in, signed by the app (Action in the body)",
    tag="tencent",
    dialect="tencent",
    body=SignedCommon,
    actions=APPAPI_PARAMS,
    responses={200: success_schema()},
    errors=(413,),
)
@post("/appapi", status_code=200)
async def appapi(request: AnyRequest) -> Response[bytes]:
    """Check the signed call, then dispatch its ``Action``; the result becomes ``Response``
    with ``RequestId``."""
    params, request_id, action = await read_call(request, ACTIONS, "appapi")
    services: Services = request.app.state.services
    app = await _signed_app(services, params)
    declared = DeclaredParams(params, APPAPI_PARAMS[params["Action"]], SignedCommon)
    content = await action(SignedCall(services, app, declared))
    return answer(request, request_id, content)


async def _signed_app(services: Services, params: Mapping[str, Any]) -> App:
    """The app of a correctly signed, fresh, first-seen call; spends its nonce."""
    app_key = required_str(params, "AppKey")
    try:
        app = await services.apps.get(app_key) if app_key else None
    except AppIdInvalid:
        app = None
    if app is None:
        raise AppKeyUnknown(f"AppKey: no app has AppKey {app_key!r}")
    timestamp = _integer(required(params, "Timestamp"), "Timestamp")
    window = services.settings.tencent_signature_window
    now = services.verification.clock.now().timestamp()
    if not within_window(timestamp, now, window):
        raise AppTimestampInvalid(
            f"Timestamp: {timestamp} is more than {window} s from the server's time {int(now)}"
        )
    required_str(params, "Signature")
    if not signature_matches(await services.apps.secret(app), params):
        raise AppSignatureInvalid(
            "Signature: does not match the parameters signed with the AppSecret of this AppKey"
        )
    nonce = _integer(required(params, "Nonce"), "Nonce")
    if nonce < 1 or len(str(nonce)) > NONCE_MAX_DIGITS:
        raise FormInvalid(f"Nonce: must be a positive integer of at most {NONCE_MAX_DIGITS} digits")
    await services.verification.use_nonce(app, timestamp, str(nonce))
    return app


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormInvalid(f"{name}: must be an integer")
    return value
