"""Data-template (Tencent) devices against a real ``iotcloud serve``: paho clients speaking
Tencent's device scheme over MQTT 3.1 and 3.1.1 sign in (and are refused), report, ask for their
status, post events, receive controls, and misbehave without losing their connection.

The session's server on PostgreSQL with the embedded broker only (the in-process contract test
runs the same device on SQLite; the storage statements are the per-backend part).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import httpx
import pytest

from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.telemetry import TelemetryRepository
from tests.accounts import bind, sign_up
from tests.server import RunningServer
from tests.thing_devices import (
    ThingDevice,
    ThingIdentity,
    create_thing_device,
    import_thing_product,
    until,
)

pytestmark = pytest.mark.backend("postgres")
PROTOCOLS = [
    pytest.param(aiomqtt.ProtocolVersion.V31, id="mqtt3.1"),
    pytest.param(aiomqtt.ProtocolVersion.V311, id="mqtt3.1.1"),
]


@pytest.fixture(scope="module")
async def product(server: RunningServer) -> str:
    return await import_thing_product(server)


async def new_device(server: RunningServer, product: str, **options: Any) -> ThingIdentity:
    return await create_thing_device(server, product, **options)


@pytest.fixture
async def db(server: RunningServer) -> AsyncIterator[Database]:
    async with Database(server.database_url) as database:
        yield database


async def stored(db: Database, identity: ThingIdentity) -> tuple[dict[str, Any], dict[str, int]]:
    """The device's stored latest values and their report times ({} before any report)."""
    async with db.session() as session:
        device = await DeviceRepository(session).by_did(identity.did)
        assert device is not None
        row = await TelemetryRepository(session).latest(device.id)
    return ({}, {}) if row is None else (dict(row.attrs), dict(row.attr_times or {}))


def connack(error: aiomqtt.MqttCodeError) -> int:
    value = int(getattr(error.rc, "value", error.rc))
    return {134: 4, 135: 5}.get(value, value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_device_reports_and_reads_its_status(
    server: RunningServer, product: str, db: Database, protocol: aiomqtt.ProtocolVersion
) -> None:
    identity = await new_device(server, product)
    async with ThingDevice.on_server(server, identity, protocol=protocol) as thing:
        assert len(thing.client_id) > 23
        assert thing.granted == [1, 1, 1, 1]  # $thing/down/service too, as the SDKs subscribe
        reply = await thing.report({"power_switch": 1, "brightness": 30, "color": 1})
        assert reply == {
            "method": "report_reply",
            "clientToken": reply["clientToken"],
            "code": 0,
            "status": "success",
        }
        before = int(datetime.now(UTC).timestamp() * 1000)
        await thing.report({"brightness": 31, "schedule": {"enabled": 1, "minutes": 5, "mode": 0}})
        status = await thing.get_status()
        assert status["code"] == 0
        assert status["data"]["report"] == {
            "power_switch": 1,
            "brightness": 31,
            "color": 1,
            "schedule": {"enabled": 1, "minutes": 5, "mode": 0},
        }
        values, times = await until(
            lambda: _with(stored(db, identity), lambda v: v[0].get("brightness") == 31)
        )
    assert values == status["data"]["report"]
    assert times["brightness"] >= before - 1000
    assert times["schedule"] == times["brightness"] >= times["power_switch"]


async def _with(probe: Any, check: Any) -> Any:
    value = await probe
    return value if check(value) else None


async def test_bad_reports_are_answered_and_nothing_of_them_is_stored(
    server: RunningServer, product: str, db: Database
) -> None:
    identity = await new_device(server, product)
    async with ThingDevice.on_server(server, identity) as thing:
        assert (await thing.report({"brightness": 5}))["code"] == 0
        for params, name in (
            ({"brightness": 5.5}, "brightness"),
            ({"brightness": 500}, "brightness"),
            ({"name": "n" * 65}, "name"),
            ({"color": 3}, "color"),
            ({"power_switch": 0, "volume": 1}, "volume"),
            ({"power_switch": "on"}, "power_switch"),
        ):
            reply = await thing.report(params)
            assert reply["code"] != 0, params
            assert reply["status"].startswith(f"{name}:"), reply
        status = await thing.get_status()
    assert status["data"]["report"] == {"brightness": 5}
    values, _ = await until(lambda: _with(stored(db, identity), lambda v: v[0]))
    assert values == {"brightness": 5}


async def test_sign_in_refusals_and_accepted_variants(server: RunningServer, product: str) -> None:
    identity = await new_device(server, product)
    disabled = await new_device(server, product, disabled=True)
    past = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp())
    refusals = [
        (ThingDevice.on_server(server, identity, psk="c2hvcnQga2V5IG9mIDE2Yg=="), 4),
        (ThingDevice.on_server(server, identity._replace(name="no_such_device")), 4),
        (ThingDevice.on_server(server, disabled), 5),
        (ThingDevice.on_server(server, identity, expiry=past), 4),
        (
            ThingDevice.on_server(
                server, identity, protocol=aiomqtt.ProtocolVersion.V31, expiry=past
            ),
            4,
        ),
    ]
    for device, code in refusals:
        with pytest.raises(aiomqtt.MqttCodeError) as caught:
            async with device:
                pass
        assert connack(caught.value) == code
    # a millisecond expiry (the Python SDK's start time, long past) and the SHA-256 signature
    accepted = ThingDevice.on_server(server, identity, expiry=past * 1000, sign_method="hmacsha256")
    async with accepted as thing:
        assert (await thing.report({"brightness": 1}))["code"] == 0


