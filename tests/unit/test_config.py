from __future__ import annotations

from pathlib import Path

import pytest

from iotcloud.config import ConfigError, Settings


def test_defaults_are_the_embedded_mode() -> None:
    settings = Settings.load({})
    assert settings.http_port == 8080
    assert settings.mqtt_port == 1883
    assert settings.data_dir == Path("./data")
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("/data/iotcloud.db")
    assert settings.env == "production"
    assert settings.base_url == "http://localhost:8080"


def test_environment_is_read_and_flags_override_it() -> None:
    env = {"IOTCLOUD_HTTP_PORT": "9000", "IOTCLOUD_PUBLIC_HOST": "iot.example.org"}
    settings = Settings.load(env, http_port=9100, public_host=None)
    assert settings.http_port == 9100
    assert settings.public_host == "iot.example.org"
    assert settings.base_url == "http://iot.example.org:9100"


def test_plain_postgres_urls_get_the_async_driver() -> None:
    settings = Settings.load({"IOTCLOUD_DATABASE_URL": "postgresql://u@db/iot"})
    assert settings.resolved_database_url == "postgresql+asyncpg://u@db/iot"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IOTCLOUD_HTTP_PORT": "eighty"}, "IOTCLOUD_HTTP_PORT"),
        ({"IOTCLOUD_HTTP_PORT": "70000"}, "IOTCLOUD_HTTP_PORT"),
        ({"IOTCLOUD_ENV": "staging"}, "IOTCLOUD_ENV"),
        ({"IOTCLOUD_TIMEZONE": "Mars/Olympus"}, "IOTCLOUD_TIMEZONE"),
        ({"IOTCLOUD_AUTH_PROVIDERS": "[1]"}, "IOTCLOUD_AUTH_PROVIDERS"),
        ({"IOTCLOUD_USER_TOKEN_TTL": "0"}, "IOTCLOUD_USER_TOKEN_TTL"),
        ({"IOTCLOUD_RATE_LIMIT_PER_APP": "-1"}, "IOTCLOUD_RATE_LIMIT_PER_APP"),
    ],
)
def test_malformed_settings_are_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env)


def test_fixed_captcha_answer_is_refused_in_production() -> None:
    with pytest.raises(ConfigError, match="IOTCLOUD_DEV_CAPTCHA_CODE"):
        Settings.load({"IOTCLOUD_DEV_CAPTCHA_CODE": "1234"})
    dev = Settings.load({"IOTCLOUD_DEV_CAPTCHA_CODE": "1234", "IOTCLOUD_ENV": "development"})
    assert dev.dev_captcha_code == "1234"


def test_external_broker_settings_are_checked_naming_the_variable() -> None:
    settings = Settings.load({"IOTCLOUD_MQTT_URL": "mqtt://gw:secret@broker:1883"})
    assert settings.mqtt_url == "mqtt://gw:secret@broker:1883"
    assert "secret" not in repr(settings)
    with pytest.raises(ConfigError, match="IOTCLOUD_MQTT_CREDENTIALS"):
        Settings.load({"IOTCLOUD_MQTT_CREDENTIALS": "files"})
    with pytest.raises(ConfigError, match="IOTCLOUD_MQTT_SYNC_SECONDS"):
        Settings.load({"IOTCLOUD_MQTT_SYNC_SECONDS": "0"})


def test_roles_are_parsed_and_checked_naming_the_variable() -> None:
    assert Settings.load({}).roles == {"api", "gateway", "scheduler"}
    external = {"IOTCLOUD_MQTT_URL": "mqtt://gw:secret@broker:1883"}
    assert Settings.load({**external, "IOTCLOUD_ROLE": " api , scheduler"}).roles == {
        "api",
        "scheduler",
    }
    assert Settings.load(external, role="gateway").roles == {"gateway"}
    for wrong in ("api,worker", ",", "API"):
        with pytest.raises(ConfigError, match="IOTCLOUD_ROLE must be one or more of"):
            Settings.load({**external, "IOTCLOUD_ROLE": wrong})
    # the embedded transport cannot share its devices with another process
    with pytest.raises(ConfigError, match="needs an external broker"):
        Settings.load({"IOTCLOUD_ROLE": "api"})


def test_log_format_is_text_or_json() -> None:
    assert Settings.load({}).log_format == "text"
    assert Settings.load({"IOTCLOUD_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="IOTCLOUD_LOG_FORMAT"):
        Settings.load({"IOTCLOUD_LOG_FORMAT": "xml"})
