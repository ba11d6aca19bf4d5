"""Device data for apps against a real ``iotcloud serve``: a virtual device reports over MQTT,
and bound users read it back over HTTP (``/app/devices``, history, aggregates, ``raw_data``).

Bindings are made through ``BindingService`` on the server's own database (the HTTP binding API
is not there yet): the test process opens the database URL the server runs on and resolves the
user from the token the app received, as the server does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from iotcloud.codecs import Frame, encode_frame
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.gateway.service import json_values
from iotcloud.simulator import VirtualDevice
from tests.accounts import APP_ID, USER_TOKEN, User, bind, sign_up
from tests.devices import Online, Product, eventually, import_product, mqtt_port, register
from tests.errors import assert_error
from tests.server import RunningServer

# Other test modules still import User, sign_up, bind, Product, import_product, register,
# mqtt_port, eventually, Online and assert_error from here: keep these names importable.


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client


# -- a device reports, its users read --------------------------------------------------------------


async def test_bound_users_read_the_device_item(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.AsyncClient
) -> None:
    device = VirtualDevice(
        pet_house.product_key, pet_house.definition, "02" + uuid.uuid4().hex[:10]
    )
    owner, guest = sign_up(server, app["appid"]), sign_up(server, app["appid"])
    async with Online(server, device):
        assert device.did is not None
        did = device.did
        await bind(server, owner, did, dev_alias="Pet house", remark="hall")
        await bind(server, guest, did)

        async def online_with_state() -> dict[str, Any] | None:
            reply = await http.get(f"/app/devices/{did}", headers=owner.headers())
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body if body["is_online"] and body["state_last_timestamp"] else None

        item = await eventually(online_with_state)
        latest = await http.get(f"/app/devdata/{did}/latest", headers={APP_ID: app["appid"]})
        assert item == {
            "product_key": pet_house.product_key,
            "product_name": "My WeChat Pet House SOC",
            "did": did,
            "mac": device.mac,
            "passcode": device.passcode,
            "is_online": True,
            "is_disabled": False,
            "host": "127.0.0.1",
            "port": mqtt_port(server),
            "port_s": mqtt_port(server),
            "ws_port": server.http_port,
            "wss_port": server.http_port,
            "type": "normal",
            "role": "owner",
            "dev_alias": "Pet house",
            "dev_label": [],
            "remark": "hall",
            "protoc": 3,
            "is_sandbox": False,
            "mcu_soft_version": "",
            "mcu_hard_version": "",
            "wifi_soft_version": "",
            "wifi_hard_version": "",
            "state_last_timestamp": latest.json()["updated_at"],
        }
        as_guest = await http.get(f"/app/devices/{did}", headers=guest.headers())
        assert (as_guest.json()["role"], as_guest.json()["dev_alias"]) == ("guest", "")

        mac = ":".join(device.mac[i : i + 2] for i in range(0, 12, 2)).upper()
        by_mac = await http.get(
            "/app/devices",
            params={"product_key": pet_house.product_key, "mac": mac},
            headers=owner.headers(),
        )
        assert by_mac.status_code == 200, by_mac.text
        assert by_mac.json() == {**item, "is_online": by_mac.json()["is_online"]}

    async def offline() -> dict[str, Any] | None:
        body: dict[str, Any] = (
            await http.get(f"/app/devices/{did}", headers=owner.headers())
        ).json()
        return body if body["is_online"] is False else None

    await eventually(offline)


async def test_history_aggregates_and_frames_follow_the_reports(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.AsyncClient
) -> None:
    device = VirtualDevice(
        pet_house.product_key, pet_house.definition, "02" + uuid.uuid4().hex[:10]
    )
    user = sign_up(server, app["appid"])
    reported = []
    async with Online(server, device):
        assert device.did is not None
        did = device.did
        await bind(server, user, did)
        reported.append(json_values(device.status))  # the report sent on connecting
        for temperature, humidity in ((10, 40), (20, 50), (35, 61)):
            device.status["Temperature"] = temperature
            device.status["Humidity"] = humidity
            await device.report()
            reported.append(json_values(device.status))

        async def all_stored() -> dict[str, Any] | None:
            reply = await http.get(
                f"/app/devdata/{did}", params={"sort": "asc", "limit": 100}, headers=user.headers()
            )
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body if body["meta"]["total"] == len(reported) else None

        history = await eventually(all_stored)
        assert history["meta"] == {
            "total": 4,
            "limit": 100,
            "skip": 0,
            "previous": None,
            "next": None,
        }
        assert [entry["attrs"] for entry in history["objects"]] == reported
        stamps = [entry["ts"] for entry in history["objects"]]
        assert stamps == sorted(stamps)
        assert abs(stamps[-1] - time.time()) < 60

        # one attr, newest first, a page at a time
        page = await http.get(
            f"/app/devdata/{did}",
            params={"attr": "Temperature", "limit": 2, "skip": 1},
            headers=user.headers(),
        )
        assert page.json()["objects"] == [
            {"ts": stamps[2], "attrs": {"Temperature": 20}},
            {"ts": stamps[1], "attrs": {"Temperature": 10}},
        ]
        meta = page.json()["meta"]
        assert (meta["total"], meta["previous"], meta["next"]) == (
            4,
            f"/app/devdata/{did}?attr=Temperature&limit=2&skip=0",
            f"/app/devdata/{did}?attr=Temperature&limit=2&skip=3",
        )

        # hourly sums match the history, bucketed by hand
        expected: dict[datetime, dict[str, int]] = {}
        for stamp, values in zip(stamps, reported, strict=True):
            hour = datetime.fromtimestamp(stamp, UTC).replace(minute=0, second=0)
            bucket = expected.setdefault(hour, {"Temperature": 0, "Humidity": 0})
            for name in bucket:
                bucket[name] += values[name]
        window = {"start_ts": (stamps[0] - 10) * 1000, "end_ts": (stamps[-1] + 10) * 1000}
        sums = await http.get(
            f"/app/devdata/{did}/agg_data",
            params={
                **window,
                "attrs": "Temperature,Humidity",
                "aggregator": "sum",
                "unit": "hours",
            },
            headers=user.headers(),
        )
        assert sums.status_code == 200, sums.text
        assert sums.json()["query"] == {
            "aggregator": "sum",
            **window,
            "attrs": "Temperature,Humidity",
            "unit": "HOURS",
        }
        assert sums.json()["data"] == [
            {
                "datatime": hour.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "did": did,
                "uid": user.uid,
                "product_key": pet_house.product_key,
                "attrs": values,
            }
            for hour, values in sorted(expected.items())
        ]
        # PUT with the fields in a JSON body, as the Gizwits docs describe it
        peak = await http.put(
            f"/app/devdata/{did}/agg_data",
            json={**window, "attrs": ["Temperature"], "aggregator": "MAX", "unit": "days"},
            headers=user.headers(),
        )
        assert peak.status_code == 200, peak.text
        days = {
            datetime.fromtimestamp(s, UTC).date() for s in stamps
        }  # normally one, two around midnight
        assert len(peak.json()["data"]) == len(days)
        assert max(b["attrs"]["Temperature"] for b in peak.json()["data"]) == max(
            v["Temperature"] for v in reported
        )

        # the frame log holds the frames the device sent and its connection
        now = int(time.time()) + 1
        frames = await http.get(
            f"/app/devices/{did}/raw_data",
            params={"type": "cmd", "start_time": now - 3600, "end_time": now},
            headers=user.headers(),
        )
        assert frames.status_code == 200, frames.text
        body = frames.json()
        assert {k: v for k, v in body["meta"].items() if k not in ("previous", "next")} == {
            "did": did,
            "type": "cmd",
            "start_time": now - 3600,
            "end_time": now,
            "sort": "desc",
            "limit": 20,
            "skip": 0,
            "total": 4,
        }
        newest = encode_frame(Frame(CMD_REPORT, device.codec.encode_status(device.status)))
        assert body["objects"][0]["payload_bin"] == newest.hex()
        assert [o["type"] for o in body["objects"]] == ["dev2app"] * 4
        assert {o["ip"] for o in body["objects"]} == {"127.0.0.1"}
        times = [o["timestamp"] for o in body["objects"]]
        assert times == sorted(times, reverse=True)
        assert abs(times[0] - stamps[-1]) < 1

        presence = await http.get(
            f"/app/devices/{did}/raw_data",
            params={"type": "online", "start_time": now - 3600, "end_time": now, "sort": "asc"},
            headers=user.headers(),
        )
        assert [(o["type"], o["ip"], o["payload_bin"]) for o in presence.json()["objects"]] == [
            ("dev_online", "127.0.0.1", "")
        ]


# -- refusals -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """Two users of one app with a device each, a user of another app, a registered device."""

    appid: str
    owner: User
    neighbour: User
    foreigner: User
    product: Product
    did: str
    mac: str


@pytest.fixture(scope="module")
async def scene(server: RunningServer, app: dict[str, str], pet_house: Product) -> Scene:
    other_app = server.create_app("Elsewhere")
    owner, neighbour = sign_up(server, app["appid"]), sign_up(server, app["appid"])
    foreigner = sign_up(server, other_app["appid"])
    did, mac = register(server, pet_house)
    neighbours_did, _ = register(server, pet_house)
    await bind(server, owner, did)
    await bind(server, neighbour, neighbours_did)
    await bind(server, foreigner, did)  # bound, but in another app
    return Scene(app["appid"], owner, neighbour, foreigner, pet_house, did, mac)


def now_s() -> int:
    return int(time.time())


def endpoints(scene: Scene, did: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every new endpoint with valid parameters, for ``did``."""
    now = now_s()
    agg = {
        "start_ts": (now - 3600) * 1000,
        "end_ts": now * 1000,
        "attrs": "Temperature",
        "aggregator": "avg",
        "unit": "hours",
    }
    return [
        ("GET", f"/app/devices/{did}", {}),
        ("GET", "/app/devices", {"product_key": scene.product.product_key, "mac": scene.mac}),
        ("GET", f"/app/devdata/{did}", {}),
        ("GET", f"/app/devdata/{did}/agg_data", agg),
        ("PUT", f"/app/devdata/{did}/agg_data", agg),
        (
            "GET",
            f"/app/devices/{did}/raw_data",
            {"type": "cmd", "start_time": now - 60, "end_time": now},
        ),
    ]


