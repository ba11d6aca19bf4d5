"""Tencent app API wire shapes: the ``Response`` envelope, the one table from iotcloud errors
to Tencent ``Error.Code``\\ s, and strict readers for Action parameters.

Every answer, success or failure, is ``{"Response": {..., "RequestId"}}`` (spec §1.3, the
documented form): a success carries the Action's fields, a failure
``{"Error": {"Code", "Message"}}`` with ``Message`` naming the field or thing at fault.

``IOTCLOUD_TENCENT_ENVELOPE=sdk`` wraps the same content as Tencent's own app SDKs (Android,
iOS, Node) parse it: ``{"code": 0, "msg": "", "data": <Response content>}`` on success and
``{"code": <non-zero>, "msg": <Message>, "data": {"Error", "RequestId"}}`` on failure, so a
client that checks ``code`` and one that looks for ``data.Error`` both see the failure.
`success_body` and `error_body` are the only places either shape is built.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

import msgspec
from litestar import Response

from iotcloud.api.gizwits.wire import NUL_ESCAPE, refuse_nul
from iotcloud.codecs.jsonlimits import JsonRejected, decode_json
from iotcloud.domain.accounts import FieldInvalid
from iotcloud.errors import (
    AppIdInvalid,
    AttrInvalid,
    CodeExpired,
    CodeInvalid,
    DeviceDisabled,
    DeviceNoReply,
    DeviceNotBound,
    DeviceNotFound,
    DeviceOffline,
    DeviceSignatureInvalid,
    DeviceTimestampInvalid,
    EmailUnavailable,
    FamilyNotFound,
    FormInvalid,
    IotCloudError,
    LoginFailed,
    NonceReplayed,
    PhoneUnavailable,
    ProductKeyInvalid,
    ProductProtocolMismatch,
    ScheduleNotFound,
    ServerError,
    SignatureInvalid,
    Throttled,
    TimestampInvalid,
    TokenExpired,
    TokenInvalid,
    UserNotFound,
)

__all__ = [
    "ENVELOPES",
    "INTERNAL_ERROR",
    "REQUEST_ID_MAX",
    "TENCENT_CODES",
    "ActionUnknown",
    "AppKeyUnknown",
    "AppSignatureInvalid",
    "AppTimestampInvalid",
    "Envelope",
    "JsonInvalid",
    "PhoneNumberInvalid",
    "RequiredParamMissing",
    "error_body",
    "error_number",
    "json_object_param",
    "json_response",
    "new_request_id",
    "optional_int",
    "parse_body",
    "read_request_id",
    "required",
    "required_str",
    "success_body",
    "tencent_error",
]

REQUEST_ID_MAX: Final = 128
#: ``code`` of an ``sdk``-envelope failure no iotcloud error names (the Gizwits "form invalid").
SDK_FAILURE: Final = 9015
INTERNAL_ERROR: Final = "InternalError"
#: A refusal no entry of `TENCENT_CODES` names: the request was understood and cannot be done.
FAILED_OPERATION: Final = "FailedOperation"

Envelope = Literal["response", "sdk"]
#: The values ``IOTCLOUD_TENCENT_ENVELOPE`` takes.
ENVELOPES: Final[tuple[Envelope, ...]] = get_args(Envelope)

_encoder = msgspec.json.Encoder()


class RequiredParamMissing(FormInvalid):
    """A required parameter is absent (or JSON ``null``); the detail names it."""


class JsonInvalid(FormInvalid):
    """The body, or a parameter that must hold JSON text (``Data``), is not JSON."""


class ActionUnknown(FormInvalid):
    """``Action`` names no action of the endpoint."""


class AppKeyUnknown(AppIdInvalid):
    """``AppKey`` of a signed call names no app."""


class AppTimestampInvalid(TimestampInvalid):
    """``Timestamp`` of a signed call is too far from the server's clock."""


class AppSignatureInvalid(SignatureInvalid):
    """``Signature`` of a signed call is not the one the app's secret gives."""


class PhoneNumberInvalid(FormInvalid):
    """``CountryCode``/``PhoneNumber`` do not form a phone number."""


