"""Data-template (Tencent) devices through the embedded broker and the gateway, in process: the
device's sign-in, its ``$thing`` topics and ACL, every method and its refusals, what is stored,
and the cloud's ``control`` and ``action`` through `DeviceGateway.send` / `call_action`.

A real paho client (`tests.thing_devices.ThingDevice`) plays the device against the services of
`iotcloud.app.running_services` on SQLite; the integration test runs the same device against
``iotcloud serve`` on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from iotcloud.app import running_services
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.codecs.template import TemplateValueError
from iotcloud.config import Settings
from iotcloud.errors import DeviceOffline
from iotcloud.gateway.service import DeviceMessage, GatewayEvent, SendResult
from iotcloud.services.registry import Services
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.telemetry import TelemetryRepository
from tests.pg import free_port
from tests.thing_devices import (
    ThingDevice,
    ThingIdentity,
    add_thing_device,
    add_thing_product,
    until,
)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings.load(
        {},
        data_dir=tmp_path,
        http_host="127.0.0.1",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'thing.db'}",
        public_host="127.0.0.1",
        mqtt_port=free_port(),
    )
    async with running_services(settings) as svc:
        yield svc


async def new_device(services: Services, **options: bool) -> ThingIdentity:
    url = services.settings.resolved_database_url
    return await add_thing_device(url, await add_thing_product(url), **options)


def device(services: Services, identity: ThingIdentity, **options: object) -> ThingDevice:
    return ThingDevice(
        services.settings.mqtt_port,
        identity,
        gateway=services.control.gateway,
        **options,  # type: ignore[arg-type]
    )


async def device_id(services: Services, identity: ThingIdentity) -> int:
    async with services.control.gateway.db.session() as session:
        row = await DeviceRepository(session).by_did(identity.did)
    assert row is not None
    return row.id


async def latest(
    services: Services, identity: ThingIdentity
) -> tuple[dict[str, object], dict[str, int]] | None:
    """The stored latest values and their report times (None before the first report)."""
    key = await device_id(services, identity)
    async with services.control.gateway.db.session() as session:
        row = await TelemetryRepository(session).latest(key)
    return None if row is None else (dict(row.attrs), dict(row.attr_times or {}))


async def refused_code(client: ThingDevice) -> int:
    with pytest.raises(aiomqtt.MqttCodeError) as caught:
        async with client:
            pass
    rc = caught.value.rc
    value = int(getattr(rc, "value", rc))
    return {134: 4, 135: 5}.get(value, value)


@pytest.mark.parametrize(
    "protocol", [aiomqtt.ProtocolVersion.V31, aiomqtt.ProtocolVersion.V311], ids=["3.1", "3.1.1"]
)
async def test_a_signed_device_connects_and_its_report_is_stored_and_heard(
    services: Services, protocol: aiomqtt.ProtocolVersion
) -> None:
    identity = await new_device(services)
    heard: list[GatewayEvent] = []
    services.control.gateway.add_listener(heard.append)
    async with device(services, identity, protocol=protocol) as thing:
        assert len(thing.client_id) > 23  # MQTT 3.1 allows 23; these ids are longer
        assert thing.granted == [1, 1, 1, 1]  # property, event, action and service
        reply = await thing.report({"power_switch": 1, "color": 2, "brightness": 40})
        assert (reply["method"], reply["code"]) == ("report_reply", 0)
        stored = await until(lambda: latest(services, identity))
    assert stored[0] == {"power_switch": 1, "color": 2, "brightness": 40}
    assert set(stored[1]) == {"power_switch", "color", "brightness"}
    reports = [e for e in heard if isinstance(e, DeviceMessage)]
    assert len(reports) == 1
    assert (reports[0].cmd, reports[0].did) == (CMD_REPORT, identity.did)
    assert reports[0].attrs == {"power_switch": True, "color": "Blue", "brightness": 40}


async def test_every_bad_value_refuses_the_whole_report(services: Services) -> None:
    identity = await new_device(services)
    async with device(services, identity) as thing:
        assert (await thing.report({"brightness": 10}))["code"] == 0
        bad = [
            ({"brightness": "high"}, "brightness"),
            ({"brightness": 101}, "brightness"),
            ({"temperature": 200}, "temperature"),
            ({"temperature": 20.15}, "temperature"),  # off the 0.1 step grid
            ({"name": "x" * 65}, "name"),
            ({"color": 7}, "color"),
            ({"colour": 1}, "colour"),
            ({"power_switch": 1, "brightness": -1}, "brightness"),
        ]
        for params, name in bad:
            reply = await thing.report(params)
            assert reply["code"] != 0, params
            assert reply["status"].startswith(name), reply
        missing = await thing.request("property", {"method": "report"})
        assert missing["code"] != 0
        assert "params" in missing["status"]
        await until(lambda: latest(services, identity))
    stored = await latest(services, identity)
    assert stored is not None
    assert stored[0] == {"brightness": 10}
    assert services.control.gateway.stats.refused == len(bad) + 1


async def test_get_status_answers_the_latest_values_in_template_form(services: Services) -> None:
    identity = await new_device(services)
    async with device(services, identity) as thing:
        empty = await thing.get_status()
        assert empty["code"] == 0
        assert empty["data"] == {"report": {}}
        await thing.report({"power_switch": 1, "color": 1})
        await thing.report({"color": 0, "schedule": {"enabled": 1, "minutes": 30, "mode": 1}})
        status = await thing.get_status()
    assert status["method"] == "get_status_reply"
    assert status["data"]["report"] == {
        "power_switch": 1,
        "color": 0,
        "schedule": {"enabled": 1, "minutes": 30, "mode": 1},
    }


async def test_events_are_checked_stored_and_listed(services: Services) -> None:
    identity = await new_device(services)
    async with device(services, identity) as thing:
        one = await thing.post_event("low_voltage", {"voltage": 3.0}, "alert")
        assert (one["method"], one["code"]) == ("event_reply", 0)
        two = await thing.post_events(
            [
                {
                    "eventId": "status_report",
                    "type": "info",
                    "params": {"status": 1, "message": "m"},
                },
                {"eventId": "low_voltage", "type": "alert", "params": {"voltage": 2}},
            ]
        )
        assert two["code"] == 0
        unknown = await thing.post_event("explosion", {})
        assert unknown["code"] != 0
        assert "eventId" in unknown["status"]
        half = await thing.post_events(
            [
                {"eventId": "low_voltage", "params": {"voltage": 2}},
                {"eventId": "low_voltage", "params": {"voltage": 99}},
            ]
        )
        assert half["code"] != 0
        assert "events[1].voltage" in half["status"]

        key = await device_id(services, identity)

        async def page() -> tuple[int, list[tuple[str, str, dict[str, object]]]] | None:
            async with services.control.gateway.db.session() as session:
                total, rows = await TelemetryRepository(session).thing_events_page(
                    key, None, None, limit=10
                )
            listed = [(r.event_id, r.event_type, dict(r.params)) for r in rows]
            return (total, listed) if total >= 3 else None

        total, rows = await until(page)
    assert total == 3
    assert sorted(rows, key=lambda r: (r[0], str(r[2]))) == [
        ("low_voltage", "alert", {"voltage": 2}),
        ("low_voltage", "alert", {"voltage": 3}),
        ("status_report", "info", {"status": 1, "message": "m"}),
    ]


async def test_send_and_call_action_wait_for_the_devices_reply(services: Services) -> None:
    identity = await new_device(services)
    gateway = services.control.gateway
    async with device(
        services, identity, reply_method=False, action_response={"result": 1}
    ) as thing:
        result = await gateway.send(
            identity.did, json.dumps({"power_switch": 1}).encode(), require_ack=True, ack_timeout=5
        )
        assert result is SendResult.DELIVERED
        assert thing.controls[0]["params"] == {"power_switch": 1}
        assert thing.controls[0]["method"] == "control"
        thing.control_code = 5
        refused = await gateway.send(identity.did, b'{"color": 1}', require_ack=True, ack_timeout=5)
        assert refused is SendResult.REJECTED
        thing.control_code = None
        silent = await gateway.send(
            identity.did, b'{"color": 1}', require_ack=True, ack_timeout=0.3
        )
        assert silent is SendResult.TIMED_OUT
        plain = await gateway.send(identity.did, b'{"color": 2}')
        assert plain is SendResult.DELIVERED
        code, status, response = await gateway.call_action(
            identity.did, "blink", {"times": 2, "color": 1}, timeout=5
        )
        assert (code, status, response) == (0, "ok", {"result": 1})
        assert thing.actions[0]["actionId"] == "blink"
        with pytest.raises(TemplateValueError):
            await gateway.call_action(identity.did, "blink", {"times": 99}, timeout=5)
        thing.action_code = None
        with pytest.raises(TimeoutError):
            await gateway.call_action(identity.did, "blink", {"times": 1}, timeout=0.3)
    absent = await new_device(services)
    assert await gateway.send(absent.did, b'{"color": 1}') is SendResult.DEVICE_OFFLINE
    with pytest.raises(DeviceOffline):
        await gateway.call_action(absent.did, "blink", {"times": 1})


async def test_refused_sign_ins(services: Services) -> None:
    port = services.settings.mqtt_port
    identity = await new_device(services)
    disabled = await new_device(services, disabled=True)
    past = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    assert await refused_code(ThingDevice(port, identity, psk="AAAAAAAAAAAAAAAAAAAAAA==")) == 4
    unknown = identity._replace(name="nobody")
    assert await refused_code(ThingDevice(port, unknown)) == 4
    assert await refused_code(ThingDevice(port, disabled)) == 5
    assert await refused_code(ThingDevice(port, identity, expiry=past)) == 4
    async with ThingDevice(port, identity, expiry=past * 1000, sign_method="hmacsha256") as thing:
        assert (await thing.report({"brightness": 1}))["code"] == 0


async def test_foreign_topics_and_bad_messages_keep_the_connection(services: Services) -> None:
    identity = await new_device(services)
    other = await new_device(services)
    gateway = services.control.gateway
    async with device(services, identity) as thing:
        assert thing.client is not None
        foreign = f"$thing/down/property/{other.product_id}/{other.name}"
        granted = await thing.client.subscribe(foreign)
        assert [int(getattr(c, "value", c)) for c in granted] == [0x80]
        await thing.client.publish(f"$thing/up/property/{other.product_id}/{other.name}", b"{}")
        await thing.client.publish(f"dev2app/{identity.did}", b"{}")
        await thing.send("property", b"not json")
        await thing.send("property", {"method": "explode", "clientToken": "x"})
        await thing.send("service", {"method": "whatever"})
        reply = await thing.report({"brightness": 3})
        assert reply["code"] == 0
        info = await thing.request("property", {"method": "report_info", "params": {"fw": "1"}})
        assert info["code"] == 0
        cleared = await thing.request("property", {"method": "clear_control"})
        assert cleared["code"] == 0
        assert gateway.is_online(identity.did)  # the same session answered all along
    assert gateway.stats.malformed == 3  # not JSON, unknown method, nothing on service
    assert gateway.stats.denied == 3  # the foreign subscribe and both foreign publishes
