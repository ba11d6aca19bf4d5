"""Each Action's parameters, declared once: the OpenAPI document describes the Tencent
endpoints from these structs, and the endpoints hand an Action its parameters as
`DeclaredParams`, which refuses to read a parameter its Action's struct does not declare, so
an Action cannot start reading a parameter the document does not show.

Values are still checked by the readers in `wire` (``required_str``, ``optional_int``, ...),
in each Action's own order, so that every refusal keeps its established ``Error.Code`` and
``Message``; a field's type here is what those readers accept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

__all__ = [
    "APPAPI_PARAMS",
    "TOKENAPI_PARAMS",
    "DeclaredParams",
    "SignedCommon",
    "TokenCommon",
    "UndeclaredParam",
    "success_schema",
]

Text = str | None
Count = Annotated[int, msgspec.Meta(ge=0)] | None
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class UndeclaredParam(LookupError):
    """An Action read a parameter its struct does not declare (a bug, not a client error)."""


class TokenCommon(msgspec.Struct, kw_only=True):
    """The parameters of every ``tokenapi`` call."""

    AccessToken: str
    """A user token (``POST /app/login``, ``AppGetToken``)."""
    RequestId: RequestId | None = None
    """Echoed in the answer; a UUID is made up when absent."""


class SignedCommon(msgspec.Struct, kw_only=True):
    """The parameters of every ``appapi`` call, signed with the app's secret."""

    AppKey: str
    Timestamp: int
    """Unix seconds, near the server's clock."""
    Nonce: Annotated[int, msgspec.Meta(ge=1)]
    Signature: str
    """HMAC-SHA1 (base64) over the other parameters, sorted, with the AppSecret."""
    RequestId: RequestId | None = None


# -- tokenapi ---------------------------------------------------------------------------------


class _Device(msgspec.Struct, kw_only=True):
    ProductId: str
    DeviceName: str
    """The MAC of a Gizwits device (12 hex digits), the name of a data-template device."""


class AppGetDeviceData(_Device, kw_only=True):
    """-> ``{"Data": "<JSON of {prop: {Value, LastUpdate}}>"}``."""


class AppControlDeviceData(_Device, kw_only=True):
    """-> ``{"Data": ""}`` once the command is handed to the online device."""

    Data: str
    """A JSON object of data point values, as text."""


class AppGetDeviceStatuses(msgspec.Struct, kw_only=True):
    """-> ``{"DeviceStatuses": [{DeviceId, ProductId, DeviceName, Online}]}``."""

    DeviceIds: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]
    """``"ProductId/DeviceName"`` each."""


class AppListEventHistory(_Device, kw_only=True):
    """-> ``{"Context", "Total", "Listover", "EventHistory"}``, newest first."""

    EventId: Text = None
    Type: Literal["info", "alert", "fault", ""] | None = None
    StartTime: Count = None
    EndTime: Count = None
    Size: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    Limit: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    Context: Text = None
    Offset: Count = None


class AppSigBindDeviceInFamily(_Device, kw_only=True):
    """-> ``{"AppDeviceInfo": {...}}``: bind a data-template device that signed the call."""

    FamilyId: str
    DeviceTimestamp: Annotated[int, msgspec.Meta(ge=0)]
    ConnId: str
    Signature: str
    SignMethod: Literal["hmacsha1", "hmacsha256", ""] | None = None
    BindType: Literal["wifi_sign", "bluetooth_sign", "other_sign", ""] | None = None
    RoomId: Text = None


class AppCallDeviceAction(_Device, kw_only=True):
    """-> ``{"Status", "OutputParams", "Code"}`` once the device answered (5 s at most)."""

    ActionId: str
    InputParams: Text = None
    """A JSON object of the action's input, as text."""


class AppCallDeviceActionSync(AppCallDeviceAction, kw_only=True):
    """The same as ``AppCallDeviceAction``."""


