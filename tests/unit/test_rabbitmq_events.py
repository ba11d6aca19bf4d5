"""RabbitMQ's side of the scale-out gateway, without a broker: routing keys back to MQTT topics
(RabbitMQ's MQTT plugin swaps ``/`` and ``.``), and connection events from
``amq.rabbitmq.event`` (headers as RabbitMQ 3.10 sends them, captured from a real cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from iotcloud.gateway.external import rejoin_device_name
from iotcloud.gateway.rabbitmq import (
    ConnectionEvent,
    ManagementTarget,
    client_id_of_user,
    parse_connection_event,
    routing_key_of_topic,
    topic_of_routing_key,
)

CREATED_HEADERS = {
    "ssl": False,
    "client_properties": [],
    "variable_map": '#{<<"client_id">> => <<"dev1">>}',
    "user_who_performed_action": "dev1",
    "node": "iotcloud-test-1-3ba55561@localhost",
    "type": "direct",
    "vhost": "/",
    "user": "dev1",
    "peer_host": "{127,0,0,1}",
    "name": "127.0.0.1:51569 -> 127.0.0.1:47017",
    "protocol": "{'MQTT',\"3.1.1\"}",
    "timestamp_in_ms": 1796281838678,
}
CLOSED_HEADERS = {
    "name": "127.0.0.1:51569 -> 127.0.0.1:47017",
    "node": "iotcloud-test-1-3ba55561@localhost",
    "pid": "<iotcloud-test-1-3ba55561@localhost.1796275117.766.0>",
    "timestamp_in_ms": 1796281844687,
}
NODE = "iotcloud-test-1-3ba55561@localhost"
CREATED_AT = datetime(2026, 12, 3, 7, 10, 38, 678000, tzinfo=UTC)
CLOSED_AT = datetime(2026, 12, 3, 7, 10, 44, 687000, tzinfo=UTC)


@pytest.mark.parametrize(
    "topic",
    [
        "dev2app/abcdefghijklmnopqrstuv",
        "dev2app/abcdefghijklmnopqrstuv/app-client.7",
        "$thing/up/property/ABCDEFGHIJ/lamp",
        "$thing/up/event/ABCDEFGHIJ/lamp.kitchen.2",
        "$thing/up/action/ABCDEFGHIJ/a.b",
    ],
)
def test_a_device_topic_survives_the_round_trip_through_a_routing_key(topic: str) -> None:
    key = routing_key_of_topic(topic)
    assert "/" not in key
    assert topic_of_routing_key(key) == topic


def test_a_tencent_device_name_with_dots_keeps_them() -> None:
    # RabbitMQ 3.10 turns "/" into "." and leaves dots: the name is all after the fourth level
    assert routing_key_of_topic("$thing/up/property/PID/lamp.1") == "$thing.up.property.PID.lamp.1"
    assert topic_of_routing_key("$thing.up.property.PID.lamp.1") == "$thing/up/property/PID/lamp.1"
    # and delivers the key to MQTT subscribers with every "." as "/"
    assert rejoin_device_name("$thing/up/property/PID/lamp/1") == "$thing/up/property/PID/lamp.1"
    assert rejoin_device_name("$thing/up/property/PID/lamp") == "$thing/up/property/PID/lamp"
    assert rejoin_device_name("dev2app/did/app/client/7") == "dev2app/did/app.client.7"
    assert rejoin_device_name("dev2app/did") == "dev2app/did"


@pytest.mark.parametrize(
    "key",
    ["dev2app", "dev2app.", "dev2app.did.", "$thing.up.property.PID", "ser2cli_res.x"],
)
def test_a_routing_key_that_is_no_device_topic_is_refused(key: str) -> None:
    assert topic_of_routing_key(key) is None


def test_connection_created_carries_the_user_and_the_mqtt_client_id() -> None:
    event = parse_connection_event("connection.created", CREATED_HEADERS)
    assert event == ConnectionEvent(True, CREATED_HEADERS["name"], "dev1", "dev1", CREATED_AT, NODE)


def test_connection_created_given_as_bytes_is_read_the_same() -> None:
    raw = {
        key: value.encode() if isinstance(value, str) else value
        for key, value in CREATED_HEADERS.items()
    }
    assert parse_connection_event("connection.created", raw) == ConnectionEvent(
        True, CREATED_HEADERS["name"], "dev1", "dev1", CREATED_AT, NODE
    )


def test_a_data_template_device_is_known_by_its_client_id_not_its_signed_user_name() -> None:
    headers = {
        **CREATED_HEADERS,
        "user": "PIDlamp;12010126;ABCDE;4102444800",
        "variable_map": '#{<<"client_id">> => <<"PIDlamp">>}',
    }
    event = parse_connection_event("connection.created", headers)
    assert event is not None
    assert event.client_id == "PIDlamp"
    # without the variable map, the user name's first field is the client id
    assert client_id_of_user("PIDlamp;12010126;ABCDE;4102444800") == "PIDlamp"
    assert client_id_of_user("abcdefghijklmnopqrstuv") == "abcdefghijklmnopqrstuv"


def test_connection_closed_carries_only_the_name() -> None:
    assert parse_connection_event("connection.closed", CLOSED_HEADERS) == ConnectionEvent(
        False, CLOSED_HEADERS["name"], at=CLOSED_AT, node=NODE
    )


@pytest.mark.parametrize("stamp", [None, "1796281844687", -1, 0, True, 10**20])
def test_an_event_without_a_usable_instant_has_none(stamp: object) -> None:
    """The change is then stored with the gateway's own clock."""
    headers = {**CLOSED_HEADERS, "timestamp_in_ms": stamp}
    event = parse_connection_event("connection.closed", headers)
    assert event == ConnectionEvent(False, CLOSED_HEADERS["name"], node=NODE)


def test_an_amqp_connection_or_another_event_is_not_a_device() -> None:
    amqp = {**CREATED_HEADERS, "protocol": "{0,9,1}", "type": "network"}
    assert parse_connection_event("connection.created", amqp) is None
    assert parse_connection_event("channel.created", CLOSED_HEADERS) is None
    assert parse_connection_event("connection.closed", {}) is None


def test_the_management_url_keeps_its_credentials_out_of_the_base() -> None:
    target = ManagementTarget.parse("http://admin:p%40ss@127.0.0.1:15672")
    assert target == ManagementTarget("http://127.0.0.1:15672", "admin", "p@ss")
    with pytest.raises(ValueError, match="http"):
        ManagementTarget.parse("amqp://admin:pw@127.0.0.1")
