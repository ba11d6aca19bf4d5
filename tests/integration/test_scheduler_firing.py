"""Schedules firing in real ``iotcloud serve`` processes, with simulated devices on MQTT.

Every scenario is set up on its own server before one shared due minute, so the module waits
for one minute boundary only:

* ``main`` (SQLite): a two-device schedule that succeeds; an offline device failing a run with
  ``retry_task`` ``failed`` and ``all``; a per-device schedule; a Tencent timer firing its
  ``Data``.
* ``restarted`` (PostgreSQL): killed with SIGKILL before the due time and back within the grace
  window: the occurrence runs exactly once.
* ``late`` (SQLite, 2 s grace): killed before the due time and back after the grace window: the
  occurrence is logged ``missed``, nothing is sent.
* ``interrupted`` (SQLite): killed while its device holds the command unacknowledged: after the
  lease the run is resumed as a retry, logged with the interrupted attempt, and finishes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import pytest

from iotcloud.simulator import VirtualDevice
from tests.accounts import User, bind, sign_up
from tests.conftest import new_database_url
from tests.devices import MqttDevice, Online, Product, eventually, import_product
from tests.pg import PostgresServer
from tests.server import RunningServer, make_server

FAST = {
    "rate_limit_per_address": 0,
    "rate_limit_per_app": 0,
    "scheduler_retry_interval_seconds": 1,
    "scheduler_ack_timeout_seconds": 2,
    "scheduler_lease_seconds": 4,
}
SETUP_MARGIN = 8.0  # seconds from set-up to the due minute, at least (kills come 5 s before)


def auth(user: User) -> dict[str, str]:
    return {"X-Gizwits-Application-Id": user.appid, "X-Gizwits-User-token": user.token}


async def sleep_until(instant: datetime) -> None:
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))


class Stage:
    """A server for one scenario: its app, user and product."""

    def __init__(self, server: RunningServer, product: Product, user: User) -> None:
        self.server = server
        self.product = product
        self.user = user
        self.http = httpx.AsyncClient(base_url=server.base_url, timeout=30)

    def device(self) -> VirtualDevice:
        return VirtualDevice(
            self.product.product_key,
            self.product.definition,
            "02" + uuid.uuid4().hex[:10],
            passcode="ABCDEFGHIJ",
        )

    async def online(self, device: VirtualDevice) -> Online:
        online = Online(self.server, device)
        await online.__aenter__()
        assert device.did is not None
        return online

    async def registered(self, device: VirtualDevice) -> str:
        did = await device.register(self.http)
        await bind(self.server, self.user, did)
        return did

    async def schedule(self, due: datetime, tasks: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "date": due.date().isoformat(),
            "time": due.strftime("%H:%M"),
            "repeat": "none",
            "task": tasks,
            **extra,
        }
        reply = await self.http.post("/app/scheduler", headers=auth(self.user), json=body)
        assert reply.status_code == 201, reply.text
        schedule_id: str = reply.json()["id"]
        return schedule_id

    def task(self, did: str, **attrs: Any) -> dict[str, Any]:
        return {"did": did, "product_key": self.product.product_key, "attrs": attrs}

    async def runs(self, schedule_id: str) -> list[dict[str, Any]]:
        reply = await self.http.get(f"/app/scheduler/{schedule_id}/runs", headers=auth(self.user))
        assert reply.status_code == 200, reply.text
        found: list[dict[str, Any]] = reply.json()
        return found

    async def finished_runs(self, schedule_id: str) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            runs = await self.runs(schedule_id)
            return runs if runs and all(run["status"] != "running" for run in runs) else None

        found: list[dict[str, Any]] = await eventually(probe)
        return found

    async def logs(self, schedule_id: str) -> dict[str, Any]:
        reply = await self.http.get(f"/app/scheduler/{schedule_id}/logs", headers=auth(self.user))
        assert reply.status_code == 200, reply.text
        found: dict[str, Any] = reply.json()
        return found

    async def tencent(self, action: str, **params: Any) -> dict[str, Any]:
        body = {"Action": action, "RequestId": uuid.uuid4().hex, "AccessToken": self.user.token}
        reply = await self.http.post("/api/exploreropen/tokenapi", json={**body, **params})
        assert reply.status_code == 200, reply.text
        response: dict[str, Any] = reply.json()["Response"]
        assert "Error" not in response, response
        return response

    def kill(self) -> None:
        assert self.server.stop(signal.SIGKILL) == -signal.SIGKILL

    async def restart(self) -> None:
        await asyncio.to_thread(self.server.start)


@dataclass
class Fired:
    due: datetime
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    dids: dict[str, str] = field(default_factory=dict)
    controls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    timers: list[dict[str, Any]] = field(default_factory=list)
    raw_commands: list[bytes] = field(default_factory=list)
    device_schedule: dict[str, Any] = field(default_factory=dict)


def recording(device: VirtualDevice, into: list[dict[str, Any]]) -> None:
    """Record every control ``device`` applies (the simulator keeps only the last one)."""

    class Recorder(dict[str, Any]):
        def update(self, *args: Any, **kwargs: Any) -> None:
            values = dict(*args, **kwargs)
            into.append(values)
            super().update(values)

    device.status = Recorder(device.status)


async def new_stage(
    root: Path, name: str, database_url: str | None, started: list[RunningServer], **settings: Any
) -> Stage:
    server = make_server(root / name, database_url, **{**FAST, **settings})
    started.append(server)  # stopped by the fixture whatever happens next
    await asyncio.to_thread(server.start)
    app = await asyncio.to_thread(server.create_app, name)
    user = await asyncio.to_thread(sign_up, server, app["appid"])
    product = await asyncio.to_thread(import_product, server, root / name, "pet_house.json")
    return Stage(server, product, user)


@pytest.fixture(scope="module")
async def fired(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer | str
) -> AsyncIterator[Fired]:
    root = tmp_path_factory.mktemp("firing")
    started: list[RunningServer] = []
    onlines: list[Online] = []
    stages: list[Stage] = []
    try:
        stages = await asyncio.gather(
            new_stage(root, "main", None, started),
            new_stage(root, "restarted", new_database_url(postgres, "postgres", root), started),
            new_stage(root, "late", None, started, scheduler_grace_seconds=2),
            new_stage(root, "interrupted", None, started, scheduler_lease_seconds=4),
        )
        yield await _play(*stages, onlines)
    finally:
        for online in onlines:
            await online.__aexit__(None, None, None)
        for stage in stages:
            await stage.http.aclose()
        for server in started:
            if server.process is not None:
                server.stop()


async def _play(
    main: Stage, restarted: Stage, late: Stage, interrupted: Stage, onlines: list[Online]
) -> Fired:
    # devices: online ones for main, restarted and late; one offline for main's failures
    names = ["a", "b", "a2", "a3", "e", "t", "r", "l"]
    homes = {"a": main, "b": main, "a2": main, "a3": main, "e": main, "t": main}
    homes |= {"r": restarted, "l": late}
    devices = {name: homes[name].device() for name in names}
    controls: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name, device in devices.items():
        recording(device, controls[name])
        onlines.append(await homes[name].online(device))
    dids = {name: devices[name].did or "" for name in names}
    for name in names:
        await bind(homes[name].server, homes[name].user, dids[name])
    dids["c"] = await main.registered(main.device())  # never connects
    dids["z"] = await interrupted.registered(interrupted.device())
    silent = MqttDevice.on_server(interrupted.server, dids["z"])  # does not acknowledge
    await silent.__aenter__()

    start = datetime.now(UTC) + timedelta(seconds=SETUP_MARGIN)
    due = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    fired = Fired(due=due, dids=dids, controls=controls)

    ids = {
        "ok": await main.schedule(
            due, [main.task(dids["a"], LED_R=11), main.task(dids["b"], LED_OnOff=True)]
        ),
        "failed": await main.schedule(
            due,
            [main.task(dids["a2"], LED_G=22), main.task(dids["c"], LED_G=22)],
            retry_count=2,
            retry_task="failed",
        ),
        "all": await main.schedule(
            due,
            [main.task(dids["a3"], LED_B=33), main.task(dids["c"], LED_B=33)],
            retry_count=1,
            retry_task="all",
        ),
        "restarted": await restarted.schedule(
            due, [restarted.task(dids["r"], Motor_Speed=3)], retry_count=10
        ),
        "late": await late.schedule(due, [late.task(dids["l"], LED_R=44)], retry_count=10),
        "interrupted": await interrupted.schedule(
            due, [interrupted.task(dids["z"], LED_R=55)], retry_count=3
        ),
    }
    reply = await main.http.post(
        f"/app/devices/{dids['e']}/scheduler",
        headers=auth(main.user),
        json={"time": due.strftime("%H:%M"), "repeat": "day", "attrs": {"LED_Color": "Pink"}},
    )
    assert reply.status_code == 201, reply.text
    ids["device"] = reply.json()["id"]
    berlin = due.astimezone(ZoneInfo("Europe/Berlin"))
    product_key = main.product.product_key
    timer_mac = devices["t"].mac
    created = await main.tencent(
        "AppCreateTimer",
        ProductId=product_key,
        DeviceName=timer_mac,
        TimerName="night light",
        Days="1111111",
        TimePoint=f"{berlin.hour}:{berlin.minute:02d}",
        Repeat=0,
        Data=json.dumps({"LED_G": 77, "LED_OnOff": True}),
        TimeZone="Europe/Berlin",
    )
    timer_id = created["Data"]["TimerId"]
    assert datetime.now(UTC) < due - timedelta(seconds=6), "set-up took too long"

    async def restart_within_grace() -> None:
        await sleep_until(due - timedelta(seconds=5))
        restarted.kill()
        await sleep_until(due + timedelta(seconds=2))
        await restarted.restart()
        onlines.append(await restarted.online(devices["r"]))

    async def restart_after_grace() -> None:
        await sleep_until(due - timedelta(seconds=5))
        late.kill()
        await sleep_until(due + timedelta(seconds=4))
        await late.restart()
        onlines.append(await late.online(devices["l"]))

    async def kill_mid_attempt() -> MqttDevice:
        await sleep_until(due)
        _, frame = await silent.next_frame()
        interrupted.kill()
        fired.raw_commands.append(frame.payload)
        with contextlib.suppress(aiomqtt.MqttError):
            await silent.__aexit__(None, None, None)
        await interrupted.restart()
        answering = MqttDevice.on_server(interrupted.server, dids["z"])
        answering.answer = True
        return await answering.__aenter__()

    *_, answering = await asyncio.gather(
        restart_within_grace(), restart_after_grace(), kill_mid_attempt()
    )
    try:
        homes_of = {"restarted": restarted, "late": late, "interrupted": interrupted}
        for key, schedule_id in ids.items():
            stage = homes_of.get(key, main)
            fired.runs[key] = await stage.finished_runs(schedule_id)
            fired.logs[key] = await stage.logs(schedule_id)
    finally:
        fired.raw_commands += [frame.payload for frame in answering.frames]
        await answering.__aexit__(None, None, None)

    async def timer_fired() -> list[dict[str, Any]] | None:
        listed = await main.tencent("AppGetTimerList", ProductId=product_key, DeviceName=timer_mac)
        timers: list[dict[str, Any]] = listed["TimerList"]
        return timers if timers and timers[0]["Status"] == 0 else None

    fired.timers = await eventually(timer_fired)
    assert fired.timers[0]["TimerId"] == timer_id
    reply = await main.http.get(f"/app/devices/{dids['e']}/scheduler", headers=auth(main.user))
    fired.device_schedule = reply.json()[0]
    # a moment for any stray duplicate to arrive before the devices' records are read
    await asyncio.sleep(2)
    for name, device in devices.items():
        fired.status[name] = dict(device.status)
    return fired


def at(fired: Fired) -> str:
    return fired.due.strftime("%Y-%m-%dT%H:%M:%S")


def test_a_schedule_sends_each_device_its_command_and_logs_succeed(fired: Fired) -> None:
    a, b = fired.dids["a"], fired.dids["b"]
    assert fired.logs["ok"] == {
        "datetime": at(fired),
        "status": "succeed",
        "detail": {a: True, b: True},
        "result": "succeed",
        "note": None,
    }
    assert fired.controls["a"] == [{"LED_R": 11}]
    assert fired.controls["b"] == [{"LED_OnOff": True}]
    [run] = fired.runs["ok"]
    assert len(run["attempts"]) == 1


def test_an_offline_device_fails_the_run_and_retry_failed_resends_only_its_task(
    fired: Fired,
) -> None:
    a2, c = fired.dids["a2"], fired.dids["c"]
    log = fired.logs["failed"]
    assert (log["status"], log["detail"]) == ("failed", {a2: True, c: False})
    [run] = fired.runs["failed"]
    assert [attempt["detail"] for attempt in run["attempts"]] == [
        {a2: True, c: False},
        {c: False},
        {c: False},
    ]
    assert fired.controls["a2"] == [{"LED_G": 22}]  # sent once: retries skip what succeeded


def test_retry_all_resends_every_task(fired: Fired) -> None:
    a3, c = fired.dids["a3"], fired.dids["c"]
    [run] = fired.runs["all"]
    assert [attempt["detail"] for attempt in run["attempts"]] == [
        {a3: True, c: False},
        {a3: True, c: False},
    ]
    assert run["status"] == "failed"
    assert fired.controls["a3"] == [{"LED_B": 33}, {"LED_B": 33}]


def test_a_per_device_schedule_fires_and_stays_on_for_tomorrow(fired: Fired) -> None:
    assert fired.logs["device"]["status"] == "succeed"
    assert fired.controls["e"] == [{"LED_Color": "Pink"}]
    assert fired.device_schedule["enabled"] is True


def test_a_tencent_timer_fires_its_data_then_is_switched_off(fired: Fired) -> None:
    assert fired.controls["t"] == [{"LED_G": 77, "LED_OnOff": True}]
    [timer] = fired.timers
    assert (timer["Status"], timer["Repeat"], timer["TimerName"]) == (0, 0, "night light")


def test_killed_before_the_due_time_and_back_in_grace_the_occurrence_runs_once(
    fired: Fired,
) -> None:
    runs = fired.runs["restarted"]
    assert [run["datetime"] for run in runs] == [at(fired)]
    assert runs[0]["status"] == "succeed"
    assert fired.controls["r"] == [{"Motor_Speed": 3}]


def test_killed_before_the_due_time_and_back_after_grace_the_occurrence_is_logged_missed(
    fired: Fired,
) -> None:
    late = fired.dids["l"]
    log = fired.logs["late"]
    assert (log["datetime"], log["status"], log["result"]) == (at(fired), "failed", "missed")
    assert log["detail"] == {late: False}
    assert "late" in (log["note"] or "")
    assert [run["attempts"] for run in fired.runs["late"]] == [[]]
    assert fired.controls["l"] == []


def test_killed_mid_attempt_the_run_resumes_as_a_retry_and_finishes_once(fired: Fired) -> None:
    z = fired.dids["z"]
    [run] = fired.runs["interrupted"]
    assert run["datetime"] == at(fired)
    assert run["status"] == "succeed"
    first, *_, last = run["attempts"]
    assert first["interrupted"] is True
    assert (last["interrupted"], last["detail"]) == (False, {z: True})
    # at least once: the interrupted attempt's command, then the retry's (a retry made while
    # the device was still reconnecting sends nothing), the same bytes
    assert len(fired.raw_commands) == 2
    assert fired.raw_commands[0] == fired.raw_commands[1]
