"""Users who own things on a running server, made through its public APIs as an app and a
device would: a signed-up user with a Gizwits device bound (with a remark and an alias), a
``/app/scheduler`` schedule, a per-device schedule, a Tencent timer, and a data-template device
bound. The suite calls every route naming these, with every kind of wrong credentials."""

from __future__ import annotations

import hashlib
import json
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiomqtt
import httpx

from iotcloud.codecs import ProductDefinition, parse_product_definition
from tests.accounts import APP_ID, USER_TOKEN, User, bind
from tests.devices import FIXTURES, MqttDevice, mqtt_port
from tests.server import ADMIN_TOKEN, RunningServer
from tests.tencent import TOKENAPI
from tests.thing_devices import (
    ThingDevice,
    ThingIdentity,
    create_thing_device,
    import_thing_product,
)

PASSWORD = "pw-123456"
QUICK_SERVER: Final[dict[str, Any]] = {
    # no throttling: fuzz cases and load are meant to reach the handlers
    "rate_limit_per_address": 0,
    "rate_limit_per_app": 0,
    # cheap password hashes: sign-ups and sign-ins are among the requests, not the cost
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
}
"""Settings of the servers the suite starts for itself."""
TIMESTAMP = "X-Gizwits-Timestamp"
SIGNATURE = "X-Gizwits-Signature"


@dataclass(frozen=True)
class Products:
    """A Gizwits product (pet house) and a data-template product (light) on one server."""

    product_key: str
    product_secret: str
    definition: ProductDefinition
    thing_product_id: str

    def signed(self) -> dict[str, str]:
        """The ``bind_mac`` headers: the current timestamp signed with the product secret."""
        ts = str(int(time.time()))
        digest = hashlib.md5((self.product_secret + ts).encode(), usedforsecurity=False)
        return {TIMESTAMP: ts, SIGNATURE: digest.hexdigest()}


@dataclass(frozen=True)
class Owned:
    """A user and what they own, as the routes name it."""

    appid: str
    username: str
    uid: str
    token: str
    products: Products
    did: str
    mac: str
    passcode: str
    remark: str
    alias: str
    schedule_id: str
    device_schedule_id: str
    timer_id: str
    thing: ThingIdentity

    @property
    def product_key(self) -> str:
        return self.products.product_key

    @property
    def family_id(self) -> str:
        return "f_" + self.uid

    def headers(self) -> dict[str, str]:
        return {APP_ID: self.appid, USER_TOKEN: self.token}

    def as_user(self) -> User:
        return User(self.appid, self.uid, self.token)

    def private(self) -> dict[str, str]:
        """What nobody else may learn from the server, by name."""
        return {
            "uid": self.uid,
            "username": self.username,
            "did": self.did,
            "mac": self.mac,
            "passcode": self.passcode,
            "remark": self.remark,
            "alias": self.alias,
            "schedule id": self.schedule_id,
            "device schedule id": self.device_schedule_id,
            "timer id": self.timer_id,
            "thing did": self.thing.did,
            "thing name": self.thing.name,
            "thing psk": self.thing.psk,
        }


def operator(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    )


async def import_products(server: RunningServer) -> Products:
    """The pet house datapoints and the light template under fresh keys (operator API)."""
    data = json.loads((FIXTURES / "pet_house.json").read_text())
    data["product_key"] = uuid.uuid4().hex
    async with operator(server) as http:
        made = await http.post("/admin/v1/products", json=data)
    assert made.status_code == 201, made.text
    thing_product_id = await import_thing_product(server)
    return Products(
        made.json()["product_key"],
        made.json()["product_secret"],
        parse_product_definition(data),
        thing_product_id,
    )


def new_mac() -> str:
    return "02" + secrets.token_hex(5)


def new_passcode() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


