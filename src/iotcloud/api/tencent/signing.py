"""The signature rule of the signed Tencent app API (``appapi``, spec §1.2), as pure functions.

Tencent's SDKs sign a call by sorting every top-level parameter but ``Signature`` by key in
code-unit order (JavaScript's ``Object.keys().sort()``), joining them as ``key=value`` with
``&`` -- values *not* URL-encoded, stringified as JavaScript's ``String(value)`` would -- and
taking ``Base64(HMAC-SHA1(AppSecret, that string))``. The server recomputes the same string
from the JSON it received, over whatever keys the client sent (its apps add their own, such as
``Platform`` and ``lang``), and compares in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

__all__ = [
    "SIGNATURE_PARAM",
    "js_string",
    "sign",
    "signature_matches",
    "string_to_sign",
    "within_window",
]

SIGNATURE_PARAM: Final = "Signature"
_EXACT_INT: Final = 2**53  # beyond it a JavaScript number no longer holds every integer


def js_string(value: object) -> str:
    """``String(value)`` of the JavaScript value a JSON ``value`` decodes to.

    Strings are themselves, ``true``/``false``/``null`` their names, numbers ECMAScript's
    Number-to-String (``1.0`` -> ``"1"``, ``1e21`` -> ``"1e+21"``, ``1e-7`` -> ``"1e-7"``),
    arrays their elements joined by ``,`` (null elements empty), objects ``[object Object]``.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < _EXACT_INT else _js_number(float(value))
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, list | tuple):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


def _js_number(value: float) -> str:
    """ECMAScript Number::toString(10) of ``value`` (shortest round-trip digits)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    text = repr(abs(value))  # Python's repr is the shortest round-trip form, as JS uses
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    raw = whole + fraction
    leading = len(raw) - len(raw.lstrip("0"))
    digits = raw.lstrip("0").rstrip("0")
    k = len(digits)
    n = len(whole) + int(exponent or 0) - leading  # value = 0.digits x 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    power = n - 1
    mark = "+" if power >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{head}e{mark}{abs(power)}"


def _code_units(key: str) -> bytes:
    # UTF-16BE bytes compare as JavaScript compares strings: by UTF-16 code unit
    return key.encode("utf-16-be", "surrogatepass")


def string_to_sign(params: Mapping[str, object]) -> str:
    """``k1=v1&k2=v2...`` over every key of ``params`` but ``Signature``, sorted by code unit,
    values through `js_string` and not URL-encoded."""
    keys = sorted((key for key in params if key != SIGNATURE_PARAM), key=_code_units)
    return "&".join(f"{key}={js_string(params[key])}" for key in keys)


def sign(secret: str, params: Mapping[str, object]) -> str:
    """``Base64(HMAC-SHA1(secret, string_to_sign(params)))``: what a client sends as
    ``Signature``."""
    mac = hmac.new(secret.encode(), string_to_sign(params).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def signature_matches(secret: str, params: Mapping[str, object]) -> bool:
    """Whether ``params["Signature"]`` (a string) is `sign` of the other parameters; compared
    in constant time."""
    given = params.get(SIGNATURE_PARAM)
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(sign(secret, params).encode(), given.encode())


def within_window(timestamp: int, now: float, window: int) -> bool:
    """Whether Unix-seconds ``timestamp`` is at most ``window`` seconds from ``now``, either
    way."""
    return abs(timestamp - now) <= window
