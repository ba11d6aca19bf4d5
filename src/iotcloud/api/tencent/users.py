"""Tencent user Actions of ``tokenapi`` (spec §1.4): ``AppGetUser``, ``AppUpdateUser``,
``AppLogoutUser``, ``AppUserResetPassword``, ``AppGetUserSetting`` and ``AppUpdateUserSetting``.

They act on the same user the Gizwits API knows (one user store per app), through
`AccountService`:

* ``UserID`` is the uid; ``NickName`` is the profile ``name`` (``GET /app/users`` shows it too);
  ``Avatar`` is a picture's ``http(s)`` URL. A phone is stored as Gizwits apps send it: a bare
  national number is a Chinese one (``CountryCode`` 86), any other ``+`` + country code +
  number; `split_phone` turns either into ``CountryCode`` and ``PhoneNumber``.
* ``AppUpdateUser`` changes ``NickName`` and ``Avatar`` only; a phone or e-mail sent with it is
  refused by name (they change with a verification code, through ``PUT /app/users``), so an app
  never believes a change happened that did not.
* ``AppUserResetPassword`` follows ``PUT /app/users`` ``old_pwd``/``new_pwd``: the other
  sessions of the user end, the calling one stays.
* Settings are four push flags (0/1), ``TemperatureUnit`` (celsius/fahrenheit), ``Region`` (an
  opaque label kept for the app, at most `REGION_MAX` characters) and the extension
  ``TimeZone`` (an IANA name; ``""`` goes back to the server's ``IOTCLOUD_TIMEZONE``), which
  timers made without their own ``TimeZone`` take. ``AppGetUserSetting`` answers the zone in
  effect.

Every parameter is checked before anything is written, and errors name the parameter.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from iotcloud.api.tencent.actions import Action, Call
from iotcloud.api.tencent.wire import RequiredParamMissing, required_str
from iotcloud.domain.accounts import NAME_MAX, FieldInvalid, check_password
from iotcloud.errors import FormInvalid, LoginFailed
from iotcloud.services.accounts import TEMPERATURE_UNITS, UserSettings

__all__ = ["ACTIONS", "AVATAR_MAX", "REGION_MAX", "TIME_ZONE_MAX", "split_phone"]

AVATAR_MAX: Final = 512
REGION_MAX: Final = 64
TIME_ZONE_MAX: Final = 64
#: Bare phone numbers are Chinese, as Gizwits apps send them (foreign ones as ``+{cc}{number}``).
HOME_COUNTRY_CODE: Final = "86"
_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "Factory"})
#: Tencent names of the push flags -> `UserSettings` fields.
PUSH_FLAGS: Final[Mapping[str, str]] = {
    "EnableWechatPush": "wechat_push",
    "EnableDeviceMessagePush": "device_message_push",
    "EnableFamilyMessagePush": "family_message_push",
    "EnableNotifyMessagePush": "notify_message_push",
}
#: What AppUpdateUser does not change: these go through ``PUT /app/users`` with a code.
_NOT_UPDATED: Final = ("CountryCode", "PhoneNumber", "Email", "VerificationCode")
# E.164 country codes are prefix-free: 1 and 7 are one digit, these two, all others three.
_TWO_DIGIT_CODES: Final = frozenset(
    str(code)
    for code in (
        *(20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, *range(43, 50), *range(51, 59)),
        *(*range(60, 67), 81, 82, 84, 86, *range(90, 96), 98),
    )
)


def split_phone(phone: str | None) -> tuple[str, str]:
    """``(CountryCode, PhoneNumber)`` of a stored phone (``("", "")`` for none): ``+`` numbers
    split after their E.164 country code, bare numbers are `HOME_COUNTRY_CODE`'s."""
    if not phone:
        return "", ""
    if not phone.startswith("+"):
        return HOME_COUNTRY_CODE, phone
    digits = phone[1:]
    if digits[:1] in {"1", "7"}:
        size = 1
    elif digits[:2] in _TWO_DIGIT_CODES:
        size = 2
    else:
        size = 3
    return digits[:size], digits[size:]


# -- actions ---------------------------------------------------------------------------------


async def get_user(call: Call) -> Mapping[str, Any]:
    """``AppGetUser`` -> ``{"Data": {UserID, NickName, Avatar, Email, CountryCode,
    PhoneNumber, HasPassword, CreateTime, UpdateTime}}`` (absent values are ``""``, times
    Unix seconds)."""
    user = await call.services.accounts.user_record(call.user)
    country_code, number = split_phone(user.phone)
    return {
        "Data": {
            "UserID": user.uid,
            "NickName": user.name or "",
            "Avatar": user.avatar or "",
            "Email": user.email or "",
            "CountryCode": country_code,
            "PhoneNumber": number,
            "HasPassword": 1 if user.has_password else 0,
            "CreateTime": int(user.created_at.timestamp()),
            "UpdateTime": int(user.updated_at.timestamp()),
        }
    }


