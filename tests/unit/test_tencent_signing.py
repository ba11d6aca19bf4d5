"""The signed app API's pure parts: the signature rule (spec §1.2) against vectors computed here
independently, JavaScript's stringification of values, the timestamp window, the phone mapping
shared with ``tokenapi``, and both envelopes (spec §1.3)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from iotcloud import errors
from iotcloud.api.tencent.appapi import stored_phone
from iotcloud.api.tencent.signing import (
    js_string,
    sign,
    signature_matches,
    string_to_sign,
    within_window,
)
from iotcloud.api.tencent.users import split_phone
from iotcloud.api.tencent.wire import (
    AppKeyUnknown,
    AppSignatureInvalid,
    AppTimestampInvalid,
    PhoneNumberInvalid,
    error_body,
    error_number,
    success_body,
    tencent_error,
)
from iotcloud.config import ConfigError, Settings

SECRET = "s3cr3t-app-secret"


def independent_signature(secret: str, text: str) -> str:
    return base64.b64encode(
        hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    ).decode()


def test_a_call_signs_its_sorted_parameters_as_the_node_sdk_does() -> None:
    params: dict[str, Any] = {
        "Action": "AppGetToken",
        "RequestId": "req-1",
        "AppKey": "appkey01",
        "Timestamp": 1700000000,
        "Nonce": 4711,
        "Type": "email",
        "Email": "a+b@example.com",
        "Password": "p&ss=word",
        "Remember": True,
    }
    # written out by hand: keys in code-unit order, values raw (no URL-encoding)
    text = (
        "Action=AppGetToken&AppKey=appkey01&Email=a+b@example.com&Nonce=4711"
        "&Password=p&ss=word&Remember=true&RequestId=req-1&Timestamp=1700000000&Type=email"
    )
    assert string_to_sign(params) == text
    signature = sign(SECRET, params)
    assert signature == independent_signature(SECRET, text)
    assert len(signature) == 28  # Base64 of SHA-1, like the documented samples
    signed = {**params, "Signature": signature}
    assert string_to_sign(signed) == text  # Signature itself is never signed
    assert signature_matches(SECRET, signed)


def test_the_sort_is_by_code_unit_and_case_sensitive() -> None:
    params = {"b": 1, "B": 2, "a": 3, "_": 4, "Z": 5, "\uff01": 6, "\U0001f600": 7}
    # JavaScript sorts UTF-16 code units: the astral U+1F600 (0xD83D...) before U+FF01
    assert string_to_sign(params) == "B=2&Z=5&_=4&a=3&b=1&\U0001f600=7&\uff01=6"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x y&z", "x y&z"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (0, "0"),
        (-12, "-12"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-0.25, "-0.25"),
        (0.1, "0.1"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (2.5e-8, "2.5e-8"),
        (2**60, "1152921504606847000"),
        ([1, "a", None, True], "1,a,,true"),
        ({"k": 1}, "[object Object]"),
    ],
)
def test_values_stringify_as_javascript_does(value: Any, text: str) -> None:
    assert js_string(value) == text


def test_a_signature_fails_on_any_change() -> None:
    params = {"Action": "AppGetToken", "AppKey": "k", "Timestamp": 10, "Nonce": 1}
    signed = {**params, "Signature": sign(SECRET, params)}
    assert signature_matches(SECRET, signed)
    assert not signature_matches("another-secret", signed)
    assert not signature_matches(SECRET, {**signed, "Nonce": 2})
    assert not signature_matches(SECRET, {**signed, "Nonce": "01"})
    assert not signature_matches(SECRET, {**signed, "Extra": ""})
    assert not signature_matches(SECRET, params)  # no Signature at all
    assert not signature_matches(SECRET, {**params, "Signature": 5})
    # the same text, differently typed, signs the same: the rule sees strings only
    assert signature_matches(SECRET, {**signed, "Timestamp": "10"})


def test_the_timestamp_window_holds_both_ways() -> None:
    assert within_window(1000, 1300.0, 300)
    assert within_window(1600, 1300.0, 300)
    assert not within_window(999, 1300.0, 300)
    assert not within_window(1601, 1300.0, 300)


@pytest.mark.parametrize(
    ("country_code", "number", "stored"),
    [
        ("86", "13800138000", "13800138000"),
        ("+86", "13800138000", "13800138000"),
        ("1", "4155550100", "+14155550100"),
        ("44", "7700900123", "+447700900123"),
        ("852", "51234567", "+85251234567"),
    ],
)
def test_phones_are_stored_as_gizwits_apps_send_them(
    country_code: str, number: str, stored: str
) -> None:
    assert stored_phone(country_code, number) == stored
    assert split_phone(stored) == (country_code.lstrip("+"), number)


@pytest.mark.parametrize(
    ("country_code", "number", "named"),
    [
        ("", "13800138000", "CountryCode"),
        ("8a", "1380", "CountryCode"),
        ("86", "+86138", "PhoneNumber"),
        ("86", "123", "PhoneNumber"),
        ("1", "1" * 20, "PhoneNumber"),
    ],
)
def test_bad_phones_name_the_parameter(country_code: str, number: str, named: str) -> None:
    with pytest.raises(PhoneNumberInvalid, match=f"^{named}: "):
        stored_phone(country_code, number)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AppKeyUnknown("AppKey: x"), "AuthFailure.SecretIdNotFound"),
        (AppTimestampInvalid("Timestamp: x"), "AuthFailure.SignatureExpire"),
        (AppSignatureInvalid("Signature: x"), "AuthFailure.SignatureFailure"),
        (errors.NonceReplayed("Nonce: x"), "AuthFailure.NonceReplayed"),
        (PhoneNumberInvalid("PhoneNumber: x"), "InvalidParameterValue.PhoneNumberInvalid"),
        (errors.UserNotFound("x"), "InvalidParameterValue.ErrorUserNotExists"),
        (errors.LoginFailed("x"), "InvalidParameterValue.UserLoginFailed"),
        (errors.CodeInvalid("x"), "InvalidParameterValue.VerificationCodeInvalid"),
        (errors.CodeExpired("x"), "InvalidParameterValue.VerificationCodeExpired"),
        (errors.PhoneUnavailable("x"), "InvalidParameterValue.PhoneNumberRegistered"),
        (errors.EmailUnavailable("x"), "InvalidParameterValue.EmailRegistered"),
    ],
)
def test_signed_tier_errors_have_their_codes(error: errors.IotCloudError, code: str) -> None:
    assert tencent_error(error)[0] == code
    # the Gizwits-side classes they refine keep their own rendering
    assert tencent_error(errors.SignatureInvalid("x"))[0] == "FailedOperation"
    assert tencent_error(errors.TimestampInvalid("x"))[0] == "FailedOperation"


def test_the_sdk_envelope_wraps_the_response_content() -> None:
    content = {"Data": {"Token": "t", "ExpireAt": 5}}
    assert success_body("r1", content, "sdk") == {
        "code": 0,
        "msg": "",
        "data": {"Data": {"Token": "t", "ExpireAt": 5}, "RequestId": "r1"},
    }
    assert success_body("r1", content, "response") == success_body("r1", content)
    failure = error_body("r2", "InvalidAction", "Action: 'X'", "sdk", 9015)
    assert failure == {
        "code": 9015,
        "msg": "Action: 'X'",
        "data": {"Error": {"Code": "InvalidAction", "Message": "Action: 'X'"}, "RequestId": "r2"},
    }
    # what Tencent's SDKs do with it: Android/iOS test code != 0, Node then data.Error
    assert failure["code"] != 0
    assert failure["data"]["Error"]["Code"] == "InvalidAction"
    assert error_body("r3", "X", "m", "sdk", 0)["code"] != 0  # never a success by mistake


def test_sdk_failure_numbers_are_the_stable_iotcloud_codes() -> None:
    assert (
        error_number(errors.UserNotFound("x"), "InvalidParameterValue.ErrorUserNotExists") == 9005
    )
    assert error_number(errors.NonceReplayed("x"), "AuthFailure.NonceReplayed") == 9044
    assert error_number(RuntimeError("boom"), "InternalError") == 9008
    assert error_number(ValueError("routing"), "InvalidAction") == 9015


def test_the_envelope_setting_is_validated() -> None:
    assert Settings.load({}).tencent_envelope == "response"
    assert Settings.load({"IOTCLOUD_TENCENT_ENVELOPE": "sdk"}).tencent_envelope == "sdk"
    with pytest.raises(ConfigError, match="IOTCLOUD_TENCENT_ENVELOPE must be response or sdk"):
        Settings.load({"IOTCLOUD_TENCENT_ENVELOPE": "Response"})
    with pytest.raises(ConfigError, match="IOTCLOUD_TENCENT_SIGNATURE_WINDOW must be positive"):
        Settings.load({"IOTCLOUD_TENCENT_SIGNATURE_WINDOW": "0"})