#: iotcloud error class -> Tencent ``Error.Code``. The most specific class of an error wins
#: (its MRO is walked), so subclasses inherit their parent's code unless listed themselves.
TENCENT_CODES: Final[Mapping[type[Exception], str]] = {
    RequiredParamMissing: "ErrorRequiredParamNotFound",
    JsonInvalid: "InvalidParameterValue.InvalidJSON",
    ActionUnknown: "InvalidAction",
    AppKeyUnknown: "AuthFailure.SecretIdNotFound",
    AppTimestampInvalid: "AuthFailure.SignatureExpire",
    AppSignatureInvalid: "AuthFailure.SignatureFailure",
    NonceReplayed: "AuthFailure.NonceReplayed",
    PhoneNumberInvalid: "InvalidParameterValue.PhoneNumberInvalid",
    UserNotFound: "InvalidParameterValue.ErrorUserNotExists",
    LoginFailed: "InvalidParameterValue.UserLoginFailed",
    CodeInvalid: "InvalidParameterValue.VerificationCodeInvalid",
    CodeExpired: "InvalidParameterValue.VerificationCodeExpired",
    PhoneUnavailable: "InvalidParameterValue.PhoneNumberRegistered",
    EmailUnavailable: "InvalidParameterValue.EmailRegistered",
    TokenInvalid: "InvalidParameterValue.InvalidAccessToken",
    TokenExpired: "InvalidParameterValue.InvalidAccessToken",
    FormInvalid: "InvalidParameterValue",
    FieldInvalid: "InvalidParameterValue",
    AttrInvalid: "InvalidParameterValue",
    ProductKeyInvalid: "ResourceNotFound.ProductNotExist",
    DeviceNotFound: "ResourceNotFound.DeviceNotExist",
    DeviceNotBound: "UnauthorizedOperation.DeviceNotBound",
    DeviceDisabled: "ResourceUnavailable.DeviceDisabled",
    DeviceOffline: "ResourceUnavailable.DeviceOffline",
    DeviceNoReply: "FailedOperation.DeviceNoReply",
    DeviceSignatureInvalid: "InvalidParameterValue.DeviceSignatureInvalid",
    DeviceTimestampInvalid: "InvalidParameterValue.DeviceTimestampExpired",
    ScheduleNotFound: "ResourceNotFound.TimerNotExist",
    FamilyNotFound: "ResourceNotFound.FamilyNotExist",
    ProductProtocolMismatch: "InvalidParameterValue.ProductProtocolMismatch",
    Throttled: "RequestLimitExceeded",
    ServerError: INTERNAL_ERROR,
}


def tencent_error(exc: Exception) -> tuple[str, str]:
    """``(Code, Message)`` for ``exc``.

    Listed classes take their code from `TENCENT_CODES`; any other `IotCloudError` answers
    ``FailedOperation`` (``InternalError`` if its Gizwits status is 5xx), anything else
    ``InternalError`` with a message that reveals nothing of the fault.
    """
    for cls in type(exc).__mro__:
        code = TENCENT_CODES.get(cls)
        if code is not None:
            return code, _message(exc)
    if isinstance(exc, IotCloudError):
        return (INTERNAL_ERROR if exc.http_status >= 500 else FAILED_OPERATION), _message(exc)
    return INTERNAL_ERROR, "internal error; it has been logged"


def _message(exc: Exception) -> str:
    if isinstance(exc, IotCloudError):
        return exc.detail or exc.message
    return str(exc)


def success_body(
    request_id: str, content: Mapping[str, Any], envelope: Envelope = "response"
) -> dict[str, Any]:
    """``{"Response": {**content, "RequestId"}}``, or in the ``sdk`` envelope
    ``{"code": 0, "msg": "", "data": {**content, "RequestId"}}``."""
    response = {**content, "RequestId": request_id}
    if envelope == "sdk":
        return {"code": 0, "msg": "", "data": response}
    return {"Response": response}


def error_body(
    request_id: str,
    code: str,
    message: str,
    envelope: Envelope = "response",
    number: int = SDK_FAILURE,
) -> dict[str, Any]:
    """``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}``, or in the ``sdk``
    envelope ``{"code": number, "msg": message, "data": {"Error": ..., "RequestId"}}``;
    ``number`` (non-zero) is what the SDKs test to tell a failure."""
    response = {"Error": {"Code": code, "Message": message}, "RequestId": request_id}
    if envelope == "sdk":
        return {"code": number or SDK_FAILURE, "msg": message, "data": response}
    return {"Response": response}


