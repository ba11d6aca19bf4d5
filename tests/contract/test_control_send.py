"""The control service's cloud-side ``send``: 0x0090 hand-over, 0x0093 with an acknowledgement
awaited, offline and timed-out outcomes — through the embedded broker and through Mosquitto, with
a real MQTT client playing the device."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iotcloud.app import running_services
from iotcloud.codecs.frame import CMD_CONTROL, CMD_CONTROL_SN
from iotcloud.config import Settings
from iotcloud.gateway.service import SendResult
from iotcloud.services.registry import Services
from tests.devices import FIXTURES, MqttDevice
from tests.mosquitto import MosquittoServer
from tests.pg import free_port


@pytest.fixture(params=["embedded", "mosquitto"])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    options: dict[str, Any] = {"mqtt_port": free_port()}
    if request.param == "mosquitto":
        broker: MosquittoServer = request.getfixturevalue("mosquitto")
        options = {"mqtt_port": broker.port, "mqtt_url": broker.url, "mqtt_sync_seconds": 1}
    settings = Settings.load(
        {},
        data_dir=tmp_path,
        http_host="127.0.0.1",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'send.db'}",
        public_host="127.0.0.1",
        **options,
    )
    async with running_services(settings) as svc:
        yield svc


async def new_device(services: Services) -> tuple[str, str]:
    data = json.loads((FIXTURES / "pet_house.json").read_text())
    data["product_key"] = uuid.uuid4().hex
    made = await services.products.import_definition(data)
    creds = await services.devices.create(made.product_key, "02" + uuid.uuid4().hex[:10])
    return creds.did, creds.passcode


async def test_a_plain_command_is_handed_over_as_0090(services: Services) -> None:
    did, passcode = await new_device(services)
    async with MqttDevice.on_services(services, did, passcode) as device:
        result = await services.control.send(did, b"\x02")
        assert result is SendResult.DELIVERED
        topic, frame = await device.next_frame()
    assert topic == f"app2dev/{did}/cloud"
    assert (frame.cmd, frame.payload, frame.sn) == (CMD_CONTROL, b"\x02", None)


async def test_an_acknowledged_command_waits_for_the_devices_0094(services: Services) -> None:
    did, passcode = await new_device(services)
    async with MqttDevice.on_services(services, did, passcode, answer=True) as device:
        first = await services.control.send(did, b"\x02", require_ack=True, ack_timeout=5)
        second = await services.control.send(did, b"\x02", require_ack=True, ack_timeout=5)
        assert (first, second) == (SendResult.DELIVERED, SendResult.DELIVERED)
        sent = [await device.next_frame(), await device.next_frame()]
    sns = [frame.sn for _, frame in sent]
    assert all(frame.cmd == CMD_CONTROL_SN for _, frame in sent)
    assert sns[0] != sns[1]  # every command gets its own sequence number


async def test_a_silent_device_times_out_and_an_absent_one_is_offline(services: Services) -> None:
    did, passcode = await new_device(services)
    async with MqttDevice.on_services(services, did, passcode) as device:
        result = await services.control.send(did, b"\x02", require_ack=True, ack_timeout=0.3)
        assert result is SendResult.TIMED_OUT
        assert (await device.next_frame())[1].cmd == CMD_CONTROL_SN
    absent, _ = await new_device(services)
    assert await services.control.send(absent, b"\x02") is SendResult.DEVICE_OFFLINE
    assert (
        await services.control.send(absent, b"\x02", require_ack=True) is SendResult.DEVICE_OFFLINE
    )
