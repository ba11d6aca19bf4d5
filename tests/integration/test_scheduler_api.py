"""The Gizwits scheduler API against a real ``iotcloud serve`` (SQLite and PostgreSQL):
``/app/scheduler`` and ``/app/devices/{did}/scheduler``, what they store and everything they
refuse. Firing is covered by ``test_scheduler_firing``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.accounts import User, bind, sign_up
from tests.devices import Product, import_product, register
from tests.errors import assert_error
from tests.server import RunningServer


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@dataclass
class Scene:
    owner: User
    other: User
    product_key: str
    did: str
    did2: str
    unbound: str
    other_did: str


@pytest.fixture(scope="module")
async def scene(server: RunningServer, app: dict[str, str], pet_house: Product) -> Scene:
    owner, other = sign_up(server, app["appid"]), sign_up(server, app["appid"])
    did, _ = register(server, pet_house)
    did2, _ = register(server, pet_house)
    unbound, _ = register(server, pet_house)
    other_did, _ = register(server, pet_house)
    await bind(server, owner, did)
    await bind(server, owner, did2)
    await bind(server, other, other_did)
    return Scene(owner, other, pet_house.product_key, did, did2, unbound, other_did)


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def auth(user: User) -> dict[str, str]:
    return {"X-Gizwits-Application-Id": user.appid, "X-Gizwits-User-token": user.token}


def tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).date().isoformat()


def changed(fields: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with ``change`` applied: a None value removes the field."""
    result = {**fields, **change}
    return {name: value for name, value in result.items() if value is not None}


def schedule_body(scene: Scene, **change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "date": tomorrow(),
        "time": "12:00",
        "repeat": "none",
        "task": [
            {"did": scene.did, "product_key": scene.product_key, "attrs": {"LED_OnOff": True}},
            {"did": scene.did2, "product_key": scene.product_key, "attrs": {"LED_R": 10}},
        ],
        "retry_count": 3,
        "retry_task": "all",
    }
    return changed(body, change)


