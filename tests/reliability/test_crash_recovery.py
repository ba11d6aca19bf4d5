"""kill -9 under load: what the server acknowledged survives.

A real server (SQLite, and PostgreSQL) takes concurrent sign-ups (``POST /app/users``),
bindings (``POST /app/bind_mac``, 201, and ``POST /app/bindings``, 200 with the did in
``success``) and schedule creations (``POST /app/scheduler``, 201) from several clients; every
acknowledged request is recorded. The server is killed with SIGKILL while requests are in flight
and started again on the same data directory and database: every user signs in, every binding
is listed, every schedule exists.

A PUBACK is an acknowledgement too: a device publishes `REPORTS` QoS 1 reports (at most
`IN_FLIGHT` unacknowledged, as paho sends them) and gets a PUBACK for each; the server is killed
with SIGKILL right after the last PUBACK and started again, then the same with another device
and a kill up to `KILL_WITHIN` seconds after it (a delay drawn from ``IOTCLOUD_FUZZ_SEED``):
each device's history holds every one of its reports, once, with the values it carried.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from iotcloud.codecs import Frame, P0Codec, encode_frame
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.simulator.device import random_status
from tests.accounts import APP_ID, USER_TOKEN, User
from tests.devices import mqtt_port
from tests.reliability import mqtt_wire as wire
from tests.reliability.fuzzing import FuzzPlan
from tests.reliability.mqtt_fleet import Device, gizwits_device
from tests.reliability.scene import (
    PASSWORD,
    QUICK_SERVER,
    Products,
    bound_device,
    device_history,
    import_products,
    register_device,
    schedule_body,
    sign_up,
)
from tests.server import RunningServer, make_server

CLIENTS: Final = 12
LOAD_SECONDS: Final = 3.0
"""How long the load runs before the kill (it goes on while the server dies)."""
DEVICES: Final = 80
REPORTS: Final = 200
IN_FLIGHT: Final = 20
KILL_WITHIN: Final = 0.25


@dataclass
class Acknowledged:
    """What the server answered with success: users by name (uid), bindings and schedules
    by user name."""

    users: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, set[str]] = field(default_factory=dict)
    schedules: dict[str, set[str]] = field(default_factory=dict)
    interrupted: int = 0
    """Requests that got no answer (the server died under them)."""


@dataclass
class Member:
    username: str
    token: str
    dids: list[str] = field(default_factory=list)


class Load:
    """`CLIENTS` clients signing up, binding and scheduling until told to stop."""

    def __init__(
        self, http: httpx.AsyncClient, appid: str, products: Products, devices: list[str]
    ) -> None:
        self.http = http
        self.appid = appid
        self.products = products
        self.devices = devices  # (did, mac, passcode) strings joined by "/"
        self.done = Acknowledged()
        self.stop = asyncio.Event()

    async def client(self, seed: int) -> None:
        rng = random.Random(seed)
        members: list[Member] = []
        while not self.stop.is_set():
            roll = rng.random()
            try:
                if not members or roll < 0.35:
                    member = await self.sign_up()
                    if member is not None:
                        members.append(member)
                elif roll < 0.7 and self.devices:
                    await self.bind(rng.choice(members), self.devices.pop(), rng)
                else:
                    await self.schedule(rng.choice(members))
            except httpx.HTTPError:
                self.done.interrupted += 1
                await asyncio.sleep(0.05)

    async def sign_up(self) -> Member | None:
        username = "k" + uuid.uuid4().hex[:14]
        reply = await self.http.post(
            "/app/users",
            json={"username": username, "password": PASSWORD},
            headers={APP_ID: self.appid},
        )
        if reply.status_code != 201:
            return None
        self.done.users[username] = reply.json()["uid"]
        return Member(username, reply.json()["token"])

    async def bind(self, member: Member, device: str, rng: random.Random) -> None:
        did, mac, passcode = device.split("/")
        headers = {APP_ID: self.appid, USER_TOKEN: member.token}
        if rng.random() < 0.5:
            reply = await self.http.post(
                "/app/bind_mac",
                json={"product_key": self.products.product_key, "mac": mac},
                headers={**headers, **self.products.signed()},
            )
            bound = reply.status_code == 201
        else:
            reply = await self.http.post(
                "/app/bindings",
                json={"devices": [{"did": did, "passcode": passcode}]},
                headers=headers,
            )
            bound = reply.status_code == 200 and reply.json()["success"] == [did]
        if bound:
            member.dids.append(did)
            self.done.bindings.setdefault(member.username, set()).add(did)

    async def schedule(self, member: Member) -> None:
        if not member.dids:
            return
        reply = await self.http.post(
            "/app/scheduler",
            json=schedule_body(member.dids[-1], self.products.product_key),
            headers={APP_ID: self.appid, USER_TOKEN: member.token},
        )
        if reply.status_code == 201:
            self.done.schedules.setdefault(member.username, set()).add(reply.json()["id"])


async def missing_after_restart(
    http: httpx.AsyncClient, appid: str, done: Acknowledged
) -> list[str]:
    """What of ``done`` the restarted server does not have."""
    missing: list[str] = []
    slots = asyncio.Semaphore(10)

    async def check(username: str) -> None:
        async with slots:
            signed_in = await http.post(
                "/app/login",
                json={"username": username, "password": PASSWORD},
                headers={APP_ID: appid},
            )
            if signed_in.status_code != 200:
                missing.append(f"user {username}: sign-in answered {signed_in.text}")
                return
            headers = {APP_ID: appid, USER_TOKEN: signed_in.json()["token"]}
            listed = await http.get("/app/bindings", params={"limit": 100}, headers=headers)
            bound = {item["did"] for item in listed.json()["devices"]}
            for did in done.bindings.get(username, set()) - bound:
                missing.append(f"user {username}: binding of {did}")
            schedules = await http.get("/app/scheduler", params={"limit": 100}, headers=headers)
            stored = {item["id"] for item in schedules.json()}
            for schedule_id in done.schedules.get(username, set()) - stored:
                missing.append(f"user {username}: schedule {schedule_id}")

    await asyncio.gather(*(check(username) for username in done.users))
    return missing


async def test_what_was_acknowledged_survives_kill_9(database_url: str, tmp_path: Path) -> None:
    server = make_server(tmp_path / "data", database_url, **QUICK_SERVER)
    await asyncio.to_thread(server.start)
    try:
        await run_and_kill(server)
    finally:
        server.stop()


async def run_and_kill(server: RunningServer) -> None:
    app = await asyncio.to_thread(server.create_app, "Crash")
    products = await import_products(server)
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, limits=limits) as http:
        devices = await asyncio.gather(*(register_device(http, products) for _ in range(DEVICES)))
        load = Load(http, app["appid"], products, ["/".join(device) for device in devices])
        clients = [asyncio.create_task(load.client(seed)) for seed in range(CLIENTS)]
        await asyncio.sleep(LOAD_SECONDS)
        killed_at = time.monotonic()
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.process.wait)
        await asyncio.sleep(0.5)  # the clients run into the dead server
        load.stop.set()
        await asyncio.gather(*clients)
    done = load.done
    await asyncio.to_thread(server.start)
    restarted = time.monotonic() - killed_at
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        missing = await missing_after_restart(http, app["appid"], done)
    counts = (
        f"{len(done.users)} sign-ups, {sum(map(len, done.bindings.values()))} bindings, "
        f"{sum(map(len, done.schedules.values()))} schedules acknowledged, "
        f"{done.interrupted} requests cut off; back in {restarted:.1f} s"
    )
    print(f"kill -9: {counts}")
    assert done.users, counts
    assert done.bindings, counts
    assert done.schedules, counts
    assert not missing, f"lost after kill -9 ({counts}):\n" + "\n".join(missing[:50])


async def test_acknowledged_qos1_reports_survive_kill_9(
    database_url: str, tmp_path: Path, fuzz_plan: FuzzPlan
) -> None:
    server = make_server(tmp_path / "data", database_url, **QUICK_SERVER)
    await asyncio.to_thread(server.start)
    rng = fuzz_plan.rng(f"puback-kill/{database_url.split(':')[0]}")
    try:
        app = await asyncio.to_thread(server.create_app, "Durable reports")
        products = await import_products(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            _, uid, token = await sign_up(http, app["appid"], "durable")
        user = User(app["appid"], uid, token)
        reported: dict[str, str] = {}
        for delay in (0.0, rng.uniform(0, KILL_WITHIN)):
            did = await report_and_kill(server, user, products, delay)
            reported[did] = f"killed {delay * 1000:.0f} ms after its last PUBACK"
            await asyncio.to_thread(server.start)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                for did, when in reported.items():
                    stored = [attrs.get("LED_R") for attrs in await device_history(http, user, did)]
                    assert_exactly_reported(stored, f"device {did}, {when}", fuzz_plan)
    finally:
        server.stop()


async def report_and_kill(
    server: RunningServer, user: User, products: Products, delay: float
) -> str:
    """A new device of ``user`` publishes `REPORTS` reports at QoS 1 (LED_R 0, 1, ...), each
    acknowledged; ``delay`` seconds after the last PUBACK the server is killed. The did."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        did, passcode = await bound_device(http, user, products)
    device = gizwits_device(did, passcode, products.product_key, 4)
    codec = P0Codec(products.definition)
    status = random_status(products.definition, random.Random(did))
    frames = [
        encode_frame(Frame(CMD_REPORT, codec.encode_status({**status, "LED_R": n})))
        for n in range(REPORTS)
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", mqtt_port(server))
    try:
        await publish_acknowledged(reader, writer, device, frames)
        await asyncio.sleep(delay)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.process.wait)
    finally:
        writer.close()
    return did


