"""Pure rules of data-template (Tencent) devices: sign-in fields and signature, ``$thing``
topics, message envelopes, and the topic ACL of such a device."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from iotcloud.codecs.thing import (
    ThingMessageError,
    decode_message,
    parse_thing_topic,
    thing_topic,
)
from iotcloud.domain.thing_auth import (
    device_password,
    expiry_passed,
    parse_username,
    password_matches,
    sign,
    split_client_id,
)
from iotcloud.gateway.broker import DevicePrincipal, is_cloud_topic, may_publish, may_subscribe

PSK = base64.b64encode(b"0123456789abcdef").decode()
USERNAME = "ABCDE12345lamp;12010126;x7Yq1;1999999999"
DEVICE = DevicePrincipal(
    did="gKufzxZwYeyd3Skbsb6mza", product_key="ABCDE12345", device_name="lamp", thing=True
)


def test_the_password_is_the_hex_hmac_of_the_username_with_the_decoded_psk() -> None:
    # the C SDK's documented construction, computed independently here
    sha1 = hmac.new(b"0123456789abcdef", USERNAME.encode(), hashlib.sha1).hexdigest()
    assert device_password(PSK, USERNAME) == f"{sha1};hmacsha1"
    sha256 = hmac.new(b"0123456789abcdef", USERNAME.encode(), hashlib.sha256).hexdigest()
    assert device_password(PSK, USERNAME, "hmacsha256") == f"{sha256};hmacsha256"
    assert (
        sign(PSK, "DeviceName=lamp", "hmacsha1")
        == hmac.new(b"0123456789abcdef", b"DeviceName=lamp", hashlib.sha1).hexdigest()
    )


@pytest.mark.parametrize("method", ["hmacsha1", "hmacsha256"])
def test_a_matching_password_of_either_method_is_accepted(method: str) -> None:
    password = device_password(PSK, USERNAME, method)  # type: ignore[arg-type]
    assert password_matches(PSK, USERNAME, password)
    signature, method_name = password.split(";")
    assert password_matches(PSK, USERNAME, f"{signature.upper()};{method_name}")


@pytest.mark.parametrize(
    "password",
    [
        device_password(base64.b64encode(b"another key 1234").decode(), USERNAME),
        device_password(PSK, USERNAME + "0"),
        device_password(PSK, USERNAME).replace(";hmacsha1", ";hmacsha256"),
        device_password(PSK, USERNAME).replace(";hmacsha1", ";hmacmd5"),
        device_password(PSK, USERNAME).split(";")[0],
        ";hmacsha1",
        "",
    ],
)
def test_a_wrong_or_malformed_password_is_refused(password: str) -> None:
    assert not password_matches(PSK, USERNAME, password)


def test_a_psk_that_is_not_base64_never_matches() -> None:
    assert not password_matches("not base64!", USERNAME, "00;hmacsha1")


def test_username_fields() -> None:
    parsed = parse_username(USERNAME)
    assert parsed is not None
    assert (parsed.client_id, parsed.sdkappid, parsed.connid, parsed.expiry) == (
        "ABCDE12345lamp",
        "12010126",
        "x7Yq1",
        1999999999,
    )
    for bad in ("ABCDE12345lamp", "a;b;c", "a;b;c;d;e", ";1;2;3", "a;b;c;-5", "a;b;c;1.5"):
        assert parse_username(bad) is None, bad


def test_only_a_past_expiry_in_seconds_refuses() -> None:
    now = 1_700_000_000
    assert expiry_passed(now - 1, now)
    assert not expiry_passed(now + 60, now)
    assert not expiry_passed((now - 3600) * 1000, now)  # milliseconds: not checked


def test_client_id_splits_after_the_ten_character_product_id() -> None:
    assert split_client_id("ABCDE12345lamp") == ("ABCDE12345", "lamp")
    assert split_client_id("ABCDE12345") is None
    assert split_client_id("abcde12345lamp") is None
    assert split_client_id("gKufzxZwYeyd3Skbsb6mza") is None


def test_thing_topics() -> None:
    assert thing_topic("up", "event", "ABCDE12345", "lamp") == "$thing/up/event/ABCDE12345/lamp"
    parsed = parse_thing_topic("$thing/down/action/ABCDE12345/lamp")
    assert parsed is not None
    assert (parsed.direction, parsed.kind) == ("down", "action")
    for bad in (
        "$thing/up/raw/ABCDE12345/lamp",
        "$thing/sideways/property/ABCDE12345/lamp",
        "$thing/up/property/ABCDE12345",
        "$thing/up/property/ABCDE12345/lamp/x",
        "$thing/up/property/+/lamp",
        "$thing/up/property/ABCDE12345/#",
        "thing/up/property/ABCDE12345/lamp",
    ):
        assert parse_thing_topic(bad) is None, bad


def test_a_data_template_device_publishes_and_subscribes_only_its_own_thing_topics() -> None:
    for kind in ("property", "event", "action", "service"):
        assert may_publish(DEVICE, f"$thing/up/{kind}/ABCDE12345/lamp")
        assert may_subscribe(DEVICE, f"$thing/down/{kind}/ABCDE12345/lamp")
        assert not may_publish(DEVICE, f"$thing/down/{kind}/ABCDE12345/lamp")
        assert not may_subscribe(DEVICE, f"$thing/up/{kind}/ABCDE12345/lamp")
        assert not may_publish(DEVICE, f"$thing/up/{kind}/ABCDE12345/lamp2")
        assert not may_subscribe(DEVICE, f"$thing/down/{kind}/ZZZZZ12345/lamp")
    for topic_filter in (
        "$thing/down/+/ABCDE12345/lamp",
        "$thing/down/property/ABCDE12345/+",
        "$thing/#",
        "#",
        f"app2dev/{DEVICE.did}/#",
    ):
        assert not may_subscribe(DEVICE, topic_filter), topic_filter
    assert not may_publish(DEVICE, f"dev2app/{DEVICE.did}")
    assert not may_publish(DEVICE, "cli2ser_req")


def test_a_gizwits_device_gets_no_thing_topics() -> None:
    gizwits = DevicePrincipal(did="gKufzxZwYeyd3Skbsb6mza", product_key="ABCDE12345")
    assert gizwits.client_id == gizwits.did
    assert not may_publish(gizwits, "$thing/up/property/ABCDE12345/gKufzxZwYeyd3Skbsb6mza")
    assert not may_subscribe(gizwits, "$thing/down/property/ABCDE12345/gKufzxZwYeyd3Skbsb6mza")
    assert DEVICE.client_id == "ABCDE12345lamp"


def test_the_cloud_may_publish_thing_down_topics_only() -> None:
    assert is_cloud_topic("$thing/down/property/ABCDE12345/lamp")
    assert is_cloud_topic("app2dev/x/cloud")
    assert not is_cloud_topic("$thing/up/property/ABCDE12345/lamp")
    assert not is_cloud_topic("$SYS/broker")


def test_message_envelopes() -> None:
    message = decode_message(b'{"clientToken": 7, "code": 3, "status": "bad\\u0000"}')
    assert (message.method, message.client_token, message.code(), message.status()) == (
        "",
        "7",
        3,
        "bad",
    )
    assert decode_message(b'{"method": "report"}').code() == 0
    for bad in (b"not json", b"[1]", b'{"method": 1}', b'{"clientToken": {}}', b"\xff"):
        with pytest.raises(ThingMessageError):
            decode_message(bad)
    with pytest.raises(ThingMessageError, match="params"):
        decode_message(b'{"method": "report", "params": [1]}').params()
    with pytest.raises(ThingMessageError, match="code"):
        decode_message(b'{"code": "0"}').code()
