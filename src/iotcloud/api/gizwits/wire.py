"""Gizwits wire helpers: body decoding with field-naming errors, headers, JSON responses."""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import msgspec
from litestar import Request, Response

from iotcloud.codecs.jsonlimits import JsonRejected, decode_json
from iotcloud.errors import FormInvalid, IotCloudError

T = TypeVar("T")

APP_ID = "X-Gizwits-Application-Id"
USER_TOKEN = "X-Gizwits-User-token"  # noqa: S105 - a header name
APP_TOKEN = "X-Gizwits-Application-Token"  # noqa: S105 - a header name
APP_AUTH = "X-Gizwits-Application-Auth"

_encoder = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$\.?(.*)`$")


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=_encoder.encode(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def error_body(error: IotCloudError) -> dict[str, Any]:
    return {
        "error_code": error.code,
        "error_message": error.message,
        "detail_message": error.detail,
    }


async def json_object(
    request: Request[Any, Any, Any], *, allow_empty: bool = False
) -> dict[str, Any]:
    """The request body as a JSON object, whatever Content-Type the client claimed.

    Raises ``FormInvalid`` naming the problem (empty body, malformed JSON, nested deeper than
    `decode_json` allows, not an object). The size is bounded before: the app's (or route's)
    ``request_max_body_size`` answers 413.
    """
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return {}
        raise FormInvalid("body: a JSON object is required")
    try:
        value = decode_json(body)
    except JsonRejected as exc:
        raise FormInvalid(f"body: {exc}") from exc
    if not isinstance(value, dict):
        raise FormInvalid("body: must be a JSON object")
    if NUL_ESCAPE in body:
        refuse_nul(value)
    return value


NUL_ESCAPE: Final = b"\\u0000"
"""How a NUL character appears in JSON text (a raw one is not JSON)."""


def refuse_nul(value: Any, path: str = "") -> None:
    """``FormInvalid`` naming the first string of a decoded JSON value (key or value) that holds
    a NUL character: text columns cannot store one (PostgreSQL refuses it), so it is refused at
    the edge, on every database alike."""
    if isinstance(value, str):
        if "\x00" in value:
            raise FormInvalid(f"{path or 'body'}: must not contain a NUL character")
    elif isinstance(value, dict):
        for name, item in value.items():
            where = f"{path}.{name}" if path else str(name)
            if "\x00" in name:
                raise FormInvalid(f"{path or 'body'}: a key must not contain a NUL character")
            refuse_nul(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_nul(item, f"{path or 'body'}[{index}]")


async def form_fields(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A form-encoded body (``a=1&b=2``, what GAgent sends) as a dict of strings.

    A JSON object body is accepted too when the client says ``application/json``; unknown fields
    are kept (device firmware sends extras). The first value of a repeated field wins. Raises
    ``FormInvalid`` for a body that is not UTF-8 (or a malformed JSON body).
    """
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        data = await json_object(request, allow_empty=True)
        for name, value in data.items():
            if not isinstance(value, str):
                raise FormInvalid(f"{name}: must be a string")
        return dict(data)  # NUL characters were refused by json_object
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormInvalid("body: not UTF-8") from exc
    fields: dict[str, str] = {}
    # lenient on purpose: firmware may send a trailing '&'; a missing field is named later
    for name, value in parse_qsl(text.strip(), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            raise FormInvalid(f"{name.replace(chr(0), '')}: must not contain a NUL character")
        fields.setdefault(name, value)
    return fields


def required_field(fields: dict[str, str], name: str) -> str:
    """``fields[name]``, or ``FormInvalid`` naming it when absent or empty."""
    value = fields.get(name, "")
    if not value:
        raise FormInvalid(f"{name}: is required")
    return value


def convert(data: dict[str, Any], form: type[T]) -> T:
    """Convert a decoded object into ``form`` (a msgspec Struct), naming the offending field."""
    try:
        return msgspec.convert(data, form)
    except msgspec.ValidationError as exc:
        raise FormInvalid(describe_validation_error(str(exc))) from exc


def describe_validation_error(message: str) -> str:
    """Turn msgspec's wording into ``field: problem``."""
    missing = re.match(r"Object missing required field `(.+?)`(?: - at `\$\.?(.*)`)?$", message)
    if missing:
        return _path(missing.group(2), missing.group(1)) + ": is required"
    unknown = re.match(r"Object contains unknown field `(.+?)`(?: - at `\$\.?(.*)`)?$", message)
    if unknown:
        return _path(unknown.group(2), unknown.group(1)) + ": unknown field"
    at = _AT.search(message)
    field = at.group(1) if at else "body"
    text = _AT.sub("", message)
    text = text[0].lower() + text[1:] if text else "invalid"
    return f"{field or 'body'}: {text.replace('`', '')}"


def _path(prefix: str | None, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def header(request: Request[Any, Any, Any], name: str) -> str | None:
    value = request.headers.get(name)
    return value.strip() if value is not None else None
