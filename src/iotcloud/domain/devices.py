"""Rules for device and product identities (Gizwits device side, spec §3.1).

* ``did``: 22 characters of ``[A-Za-z0-9]``, random (GAgent refuses any other length).
* ``passcode``: generated ones are 10 upper-case letters, as GAgent makes them; a device may
  register with its own passcode of 1 to 32 visible ASCII characters (the seed's examples use
  ``"123456"`` and ``"gokit"``).
* MAC: accepted as ``AA:BB:CC:DD:EE:FF``, ``aa-bb-cc-dd-ee-ff`` or ``aabbccddeeff`` (any case),
  stored as 12 lower-case hex digits.
* ``product_key`` / ``product_secret``: 32 hex digits, stored lower-case. A data-template
  (Tencent) product's key is its ``ProductId``: exactly 10 characters ``[A-Z0-9]``, kept as
  given, so an MQTT client id ``{ProductId}{DeviceName}`` splits unambiguously.
* device name (Tencent ``DeviceName``): 1 to 48 of ``[A-Za-z0-9_-.:@]``, case-sensitive. A
  Gizwits device is named by its MAC.
* ``psk``: a data-template device's key, base64 of 16 random bytes.

Every ``check_*`` function returns the normalised value or raises :class:`FieldInvalid`
(from :mod:`iotcloud.domain.accounts`) naming the field and the rule it broke.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
from typing import Final

from iotcloud.domain.accounts import FieldInvalid

__all__ = [
    "DEVICE_NAME_MAX",
    "DID_LENGTH",
    "PASSCODE_LENGTH",
    "PASSCODE_MAX",
    "PRODUCT_ID_LENGTH",
    "PSK_BYTES",
    "check_device_name",
    "check_device_named",
    "check_did",
    "check_mac",
    "check_passcode",
    "check_product_id",
    "check_product_key",
    "check_product_secret",
    "check_psk",
    "is_product_id",
    "new_did",
    "new_passcode",
    "new_product_key",
    "new_product_secret",
    "new_psk",
]

DID_LENGTH: Final = 22
PASSCODE_LENGTH: Final = 10
PASSCODE_MAX: Final = 32
PRODUCT_ID_LENGTH: Final = 10
DEVICE_NAME_MAX: Final = 48
PSK_BYTES: Final = 16

_DID_ALPHABET: Final = string.ascii_letters + string.digits
_DID: Final = re.compile(rf"[A-Za-z0-9]{{{DID_LENGTH}}}")
_PASSCODE: Final = re.compile(rf"[\x21-\x7e]{{1,{PASSCODE_MAX}}}")
_HEX32: Final = re.compile(r"[0-9a-fA-F]{32}")
_PRODUCT_ID: Final = re.compile(rf"[A-Z0-9]{{{PRODUCT_ID_LENGTH}}}")
_DEVICE_NAME: Final = re.compile(rf"[A-Za-z0-9_\-.:@]{{1,{DEVICE_NAME_MAX}}}")
_HEX12: Final = re.compile(r"[0-9a-fA-F]{12}")
_SEPARATED_MAC: Final = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


def new_did() -> str:
    """A random device id: 22 characters of ``[A-Za-z0-9]`` (about 131 bits)."""
    return "".join(secrets.choice(_DID_ALPHABET) for _ in range(DID_LENGTH))


def new_passcode() -> str:
    """A random passcode: 10 upper-case letters A-Z (about 47 bits)."""
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(PASSCODE_LENGTH))


def new_product_key() -> str:
    """32 lower-case hex digits, the Gizwits product_key shape."""
    return secrets.token_hex(16)


def new_product_secret() -> str:
    """32 lower-case hex digits, the Gizwits product_secret shape."""
    return secrets.token_hex(16)


def new_psk() -> str:
    """A data-template device key: base64 of 16 random bytes (24 characters)."""
    return base64.b64encode(secrets.token_bytes(PSK_BYTES)).decode("ascii")


def check_psk(value: str, field: str = "psk") -> str:
    """A device key given by an operator: base64 of 16 to 48 bytes, kept as given."""
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        key = b""
    if not 16 <= len(key) <= 48:
        raise FieldInvalid(field, "must be base64 of 16 to 48 bytes")
    return value


def check_device_name(value: str, field: str = "name") -> str:
    """A data-template ``DeviceName``: 1 to 48 of ``[A-Za-z0-9_-.:@]``, kept as given."""
    if not _DEVICE_NAME.fullmatch(value):
        raise FieldInvalid(
            field, f"must be 1 to {DEVICE_NAME_MAX} letters, digits or any of _ - . : @"
        )
    return value


def check_device_named(product_id: str, device_name: str) -> tuple[str, str]:
    """A device as Tencent names it, ``ProductId`` + ``DeviceName``, as stored: a Gizwits
    product_key lower case with its MAC as 12 lower-case hex digits, or a data-template
    ProductId with its device name, both exact. Both are trimmed first; `FieldInvalid` names
    ``ProductId`` or ``DeviceName``."""
    key = check_product_key(product_id.strip(), "ProductId")
    if is_product_id(key):
        return key, check_device_name(device_name.strip(), "DeviceName")
    return key, check_mac(device_name, "DeviceName")


def is_product_id(value: str) -> bool:
    """True for a data-template ``ProductId`` (10 characters ``[A-Z0-9]``)."""
    return _PRODUCT_ID.fullmatch(value) is not None


def check_product_id(value: str, field: str = "ProductId") -> str:
    """A data-template ``ProductId``: exactly 10 characters ``[A-Z0-9]``, kept as given."""
    if not is_product_id(value):
        raise FieldInvalid(field, f"must be exactly {PRODUCT_ID_LENGTH} characters A-Z or 0-9")
    return value


def check_mac(value: str, field: str = "mac") -> str:
    """12 hex digits, bare or in six pairs separated by one kind of ``:`` or ``-``; returned as
    12 lower-case hex digits."""
    candidate = value.strip()
    if _SEPARATED_MAC.fullmatch(candidate):
        candidate = candidate.replace(candidate[2], "")
    if not _HEX12.fullmatch(candidate):
        raise FieldInvalid(
            field, "must be 12 hex digits, optionally separated by ':' or '-' (aa:bb:cc:dd:ee:ff)"
        )
    return candidate.lower()


def check_passcode(value: str, field: str = "passcode") -> str:
    """1 to 32 visible ASCII characters (no spaces), kept as given."""
    if not _PASSCODE.fullmatch(value):
        raise FieldInvalid(field, f"must be 1 to {PASSCODE_MAX} visible ASCII characters")
    return value


def check_did(value: str, field: str = "did") -> str:
    """22 letters or digits, kept as given (dids are case-sensitive)."""
    if not _DID.fullmatch(value):
        raise FieldInvalid(field, f"must be {DID_LENGTH} letters or digits")
    return value


def check_product_key(value: str, field: str = "product_key") -> str:
    """A Gizwits product_key (32 hex digits, returned lower-case) or a data-template
    ``ProductId`` (10 characters ``[A-Z0-9]``, returned as given)."""
    if _HEX32.fullmatch(value):
        return value.lower()
    if is_product_id(value):
        return value
    raise FieldInvalid(
        field, f"must be 32 hex digits (or a {PRODUCT_ID_LENGTH}-character ProductId A-Z 0-9)"
    )


def check_product_secret(value: str, field: str = "product_secret") -> str:
    """32 hex digits; returned lower-case."""
    if not _HEX32.fullmatch(value):
        raise FieldInvalid(field, "must be 32 hex digits")
    return value.lower()
