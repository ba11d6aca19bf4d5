"""kill -9 under load: what the server acknowledged survives.

A real server (SQLite, and PostgreSQL) takes concurrent sign-ups (``POST /app/users``),
bindings (``POST /app/bind_mac``, 201, and ``POST /app/bindings``, 200 with the did in
``success``) and schedule creations (``POST /app/scheduler``, 201) from several clients; every
acknowledged request is recorded. The server is killed with SIGKILL while requests are in flight
and started again on the same data directory and database: every user signs in, every binding
is listed, every schedule exists.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from tests.accounts import APP_ID, USER_TOKEN
from tests.reliability.scene import (
    PASSWORD,
    QUICK_SERVER,
    Products,
    import_products,
    register_device,
    schedule_body,
)
from tests.server import RunningServer, make_server

CLIENTS: Final = 12
LOAD_SECONDS: Final = 3.0
"""How long the load runs before the kill (it goes on while the server dies)."""
DEVICES: Final = 80


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
