"""iotcloud scaled out (`tests.scale_out`): a two-node RabbitMQ cluster
(``IOTCLOUD_MQTT_BROKER=rabbitmq``), PostgreSQL, and two ``api``, two ``gateway`` and two
``scheduler`` processes, one of each on each broker node; real MQTT devices on both nodes.

Reports are stored exactly once although every process hears them; presence follows connects
and disconnects on either node, and a device's quick reconnections, stored by two gateways in
whatever order, end in its real state; a WebSocket on either ``api`` process hears reports,
presence and binding changes whichever process handled them, and a sign-out on one process ends
the token on the other at once; a command from one ``api`` process reaches a device on node 1
and its 0x0094 comes back to the WebSocket that asked; a gateway killed with ``kill -9`` loses
no report; reports sent while no gateway runs are stored when one comes back; a disabled device
is disconnected and refused. (Faults of the broker, the database and the schedulers:
``test_scale_out_faults``.)"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import aiomqtt
import httpx
import pytest
from sqlalchemy import func, select

from iotcloud.codecs import P0Codec
from iotcloud.codecs.frame import CMD_REPORT, Frame, encode_frame
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.models import DeviceEventRow, DeviceHistoryRow, DeviceRow
from iotcloud.storage.telemetry import TelemetryRepository
from tests.accounts import User, bind, sign_up
from tests.conftest import new_database_url
from tests.devices import PASSCODE, MqttDevice, Product, eventually, import_product, register
from tests.errors import assert_error
from tests.integration.test_websocket import app_socket
from tests.integration.test_websocket import bind as bind_over_http
from tests.prometheus import sample
from tests.rabbitmq import rabbitmq_installed
from tests.scale_out import ScaleOut, device_on, scale_out
from tests.server import ADMIN_TOKEN
from tests.thing_devices import (
    ThingDevice,
    create_thing_device,
    import_thing_product,
    new_device_name,
)

pytestmark = pytest.mark.skipif(
    not rabbitmq_installed() and not os.environ.get("IOTCLOUD_TEST_REQUIRE_RABBITMQ"),
    reason="RabbitMQ is not installed (/usr/lib/rabbitmq/bin); bin/test installs it",
)

BROKER_AUTH = "iotcloud_broker_auth_requests_total"

STATE = {
    "LED_OnOff": True,
    "LED_Color": "Pink",
    "LED_R": 1,
    "LED_G": 2,
    "LED_B": 3,
    "Motor_Speed": 0,
    "Temperature": 20,
    "Humidity": 5,
}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[ScaleOut]:
    base = Path(tempfile.mkdtemp(prefix="iotcloud-scale-out-"))
    url = new_database_url(request.getfixturevalue("postgres"), "postgres", base)
    assert url is not None
    settings = {
        "rate_limit_per_address": 0,
        "rate_limit_per_app": 0,
        # only the process bus can make a change on one process apply on another in time
        "auth_cache_seconds": 60,
    }
    try:
        with scale_out(base, url, **settings) as stack:
            yield stack
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pet_house(stack: ScaleOut, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(stack.api, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture(scope="module")
def appid(stack: ScaleOut) -> str:
    return stack.api.create_app("RabbitMQ")["appid"]


async def new_bound_device(stack: ScaleOut, appid: str, product: Product) -> tuple[User, str]:
    user = sign_up(stack.api, appid)
    did, _ = register(stack.api, product)
    await bind(stack.api, user, did)
    return user, did


async def is_online(http: httpx.AsyncClient, user: User, did: str) -> bool:
    reply = await http.get(f"/app/devices/{did}", headers=user.headers())
    return reply.status_code == 200 and bool(reply.json()["is_online"])


async def stored_reports(stack: ScaleOut, did: str) -> int:
    async with Database(stack.api.database_url) as db, db.session() as session:
        device_id = (
            await session.execute(select(DeviceRow.id).where(DeviceRow.did == did))
        ).scalar_one()
        return int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(DeviceHistoryRow)
                    .where(DeviceHistoryRow.device_id == device_id)
                )
            ).scalar_one()
        )


async def stored_online(stack: ScaleOut, did: str) -> bool:
    async with Database(stack.api.database_url) as db, db.session() as session:
        return bool(
            (
                await session.execute(select(DeviceRow.is_online).where(DeviceRow.did == did))
            ).scalar_one()
        )


async def presence_log(stack: ScaleOut, did: str) -> list[str]:
    """The device's stored online/offline changes, oldest first."""
    async with Database(stack.api.database_url) as db, db.session() as session:
        rows = await session.execute(
            select(DeviceEventRow.kind)
            .join(DeviceRow, DeviceRow.id == DeviceEventRow.device_id)
            .where(DeviceRow.did == did, DeviceEventRow.kind.in_(("dev_online", "dev_offline")))
            .order_by(DeviceEventRow.at, DeviceEventRow.id)
        )
        return [str(kind) for kind in rows.scalars()]