ENDPOINT_IDS = ["device", "device-by-mac", "history", "agg-get", "agg-put", "raw-data"]


@pytest.mark.parametrize("index", range(6), ids=ENDPOINT_IDS)
async def test_every_endpoint_needs_the_app_a_token_and_a_binding(
    scene: Scene, http: httpx.AsyncClient, index: int
) -> None:
    method, path, params = endpoints(scene, scene.did)[index]

    async def call(headers: dict[str, str]) -> httpx.Response:
        return await http.request(method, path, params=params, headers=headers)

    ok = await call(scene.owner.headers())
    assert ok.status_code == 200, ok.text
    assert_error(await call({USER_TOKEN: scene.owner.token}), 9003, 400)
    assert_error(await call({APP_ID: "nosuchapp0"}), 9003, 400)
    assert_error(await call({APP_ID: scene.appid}), 9004, 400, "missing")
    assert_error(await call({APP_ID: scene.appid, USER_TOKEN: "0" * 32}), 9004, 400)
    # a token of another app's user, even one bound to the device there
    assert_error(await call({APP_ID: scene.appid, USER_TOKEN: scene.foreigner.token}), 9004, 400)
    # a user of this app with a device of their own, not this one
    assert_error(await call(scene.neighbour.headers()), 9017, 401)