def listed(http: httpx.Client, user: User) -> list[dict[str, Any]]:
    reply = http.get("/app/scheduler", headers=auth(user), params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()
    return items


def device_listed(http: httpx.Client, user: User, did: str) -> list[dict[str, Any]]:
    reply = http.get(f"/app/devices/{did}/scheduler", headers=auth(user))
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()
    return items


# -- /app/scheduler -----------------------------------------------------------------------------


def test_create_list_and_delete(scene: Scene, http: httpx.Client) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    body = schedule_body(scene)
    reply = http.post("/app/scheduler", headers=auth(scene.owner), json=body)
    assert reply.status_code == 201, reply.text
    schedule_id = reply.json()["id"]
    assert set(reply.json()) == {"id"}

    item = next(item for item in listed(http, scene.owner) if item["id"] == schedule_id)
    created = datetime.fromisoformat(item.pop("created_at")).replace(tzinfo=UTC)
    assert before - timedelta(seconds=2) <= created <= datetime.now(UTC) + timedelta(seconds=2)
    assert item == {"id": schedule_id, **body}
    # only the owner sees it, and only the owner can delete it
    assert all(item["id"] != schedule_id for item in listed(http, scene.other))
    assert_error(http.delete(f"/app/scheduler/{schedule_id}", headers=auth(scene.other)), 9030, 404)
    assert_error(
        http.get(f"/app/scheduler/{schedule_id}/logs", headers=auth(scene.other)), 9030, 404
    )

    reply = http.delete(f"/app/scheduler/{schedule_id}", headers=auth(scene.owner))
    assert reply.status_code == 200, reply.text
    assert all(item["id"] != schedule_id for item in listed(http, scene.owner))
    assert_error(http.delete(f"/app/scheduler/{schedule_id}", headers=auth(scene.owner)), 9030, 404)


def test_repeating_schedules_and_raw_tasks_round_trip(scene: Scene, http: httpx.Client) -> None:
    body = schedule_body(
        scene,
        date=None,
        repeat="sun,mon,fri",
        time="00:05",
        retry_count=0,
        retry_task="failed",
        task=[{"did": scene.did, "product_key": scene.product_key, "raw": [1, 2, 255]}],
    )
    reply = http.post("/app/scheduler", headers=auth(scene.owner), json=body)
    assert reply.status_code == 201, reply.text
    item = next(i for i in listed(http, scene.owner) if i["id"] == reply.json()["id"])
    assert item["repeat"] == "mon,fri,sun"  # normalised to the week's order
    assert item["date"] is None
    assert item["time"] == "00:05"
    assert item["task"] == body["task"]
    assert (item["retry_count"], item["retry_task"]) == (0, "failed")


@pytest.fixture
async def loner(server: RunningServer, app: dict[str, str], pet_house: Product) -> tuple[User, str]:
    """A user with one bound device and no schedules."""
    user = sign_up(server, app["appid"])
    did, _ = register(server, pet_house)
    await bind(server, user, did)
    return user, did


def test_paging_keeps_creation_order(
    loner: tuple[User, str], pet_house: Product, http: httpx.Client
) -> None:
    user, did = loner
    ids = []
    for hour in range(3):
        task = {"did": did, "product_key": pet_house.product_key, "attrs": {"LED_G": hour}}
        body = {"date": tomorrow(), "time": f"0{hour}:00", "repeat": "none", "task": [task]}
        reply = http.post("/app/scheduler", headers=auth(user), json=body)
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    page = http.get("/app/scheduler", headers=auth(user), params={"limit": 2, "skip": 1})
    assert [item["id"] for item in page.json()] == ids[1:3]
    assert [item["id"] for item in listed(http, user)] == ids
    assert http.get("/app/scheduler", headers=auth(user), params={"skip": 3}).json() == []


def test_logs_before_any_run(scene: Scene, http: httpx.Client) -> None:
    reply = http.post("/app/scheduler", headers=auth(scene.owner), json=schedule_body(scene))
    schedule_id = reply.json()["id"]
    logs = http.get(f"/app/scheduler/{schedule_id}/logs", headers=auth(scene.owner))
    assert logs.status_code == 200, logs.text
    assert logs.json() == {"datetime": None, "status": None, "detail": {}}
    runs = http.get(f"/app/scheduler/{schedule_id}/runs", headers=auth(scene.owner))
    assert runs.status_code == 200, runs.text
    assert runs.json() == []


BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    ("no time", {"time": None}, 9015, "time"),
    ("time 24:00", {"time": "24:00"}, 9015, "time"),
    ("time 9:30", {"time": "9:30"}, 9015, "time"),
    ("time a number", {"time": 1200}, 9015, "time"),
    ("no repeat", {"repeat": None}, 9015, "repeat"),
    ("repeat token", {"repeat": "mon,funday"}, 9015, "funday"),
    ("repeat twice", {"repeat": "mon,mon"}, 9015, "repeat"),
    ("repeat day (per-device only)", {"repeat": "day"}, 9015, "repeat"),
    ("repeat empty item", {"repeat": "mon,,tue"}, 9015, "repeat"),
    ("one-shot without date", {"date": None}, 9015, "date"),
    ("date that does not exist", {"date": "2031-02-29"}, 9015, "2031-02-29"),
    ("date shape", {"date": "01/01/2031"}, 9015, "date"),
    ("one-shot in the past", {"date": "2020-01-01"}, 9015, "date"),
    ("retry_count 61", {"retry_count": 61}, 9015, "retry_count"),
    ("retry_count -1", {"retry_count": -1}, 9015, "retry_count"),
    ("retry_count text", {"retry_count": "3"}, 9015, "retry_count"),
    ("retry_task", {"retry_task": "some"}, 9015, "retry_task"),
    ("no tasks", {"task": []}, 9015, "task"),
    ("unknown field", {"colour": "red"}, 9015, "colour"),
]


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [pytest.param(change, code, named, id=name) for name, change, code, named in BAD_BODIES],
)
def test_bad_bodies_are_refused_and_nothing_is_stored(
    scene: Scene, http: httpx.Client, change: dict[str, Any], code: int, named: str
) -> None:
    before = listed(http, scene.owner)
    reply = http.post(
        "/app/scheduler", headers=auth(scene.owner), json=schedule_body(scene, **change)
    )
    assert_error(reply, code, 400, named)
    assert listed(http, scene.owner) == before


def bad_task(scene: Scene, **change: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "did": scene.did,
        "product_key": scene.product_key,
        "attrs": {"LED_OnOff": True},
    }
    return changed(task, change)


