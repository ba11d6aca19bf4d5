"""Tencent device Actions of ``tokenapi`` and cross-dialect control against one real
``iotcloud serve``, with data-template devices played by `ThingDevice` (paho over MQTT) and a
Gizwits device by the simulator.

Covered: ``AppControlDeviceData`` (exactly the sent properties reach the device, refusals send
nothing), ``AppGetDeviceData``, ``AppGetDeviceStatuses``, ``AppListEventHistory``,
``AppSigBindDeviceInFamily``, ``AppCallDeviceAction``, a Gizwits app controlling and reading a
data-template device (``/app/control``, ``/app/devdata/{did}/latest``), a Tencent app controlling
and reading a Gizwits device, and ``AppCreateTimer`` timers firing on data-template devices at
their minute (one answered with code 0, one with a ``control_reply`` without ``method``, one
refused by its device). The timers are created when
the module starts and checked by its last test, so the wait for their minute overlaps the others.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from iotcloud.domain.thing_auth import sign
from iotcloud.simulator import VirtualDevice
from iotcloud.storage.database import Database
from iotcloud.storage.models import DeviceRow, ScheduleRow, ScheduleRunRow
from tests.accounts import User, bind, sign_up
from tests.devices import Online, Product, eventually, import_product
from tests.server import RunningServer, make_server
from tests.thing_devices import (
    ThingDevice,
    ThingIdentity,
    add_thing_device,
    add_thing_product,
    server_database_url,
)

ENDPOINT = "/api/exploreropen/tokenapi"
INVALID = "InvalidParameterValue"
MISSING = "ErrorRequiredParamNotFound"
NOT_BOUND = "UnauthorizedOperation.DeviceNotBound"
OFFLINE = "ResourceUnavailable.DeviceOffline"
MISMATCH = "InvalidParameterValue.ProductProtocolMismatch"
SETTINGS = {
    "rate_limit_per_address": 0,
    "rate_limit_per_app": 0,
    "scheduler_retry_interval_seconds": 1,
    "scheduler_ack_timeout_seconds": 2,
    "scheduler_lease_seconds": 4,
}
SETUP_MARGIN = 8.0  # seconds from creating the timers to their minute, at least


@dataclass
class World:
    server: RunningServer
    http: httpx.AsyncClient
    database_url: str
    appid: str
    user: User
    stranger: User
    light: str
    """ProductId of the data-template product (the light template)."""
    pet_house: Product
    devices: list[ThingDevice] = field(default_factory=list)

    async def call(self, action: str, user: User | None = None, /, **params: Any) -> dict[str, Any]:
        """POST ``action`` to tokenapi as ``user`` (the world's user by default): the
        ``Response`` object of the HTTP 200 answer, whose RequestId is echoed."""
        request_id = "req-" + uuid.uuid4().hex[:8]
        body = {
            "Action": action,
            "RequestId": request_id,
            "AccessToken": (user or self.user).token,
            **params,
        }
        reply = await self.http.post(ENDPOINT, json=body)
        assert reply.status_code == 200, reply.text
        response: dict[str, Any] = reply.json()["Response"]
        assert response["RequestId"] == request_id
        return response

    async def ok(self, action: str, user: User | None = None, /, **params: Any) -> dict[str, Any]:
        response = await self.call(action, user, **params)
        assert "Error" not in response, response
        return response

    async def thing(self, *, bound: bool = True) -> ThingIdentity:
        identity = await add_thing_device(self.database_url, self.light)
        if bound:
            await bind(self.server, self.user, identity.did)
        return identity

    async def online(self, identity: ThingIdentity, **options: Any) -> ThingDevice:
        device = ThingDevice.on_server(self.server, identity, **options)
        await device.__aenter__()
        self.devices.append(device)
        await until_online(self, identity)
        return device


def assert_error(response: dict[str, Any], code: str, *named: str) -> None:
    """``response`` is a Tencent error ``code`` whose message names each of ``named``."""
    assert set(response) == {"Error", "RequestId"}, response
    assert response["Error"]["Code"] == code, response
    for text in named:
        assert text in response["Error"]["Message"], response


def names(identity: ThingIdentity) -> dict[str, str]:
    return {"ProductId": identity.product_id, "DeviceName": identity.name}


async def until_online(world: World, identity: ThingIdentity) -> None:
    async def online() -> bool:
        response = await world.ok(
            "AppGetDeviceStatuses", DeviceIds=[f"{identity.product_id}/{identity.name}"]
        )
        return bool(response["DeviceStatuses"][0]["Online"])

    await eventually(online)


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("tencent-devices")
    server = make_server(root, None, **SETTINGS)
    await asyncio.to_thread(server.start)
    http = httpx.AsyncClient(base_url=server.base_url, timeout=30)
    world: World | None = None
    try:
        app = await asyncio.to_thread(server.create_app, "Tencent devices")
        user = await asyncio.to_thread(sign_up, server, app["appid"])
        stranger = await asyncio.to_thread(sign_up, server, app["appid"])
        database_url = server_database_url(server)
        light = await add_thing_product(database_url)
        pet_house = await asyncio.to_thread(import_product, server, root, "pet_house.json")
        world = World(server, http, database_url, app["appid"], user, stranger, light, pet_house)
        yield world
    finally:
        for device in world.devices if world else []:
            await device.__aexit__(None, None, None)
        await http.aclose()
        server.stop()


@dataclass
class Timers:
    """Three timers due at ``due``: ``ok`` on a device that accepts its control, ``bare`` on
    one that accepts it with a ``control_reply`` without ``method`` (as some SDKs send it),
    ``refused`` on one that answers code 1."""

    due: datetime
    ids: dict[str, str]
    devices: dict[str, ThingDevice]


@pytest.fixture(scope="module")
async def timers(world: World) -> Timers:
    devices = {
        "ok": await world.online(await world.thing()),
        "bare": await world.online(await world.thing(), reply_method=False),
        "refused": await world.online(await world.thing(), control_code=1),
    }
    start = datetime.now(UTC) + timedelta(seconds=SETUP_MARGIN)
    due = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    ids = {}
    for key, device in devices.items():
        created = await world.ok(
            "AppCreateTimer",
            **names(device.identity),
            TimerName=f"lights {key}",
            Days="1111111",
            TimePoint=due.strftime("%H:%M"),
            Repeat=0,
            Data='{"power_switch": 1, "color": 2}',
            TimeZone="UTC",
        )
        ids[key] = created["Data"]["TimerId"]
    assert datetime.now(UTC) < due - timedelta(seconds=3), "set-up took too long"
    return Timers(due, ids, devices)


# -- AppControlDeviceData ----------------------------------------------------------------------


async def test_control_sends_exactly_the_properties_of_data(world: World, timers: Timers) -> None:
    identity = await world.thing()
    device = await world.online(identity)
    assert (await device.report({"brightness": 10, "name": "hall"}))["code"] == 0
    response = await world.call(
        "AppControlDeviceData", **names(identity), Data='{"power_switch": 1, "color": 2}'
    )
    assert set(response) == {"Data", "RequestId"}
    assert response["Data"] == ""
    _, control = await device.next_message()
    assert control["method"] == "control"
    assert control["params"] == {"power_switch": 1, "color": 2}
    # the device's control_reply is taken (no reply is left waiting, the device stays online)
    await until_online(world, identity)


async def test_control_refusals_send_nothing(world: World) -> None:
    identity = await world.thing()
    device = await world.online(identity)
    target = names(identity)
    cases: list[tuple[dict[str, Any], str, tuple[str, ...]]] = [
        ({"Data": "{power_switch: 1"}, "InvalidParameterValue.InvalidJSON", ("Data",)),
        ({"Data": '{"nope": 1}'}, INVALID, ("Data", "nope")),
        ({"Data": '{"temperature": 20.5}'}, INVALID, ("temperature", "read-only")),
        ({"Data": '{"brightness": 101}'}, INVALID, ("brightness",)),
        ({"Data": '{"color": 7}'}, INVALID, ("color",)),
        ({"Data": '{"power_switch": 1, "name": 5}'}, INVALID, ("name",)),
        ({"Data": "[1]"}, INVALID, ("Data",)),
        ({"Data": "{}"}, INVALID, ("Data",)),
        ({"Data": {"power_switch": 1}}, INVALID, ("Data",)),
        ({}, MISSING, ("Data",)),
    ]
    for params, code, named in cases:
        assert_error(await world.call("AppControlDeviceData", **target, **params), code, *named)
    missing = {"ProductId": identity.product_id}
    assert_error(
        await world.call("AppControlDeviceData", **missing, Data='{"power_switch": 1}'),
        MISSING,
        "DeviceName",
    )
    assert_error(
        await world.call(
            "AppControlDeviceData", world.stranger, **target, Data='{"power_switch": 1}'
        ),
        NOT_BOUND,
        "DeviceName",
    )
    await asyncio.sleep(0.3)
    assert device.controls == []


async def test_control_of_an_offline_or_unknown_device_is_refused(world: World) -> None:
    offline = await world.thing()
    assert_error(
        await world.call("AppControlDeviceData", **names(offline), Data='{"power_switch": 0}'),
        OFFLINE,
    )
    unknown = {"ProductId": world.light, "DeviceName": "no_such_light"}
    assert_error(
        await world.call("AppControlDeviceData", **unknown, Data='{"power_switch": 0}'),
        "ResourceNotFound.DeviceNotExist",
        "DeviceName",
    )
    assert_error(
        await world.call(
            "AppControlDeviceData", ProductId="NOPRODUCT1", DeviceName="x", Data='{"a": 1}'
        ),
        "ResourceNotFound.ProductNotExist",
        "ProductId",
    )


# -- AppGetDeviceData, AppGetDeviceStatuses -----------------------------------------------------


async def test_device_data_is_a_json_string_of_values_and_report_times(world: World) -> None:
    identity = await world.thing()
    device = await world.online(identity)
    empty = await world.ok("AppGetDeviceData", **names(identity))
    assert empty["Data"] == "{}"
    before = int(time.time() * 1000)
    assert (await device.report({"power_switch": 1, "brightness": 42}))["code"] == 0

    async def reported() -> dict[str, Any] | None:
        response = await world.ok("AppGetDeviceData", **names(identity))
        assert isinstance(response["Data"], str)
        data: dict[str, Any] = json.loads(response["Data"])
        return data or None

    data = await eventually(reported)
    after = int(time.time() * 1000)
    assert set(data) == {"power_switch", "brightness"}
    assert data["power_switch"]["Value"] == 1
    assert data["brightness"]["Value"] == 42
    for entry in data.values():
        assert before - 1000 <= entry["LastUpdate"] <= after + 1000
    assert_error(await world.call("AppGetDeviceData", world.stranger, **names(identity)), NOT_BOUND)
    assert_error(await world.call("AppGetDeviceData", ProductId=world.light), MISSING, "DeviceName")


async def test_device_statuses_say_online_with_1(world: World) -> None:
    online = await world.thing()
    await world.online(online)
    offline = await world.thing()
    ids = [f"{online.product_id}/{online.name}", f"{offline.product_id}/{offline.name}"]
    response = await world.ok("AppGetDeviceStatuses", DeviceIds=ids)
    assert response["DeviceStatuses"] == [
        {
            "DeviceId": ids[0],
            "ProductId": online.product_id,
            "DeviceName": online.name,
            "Online": 1,
        },
        {
            "DeviceId": ids[1],
            "ProductId": offline.product_id,
            "DeviceName": offline.name,
            "Online": 0,
        },
    ]
    stranger = await world.thing(bound=False)
    not_bound = [ids[0], f"{stranger.product_id}/{stranger.name}"]
    assert_error(
        await world.call("AppGetDeviceStatuses", DeviceIds=not_bound), NOT_BOUND, "DeviceIds[1]"
    )
    for bad in ([], "x/y", ["no-slash"], [5], ["a/b/c"], ["x/y"] * 101):
        assert_error(await world.call("AppGetDeviceStatuses", DeviceIds=bad), INVALID, "DeviceIds")
    assert_error(await world.call("AppGetDeviceStatuses"), MISSING, "DeviceIds")
    # each item is checked as ProductId + DeviceName are, before anything is looked up
    for bad, named in (("nope/x", "ProductId"), (f"{online.product_id}/bad name", "DeviceName")):
        response = await world.call("AppGetDeviceStatuses", DeviceIds=[ids[0], bad])
        assert_error(response, INVALID, "DeviceIds[1]", named)
    unknown = await world.call("AppGetDeviceStatuses", DeviceIds=[f"{online.product_id}/nobody"])
    assert_error(unknown, "ResourceNotFound.DeviceNotExist", "DeviceName", "nobody")


# -- AppListEventHistory -----------------------------------------------------------------------


async def test_event_history_lists_posted_events_newest_first(world: World) -> None:
    identity = await world.thing()
    device = await world.online(identity)
    reply = await device.post_event("status_report", {"status": 0, "message": "fine"}, "info")
    assert reply["code"] == 0
    await asyncio.sleep(0.01)
    reply = await device.post_event("low_voltage", {"voltage": 3.0}, "alert")
    assert reply["code"] == 0

    async def listed() -> dict[str, Any] | None:
        response = await world.ok("AppListEventHistory", **names(identity))
        return response if response["Total"] == 2 else None

    response = await eventually(listed)
    assert response["Listover"] is True
    first, second = response["EventHistory"]
    assert (first["EventId"], first["Type"]) == ("low_voltage", "alert")
    assert json.loads(first["Data"]) == {"voltage": 3.0}
    assert (second["EventId"], second["Type"]) == ("status_report", "info")
    assert json.loads(second["Data"]) == {"status": 0, "message": "fine"}
    assert first["ProductId"] == identity.product_id
    assert first["DeviceName"] == identity.name
    assert abs(first["TimeStamp"] - time.time() * 1000) < 60_000
    assert first["TimeStamp"] >= second["TimeStamp"]

    alerts = await world.ok("AppListEventHistory", **names(identity), Type="alert")
    assert [e["EventId"] for e in alerts["EventHistory"]] == ["low_voltage"]
    by_id = await world.ok("AppListEventHistory", **names(identity), EventId="status_report")
    assert [e["EventId"] for e in by_id["EventHistory"]] == ["status_report"]
    page = await world.ok("AppListEventHistory", **names(identity), Size=1)
    assert (page["Total"], page["Listover"], len(page["EventHistory"])) == (2, False, 1)
    rest = await world.ok("AppListEventHistory", **names(identity), Size=1, Context=page["Context"])
    assert rest["Listover"] is True
    assert [e["EventId"] for e in rest["EventHistory"]] == ["status_report"]
    past = int(time.time()) - 7200
    old = await world.ok("AppListEventHistory", **names(identity), StartTime=past, EndTime=past)
    assert (old["Total"], old["EventHistory"]) == (0, [])

    for params, named in (
        ({"Type": "boring"}, "Type"),
        ({"Size": 0}, "Size"),
        ({"Context": "later"}, "Context"),
        ({"StartTime": past + 10, "EndTime": past}, "StartTime"),
    ):
        response = await world.call("AppListEventHistory", **names(identity), **params)
        assert_error(response, INVALID, named)
    assert_error(
        await world.call("AppListEventHistory", world.stranger, **names(identity)), NOT_BOUND
    )


# -- AppSigBindDeviceInFamily ------------------------------------------------------------------


def signed(
    identity: ThingIdentity, *, at: int | None = None, method: Any = "hmacsha1"
) -> dict[str, Any]:
    """The parameters of an ``AppSigBindDeviceInFamily`` the device signed (at ``at``)."""
    timestamp = at if at is not None else int(time.time())
    message = (
        f"DeviceName={identity.name}&DeviceTimestamp={timestamp}"
        f"&ProductId={identity.product_id}&ConnId=ab1Cd"
    )
    return {
        **names(identity),
        "DeviceTimestamp": timestamp,
        "ConnId": "ab1Cd",
        "Signature": sign(identity.psk, message, method),
        "SignMethod": method,
        "BindType": "wifi_sign",
    }


async def test_a_device_signed_binding_binds_the_caller(world: World) -> None:
    user = await asyncio.to_thread(sign_up, world.server, world.appid)
    guest = await asyncio.to_thread(sign_up, world.server, world.appid)
    identity = await world.thing(bound=False)
    family = (await world.ok("AppGetFamilyList", user))["FamilyList"][0]["FamilyId"]
    assert_error(await world.call("AppGetDeviceData", user, **names(identity)), NOT_BOUND)

    response = await world.ok("AppSigBindDeviceInFamily", user, FamilyId=family, **signed(identity))
    info = response["AppDeviceInfo"]
    assert info["DeviceId"] == f"{identity.product_id}/{identity.name}"
    assert (info["ProductId"], info["DeviceName"], info["FamilyId"]) == (
        identity.product_id,
        identity.name,
        family,
    )
    assert info["UserID"] == user.uid
    await world.ok("AppGetDeviceData", user, **names(identity))
    listed = await world.ok("AppGetFamilyDeviceList", user, FamilyId=family)
    assert [d["DeviceId"] for d in listed["DeviceList"]] == [info["DeviceId"]]
    # binding again changes nothing; a second user of the app binds as a guest (SHA-256 signed)
    await world.ok("AppSigBindDeviceInFamily", user, FamilyId=family, **signed(identity))
    guest_family = (await world.ok("AppGetFamilyList", guest))["FamilyList"][0]["FamilyId"]
    await world.ok(
        "AppSigBindDeviceInFamily",
        guest,
        FamilyId=guest_family,
        **signed(identity, method="hmacsha256"),
    )
    reply = await world.http.get(f"/app/{identity.did}/bindings", headers=user.headers())
    assert reply.status_code == 200, reply.text
    roles = {entry["uid"]: entry["role"] for entry in reply.json()}
    assert roles == {user.uid: "owner", guest.uid: "guest"}


async def test_a_device_signed_binding_refuses_bad_requests(world: World) -> None:
    user = await asyncio.to_thread(sign_up, world.server, world.appid)
    family = (await world.ok("AppGetFamilyList", user))["FamilyList"][0]["FamilyId"]
    identity = await world.thing(bound=False)
    other = await world.thing(bound=False)
    good = signed(identity)
    cases: list[tuple[dict[str, Any], str, tuple[str, ...]]] = [
        (
            {"Signature": signed(other)["Signature"]},
            "InvalidParameterValue.DeviceSignatureInvalid",
            ("Signature",),
        ),
        (
            {**signed(identity, at=int(time.time()) - 400)},
            "InvalidParameterValue.DeviceTimestampExpired",
            ("DeviceTimestamp",),
        ),
        ({"SignMethod": "md5"}, INVALID, ("SignMethod",)),
        ({"BindType": "magic"}, INVALID, ("BindType",)),
        ({"DeviceTimestamp": "now"}, INVALID, ("DeviceTimestamp",)),
        ({"ConnId": None}, MISSING, ("ConnId",)),
        ({"Signature": None}, MISSING, ("Signature",)),
        ({"FamilyId": "f_someone_else"}, "ResourceNotFound.FamilyNotExist", ("FamilyId",)),
        ({"DeviceName": "no_such_light"}, "ResourceNotFound.DeviceNotExist", ("DeviceName",)),
        (
            {"ProductId": world.pet_house.product_key, "DeviceName": "02aabbccddee"},
            "ResourceNotFound.DeviceNotExist",
            ("DeviceName",),
        ),
    ]
    for changes, code, named in cases:
        params = {"FamilyId": family, **good, **changes}
        params = {k: v for k, v in params.items() if v is not None}
        response = await world.call("AppSigBindDeviceInFamily", user, **params)
        assert_error(response, code, *named)
    # a Gizwits device has no psk to sign with
    gizwits = VirtualDevice(
        world.pet_house.product_key, world.pet_house.definition, "02" + uuid.uuid4().hex[:10]
    )
    await gizwits.register(world.http)
    params = {**good, "ProductId": world.pet_house.product_key, "DeviceName": gizwits.mac}
    response = await world.call("AppSigBindDeviceInFamily", user, FamilyId=family, **params)
    assert_error(response, MISMATCH, "ProductId", "psk")
    assert (await world.ok("AppGetFamilyDeviceList", user, FamilyId=family))["Total"] == 0


# -- AppCallDeviceAction -----------------------------------------------------------------------


async def test_a_device_action_answers_the_device_output(world: World) -> None:
    identity = await world.thing()
    device = await world.online(identity, action_response={"result": 1})
    response = await world.ok(
        "AppCallDeviceAction",
        **names(identity),
        ActionId="blink",
        InputParams='{"times": 3, "color": 1}',
    )
    assert json.loads(response["OutputParams"]) == {"result": 1}
    assert (response["Status"], response["Code"]) == ("succ", 0)
    assert device.actions[-1]["actionId"] == "blink"
    assert device.actions[-1]["params"] == {"times": 3, "color": 1}
    cases: list[tuple[dict[str, Any], str, tuple[str, ...]]] = [
        ({"ActionId": "dance"}, INVALID, ("ActionId",)),
        ({"InputParams": '{"times": 11}'}, INVALID, ("InputParams", "times")),
        ({"InputParams": "{times"}, "InvalidParameterValue.InvalidJSON", ("InputParams",)),
        ({"ActionId": None}, MISSING, ("ActionId",)),
    ]
    for changes, code, named in cases:
        params = {"ActionId": "blink", "InputParams": '{"times": 1}', **changes}
        params = {k: v for k, v in params.items() if v is not None}
        response = await world.call("AppCallDeviceAction", **names(identity), **params)
        assert_error(response, code, *named)
    assert len(device.actions) == 1
    args = {"ActionId": "blink", "InputParams": '{"times": 1}'}
    assert_error(
        await world.call("AppCallDeviceAction", world.stranger, **names(identity), **args),
        NOT_BOUND,
    )
    offline = await world.thing()
    assert_error(await world.call("AppCallDeviceAction", **names(offline), **args), OFFLINE)


# -- cross-dialect -----------------------------------------------------------------------------


async def passcode_of(world: World, did: str) -> str:
    async with Database(world.database_url) as db, db.session() as session:
        passcode = await session.scalar(select(DeviceRow.passcode).where(DeviceRow.did == did))
    assert passcode is not None
    return passcode


async def test_a_gizwits_app_controls_and_reads_a_data_template_device(world: World) -> None:
    user = await asyncio.to_thread(sign_up, world.server, world.appid)
    identity = await world.thing(bound=False)
    did = identity.did
    item = {"did": did, "passcode": await passcode_of(world, did)}
    reply = await world.http.post("/app/bindings", headers=user.headers(), json={"devices": [item]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["success"] == [did]
    await bind(world.server, world.user, did)  # the world's user watches it come online
    device = await world.online(identity)

    reply = await world.http.post(
        f"/app/control/{did}",
        headers=user.headers(),
        json={"attrs": {"color": "Blue", "power_switch": True}},
    )
    assert reply.status_code == 200, reply.text
    _, control = await device.next_message()
    assert control["params"] == {"color": 2, "power_switch": 1}

    for body, code, named in (
        ({"attrs": {"color": "Purple"}}, 9025, "color"),
        ({"attrs": {"temperature": 3}}, 9025, "temperature"),
        ({"raw": [1, 2]}, 9015, "raw"),
    ):
        reply = await world.http.post(f"/app/control/{did}", headers=user.headers(), json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error_code"] == code
        assert named in reply.json()["error_message"] + reply.json().get("detail_message", "")
    assert len(device.controls) == 1

    assert (await device.report({"color": 1, "power_switch": 0, "brightness": 7}))["code"] == 0

    async def latest() -> dict[str, Any] | None:
        got = await world.http.get(f"/app/devdata/{did}/latest", headers=user.headers())
        assert got.status_code == 200, got.text
        attrs: dict[str, Any] = got.json()["attr"]
        return attrs if attrs.get("brightness") == 7 else None

    gizwits_form = {"color": "Green", "power_switch": False, "brightness": 7}
    assert await eventually(latest) == gizwits_form

    # the history shows the values as /latest does; aggregates stay numbers
    history = await world.http.get(f"/app/devdata/{did}", headers=user.headers())
    assert history.status_code == 200, history.text
    assert [entry["attrs"] for entry in history.json()["objects"]] == [gizwits_form]
    one = await world.http.get(
        f"/app/devdata/{did}", headers=user.headers(), params={"attr": "color"}
    )
    assert [entry["attrs"] for entry in one.json()["objects"]] == [{"color": "Green"}]
    now_ms = int(time.time() * 1000)
    aggregated = await world.http.get(
        f"/app/devdata/{did}/agg_data",
        headers=user.headers(),
        params={
            "start_ts": now_ms - 3_600_000,
            "end_ts": now_ms + 60_000,
            "attrs": "brightness",
            "aggregator": "max",
            "unit": "hours",
        },
    )
    assert aggregated.status_code == 200, aggregated.text
    assert [bucket["attrs"] for bucket in aggregated.json()["data"]] == [{"brightness": 7}]


async def test_a_tencent_app_controls_and_reads_a_gizwits_device(world: World) -> None:
    product = world.pet_house
    gizwits = VirtualDevice(
        product.product_key, product.definition, "02" + uuid.uuid4().hex[:10], passcode="ABCDEFGHIJ"
    )
    online = Online(world.server, gizwits)
    await online.__aenter__()
    try:
        assert gizwits.did is not None
        await bind(world.server, world.user, gizwits.did)
        target = {"ProductId": product.product_key.upper(), "DeviceName": gizwits.mac.upper()}
        await world.ok("AppControlDeviceData", **target, Data='{"LED_OnOff": 1, "LED_Color": 2}')

        async def applied() -> bool:
            return bool(gizwits.status["LED_Color"] == "Purple")

        await eventually(applied)
        assert gizwits.status["LED_OnOff"] is True
        for bad, named in (('{"LED_Color": 9}', "LED_Color"), ('{"Infrared": 1}', "Infrared")):
            response = await world.call("AppControlDeviceData", **target, Data=bad)
            assert_error(response, INVALID, "Data", named)
        # a Gizwits device has no template actions
        response = await world.call("AppCallDeviceAction", **target, ActionId="blink")
        assert_error(response, MISMATCH, "ProductId", product.product_key, "no actions")

        async def read() -> dict[str, Any] | None:
            response = await world.ok("AppGetDeviceData", **target)
            data: dict[str, Any] = json.loads(response["Data"])
            return data if data.get("LED_Color", {}).get("Value") == 2 else None

        data = await eventually(read)
        assert data["LED_OnOff"]["Value"] == 1
        assert isinstance(data["LED_OnOff"]["LastUpdate"], int)
        statuses = await world.ok(
            "AppGetDeviceStatuses", DeviceIds=[f"{product.product_key}/{gizwits.mac}"]
        )
        assert statuses["DeviceStatuses"][0]["Online"] == 1
        assert statuses["DeviceStatuses"][0]["DeviceName"] == gizwits.mac
    finally:
        await online.__aexit__(None, None, None)


# -- timers ------------------------------------------------------------------------------------


async def test_a_timer_checks_its_data_against_the_template(world: World) -> None:
    identity = await world.thing()
    timer = {"TimerName": "t", "Days": "1111111", "TimePoint": "06:00", "Repeat": 1}
    for data, named in (
        ('{"temperature": 1}', "temperature"),
        ('{"brightness": 500}', "brightness"),
    ):
        response = await world.call("AppCreateTimer", **names(identity), **timer, Data=data)
        assert_error(response, INVALID, "Data", named)
    listed = await world.ok("AppGetTimerList", **names(identity))
    assert listed["Total"] == 0
    await world.ok("AppCreateTimer", **names(identity), **timer, Data='{"brightness": 50}')
    listed = await world.ok("AppGetTimerList", **names(identity))
    assert listed["TimerList"][0]["DeviceName"] == identity.name


async def run_of(world: World, timer_id: str) -> ScheduleRunRow | None:
    async with Database(world.database_url) as db, db.session() as session:
        return await session.scalar(
            select(ScheduleRunRow)
            .join(ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id)
            .where(ScheduleRow.public_id == timer_id, ScheduleRunRow.status != "running")
        )


async def test_timers_fire_a_control_at_their_minute(world: World, timers: Timers) -> None:
    """Last in the module: the timers made at its start are due by now or soon."""
    await asyncio.sleep(max(0.0, (timers.due - datetime.now(UTC)).total_seconds()))
    async with asyncio.timeout(30):
        while True:
            runs = {key: await run_of(world, timer_id) for key, timer_id in timers.ids.items()}
            if all(runs.values()):
                break
            await asyncio.sleep(0.2)
    ok, bare, refused = runs["ok"], runs["bare"], runs["refused"]
    assert ok is not None
    assert bare is not None
    assert refused is not None
    assert ok.scheduled_at == bare.scheduled_at == timers.due
    assert ok.status == "succeed"
    assert bare.status == "succeed"  # a control_reply without method still counts
    assert refused.status == "failed"
    for key, device in timers.devices.items():
        assert [c["params"] for c in device.controls] == [{"power_switch": 1, "color": 2}], key
    listed = await world.ok("AppGetTimerList", **names(timers.devices["ok"].identity))
    assert listed["TimerList"][0]["Status"] == 0  # a Repeat 0 timer is off once it has fired
