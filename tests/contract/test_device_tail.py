"""Following a device's stored traffic (``iotcloud device tail``) on SQLite and PostgreSQL: frames
decoded with the product, each row once, nothing from before the start unless asked, rows that
commit late (stamped with an earlier instant) still shown."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from iotcloud.codecs import Frame, P0Codec, encode_frame, parse_product_definition
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL_SN, CMD_REPORT
from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import DeviceNotFound
from iotcloud.services.device_tail import PAGE, DeviceTail, tail_event_view
from iotcloud.services.registry import Services
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.telemetry import FrameEvent, TelemetryRepository, ThingEvent
from tests.devices import FIXTURES


@pytest.fixture
def settings_options() -> dict[str, Any]:
    return {"mqtt_port": 0}


class Scene:
    def __init__(self, services: Services, clock: FrozenClock) -> None:
        self.services = services
        self.clock = clock
        definition = json.loads((FIXTURES / "pet_house.json").read_text())
        definition["product_key"] = uuid.uuid4().hex
        self.definition = definition
        self.codec = P0Codec(parse_product_definition(definition))
        self.did = ""
        self.device_id = 0

    async def setup(self) -> None:
        product_key = (await self.services.products.import_definition(self.definition)).product_key
        self.did = (
            await self.services.devices.create(product_key, "02" + uuid.uuid4().hex[:10])
        ).did
        async with self.services.database.session() as session:
            found = await DeviceRepository(session).with_product(self.did)
        assert found is not None
        self.device_id = found[0].id

    async def log(
        self, kind: str, payload: bytes | None = None, ago: float = 0.0, **extra: Any
    ) -> None:
        at = self.clock.now() - timedelta(seconds=ago)
        async with self.services.database.session() as session:
            await TelemetryRepository(session).log_frames(
                [FrameEvent(self.device_id, at, kind, payload, extra.get("detail"))]
            )

    async def event(self, event_id: str, params: dict[str, Any]) -> None:
        async with self.services.database.session() as session:
            await TelemetryRepository(session).log_thing_events(
                [ThingEvent(self.device_id, self.clock.now(), event_id, "alert", params)]
            )


@pytest.fixture
async def scene(services: Services, clock: FrozenClock) -> Scene:
    made = Scene(services, clock)
    await made.setup()
    return made


async def test_frames_are_decoded_and_each_row_shown_once(scene: Scene, services: Services) -> None:
    await scene.log("dev_online", detail="10.0.0.9:5000", ago=30)  # before the tail started
    tail = DeviceTail(services.database, scene.clock, scene.did)
    await tail.start()
    assert await tail.poll() == []

    scene.clock.advance(1)
    report = scene.codec.encode_status({"LED_R": 42, "Motor_Speed": 3})
    await scene.log("dev2app", encode_frame(Frame(CMD_REPORT, report)))
    control = scene.codec.encode_control({"LED_OnOff": True})
    await scene.log("app2dev", encode_frame(Frame(CMD_CONTROL_SN, control, sn=7)))
    await scene.log("dev2app", encode_frame(Frame(CMD_ACK_SN, b"", sn=7)))
    await scene.log("app2dev", b"\x00\x01not a frame")
    await scene.event("overheat", {"temp": 90})
    first = await tail.poll()
    assert [(e.kind, e.direction) for e in first] == [
        ("report", "up"),
        ("command", "down"),
        ("ack", "up"),
        ("raw", "down"),
        ("event", "up"),
    ]
    assert first[0].values is not None
    assert (first[0].values["LED_R"], first[0].values["Motor_Speed"]) == (42, 3)
    assert first[1].values == {"LED_OnOff": True}
    assert first[2].detail == "sn 7"
    assert first[3].detail == b"\x00\x01not a frame".hex()
    assert first[4].values == {"temp": 90}
    assert json.dumps([tail_event_view(event) for event in first])
    assert await tail.poll() == []  # nothing twice

    # a row stamped a little earlier that commits only now is still shown, once
    scene.clock.advance(5)
    await scene.log("dev_offline", detail="keep-alive", ago=3)
    [late] = await tail.poll()
    assert (late.kind, late.detail) == ("offline", "keep-alive")
    assert await tail.poll() == []


async def test_since_shows_what_was_stored_before(scene: Scene, services: Services) -> None:
    await scene.log("dev_online", detail="10.0.0.9:5000", ago=30)
    tail = DeviceTail(services.database, scene.clock, scene.did)
    await tail.start(timedelta(seconds=60))
    assert [e.kind for e in await tail.poll()] == ["online"]


async def test_an_unknown_device_is_refused(services: Services, clock: FrozenClock) -> None:
    with pytest.raises(DeviceNotFound):
        await DeviceTail(services.database, clock, "no-such-device").start()


async def test_more_than_a_page_within_the_overlap_is_all_shown(
    scene: Scene, services: Services
) -> None:
    tail = DeviceTail(services.database, scene.clock, scene.did)
    await tail.start()
    scene.clock.advance(1)
    frames = [
        FrameEvent(scene.device_id, scene.clock.now(), "dev_online", None, f"burst {n}")
        for n in range(PAGE + 250)  # one instant: only the id tells them apart
    ]
    async with services.database.session() as session:
        await TelemetryRepository(session).log_frames(frames)
    shown = await tail.poll()
    assert len(shown) == PAGE + 250
    scene.clock.advance(1)
    await scene.log("dev_offline")
    later = await tail.poll()
    assert [event.kind for event in later] == ["offline"]
