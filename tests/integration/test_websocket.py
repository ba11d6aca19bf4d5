"""The real-time WebSocket API (``/ws/app/v1``) against a real ``iotcloud serve``: app clients
speak to it with ``websockets``; devices are virtual devices, or raw MQTT clients where the exact
frames matter."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from iotcloud.codecs import Frame, P0Codec, decode_frame, encode_frame
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL_SN, CMD_REPORT
from iotcloud.gateway.service import json_values
from iotcloud.simulator import VirtualDevice
from iotcloud.storage.database import Database
from iotcloud.storage.models import DeviceRow
from tests.accounts import User, sign_up
from tests.devices import (
    PASSCODE,
    MqttDevice,
    Online,
    Product,
    eventually,
    import_product,
    register,
    until_online,
)
from tests.server import RunningServer
from tests.thing_devices import (
    ThingDevice,
    add_thing_device,
    add_thing_product,
    server_database_url,
)

Message = dict[str, Any]
WAIT = 10.0


# -- helpers ---------------------------------------------------------------------------------------


class AppSocket:
    """One app connection: JSON messages in and out, with time limits on every wait."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, cmd: str, data: Any = None, **extra: Any) -> None:
        body: Message = {"cmd": cmd, **extra}
        if data is not None:
            body["data"] = data
        await self.ws.send(json.dumps(body))

    async def receive(self) -> Message:
        async with asyncio.timeout(WAIT):
            message: Message = json.loads(await self.ws.recv())
        return message

    async def expect(self, cmd: str) -> Message:
        """The next message, which must be a ``cmd``."""
        message = await self.receive()
        assert message["cmd"] == cmd, message
        return message

    async def until(self, wanted: Callable[[Message], bool]) -> Message:
        """The first message ``wanted`` accepts (messages before it are skipped)."""
        async with asyncio.timeout(WAIT):
            while True:
                message = await self.receive()
                if wanted(message):
                    return message

    async def drain(self) -> list[Message]:
        """Everything queued for this connection so far: a ping's pong comes after whatever the
        server had queued before it."""
        await self.send("ping")
        before: list[Message] = []
        while True:
            message = await self.receive()
            if message["cmd"] == "pong":
                return before
            before.append(message)

    async def login(self, user: User, **options: Any) -> None:
        await self.send("login_req", login_data(user, **options))
        assert await self.expect("login_res") == {"cmd": "login_res", "data": {"success": True}}

    async def invalid(self) -> tuple[int, str]:
        message = await self.expect("s2c_invalid_msg")
        assert set(message["data"]) == {"error_code", "msg"}, message
        return message["data"]["error_code"], message["data"]["msg"]


def login_data(user: User, **options: Any) -> Message:
    return {
        "appid": user.appid,
        "uid": user.uid,
        "token": user.token,
        "p0_type": "attrs_v4",
        "heartbeat_interval": 180,
        **options,
    }


def ws_url(server: RunningServer) -> str:
    return f"ws://127.0.0.1:{server.http_port}/ws/app/v1"


@asynccontextmanager
async def app_socket(
    server: RunningServer, user: User | None = None, **options: Any
) -> AsyncIterator[AppSocket]:
    async with connect(ws_url(server), proxy=None, open_timeout=10) as ws:
        app = AppSocket(ws)
        if user is not None:
            await app.login(user, **options)
        yield app


def noti(did: str, attrs: Message) -> Message:
    return {"cmd": "s2c_noti", "data": {"did": did, "attrs": attrs}}


def wire_attrs(values: Message) -> Message:
    """Display values as the WebSocket API sends them: binary as byte arrays."""
    return {k: list(v) if isinstance(v, bytes) else v for k, v in values.items()}


async def bind(http: httpx.AsyncClient, user: User, did: str, passcode: str) -> None:
    reply = await http.post(
        "/app/bindings",
        json={"devices": [{"did": did, "passcode": passcode}]},
        headers=user.headers(),
    )
    assert reply.json() == {"success": [did], "failed": []}, reply.text


async def unbind(http: httpx.AsyncClient, user: User, did: str) -> None:
    reply = await http.request(
        "DELETE", "/app/bindings", json={"devices": [{"did": did}]}, headers=user.headers()
    )
    assert reply.json() == {"success": [did], "failed": []}, reply.text


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture(scope="module")
def speaker(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "var_len_speaker.json")


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def user(server: RunningServer, app: dict[str, str]) -> User:
    return sign_up(server, app["appid"])