@pytest.mark.parametrize("index", range(6), ids=ENDPOINT_IDS)
async def test_unknown_devices_answer_9014(
    scene: Scene, http: httpx.AsyncClient, index: int
) -> None:
    method, path, params = endpoints(scene, "Z" * 22)[index]
    if "mac" in params:
        params = {**params, "mac": "0242ac110099"}
    reply = await http.request(method, path, params=params, headers=scene.owner.headers())
    assert_error(reply, 9014, 404)


@dataclass(frozen=True)
class Ago:
    seconds: int


HOUR, DAY = 3600, 86400
BAD_QUERIES: list[tuple[str, str, dict[str, Any], str]] = [
    # (method, path under the device, parameters, detail)
    ("GET", "history", {"limit": "abc"}, "limit: must be an integer, not 'abc'"),
    ("GET", "history", {"limit": "1e3"}, "limit: must be an integer"),
    ("GET", "history", {"limit": "0"}, "limit: expected int >= 1"),
    ("GET", "history", {"limit": "1001"}, "limit: expected int <= 1000"),
    ("GET", "history", {"skip": "-1"}, "skip: expected int >= 0"),
    ("GET", "history", {"skip": "9" * 40}, "skip: must be an integer"),
    ("GET", "history", {"start_ts": "20", "end_ts": "10"}, "start_ts: must not be after end_ts"),
    ("GET", "history", {"start_ts": "1767225600000"}, "start_ts: expected int <= 253402300799"),
    ("GET", "history", {"attr": "Loudness"}, "attr: Loudness is not a data point"),
    ("GET", "history", {"sort": "up"}, "sort: must be one of asc, desc, not 'up'"),
    ("GET", "history", {"entity": "1"}, "entity: expected int <= 0"),
    ("GET", "history", {"colour": "red"}, "colour: unknown field"),
    ("GET", "history", {"limit": ["1", "2"]}, "limit: given more than once"),
    ("GET", "history", {"limit": ["", "5"]}, "limit: given more than once"),
    ("GET", "agg", {"attrs": None}, "attrs: is required"),
    ("GET", "agg", {"start_ts": None}, "start_ts: is required"),
    ("GET", "agg", {"start_ts": "x"}, "start_ts: must be an integer"),
    ("GET", "agg", {"start_ts": "-1"}, "start_ts: expected int >= 0"),
    ("GET", "agg", {"aggregator": "median"}, "aggregator: must be one of sum, avg, max, min"),
    ("GET", "agg", {"unit": "years"}, "unit: must be one of hours, days, weeks, months"),
    ("GET", "agg", {"attrs": "LED_OnOff"}, "attrs: LED_OnOff is not numeric (bool)"),
    ("GET", "agg", {"attrs": "LED_Color"}, "attrs: LED_Color is not numeric (enum)"),
    ("GET", "agg", {"attrs": "Temperature,,Humidity"}, "attrs: an empty name"),
    ("GET", "agg", {"attrs": "Loudness"}, "attrs: Loudness is not a data point"),
    ("GET", "agg", {"end_ts": "1000"}, "start_ts: must not be after end_ts"),
    ("PUT", "agg", {"unit": "fortnights"}, "unit: must be one of"),
    ("GET", "raw", {"type": "weird"}, "type: must be one of cmd, online"),
    ("GET", "raw", {"type": None}, "type: is required"),
    ("GET", "raw", {"start_time": None}, "start_time: is required"),
    ("GET", "raw", {"limit": "1001"}, "limit: expected int <= 1000"),
    ("GET", "raw", {"skip": "-5"}, "skip: expected int >= 0"),
    ("GET", "raw", {"skip": "4500", "limit": "600"}, "skip: skip + limit may not exceed 5000"),
    ("GET", "raw", {"sort": "random"}, "sort: must be one of asc, desc"),
    ("GET", "raw", {"start_time": Ago(49 * HOUR)}, "end_time: the window may span at most 48 h"),
    ("GET", "raw", {"end_time": "5"}, "start_time: must not be after end_time"),
    ("GET", "raw", {"end_time": Ago(-HOUR)}, "end_time: must not be in the future"),
    (
        "GET",
        "raw",
        {"start_time": Ago(8 * DAY), "end_time": Ago(8 * DAY - HOUR)},
        "start_time: must lie within the last 7 days",
    ),
    ("GET", "mac", {"mac": None}, "mac: is required"),
    ("GET", "mac", {"mac": "zz"}, "mac: must be 12 hex digits"),
    ("GET", "mac", {"did": "x"}, "did: unknown field"),
]