def error_number(exc: Exception, code: str) -> int:
    """The non-zero ``code`` of an ``sdk`` failure: the stable iotcloud (Gizwits) code of an
    iotcloud error, else 9008 for an internal error and 9015 for a refused request."""
    if isinstance(exc, IotCloudError):
        return exc.code
    return 9008 if code == INTERNAL_ERROR else SDK_FAILURE


def json_response(
    body: Mapping[str, Any], status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=_encoder.encode(body),
        status_code=status_code,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


def new_request_id() -> str:
    """The RequestId answered for a request that sent none (a UUID, as Tencent recommends)."""
    return str(uuid.uuid4())


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, whatever Content-Type the client claimed.

    Raises `JsonInvalid` for an empty or malformed body or one nested deeper than
    `decode_json` allows, and `FormInvalid` for JSON that is not an object.
    """
    if not body.strip():
        raise JsonInvalid("body: a JSON object is required")
    try:
        value = decode_json(body)
    except JsonRejected as exc:
        raise JsonInvalid(f"body: {exc}") from exc
    if not isinstance(value, dict):
        raise FormInvalid("body: must be a JSON object")
    if NUL_ESCAPE in body:
        refuse_nul(value)
    return value


def read_request_id(params: Mapping[str, Any]) -> tuple[str, FormInvalid | None]:
    """The ``RequestId`` to echo: the client's, or a new one when it sent none.

    A ``RequestId`` that is not a string of 1 to `REQUEST_ID_MAX` characters cannot be echoed:
    a new one is returned with the error to answer.
    """
    value = params.get("RequestId")
    if value is None:
        return new_request_id(), None
    if not isinstance(value, str) or not 1 <= len(value) <= REQUEST_ID_MAX:
        problem = FormInvalid(f"RequestId: must be a string of 1 to {REQUEST_ID_MAX} characters")
        return new_request_id(), problem
    return value, None


def required(params: Mapping[str, Any], name: str) -> object:
    """``params[name]`` of any type; `RequiredParamMissing` when absent or null."""
    value = params.get(name)
    if value is None:
        raise RequiredParamMissing(f"{name}: is required")
    return value


def required_str(params: Mapping[str, Any], name: str) -> str:
    """``params[name]``, which must be a string; `RequiredParamMissing` when absent or null,
    `FormInvalid` for another type."""
    value = required(params, name)
    if not isinstance(value, str):
        raise FormInvalid(f"{name}: must be a string")
    return value


def optional_int(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """``params[name]``, an integer from ``low`` to ``high`` (a JSON boolean is not one), or
    ``default`` when absent or null; `FormInvalid` naming the field otherwise."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormInvalid(f"{name}: must be an integer from {low} to {high}")
    return value


def json_object_param(
    params: Mapping[str, Any], name: str, *, limit: int, allow_empty: bool = False
) -> dict[str, Any]:
    """``params[name]``: a string of at most ``limit`` characters holding a JSON object (not an
    empty one unless ``allow_empty``), as Tencent sends ``Data`` and ``InputParams``.
    `RequiredParamMissing` when absent, `JsonInvalid` when not JSON (or nested deeper than
    `decode_json` allows), `FormInvalid` otherwise, each naming the parameter."""
    value = required(params, name)
    if not isinstance(value, str):
        raise FormInvalid(f'{name}: must be a string holding a JSON object, like "{{\\"a\\": 1}}"')
    if len(value) > limit:
        raise FormInvalid(f"{name}: at most {limit} characters")
    try:
        decoded = decode_json(value)
    except JsonRejected as exc:
        raise JsonInvalid(f"{name}: {exc}") from exc
    if not isinstance(decoded, dict):
        raise FormInvalid(f"{name}: must hold a JSON object")
    refuse_nul(decoded, name)
    if not decoded and not allow_empty:
        raise FormInvalid(f"{name}: must not be an empty object")
    return decoded
