"""Remote control over HTTP: ``POST /app/control/{did}`` against a real ``iotcloud serve``, with
a real MQTT client playing the device and checking the exact frames it receives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from iotcloud.codecs import P0Codec
from tests.accounts import User, bind, sign_up
from tests.devices import (
    PASSCODE,
    MqttDevice,
    Product,
    eventually,
    import_product,
    register,
    until_online,
)
from tests.errors import assert_error
from tests.server import ADMIN_TOKEN, RunningServer


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def scene(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.AsyncClient
) -> AsyncIterator[tuple[User, str, MqttDevice]]:
    user = sign_up(server, app["appid"])
    did, _ = register(server, pet_house)
    await bind(server, user, did)
    async with MqttDevice.on_server(server, did) as device:
        await until_online(http, user, did)
        yield user, did, device


async def test_attrs_reach_the_device_as_the_exact_0090_frame(
    scene: tuple[User, str, MqttDevice], http: httpx.AsyncClient
) -> None:
    user, did, device = scene
    reply = await http.post(
        f"/app/control/{did}",
        headers=user.headers(),
        json={"attrs": {"LED_OnOff": True, "LED_Color": "Purple", "Motor_Speed": 3}},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    topic, payload = await device.next_message()
    assert topic == f"app2dev/{did}/cloud"
    assert payload == bytes.fromhex("000000030a00009001230500000008")  # spec §4.4


async def test_standard_controls_fill_unflagged_fields_from_the_last_state(
    scene: tuple[User, str, MqttDevice], http: httpx.AsyncClient, pet_house: Product
) -> None:
    user, did, device = scene
    codec = P0Codec(pet_house.definition)
    state = {"LED_OnOff": False, "LED_Color": "Pink", "LED_R": 10, "LED_G": 20, "LED_B": 30}
    await device.report(codec, {**state, "Motor_Speed": -5, "Temperature": 20, "Humidity": 50})

    async def reported() -> bool:
        body = (await http.get(f"/app/devdata/{did}/latest", headers=user.headers())).json()
        return bool(body["attr"].get("LED_R") == 10)

    assert await eventually(reported)
    reply = await http.post(
        f"/app/control/{did}", headers=user.headers(), json={"attrs": {"LED_OnOff": 1}}
    )
    assert reply.status_code == 200, reply.text
    _, payload = await device.next_message()
    # flags: LED_OnOff only; bits: on (1) | Pink (3) << 1; R, G, B kept; Motor_Speed -5 -> 0
    assert payload == bytes.fromhex("000000030a0000900101070a141e00")


async def test_raw_bytes_are_the_p0_of_a_0090_frame(
    scene: tuple[User, str, MqttDevice], http: httpx.AsyncClient
) -> None:
    user, did, device = scene
    reply = await http.post(f"/app/control/{did}", headers=user.headers(), json={"raw": [1, 2, 3]})
    assert reply.status_code == 200, reply.text
    _, payload = await device.next_message()
    assert payload == bytes.fromhex("0000000306000090010203")


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({"Temperature": 20}, "Temperature"),  # read only
        ({"Nope": 1}, "Nope"),
        ({"LED_Color": "Green"}, "LED_Color"),
        ({"LED_R": 255}, "LED_R"),  # max 254
        ({"Motor_Speed": 6}, "Motor_Speed"),
        ({"LED_OnOff": "yes"}, "LED_OnOff"),
        ({"LED_R": True}, "LED_R"),
        ({}, "attrs"),
    ],
)
async def test_invalid_attrs_answer_9025_naming_the_attr(
    scene: tuple[User, str, MqttDevice], http: httpx.AsyncClient, attrs: dict[str, Any], named: str
) -> None:
    user, did, device = scene
    reply = await http.post(f"/app/control/{did}", headers=user.headers(), json={"attrs": attrs})
    assert_error(reply, 9025, 400, named)
    assert device.unread.empty()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"raw": [1, 256]}, "raw[1]"),
        ({"raw": [1, "a"]}, "raw[1]"),
        ({"raw": []}, "raw"),
        ({"raw": [1], "attrs": {"LED_OnOff": True}}, "exactly one"),
        ({}, "exactly one"),
        ({"attr": {}}, "attr"),
        ({"attrs": [1]}, "attrs"),
    ],
)
async def test_malformed_bodies_answer_9015(
    scene: tuple[User, str, MqttDevice], http: httpx.AsyncClient, body: dict[str, Any], named: str
) -> None:
    user, did, device = scene
    reply = await http.post(f"/app/control/{did}", headers=user.headers(), json=body)
    assert_error(reply, 9015, 400, named)
    assert device.unread.empty()


async def test_access_rules(
    server: RunningServer,
    app: dict[str, str],
    pet_house: Product,
    scene: tuple[User, str, MqttDevice],
    http: httpx.AsyncClient,
) -> None:
    user, did, device = scene
    body = {"attrs": {"LED_OnOff": True}}
    stranger = sign_up(server, app["appid"])
    assert_error(
        await http.post(f"/app/control/{did}", headers=stranger.headers(), json=body), 9017, 401
    )
    assert_error(
        await http.post("/app/control/aaaaaaaaaaaaaaaaaaaaaa", headers=user.headers(), json=body),
        9014,
        404,
    )
    assert_error(
        await http.post(
            f"/app/control/{did}", headers={"X-Gizwits-Application-Id": app["appid"]}, json=body
        ),
        9004,
        400,
    )
    offline, _ = register(server, pet_house)
    await bind(server, user, offline)
    assert_error(
        await http.post(f"/app/control/{offline}", headers=user.headers(), json=body), 9042, 400
    )
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    changed = await http.put(f"/admin/v1/devices/{did}", headers=admin, json={"is_disabled": True})
    assert changed.status_code == 200, changed.text
    assert_error(
        await http.post(f"/app/control/{did}", headers=user.headers(), json=body), 9023, 400
    )
    assert device.unread.empty()


async def test_unbound_devices_of_other_users_are_never_reached(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.AsyncClient
) -> None:
    owner = sign_up(server, app["appid"])
    did, _ = register(server, pet_house)
    await bind(server, owner, did)
    async with MqttDevice.on_server(server, did) as device:
        await until_online(http, owner, did)
        other_app = server.create_app("Other")
        outsider = sign_up(server, other_app["appid"])
        reply = await http.post(
            f"/app/control/{did}", headers=outsider.headers(), json={"raw": [1]}
        )
        assert reply.json()["error_code"] == 9017
        assert device.unread.empty()


async def test_unbinding_or_disabling_stops_commands_at_once(
    server: RunningServer, scene: tuple[User, str, MqttDevice], http: httpx.AsyncClient
) -> None:
    """The server remembers a passed binding check for a few seconds, but never past an unbind
    or a disable made through it."""
    user, did, device = scene
    body = {"raw": [1, 2, 3]}
    ok = await http.post(f"/app/control/{did}", headers=user.headers(), json=body)
    assert ok.status_code == 200, ok.text
    await device.next_message()
    gone = await http.request(
        "DELETE", "/app/bindings", json={"devices": [{"did": did}]}, headers=user.headers()
    )
    assert gone.json() == {"success": [did], "failed": []}
    assert_error(
        await http.post(f"/app/control/{did}", headers=user.headers(), json=body), 9017, 401
    )
    again = await http.post(
        "/app/bindings",
        json={"devices": [{"did": did, "passcode": PASSCODE}]},
        headers=user.headers(),
    )
    assert again.json() == {"success": [did], "failed": []}
    ok = await http.post(f"/app/control/{did}", headers=user.headers(), json=body)
    assert ok.status_code == 200, ok.text
    await device.next_message()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    changed = await http.put(f"/admin/v1/devices/{did}", headers=admin, json={"is_disabled": True})
    assert changed.status_code == 200, changed.text
    assert_error(
        await http.post(f"/app/control/{did}", headers=user.headers(), json=body), 9023, 400
    )
    assert device.unread.empty()
