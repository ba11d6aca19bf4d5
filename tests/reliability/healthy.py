"""Well-behaved devices that keep working while the server is fuzzed.

`HealthyDevices` signs up its own user with its own products (nothing the fuzz corpus knows),
binds a Gizwits device (MQTT 3.1, as GAgent) and a data-template device, brings both online,
and every ``interval`` seconds runs one round: the Gizwits device reports and is sent a control
through ``POST /app/control`` that it must receive; the data-template device reports (its
``report_reply`` must be code 0) and is sent a control through ``AppControlDeviceData`` that it
must receive. Any failure is kept with the round and time it happened in; `assert_healthy`
raises with them, and also checks that a fresh sign-in and ``GET /app/bindings`` still work.
"""

from __future__ import annotations

import asyncio
import random
import time
from types import TracebackType

import aiomqtt
import httpx

from iotcloud.codecs import P0Codec
from iotcloud.simulator.device import random_status
from tests.accounts import APP_ID, USER_TOKEN, User, bind
from tests.devices import MqttDevice, eventually, mqtt_port, until_online
from tests.reliability.scene import Products, import_products, login, register_device, sign_up
from tests.server import RunningServer
from tests.tencent import TOKENAPI
from tests.thing_devices import ThingDevice, ThingIdentity, create_thing_device


class HealthyDevices:
    """See the module docstring. Enter it before the fuzz and leave it after."""

    def __init__(self, server: RunningServer, appid: str, interval: float = 0.5) -> None:
        self.server = server
        self.appid = appid
        self.interval = interval
        self.rounds = 0
        self.failures: list[str] = []
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(base_url=server.base_url, timeout=30)
        self._rng = random.Random(0)

    async def __aenter__(self) -> HealthyDevices:
        http = self._http
        self.products: Products = await import_products(self.server)
        self.username, uid, token = await sign_up(http, self.appid, "healthy")
        self.user = User(self.appid, uid, token)
        self.did, _, self.passcode = await register_device(http, self.products)
        bound = await http.post(
            "/app/bindings",
            json={"devices": [{"did": self.did, "passcode": self.passcode}]},
            headers=self.user.headers(),
        )
        assert bound.json()["success"] == [self.did], bound.text
        self.thing: ThingIdentity = await create_thing_device(
            self.server, self.products.thing_product_id
        )
        await bind(self.server, self.user, self.thing.did)
        self.codec = P0Codec(self.products.definition)
        self.gizwits = MqttDevice(
            mqtt_port(self.server), self.did, self.passcode, protocol=aiomqtt.ProtocolVersion.V31
        )
        self.thing_device = ThingDevice.on_server(self.server, self.thing)
        await self.gizwits.__aenter__()
        await self.thing_device.__aenter__()
        await until_online(http, self.user, self.did)
        await until_online(http, self.user, self.thing.did)
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="healthy-devices")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.thing_device.__aexit__(None, None, None)
        await self.gizwits.__aexit__(None, None, None)
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(25):
                    await self._round(self.rounds)
            except Exception as exc:  # kept and raised by assert_healthy
                at = time.monotonic() - self._started
                self.failures.append(f"round {self.rounds} at {at:.1f} s: {exc!r}")
            self.rounds += 1
            await asyncio.sleep(self.interval)

    async def _round(self, n: int) -> None:
        http, headers = self._http, self.user.headers()
        status = random_status(self.products.definition, self._rng)
        value = n % 200  # within every uint8 attr's range
        await self.gizwits.report(self.codec, {**status, "LED_R": value})
        while not self.gizwits.unread.empty():
            self.gizwits.unread.get_nowait()
        sent = await http.post(
            f"/app/control/{self.did}", json={"attrs": {"LED_R": value}}, headers=headers
        )
        assert sent.status_code == 200, f"control: {sent.status_code} {sent.text}"
        await self.gizwits.next_frame()

        reply = await self.thing_device.report({"brightness": n % 101})
        assert reply.get("code") == 0, f"report_reply: {reply}"
        before = len(self.thing_device.controls)
        answer = await http.post(
            TOKENAPI,
            json={
                "Action": "AppControlDeviceData",
                "AccessToken": self.user.token,
                "ProductId": self.thing.product_id,
                "DeviceName": self.thing.name,
                "Data": f'{{"power_switch": {n % 2}}}',
            },
        )
        assert "Error" not in answer.json()["Response"], f"AppControlDeviceData: {answer.text}"

        async def controlled() -> bool:
            return len(self.thing_device.controls) > before

        await eventually(controlled, 10)

    async def assert_healthy(self, min_rounds: int = 2) -> None:
        """No round failed, at least ``min_rounds`` ran, and the server still signs a user in
        and lists their devices."""
        assert not self.failures, "well-behaved devices disturbed:\n" + "\n".join(self.failures)
        assert self.rounds >= min_rounds, f"only {self.rounds} rounds ran"
        token = await login(self._http, self.appid, self.username)
        listed = await self._http.get(
            "/app/bindings", headers={APP_ID: self.appid, USER_TOKEN: token}
        )
        assert listed.status_code == 200, listed.text
        dids = {item["did"] for item in listed.json()["devices"]}
        assert dids == {self.did, self.thing.did}, listed.text
