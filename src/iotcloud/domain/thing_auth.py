"""How a data-template (Tencent) device proves who it is: the MQTT identity and its signature.

Pure rules of `shared/spec/tencent.md` §2.1 and §2.5, used by the device gateway (and anything
else that checks a signature made with a device's ``psk``):

* client id ``{ProductId}{DeviceName}``, where a ProductId is exactly `PRODUCT_ID_LENGTH`
  characters, so the client id splits unambiguously;
* user name ``{ProductId}{DeviceName};{sdkappid};{connid};{expiry}`` (sdkappid and connid are
  not checked; an expiry that reads as Unix seconds and has passed is refused, a millisecond
  value — the stock Python SDK's own start time, reused on every reconnect — is not checked);
* password ``hex(HMAC-SHA1|SHA256(base64decode(psk), username));hmacsha1|hmacsha256``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Final, Literal

PRODUCT_ID_LENGTH: Final = 10
"""Tencent ProductIds are exactly ten characters ``[A-Z0-9]``."""

SECONDS_LIMIT: Final = 10**11
"""An expiry below this reads as Unix seconds (year 5138); at or above it, as milliseconds."""

SignMethod = Literal["hmacsha1", "hmacsha256"]
SIGN_METHODS: Final[dict[str, str]] = {"hmacsha1": "sha1", "hmacsha256": "sha256"}


@dataclass(frozen=True, slots=True)
class ThingUsername:
    """A parsed data-template MQTT user name."""

    client_id: str
    sdkappid: str
    connid: str
    expiry: int


def split_client_id(client_id: str) -> tuple[str, str] | None:
    """``(ProductId, DeviceName)`` of a ``{PID}{NAME}`` client id, None when it cannot be one
    (too short, or a ProductId that is not ``[A-Z0-9]{10}``)."""
    if len(client_id) <= PRODUCT_ID_LENGTH:
        return None
    product_id, name = client_id[:PRODUCT_ID_LENGTH], client_id[PRODUCT_ID_LENGTH:]
    if not all(c.isascii() and (c.isupper() or c.isdigit()) for c in product_id):
        return None
    return product_id, name


def parse_username(username: str) -> ThingUsername | None:
    """The four fields of a data-template user name; None when it does not have that shape
    (four ``;``-separated fields, the last an unsigned integer)."""
    fields = username.split(";")
    if len(fields) != 4 or not fields[0] or not fields[3].isascii() or not fields[3].isdigit():
        return None
    return ThingUsername(fields[0], fields[1], fields[2], int(fields[3]))


def expiry_passed(expiry: int, now_seconds: float) -> bool:
    """Whether a user name's expiry refuses the CONNECT: only a seconds value in the past."""
    return expiry < SECONDS_LIMIT and expiry < now_seconds


def decode_psk(psk: str) -> bytes:
    """The key bytes of a base64 ``psk``; raises ``ValueError`` when it is not base64."""
    try:
        return base64.b64decode(psk, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"psk is not base64: {exc}") from exc


def sign(psk: str, message: str, method: SignMethod = "hmacsha1") -> str:
    """``hex(HMAC(base64decode(psk), message))`` with the method's hash (lower-case hex)."""
    return hmac.new(decode_psk(psk), message.encode(), SIGN_METHODS[method]).hexdigest()


def device_password(psk: str, username: str, method: SignMethod = "hmacsha1") -> str:
    """The MQTT password a device with ``psk`` sends with ``username``: ``sign;method``."""
    return f"{sign(psk, username, method)};{method}"


def password_matches(psk: str, username: str, password: str) -> bool:
    """Whether ``password`` is the device's signature of ``username`` (either method; the hex
    compared in constant time, case-insensitively). False for a malformed password or psk."""
    signature, _, method = password.rpartition(";")
    if method not in SIGN_METHODS or not signature:
        return False
    try:
        expected = sign(psk, username, method)  # type: ignore[arg-type]
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), signature.lower().encode())