class AppGetFamilyList(msgspec.Struct, kw_only=True):
    """-> ``{"FamilyList": [{FamilyId, Name, Role, CreateTime, UpdateTime}], "Total": 1}``."""

    Offset: Count = None
    Limit: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None


class AppGetFamilyDeviceList(msgspec.Struct, kw_only=True):
    """-> ``{"DeviceList": [...], "Total"}``: the caller's bound devices."""

    FamilyId: str
    RoomId: Text = None
    Offset: Count = None
    Limit: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None


class AppDeleteDeviceInFamily(_Device, kw_only=True):
    """-> ``{}``: the caller's binding is removed."""

    FamilyId: str


class AppUpdateDeviceInFamily(_Device, kw_only=True):
    """-> ``{}``: the device's alias is set."""

    AliasName: Annotated[str, msgspec.Meta(max_length=128)]
    FamilyId: Text = None


class _Timer(_Device, kw_only=True):
    TimerName: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    Days: str
    """Seven ``0``/``1`` characters, Sunday first."""
    TimePoint: str
    """``HH:MM``."""
    Repeat: Literal[0, 1]
    Data: str
    """A JSON object of data point values, as text."""
    TimeZone: Text = None


class AppCreateTimer(_Timer, kw_only=True):
    """-> ``{"Data": {"TimerId", "TimerName"}}``."""


class AppModifyTimer(_Timer, kw_only=True):
    """-> ``{}``: name, timing and ``Data`` replaced."""

    TimerId: str


class AppGetTimerList(_Device, kw_only=True):
    """-> ``{"Total", "TimerList": [...]}``."""

    Offset: Count = None
    Limit: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None


class AppModifyTimerStatus(_Device, kw_only=True):
    """-> ``{}``: ``Status`` 1 on, 0 off."""

    TimerId: str
    Status: Literal[0, 1] | None = None


class AppDeleteTimer(_Device, kw_only=True):
    """-> ``{}``."""

    TimerId: str


class AppGetUser(msgspec.Struct, kw_only=True):
    """-> ``{"Data": {UserID, NickName, Avatar, Email, CountryCode, PhoneNumber, ...}}``."""


class AppUpdateUser(msgspec.Struct, kw_only=True):
    """-> ``{}``: ``NickName`` and/or ``Avatar``; a phone or e-mail is refused here."""

    NickName: Text = None
    Avatar: Text = None
    CountryCode: Text = None
    PhoneNumber: Text = None
    Email: Text = None
    VerificationCode: Text = None


class AppLogoutUser(msgspec.Struct, kw_only=True):
    """-> ``{}``: the AccessToken used is revoked."""


class AppUserResetPassword(msgspec.Struct, kw_only=True):
    """-> ``{}``: the current ``Password`` replaced by ``NewPassword``."""

    Password: str
    NewPassword: str


class AppGetUserSetting(msgspec.Struct, kw_only=True):
    """-> ``{"UserSetting": {...}}``."""


Flag = Literal[0, 1] | None


class AppUpdateUserSetting(msgspec.Struct, kw_only=True):
    """-> ``{}``: each setting sent is replaced (at least one)."""

    EnableWechatPush: Flag = None
    EnableDeviceMessagePush: Flag = None
    EnableFamilyMessagePush: Flag = None
    EnableNotifyMessagePush: Flag = None
    TemperatureUnit: Text = None
    Region: Text = None
    TimeZone: Text = None


# -- appapi -----------------------------------------------------------------------------------


class AppGetToken(msgspec.Struct, kw_only=True):
    """-> ``{"Data": {"Token", "ExpireAt"}}``: sign in with ``Password`` or a login code."""

    Type: Literal["phone", "email"] | None = None
    CountryCode: Text = None
    PhoneNumber: Text = None
    Email: Text = None
    Password: Text = None
    VerificationCode: Text = None


CodeType = Literal["register", "login", "resetpass"]


class _Phone(msgspec.Struct, kw_only=True):
    CountryCode: str
    PhoneNumber: str


class _Email(msgspec.Struct, kw_only=True):
    Email: str