def virtual(product: Product) -> VirtualDevice:
    return VirtualDevice(
        product.product_key, product.definition, "02" + uuid.uuid4().hex[:10], seed=7
    )


@asynccontextmanager
async def raw_device(
    server: RunningServer, http: httpx.AsyncClient, user: User, product: Product
) -> AsyncIterator[MqttDevice]:
    """A registered device bound to ``user``, online as a raw MQTT client."""
    did, _ = register(server, product)
    await bind(http, user, did, PASSCODE)
    async with MqttDevice.on_server(server, did) as device:
        await until_online(http, user, did)
        yield device


@asynccontextmanager
async def virtual_device(
    server: RunningServer, http: httpx.AsyncClient, user: User, product: Product
) -> AsyncIterator[tuple[VirtualDevice, str]]:
    """A virtual device of ``product`` online and bound to ``user``: ``(device, did)``."""
    device = virtual(product)
    async with Online(server, device):
        assert device.did is not None
        await bind(http, user, device.did, device.passcode)
        yield device, device.did


async def count_until_closed(ws: ClientConnection) -> int:
    """How many messages ``ws`` still receives before the server closes it (within a minute)."""
    received = 0
    async with asyncio.timeout(60):
        while True:
            try:
                await ws.recv()
            except ConnectionClosed:
                return received
            received += 1


# -- login -----------------------------------------------------------------------------------------


async def test_login_accepts_the_user_and_refuses_wrong_credentials(
    server: RunningServer, app: dict[str, str], user: User
) -> None:
    other_app = server.create_app("Other WS")
    stranger = sign_up(server, other_app["appid"])
    refused = {"cmd": "login_res", "data": {"success": False}}
    async with app_socket(server) as client:
        for wrong in (
            {"token": "0" * 32},  # unknown token
            {"appid": other_app["appid"]},  # the token of another app
            {"appid": "nope"},  # unknown app
            {"uid": stranger.uid},  # somebody else's uid
        ):
            await client.send("login_req", login_data(user, **wrong))
            assert await client.receive() == refused
        # still logged out: commands are refused with 1003
        await client.send("c2s_read", {"did": "x" * 22})
        assert (await client.invalid())[0] == 1003
        # the same connection logs in once the credentials are right
        await client.login(user)
        assert await client.drain() == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"heartbeat_interval": 181}, "data.heartbeat_interval"),
        ({"heartbeat_interval": 0}, "data.heartbeat_interval"),
        ({"heartbeat_interval": "60"}, "data.heartbeat_interval"),
        ({"p0_type": "attrs_v5"}, "data.p0_type"),
        ({"auto_subscribe": "yes"}, "data.auto_subscribe"),
        ({"token": None}, "data.token"),
    ],
)
async def test_malformed_logins_are_named_and_the_connection_stays(
    server: RunningServer, user: User, data: Message, named: str
) -> None:
    async with app_socket(server) as client:
        await client.send("login_req", login_data(user, **data))
        code, msg = await client.invalid()
        assert (code, named in msg) == (9015, True), msg
        await client.send("login_req")
        code, msg = await client.invalid()
        assert (code, "data" in msg) == (9015, True), msg
        await client.login(user)


async def test_before_login_only_ping_and_login_are_served(server: RunningServer) -> None:
    async with app_socket(server) as client:
        await client.send("ping")
        assert await client.expect("pong") == {"cmd": "pong"}
        for cmd, data in (
            ("subscribe_req", [{"did": "a" * 22}]),
            ("c2s_write", {"did": "a" * 22, "attrs": {"LED_OnOff": True}}),
            ("c2s_read", {"did": "a" * 22}),
            ("c2s_raw", {"did": "a" * 22, "raw": [0, 0, 0, 3, 4, 0, 0, 144, 2]}),
            ("c2s_ack", {"did": "a" * 22}),
        ):
            await client.send(cmd, data)
            assert await client.invalid() == (1003, "Websocket client not login!")


