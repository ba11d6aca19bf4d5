"""Devices online: firmware-like clients register over HTTP, connect over MQTT 3.1 / 3.1.1,
report, and apps read the state back, against a real ``iotcloud serve``.

Every test runs three times: the embedded broker on SQLite and on PostgreSQL, and Mosquitto as
the external broker (the gateway a client of it, device credentials kept in its
dynamic-security plugin).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from iotcloud.codecs import Frame, encode_frame
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.gateway.service import json_values
from iotcloud.simulator import VirtualDevice
from tests.conftest import new_database_url
from tests.devices import Online, eventually, import_product, mqtt_port
from tests.server import ADMIN_TOKEN, RunningServer, serving


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mosquitto"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A server per broker and backend for this module."""
    kind = request.param
    data_dir = Path(tempfile.mkdtemp(prefix=f"iotcloud-gateway-{kind}-"))
    url = None
    extra: dict[str, Any] = {}
    if kind == "postgres":
        url = new_database_url(request.getfixturevalue("postgres"), "postgres", data_dir)
    if kind == "mosquitto":
        broker = request.getfixturevalue("mosquitto")
        extra = {"mqtt_url": broker.url, "mqtt_port": broker.port, "mqtt_sync_seconds": 1}
    with serving(data_dir, url, rate_limit_per_address=0, rate_limit_per_app=0, **extra) as running:
        yield running


@pytest.fixture(scope="module")
def app(server: RunningServer) -> dict[str, str]:
    return server.create_app("Gateway")


def external(server: RunningServer) -> bool:
    return "IOTCLOUD_MQTT_URL" in server.env


def connack_code(error: aiomqtt.MqttCodeError) -> int:
    """The MQTT 3.1.1 CONNACK code (paho reports 4 and 5 as MQTT 5 reason codes 134 and 135)."""
    rc = error.rc
    value = int(getattr(rc, "value", rc))
    return {134: 4, 135: 5}.get(value, value)


def new_mac() -> str:
    return "02" + uuid.uuid4().hex[:10]


@pytest.fixture
async def apps(server: RunningServer, app: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"X-Gizwits-Application-Id": app["appid"]}
    ) as client:
        yield client


async def latest(apps: httpx.AsyncClient, did: str) -> dict[str, Any]:
    reply = await apps.get(f"/app/devdata/{did}/latest")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


@pytest.mark.parametrize("protocol", ["3.1", "3.1.1"])
async def test_standard_device_reports_reach_the_latest_state(
    server: RunningServer, apps: httpx.AsyncClient, tmp_path: Path, protocol: str
) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, new_mac(), protocol=protocol, seed=7)
    async with Online(server, device):
        assert device.did is not None
        first = await eventually(lambda: _reported(apps, device.did))
        assert first["did"] == device.did
        assert first["attr"] == json_values(device.status)
        assert isinstance(first["attr"]["LED_OnOff"], bool)
        assert first["attr"]["LED_Color"] in {"Customize", "Yellow", "Purple", "Pink"}
        before = first["updated_at"]

        device.status["Temperature"] = 100
        device.status["Infrared"] = not device.status["Infrared"]
        await device.report()
        second = await eventually(lambda: _changed(apps, device.did, "Temperature", 100))
        assert second["attr"] == json_values(device.status)
        assert second["updated_at"] >= before


async def test_var_len_partial_reports_merge_into_the_latest_state(
    server: RunningServer, apps: httpx.AsyncClient, tmp_path: Path
) -> None:
    product_key, product = import_product(server, tmp_path, "var_len_speaker.json")
    device = VirtualDevice(product_key, product, new_mac(), protocol="3.1", seed=3)
    async with Online(server, device):
        assert device.did is not None
        full = await eventually(lambda: _reported(apps, device.did))
        assert full["attr"] == json_values(device.status)
        device.status["Volume"] = 42
        await device.report(changed=["Volume"])  # a var_len report carrying one value
        merged = await eventually(lambda: _changed(apps, device.did, "Volume", 42))
        assert merged["attr"] == json_values(device.status)
        assert isinstance(merged["attr"]["Greeting"], str)  # binary as hex


async def test_bad_frames_are_dropped_and_the_device_stays_connected(
    server: RunningServer, apps: httpx.AsyncClient, tmp_path: Path
) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, new_mac(), seed=11)
    async with Online(server, device):
        assert device.did is not None
        state = await eventually(lambda: _reported(apps, device.did))
        client = device._client
        assert client is not None
        for junk in (
            b"garbage",
            b"\x00\x00\x00\x03\x7f\x00\x00\x91\x04",  # length says more than there is
            encode_frame(Frame(CMD_REPORT, b"\x04\x01")),  # a status too short for the product
            encode_frame(Frame(CMD_REPORT, b"\x99")),  # unknown action
        ):
            await client.publish(f"dev2app/{device.did}", junk)
        await client.publish("dev2app/someoneelse1234567890", encode_frame(Frame(CMD_REPORT, b"")))
        device.status["Humidity"] = 55
        await device.report()
        after = await eventually(lambda: _changed(apps, device.did, "Humidity", 55))
        assert after["attr"] == json_values(device.status)
        assert device.stats.connected
        assert set(after["attr"]) == set(state["attr"])


