"""The pure parts of the external-broker adapter: the broker URL, the dynamic-security commands
that keep Mosquitto's copy of a device in step with the registry, and the reading of Mosquitto's
connection log lines."""

from __future__ import annotations

import dataclasses
import os

import pytest

from iotcloud.gateway.broker import (
    DeviceCredential,
    DevicePrincipal,
    DisconnectReason,
    may_publish,
    may_subscribe,
    topic_matches,
)
from iotcloud.gateway.external import (
    CLIENT_TEXT_NAME,
    ROLE_PREFIX,
    BrokerTarget,
    _ending,
    default_client_id,
    device_acls,
    fingerprint,
    sync_commands,
)

PK = "6f3074fe43894547a4f1314bd7e3ae0b"
DID = "gKufzxZwYeyd3Skbsb6mza"
OTHER = "hLvgayAxZfze4Tlctc7nzb"
ENABLED = DeviceCredential(did=DID, product_key=PK, passcode="ABCDEFGHIJ", enabled=True)
DISABLED = dataclasses.replace(ENABLED, enabled=False)


# -- the broker URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "mqtt://broker.example",
            BrokerTarget("broker.example", 1883, None, None, default_client_id(), tls=False),
            id="mqtt-default-port",
        ),
        pytest.param(
            "mqtts://broker.example",
            BrokerTarget("broker.example", 8883, None, None, default_client_id(), tls=True),
            id="mqtts-default-port",
        ),
        pytest.param(
            "mqtts://gw:pw@10.0.0.5:9883",
            BrokerTarget("10.0.0.5", 9883, "gw", "pw", default_client_id(), tls=True),
            id="explicit-port",
        ),
        pytest.param(
            "mqtt://ops%40corp:s%40cr%3At%2F%25x@broker.example:1884?client_id=edge-1",
            BrokerTarget("broker.example", 1884, "ops@corp", "s@cr:t/%x", "edge-1", tls=False),
            id="percent-escapes-and-client-id",
        ),
        pytest.param(
            "mqtt://gw@[::1]",
            BrokerTarget("::1", 1883, "gw", None, default_client_id(), tls=False),
            id="ipv6-user-without-password",
        ),
    ],
)
def test_broker_url_is_parsed(url: str, expected: BrokerTarget) -> None:
    assert BrokerTarget.parse(url) == expected


def test_the_default_client_id_is_the_processs_own() -> None:
    assert default_client_id().endswith(f"-{os.getpid()}")
    assert default_client_id().startswith("iotcloud-")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("http://broker.example", "scheme", id="http"),
        pytest.param("broker.example:1883", "scheme", id="no-scheme"),
        pytest.param("mqtt://", "no host", id="no-host"),
        pytest.param("mqtt://gw:pw@:1883", "no host", id="credentials-but-no-host"),
        pytest.param("mqtt://broker.example:mqtt", "bad port", id="port-not-a-number"),
        pytest.param("mqtt://broker.example:70000", "bad port", id="port-out-of-range"),
        pytest.param("mqtt://broker.example?keepalive=5", "'keepalive'", id="unknown-parameter"),
        pytest.param("mqtt://broker.example?verify=", "'verify'", id="unknown-blank-parameter"),
        pytest.param("mqtt://broker.example?client_id=", "client_id", id="empty-client-id"),
        pytest.param("mqtt://broker.example?client_id", "client_id", id="bare-client-id"),
    ],
)
def test_bad_broker_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        BrokerTarget.parse(url)


def test_broker_url_as_text_never_shows_the_password() -> None:
    target = BrokerTarget.parse("mqtts://gw:hunter2%21@broker.example?client_id=edge-1")
    assert target.password == "hunter2!"
    assert str(target) == "mqtts://broker.example:8883"
    assert f"connected to {target}" == "connected to mqtts://broker.example:8883"


# -- what Mosquitto must hold for one device --------------------------------------------------


def test_fingerprint_follows_everything_the_broker_copy_holds() -> None:
    assert fingerprint(ENABLED) == fingerprint(dataclasses.replace(ENABLED))
    variants = [
        dataclasses.replace(ENABLED, passcode="ABCDEFGHIK"),
        DISABLED,
        dataclasses.replace(ENABLED, product_key="0123456789abcdef0123456789abcdef"),
    ]
    marks = {fingerprint(ENABLED), *(fingerprint(v) for v in variants)}
    assert len(marks) == 1 + len(variants)
    assert all(ENABLED.passcode not in mark for mark in marks)


def test_absent_enabled_device_gets_a_role_with_its_acl_and_a_client() -> None:
    role = ROLE_PREFIX + DID
    assert sync_commands(ENABLED, None) == [
        {
            "command": "createRole",
            "rolename": role,
            "acls": [
                {"acltype": "publishClientSend", "topic": f"dev2app/{DID}", "allow": True},
                {"acltype": "publishClientSend", "topic": f"dev2app/{DID}/+", "allow": True},
                {"acltype": "publishClientSend", "topic": "cli2ser_req", "allow": True},
                {"acltype": "subscribePattern", "topic": f"app2dev/{DID}/#", "allow": True},
                {"acltype": "subscribePattern", "topic": f"ser2cli_res/{DID}", "allow": True},
                {"acltype": "subscribePattern", "topic": f"ser2cli_noti/{PK}", "allow": True},
            ],
        },
        {
            "command": "createClient",
            "username": DID,
            "clientid": DID,
            "password": ENABLED.passcode,
            "textname": CLIENT_TEXT_NAME,
            "textdescription": fingerprint(ENABLED),
            "roles": [{"rolename": role}],
        },
    ]