class AppSendVerificationCode(_Phone, kw_only=True):
    """-> ``{}``: an SMS code."""

    Type: CodeType


class AppCheckVerificationCode(_Phone, kw_only=True):
    """-> ``{}`` when the code is right."""

    VerificationCode: str


class AppCreateCellphoneUser(_Phone, kw_only=True):
    """-> ``{"Data": {"UserID"}}``."""

    Password: str
    VerificationCode: str


class AppSendEmailVerificationCode(_Email, kw_only=True):
    """-> ``{}``: a mailed code."""

    Type: CodeType


class AppCheckEmailVerificationCode(_Email, kw_only=True):
    """-> ``{}`` when the code is right."""

    VerificationCode: str


class AppCreateEmailUser(_Email, kw_only=True):
    """-> ``{"Data": {"UserID"}}``."""

    Password: str
    VerificationCode: str


class AppResetPasswordByCellphone(_Phone, kw_only=True):
    """-> ``{}``: every session of the user ends."""

    Password: str
    VerificationCode: str


class AppResetPasswordByEmail(_Email, kw_only=True):
    """-> ``{}``: every session of the user ends."""

    Password: str
    VerificationCode: str


def _by_name(*forms: type[msgspec.Struct]) -> Mapping[str, type[msgspec.Struct]]:
    return {form.__name__: form for form in forms}


TOKENAPI_PARAMS: Final = _by_name(
    AppGetDeviceData,
    AppControlDeviceData,
    AppGetDeviceStatuses,
    AppListEventHistory,
    AppSigBindDeviceInFamily,
    AppCallDeviceAction,
    AppCallDeviceActionSync,
    AppGetFamilyList,
    AppGetFamilyDeviceList,
    AppDeleteDeviceInFamily,
    AppUpdateDeviceInFamily,
    AppCreateTimer,
    AppGetTimerList,
    AppModifyTimer,
    AppModifyTimerStatus,
    AppDeleteTimer,
    AppGetUser,
    AppUpdateUser,
    AppLogoutUser,
    AppUserResetPassword,
    AppGetUserSetting,
    AppUpdateUserSetting,
)
"""``tokenapi`` Action -> its own parameters (besides `TokenCommon`)."""

APPAPI_PARAMS: Final = _by_name(
    AppGetToken,
    AppSendVerificationCode,
    AppCheckVerificationCode,
    AppCreateCellphoneUser,
    AppSendEmailVerificationCode,
    AppCheckEmailVerificationCode,
    AppCreateEmailUser,
    AppResetPasswordByCellphone,
    AppResetPasswordByEmail,
)
"""``appapi`` Action -> its own parameters (besides `SignedCommon`)."""


def success_schema() -> dict[str, Any]:
    """The JSON Schema of a successful answer (the ``response`` envelope): ``Response`` holds
    the Action's fields and ``RequestId``, never ``Error``."""
    return {
        "type": "object",
        "title": "Tencent success",
        "properties": {
            "Response": {
                "type": "object",
                "description": "The Action's answer (see its parameters' description)",
                "properties": {"RequestId": {"type": "string"}},
                "required": ["RequestId"],
                "not": {"required": ["Error"]},
            }
        },
        "required": ["Response"],
    }


def _names(form: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(form.__struct_encode_fields__)


class DeclaredParams(Mapping[str, Any]):
    """A call's parameters as its Action may read them: by name only those its struct and the
    endpoint's common struct declare (`UndeclaredParam` otherwise); iterated, the names of all
    those sent."""

    def __init__(
        self,
        params: Mapping[str, Any],
        action: type[msgspec.Struct],
        common: type[msgspec.Struct],
    ) -> None:
        self._params = params
        self._declared = _names(action) | _names(common) | {"Action"}
        self._action = action.__name__

    def __getitem__(self, name: str) -> Any:
        if name not in self._declared:
            raise UndeclaredParam(f"{self._action} reads {name!r}, which it does not declare")
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)
