"""Rules for app-user identities and profiles (Gizwits ``UserModel``).

Every ``check_*`` function returns the normalised value or raises :class:`FieldInvalid` naming
the field and the rule it broke.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

USERNAME_MAX = 64
EMAIL_MAX = 254
PASSWORD_MAX = 128
PHONE_ID_MAX = 128
NAME_MAX = 128
ADDRESS_MAX = 256
REMARK_MAX = 1024
GENDERS = frozenset({"M", "F", "N"})
LANGS = frozenset({"en", "zh-cn"})

_PHONE = re.compile(r"\+?[0-9]{5,20}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_USERNAME = re.compile(r"[^\s@]+")
_LOCAL_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})|(\d{2})-(\d{2})")


class FieldInvalid(ValueError):
    """A single field broke a rule; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_username(value: str, field: str = "username") -> str:
    """1-64 characters, no white space, no ``@``, not shaped like a phone number.

    Login takes a username, an e-mail or a phone in one field, so the three shapes must not
    overlap.
    """
    if not 1 <= len(value) <= USERNAME_MAX:
        raise FieldInvalid(field, f"must be 1 to {USERNAME_MAX} characters")
    if not _USERNAME.fullmatch(value):
        raise FieldInvalid(field, "must not contain white space or '@'")
    if _PHONE.fullmatch(value):
        raise FieldInvalid(field, "must not be a phone number; register the phone instead")
    return value


def check_email(value: str, field: str = "email") -> str:
    """A plausible address, at most 254 characters; returned lower-cased."""
    if len(value) > EMAIL_MAX or not _EMAIL.fullmatch(value):
        raise FieldInvalid(field, "is not an e-mail address")
    return value.lower()


def check_phone(value: str, field: str = "phone") -> str:
    """5-20 digits, optionally with a leading ``+`` and country code."""
    if not _PHONE.fullmatch(value):
        raise FieldInvalid(field, "must be 5 to 20 digits, optionally starting with +")
    return value


def check_password(value: str, min_length: int, field: str = "password") -> str:
    if not min_length <= len(value) <= PASSWORD_MAX:
        raise FieldInvalid(field, f"must be {min_length} to {PASSWORD_MAX} characters")
    return value


def check_phone_id(value: str, field: str = "phone_id") -> str:
    if not 1 <= len(value) <= PHONE_ID_MAX or value.strip() != value:
        raise FieldInvalid(field, f"must be 1 to {PHONE_ID_MAX} characters without edge spaces")
    return value


def check_length(value: str, field: str, maximum: int) -> str:
    if len(value) > maximum:
        raise FieldInvalid(field, f"must be at most {maximum} characters")
    return value


def check_gender(value: str) -> str:
    if value not in GENDERS:
        raise FieldInvalid("gender", "must be one of M, F, N")
    return value


def check_lang(value: str) -> str:
    if value not in LANGS:
        raise FieldInvalid("lang", "must be en or zh-cn")
    return value


def check_birthday(value: str) -> str:
    """``YYYY-MM-DD`` or ``MM-DD``; the date must exist (02-29 is allowed without a year)."""
    m = _LOCAL_DATE.fullmatch(value)
    if not m:
        raise FieldInvalid("birthday", "must be YYYY-MM-DD or MM-DD")
    year = int(m.group(1)) if m.group(1) else 2000  # a leap year, so --02-29 is valid
    month = int(m.group(2) or m.group(4))
    day = int(m.group(3) or m.group(5))
    try:
        date(year, month, day)
    except ValueError as exc:
        raise FieldInvalid("birthday", f"{value} is not a date") from exc
    return value


@dataclass(frozen=True)
class Profile:
    """The editable personal fields of a user."""

    name: str | None = None
    gender: str | None = None
    birthday: str | None = None
    address: str | None = None
    lang: str | None = None
    remark: str | None = None


PROFILE_CHECKS = {
    "name": lambda v: check_length(v, "name", NAME_MAX),
    "gender": check_gender,
    "birthday": check_birthday,
    "address": lambda v: check_length(v, "address", ADDRESS_MAX),
    "lang": check_lang,
    "remark": lambda v: check_length(v, "remark", REMARK_MAX),
}


def login_identity_kind(identity: str) -> str:
    """Which identity a login ``username`` field holds: ``email``, ``phone`` or ``username``."""
    if "@" in identity:
        return "email"
    if _PHONE.fullmatch(identity):
        return "phone"
    return "username"


def mask(value: str | None) -> str | None:
    """Hide the middle of a personal value: ``18812345678`` -> ``188*****678``."""
    if value is None:
        return None
    if len(value) <= 2:
        return "*" * len(value)
    keep = max(1, len(value) // 4)
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[-keep:]
