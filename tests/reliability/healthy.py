"""Well-behaved devices that keep working while the server is fuzzed.

`HealthyDevices` signs up its own user with its own products (nothing the fuzz corpus knows),
binds a Gizwits device (MQTT 3.1, as GAgent) and a data-template device, brings both online,
and every ``interval`` seconds runs one round: the Gizwits device reports and is sent a control
through ``POST /app/control`` that it must receive; the data-template device reports (its
``report_reply`` must be code 0) and is sent a control through ``AppControlDeviceData`` that it
must receive. Any failure is kept with the round and time it happened in; `assert_healthy`
raises with them, and also checks that a fresh sign-in and ``GET /app/bindings`` still work.

With ``reporters`` (MQTT version and QoS pairs) it also binds a `ReportingDevice` of each kind,
which reports without pause; each round sends every one of them a control through
``POST /app/control`` that its state must take up. `assert_healthy` then also checks that no
reporter lost its connection and that every QoS 1 report that got a PUBACK is in the device's
history, with the values it carried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

import aiomqtt
import httpx

from iotcloud.codecs import Frame, P0Codec, decode_frame, encode_frame
from iotcloud.codecs.frame import CMD_CONTROL, CMD_REPORT
from iotcloud.simulator.device import random_status
from tests.accounts import APP_ID, USER_TOKEN, User, bind
from tests.devices import MqttDevice, eventually, mqtt_port, until_online
from tests.reliability.scene import (
    Products,
    bound_device,
    device_history,
    import_products,
    login,
    sign_up,
)
from tests.server import RunningServer
from tests.tencent import TOKENAPI
from tests.thing_devices import ThingDevice, ThingIdentity, create_thing_device

Reporting = tuple[aiomqtt.ProtocolVersion, int]
"""The MQTT version a `ReportingDevice` speaks and the QoS it reports at."""
COUNTER_BASE: Final = 250
"""Report ``n`` carries ``n % 250`` in LED_R and ``n // 250`` in LED_G (both 0-254)."""
PERSIST_SECONDS: Final = 15.0
"""How long acknowledged reports may take to show in the history."""