@pytest.mark.parametrize(
    "topic",
    [
        f"dev2app/{DID}",
        f"dev2app/{DID}/app-client-7",
        f"dev2app/{DID}/a/b",
        f"dev2app/{OTHER}",
        f"dev2app/{OTHER}/x",
        "dev2app",
        "cli2ser_req",
        "cli2ser_req/x",
        f"app2dev/{DID}/x",
        f"ser2cli_res/{DID}",
        f"ser2cli_noti/{PK}",
    ],
)
def test_device_publish_acl_allows_what_the_gateway_rules_allow(topic: str) -> None:
    """A dynamic-security ``publishClientSend`` ACL matches topics like a subscription filter."""
    principal = DevicePrincipal(DID, PK)
    patterns = {
        acl["topic"] for acl in device_acls(DID, PK) if acl["acltype"] == "publishClientSend"
    }
    allowed_by_broker = any(topic_matches(pattern, topic) for pattern in patterns)
    assert allowed_by_broker == may_publish(principal, topic)


def test_device_subscribe_acl_patterns_are_all_allowed_by_the_gateway_rules() -> None:
    principal = DevicePrincipal(DID, PK)
    patterns = [a["topic"] for a in device_acls(DID, PK) if a["acltype"] == "subscribePattern"]
    assert patterns == [f"app2dev/{DID}/#", f"ser2cli_res/{DID}", f"ser2cli_noti/{PK}"]
    assert all(may_subscribe(principal, pattern) for pattern in patterns)
    assert all(a["allow"] is True for a in device_acls(DID, PK))


def test_absent_disabled_device_is_not_created() -> None:
    assert sync_commands(DISABLED, None) == []


@pytest.mark.parametrize("credential", [ENABLED, DISABLED], ids=["enabled", "disabled"])
def test_device_whose_broker_copy_matches_needs_nothing(credential: DeviceCredential) -> None:
    present = {"username": DID, "textname": CLIENT_TEXT_NAME}
    assert sync_commands(credential, {**present, "textdescription": fingerprint(credential)}) == []


def test_changed_enabled_device_gets_its_passcode_and_is_enabled() -> None:
    changed = dataclasses.replace(ENABLED, passcode="KLMNOPQRST")
    present = {"username": DID, "textdescription": fingerprint(DISABLED)}
    assert sync_commands(changed, present) == [
        {"command": "setClientPassword", "username": DID, "password": "KLMNOPQRST"},
        {"command": "enableClient", "username": DID},
        {"command": "modifyClient", "username": DID, "textdescription": fingerprint(changed)},
    ]


def test_disabled_device_present_in_the_broker_is_disabled_there() -> None:
    present = {"username": DID, "textdescription": fingerprint(ENABLED)}
    assert sync_commands(DISABLED, present) == [
        {"command": "disableClient", "username": DID},
        {"command": "modifyClient", "username": DID, "textdescription": fingerprint(DISABLED)},
    ]


def test_broker_copy_without_a_fingerprint_is_brought_in_step() -> None:
    commands = sync_commands(ENABLED, {"username": DID})
    assert [c["command"] for c in commands] == ["setClientPassword", "enableClient", "modifyClient"]


# -- Mosquitto 2.0 connection log lines -------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "reason"),
    [
        pytest.param("disconnected.", DisconnectReason.CLEAN, id="disconnect"),
        pytest.param("closed its connection.", DisconnectReason.LOST, id="closed"),
        pytest.param(
            "disconnected: Connection reset by peer.", DisconnectReason.LOST, id="socket-error"
        ),
        pytest.param(
            "has exceeded timeout, disconnecting.",
            DisconnectReason.KEEPALIVE_TIMEOUT,
            id="keepalive",
        ),
        pytest.param(
            "already connected, closing old connection.",
            DisconnectReason.TAKEOVER,
            id="takeover",
        ),
        pytest.param("disconnected, not authorised.", DisconnectReason.KICKED, id="not-authorised"),
        pytest.param(
            "been disconnected by administrative action.",
            DisconnectReason.KICKED,
            id="administrative-action",
        ),
        pytest.param(
            "disconnected due to protocol error.",
            DisconnectReason.PROTOCOL_ERROR,
            id="protocol-error",
        ),
        pytest.param(
            "disconnected due to malformed packet.",
            DisconnectReason.PROTOCOL_ERROR,
            id="malformed-packet",
        ),
        pytest.param(
            "disconnected due to oversize packet.",
            DisconnectReason.PROTOCOL_ERROR,
            id="oversize-packet",
        ),
    ],
)
def test_mosquitto_session_endings_are_recognised(rest: str, reason: DisconnectReason) -> None:
    assert _ending(rest) == reason


@pytest.mark.parametrize(
    "rest",
    [
        "connected with too large Will payload",
        "sending multiple CONNECT messages.",
        "",
    ],
)
def test_other_client_lines_end_no_session(rest: str) -> None:
    assert _ending(rest) is None
