"""``IOTCLOUD_MQTT_BROKER=rabbitmq`` needs all three of the cluster's URLs, each of its kind."""

from __future__ import annotations

import pytest

from iotcloud.config import ConfigError, Settings

RABBITMQ = {
    "IOTCLOUD_MQTT_BROKER": "rabbitmq",
    "IOTCLOUD_MQTT_URL": "mqtt://iotcloud:pw@rabbit-1:1883",
    "IOTCLOUD_AMQP_URL": "amqp://iotcloud:pw@rabbit-1:5672/%2F",
    "IOTCLOUD_RABBITMQ_MANAGEMENT_URL": "http://iotcloud:pw@rabbit-1:15672",
}


def test_a_complete_rabbitmq_setting_is_taken() -> None:
    settings = Settings.load(RABBITMQ)
    assert settings.mqtt_broker == "rabbitmq"
    assert settings.rabbitmq_prefetch == 500
    assert "pw" not in repr(settings)  # the URLs carry the administrator's password


def test_mosquitto_stays_the_default_external_broker() -> None:
    assert Settings.load({"IOTCLOUD_MQTT_URL": "mqtt://h:1883"}).mqtt_broker == "mosquitto"


@pytest.mark.parametrize(
    "missing", ["IOTCLOUD_MQTT_URL", "IOTCLOUD_AMQP_URL", "IOTCLOUD_RABBITMQ_MANAGEMENT_URL"]
)
def test_each_url_is_required(missing: str) -> None:
    env = {key: value for key, value in RABBITMQ.items() if key != missing}
    with pytest.raises(ConfigError, match=missing):
        Settings.load(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IOTCLOUD_AMQP_URL", "http://iotcloud:pw@rabbit-1:5672"),
        ("IOTCLOUD_RABBITMQ_MANAGEMENT_URL", "amqp://iotcloud:pw@rabbit-1:15672"),
        ("IOTCLOUD_MQTT_BROKER", "emqx"),
        ("IOTCLOUD_RABBITMQ_PREFETCH", "0"),
    ],
)
def test_a_wrong_kind_of_url_or_value_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.load({**RABBITMQ, name: value})
