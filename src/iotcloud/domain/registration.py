"""How a product's devices may register themselves, and Gizwits' encrypted registration.

Policies (``products.registration``):

* ``open``: GAgent's plain ``POST /dev/devices`` (and the encrypted one). A MAC registering
  again with its passcode gets its did back (a reboot); with a different passcode it is a new
  ownership: the device's bindings end.
* ``signed``: only the encrypted ``POST /dev/{product_key}/device``, which proves knowledge of
  the product secret; the plain register, provision and delete calls are refused.
* ``preprovisioned``: only devices an operator created may register, each with its own
  passcode; nothing is created and no passcode replaced over the network.

Encrypted registration (spec gizwits.md §3.2): the body is ``data=<hex>`` where the hex is
AES-128-ECB with PKCS#7 padding, keyed with the 16 bytes of the product secret (its 32 hex
digits), of ``mac=..&passcode=..&type=normal[&extra=..]``; the answer is the same cipher of
``did=<did>``, and the encrypted provision takes ``did=hex(AES(did))``.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Final, Literal, get_args
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from iotcloud.domain.accounts import FieldInvalid

RegistrationPolicy = Literal["open", "signed", "preprovisioned"]
POLICIES: Final[tuple[str, ...]] = get_args(RegistrationPolicy)

DeviceOrigin = Literal["operator", "registered", "signed"]

DEVICE_TYPES: Final = frozenset({"normal", "center_control"})
MAX_CIPHERTEXT_BYTES: Final = 1024
"""Longest encrypted registration accepted (its plaintext is a few short fields)."""

_BLOCK = algorithms.AES.block_size  # bits


def check_policy(value: str, field: str = "registration") -> RegistrationPolicy:
    """``value`` as a policy; raises ``FieldInvalid`` naming the choices."""
    policy = value.strip().lower()
    if policy not in POLICIES:
        raise FieldInvalid(field, f"must be one of {', '.join(POLICIES)}, got {value!r}")
    return policy  # type: ignore[return-value]


def _key(product_secret: str) -> bytes:
    key = bytes.fromhex(product_secret)
    if len(key) != 16:
        raise ValueError("a product secret is 16 bytes (32 hex digits)")
    return key


def encrypt(product_secret: str, text: str) -> str:
    """Lower-case hex of AES-128-ECB-PKCS7(key = the product secret's bytes, ``text``)."""
    padder = padding.PKCS7(_BLOCK).padder()
    plain = padder.update(text.encode()) + padder.finalize()
    # ECB is what the device firmware speaks; each message is a few short fields
    encryptor = Cipher(algorithms.AES(_key(product_secret)), modes.ECB()).encryptor()  # noqa: S305
    return (encryptor.update(plain) + encryptor.finalize()).hex()


def decrypt(product_secret: str, data: str, field: str = "data") -> str:
    """The text of :func:`encrypt`'s ``data``; raises ``FieldInvalid`` naming ``field`` when it is
    not hex, not whole blocks, too long, not decryptable with this secret or not UTF-8."""
    if len(data) > 2 * MAX_CIPHERTEXT_BYTES:
        raise FieldInvalid(field, f"longer than {MAX_CIPHERTEXT_BYTES} bytes of ciphertext")
    try:
        cipher = binascii.unhexlify(data.strip())
    except (binascii.Error, ValueError):
        raise FieldInvalid(field, "must be hex digits") from None
    if not cipher or len(cipher) % (_BLOCK // 8):
        raise FieldInvalid(field, "must be whole 16-byte AES blocks")
    decryptor = Cipher(algorithms.AES(_key(product_secret)), modes.ECB()).decryptor()  # noqa: S305
    plain = decryptor.update(cipher) + decryptor.finalize()
    unpadder = padding.PKCS7(_BLOCK).unpadder()
    try:
        text = (unpadder.update(plain) + unpadder.finalize()).decode()
    except (ValueError, UnicodeDecodeError):
        raise FieldInvalid(
            field, "does not decrypt with the product secret (wrong key or corrupted data)"
        ) from None
    return text


@dataclass(frozen=True)
class EncryptedRegistration:
    """The fields of a decrypted registration (``mac`` and ``passcode`` still unchecked)."""

    mac: str
    passcode: str
    type: str = "normal"
    extra: str | None = None


def parse_registration(text: str, field: str = "data") -> EncryptedRegistration:
    """``mac=..&passcode=..&type=normal[&extra=..]``; raises ``FieldInvalid`` naming the missing
    or malformed field (``type`` defaults to ``normal``; ``extra`` is 8 bits as hex)."""
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        fields.setdefault(name, value)
    for name in ("mac", "passcode"):
        if not fields.get(name):
            raise FieldInvalid(f"{field}.{name}", "is required in the encrypted registration")
    kind = fields.get("type") or "normal"
    if kind not in DEVICE_TYPES:
        raise FieldInvalid(f"{field}.type", f"must be normal or center_control, got {kind!r}")
    extra = fields.get("extra")
    if extra is not None:
        try:
            bits = int(extra, 16)
        except ValueError:
            raise FieldInvalid(f"{field}.extra", "must be hex digits") from None
        if not 0 <= bits <= 0xFF:
            raise FieldInvalid(f"{field}.extra", "must be 8 bits")
    return EncryptedRegistration(fields["mac"], fields["passcode"], kind, extra)