@pytest.mark.parametrize(
    ("case", "code", "status", "named"),
    [
        ("unbound", 9017, 401, None),
        ("other user's", 9017, 401, None),
        ("unknown did", 9014, 404, None),
        ("wrong product_key", 9002, 400, "product_key"),
        ("read-only attr", 9025, 400, "Temperature"),
        ("unknown attr", 9025, 400, "Colour"),
        ("value out of range", 9025, 400, "LED_R"),
        ("attrs and raw", 9015, 400, "attrs or raw"),
        ("neither attrs nor raw", 9015, 400, "attrs or raw"),
        ("raw not bytes", 9015, 400, "raw"),
        ("same device twice", 9015, 400, "one task per device"),
        ("no did", 9015, 400, "did"),
    ],
)
def test_bad_tasks_are_refused_and_nothing_is_stored(
    scene: Scene,
    http: httpx.Client,
    case: str,
    code: int,
    status: int,
    named: str | None,
) -> None:
    tasks = {
        "unbound": [bad_task(scene, did=scene.unbound)],
        "other user's": [bad_task(scene, did=scene.other_did)],
        "unknown did": [bad_task(scene, did="Z" * 22)],
        "wrong product_key": [bad_task(scene, product_key=uuid.uuid4().hex)],
        "read-only attr": [bad_task(scene, attrs={"Temperature": 20})],
        "unknown attr": [bad_task(scene, attrs={"Colour": 1})],
        "value out of range": [bad_task(scene, attrs={"LED_R": 255})],
        "attrs and raw": [bad_task(scene, raw=[1])],
        "neither attrs nor raw": [bad_task(scene, attrs=None)],
        "raw not bytes": [bad_task(scene, attrs=None, raw=[1, 256])],
        "same device twice": [bad_task(scene), bad_task(scene)],
        "no did": [bad_task(scene, did=None)],
    }[case]
    before = listed(http, scene.owner)
    reply = http.post(
        "/app/scheduler", headers=auth(scene.owner), json=schedule_body(scene, task=tasks)
    )
    assert_error(reply, code, status, named)
    assert listed(http, scene.owner) == before


def test_requests_need_the_app_and_a_token(scene: Scene, http: httpx.Client) -> None:
    body = schedule_body(scene)
    assert_error(http.post("/app/scheduler", json=body), 9003, 400)
    headers = {"X-Gizwits-Application-Id": scene.owner.appid, "X-Gizwits-User-token": "nope"}
    assert_error(http.post("/app/scheduler", headers=headers, json=body), 9004, 400)
    assert_error(http.get("/app/scheduler", headers=headers), 9004, 400)
    assert_error(http.delete("/app/scheduler/x", headers=headers), 9004, 400)
    assert_error(http.get(f"/app/devices/{scene.did}/scheduler", headers=headers), 9004, 400)


@pytest.mark.parametrize(
    ("params", "named"),
    [({"limit": 0}, "limit"), ({"limit": "x"}, "limit"), ({"skip": -1}, "skip"), ({"a": 1}, "a")],
)
def test_bad_paging_is_refused(
    scene: Scene, http: httpx.Client, params: dict[str, Any], named: str
) -> None:
    assert_error(
        http.get("/app/scheduler", headers=auth(scene.owner), params=params), 9015, 400, named
    )
    assert_error(
        http.get(f"/app/devices/{scene.did}/scheduler", headers=auth(scene.owner), params=params),
        9015,
        400,
        named,
    )


def test_malformed_json_is_refused(scene: Scene, http: httpx.Client) -> None:
    for content in (b"{", b"[]", b""):
        reply = http.post("/app/scheduler", headers=auth(scene.owner), content=content)
        assert_error(reply, 9015, 400, "body")


# -- /app/devices/{did}/scheduler ---------------------------------------------------------------


def device_body(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"time": "02:30", "repeat": "day", "attrs": {"LED_OnOff": True}}
    return changed(body, change)


def test_device_schedules_round_trip(scene: Scene, http: httpx.Client) -> None:
    body = device_body(
        repeat="day",
        days=[31, 1, 15],
        start_date="2031-01-01",
        end_date="2031-12-31",
        remark="watering",
        attrs=None,
        raw="010203",
    )
    reply = http.post(f"/app/devices/{scene.did}/scheduler", headers=auth(scene.owner), json=body)
    assert reply.status_code == 201, reply.text
    schedule_id = reply.json()["id"]
    item = next(i for i in device_listed(http, scene.owner, scene.did) if i["id"] == schedule_id)
    assert item.pop("created_at")
    assert item == {
        "id": schedule_id,
        "date": None,
        "time": "02:30",
        "repeat": "day",
        "days": [1, 15, 31],
        "start_date": "2031-01-01",
        "end_date": "2031-12-31",
        "enabled": True,
        "remark": "watering",
        "raw": "010203",
        "retry_count": 0,
        "retry_task": "all",
    }
    # per-device schedules are not in /app/scheduler's list, but their logs can be read there
    assert all(i["id"] != schedule_id for i in listed(http, scene.owner))
    logs = http.get(f"/app/scheduler/{schedule_id}/logs", headers=auth(scene.owner))
    assert logs.status_code == 200, logs.text
    # nor in another device's list
    assert all(i["id"] != schedule_id for i in device_listed(http, scene.owner, scene.did2))

    # PUT replaces the whole schedule; enabled left out keeps its state
    change = device_body(
        time="23:59", repeat="sat,sun", attrs={"LED_Color": "Pink"}, enabled=False, remark=""
    )
    reply = http.put(
        f"/app/devices/{scene.did}/scheduler/{schedule_id}", headers=auth(scene.owner), json=change
    )
    assert reply.status_code == 200, reply.text
    changed = reply.json()
    assert changed["time"] == "23:59"
    assert changed["repeat"] == "sat,sun"
    assert changed["attrs"] == {"LED_Color": "Pink"}
    assert "raw" not in changed
    assert changed["enabled"] is False
    assert (changed["days"], changed["start_date"], changed["end_date"]) == ([], None, None)
    reply = http.put(
        f"/app/devices/{scene.did}/scheduler/{schedule_id}",
        headers=auth(scene.owner),
        json=device_body(enabled=None),
    )
    assert reply.json()["enabled"] is False
    assert device_listed(http, scene.owner, scene.did)[-1]["id"] == schedule_id

    # the id under another device, or another user: 9030
    path = f"/app/devices/{scene.did2}/scheduler/{schedule_id}"
    assert_error(http.put(path, headers=auth(scene.owner), json=device_body()), 9030, 404)
    assert_error(http.delete(path, headers=auth(scene.owner)), 9030, 404)
    path = f"/app/devices/{scene.did}/scheduler/{schedule_id}"
    assert_error(http.delete(path, headers=auth(scene.other)), 9017, 401)

    reply = http.delete(path, headers=auth(scene.owner))
    assert reply.status_code == 200, reply.text
    assert all(i["id"] != schedule_id for i in device_listed(http, scene.owner, scene.did))
    assert_error(http.delete(path, headers=auth(scene.owner)), 9030, 404)


