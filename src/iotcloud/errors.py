"""One error root with stable codes, and the Gizwits code table (code -> HTTP status, message).

Services raise subclasses of :class:`IotCloudError`; each API dialect renders them once. Nothing
outside ``api/`` raises HTTP exceptions.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple


class ErrorSpec(NamedTuple):
    status: int
    message: str


#: The Gizwits Open API error table, verbatim from the seed document.
GIZWITS_ERRORS: dict[int, ErrorSpec] = {
    9001: ErrorSpec(400, "mac already registered!"),
    9002: ErrorSpec(400, "product_key invalid"),
    9003: ErrorSpec(400, "appid invalid"),
    9004: ErrorSpec(400, "token invalid"),
    9005: ErrorSpec(400, "user not exist"),
    9006: ErrorSpec(400, "token expired"),
    9007: ErrorSpec(400, "m2m_id invalid"),
    9008: ErrorSpec(500, "server error"),
    9009: ErrorSpec(400, "code expired"),
    9010: ErrorSpec(400, "code invalid"),
    9011: ErrorSpec(400, "sandbox scale quota exhausted!"),
    9012: ErrorSpec(400, "production scale quota exhausted!"),
    9013: ErrorSpec(400, "product has no request scale!"),
    9014: ErrorSpec(404, "device not found!"),
    9015: ErrorSpec(400, "form invalid!"),
    9016: ErrorSpec(400, "did or passcode invalid!"),
    9017: ErrorSpec(401, "device not bound!"),
    9018: ErrorSpec(400, "phone unavailable!"),
    9019: ErrorSpec(400, "username unavailable!"),
    9020: ErrorSpec(400, "username or password error!"),
    9021: ErrorSpec(400, "send command failed!"),
    9022: ErrorSpec(400, "email unavailable!"),
    9023: ErrorSpec(400, "device is disabled!"),
    9024: ErrorSpec(400, "fail to notify m2m!"),
    9025: ErrorSpec(400, "attr invalid!"),
    9026: ErrorSpec(400, "user invalid!"),
    9027: ErrorSpec(404, "firmware not found!"),
    9028: ErrorSpec(404, "JD product info not found!"),
    9029: ErrorSpec(400, "datapoint data not found!"),
    9030: ErrorSpec(404, "scheduler not found!"),
    9031: ErrorSpec(400, "qq oauth key invalid!"),
    9032: ErrorSpec(400, "ota upgrade service OK, but in idle or disable!"),
    9033: ErrorSpec(400, "bt firmware unverified, except verify device!"),
    9034: ErrorSpec(404, "bt firmware is OK, but nothing to upgrade!"),
    9035: ErrorSpec(500, "Save kairosdb error!"),
    9036: ErrorSpec(400, "event not defined!"),
    9037: ErrorSpec(400, "send sms failed!"),
    9038: ErrorSpec(400, "X-Gizwits-Application-Auth invalid!"),
    9039: ErrorSpec(403, "Not allowed to call deprecated API!"),
    9040: ErrorSpec(400, "bad qrcode content!"),
    9041: ErrorSpec(429, "request was throttled"),
    9042: ErrorSpec(400, "device offline!"),
    9043: ErrorSpec(400, "X-Gizwits-Timestamp invalid!"),
    9044: ErrorSpec(400, "X-Gizwits-Signature invalid!"),
    9045: ErrorSpec(400, "API deprecated!"),
    # not in the seed's table: the codes the device API answers when a product takes only
    # encrypted registration (spec gizwits.md §3.2)
    9047: ErrorSpec(403, "device must register encrypted!"),
    9048: ErrorSpec(403, "device must provision encrypted!"),
    9999: ErrorSpec(400, "reserved"),
}


class IotCloudError(Exception):
    """Root of every error a client can see. ``code`` is the stable Gizwits code.

    ``detail`` names the problem for humans (the Gizwits ``detail_message``).
    """

    code: ClassVar[int] = 9999

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail

    @property
    def message(self) -> str:
        return GIZWITS_ERRORS[self.code].message

    @property
    def http_status(self) -> int:
        return GIZWITS_ERRORS[self.code].status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, detail={self.detail!r})"


class ProductKeyInvalid(IotCloudError):
    code = 9002


class AppIdInvalid(IotCloudError):
    code = 9003


class TokenInvalid(IotCloudError):
    code = 9004


class UserNotFound(IotCloudError):
    code = 9005


class TokenExpired(IotCloudError):
    code = 9006


class ServerError(IotCloudError):
    code = 9008


class DatabaseUnavailable(ServerError):
    """The database cannot be reached now (refused, timed out, restarting): 9008 like any
    server error, but HTTP 503 rather than the table's 500, so that clients and load balancers
    see a temporary condition and retry; nothing crashed, so no traceback is logged for it."""

    retry_after = 5

    @property
    def http_status(self) -> int:
        return 503


class CodeExpired(IotCloudError):
    code = 9009


class CodeInvalid(IotCloudError):
    code = 9010


class DeviceNotFound(IotCloudError):
    code = 9014


class FormInvalid(IotCloudError):
    """Body, query or headers do not match the endpoint's form; the detail names the field."""

    code = 9015


