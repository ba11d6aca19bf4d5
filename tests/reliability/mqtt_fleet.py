"""Devices as a raw-socket MQTT client signs in with them, and fleets of them on a server.

A `Device` builds its own CONNECT (`mqtt_wire`), so a fuzz corpus can send it whole, change any
of its fields or bytes, or follow it with anything; it also knows which topics are its own.
`register_fleet` makes the Gizwits devices (did and passcode, MQTT 3.1 and 3.1.1 alternately)
and data-template devices (``$thing`` topics, signed user names) of one fuzz module;
`still_online` tells which of them the server still counts online once the corpus is done.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from iotcloud.domain.thing_auth import device_password
from tests.reliability import mqtt_wire as wire
from tests.reliability.scene import Products, import_products, operator, register_device
from tests.server import RunningServer
from tests.thing_devices import SDK_APPID, ThingIdentity, create_thing_device

OFFLINE_SECONDS: Final = 15.0


@dataclass(frozen=True)
class Device:
    """A device identity as it signs in, and the topics that are its own."""

    did: str
    client_id: str
    password: str
    level: int
    thing: ThingIdentity | None = None
    product_key: str = ""

    @property
    def username(self) -> str:
        if self.thing is None:
            return self.client_id
        return f"{self.client_id};{SDK_APPID};abcde;{int(time.time()) + 3600}"

    def password_for(self, username: str) -> str:
        if self.thing is None:
            return self.password
        return device_password(self.thing.psk, username)

    def connect(self, **options: Any) -> bytes:
        username = self.username
        name = "MQIsdp" if self.level == 3 else "MQTT"
        options = {"name": name, "level": self.level, **options}
        return wire.connect(self.client_id, username, self.password_for(username), **options)

    def own_topic(self, topic: str) -> bool:
        """Whether the cloud may send this device a message on ``topic``."""
        if self.thing is not None:
            pid, name = self.thing.product_id, self.thing.name
            return topic.startswith("$thing/down/") and topic.endswith(f"/{pid}/{name}")
        return (
            topic.startswith(
                (
                    f"app2dev/{self.did}/",
                    f"ser2cli_res/{self.did}",
                    f"ser2cli_noti/{self.product_key}",
                )
            )
            or topic == f"app2dev/{self.did}"
        )

    def uplinks(self) -> list[str]:
        if self.thing is not None:
            pid, name = self.thing.product_id, self.thing.name
            return [f"$thing/up/{kind}/{pid}/{name}" for kind in ("property", "event", "action")]
        return [f"dev2app/{self.did}", f"dev2app/{self.did}/client1", "cli2ser_req"]

    def own_filters(self) -> list[str]:
        if self.thing is not None:
            pid, name = self.thing.product_id, self.thing.name
            return [f"$thing/down/{kind}/{pid}/{name}" for kind in ("property", "action")]
        return [f"app2dev/{self.did}/#", f"ser2cli_res/{self.did}"]


def gizwits_device(did: str, passcode: str, product_key: str, level: int) -> Device:
    return Device(did, did, passcode, level, product_key=product_key)


def thing_device(identity: ThingIdentity) -> Device:
    client_id = identity.product_id + identity.name
    return Device(identity.did, client_id, "", 4, identity, identity.product_id)


@dataclass(frozen=True)
class Fleet:
    products: Products
    gizwits: list[Device]
    things: list[Device]

    @property
    def devices(self) -> list[Device]:
        return self.gizwits + self.things


async def register_fleet(server: RunningServer, gizwits: int, things: int) -> Fleet:
    """``gizwits`` Gizwits devices (MQTT 3.1 and 3.1.1 alternately) and ``things``
    data-template devices of fresh products on ``server``, made as a device and an operator
    would (``POST /dev/devices``, ``POST /admin/v1/devices``)."""
    products = await import_products(server)
    slots = asyncio.Semaphore(8)

    async def registered(n: int) -> Device:
        async with slots:
            did, _, passcode = await register_device(http, products)
        return gizwits_device(did, passcode, products.product_key, 3 + n % 2)

    async def created() -> Device:
        async with slots:
            return thing_device(await create_thing_device(server, products.thing_product_id))

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        made = await asyncio.gather(*(registered(n) for n in range(gizwits)))
        made_things = await asyncio.gather(*(created() for _ in range(things)))
    return Fleet(products, list(made), list(made_things))


async def still_online(server: RunningServer, devices: list[Device]) -> list[str]:
    """Every connection of ``devices`` is closed: within `OFFLINE_SECONDS` the server counts
    each of them offline (operator API), else a problem per device still online."""
    online: list[str] = []
    async with operator(server) as http:
        deadline = time.monotonic() + OFFLINE_SECONDS
        while time.monotonic() < deadline:
            online = []
            for device in devices:
                shown = await http.get(f"/admin/v1/devices/{device.did}")
                if shown.json()["is_online"]:
                    online.append(device.did)
            if not online:
                return []
            await asyncio.sleep(0.5)
    return [
        f"device {did}: online {OFFLINE_SECONDS:g} s after its last connection closed"
        for did in online
    ]