async def test_bad_messages_are_answered_and_the_connection_kept(
    server: RunningServer, user: User
) -> None:
    async with app_socket(server, user) as client:
        for text, named in (
            ("not json", "JSON"),
            ("[1, 2]", "JSON"),
            ('{"data": {}}', "cmd"),
            ('{"cmd": "c2s_fly"}', "c2s_fly"),
            ('{"cmd": "c2s_write", "data": {"did": 5, "attrs": {}}}', "data.did"),
            ('{"cmd": "c2s_write", "data": {"did": "x"}}', "data.attrs"),
            ('{"cmd": "c2s_write", "req_sn": -1, "data": {"did": "x", "attrs": {}}}', "req_sn"),
            ('{"cmd": "subscribe_req", "data": {"did": "x"}}', "data"),
            ('{"cmd": "c2s_ack", "data": {"did": "x"}}', "res_sn"),
        ):
            await client.ws.send(text)
            code, msg = await client.invalid()
            assert (code, named in msg) == (9015, True), (text, msg)
        await client.send("ping")
        assert await client.expect("pong") == {"cmd": "pong"}


async def test_no_heartbeat_is_1011_and_closes_the_connection(
    server: RunningServer, user: User
) -> None:
    async with app_socket(server, user, heartbeat_interval=1) as client:
        for _ in range(3):  # talking keeps it open
            await asyncio.sleep(0.5)
            await client.send("ping")
            assert await client.expect("pong") == {"cmd": "pong"}
        assert await client.invalid() == (1011, "No heartbeat!")
        with pytest.raises(ConnectionClosed):
            await client.receive()


# -- subscriptions and pushes ----------------------------------------------------------------------