def assert_exactly_reported(stored: list[Any], what: str, plan: FuzzPlan) -> None:
    """``stored`` (LED_R of each report in the history) is 0 to `REPORTS` - 1, each once."""
    lost = sorted(set(range(REPORTS)) - set(stored))
    repeated = sorted(n for n in set(stored) if stored.count(n) > 1)
    assert sorted(stored) == list(range(REPORTS)), (
        f"{what}: {len(stored)} reports stored of {REPORTS} acknowledged with a PUBACK "
        f"(repeat with {plan.reproduce()}); lost {len(lost)}: {lost[:20]}; "
        f"stored twice: {repeated[:20]}"
    )


async def publish_acknowledged(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, device: Device, frames: list[bytes]
) -> None:
    """Sign ``device`` in and publish ``frames`` on ``dev2app/{did}`` at QoS 1 (packet ids 1,
    2, ...; at most `IN_FLIGHT` without their PUBACK); return once each has its PUBACK."""
    writer.write(device.connect(keepalive=60))
    received = bytearray()
    sent, acknowledged = 0, set[int]()
    async with asyncio.timeout(60):
        while not any(p.kind == wire.CONNACK for p in wire.parse(bytes(received))):
            received += await reader.read(65_536)
        assert wire.parse(bytes(received))[0].return_code == 0, received
        while len(acknowledged) < len(frames):
            while sent < len(frames) and sent - len(acknowledged) < IN_FLIGHT:
                topic = f"dev2app/{device.did}"
                writer.write(wire.publish(topic, frames[sent], qos=1, packet_id=sent + 1))
                sent += 1
            await writer.drain()
            chunk = await reader.read(65_536)
            assert chunk, f"connection closed after {len(acknowledged)} PUBACKs"
            received += chunk
            acknowledged = {
                p.packet_id for p in wire.parse(bytes(received)) if p.kind == wire.PUBACK
            }
