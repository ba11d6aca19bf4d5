"""Tencent cloud timers against a real ``iotcloud serve``: an app signs users up over the Gizwits
API, and the same tokens drive ``POST /api/exploreropen/tokenapi`` (``AppCreateTimer``,
``AppGetTimerList``, ``AppModifyTimer``, ``AppModifyTimerStatus``, ``AppDeleteTimer``) for
devices bound to them. Every refusal is checked to answer the Tencent envelope and to leave the
timer list as it was. Firing is covered with the scheduler's shared integration tests; here the
next due instant is read from the server's database. The refusals (checked before anything is
stored) run on the SQLite server only; the tests that store run on both backends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRow
from tests.accounts import User, bind, expire_token, sign_up
from tests.devices import Product, import_product, register
from tests.server import ADMIN_TOKEN, RunningServer
from tests.tencent import (
    ABSENT,
    BAD_TOKEN,
    INVALID,
    MISSING,
    TOKENAPI,
    assert_error,
    assert_ok,
    call_tokenapi,
    post_tokenapi,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NO_TIMER = "ResourceNotFound.TimerNotExist"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@dataclass
class Scene:
    """A user with a bound pet-house device, calling tokenapi."""

    http: httpx.Client
    user: User
    product: Product
    did: str
    mac: str

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        device = {"ProductId": self.product.product_key, "DeviceName": self.mac}
        return call_tokenapi(self.http, action, self.user.token, **{**device, **params})

    def create(self, **params: Any) -> str:
        response = assert_ok(self.call("AppCreateTimer", **{**timer_fields(), **params}))
        timer_id: str = response["Data"]["TimerId"]
        return timer_id

    def timers(self, **params: Any) -> list[dict[str, Any]]:
        response = assert_ok(self.call("AppGetTimerList", Limit=50, **params))
        assert response["Total"] == len(response["TimerList"])
        timers: list[dict[str, Any]] = response["TimerList"]
        return timers

    def timer(self, timer_id: str) -> dict[str, Any]:
        return next(timer for timer in self.timers() if timer["TimerId"] == timer_id)


def timer_fields(**changes: Any) -> dict[str, Any]:
    """The timer fields of a valid ``AppCreateTimer``, with ``changes``."""
    fields: dict[str, Any] = {
        "TimerName": "lights on",
        "Days": "0111110",
        "TimePoint": "06:30",
        "Repeat": 1,
        "Data": '{"LED_OnOff": true}',
    }
    fields.update(changes)
    return fields


async def new_scene(
    server: RunningServer, appid: str, product: Product, http: httpx.Client
) -> Scene:
    """A new user of ``appid`` with a new device of ``product`` bound."""
    user = sign_up(server, appid)
    did, mac = register(server, product)
    await bind(server, user, did)
    return Scene(http, user, product, did, mac)


@pytest.fixture
async def scene(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.Client
) -> Scene:
    return await new_scene(server, app["appid"], pet_house, http)


async def next_due(server: RunningServer, timer_id: str) -> datetime | None:
    """The stored next due instant of a timer (UTC)."""
    async with Database(server.database_url) as db, db.session() as session:
        found = await session.scalar(
            select(ScheduleRow.next_due_at).where(ScheduleRow.public_id == timer_id)
        )
    return found


def wait_for_next_second() -> None:
    """CreateTime and UpdateTime are Unix seconds: a change shows only in a later second."""
    time.sleep(1.02 - time.time() % 1)


# -- success paths ---------------------------------------------------------------------------------


def test_create_answers_the_timer_id_and_name_with_the_request_id(scene: Scene) -> None:
    response = scene.call("AppCreateTimer", RequestId="req_1", **timer_fields())
    assert response == {
        "Data": {"TimerId": response["Data"]["TimerId"], "TimerName": "lights on"},
        "RequestId": "req_1",
    }
    assert HEX32.fullmatch(response["Data"]["TimerId"])


def test_a_created_timer_is_listed_with_every_field(scene: Scene) -> None:
    before = int(time.time())
    timer_id = scene.create(TimePoint="9:30", Data='{"LED_OnOff": true, "LED_R": 12}')
    after = int(time.time())
    response = scene.call("AppGetTimerList")
    assert response["Total"] == 1
    (timer,) = response["TimerList"]
    created = timer.pop("CreateTime")
    updated = timer.pop("UpdateTime")
    assert before <= created <= after + 1
    assert updated == created
    assert timer == {
        "TimerId": timer_id,
        "TimerName": "lights on",
        "ProductId": scene.product.product_key,
        "DeviceName": scene.mac,
        "Days": "0111110",
        "TimePoint": "09:30",
        "Repeat": 1,
        "Data": '{"LED_OnOff": true, "LED_R": 12}',
        "Status": 1,
        "TimeZone": "UTC",
    }


def test_data_is_listed_exactly_as_sent(scene: Scene) -> None:
    data = '{"LED_R":7,  "LED_OnOff":false,"LED_Color":"Pink"}'
    timer_id = scene.create(Data=data)
    assert scene.timer(timer_id)["Data"] == data


def test_a_missing_request_id_is_made_up_and_echoed(scene: Scene) -> None:
    response = scene.call("AppCreateTimer", RequestId=ABSENT, **timer_fields())
    assert UUID.fullmatch(response["RequestId"])
    assert "Data" in response
    error = scene.call("AppGetTimerList", RequestId=ABSENT, Limit=0)
    assert UUID.fullmatch(error["RequestId"])
    assert error["RequestId"] != response["RequestId"]


@pytest.mark.backend("sqlite")
def test_a_request_id_that_is_no_string_is_refused(scene: Scene) -> None:
    response = post_tokenapi(scene.http, {"RequestId": 5, "Action": "AppGetTimerList"})
    assert_error(response, INVALID, "RequestId")
    assert UUID.fullmatch(response["RequestId"])


@pytest.mark.backend("sqlite")
def test_parameters_tencent_apps_add_are_ignored(scene: Scene) -> None:
    timer_id = scene.create(Platform="iOS", Agent="ios", lang="en", RegionId="1", UserID="x")
    assert [timer["TimerId"] for timer in scene.timers()] == [timer_id]


def test_device_name_in_upper_case_names_the_same_device(scene: Scene) -> None:
    timer_id = scene.create(DeviceName=scene.mac.upper())
    (timer,) = scene.timers()
    assert timer["TimerId"] == timer_id
    assert timer["DeviceName"] == scene.mac


def test_time_zone_extension_is_stored_and_listed(scene: Scene) -> None:
    timer_id = scene.create(TimeZone="Asia/Shanghai")
    assert scene.timer(timer_id)["TimeZone"] == "Asia/Shanghai"


async def test_a_weekly_timer_is_due_at_its_next_day_and_time_in_its_zone(
    server: RunningServer, scene: Scene
) -> None:
    now = datetime.now(UTC)
    timer_id = scene.create(Days="0100000", TimePoint="6:30", TimeZone="Asia/Shanghai")
    due = await next_due(server, timer_id)
    assert due is not None
    local = due.astimezone(ZoneInfo("Asia/Shanghai"))
    assert (local.weekday(), local.hour, local.minute) == (0, 6, 30)  # Monday 06:30
    assert now < due <= now + timedelta(days=7)


async def test_a_one_shot_for_any_day_is_due_within_a_day(
    server: RunningServer, scene: Scene
) -> None:
    now = datetime.now(UTC)
    timer_id = scene.create(Days="0000000", Repeat=0, TimePoint="23:59")
    due = await next_due(server, timer_id)
    assert due is not None
    assert (due.hour, due.minute) == (23, 59)
    assert now < due <= now + timedelta(days=1)
    timer = scene.timer(timer_id)
    assert (timer["Repeat"], timer["Days"], timer["Status"]) == (0, "0000000", 1)


def test_the_list_pages_with_offset_and_limit_and_defaults_to_20(scene: Scene) -> None:
    made = [scene.create(TimerName=f"t{index}") for index in range(22)]
    first = scene.call("AppGetTimerList")
    assert first["Total"] == 22
    assert [timer["TimerId"] for timer in first["TimerList"]] == made[:20]
    page = scene.call("AppGetTimerList", Offset=5, Limit=3)
    assert page["Total"] == 22
    assert [timer["TimerName"] for timer in page["TimerList"]] == ["t5", "t6", "t7"]
    tail = scene.call("AppGetTimerList", Offset=20, Limit=50)
    assert [timer["TimerId"] for timer in tail["TimerList"]] == made[20:]
    beyond = scene.call("AppGetTimerList", Offset=30)
    assert beyond == {"Total": 22, "TimerList": [], "RequestId": beyond["RequestId"]}


async def test_lists_hold_only_the_timers_of_that_device(
    server: RunningServer, scene: Scene, pet_house: Product
) -> None:
    mine = scene.create()
    other_did, other_mac = register(server, pet_house)
    await bind(server, scene.user, other_did)
    theirs = scene.create(DeviceName=other_mac, TimerName="other device")
    assert [timer["TimerId"] for timer in scene.timers()] == [mine]
    assert [timer["TimerId"] for timer in scene.timers(DeviceName=other_mac)] == [theirs]


def test_modify_replaces_everything_but_status(scene: Scene) -> None:
    timer_id = scene.create(TimeZone="Europe/Berlin")
    before = scene.timer(timer_id)
    wait_for_next_second()
    response = scene.call(
        "AppModifyTimer",
        TimerId=timer_id,
        **timer_fields(
            TimerName="lights off",
            Days="1000001",
            TimePoint="9:05",
            Repeat=0,
            Data='{"LED_OnOff": false}',
        ),
    )
    assert response == {"RequestId": response["RequestId"]}
    after = scene.timer(timer_id)
    assert after["UpdateTime"] > before["UpdateTime"]
    assert after["CreateTime"] == before["CreateTime"]
    assert {name: after[name] for name in ("TimerName", "Days", "TimePoint", "Repeat", "Data")} == {
        "TimerName": "lights off",
        "Days": "1000001",
        "TimePoint": "09:05",
        "Repeat": 0,
        "Data": '{"LED_OnOff": false}',
    }
    assert after["TimeZone"] == "Europe/Berlin"  # absent TimeZone keeps the timer's own
    assert after["Status"] == 1


def test_modify_with_a_time_zone_changes_it_and_keeps_an_off_timer_off(scene: Scene) -> None:
    timer_id = scene.create()
    assert "Error" not in scene.call("AppModifyTimerStatus", TimerId=timer_id, Status=0)
    response = scene.call(
        "AppModifyTimer", TimerId=timer_id, TimeZone="America/New_York", **timer_fields()
    )
    assert "Error" not in response
    timer = scene.timer(timer_id)
    assert (timer["TimeZone"], timer["Status"]) == ("America/New_York", 0)


async def test_status_switches_a_timer_off_and_on(server: RunningServer, scene: Scene) -> None:
    timer_id = scene.create()
    due = await next_due(server, timer_id)
    assert due is not None
    response = scene.call("AppModifyTimerStatus", TimerId=timer_id, Status=0)
    assert response == {"RequestId": response["RequestId"]}
    assert scene.timer(timer_id)["Status"] == 0
    assert await next_due(server, timer_id) is None
    assert "Error" not in scene.call("AppModifyTimerStatus", TimerId=timer_id, Status=1)
    assert scene.timer(timer_id)["Status"] == 1
    assert await next_due(server, timer_id) == due


def test_status_left_out_changes_nothing(scene: Scene) -> None:
    timer_id = scene.create()
    assert "Error" not in scene.call("AppModifyTimerStatus", TimerId=timer_id, Status=0)
    before = scene.timer(timer_id)
    wait_for_next_second()
    response = scene.call("AppModifyTimerStatus", TimerId=timer_id)
    assert response == {"RequestId": response["RequestId"]}
    assert scene.timer(timer_id) == before
    assert_error(scene.call("AppModifyTimerStatus", TimerId="f" * 32), NO_TIMER)


def test_delete_removes_the_timer(scene: Scene) -> None:
    kept = scene.create(TimerName="kept")
    gone = scene.create(TimerName="gone")
    response = scene.call("AppDeleteTimer", TimerId=gone)
    assert response == {"RequestId": response["RequestId"]}
    listed = scene.call("AppGetTimerList")
    assert listed["Total"] == 1
    assert [timer["TimerId"] for timer in listed["TimerList"]] == [kept]
    assert_error(scene.call("AppDeleteTimer", TimerId=gone), NO_TIMER, gone)
    assert_error(scene.call("AppModifyTimerStatus", TimerId=gone, Status=1), NO_TIMER)


# -- refused input: nothing stored -----------------------------------------------------------------

INVALID_JSON = "InvalidParameterValue.InvalidJSON"
#: (id, fields changed, error code, texts the message names)
CREATE_REFUSALS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("days-6-chars", {"Days": "100000"}, INVALID, ("Days",)),
    ("days-8-chars", {"Days": "10000001"}, INVALID, ("Days",)),
    ("days-not-binary", {"Days": "1000002"}, INVALID, ("Days",)),
    ("days-number", {"Days": 1000000}, INVALID, ("Days",)),
    ("days-none-repeating", {"Days": "0000000", "Repeat": 1}, INVALID, ("Days",)),
    ("time-24", {"TimePoint": "24:00"}, INVALID, ("TimePoint",)),
    ("time-60", {"TimePoint": "12:60"}, INVALID, ("TimePoint",)),
    ("time-one-digit-minute", {"TimePoint": "9:5"}, INVALID, ("TimePoint",)),
    ("time-x", {"TimePoint": "x"}, INVALID, ("TimePoint",)),
    ("time-number", {"TimePoint": 930}, INVALID, ("TimePoint",)),
    ("repeat-2", {"Repeat": 2}, INVALID, ("Repeat",)),
    ("repeat-true", {"Repeat": True}, INVALID, ("Repeat",)),
    ("repeat-string", {"Repeat": "1"}, INVALID, ("Repeat",)),
    ("data-object", {"Data": {"LED_OnOff": True}}, INVALID, ("Data",)),
    ("data-list", {"Data": "[1, 2]"}, INVALID, ("Data",)),
    ("data-empty", {"Data": "{}"}, INVALID, ("Data",)),
    ("data-text", {"Data": "LED_OnOff=1"}, INVALID_JSON, ("Data",)),
    ("data-unknown-attr", {"Data": '{"Nope": 1}'}, INVALID, ("Data", "Nope")),
    ("data-read-only", {"Data": '{"Infrared": true}'}, INVALID, ("Data", "Infrared")),
    ("data-out-of-range", {"Data": '{"LED_R": 300}'}, INVALID, ("Data", "LED_R")),
    ("data-enum", {"Data": '{"LED_Color": "Blue"}'}, INVALID, ("Data", "LED_Color")),
    ("data-too-long", {"Data": '{"LED_R": 1' + " " * 1100 + "}"}, INVALID, ("Data",)),
    ("zone-unknown", {"TimeZone": "Mars/Olympus"}, INVALID, ("TimeZone",)),
    ("zone-number", {"TimeZone": 8}, INVALID, ("TimeZone",)),
    ("name-empty", {"TimerName": ""}, INVALID, ("TimerName",)),
    ("name-too-long", {"TimerName": "n" * 129}, INVALID, ("TimerName",)),
    ("name-number", {"TimerName": 7}, INVALID, ("TimerName",)),
    ("product-malformed", {"ProductId": "US4IK"}, INVALID, ("ProductId",)),
    ("product-number", {"ProductId": 12}, INVALID, ("ProductId",)),
    ("device-malformed", {"DeviceName": "411_3"}, INVALID, ("DeviceName",)),
    (
        "product-unknown",
        {"ProductId": "0" * 32},
        "ResourceNotFound.ProductNotExist",
        ("ProductId",),
    ),
    (
        "device-unknown",
        {"DeviceName": "0e00000000ff"},
        "ResourceNotFound.DeviceNotExist",
        ("DeviceName",),
    ),
]
REQUIRED_FOR_CREATE = [
    "ProductId",
    "DeviceName",
    "TimerName",
    "Days",
    "TimePoint",
    "Repeat",
    "Data",
]


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("change", "code", "named"),
    [case[1:] for case in CREATE_REFUSALS],
    ids=[case[0] for case in CREATE_REFUSALS],
)
def test_create_refuses_bad_fields_and_stores_nothing(
    scene: Scene, change: dict[str, Any], code: str, named: tuple[str, ...]
) -> None:
    kept = scene.create()
    response = scene.call("AppCreateTimer", **timer_fields(**change))
    assert_error(response, code, *named)
    assert [timer["TimerId"] for timer in scene.timers()] == [kept]


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("field", REQUIRED_FOR_CREATE)
@pytest.mark.parametrize("how", ["absent", "null"])
def test_create_names_each_missing_field(scene: Scene, field: str, how: str) -> None:
    response = scene.call(
        "AppCreateTimer", **timer_fields(**{field: ABSENT if how == "absent" else None})
    )
    assert_error(response, MISSING, field)
    assert scene.timers() == []


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"Limit": 0}, "Limit"),
        ({"Limit": 51}, "Limit"),
        ({"Limit": "5"}, "Limit"),
        ({"Limit": True}, "Limit"),
        ({"Offset": -1}, "Offset"),
        ({"Offset": 1.5}, "Offset"),
        ({"ProductId": ABSENT}, "ProductId"),
        ({"DeviceName": ABSENT}, "DeviceName"),
    ],
)
def test_list_refuses_bad_paging_and_missing_fields(
    scene: Scene, params: dict[str, Any], named: str
) -> None:
    scene.create()
    response = scene.call("AppGetTimerList", **params)
    code = MISSING if params.get(named) is ABSENT else INVALID
    assert_error(response, code, named)


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ({"Days": "11"}, INVALID, "Days"),
        ({"TimePoint": "24:00"}, INVALID, "TimePoint"),
        ({"Repeat": True}, INVALID, "Repeat"),
        ({"Data": '{"Infrared": true}'}, INVALID, "Infrared"),
        ({"Data": "nope"}, "InvalidParameterValue.InvalidJSON", "Data"),
        ({"TimeZone": "Nowhere/City"}, INVALID, "TimeZone"),
        ({"TimerId": ABSENT}, MISSING, "TimerId"),
        ({"TimerId": 5}, INVALID, "TimerId"),
        ({"TimerName": ABSENT}, MISSING, "TimerName"),
        ({"Data": ABSENT}, MISSING, "Data"),
        ({"TimerId": "0" * 32}, NO_TIMER, "0" * 32),
    ],
)
def test_modify_refuses_bad_fields_and_changes_nothing(
    scene: Scene, change: dict[str, Any], code: str, named: str
) -> None:
    timer_id = scene.create()
    before = scene.timers()
    params = {"TimerId": timer_id, **timer_fields(TimerName="changed", TimePoint="07:00")}
    params.update(change)
    assert_error(scene.call("AppModifyTimer", **params), code, named)
    assert scene.timers() == before


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("status", [2, -1, True, "1", 0.0])
def test_status_must_be_0_or_1(scene: Scene, status: Any) -> None:
    timer_id = scene.create()
    before = scene.timers()
    assert_error(
        scene.call("AppModifyTimerStatus", TimerId=timer_id, Status=status), INVALID, "Status"
    )
    assert scene.timers() == before


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("action", ["AppModifyTimerStatus", "AppDeleteTimer"])
def test_timer_actions_need_a_timer_id(scene: Scene, action: str) -> None:
    scene.create()
    before = scene.timers()
    assert_error(scene.call(action, Status=0), MISSING, "TimerId")
    assert scene.timers() == before


# -- who may see what ------------------------------------------------------------------------------


ACTIONS = [
    "AppCreateTimer",
    "AppGetTimerList",
    "AppModifyTimer",
    "AppModifyTimerStatus",
    "AppDeleteTimer",
]


def all_params(timer_id: str) -> dict[str, Any]:
    return {"TimerId": timer_id, "Status": 0, **timer_fields()}


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("action", ACTIONS)
def test_a_device_not_bound_to_the_caller_is_refused(
    server: RunningServer, app: dict[str, str], scene: Scene, action: str
) -> None:
    timer_id = scene.create()
    stranger = Scene(scene.http, sign_up(server, app["appid"]), scene.product, scene.did, scene.mac)
    response = stranger.call(action, **all_params(timer_id))
    assert_error(response, "UnauthorizedOperation.DeviceNotBound", "DeviceName", scene.mac)
    assert scene.did not in response["Error"]["Message"]
    assert [timer["TimerId"] for timer in scene.timers()] == [timer_id]


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("action", ["AppModifyTimer", "AppModifyTimerStatus", "AppDeleteTimer"])
async def test_another_users_timer_is_not_found_and_stays_unchanged(
    server: RunningServer, app: dict[str, str], scene: Scene, action: str
) -> None:
    timer_id = scene.create()
    before = scene.timers()
    guest = Scene(scene.http, sign_up(server, app["appid"]), scene.product, scene.did, scene.mac)
    await bind(server, guest.user, scene.did)
    assert guest.timers() == []
    assert_error(guest.call(action, **all_params(timer_id)), NO_TIMER, timer_id)
    assert scene.timers() == before


async def test_a_timer_is_not_found_through_another_device(
    server: RunningServer, scene: Scene, pet_house: Product
) -> None:
    timer_id = scene.create()
    before = scene.timers()
    other_did, other_mac = register(server, pet_house)
    await bind(server, scene.user, other_did)
    for action in ("AppModifyTimer", "AppModifyTimerStatus", "AppDeleteTimer"):
        response = scene.call(action, **{**all_params(timer_id), "DeviceName": other_mac})
        assert_error(response, NO_TIMER, timer_id)
    assert scene.timers() == before


def test_a_gizwits_schedule_is_no_tencent_timer(scene: Scene) -> None:
    made = scene.http.post(
        f"/app/devices/{scene.did}/scheduler",
        headers=scene.user.headers(),
        json={"time": "10:00", "repeat": "mon", "attrs": {"LED_OnOff": True}},
    )
    assert made.status_code == 201, made.text
    schedule_id = made.json()["id"]
    assert scene.timers() == []
    assert_error(scene.call("AppDeleteTimer", TimerId=schedule_id), NO_TIMER)
    listed = scene.http.get(f"/app/devices/{scene.did}/scheduler", headers=scene.user.headers())
    assert [item["id"] for item in listed.json()] == [schedule_id]


def test_a_disabled_device_gets_no_new_timer(server: RunningServer, scene: Scene) -> None:
    kept = scene.create()
    disabled = scene.http.put(
        f"/admin/v1/devices/{scene.did}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"is_disabled": True},
    )
    assert disabled.status_code == 200, disabled.text
    response = scene.call("AppCreateTimer", **timer_fields())
    assert_error(response, "ResourceUnavailable.DeviceDisabled", "DeviceName")
    assert [timer["TimerId"] for timer in scene.timers()] == [kept]


# -- tokens, actions and bodies --------------------------------------------------------------------


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("token", [ABSENT, None, "", 42, "0" * 32])
def test_a_missing_or_unknown_access_token_is_refused(scene: Scene, token: Any) -> None:
    scene.create()
    for action in ACTIONS:
        response = scene.call(action, AccessToken=token, **all_params("0" * 32))
        assert_error(response, BAD_TOKEN, "AccessToken")
    assert len(scene.timers()) == 1


async def test_an_expired_access_token_is_refused(
    server: RunningServer, app: dict[str, str], http: httpx.Client
) -> None:
    token = sign_up(server, app["appid"]).token  # never used, so not in the server's cache
    await expire_token(server, token)
    response = post_tokenapi(
        http, {"Action": "AppGetTimerList", "AccessToken": token, "RequestId": "r"}
    )
    assert_error(response, BAD_TOKEN, "AccessToken", "expired")
    assert response["RequestId"] == "r"


def test_a_logged_out_access_token_is_refused(scene: Scene) -> None:
    scene.create()
    out = scene.http.delete("/app/logout", headers=scene.user.headers())
    assert out.is_success, out.text
    assert_error(scene.call("AppGetTimerList"), BAD_TOKEN)


async def test_the_token_of_any_app_works_for_its_own_user(
    server: RunningServer, pet_house: Product, http: httpx.Client
) -> None:
    other_app = server.create_app("Tencent twin")
    scene = await new_scene(server, other_app["appid"], pet_house, http)
    timer_id = scene.create()
    assert [timer["TimerId"] for timer in scene.timers()] == [timer_id]


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("action", "code"),
    [
        ("AppNope", "InvalidAction"),
        ("", "InvalidAction"),
        (ABSENT, MISSING),
        (None, MISSING),
        (5, INVALID),
    ],
)
def test_the_action_must_be_known(scene: Scene, action: Any, code: str) -> None:
    response = scene.call("x", Action=action, AccessToken="not checked before the action")
    assert_error(response, code, "Action")


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "InvalidParameterValue.InvalidJSON"),
        (b"Action=AppGetTimerList", "InvalidParameterValue.InvalidJSON"),
        (b'{"Action": ', "InvalidParameterValue.InvalidJSON"),
        (b"[]", INVALID),
        (b'"AppGetTimerList"', INVALID),
    ],
)
def test_the_body_must_be_a_json_object(http: httpx.Client, body: bytes, code: str) -> None:
    reply = http.post(TOKENAPI, content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 200, reply.text
    response = reply.json()["Response"]
    assert_error(response, code, "body")
    assert UUID.fullmatch(response["RequestId"])


@pytest.mark.backend("sqlite")
def test_transport_errors_answer_the_envelope_with_their_status(http: httpx.Client) -> None:
    wrong_method = http.get(TOKENAPI)
    assert wrong_method.status_code == 405
    assert "POST" in wrong_method.headers["allow"]
    assert_error(wrong_method.json()["Response"], "InvalidAction", "GET")
    unknown = http.post("/api/exploreropen/nope", json={})
    assert unknown.status_code == 404
    assert_error(unknown.json()["Response"], "InvalidAction", "/api/exploreropen/nope")
    too_large = http.post(TOKENAPI, content=b'{"a": "' + b"x" * 300_000 + b'"}')
    assert too_large.status_code == 413
    assert_error(too_large.json()["Response"], INVALID, "body")
    gizwits = http.get("/app/nope")
    assert gizwits.status_code == 404
    assert gizwits.json()["error_code"] == 9015