async def test_auto_subscribe_delivers_reports_as_display_attrs(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    async with (
        virtual_device(server, http, user, pet_house) as (device, did),
        app_socket(server, user) as client,
    ):
        device.status.update(Temperature=21, Humidity=47, Motor_Speed=-3, LED_Color="Pink")
        await device.report()
        expected = noti(did, json_values(device.status))
        assert expected["data"]["attrs"]["LED_Color"] == "Pink"
        assert await client.until(lambda m: m == expected) == expected


async def test_binary_attrs_travel_as_byte_arrays(
    server: RunningServer, http: httpx.AsyncClient, user: User, speaker: Product
) -> None:
    async with (
        virtual_device(server, http, user, speaker) as (device, did),
        app_socket(server, user) as client,
    ):
        await device.report()
        expected = noti(did, wire_attrs(device.status))
        assert isinstance(expected["data"]["attrs"]["Greeting"], list)
        assert await client.until(lambda m: m == expected) == expected
        greeting = list(b"hello, speaker!!")
        await client.send("c2s_write", {"did": did, "attrs": {"Greeting": greeting}})
        # the device answers a 0x0090 with a broadcast report of what changed
        expected = noti(did, {"Greeting": greeting})
        assert await client.until(lambda m: m == expected) == expected
        assert device.stats.last_control == {"Greeting": b"hello, speaker!!"}
        await client.send("c2s_write", {"did": did, "attrs": {"Greeting": [1, 2]}})
        code, msg = await client.invalid()
        assert (code, "Greeting" in msg) == (9025, True), msg


async def test_explicit_subscriptions_only_take_bound_devices(
    server: RunningServer,
    app: dict[str, str],
    http: httpx.AsyncClient,
    user: User,
    pet_house: Product,
) -> None:
    other = sign_up(server, app["appid"])
    theirs, _ = register(server, pet_house)
    await bind(http, other, theirs, PASSCODE)
    async with (
        virtual_device(server, http, user, pet_house) as (device, did),
        app_socket(server, user, auto_subscribe=False) as client,
        app_socket(server, user) as watcher,
    ):
        device.status["Humidity"] = 65
        await device.report()
        expected = noti(did, json_values(device.status))
        await watcher.until(lambda m: m == expected)
        assert await client.drain() == []  # nothing before subscribing
        unknown = "z" * 22
        await client.send(
            "subscribe_req",
            [{"did": did}, {"did": theirs, "passcode": PASSCODE}, {"did": unknown}],
        )
        answer = await client.expect("subscribe_res")
        assert answer["data"]["success"] == [{"did": did, "error_code": 0, "msg": "ok"}]
        assert [(f["did"], f["error_code"]) for f in answer["data"]["failed"]] == [
            (theirs, 9017),
            (unknown, 9014),
        ]
        assert all(f["msg"] for f in answer["data"]["failed"])
        # each refused device is also named in an s2c_invalid_msg
        assert [(await client.invalid())[0] for _ in range(2)] == [9017, 9014]
        device.status["Humidity"] = 66
        await device.report()
        assert await client.expect("s2c_noti") == noti(did, json_values(device.status))


async def test_online_and_offline_are_pushed_to_subscribers(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    did, _ = register(server, pet_house)
    await bind(http, user, did, PASSCODE)
    item = (await http.get(f"/app/devices/{did}", headers=user.headers())).json()
    async with app_socket(server, user) as client:
        async with MqttDevice.on_server(server, did):
            message = await client.expect("s2c_online_status")
            assert message == {
                "cmd": "s2c_online_status",
                "data": {"did": did, "passcode": PASSCODE, "mac": item["mac"], "online": True},
            }
        message = await client.expect("s2c_online_status")
        assert message["data"] == {
            "did": did,
            "passcode": PASSCODE,
            "mac": item["mac"],
            "online": False,
        }


async def test_binding_changes_are_pushed_and_unbinding_stops_the_flow(
    server: RunningServer,
    app: dict[str, str],
    http: httpx.AsyncClient,
    user: User,
    pet_house: Product,
) -> None:
    owner = sign_up(server, app["appid"])
    device = virtual(pet_house)
    async with Online(server, device), app_socket(server, user) as client:
        assert device.did is not None
        did = device.did
        await bind(http, owner, did, device.passcode)  # the user is a guest: unbinding is theirs
        await bind(http, user, did, device.passcode)
        changed = await client.expect("s2c_binding_changed")
        assert changed == {"cmd": "s2c_binding_changed", "data": {"did": did, "bind": True}}
        # an auto-subscribing session takes the new device at once
        device.status["Temperature"] = 30
        await device.report()
        assert await client.until(lambda m: m["cmd"] == "s2c_noti") == noti(
            did, json_values(device.status)
        )
        await unbind(http, user, did)
        changed = await client.expect("s2c_binding_changed")
        assert changed == {"cmd": "s2c_binding_changed", "data": {"did": did, "bind": False}}
        async with app_socket(server, owner) as watcher:
            device.status["Temperature"] = 31
            await device.report()
            expected = noti(did, json_values(device.status))
            assert await watcher.until(lambda m: m == expected) == expected
        assert await client.drain() == []
        await client.send("c2s_write", {"did": did, "attrs": {"LED_OnOff": True}})
        assert (await client.invalid())[0] == 9017


# -- commands and their answers --------------------------------------------------------------------


async def test_c2s_write_sends_the_exact_0090_frame_with_the_connections_client_id(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    async with raw_device(server, http, user, pet_house) as device:
        did = device.did
        async with app_socket(server, user) as first, app_socket(server, user) as second:
            attrs = {"LED_OnOff": True, "LED_Color": "Purple", "Motor_Speed": 3}
            await first.send("c2s_write", {"did": did, "attrs": attrs})
            topic, payload = await device.next_message()
            assert payload == bytes.fromhex("000000030a00009001230500000008")  # spec §4.4
            first_id = topic.removeprefix(f"app2dev/{did}/")
            await second.send("c2s_write", {"did": did, "attrs": attrs})
            topic, _ = await device.next_message()
            second_id = topic.removeprefix(f"app2dev/{did}/")
            for client_id in (first_id, second_id):
                assert 0 < len(client_id) <= 23
                assert "/" not in client_id
                assert client_id != "cloud"
            assert first_id != second_id

            for attrs, named in (
                ({"Temperature": 20}, "Temperature"),  # read only
                ({"LED_R": 255}, "LED_R"),
                ({"Motor_Speed": True}, "Motor_Speed"),
                ({}, "attrs"),
            ):
                await first.send("c2s_write", {"did": did, "attrs": attrs})
                code, msg = await first.invalid()
                assert (code, named in msg) == (9025, True), msg
            assert device.unread.empty()


async def test_req_sn_goes_out_as_0093_and_the_0094_answers_that_connection_only(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    codec = P0Codec(pet_house.definition)
    async with raw_device(server, http, user, pet_house) as device:
        did = device.did
        async with app_socket(server, user) as asker, app_socket(server, user) as other:
            await asker.send("c2s_write", {"did": did, "attrs": {"LED_OnOff": True}}, req_sn=7)
            topic, payload = await device.next_message()
            assert payload == bytes.fromhex("000000030e0000930000000701010100000000")
            reply_topic = topic.replace("app2dev", "dev2app", 1)

            # a reply with the status: res_sn for the asker, the plain state for the others
            status = {"LED_OnOff": True, "LED_Color": "Yellow", "Temperature": 12}
            await device.publish(reply_topic, Frame(CMD_ACK_SN, codec.encode_status(status), sn=7))
            full = json_values(codec.decode(codec.encode_status(status)).values)
            assert await asker.expect("s2c_noti") == {**noti(did, full), "res_sn": 7}
            assert await other.expect("s2c_noti") == noti(did, full)

            # a bare acknowledgement is s2c_ack, for the asker alone
            await asker.send("c2s_read", {"did": did}, req_sn=8)
            topic, payload = await device.next_message()
            assert payload == bytes.fromhex("00000003080000930000000802")
            await device.publish(reply_topic, Frame(CMD_ACK_SN, b"", sn=8))
            assert await asker.expect("s2c_ack") == {
                "cmd": "s2c_ack",
                "res_sn": 8,
                "data": {"did": did},
            }
            assert await other.drain() == []


async def test_c2s_read_is_answered_through_the_device_report(
    server: RunningServer, http: httpx.AsyncClient, user: User, speaker: Product
) -> None:
    async with (
        virtual_device(server, http, user, speaker) as (device, did),
        app_socket(server, user) as client,
    ):
        reads = device.stats.reads
        await client.send("c2s_read", {"did": did, "names": ["Volume", "Temperature"]})
        message = await client.until(
            lambda m: (
                m["cmd"] == "s2c_noti" and set(m["data"]["attrs"]) == {"Volume", "Temperature"}
            )
        )
        assert message["data"]["attrs"] == {
            "Volume": device.status["Volume"],
            "Temperature": device.status["Temperature"],
        }
        assert device.stats.reads == reads + 1
        # with req_sn the device answers 0x0094 to this connection
        await client.send("c2s_read", {"did": did, "names": ["Power"]}, req_sn=99)
        message = await client.until(lambda m: m.get("res_sn") == 99)
        assert message == {**noti(did, {"Power": device.status["Power"]}), "res_sn": 99}
        await client.send("c2s_read", {"did": did, "names": ["Loudness"]})
        code, msg = await client.invalid()
        assert (code, "Loudness" in msg) == (9025, True), msg


async def test_c2s_raw_forwards_whole_frames_and_refuses_others(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    async with raw_device(server, http, user, pet_house) as device:
        did = device.did
        async with app_socket(server, user) as client:
            frame = [0, 0, 0, 3, 9, 0, 0, 144, 1, 0, 1, 2, 3, 4]  # the spec's worked example
            await client.send("c2s_raw", {"did": did, "raw": frame})
            topic, payload = await device.next_message()
            assert topic.startswith(f"app2dev/{did}/ws")
            assert payload == bytes(frame)
            with_sn = [0, 0, 0, 3, 8, 0, 0, 0x93, 0, 0, 1, 0, 2]
            await client.send("c2s_raw", {"did": did, "raw": with_sn})
            assert (await device.next_message())[1] == bytes(with_sn)
            for raw, named in (
                ([1, 2, 3], "raw"),  # no frame header
                ([0, 0, 0, 3, 4, 0, 0, 0x91, 4], "0x0091"),  # not a command to a device
                ([0, 0, 0, 3, 9, 0, 0, 144, 1], "raw"),  # LEN says more than follows
                ([0, 0, 0, 3, 4, 0, 0, 144, 256], "raw[8]"),
                ([], "raw"),
            ):
                await client.send("c2s_raw", {"did": did, "raw": raw})
                code, msg = await client.invalid()
                assert (code, named in msg) == (9015, True), (raw, msg)
            assert device.unread.empty()


async def test_a_device_0093_is_pushed_with_req_sn_and_c2s_ack_answers_it(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    codec = P0Codec(pet_house.definition)
    async with raw_device(server, http, user, pet_house) as device:
        did = device.did
        async with app_socket(server, user) as client:
            status = {"Humidity": 70}
            await device.publish(
                f"dev2app/{did}", Frame(CMD_CONTROL_SN, codec.encode_status(status), sn=42)
            )
            message = await client.expect("s2c_noti")
            assert message["req_sn"] == 42
            assert message["data"]["attrs"]["Humidity"] == 70
            await client.send("c2s_ack", {"did": did}, res_sn=42)
            topic, payload = await device.next_message()
            assert topic.startswith(f"app2dev/{did}/ws")
            assert payload == bytes.fromhex("00000003070000940000002a")


async def test_custom_sessions_get_raw_frames(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    codec = P0Codec(pet_house.definition)
    async with raw_device(server, http, user, pet_house) as device:
        did = device.did
        async with (
            app_socket(server, user, p0_type="custom") as custom,
            app_socket(server, user) as attrs,
        ):
            report = encode_frame(Frame(CMD_REPORT, codec.encode_status({"Humidity": 5})))
            transparent = encode_frame(Frame(CMD_REPORT, b"\x06hello"))
            assert device.client is not None
            await device.client.publish(f"dev2app/{did}", report)
            await device.client.publish(f"dev2app/{did}", transparent)
            raw = {"cmd": "s2c_raw", "data": {"did": did, "raw": list(report)}}
            assert await custom.expect("s2c_raw") == raw
            raw = {"cmd": "s2c_raw", "data": {"did": did, "raw": list(transparent)}}
            assert await custom.expect("s2c_raw") == raw
            # attrs_v4 sessions get attrs, and transparent data as s2c_raw all the same
            assert (await attrs.expect("s2c_noti"))["data"]["attrs"]["Humidity"] == 5
            assert await attrs.expect("s2c_raw") == raw
            await custom.send("c2s_write", {"did": did, "attrs": {"LED_OnOff": True}})
            code, msg = await custom.invalid()
            assert (code, "attrs_v4" in msg) == (9015, True), msg


# -- isolation and slow clients --------------------------------------------------------------------


async def test_a_second_user_can_neither_subscribe_nor_command_nor_listen(
    server: RunningServer,
    app: dict[str, str],
    http: httpx.AsyncClient,
    user: User,
    pet_house: Product,
) -> None:
    other_app = server.create_app("Elsewhere")
    strangers = [sign_up(server, app["appid"]), sign_up(server, other_app["appid"])]
    codec = P0Codec(pet_house.definition)
    async with raw_device(server, http, user, pet_house) as device:
        did = device.did
        for stranger in strangers:
            async with (
                raw_device(server, http, stranger, pet_house) as theirs,
                app_socket(server, user) as owner,
                app_socket(server, stranger) as client,
            ):
                await client.send("subscribe_req", [{"did": did}])
                answer = await client.expect("subscribe_res")
                assert answer["data"]["success"] == []
                assert [f["error_code"] for f in answer["data"]["failed"]] == [9017]
                assert (await client.invalid())[0] == 9017
                for cmd, data, extra in (
                    ("c2s_write", {"did": did, "attrs": {"LED_OnOff": True}}, {}),
                    ("c2s_write", {"did": did, "attrs": {"LED_OnOff": True}}, {"req_sn": 1}),
                    ("c2s_read", {"did": did}, {}),
                    ("c2s_raw", {"did": did, "raw": [0, 0, 0, 3, 4, 0, 0, 144, 2]}, {}),
                    ("c2s_ack", {"did": did}, {"res_sn": 1}),
                ):
                    await client.send(cmd, data, **extra)
                    assert (await client.invalid())[0] == 9017, cmd
                # the stranger's client id, as their own device sees it
                await client.send("c2s_read", {"did": theirs.did}, req_sn=5)
                topic, _ = await theirs.next_message()
                their_client = topic.removeprefix(f"app2dev/{theirs.did}/")
                # reports, and replies even when addressed to the stranger, reach the owner only
                await device.publish(f"dev2app/{did}", Frame(CMD_REPORT, codec.encode_status({})))
                for cmd, payload in (
                    (CMD_ACK_SN, b""),
                    (CMD_CONTROL_SN, codec.encode_status({})),
                    (CMD_ACK_SN, codec.encode_status({})),
                ):
                    await device.publish(f"dev2app/{did}/{their_client}", Frame(cmd, payload, sn=5))
                for _ in range(2):  # the report and the status in a reply
                    message = await owner.expect("s2c_noti")
                    assert (message["data"]["did"], "res_sn" in message) == (did, False)
                assert await client.drain() == []
                assert device.unread.empty()


async def test_a_client_that_stops_reading_is_dropped_without_slowing_the_others(
    server: RunningServer, http: httpx.AsyncClient, user: User, pet_house: Product
) -> None:
    # the slow client's socket buffers little, so the server's queue for it fills up
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", server.http_port))
    async with (
        raw_device(server, http, user, pet_house) as device,
        app_socket(server, user) as fast,
        connect(
            ws_url(server),
            sock=sock,
            proxy=None,
            compression=None,
            max_queue=1,
            ping_interval=None,
        ) as slow_ws,
    ):
        slow = AppSocket(slow_ws)
        await slow.login(user)
        total, per_round = 1600, 100  # more than the server queues (1,000) plus the buffers
        assert device.client is not None
        for first in range(0, total, per_round):
            for n in range(first, first + per_round):
                data = b"\x06" + n.to_bytes(4, "big") + os.urandom(4000)
                frame = encode_frame(Frame(CMD_REPORT, data))
                await device.client.publish(f"dev2app/{device.did}", frame)
            # the fast client keeps up with every message, round after round
            for n in range(first, first + per_round):
                message = await fast.expect("s2c_raw")
                payload = decode_frame(bytes(message["data"]["raw"])).payload
                assert payload[1:5] == n.to_bytes(4, "big")
        # the slow client reads again: what was sent before it was dropped, then the end
        received = await count_until_closed(slow_ws)
        assert received < total
        assert "too slow" in server.log()
        # the fast client is still served
        await fast.send("ping")
        assert await fast.expect("pong") == {"cmd": "pong"}


# -- data-template devices -------------------------------------------------------------------------


@pytest.mark.backend("sqlite")
async def test_c2s_write_and_read_reach_a_data_template_device_in_gizwits_form(
    server: RunningServer, http: httpx.AsyncClient, user: User
) -> None:
    """A Gizwits app bound to a data-template device by did + passcode writes enum labels and
    booleans (the device gets a ``control`` with the enum integer and 0/1) and reads its latest
    values as labels and booleans; a bad attr is 9025 naming it, and nothing is sent."""
    database_url = server_database_url(server)
    identity = await add_thing_device(database_url, await add_thing_product(database_url))
    did = identity.did
    async with Database(database_url) as db, db.session() as session:
        passcode = await session.scalar(select(DeviceRow.passcode).where(DeviceRow.did == did))
    assert passcode is not None
    await bind(http, user, did, passcode)
    async with ThingDevice.on_server(server, identity) as device:
        await until_online(http, user, did)
        async with app_socket(server, user) as client:
            await client.send(
                "c2s_write", {"did": did, "attrs": {"color": "Blue", "power_switch": True}}
            )
            _, control = await device.next_message()
            assert control["method"] == "control"
            assert control["params"] == {"color": 2, "power_switch": 1}

            assert (await device.report({"color": 1, "power_switch": 0, "brightness": 7}))[
                "code"
            ] == 0
            latest = {"color": "Green", "power_switch": False, "brightness": 7}
            assert await client.until(lambda m: m["cmd"] == "s2c_noti") == noti(did, latest)

            async def stored() -> bool:  # the push precedes the (batched) write of the report
                reply = await http.get(f"/app/devdata/{did}/latest", headers=user.headers())
                return bool(reply.json()["attr"] == latest)

            await eventually(stored)
            await client.send("c2s_read", {"did": did})
            assert await client.until(lambda m: m["cmd"] == "s2c_noti") == noti(did, latest)
            await client.send("c2s_read", {"did": did, "names": ["color"]}, req_sn=5)
            answer = await client.until(lambda m: m["cmd"] == "s2c_noti")
            assert answer == {**noti(did, {"color": "Green"}), "res_sn": 5}

            for cmd, data, named in (
                ("c2s_write", {"attrs": {"color": "Purple"}}, "color"),
                ("c2s_write", {"attrs": {"color": 7}}, "color"),
                ("c2s_write", {"attrs": {"temperature": 20}}, "temperature"),  # read only
                ("c2s_write", {"attrs": {"volume": 1}}, "volume"),
                ("c2s_read", {"names": ["volume"]}, "volume"),
            ):
                await client.send(cmd, {"did": did, **data})
                code, msg = await client.invalid()
                assert (code, named in msg) == (9025, True), (cmd, data, msg)
            assert len(device.controls) == 1
            assert device.unread.empty()