async def update_user(call: Call) -> Mapping[str, Any]:
    """``AppUpdateUser`` -> ``{}``: sets ``NickName`` (1-128 characters, trimmed) and/or
    ``Avatar`` (an ``http(s)`` URL of at most `AVATAR_MAX` characters, ``""`` removes it)."""
    params = call.params
    for name in _NOT_UPDATED:
        if params.get(name) is not None:
            raise FormInvalid(
                f"{name}: AppUpdateUser changes NickName and Avatar only; a phone or e-mail "
                "changes with a verification code through PUT /app/users"
            )
    nick = _optional_str(params, "NickName")
    avatar = _optional_str(params, "Avatar")
    if nick is None and avatar is None:
        raise RequiredParamMissing("NickName: is required (or Avatar)")
    if nick is not None:
        nick = nick.strip()
        if not 1 <= len(nick) <= NAME_MAX:
            raise FormInvalid(f"NickName: must be 1 to {NAME_MAX} characters")
    if avatar is not None:
        avatar = _check_avatar(avatar.strip())
    await call.services.accounts.update_name_and_avatar(call.user, name=nick, avatar=avatar)
    return {}


async def logout_user(call: Call) -> Mapping[str, Any]:
    """``AppLogoutUser`` -> ``{}``: the ``AccessToken`` used is revoked, on both APIs; the
    user's other sessions go on."""
    await call.services.accounts.logout(call.user)
    return {}


async def reset_password(call: Call) -> Mapping[str, Any]:
    """``AppUserResetPassword`` -> ``{}``: ``Password`` (the current one) replaced by
    ``NewPassword``; the user's other sessions end, this one stays."""
    password = required_str(call.params, "Password")
    new_password = required_str(call.params, "NewPassword")
    check_password(new_password, call.services.settings.password_min_length, "NewPassword")
    try:
        await call.services.accounts.change_password(call.user, password, new_password)
    except LoginFailed as exc:
        raise LoginFailed("Password: is not the current password") from exc
    except FormInvalid as exc:
        detail = (exc.detail or exc.message).removeprefix("new_password: ")
        raise FormInvalid(f"NewPassword: {detail}") from exc
    return {}


async def get_user_setting(call: Call) -> Mapping[str, Any]:
    """``AppGetUserSetting`` -> ``{"UserSetting": {EnableWechatPush, EnableDeviceMessagePush,
    EnableFamilyMessagePush, EnableNotifyMessagePush, TemperatureUnit, Region, TimeZone}}``."""
    current = await call.services.accounts.user_settings(call.user)
    return {"UserSetting": _setting_view(current, call.services.settings.timezone)}


async def update_user_setting(call: Call) -> Mapping[str, Any]:
    """``AppUpdateUserSetting`` -> ``{}``: each setting sent is replaced, the others kept; at
    least one must be sent."""
    params = call.params
    changes: dict[str, object] = {}
    for name, field in PUSH_FLAGS.items():
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
            raise FormInvalid(f"{name}: must be 0 or 1")
        changes[field] = value == 1
    unit = _optional_str(params, "TemperatureUnit")
    if unit is not None:
        if unit not in TEMPERATURE_UNITS:
            raise FormInvalid(f"TemperatureUnit: must be one of {', '.join(TEMPERATURE_UNITS)}")
        changes["temperature_unit"] = unit
    region = _optional_str(params, "Region")
    if region is not None:
        if len(region) > REGION_MAX:
            raise FormInvalid(f"Region: at most {REGION_MAX} characters")
        changes["region"] = region
    zone = _optional_str(params, "TimeZone")
    if zone is not None:
        changes["time_zone"] = _check_zone(zone) or None
    if not changes:
        names = ", ".join([*PUSH_FLAGS, "TemperatureUnit", "Region", "TimeZone"])
        raise RequiredParamMissing(f"UserSetting: send at least one of {names}")
    await call.services.accounts.update_settings(call.user, changes)
    return {}


ACTIONS: Final[Mapping[str, Action]] = {
    "AppGetUser": get_user,
    "AppUpdateUser": update_user,
    "AppLogoutUser": logout_user,
    "AppUserResetPassword": reset_password,
    "AppGetUserSetting": get_user_setting,
    "AppUpdateUserSetting": update_user_setting,
}


# -- parameters ------------------------------------------------------------------------------


def _optional_str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise FormInvalid(f"{name}: must be a string")
    return value


def _check_avatar(value: str) -> str:
    """``""`` or an absolute ``http``/``https`` URL without white space."""
    if not value:
        return value
    if len(value) > AVATAR_MAX:
        raise FormInvalid(f"Avatar: at most {AVATAR_MAX} characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise FormInvalid("Avatar: must be an http or https URL") from exc
    if parts.scheme not in {"http", "https"} or not parts.netloc or any(c.isspace() for c in value):
        raise FormInvalid("Avatar: must be an http or https URL")
    return value


def _check_zone(value: str) -> str:
    """``""`` or a name of the IANA time zone database."""
    if value and (len(value) > TIME_ZONE_MAX or value not in _zone_names()):
        raise FieldInvalid("TimeZone", f"{value!r} is not an IANA time zone, like Asia/Shanghai")
    return value


@functools.cache
def _zone_names() -> frozenset[str]:
    # the database's own list: ZoneInfo alone would take any file path under it; the list
    # still holds the system's links to its own zone, which name no zone of their own
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in _NOT_ZONES and not name.startswith(("posix/", "right/"))
    )


def _setting_view(current: UserSettings, default_zone: str) -> dict[str, Any]:
    view: dict[str, Any] = {
        name: 1 if getattr(current, field) else 0 for name, field in PUSH_FLAGS.items()
    }
    view["TemperatureUnit"] = current.temperature_unit
    view["Region"] = current.region
    view["TimeZone"] = current.time_zone or default_zone
    return view