class ReportingDevice:
    """A Gizwits device bound to the healthy user, connected by paho (aiomqtt) with MQTT
    ``protocol``, that reports its whole state at ``qos`` every ``interval`` seconds without
    waiting for anything but its own PUBACKs, and takes up each control it receives into its
    state (as GAgent does: its next report answers the control).

    Report ``n`` is numbered in LED_R and LED_G (`COUNTER_BASE`); ``acknowledged`` holds the
    values of every QoS 1 report that got its PUBACK, by number. A failed publish (the device
    was disconnected, or no PUBACK came) is kept in ``failures`` and ends the reporting.
    """

    def __init__(
        self,
        port: int,
        did: str,
        passcode: str,
        kind: Reporting,
        products: Products,
        interval: float = 0.1,
    ) -> None:
        self.did = did
        self.protocol, self.qos = kind
        version = "3.1" if self.protocol == aiomqtt.ProtocolVersion.V31 else "3.1.1"
        self.name = f"{did} (MQTT {version}, QoS {self.qos})"
        self.mqtt = MqttDevice(port, did, passcode, protocol=self.protocol)
        self.codec = P0Codec(products.definition)
        self.state = random_status(products.definition, random.Random(did))
        self.interval = interval
        self.sent = 0
        self.acknowledged: dict[int, dict[str, Any]] = {}
        self.controls: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self._started = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ReportingDevice:
        await self.mqtt.__aenter__()
        self._started = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._report(), name=f"reporter-{self.did}"),
            asyncio.create_task(self._take_controls(), name=f"controlled-{self.did}"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.mqtt.__aexit__(None, None, None)

    @property
    def reporting(self) -> bool:
        return bool(self._tasks) and not self._tasks[0].done()

    async def _report(self) -> None:
        assert self.mqtt.client is not None
        topic = f"dev2app/{self.did}"
        while True:
            n = self.sent
            values = {**self.state, "LED_R": n % COUNTER_BASE, "LED_G": n // COUNTER_BASE}
            frame = Frame(CMD_REPORT, self.codec.encode_status(values))
            try:
                await self.mqtt.client.publish(topic, encode_frame(frame), qos=self.qos)
            except aiomqtt.MqttError as exc:
                at = time.monotonic() - self._started
                self.failures.append(f"{self.name}: report {n} at {at:.1f} s failed: {exc!r}")
                return
            self.sent += 1
            if self.qos:
                self.acknowledged[n] = values
            await asyncio.sleep(self.interval)

    async def _take_controls(self) -> None:
        while True:
            _, payload = await self.mqtt.unread.get()
            frame = decode_frame(payload)
            if frame.cmd == CMD_CONTROL:
                values = self.codec.decode(frame.payload).values
                self.state.update(values)
                self.controls.append(values)

    async def controlled(self, http: httpx.AsyncClient, user: User, value: int) -> None:
        """Send LED_B ``value`` through ``POST /app/control`` as ``user``; return once the
        device has taken it up (10 s at most)."""
        before = len(self.controls)
        sent = await http.post(
            f"/app/control/{self.did}", json={"attrs": {"LED_B": value}}, headers=user.headers()
        )
        assert sent.status_code == 200, f"control of {self.name}: {sent.status_code} {sent.text}"

        async def taken() -> bool:
            return any(c.get("LED_B") == value for c in self.controls[before:])

        await eventually(taken, 10)

    async def missing_reports(self, http: httpx.AsyncClient, user: User) -> list[str]:
        """The acknowledged reports not in the device's history (waiting `PERSIST_SECONDS` for
        them), or stored with other values."""
        expected = dict(self.acknowledged)
        missing: list[str] = []
        deadline = time.monotonic() + PERSIST_SECONDS
        while True:
            stored = {
                attrs["LED_G"] * COUNTER_BASE + attrs["LED_R"]: attrs
                for attrs in await device_history(http, user, self.did)
            }
            missing = [
                f"{self.name}: acknowledged report {n} "
                + ("not stored" if n not in stored else f"stored as {stored[n]}, sent {values}")
                for n, values in expected.items()
                if n not in stored or not _same(stored[n], values)
            ]
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.5)


def _same(stored: dict[str, Any], sent: dict[str, Any]) -> bool:
    return all(stored.get(name) == sent[name] for name in ("LED_R", "LED_G", "LED_B"))


class HealthyDevices:
    """See the module docstring. Enter it before the fuzz and leave it after."""

    def __init__(
        self,
        server: RunningServer,
        appid: str,
        interval: float = 0.5,
        reporters: Sequence[Reporting] = (),
    ) -> None:
        self.server = server
        self.appid = appid
        self.interval = interval
        self.reporting = list(reporters)
        self.reporters: list[ReportingDevice] = []
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
        self.did, self.passcode = await bound_device(http, self.user, self.products)
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
        for kind in self.reporting:
            did, passcode = await bound_device(http, self.user, self.products)
            port = mqtt_port(self.server)
            reporter = ReportingDevice(port, did, passcode, kind, self.products)
            self.reporters.append(await reporter.__aenter__())
            await until_online(http, self.user, did)
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
        for reporter in self.reporters:
            await reporter.__aexit__(None, None, None)
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
        await asyncio.gather(*(r.controlled(http, self.user, value) for r in self.reporters))

    async def assert_healthy(self, min_rounds: int = 2) -> None:
        """No round failed, at least ``min_rounds`` ran, every reporter is still reporting and
        its acknowledged reports are stored, and the server still signs a user in and lists
        their devices."""
        failures = [*self.failures]
        for reporter in self.reporters:
            failures += reporter.failures
            if not reporter.failures and not reporter.reporting:
                failures.append(f"{reporter.name}: stopped reporting")
            failures += await reporter.missing_reports(self._http, self.user)
        assert not failures, "well-behaved devices disturbed:\n" + "\n".join(failures[:50])
        assert self.rounds >= min_rounds, f"only {self.rounds} rounds ran"
        token = await login(self._http, self.appid, self.username)
        listed = await self._http.get(
            "/app/bindings", headers={APP_ID: self.appid, USER_TOKEN: token}
        )
        assert listed.status_code == 200, listed.text
        dids = {item["did"] for item in listed.json()["devices"]}
        assert dids == {self.did, self.thing.did, *(r.did for r in self.reporters)}, listed.text