async def send_reports(device: MqttDevice, codec: P0Codec, count: int, start: int = 0) -> None:
    assert device.client is not None
    for index in range(start, start + count):
        await device.client.publish(
            f"dev2app/{device.did}",
            _report(codec, index),
            qos=1,
        )


def _report(codec: P0Codec, index: int) -> bytes:
    values = {**STATE, "Temperature": index % 100, "LED_R": index % 250}
    return encode_frame(Frame(CMD_REPORT, codec.encode_status(values)))


async def count_is(
    stack: ScaleOut, did: str, expected: int, wait: float = 30.0, redelivered: int = 0
) -> None:
    """Exactly ``expected`` reports stored, or, after a crash, up to ``redelivered`` more: a
    gateway killed between committing a batch and acknowledging it to the broker has those
    messages delivered again (at least once, never lost)."""

    async def reached() -> bool:
        return await stored_reports(stack, did) >= expected

    await eventually(reached, wait=wait)
    await asyncio.sleep(1)  # a duplicate would land within the batcher's next flush
    stored = await stored_reports(stack, did)
    assert expected <= stored <= expected + redelivered, stored


async def test_devices_on_both_nodes_are_online_and_their_reports_stored_once(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    codec = P0Codec(pet_house.definition)
    first_user, first = await new_bound_device(stack, appid, pet_house)
    second_user, second = await new_bound_device(stack, appid, pet_house)
    async with httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http:
        async with device_on(stack, 0, first) as on_0, device_on(stack, 1, second) as on_1:

            async def both_online() -> bool:
                return await is_online(http, first_user, first) and await is_online(
                    http, second_user, second
                )

            await eventually(both_online, wait=5)
            await eventually(lambda: stored_online(stack, second), wait=5)
            await send_reports(on_0, codec, 5)
            await send_reports(on_1, codec, 5)
            await count_is(stack, first, 5)
            await count_is(stack, second, 5)

        async def both_offline() -> bool:
            return not await is_online(http, first_user, first) and not await is_online(
                http, second_user, second
            )

        await eventually(both_offline, wait=5)

        async def stored_offline() -> bool:
            return not await stored_online(stack, second)

        await eventually(stored_offline, wait=5)
        await asyncio.sleep(1)
        # stored once per change, though two gateways run
        assert await presence_log(stack, first) == ["dev_online", "dev_offline"]
        assert await presence_log(stack, second) == ["dev_online", "dev_offline"]


async def test_a_websocket_command_reaches_a_device_on_node_1_and_its_ack_comes_back(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    user, did = await new_bound_device(stack, appid, pet_house)
    async with (
        httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http,
        device_on(stack, 1, did, answer=True) as device,
        app_socket(stack.api, user) as socket,
    ):
        await eventually(lambda: is_online(http, user, did), wait=5)
        await socket.send("c2s_read", {"did": did}, req_sn=8)
        topic, payload = await device.next_message()
        assert topic.startswith(f"app2dev/{did}/")
        assert payload == bytes.fromhex("00000003080000930000000802")
        acked = await socket.expect("s2c_ack")
        assert acked["res_sn"] == 8
        # plain delivery
        sent = await http.post(f"/app/control/{did}", headers=user.headers(), json={"raw": [1]})
        assert sent.status_code == 200, sent.text
        assert (await device.next_message())[0] == f"app2dev/{did}/cloud"


async def test_a_gateway_killed_mid_stream_loses_no_report(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    codec = P0Codec(pet_house.definition)
    user, did = await new_bound_device(stack, appid, pet_house)
    victim = stack.gateways[0]
    async with (
        httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http,
        device_on(stack, 1, did) as device,
    ):
        await eventually(lambda: is_online(http, user, did), wait=5)
        sending = asyncio.create_task(send_reports(device, codec, 1000))

        async def midway() -> bool:
            return await stored_reports(stack, did) > 0

        await eventually(midway)  # the gateways are storing: kill one of them now
        try:
            await asyncio.to_thread(victim.stop, signal.SIGKILL)
            await sending
            # what the victim had committed but not yet acknowledged comes again: at most
            # its prefetch (IOTCLOUD_RABBITMQ_PREFETCH, 500)
            await count_is(stack, did, 1000, redelivered=500)
        finally:
            await asyncio.to_thread(victim.start)


async def test_reports_sent_while_every_gateway_is_down_are_stored_when_one_returns(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    codec = P0Codec(pet_house.definition)
    user, did = await new_bound_device(stack, appid, pet_house)
    async with (
        httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http,
        device_on(stack, 0, did) as device,
    ):
        await eventually(lambda: is_online(http, user, did), wait=5)
        for gateway in stack.gateways:
            assert await asyncio.to_thread(gateway.stop) == 0, gateway.log()
        await send_reports(device, codec, 50)
        await asyncio.sleep(1)
        assert await stored_reports(stack, did) == 0
        await asyncio.to_thread(stack.gateways[1].start)
        await count_is(stack, did, 50, wait=30)
    await asyncio.to_thread(stack.gateways[0].start)


async def test_a_disabled_device_is_disconnected_and_refused(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    user, did = await new_bound_device(stack, appid, pet_house)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http:
        async with device_on(stack, 1, did) as device:
            await eventually(lambda: is_online(http, user, did), wait=5)
            await asyncio.sleep(5.5)  # the management API lists a connection after its stats tick
            changed = await http.put(
                f"/admin/v1/devices/{did}", headers=admin, json={"is_disabled": True}
            )
            assert changed.status_code == 200, changed.text
            assert device._task is not None
            # the broker closed the connection: the device's reading task ends with the error
            done, _ = await asyncio.wait({device._task}, timeout=10)
            assert done, "the disabled device is still connected"
            assert isinstance(device._task.exception(), aiomqtt.MqttError)
            device._task = None
        with pytest.raises(aiomqtt.MqttCodeError, match=r"Not authorized|Bad user name"):
            async with device_on(stack, 0, did):
                pass


async def test_a_data_template_device_on_node_1_is_answered_once_and_stored(
    stack: ScaleOut,
) -> None:
    """Its ``$thing/up/...`` topics come back from routing keys (RabbitMQ's MQTT plugin turns
    ``/`` into ``.``); one gateway answers, although every process hears the report."""
    product = await import_thing_product(stack.api)
    identity = await create_thing_device(stack.api, product, "lamp.kitchen." + new_device_name())
    async with ThingDevice(stack.cluster.mqtt_port(1), identity) as thing:
        reply = await thing.report({"power_switch": 1, "brightness": 30})
        assert reply["code"] == 0, reply
        status = await thing.get_status()
        assert status["data"]["report"] == {"power_switch": 1, "brightness": 30}
        await asyncio.sleep(1)  # a second answer would have come by now
        replies = [body for _, body in thing.received if body.get("method") == "report_reply"]
        assert len(replies) == 1, thing.received

    async with Database(stack.api.database_url) as db, db.session() as session:
        device = await DeviceRepository(session).by_did(identity.did)
        assert device is not None
        latest = await TelemetryRepository(session).latest(device.id)
    assert latest is not None
    assert dict(latest.attrs) == {"power_switch": 1, "brightness": 30}


async def test_a_websocket_on_the_other_api_process_hears_bindings_presence_and_reports(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    """The socket is on ``api`` 1; the binding is made through ``api`` 0, the device is on
    broker node 0, and whichever gateway stores its reports."""
    codec = P0Codec(pet_house.definition)
    user = sign_up(stack.api, appid)
    bystander = sign_up(stack.api, appid)
    did, _ = register(stack.api, pet_house)
    listening, other = stack.apis[1], stack.apis[0]
    async with (
        httpx.AsyncClient(base_url=other.base_url, timeout=30) as http,
        app_socket(listening, user) as socket,
        app_socket(listening, bystander) as stranger,
    ):
        await bind_over_http(http, user, did, PASSCODE)
        changed = await socket.until(lambda message: message["cmd"] == "s2c_binding_changed")
        assert changed["data"] == {"did": did, "bind": True}
        async with device_on(stack, 0, did) as device:
            async with asyncio.timeout(10):
                online = await socket.until(lambda m: m["cmd"] == "s2c_online_status")
            assert (online["data"]["did"], online["data"]["online"]) == (did, True)
            await send_reports(device, codec, 1, start=42)
            heard = await socket.until(lambda message: message["cmd"] == "s2c_noti")
            assert heard["data"]["did"] == did
            assert heard["data"]["attrs"]["Temperature"] == 42
        async with asyncio.timeout(10):
            offline = await socket.until(lambda m: m["cmd"] == "s2c_online_status")
        assert (offline["data"]["did"], offline["data"]["online"]) == (did, False)
        # another user of the same app, on the same process, heard none of it
        assert await stranger.drain() == []


async def test_a_sign_out_on_one_api_process_ends_the_token_on_the_other_at_once(
    stack: ScaleOut, appid: str
) -> None:
    """The processes keep tokens for a minute (``IOTCLOUD_AUTH_CACHE_SECONDS``): only the
    process bus, carried by the cluster, ends it within seconds."""
    first, second = stack.apis
    user = sign_up(first, appid)
    async with (
        httpx.AsyncClient(base_url=first.base_url, timeout=30) as a,
        httpx.AsyncClient(base_url=second.base_url, timeout=30) as b,
    ):
        assert (await b.get("/app/users", headers=user.headers())).status_code == 200  # cached
        async with app_socket(second, user) as socket:
            assert (await a.delete("/app/logout", headers=user.headers())).status_code == 204

            async def refused() -> bool:
                return (await b.get("/app/users", headers=user.headers())).status_code != 200

            await eventually(refused, wait=3)
            assert_error(await b.get("/app/users", headers=user.headers()), 9004, 400)
            ended = await socket.until(lambda message: message["cmd"] == "s2c_invalid_msg")
            assert ended["data"]["error_code"] == 9004


async def test_quick_reconnections_stored_by_two_gateways_end_in_the_real_state(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    """Each connect and disconnect is stored by whichever gateway takes it from the queue, so
    the two may store them out of order; each is stored with the broker's instant and only
    if nothing later is stored, so the device ends as it really is."""
    user, did = await new_bound_device(stack, appid, pet_house)
    async with httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http:
        for cycle in range(8):
            async with device_on(stack, cycle % 2, did):
                pass
        async with device_on(stack, 1, did):
            await eventually(lambda: stored_online(stack, did), wait=5)
            await asyncio.sleep(1.5)  # every older change has been taken by now
            assert await stored_online(stack, did)
            assert await is_online(http, user, did)

        async def stored_offline() -> bool:
            return not await stored_online(stack, did)

        await eventually(stored_offline, wait=5)
        await asyncio.sleep(1.5)
        assert not await stored_online(stack, did)
        assert not await is_online(http, user, did)
        changes = await presence_log(stack, did)
        assert changes == ["dev_online", "dev_offline"] * 9, changes


async def denials(stack: ScaleOut, kind: str) -> float:
    """``deny`` answers of ``kind`` counted by both ``api`` processes (each node asks its own)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=30) as http:
        for api in stack.apis:
            exposition = (await http.get(api.base_url + "/metrics")).text
            total += sample(exposition, BROKER_AUTH, kind=kind, result="deny") or 0.0
    return total


async def test_the_broker_refuses_strangers_and_other_devices_topics_through_iotcloud(
    stack: ScaleOut, appid: str, pet_house: Product
) -> None:
    """A wrong passcode, an unknown did, and a device publishing or subscribing on another
    device's topics: RabbitMQ asks iotcloud, refuses (and closes the connection of a refused
    PUBLISH or SUBSCRIBE: it has no SUBACK failure code for MQTT 3.1.1 here), and iotcloud
    counts each denial in ``/metrics``."""
    _, did = await new_bound_device(stack, appid, pet_house)
    _, other = await new_bound_device(stack, appid, pet_house)
    users_denied, topics_denied = await denials(stack, "user"), await denials(stack, "topic")
    for node, (name, passcode) in enumerate([(did, "WRONGPASS1"), ("z" * 22, PASSCODE)]):
        with pytest.raises(aiomqtt.MqttCodeError, match=r"Not authorized|Bad user name"):
            async with MqttDevice(
                stack.cluster.mqtt_port(node), name, passcode, protocol=aiomqtt.ProtocolVersion.V31
            ):
                pass
    assert await denials(stack, "user") >= users_denied + 2

    async def closed_after(action: str) -> None:
        async with device_on(stack, 1, did) as device:
            assert device.client is not None
            assert device._task is not None
            if action == "publish":
                await device.client.publish(f"dev2app/{other}", b"\x00", qos=1)
            else:
                await device.client.subscribe(f"app2dev/{other}/#", qos=1)
            done, _ = await asyncio.wait({device._task}, timeout=10)
            assert done, f"a {action} on another device's topic left the connection open"
            assert isinstance(device._task.exception(), aiomqtt.MqttError)
            device._task = None

    for action in ("publish", "subscribe"):
        with suppress(aiomqtt.MqttError):  # the broker may close before it answers
            await closed_after(action)
    assert await denials(stack, "topic") >= topics_denied + 2
    assert await stored_reports(stack, other) == 0
