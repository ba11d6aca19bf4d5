"""Two ``api`` processes on one database and one broker: what one of them changes, the other
applies at once (``iotcloud/bus``), not when its caches expire. The caches here are kept for a
minute, so only the bus can make these tests pass within their few seconds."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.accounts import User, sign_up
from tests.conftest import new_database_url
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
from tests.integration.test_websocket import app_socket, bind
from tests.mosquitto import MosquittoServer
from tests.server import ADMIN_TOKEN, RunningServer, serving

PROMPTLY = 3.0
"""Seconds within which the other process must have applied a change (its caches last 60)."""


@pytest.fixture(scope="module")
def pair(
    request: pytest.FixtureRequest, mosquitto: MosquittoServer
) -> Iterator[tuple[RunningServer, RunningServer]]:
    base = Path(tempfile.mkdtemp(prefix="iotcloud-coherence-"))
    url = new_database_url(request.getfixturevalue("postgres"), "postgres", base)
    common = {
        "mqtt_url": mosquitto.url,
        "mqtt_port": mosquitto.port,
        "mqtt_sync_seconds": 1,
        "auth_cache_seconds": 60,
        "rate_limit_per_address": 0,
        "rate_limit_per_app": 0,
    }
    with (
        serving(base / "a", url, **common) as first,
        serving(base / "b", url, role="api,scheduler", **common) as second,
    ):
        yield first, second


@pytest.fixture(scope="module")
def app(pair: tuple[RunningServer, RunningServer]) -> dict[str, str]:
    return pair[0].create_app("Coherence")


@pytest.fixture(scope="module")
def pet_house(
    pair: tuple[RunningServer, RunningServer], tmp_path_factory: pytest.TempPathFactory
) -> Product:
    return import_product(pair[0], tmp_path_factory.mktemp("products"), "pet_house.json")


async def test_a_sign_out_on_one_process_ends_the_token_on_the_other_at_once(
    pair: tuple[RunningServer, RunningServer], app: dict[str, str]
) -> None:
    first, second = pair
    user = sign_up(first, app["appid"])
    async with (
        httpx.AsyncClient(base_url=first.base_url) as a,
        httpx.AsyncClient(base_url=second.base_url) as b,
    ):
        assert (await b.get("/app/users", headers=user.headers())).status_code == 200  # cached
        async with app_socket(second, user) as socket:  # a WebSocket session on the other one
            assert (await a.delete("/app/logout", headers=user.headers())).status_code == 204

            async def refused() -> bool:
                reply = await b.get("/app/users", headers=user.headers())
                return reply.status_code != 200

            await eventually(refused, wait=PROMPTLY)
            assert_error(await b.get("/app/users", headers=user.headers()), 9004, 400)
            ended = await socket.until(lambda message: message["cmd"] == "s2c_invalid_msg")
            assert ended["data"]["error_code"] == 9004


async def test_a_password_change_on_one_process_ends_the_other_tokens_everywhere(
    pair: tuple[RunningServer, RunningServer], app: dict[str, str]
) -> None:
    first, second = pair
    user = sign_up(first, app["appid"])
    with first.client(app["appid"]) as http:
        login = http.get("/app/users", headers=user.headers()).json()["username"]
        signed_in = http.post("/app/login", json={"username": login, "password": "pw-123456"})
        assert signed_in.status_code == 200, signed_in.text
    elsewhere = User(user.appid, user.uid, signed_in.json()["token"])
    bystander = sign_up(first, app["appid"])
    async with (
        httpx.AsyncClient(base_url=first.base_url) as a,
        httpx.AsyncClient(base_url=second.base_url) as b,
    ):
        for held in (elsewhere, bystander, user):  # cached on b
            assert (await b.get("/app/users", headers=held.headers())).status_code == 200
        changed = await a.put(
            "/app/users",
            headers=user.headers(),
            json={"old_pwd": "pw-123456", "new_pwd": "pw-654321"},
        )
        assert changed.status_code == 200, changed.text

        async def refused() -> bool:
            reply = await b.get("/app/users", headers=elsewhere.headers())
            return reply.status_code != 200

        await eventually(refused, wait=PROMPTLY)
        # the token that changed it is kept, and another user's cached token is untouched
        assert (await b.get("/app/users", headers=user.headers())).status_code == 200
        assert (await b.get("/app/users", headers=bystander.headers())).status_code == 200


async def test_a_binding_made_on_one_process_reaches_a_websocket_on_the_other(
    pair: tuple[RunningServer, RunningServer], app: dict[str, str], pet_house: Product
) -> None:
    first, second = pair
    user = sign_up(first, app["appid"])
    did, _ = register(first, pet_house)
    async with (
        httpx.AsyncClient(base_url=first.base_url) as a,
        app_socket(second, user) as socket,
    ):
        await bind(a, user, did, PASSCODE)
        changed = await socket.until(lambda message: message["cmd"] == "s2c_binding_changed")
        assert changed["data"] == {"did": did, "bind": True}


async def test_a_device_disabled_on_one_process_is_refused_by_the_other_at_once(
    pair: tuple[RunningServer, RunningServer], app: dict[str, str], pet_house: Product
) -> None:
    first, second = pair
    user = sign_up(first, app["appid"])
    did, _ = register(first, pet_house)
    async with (
        httpx.AsyncClient(base_url=first.base_url) as a,
        httpx.AsyncClient(base_url=second.base_url) as b,
    ):
        await bind(a, user, did, PASSCODE)
        async with MqttDevice.on_server(first, did) as device:
            await until_online(b, user, did)
            sent = await b.post(f"/app/control/{did}", headers=user.headers(), json={"raw": [1]})
            assert sent.status_code == 200, sent.text  # the binding check is now cached on b
            await device.next_message()
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            changed = await a.put(
                f"/admin/v1/devices/{did}", headers=admin, json={"is_disabled": True}
            )
            assert changed.status_code == 200, changed.text

            async def refused() -> bool:
                reply = await b.post(
                    f"/app/control/{did}", headers=user.headers(), json={"raw": [2]}
                )
                return reply.status_code != 200

            await eventually(refused, wait=PROMPTLY)
            assert_error(
                await b.post(f"/app/control/{did}", headers=user.headers(), json={"raw": [3]}),
                9023,
                400,
            )