async def test_events_are_acknowledged_at_qos_1_and_stored(
    server: RunningServer, product: str, db: Database
) -> None:
    identity = await new_device(server, product)
    async with ThingDevice.on_server(server, identity) as thing:
        # aiomqtt returns from a QoS 1 publish only once the PUBACK arrived
        reply = await thing.post_event("status_report", {"status": 0, "message": "booted"}, qos=1)
        assert (reply["method"], reply["code"]) == ("event_reply", 0)
        many = await thing.post_events(
            [
                {"eventId": "low_voltage", "type": "alert", "params": {"voltage": 3}},
                {"eventId": "status_report", "type": "info", "params": {"status": 1}},
            ]
        )
        assert many["code"] == 0
        refused = await thing.post_event("low_voltage", {"voltage": "low"}, "alert")
        assert refused["code"] != 0
        assert refused["status"].startswith("voltage:")

    async def listed() -> list[tuple[str, str, dict[str, Any]]] | None:
        async with db.session() as session:
            device = await DeviceRepository(session).by_did(identity.did)
            assert device is not None
            total, rows = await TelemetryRepository(session).thing_events_page(
                device.id, None, None, limit=10
            )
        return [(r.event_id, r.event_type, dict(r.params)) for r in rows] if total >= 3 else None

    rows = await until(listed)
    assert sorted(rows, key=repr) == sorted(
        [
            ("status_report", "info", {"status": 0, "message": "booted"}),
            ("low_voltage", "alert", {"voltage": 3}),
            ("status_report", "info", {"status": 1}),
        ],
        key=repr,
    )


async def test_foreign_topics_and_bad_messages_leave_the_connection_up(
    server: RunningServer, product: str
) -> None:
    identity = await new_device(server, product)
    other = await new_device(server, product)
    async with ThingDevice.on_server(server, identity) as thing:
        assert thing.client is not None
        granted = await thing.client.subscribe(
            f"$thing/down/property/{other.product_id}/{other.name}"
        )
        assert [int(getattr(code, "value", code)) for code in granted] == [0x80]
        await thing.client.publish(
            f"$thing/up/property/{other.product_id}/{other.name}",
            b'{"method":"report","clientToken":"x","params":{"brightness":9}}',
            qos=1,
        )
        await thing.send("property", b"{not json")
        await thing.send("property", {"method": "self_destruct", "clientToken": "1"})
        info = await thing.request(
            "property", {"method": "report_info", "params": {"module_hardinfo": "ESP8266"}}
        )
        assert (info["method"], info["code"]) == ("report_info_reply", 0)
        assert (await thing.report({"brightness": 2}))["code"] == 0
    async with ThingDevice.on_server(server, other) as victim:
        assert (await victim.get_status())["data"]["report"] == {}


async def test_an_app_control_reaches_the_device_and_its_methodless_reply_is_taken(
    server: RunningServer, product: str
) -> None:
    app = server.create_app("Tencent devices")
    user = sign_up(server, app["appid"])
    identity = await new_device(server, product)
    await bind(server, user, identity.did)
    async with (
        ThingDevice.on_server(server, identity, reply_method=False) as thing,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        reply = await http.post(
            f"/app/control/{identity.did}",
            json={"attrs": {"power_switch": True, "color": "Green"}},
            headers=user.headers(),
        )
        assert reply.status_code == 200, reply.text
        topic, control = await thing.next_message()
    assert topic == f"$thing/down/property/{identity.product_id}/{identity.name}"
    assert control["method"] == "control"
    assert control["params"] == {"power_switch": 1, "color": 1}
