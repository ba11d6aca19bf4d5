"""Calling the Tencent dialect of a real ``iotcloud serve`` as Tencent's apps do: ``tokenapi``
calls carrying a user's AccessToken, signed ``appapi`` calls (signed here, independently of the
server's code, as Tencent's Node SDK signs them), the ``{"Response": ...}`` envelope they answer
in, and the error shape every refusal has."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Any

import httpx

TOKENAPI = "/api/exploreropen/tokenapi"
APPAPI = "/api/exploreropen/appapi"
INVALID = "InvalidParameterValue"
MISSING = "ErrorRequiredParamNotFound"
BAD_TOKEN = "InvalidParameterValue.InvalidAccessToken"
NOT_BOUND = "UnauthorizedOperation.DeviceNotBound"
NO_PRODUCT = "ResourceNotFound.ProductNotExist"
NO_DEVICE = "ResourceNotFound.DeviceNotExist"

ABSENT = object()
"""As a parameter value: leave the parameter out of the body (and of the signed text)."""


def without_absent(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` less the parameters whose value is ``ABSENT``."""
    return {name: value for name, value in body.items() if value is not ABSENT}


def response_of(reply: httpx.Response) -> dict[str, Any]:
    """The ``Response`` object of an HTTP 200 JSON answer in the default envelope (nothing but
    ``Response`` in it)."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    answer = reply.json()
    assert set(answer) == {"Response"}, answer
    response: dict[str, Any] = answer["Response"]
    return response


def post_tokenapi(http: httpx.Client, body: Any) -> dict[str, Any]:
    """POST ``body`` to tokenapi as it is; the ``Response`` of the answer."""
    return response_of(http.post(TOKENAPI, json=body))


def call_tokenapi(http: httpx.Client, action: str, token: Any, **params: Any) -> dict[str, Any]:
    """``action`` on tokenapi with AccessToken ``token`` and a fresh RequestId (``params`` may
    replace either, or leave them out with ``ABSENT``); the ``Response``, whose RequestId is the
    one sent."""
    body = without_absent(
        {"RequestId": "req-" + uuid.uuid4().hex[:8], "Action": action, "AccessToken": token}
        | params
    )
    response = post_tokenapi(http, body)
    if "RequestId" in body:
        assert response["RequestId"] == body["RequestId"]
    return response


def assert_ok(response: dict[str, Any]) -> dict[str, Any]:
    """``response`` carries no error; returned."""
    assert "Error" not in response, response
    return response


def assert_error(response: dict[str, Any], code: str, *named: str) -> None:
    """``response`` is a Tencent error with ``code`` whose message names each of ``named``."""
    assert set(response) == {"Error", "RequestId"}, response
    assert response["Error"]["Code"] == code, response
    for text in named:
        assert text in response["Error"]["Message"], response


# -- appapi signing ------------------------------------------------------------------------------


def js_text(value: Any) -> str:
    """``value`` as JavaScript's ``String()`` writes it (booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signature(secret: str, params: dict[str, Any]) -> str:
    """What the Node SDK computes: sorted ``k=v`` joined by ``&``, HMAC-SHA1, Base64."""
    text = "&".join(f"{key}={js_text(params[key])}" for key in sorted(params))
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def resign(secret: str, body: dict[str, Any]) -> str:
    """The signature of ``body`` (its own ``Signature`` left out) with ``secret``."""
    return signature(secret, {key: value for key, value in body.items() if key != "Signature"})