def bad_request(scene: Scene, where: str, change: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The path and parameters of a valid call to ``where``, with ``change`` applied: None
    drops a parameter, ``Ago(n)`` is the Unix time ``n`` seconds ago."""
    now = now_s()
    path, params = {
        "history": (f"/app/devdata/{scene.did}", {}),
        "agg": (
            f"/app/devdata/{scene.did}/agg_data",
            {
                "start_ts": (now - 3600) * 1000,
                "end_ts": now * 1000,
                "attrs": "Temperature",
                "aggregator": "sum",
                "unit": "hours",
            },
        ),
        "raw": (
            f"/app/devices/{scene.did}/raw_data",
            {"type": "online", "start_time": now - 3600, "end_time": now},
        ),
        "mac": ("/app/devices", {"product_key": scene.product.product_key, "mac": scene.mac}),
    }[where]
    params = dict(params)
    for name, value in change.items():
        if value is None:
            params.pop(name)
        elif isinstance(value, Ago):
            params[name] = now - value.seconds
        else:
            params[name] = value
    return path, params


@pytest.mark.parametrize(
    ("method", "where", "change", "detail"),
    BAD_QUERIES,
    ids=[f"{m}-{w}-{'-'.join(c)}-{i}" for i, (m, w, c, _) in enumerate(BAD_QUERIES)],
)
async def test_bad_parameters_answer_9015_naming_them(
    scene: Scene,
    http: httpx.AsyncClient,
    method: str,
    where: str,
    change: dict[str, Any],
    detail: str,
) -> None:
    path, params = bad_request(scene, where, change)
    reply = await http.request(method, path, params=params, headers=scene.owner.headers())
    assert_error(reply, 9015, 400, detail)


async def test_a_malformed_product_key_answers_9002(scene: Scene, http: httpx.AsyncClient) -> None:
    for key in ("nothex", "0" * 32):
        reply = await http.get(
            "/app/devices",
            params={"product_key": key, "mac": scene.mac},
            headers=scene.owner.headers(),
        )
        assert_error(reply, 9002, 400)


async def test_agg_data_put_bodies_are_checked_too(scene: Scene, http: httpx.AsyncClient) -> None:
    path, params = bad_request(scene, "agg", {})
    url = f"/app/devdata/{scene.did}/agg_data"
    headers = scene.owner.headers()
    ok = await http.put(url, json=params, headers=headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["data"] == []
    both = await http.put(url, params={"unit": "days"}, json=params, headers=headers)
    assert_error(both, 9015, 400, "unit: given in both the query string and the body")
    nested = await http.put(url, json={**params, "attrs": {"a": 1}}, headers=headers)
    assert_error(nested, 9015, 400, "attrs: must be a string or an integer")
    broken = await http.put(url, content=b"{nope", headers=headers)
    assert_error(broken, 9015, 400, "body: malformed JSON")
    assert path == url
