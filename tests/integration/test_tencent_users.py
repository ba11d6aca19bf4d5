"""Tencent user and family Actions against a real ``iotcloud serve``: users sign up over the
Gizwits API, and their tokens drive ``POST /api/exploreropen/tokenapi`` (``AppGetUser``,
``AppUpdateUser``, ``AppLogoutUser``, ``AppUserResetPassword``, ``AppGetUserSetting``,
``AppUpdateUserSetting``, ``AppGetFamilyList``, ``AppGetFamilyDeviceList``,
``AppDeleteDeviceInFamily``, ``AppUpdateDeviceInFamily``). What one API changes the other shows;
every refusal names its parameter and changes nothing. The refusals (checked before anything
is stored) run on the SQLite server only; the tests that store run on both backends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.accounts import APP_ID, USER_TOKEN, User, bind, expire_token
from tests.devices import Product, import_product, register
from tests.server import RunningServer
from tests.tencent import (
    ABSENT,
    BAD_TOKEN,
    INVALID,
    MISSING,
    NO_DEVICE,
    NO_PRODUCT,
    NOT_BOUND,
    assert_error,
    assert_ok,
    call_tokenapi,
)
from tests.thing_devices import import_thing_product

NO_FAMILY = "ResourceNotFound.FamilyNotExist"
PASSWORD = "pw-123456"

USER_ACTIONS = [
    "AppGetUser",
    "AppUpdateUser",
    "AppLogoutUser",
    "AppUserResetPassword",
    "AppGetUserSetting",
    "AppUpdateUserSetting",
    "AppGetFamilyList",
    "AppGetFamilyDeviceList",
    "AppDeleteDeviceInFamily",
    "AppUpdateDeviceInFamily",
]


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture(scope="module")
async def light(server: RunningServer) -> str:
    """A data-template product imported under a fresh ProductId: that ProductId."""
    return await import_thing_product(server)


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@dataclass
class Caller:
    """A signed-up user calling tokenapi with ``token``."""

    http: httpx.Client
    appid: str
    uid: str
    username: str
    token: str

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        return call_tokenapi(self.http, action, self.token, **params)

    def ok(self, action: str, **params: Any) -> dict[str, Any]:
        return assert_ok(self.call(action, **params))

    def gizwits(self, token: str | None = None) -> dict[str, str]:
        return {APP_ID: self.appid, USER_TOKEN: token or self.token}

    def login(self, password: str = PASSWORD) -> httpx.Response:
        return self.http.post(
            "/app/login",
            json={"username": self.username, "password": password},
            headers={APP_ID: self.appid},
        )

    def user(self) -> User:
        return User(self.appid, self.uid, self.token)

    @property
    def family_id(self) -> str:
        return "f_" + self.uid


def new_caller(http: httpx.Client, appid: str, **extra: str) -> Caller:
    """A new user of ``appid`` signed up with a username (and ``extra`` sign-up fields)."""
    body = {"username": "u" + uuid.uuid4().hex[:12], "password": PASSWORD, **extra}
    if "email" in extra:
        del body["username"]
    reply = http.post("/app/users", json=body, headers={APP_ID: appid})
    assert reply.status_code == 201, reply.text
    answer = reply.json()
    return Caller(http, appid, answer["uid"], body.get("username", ""), answer["token"])


@pytest.fixture
def caller(http: httpx.Client, app: dict[str, str]) -> Caller:
    return new_caller(http, app["appid"])


async def bound_device(
    server: RunningServer, caller: Caller, product: Product, **texts: str
) -> str:
    """A new device of ``product`` bound to ``caller``: its MAC."""
    did, mac = register(server, product)
    await bind(server, caller.user(), did, **texts)
    return mac


# -- AppGetUser / AppUpdateUser --------------------------------------------------------------


def test_get_user_answers_the_profile(caller: Caller) -> None:
    data = caller.ok("AppGetUser")["Data"]
    assert abs(data.pop("CreateTime") - time.time()) < 60
    assert data.pop("UpdateTime") >= 0
    assert data == {
        "UserID": caller.uid,
        "NickName": "",
        "Avatar": "",
        "Email": "",
        "CountryCode": "",
        "PhoneNumber": "",
        "HasPassword": 1,
    }


def test_get_user_shows_the_email(http: httpx.Client, app: dict[str, str]) -> None:
    email = f"{uuid.uuid4().hex[:10]}@Example.com"
    caller = new_caller(http, app["appid"], email=email)
    assert caller.ok("AppGetUser")["Data"]["Email"] == email.lower()


def test_update_user_sets_nick_and_avatar_on_both_apis(caller: Caller) -> None:
    avatar = "https://img.example.com/a.png"
    assert caller.ok("AppUpdateUser", NickName="  Ada  ", Avatar=avatar).keys() == {"RequestId"}
    data = caller.ok("AppGetUser")["Data"]
    assert (data["NickName"], data["Avatar"]) == ("Ada", avatar)
    profile = caller.http.get("/app/users", headers=caller.gizwits()).json()
    assert profile["name"] == "Ada"
    caller.ok("AppUpdateUser", Avatar="")  # the nickname stays, the avatar goes
    data = caller.ok("AppGetUser")["Data"]
    assert (data["NickName"], data["Avatar"]) == ("Ada", "")


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({}, MISSING, "NickName"),
        ({"NickName": None}, MISSING, "NickName"),
        ({"NickName": 5}, INVALID, "NickName"),
        ({"NickName": "   "}, INVALID, "NickName"),
        ({"NickName": "n" * 129}, INVALID, "NickName"),
        ({"Avatar": "ftp://img.example.com/a.png"}, INVALID, "Avatar"),
        ({"Avatar": "not a url"}, INVALID, "Avatar"),
        ({"Avatar": "https://x.example/" + "a" * 500}, INVALID, "Avatar"),
        ({"Avatar": ["https://x.example/a.png"]}, INVALID, "Avatar"),
        ({"NickName": "Bo", "Avatar": "nope"}, INVALID, "Avatar"),
        ({"NickName": "Bo", "PhoneNumber": "13800000000"}, INVALID, "PhoneNumber"),
        ({"NickName": "Bo", "Email": "bo@example.com"}, INVALID, "Email"),
    ],
)
def test_update_user_refuses_bad_fields_and_changes_nothing(
    caller: Caller, params: dict[str, Any], code: str, named: str
) -> None:
    before = caller.ok("AppGetUser")["Data"]
    assert_error(caller.call("AppUpdateUser", **params), code, named)
    assert caller.ok("AppGetUser")["Data"] == before


# -- AppLogoutUser / AppUserResetPassword ----------------------------------------------------


def test_logout_makes_the_token_useless_on_both_apis(caller: Caller) -> None:
    second = caller.login().json()["token"]
    assert caller.ok("AppLogoutUser").keys() == {"RequestId"}
    assert_error(caller.call("AppGetUser"), BAD_TOKEN, "AccessToken")
    gizwits = caller.http.get("/app/users", headers=caller.gizwits())
    assert gizwits.status_code == 400
    assert gizwits.json()["error_code"] == 9004
    # the user's other session goes on
    assert caller.http.get("/app/users", headers=caller.gizwits(second)).is_success
    caller.token = second
    assert caller.ok("AppGetUser")["Data"]["UserID"] == caller.uid


def test_reset_password_changes_it_and_ends_the_other_sessions(caller: Caller) -> None:
    other = caller.login().json()["token"]
    assert caller.ok(
        "AppUserResetPassword", Password=PASSWORD, NewPassword="new-pw-789"
    ).keys() == {"RequestId"}
    assert caller.login().status_code == 400
    assert caller.login("new-pw-789").is_success
    assert caller.ok("AppGetUser")["Data"]["UserID"] == caller.uid  # this session stays
    caller_other = Caller(caller.http, caller.appid, caller.uid, caller.username, other)
    assert_error(caller_other.call("AppGetUser"), BAD_TOKEN)


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"NewPassword": "new-pw-789"}, MISSING, "Password"),
        ({"Password": PASSWORD}, MISSING, "NewPassword"),
        ({"Password": 123456, "NewPassword": "new-pw-789"}, INVALID, "Password"),
        ({"Password": PASSWORD, "NewPassword": "short"}, INVALID, "NewPassword"),
        ({"Password": "wrong-pw-1", "NewPassword": "new-pw-789"}, "", "Password"),
        ({"Password": PASSWORD, "NewPassword": PASSWORD}, INVALID, "NewPassword"),
    ],
)
def test_reset_password_refusals_change_nothing(
    caller: Caller, params: dict[str, Any], code: str, named: str
) -> None:
    other = caller.login().json()["token"]
    response = caller.call("AppUserResetPassword", **params)
    assert_error(response, code or "InvalidParameterValue.UserLoginFailed", named)
    assert caller.login().is_success
    assert caller.http.get("/app/users", headers=caller.gizwits(other)).is_success


# -- settings --------------------------------------------------------------------------------


def test_settings_start_with_defaults_and_the_server_zone(caller: Caller) -> None:
    assert caller.ok("AppGetUserSetting")["UserSetting"] == {
        "EnableWechatPush": 0,
        "EnableDeviceMessagePush": 1,
        "EnableFamilyMessagePush": 1,
        "EnableNotifyMessagePush": 1,
        "TemperatureUnit": "celsius",
        "Region": "",
        "TimeZone": "UTC",
    }


def test_update_setting_replaces_what_is_sent_and_keeps_the_rest(caller: Caller) -> None:
    caller.ok("AppUpdateUserSetting", EnableWechatPush=1, EnableDeviceMessagePush=0)
    caller.ok("AppUpdateUserSetting", TemperatureUnit="fahrenheit", Region="ap-guangzhou")
    caller.ok("AppUpdateUserSetting", TimeZone="Asia/Shanghai", EnableNotifyMessagePush=0)
    assert caller.ok("AppGetUserSetting")["UserSetting"] == {
        "EnableWechatPush": 1,
        "EnableDeviceMessagePush": 0,
        "EnableFamilyMessagePush": 1,
        "EnableNotifyMessagePush": 0,
        "TemperatureUnit": "fahrenheit",
        "Region": "ap-guangzhou",
        "TimeZone": "Asia/Shanghai",
    }
    caller.ok("AppUpdateUserSetting", TimeZone="")
    assert caller.ok("AppGetUserSetting")["UserSetting"]["TimeZone"] == "UTC"


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"EnableWechatPush": 2}, "EnableWechatPush"),
        ({"EnableDeviceMessagePush": True}, "EnableDeviceMessagePush"),
        ({"EnableFamilyMessagePush": "1"}, "EnableFamilyMessagePush"),
        ({"EnableNotifyMessagePush": 0.5}, "EnableNotifyMessagePush"),
        ({"TemperatureUnit": "kelvin"}, "TemperatureUnit"),
        ({"TemperatureUnit": 1}, "TemperatureUnit"),
        ({"Region": "r" * 65}, "Region"),
        ({"TimeZone": "Mars/Olympus_Mons"}, "TimeZone"),
        ({"TimeZone": "localtime"}, "TimeZone"),
        ({"TimeZone": "../etc/passwd"}, "TimeZone"),
        ({"TimeZone": 8}, "TimeZone"),
        ({"EnableWechatPush": 1, "TimeZone": "Nowhere/Else"}, "TimeZone"),
    ],
)
def test_update_setting_refuses_bad_values_and_changes_nothing(
    caller: Caller, params: dict[str, Any], named: str
) -> None:
    before = caller.ok("AppGetUserSetting")["UserSetting"]
    assert_error(caller.call("AppUpdateUserSetting", **params), INVALID, named)
    assert caller.ok("AppGetUserSetting")["UserSetting"] == before


@pytest.mark.backend("sqlite")
def test_update_setting_needs_a_setting(caller: Caller) -> None:
    assert_error(caller.call("AppUpdateUserSetting"), MISSING, "TimeZone")


async def test_a_timer_without_time_zone_takes_the_users(
    server: RunningServer, caller: Caller, pet_house: Product
) -> None:
    mac = await bound_device(server, caller, pet_house)
    timer = {
        "ProductId": pet_house.product_key,
        "DeviceName": mac,
        "TimerName": "feed",
        "Days": "1111111",
        "TimePoint": "07:00",
        "Repeat": 1,
        "Data": '{"LED_OnOff": true}',
    }
    before = caller.ok("AppCreateTimer", **timer)["Data"]["TimerId"]
    caller.ok("AppUpdateUserSetting", TimeZone="Asia/Tokyo")
    after = caller.ok("AppCreateTimer", **timer)["Data"]["TimerId"]
    own = caller.ok("AppCreateTimer", **timer, TimeZone="Europe/Paris")["Data"]["TimerId"]
    listed = caller.ok("AppGetTimerList", ProductId=pet_house.product_key, DeviceName=mac)
    zones = {item["TimerId"]: item["TimeZone"] for item in listed["TimerList"]}
    assert zones == {before: "UTC", after: "Asia/Tokyo", own: "Europe/Paris"}


# -- families --------------------------------------------------------------------------------


def test_every_user_has_one_family(caller: Caller) -> None:
    response = caller.ok("AppGetFamilyList")
    assert response["Total"] == 1
    (family,) = response["FamilyList"]
    assert abs(family.pop("CreateTime") - time.time()) < 60
    assert family.pop("UpdateTime") > 0
    assert family == {"FamilyId": caller.family_id, "Name": "My Home", "Role": 1}
    skipped = caller.ok("AppGetFamilyList", Offset=1, Limit=50)
    assert (skipped["FamilyList"], skipped["Total"]) == ([], 1)


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"Limit": 51}, "Limit"),
        ({"Limit": 0}, "Limit"),
        ({"Offset": -1}, "Offset"),
        ({"Offset": "0"}, "Offset"),
    ],
)
def test_family_list_refuses_bad_paging(caller: Caller, params: dict[str, Any], named: str) -> None:
    assert_error(caller.call("AppGetFamilyList", **params), INVALID, named)


async def test_family_devices_are_the_callers_bindings(
    server: RunningServer, caller: Caller, pet_house: Product
) -> None:
    first = await bound_device(server, caller, pet_house, dev_alias="porch")
    second = await bound_device(server, caller, pet_house)
    response = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)
    assert response["Total"] == 2
    items = response["DeviceList"]
    key = pet_house.product_key
    for item in items:
        assert abs(item.pop("CreateTime") - time.time()) < 60
        assert item.pop("UpdateTime") > 0
    assert items == [
        {
            "ProductId": key,
            "DeviceName": mac,
            "DeviceId": f"{key}/{mac}",
            "AliasName": alias,
            "UserID": caller.uid,
            "RoomId": "0",
            "IconUrl": "",
        }
        for mac, alias in ((first, "porch"), (second, ""))
    ]
    for room in ("", "0"):
        rooms = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id, RoomId=room)
        assert rooms["Total"] == 2
    page = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id, Offset=1, Limit=1)
    assert [d["DeviceName"] for d in page["DeviceList"]] == [second]
    assert page["Total"] == 2


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"FamilyId": ABSENT}, MISSING, "FamilyId"),
        ({"FamilyId": 1}, INVALID, "FamilyId"),
        ({"FamilyId": "f_" + "0" * 32}, NO_FAMILY, "FamilyId"),
        ({"RoomId": "1"}, INVALID, "RoomId"),
        ({"Limit": 51}, INVALID, "Limit"),
        ({"Offset": -1}, INVALID, "Offset"),
    ],
)
def test_family_device_list_refusals(
    caller: Caller, params: dict[str, Any], code: str, named: str
) -> None:
    body = {"FamilyId": caller.family_id, **params}
    assert_error(caller.call("AppGetFamilyDeviceList", **body), code, named)


async def test_another_users_family_is_not_found(
    http: httpx.Client, app: dict[str, str], caller: Caller
) -> None:
    other = new_caller(http, app["appid"])
    response = caller.call("AppGetFamilyDeviceList", FamilyId=other.family_id)
    assert_error(response, NO_FAMILY, other.family_id)


async def test_update_device_sets_the_alias_gizwits_shows(
    server: RunningServer, caller: Caller, pet_house: Product
) -> None:
    mac = await bound_device(server, caller, pet_house)
    caller.ok(
        "AppUpdateDeviceInFamily",
        ProductId=pet_house.product_key.upper(),
        DeviceName=mac.upper(),
        AliasName=" kitchen ",
    )
    listed = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["DeviceList"]
    assert [d["AliasName"] for d in listed] == ["kitchen"]
    bindings = caller.http.get("/app/bindings", headers=caller.gizwits()).json()["devices"]
    assert [d["dev_alias"] for d in bindings] == ["kitchen"]


async def test_delete_device_unbinds_it(
    server: RunningServer, caller: Caller, pet_house: Product
) -> None:
    mac = await bound_device(server, caller, pet_house)
    kept = await bound_device(server, caller, pet_house)
    target = {"FamilyId": caller.family_id, "ProductId": pet_house.product_key, "DeviceName": mac}
    assert caller.ok("AppDeleteDeviceInFamily", **target).keys() == {"RequestId"}
    listed = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["DeviceList"]
    assert [d["DeviceName"] for d in listed] == [kept]
    bindings = caller.http.get("/app/bindings", headers=caller.gizwits()).json()["devices"]
    assert [d["mac"] for d in bindings] == [kept]
    assert_error(caller.call("AppDeleteDeviceInFamily", **target), NOT_BOUND, "DeviceName")


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("action", ["AppDeleteDeviceInFamily", "AppUpdateDeviceInFamily"])
@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"ProductId": ABSENT}, MISSING, "ProductId"),
        ({"DeviceName": ABSENT}, MISSING, "DeviceName"),
        ({"DeviceName": 5}, INVALID, "DeviceName"),
        ({"DeviceName": "zz"}, INVALID, "DeviceName"),
        ({"FamilyId": "f_nobody"}, NO_FAMILY, "FamilyId"),
        ({"ProductId": "0" * 32}, NO_PRODUCT, "ProductId"),
        ({"DeviceName": "0200000000ff"}, NO_DEVICE, "DeviceName"),
        ({"ProductId": "nope"}, INVALID, "ProductId"),
        ({"ProductId": "NOSUCHPID1", "DeviceName": "lamp"}, NO_PRODUCT, "ProductId"),
    ],
)
async def test_device_actions_refuse_and_change_nothing(
    server: RunningServer,
    caller: Caller,
    pet_house: Product,
    action: str,
    params: dict[str, Any],
    code: str,
    named: str,
) -> None:
    mac = await bound_device(server, caller, pet_house, dev_alias="den")
    body = {
        "FamilyId": caller.family_id,
        "ProductId": pet_house.product_key,
        "DeviceName": mac,
        "AliasName": "renamed",
        **params,
    }
    assert_error(caller.call(action, **body), code, named)
    listed = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["DeviceList"]
    assert [(d["DeviceName"], d["AliasName"]) for d in listed] == [(mac, "den")]


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize(
    ("alias", "code", "named"),
    [(ABSENT, MISSING, "AliasName"), (7, INVALID, "AliasName"), ("a" * 129, INVALID, "AliasName")],
)
async def test_update_device_checks_the_alias(
    server: RunningServer, caller: Caller, pet_house: Product, alias: Any, code: str, named: str
) -> None:
    mac = await bound_device(server, caller, pet_house, dev_alias="den")
    body = {"ProductId": pet_house.product_key, "DeviceName": mac, "AliasName": alias}
    assert_error(caller.call("AppUpdateDeviceInFamily", **body), code, named)
    listed = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["DeviceList"]
    assert [d["AliasName"] for d in listed] == ["den"]


async def test_a_device_of_another_user_is_not_bound(
    server: RunningServer,
    http: httpx.Client,
    app: dict[str, str],
    caller: Caller,
    pet_house: Product,
) -> None:
    owner = new_caller(http, app["appid"])
    mac = await bound_device(server, owner, pet_house, dev_alias="theirs")
    target = {"ProductId": pet_house.product_key, "DeviceName": mac}
    assert_error(caller.call("AppUpdateDeviceInFamily", **target, AliasName="mine"), NOT_BOUND, mac)
    assert_error(
        caller.call("AppDeleteDeviceInFamily", **target, FamilyId=caller.family_id), NOT_BOUND
    )
    listed = owner.ok("AppGetFamilyDeviceList", FamilyId=owner.family_id)["DeviceList"]
    assert [d["AliasName"] for d in listed] == ["theirs"]
    assert caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["Total"] == 0


async def test_a_data_template_device_is_named_by_its_product_id_and_name(
    server: RunningServer, caller: Caller, light: str
) -> None:
    name = "lamp_" + uuid.uuid4().hex[:6]
    made = server.cli("device", "create", "--product-key", light, "--name", name, "--json")
    await bind(server, caller.user(), json.loads(made.stdout)["did"])
    (item,) = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["DeviceList"]
    assert (item["ProductId"], item["DeviceName"], item["DeviceId"]) == (
        light,
        name,
        f"{light}/{name}",
    )
    target = {"ProductId": light, "DeviceName": name}
    caller.ok("AppUpdateDeviceInFamily", **target, AliasName="desk")
    (item,) = caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["DeviceList"]
    assert item["AliasName"] == "desk"
    other = {"ProductId": light, "DeviceName": name.upper()}  # names are exact
    assert_error(caller.call("AppUpdateDeviceInFamily", **other, AliasName="x"), NO_DEVICE)
    caller.ok("AppDeleteDeviceInFamily", **target, FamilyId=caller.family_id)
    assert caller.ok("AppGetFamilyDeviceList", FamilyId=caller.family_id)["Total"] == 0


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.backend("sqlite")
@pytest.mark.parametrize("token", [ABSENT, "0" * 32])
@pytest.mark.parametrize("action", USER_ACTIONS)
def test_every_action_needs_a_valid_token(caller: Caller, action: str, token: Any) -> None:
    response = caller.call(
        action, AccessToken=token, FamilyId=caller.family_id, NickName="x", TimeZone="UTC"
    )
    assert_error(response, BAD_TOKEN, "AccessToken")
    assert caller.ok("AppGetUser")["Data"]["NickName"] == ""


async def test_an_expired_token_is_refused(server: RunningServer, caller: Caller) -> None:
    fresh = new_caller(caller.http, caller.appid)  # never used, so not in the server's cache
    await expire_token(server, fresh.token)
    assert_error(fresh.call("AppGetUser"), BAD_TOKEN, "AccessToken", "expired")
    assert_error(fresh.call("AppUpdateUserSetting", TimeZone="UTC"), BAD_TOKEN, "expired")
