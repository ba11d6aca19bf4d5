"""TLS settings: both files or neither, files that load (refused with a message naming them
otherwise), ports that do not clash, and the TLS ports handed out in ``DeviceItem``."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from iotcloud.api.gizwits.app_devices import Endpoints, endpoints
from iotcloud.config import ConfigError, Settings
from tests.tls import ThrowawayCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA.create(tmp_path_factory.mktemp("ca"))


def tls_env(cert: Path | str, key: Path | str, **more: str) -> dict[str, str]:
    return {"IOTCLOUD_TLS_CERT": str(cert), "IOTCLOUD_TLS_KEY": str(key), **more}


def test_tls_is_off_by_default() -> None:
    settings = Settings.load({})
    assert not settings.tls_enabled
    assert settings.tls_context() is None
    assert (settings.https_port, settings.mqtts_port) == (8443, 8883)


def test_a_certificate_chain_and_its_key_make_a_tls_1_2_context(ca: ThrowawayCA) -> None:
    settings = Settings.load(tls_env(ca.chain, ca.key))
    assert settings.tls_enabled
    context = settings.tls_context()
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("which", "message"),
    [
        (("chain", ""), "IOTCLOUD_TLS_CERT is set but IOTCLOUD_TLS_KEY is not"),
        (("", "key"), "IOTCLOUD_TLS_KEY is set but IOTCLOUD_TLS_CERT is not"),
        (("missing", "key"), "IOTCLOUD_TLS_CERT: {missing} is not a file"),
        (("chain", "missing"), "IOTCLOUD_TLS_KEY: {missing} is not a file"),
        (("chain", "ca_key"), "cannot use the certificate chain {chain} with the private key"),
        (("key", "key"), "cannot use the certificate chain {key}"),
        (("chain", "encrypted"), "IOTCLOUD_TLS_KEY: {encrypted} is encrypted"),
    ],
    ids=["cert-only", "key-only", "no-cert", "no-key", "foreign-key", "key-as-cert", "encrypted"],
)
def test_tls_files_that_cannot_work_are_refused_naming_them(
    ca: ThrowawayCA, tmp_path: Path, which: tuple[str, str], message: str
) -> None:
    paths = {
        "": "",
        "chain": str(ca.chain),
        "key": str(ca.key),
        "ca_key": str(ca.ca_key),
        "missing": str(tmp_path / "missing.pem"),
        "encrypted": str(ca.encrypted_key(tmp_path / "encrypted.key", "secret")),
    }
    with pytest.raises(ConfigError) as refused:
        Settings.load(tls_env(paths[which[0]], paths[which[1]]))
    assert message.format(**paths) in str(refused.value)


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ({"IOTCLOUD_HTTPS_PORT": "8080"}, "IOTCLOUD_HTTPS_PORT and IOTCLOUD_HTTP_PORT must differ"),
        ({"IOTCLOUD_MQTTS_PORT": "1883"}, "IOTCLOUD_MQTTS_PORT and IOTCLOUD_MQTT_PORT must differ"),
        ({"IOTCLOUD_MQTTS_PORT": "70000"}, "IOTCLOUD_MQTTS_PORT must be a TCP port"),
    ],
)
def test_tls_ports_must_be_ports_of_their_own(
    ca: ThrowawayCA, ports: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(tls_env(ca.chain, ca.key, **ports))


# -- the ports a DeviceItem names ------------------------------------------------------------------


def test_without_tls_the_secure_ports_repeat_the_plain_ones() -> None:
    settings = Settings(http_port=8080, mqtt_port=1883, public_host="iot.example.org")
    assert endpoints(settings) == Endpoints("iot.example.org", 1883, 1883, 8080, 8080)


def test_with_tls_the_secure_ports_are_the_tls_listeners() -> None:
    settings = Settings(tls_cert="chain.pem", tls_key="key.pem", https_port=8443, mqtts_port=8883)
    assert endpoints(settings) == Endpoints("localhost", 1883, 8883, 8080, 8443)


def test_with_tls_and_an_external_broker_its_tls_port_is_handed_out() -> None:
    settings = Settings(
        tls_cert="chain.pem", tls_key="key.pem", mqtt_url="mqtts://gw:pw@broker", mqtts_port=9883
    )
    assert endpoints(settings).port_s == 9883


def test_a_public_https_url_names_the_wss_port_whether_or_not_tls_is_on() -> None:
    for tls in ({}, {"tls_cert": "chain.pem", "tls_key": "key.pem"}):
        settings = Settings(public_url="https://iot.example.org", **tls)
        assert (endpoints(settings).ws_port, endpoints(settings).wss_port) == (8080, 443)
