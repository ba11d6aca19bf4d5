"""The binding API against a real ``iotcloud serve``: apps sign users up over HTTP, devices
register themselves (``POST /dev/devices``) or are created by an operator (``iotcloud device
create``), and users bind, list, rename, unbind and share them through ``/app/bind_mac``,
``/app/bindings`` and ``/app/{did}/bindings``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.accounts import APP_ID, USER_TOKEN
from tests.devices import FIXTURES, mqtt_port
from tests.errors import assert_error
from tests.server import ADMIN_TOKEN, RunningServer

TIMESTAMP = "X-Gizwits-Timestamp"
SIGNATURE = "X-Gizwits-Signature"


# -- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    product_key: str
    product_secret: str


@dataclass(frozen=True)
class Device:
    did: str
    mac: str
    passcode: str


@dataclass(frozen=True)
class User:
    appid: str
    uid: str
    token: str
    login: str

    def headers(self) -> dict[str, str]:
        return {APP_ID: self.appid, USER_TOKEN: self.token}


@pytest.fixture(scope="module")
def product(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    """The pet house product, imported with the CLI under a fresh product_key."""
    data = json.loads((FIXTURES / "pet_house.json").read_text())
    data["product_key"] = uuid.uuid4().hex
    path = tmp_path_factory.mktemp("products") / "pet_house.json"
    path.write_text(json.dumps(data))
    made = json.loads(server.cli("product", "import", str(path), "--json").stdout)
    assert made["product_key"] == data["product_key"]
    return Product(made["product_key"], made["product_secret"])


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def new_mac() -> str:
    return "02" + uuid.uuid4().hex[:10]


def register(http: httpx.Client, product: Product) -> Device:
    """A device registering itself, as GAgent does."""
    mac = new_mac()
    passcode = "".join(random.choices(string.ascii_uppercase, k=10))
    reply = http.post(
        "/dev/devices",
        content=f"passcode={passcode}&mac={mac}&product_key={product.product_key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 201, reply.text
    return Device(reply.text.split("did=", 1)[1][:22], mac, passcode)


def set_disabled(http: httpx.Client, did: str, disabled: bool) -> None:
    reply = http.put(
        f"/admin/v1/devices/{did}",
        json={"is_disabled": disabled},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert reply.status_code == 200, reply.text


def sign_up(http: httpx.Client, appid: str, email: bool = False) -> User:
    login = f"u{uuid.uuid4().hex[:12]}" + ("@example.com" if email else "")
    body = {"email" if email else "username": login, "password": "pw-123456"}
    reply = http.post("/app/users", json=body, headers={APP_ID: appid})
    assert reply.status_code == 201, reply.text
    return User(appid, reply.json()["uid"], reply.json()["token"], login)


def signed(product: Product, at: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if at is None else at)
    sig = hashlib.md5((product.product_secret + ts).encode(), usedforsecurity=False).hexdigest()
    return {TIMESTAMP: ts, SIGNATURE: sig}


def bind_mac(
    http: httpx.Client,
    user: User,
    product: Product,
    mac: str,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    return http.post(
        "/app/bind_mac",
        json={"product_key": product.product_key, "mac": mac, **body},
        headers={**user.headers(), **(signed(product) if headers is None else headers)},
    )


def bind_passcodes(http: httpx.Client, user: User, *items: dict[str, Any]) -> httpx.Response:
    return http.post("/app/bindings", json={"devices": list(items)}, headers=user.headers())


def unbind(http: httpx.Client, user: User, *dids: str) -> httpx.Response:
    return http.request(
        "DELETE",
        "/app/bindings",
        json={"devices": [{"did": did} for did in dids]},
        headers=user.headers(),
    )


def listed(http: httpx.Client, user: User, **params: Any) -> list[dict[str, Any]]:
    reply = http.get("/app/bindings", params=params, headers=user.headers())
    assert reply.status_code == 200, reply.text
    assert set(reply.json()) == {"devices"}
    devices: list[dict[str, Any]] = reply.json()["devices"]
    return devices


# -- bind by MAC -----------------------------------------------------------------------------------


def test_bind_by_mac_answers_201_with_the_device_item(
    server: RunningServer, app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    owner, guest = sign_up(http, app["appid"]), sign_up(http, app["appid"])
    colon_mac = ":".join(device.mac[i : i + 2] for i in range(0, 12, 2)).upper()
    reply = bind_mac(http, owner, product, colon_mac, remark="hall", dev_alias="Pet house")
    assert reply.status_code == 201, reply.text
    assert reply.json() == {
        "product_key": product.product_key,
        "product_name": "My WeChat Pet House SOC",
        "did": device.did,
        "mac": device.mac,
        "passcode": device.passcode,
        "is_online": False,
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
        "state_last_timestamp": 0,
    }
    assert http.get(f"/app/devices/{device.did}", headers=owner.headers()).json() == reply.json()

    # a later binder is a guest; set_owner is taken and changes nothing
    as_guest = bind_mac(http, guest, product, device.mac, set_owner=1)
    assert as_guest.status_code == 201, as_guest.text
    assert (as_guest.json()["role"], as_guest.json()["dev_alias"]) == ("guest", "")
    # binding again answers the binding as it is
    again = bind_mac(http, owner, product, device.mac, dev_alias="renamed?")
    assert (again.status_code, again.json()["dev_alias"]) == (201, "Pet house")


def test_an_operator_created_device_binds_by_mac(
    server: RunningServer, app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    made = json.loads(
        server.cli(
            "device", "create", "--product-key", product.product_key, "--mac", new_mac(), "--json"
        ).stdout
    )
    user = sign_up(http, app["appid"])
    # upper-case hex is accepted too, as is a timestamp a few minutes off
    headers = signed(product, int(time.time()) - 200)
    headers[SIGNATURE] = headers[SIGNATURE].upper()
    reply = bind_mac(http, user, product, made["mac"], headers=headers)
    assert reply.status_code == 201, reply.text
    assert (reply.json()["did"], reply.json()["passcode"]) == (made["did"], made["passcode"])


def test_bind_mac_refuses_unsigned_stale_and_forged_requests(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    user = sign_up(http, app["appid"])
    now = int(time.time())
    good = signed(product, now)
    forged = hashlib.md5(f"{'0' * 32}{now}".encode(), usedforsecurity=False).hexdigest()
    cases: list[tuple[dict[str, str], int, str]] = [
        ({}, 9043, "X-Gizwits-Timestamp: missing"),
        ({SIGNATURE: good[SIGNATURE]}, 9043, "X-Gizwits-Timestamp: missing"),
        ({TIMESTAMP: good[TIMESTAMP]}, 9044, "X-Gizwits-Signature: missing"),
        ({**good, SIGNATURE: forged}, 9044, "md5(product_secret + X-Gizwits-Timestamp)"),
        ({**good, SIGNATURE: "0" * 32}, 9044, "X-Gizwits-Signature"),
        ({**signed(product, now - 900)}, 9043, "behind the server's clock"),
        ({**signed(product, now + 900)}, 9043, "ahead of the server's clock"),
        ({**signed(product, now * 1000)}, 9043, "ahead of the server's clock"),
        ({TIMESTAMP: "yesterday", SIGNATURE: good[SIGNATURE]}, 9043, "must be Unix seconds"),
        # a signature for another timestamp than the one sent
        ({TIMESTAMP: str(now + 1), SIGNATURE: good[SIGNATURE]}, 9044, "X-Gizwits-Signature"),
    ]
    for headers, code, detail in cases:
        reply = bind_mac(http, user, product, device.mac, headers=headers)
        assert_error(reply, code, 400, detail)
    assert listed(http, user, show_disabled=1) == []
    assert_error(http.get(f"/app/devices/{device.did}", headers=user.headers()), 9017, 401)


def test_bind_mac_names_what_is_wrong_with_the_request(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    user = sign_up(http, app["appid"])
    unknown = bind_mac(http, user, product, new_mac())
    assert_error(unknown, 9014, 404)
    other = Product(uuid.uuid4().hex, product.product_secret)
    assert_error(bind_mac(http, user, other, device.mac, headers=signed(other)), 9002, 400)
    bodies: list[tuple[dict[str, Any], str]] = [
        ({"mac": 42}, "mac: expected str, got int"),
        ({"mac": "zz"}, "mac: must be 12 hex digits"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"dev_alias": "x" * 129}, "dev_alias: at most 128 characters"),
        ({"remark": ["r"]}, "remark: expected str | null, got array"),
        ({"set_owner": 2}, "set_owner"),
    ]
    for change, detail in bodies:
        body = {"product_key": product.product_key, "mac": device.mac, **change}
        reply = http.post("/app/bind_mac", json=body, headers={**user.headers(), **signed(product)})
        assert_error(reply, 9015, 400, detail)
    missing = http.post(
        "/app/bind_mac", json={"mac": device.mac}, headers={**user.headers(), **signed(product)}
    )
    assert_error(missing, 9015, 400, "product_key: is required")
    for raw in (b"", b"{nope", b"[1]"):
        reply = http.post(
            "/app/bind_mac", content=raw, headers={**user.headers(), **signed(product)}
        )
        assert_error(reply, 9015, 400, "body")
    assert listed(http, user) == []


def test_disabled_devices_cannot_be_bound(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    user = sign_up(http, app["appid"])
    set_disabled(http, device.did, True)
    assert_error(bind_mac(http, user, product, device.mac), 9023, 400)
    outcome = bind_passcodes(http, user, {"did": device.did, "passcode": device.passcode})
    assert outcome.json() == {"success": [], "failed": [device.did]}
    set_disabled(http, device.did, False)
    assert bind_mac(http, user, product, device.mac).status_code == 201


# -- bind by passcode ------------------------------------------------------------------------------


def test_binding_by_passcode_reports_each_device(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    good, wrong, disabled = (register(http, product) for _ in range(3))
    set_disabled(http, disabled.did, True)
    user = sign_up(http, app["appid"])
    reply = bind_passcodes(
        http,
        user,
        {"did": good.did, "passcode": good.passcode, "remark": "", "dev_alias": "my_dev"},
        {"did": wrong.did, "passcode": "WRONGWRONG"},
        {"did": "Z" * 22, "passcode": "ABCDEFGHIJ"},
        {"did": disabled.did, "passcode": disabled.passcode},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": [good.did], "failed": [wrong.did, "Z" * 22, disabled.did]}
    devices = listed(http, user, show_disabled=1)
    assert [(d["did"], d["dev_alias"], d["role"]) for d in devices] == [
        (good.did, "my_dev", "owner")
    ]
    # the wrong passcode left nothing behind: the right one makes the next user the owner
    other = sign_up(http, app["appid"])
    assert bind_passcodes(http, other, {"did": wrong.did, "passcode": wrong.passcode}).json() == {
        "success": [wrong.did],
        "failed": [],
    }
    assert listed(http, other)[0]["role"] == "owner"


def test_malformed_passcode_batches_bind_nothing(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    user = sign_up(http, app["appid"])
    good = {"did": device.did, "passcode": device.passcode}
    cases: list[tuple[Any, str]] = [
        ({}, "devices: is required"),
        ({"devices": []}, "devices: at least one is required"),
        ({"devices": good}, "devices: expected array, got object"),
        ({"devices": [good, {"did": device.did}]}, "devices[1].passcode: is required"),
        ({"devices": [good, {"did": 7, "passcode": "x"}]}, "devices[1].did: expected str, got int"),
        ({"devices": [good, {**good, "colour": "red"}]}, "devices[1].colour: unknown field"),
        ({"devices": [good, good]}, "devices[1].did: "),
        (
            {"devices": [good, {"did": "Z" * 22, "passcode": "x", "dev_alias": "x" * 129}]},
            "devices[1].dev_alias: at most 128 characters",
        ),
        ({"devices": [good] * 101}, "devices: at most 100 per request"),
        ({"devices": [good], "extra": 1}, "extra: unknown field"),
    ]
    for body, detail in cases:
        reply = http.post("/app/bindings", json=body, headers=user.headers())
        assert_error(reply, 9015, 400, detail)
    assert listed(http, user) == []


# -- listing ---------------------------------------------------------------------------------------


def test_the_list_pages_and_shows_disabled_devices_on_request(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    user = sign_up(http, app["appid"])
    devices = [register(http, product) for _ in range(5)]
    reply = bind_passcodes(
        http,
        user,
        *(
            {"did": d.did, "passcode": d.passcode, "dev_alias": f"d{n}"}
            for n, d in enumerate(devices)
        ),
    )
    assert reply.json()["success"] == [d.did for d in devices]
    set_disabled(http, devices[1].did, True)

    everything = listed(http, user, show_disabled=1)
    assert [d["did"] for d in everything] == [d.did for d in devices]
    assert [d["is_disabled"] for d in everything] == [False, True, False, False, False]
    assert all("proto_ver" not in d and "lan_prot_ver" not in d for d in everything)
    enabled = [d.did for n, d in enumerate(devices) if n != 1]
    assert [d["did"] for d in listed(http, user)] == enabled
    pages = [[d["did"] for d in listed(http, user, limit=2, skip=skip)] for skip in (0, 2, 4)]
    assert pages == [enabled[:2], enabled[2:], []]
    assert [d["did"] for d in listed(http, user, limit=2, skip=1, show_disabled=1)] == [
        devices[1].did,
        devices[2].did,
    ]
    versions = listed(http, user, limit=1, show_proto_ver=1, lan_prot_ver=1)
    assert (versions[0]["proto_ver"], versions[0]["lan_prot_ver"]) == ("03", "03")
    item = listed(http, user, limit=1)[0]
    assert item == http.get(f"/app/devices/{item['did']}", headers=user.headers()).json()


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": "0"}, "limit: expected int >= 1"),
        ({"limit": "1001"}, "limit: expected int <= 1000"),
        ({"limit": "ten"}, "limit: must be an integer"),
        ({"skip": "-1"}, "skip: expected int >= 0"),
        ({"show_disabled": "2"}, "show_disabled: expected int <= 1"),
        ({"show_disabled": "yes"}, "show_disabled: must be an integer"),
        ({"show_proto_ver": "-1"}, "show_proto_ver: expected int >= 0"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"limit": ["1", "2"]}, "limit: given more than once"),
    ],
)
def test_bad_list_parameters_answer_9015(
    app: dict[str, str], http: httpx.Client, params: dict[str, Any], detail: str
) -> None:
    user = sign_up(http, app["appid"])
    reply = http.get("/app/bindings", params=params, headers=user.headers())
    assert_error(reply, 9015, 400, detail)


# -- names and labels ------------------------------------------------------------------------------


def test_alias_remark_and_labels_are_per_user(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    owner, guest = sign_up(http, app["appid"]), sign_up(http, app["appid"])
    for user in (owner, guest):
        item = {"did": device.did, "passcode": device.passcode, "dev_alias": "first"}
        assert bind_passcodes(http, user, item).json()["success"] == [device.did]

    reply = http.put(
        f"/app/bindings/{device.did}",
        json={"dev_alias": "Porch", "remark": "by the door", "dev_label": ["pets", "outside"]},
        headers=owner.headers(),
    )
    assert reply.status_code == 200, reply.text
    changed = reply.json()
    assert (changed["did"], changed["role"]) == (device.did, "owner")
    assert (changed["dev_alias"], changed["remark"], changed["dev_label"]) == (
        "Porch",
        "by the door",
        ["pets", "outside"],
    )
    assert http.get(f"/app/devices/{device.did}", headers=owner.headers()).json() == changed
    assert listed(http, owner) == [changed]
    # only the remark: the rest stays
    only = http.put(
        f"/app/bindings/{device.did}", json={"remark": "moved"}, headers=owner.headers()
    ).json()
    assert (only["dev_alias"], only["remark"], only["dev_label"]) == (
        "Porch",
        "moved",
        ["pets", "outside"],
    )
    theirs = http.get(f"/app/devices/{device.did}", headers=guest.headers()).json()
    assert (theirs["dev_alias"], theirs["remark"], theirs["dev_label"]) == ("first", "", [])


def test_renaming_refuses_bad_bodies_and_strangers(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    owner, stranger = sign_up(http, app["appid"]), sign_up(http, app["appid"])
    bind_passcodes(http, owner, {"did": device.did, "passcode": device.passcode})
    path = f"/app/bindings/{device.did}"
    cases: list[tuple[Any, str]] = [
        ({}, "body: give dev_alias, remark or dev_label"),
        ({"dev_alias": None}, "dev_alias: expected str, got null"),
        ({"dev_label": "pets"}, "dev_label: expected array, got str"),
        ({"dev_label": [1]}, "dev_label[0]: expected str, got int"),
        ({"dev_label": ["a", "a"]}, "dev_label[1]: 'a' is given twice"),
        ({"dev_label": [""]}, "dev_label[0]: must be 1 to 32 characters"),
        ({"remark": "x" * 1025, "dev_alias": "ok"}, "remark: at most 1024 characters"),
        ({"role": "owner"}, "role: unknown field"),
    ]
    for body, detail in cases:
        assert_error(http.put(path, json=body, headers=owner.headers()), 9015, 400, detail)
    assert http.get(f"/app/devices/{device.did}", headers=owner.headers()).json()["dev_alias"] == ""
    assert_error(http.put(path, json={"dev_alias": "x"}, headers=stranger.headers()), 9017, 401)
    unknown = http.put(
        f"/app/bindings/{'Q' * 22}", json={"dev_alias": "x"}, headers=owner.headers()
    )
    assert_error(unknown, 9014, 404)


# -- unbinding -------------------------------------------------------------------------------------


def test_unbinding_lists_what_was_not_bound_and_takes_the_guests_along(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    kept, shared, foreign = (register(http, product) for _ in range(3))
    owner, guest, other = (sign_up(http, app["appid"]) for _ in range(3))
    for device in (kept, shared):
        bind_passcodes(http, owner, {"did": device.did, "passcode": device.passcode})
    bind_passcodes(http, guest, {"did": shared.did, "passcode": shared.passcode})
    bind_passcodes(http, other, {"did": foreign.did, "passcode": foreign.passcode})

    reply = unbind(http, owner, shared.did, foreign.did, "Q" * 22)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": [shared.did], "failed": [foreign.did, "Q" * 22]}
    assert [d["did"] for d in listed(http, owner)] == [kept.did]
    assert listed(http, guest) == []  # the owner let it go
    assert [d["did"] for d in listed(http, other)] == [foreign.did]
    assert unbind(http, owner, shared.did).json() == {"success": [], "failed": [shared.did]}

    for body, detail in [
        ({}, "devices: is required"),
        ({"devices": []}, "devices: at least one is required"),
        ({"devices": [{"did": kept.did, "passcode": "x"}]}, "devices[0].passcode: unknown field"),
        ({"devices": [{"did": None}]}, "devices[0].did: expected str, got null"),
    ]:
        refused = http.request("DELETE", "/app/bindings", json=body, headers=owner.headers())
        assert_error(refused, 9015, 400, detail)
    assert_error(http.delete("/app/bindings", headers=owner.headers()), 9015, 400, "body")
    assert [d["did"] for d in listed(http, owner)] == [kept.did]


# -- who is bound, sharing -------------------------------------------------------------------------


def test_bound_users_see_who_else_is_bound_masked(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    owner, guest = sign_up(http, app["appid"]), sign_up(http, app["appid"], email=True)
    stranger = sign_up(http, app["appid"])
    before = int(time.time()) - 1
    for user in (owner, guest):
        bind_passcodes(http, user, {"did": device.did, "passcode": device.passcode})

    reply = http.get(f"/app/{device.did}/bindings", headers=guest.headers())
    assert reply.status_code == 200, reply.text
    users = reply.json()
    stamps = [user.pop("created_at") for user in users]
    local = guest.login.split("@")[0]
    assert users == [
        {
            "uid": owner.uid,
            "username": f"{owner.login[0]}****{owner.login[-1]}",
            "phone": None,
            "email": None,
            "role": "owner",
        },
        {
            "uid": guest.uid,
            "username": None,
            "phone": None,
            "email": f"{local[0]}****{local[-1]}@example.com",
            "role": "guest",
        },
    ]
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), stamp
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= at.timestamp() <= time.time() + 1
    assert http.get(f"/app/{device.did}/bindings", headers=owner.headers()).json() == reply.json()
    assert_error(http.get(f"/app/{device.did}/bindings", headers=stranger.headers()), 9017, 401)
    assert_error(http.get(f"/app/{'Q' * 22}/bindings", headers=owner.headers()), 9014, 404)
    refused = http.get(f"/app/{device.did}/bindings?limit=1", headers=owner.headers())
    assert_error(refused, 9015, 400, "limit: unknown field")


def test_the_owner_removes_a_guest_and_a_guest_cannot_remove_the_owner(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device = register(http, product)
    owner, guest, second = (sign_up(http, app["appid"]) for _ in range(3))
    for user in (owner, guest, second):
        bind_passcodes(http, user, {"did": device.did, "passcode": device.passcode})
    path = f"/app/{device.did}/bindings"

    by_guest = http.delete(path, params={"uid": owner.uid}, headers=guest.headers())
    assert_error(by_guest, 9015, 400, "only the owner")
    assert listed(http, owner)[0]["did"] == device.did

    reply = http.delete(
        path, params={"uid": f"{guest.uid},{owner.uid},nobody"}, headers=owner.headers()
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": [guest.uid], "failed": [owner.uid, "nobody"]}
    assert_error(http.get(f"/app/devices/{device.did}", headers=guest.headers()), 9017, 401)
    assert listed(http, guest) == []
    assert [u["uid"] for u in http.get(path, headers=owner.headers()).json()] == [
        owner.uid,
        second.uid,
    ]
    # the removed guest is now a stranger to the device
    assert_error(http.delete(path, params={"uid": second.uid}, headers=guest.headers()), 9017, 401)

    for params, detail in [
        ({}, "uid: is required"),
        ({"uid": "a,,b"}, "uid: an empty uid"),
        ({"uid": f"{second.uid},{second.uid}"}, "uid: "),
        ({"uid": second.uid, "did": device.did}, "did: unknown field"),
    ]:
        assert_error(http.delete(path, params=params, headers=owner.headers()), 9015, 400, detail)
    assert [u["uid"] for u in http.get(path, headers=owner.headers()).json()] == [
        owner.uid,
        second.uid,
    ]


# -- isolation -------------------------------------------------------------------------------------


def test_a_second_user_can_neither_see_nor_unbind_the_first_users_device(
    app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    device, theirs = register(http, product), register(http, product)
    first, second = sign_up(http, app["appid"]), sign_up(http, app["appid"])
    bind_passcodes(http, first, {"did": device.did, "passcode": device.passcode})
    bind_passcodes(http, second, {"did": theirs.did, "passcode": theirs.passcode})

    assert [d["did"] for d in listed(http, second, show_disabled=1)] == [theirs.did]
    assert unbind(http, second, device.did).json() == {"success": [], "failed": [device.did]}
    put = http.put(f"/app/bindings/{device.did}", json={"dev_alias": "x"}, headers=second.headers())
    assert_error(put, 9017, 401)
    assert_error(http.get(f"/app/{device.did}/bindings", headers=second.headers()), 9017, 401)
    removal = http.delete(
        f"/app/{device.did}/bindings", params={"uid": first.uid}, headers=second.headers()
    )
    assert_error(removal, 9017, 401)
    assert [d["did"] for d in listed(http, first)] == [device.did]
    assert listed(http, first)[0]["dev_alias"] == ""


def test_bindings_are_separate_per_app(
    server: RunningServer, app: dict[str, str], product: Product, http: httpx.Client
) -> None:
    other_app = server.create_app("Bindings elsewhere")
    device = register(http, product)
    here, there = sign_up(http, app["appid"]), sign_up(http, other_app["appid"])
    bind_passcodes(http, here, {"did": device.did, "passcode": device.passcode})
    # the first binder of the other app owns the device there
    elsewhere = bind_mac(http, there, product, device.mac, dev_alias="Theirs")
    assert (elsewhere.status_code, elsewhere.json()["role"]) == (201, "owner")

    assert [
        u["uid"] for u in http.get(f"/app/{device.did}/bindings", headers=here.headers()).json()
    ] == [here.uid]
    removal = http.delete(
        f"/app/{device.did}/bindings", params={"uid": there.uid}, headers=here.headers()
    )
    assert removal.json() == {"success": [], "failed": [there.uid]}
    assert listed(http, there)[0]["dev_alias"] == "Theirs"
    # a token of one app is no good with the other's appid
    crossed = {APP_ID: app["appid"], USER_TOKEN: there.token}
    assert_error(http.get("/app/bindings", headers=crossed), 9004, 400)
    assert unbind(http, here, device.did).json()["success"] == [device.did]
    assert [d["did"] for d in listed(http, there)] == [device.did]


ENDPOINTS: list[tuple[str, str]] = [
    ("POST", "/app/bind_mac"),
    ("POST", "/app/bindings"),
    ("DELETE", "/app/bindings"),
    ("GET", "/app/bindings"),
    ("PUT", "/app/bindings/{did}"),
    ("GET", "/app/{did}/bindings"),
    ("DELETE", "/app/{did}/bindings"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_needs_the_app_and_a_token(
    app: dict[str, str], http: httpx.Client, method: str, path: str
) -> None:
    user = sign_up(http, app["appid"])
    url = path.format(did="Q" * 22)
    assert_error(http.request(method, url, headers={USER_TOKEN: user.token}), 9003, 400)
    assert_error(http.request(method, url, headers={APP_ID: app["appid"]}), 9004, 400, "missing")
    wrong = {APP_ID: app["appid"], USER_TOKEN: "0" * 32}
    assert_error(http.request(method, url, headers=wrong), 9004, 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [e for e in ENDPOINTS if e[0] in ("POST", "PUT", "DELETE") and "{did}/" not in e[1]],
)
def test_bodies_that_are_not_objects_answer_9015(
    app: dict[str, str], product: Product, http: httpx.Client, method: str, path: str
) -> None:
    user = sign_up(http, app["appid"])
    url = path.format(did=register(http, product).did)
    for raw in (b"[]", b'"text"', b"12", b"null", b"{broken", '{"ü": 1'.encode()):
        headers = {**user.headers(), **signed(product), "Content-Type": "application/json"}
        reply = http.request(method, url, content=raw, headers=headers)
        assert_error(reply, 9015, 400, "body")