async def test_wrong_passcode_and_disabled_devices_are_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, new_mac())
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        did = await device.register(http)
    # Mosquitto answers 5 (not authorised) where the embedded broker says 4 (bad credentials)
    bad_credentials = 5 if external(server) else 4
    for password, expected in ((device.passcode[::-1], bad_credentials), ("", bad_credentials)):
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with aiomqtt.Client(
                "127.0.0.1",
                mqtt_port(server),
                identifier=did,
                username=did,
                password=password or None,
                protocol=aiomqtt.ProtocolVersion.V31,
            ):
                pass
        assert connack_code(refused.value) == expected
    server.cli("device", "disable", did)  # another process: the broker learns it from the registry

    async def refused() -> int | None:
        try:
            async with aiomqtt.Client(
                "127.0.0.1",
                mqtt_port(server),
                identifier=did,
                username=did,
                password=device.passcode,
                protocol=aiomqtt.ProtocolVersion.V311,
            ):
                pass
        except aiomqtt.MqttCodeError as error:
            return connack_code(error)
        assert external(server), "the embedded broker checks the registry on every CONNECT"
        await asyncio.sleep(0.2)  # Mosquitto: until the next reconciliation
        return None

    assert await eventually(refused) == 5


async def test_disabling_a_connected_device_ends_its_session(
    server: RunningServer, tmp_path: Path
) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, new_mac())
    online = Online(server, device)
    async with online:
        assert device.did is not None
        assert online.task is not None
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin:
            reply = await admin.put(f"/admin/v1/devices/{device.did}", json={"is_disabled": True})
            assert reply.status_code == 200, reply.text

        async def dropped() -> bool:
            return online.task is not None and online.task.done()

        assert await eventually(dropped)
        error = online.task.exception()
        errors = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
        assert any(isinstance(e, aiomqtt.MqttError) for e in errors), error


async def test_presence_follows_the_connection(server: RunningServer, tmp_path: Path) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, new_mac())

    async def online_flag(wanted: bool) -> dict[str, Any] | None:
        assert device.did is not None
        shown = await asyncio.to_thread(server.cli, "device", "show", device.did, "--json")
        body = dict(json.loads(shown.stdout))
        return body if body["is_online"] is wanted else None

    async with Online(server, device):
        online = await eventually(lambda: online_flag(True))
        assert online["last_online_at"]
    offline = await eventually(lambda: online_flag(False))
    assert offline["last_offline_at"]


async def test_an_acknowledged_qos1_report_is_already_stored(
    server: RunningServer, apps: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The embedded transport sends the PUBACK once the report's batch is committed: the
    state is readable the moment the device has its acknowledgement (no waiting), and the
    operator's counters show the traffic."""
    if external(server):
        pytest.skip("Mosquitto acknowledges QoS 1 itself, before the gateway sees the message")
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, new_mac(), seed=5)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=admin) as operator:
        before = (await operator.get("/admin/v1/stats")).json()
        async with Online(server, device):
            assert device.did is not None
            client = device._client
            assert client is not None
            for temperature in (11, 12, 13):
                device.status["Temperature"] = temperature
                payload = device.codec.encode_status(device.status)
                await client.publish(
                    f"dev2app/{device.did}", encode_frame(Frame(CMD_REPORT, payload)), qos=1
                )
                assert (await latest(apps, device.did))["attr"]["Temperature"] == temperature
        after = (await operator.get("/admin/v1/stats")).json()
    assert after["broker"]["messages_in"] >= before["broker"]["messages_in"] + 3
    assert after["ingest"]["reports"]["written"] >= before["ingest"]["reports"]["written"] + 3
    assert after["broker"]["shed"] == 0
    assert {"connections", "online", "paused_reads", "events_dropped"} <= set(after["broker"])


async def test_latest_refuses_unknown_devices_and_apps(
    server: RunningServer, apps: httpx.AsyncClient
) -> None:
    missing = await apps.get("/app/devdata/aaaaaaaaaaaaaaaaaaaaaa/latest")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == 9014
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        no_app = await anonymous.get("/app/devdata/aaaaaaaaaaaaaaaaaaaaaa/latest")
    assert no_app.json()["error_code"] == 9003


async def _reported(apps: httpx.AsyncClient, did: str) -> dict[str, Any] | None:
    body = await latest(apps, did)
    return body if body["updated_at"] else None


async def _changed(
    apps: httpx.AsyncClient, did: str, name: str, value: Any
) -> dict[str, Any] | None:
    body = await latest(apps, did)
    return body if body["attr"].get(name) == value else None