def test_device_one_shot_in_the_past_and_disabled_on_create(
    scene: Scene, http: httpx.Client
) -> None:
    path = f"/app/devices/{scene.did}/scheduler"
    reply = http.post(path, headers=auth(scene.owner), json=device_body(repeat="none"))
    assert_error(reply, 9015, 400, "date")
    reply = http.post(
        path,
        headers=auth(scene.owner),
        json=device_body(repeat="none", date="2020-05-05"),
    )
    assert_error(reply, 9015, 400, "date")
    reply = http.post(
        path,
        headers=auth(scene.owner),
        json=device_body(repeat="none", date=tomorrow(), enabled=False),
    )
    assert reply.status_code == 201, reply.text
    item = next(
        i for i in device_listed(http, scene.owner, scene.did) if i["id"] == reply.json()["id"]
    )
    assert (item["date"], item["repeat"], item["enabled"]) == (tomorrow(), "none", False)


DEVICE_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("days without repeat day", {"repeat": "mon", "days": [1]}, "days"),
    ("day 32", {"days": [32]}, "days"),
    ("days not a list", {"days": "1,2"}, "days"),
    ("end before start", {"start_date": "2031-02-01", "end_date": "2031-01-01"}, "end_date"),
    (
        "window with no selected day",
        {"repeat": "mon", "start_date": "2031-01-07", "end_date": "2031-01-08"},
        "end_date",
    ),
    ("end_date passed", {"end_date": "2020-01-01"}, "end_date"),
    ("bad start_date", {"start_date": "2031-13-01"}, "start_date"),
    ("raw not hex", {"attrs": None, "raw": "01zz"}, "raw"),
    ("raw odd length", {"attrs": None, "raw": "010"}, "raw"),
    ("raw and attrs", {"raw": "01"}, "attrs and raw"),
    ("neither", {"attrs": None}, "attrs and raw"),
    ("remark too long", {"remark": "x" * 1025}, "remark"),
    ("enabled text", {"enabled": "yes"}, "enabled"),
    ("attr read-only", {"attrs": {"Humidity": 1}}, "Humidity"),
    ("unknown field", {"did": "x"}, "did"),
]


@pytest.mark.parametrize(
    ("change", "named"),
    [pytest.param(change, named, id=name) for name, change, named in DEVICE_BAD],
)
def test_bad_device_schedules_are_refused_and_nothing_is_stored(
    scene: Scene, http: httpx.Client, change: dict[str, Any], named: str
) -> None:
    before = device_listed(http, scene.owner, scene.did)
    reply = http.post(
        f"/app/devices/{scene.did}/scheduler", headers=auth(scene.owner), json=device_body(**change)
    )
    code = 9025 if named == "Humidity" else 9015
    assert_error(reply, code, 400, named)
    assert device_listed(http, scene.owner, scene.did) == before


def test_device_schedules_need_a_bound_device(scene: Scene, http: httpx.Client) -> None:
    for did, code, status in ((scene.unbound, 9017, 401), ("Z" * 22, 9014, 404)):
        path = f"/app/devices/{did}/scheduler"
        assert_error(http.get(path, headers=auth(scene.owner)), code, status)
        assert_error(http.post(path, headers=auth(scene.owner), json=device_body()), code, status)
    # a user never sees another user's device schedules
    path = f"/app/devices/{scene.other_did}/scheduler"
    assert_error(http.get(path, headers=auth(scene.owner)), 9017, 401)