async def register_device(
    http: httpx.AsyncClient, products: Products, passcode: str | None = None
) -> tuple[str, str, str]:
    """A Gizwits device registering itself with a fresh MAC: ``(did, mac, passcode)``."""
    mac, passcode = new_mac(), passcode or new_passcode()
    reply = await http.post(
        "/dev/devices",
        content=f"passcode={passcode}&mac={mac}&product_key={products.product_key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 201, reply.text
    return reply.text.split("did=", 1)[1][:22], mac, passcode


async def bound_device(http: httpx.AsyncClient, user: User, products: Products) -> tuple[str, str]:
    """A Gizwits device registered (`register_device`) and bound to ``user`` with its passcode
    (``POST /app/bindings``): ``(did, passcode)``."""
    did, _, passcode = await register_device(http, products)
    bound = await http.post(
        "/app/bindings",
        json={"devices": [{"did": did, "passcode": passcode}]},
        headers=user.headers(),
    )
    assert bound.status_code == 200, bound.text
    assert bound.json()["success"] == [did], bound.text
    return did, passcode


async def device_history(http: httpx.AsyncClient, user: User, did: str) -> list[dict[str, Any]]:
    """The attrs of every report in ``did``'s history, oldest first (``GET /app/devdata/{did}``
    page by page, as ``user``)."""
    found: list[dict[str, Any]] = []
    while True:
        page = await http.get(
            f"/app/devdata/{did}",
            params={"sort": "asc", "limit": 1000, "skip": len(found)},
            headers=user.headers(),
        )
        assert page.status_code == 200, page.text
        objects = page.json()["objects"]
        found += [item["attrs"] for item in objects]
        if not objects or len(found) >= page.json()["meta"]["total"]:
            return found


async def sign_up(http: httpx.AsyncClient, appid: str, label: str) -> tuple[str, str, str]:
    """A new user of ``appid``: ``(username, uid, token)``."""
    username = f"{label}{uuid.uuid4().hex[:12]}"
    reply = await http.post(
        "/app/users", json={"username": username, "password": PASSWORD}, headers={APP_ID: appid}
    )
    assert reply.status_code == 201, reply.text
    return username, reply.json()["uid"], reply.json()["token"]


async def login(http: httpx.AsyncClient, appid: str, username: str) -> str:
    """A new token of ``username``."""
    reply = await http.post(
        "/app/login", json={"username": username, "password": PASSWORD}, headers={APP_ID: appid}
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["token"])


def tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).date().isoformat()


def schedule_body(did: str, product_key: str) -> dict[str, Any]:
    """A ``POST /app/scheduler`` body: one task on ``did``, tomorrow at noon."""
    return {
        "date": tomorrow(),
        "time": "12:00",
        "repeat": "none",
        "task": [{"did": did, "product_key": product_key, "attrs": {"LED_OnOff": True}}],
        "retry_count": 1,
        "retry_task": "all",
    }


def device_schedule_body(remark: str) -> dict[str, Any]:
    """A ``POST /app/devices/{did}/scheduler`` body."""
    return {"time": "02:30", "repeat": "day", "attrs": {"LED_OnOff": True}, "remark": remark}


def timer_params(product_key: str, mac: str) -> dict[str, Any]:
    """The parameters of an ``AppCreateTimer`` for the Gizwits device ``mac``."""
    return {
        "ProductId": product_key,
        "DeviceName": mac,
        "TimerName": "lights on",
        "Days": "0111110",
        "TimePoint": "06:30",
        "Repeat": 1,
        "Data": '{"LED_OnOff": 1}',
    }


async def new_owner(
    server: RunningServer, http: httpx.AsyncClient, appid: str, products: Products, label: str
) -> Owned:
    """A user of ``appid`` owning one of everything (see the module docstring)."""
    username, uid, token = await sign_up(http, appid, label)
    headers = {APP_ID: appid, USER_TOKEN: token}
    did, mac, passcode = await register_device(http, products)
    remark = f"remark-{label}-{secrets.token_hex(6)}"
    alias = f"alias-{label}-{secrets.token_hex(6)}"
    item = {"did": did, "passcode": passcode, "remark": remark, "dev_alias": alias}
    bound = await http.post("/app/bindings", json={"devices": [item]}, headers=headers)
    assert bound.status_code == 200, bound.text
    assert bound.json()["success"] == [did], bound.text
    made = await http.post(
        "/app/scheduler", json=schedule_body(did, products.product_key), headers=headers
    )
    assert made.status_code == 201, made.text
    device_made = await http.post(
        f"/app/devices/{did}/scheduler", json=device_schedule_body(remark), headers=headers
    )
    assert device_made.status_code == 201, device_made.text
    timer = await http.post(
        TOKENAPI,
        json={
            "Action": "AppCreateTimer",
            "AccessToken": token,
            "RequestId": "setup",
            **timer_params(products.product_key, mac),
        },
    )
    assert "Data" in timer.json()["Response"], timer.text
    thing = await create_thing_device(server, products.thing_product_id)
    await bind(server, User(appid, uid, token), thing.did)
    return Owned(
        appid=appid,
        username=username,
        uid=uid,
        token=token,
        products=products,
        did=did,
        mac=mac,
        passcode=passcode,
        remark=remark,
        alias=alias,
        schedule_id=made.json()["id"],
        device_schedule_id=device_made.json()["id"],
        timer_id=timer.json()["Response"]["Data"]["TimerId"],
        thing=thing,
    )


@asynccontextmanager
async def devices_online(
    server: RunningServer, owned: Owned
) -> AsyncIterator[tuple[MqttDevice, ThingDevice]]:
    """``owned``'s two devices connected, so that commands reach a device: the Gizwits one as
    a bare MQTT 3.1 client, the data-template one answering controls and actions with code 0."""
    gizwits = MqttDevice(
        mqtt_port(server), owned.did, owned.passcode, protocol=aiomqtt.ProtocolVersion.V31
    )
    async with gizwits, ThingDevice.on_server(server, owned.thing) as thing:
        yield gizwits, thing