class DeviceNotBound(IotCloudError):
    code = 9017


class PhoneUnavailable(IotCloudError):
    code = 9018


class UsernameUnavailable(IotCloudError):
    code = 9019


class LoginFailed(IotCloudError):
    code = 9020


class EmailUnavailable(IotCloudError):
    code = 9022


class AttrInvalid(IotCloudError):
    code = 9025


class UserInvalid(IotCloudError):
    code = 9026


class ScheduleNotFound(IotCloudError):
    """No schedule with that id among the caller's (unknown, deleted, or another user's)."""

    code = 9030


class ThirdPartyAuthInvalid(IotCloudError):
    code = 9031


class SmsSendFailed(IotCloudError):
    code = 9037


class AppAuthInvalid(IotCloudError):
    code = 9038


class Throttled(IotCloudError):
    """Too many requests; ``retry_after`` (seconds) is sent as the ``Retry-After`` header."""

    code = 9041

    def __init__(self, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class NothingChanged(IotCloudError):
    """``PUT /app/users`` whose values equal the stored ones (Gizwits answers 9999)."""

    code = 9999


class MailSendFailed(ServerError):
    """The mail provider refused or could not be reached."""


class DeviceAuthInvalid(IotCloudError):
    """A device call named a did whose passcode does not match."""

    code = 9016


class DeviceOffline(IotCloudError):
    """A command for a device that has no MQTT session."""

    code = 9042


class DeviceDisabled(IotCloudError):
    """The device was disabled (by itself through ``DELETE /dev/devices``, or by an operator)."""

    code = 9023


class TimestampInvalid(IotCloudError):
    """``X-Gizwits-Timestamp`` missing, not Unix seconds, or outside the accepted window."""

    code = 9043


class SignatureInvalid(IotCloudError):
    """``X-Gizwits-Signature`` missing or not ``md5(product_secret + timestamp)``."""

    code = 9044


class NonceReplayed(SignatureInvalid):
    """A signed call reused the (app, ``Timestamp``, ``Nonce``) of an earlier one."""


class ProductDefinitionInvalid(FormInvalid):
    """A datapoint JSON failed validation; ``attr`` names the attr at fault (None when the problem
    is with the product as a whole). Nothing was stored."""

    def __init__(self, detail: str, attr: str | None = None) -> None:
        super().__init__(detail)
        self.attr = attr


class ProductKeyTaken(FormInvalid):
    """An import named a product_key that already exists and did not ask to replace it."""


class OperatorAuthFailed(TokenInvalid):
    """The operator API refused the caller: a missing or wrong ``Authorization: Bearer`` token
    (HTTP 401), or no admin token configured at all (HTTP 403, ``disabled=True``)."""

    def __init__(self, detail: str, *, disabled: bool = False) -> None:
        super().__init__(detail)
        self.disabled = disabled

    @property
    def http_status(self) -> int:
        return 403 if self.disabled else 401


class FamilyNotFound(FormInvalid):
    """A Tencent ``FamilyId`` that is not the caller's family (every user has exactly one)."""


class ProductProtocolMismatch(FormInvalid):
    """The product speaks the other protocol than the operation needs: a P0 datapoint
    definition or a MAC asked of a data-template (Tencent) product, a template or a device
    name asked of a Gizwits one. The detail names the product_key and the field at fault."""


class DeviceNoReply(DeviceOffline):
    """A device took a call (a Tencent action) and did not answer it in time."""


class DeviceTimestampInvalid(TimestampInvalid):
    """A device-signed request (``AppSigBindDeviceInFamily``) carries a ``DeviceTimestamp`` too
    far from the server's clock."""


class DeviceSignatureInvalid(SignatureInvalid):
    """A device-signed request's ``Signature`` is not the one the device's psk gives (or the
    device has no psk)."""


class EncryptedRegistrationRequired(IotCloudError):
    """A plain ``POST``/``DELETE /dev/devices`` for a product that takes only the encrypted
    registration (``signed`` policy)."""

    code = 9047


class EncryptedProvisionRequired(IotCloudError):
    """A plain ``GET /dev/devices/{did}`` for a device of a ``signed`` product."""

    code = 9048
