"""iotcloud scaled out (two processes of each role on a two-node RabbitMQ cluster, PostgreSQL)
through the faults an operator meets:

* a burst of 200 timers due at one instant, shared by the two schedulers: one run each,
  acknowledged within a minute;
* a scheduler killed with ``kill -9`` while its devices hold its commands unacknowledged: the
  other one takes its runs over after the lease, one run per occurrence, none lost;
* PostgreSQL stopped and started under the running processes: requests fail at once with 9008
  (HTTP 503), ``/readyz`` names the database on every process, everything recovers without a
  restart, and an occurrence due meanwhile fires late, once;
* the AMQP connections of one node's processes closed by the broker: ``/readyz`` names AMQP
  until they are back by themselves;
* broker node 1 stopped, or crashed: its processes fail fast and are unready naming the
  broker, its device goes offline, the other node's stays online, and everything comes back by
  itself when the node does.

The stack runs on a PostgreSQL server of this module's own, so stopping it touches no other
test. Schedules are made with the Gizwits API and then made due at one instant a few seconds
ahead by setting their ``next_due_at`` (no wait for a minute boundary); the timings are short
(acknowledgement 2 s, lease 4 s, retry 1 s) so that a take-over after a lease is quick."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiomqtt
import httpx
import pytest
from sqlalchemy import select, update

from iotcloud.gateway.rabbitmq import MESSAGES_QUEUE
from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRow, ScheduleRunRow
from tests.accounts import User, bind, sign_up
from tests.devices import MqttDevice, Product, eventually, import_product, register
from tests.pg import PostgresServer
from tests.prometheus import sample
from tests.rabbitmq import rabbitmq_installed
from tests.scale_out import ScaleOut, device_on, node_processes, queue_node, scale_out
from tests.server import RunningServer

pytestmark = pytest.mark.skipif(
    not rabbitmq_installed() and not os.environ.get("IOTCLOUD_TEST_REQUIRE_RABBITMQ"),
    reason="RabbitMQ is not installed (/usr/lib/rabbitmq/bin); bin/test installs it",
)

SETTINGS: dict[str, Any] = {
    "rate_limit_per_address": 0,
    "rate_limit_per_app": 0,
    "scheduler_ack_timeout_seconds": 2,
    "scheduler_lease_seconds": 4,  # at least twice the acknowledgement timeout
    "scheduler_retry_interval_seconds": 1,
    "scheduler_max_sleep_seconds": 1,  # a schedule made due by another process is seen at once
    "scheduler_prepare_seconds": 2,
    # fewer than a burst: neither engine can hold all of it, so both fire part of it
    "scheduler_concurrency": 150,
}
BURST = 200
#: The longest an HTTP request may take while a dependency is down (it must fail, not hang).
FAIL_FAST_SECONDS = 10.0

T = TypeVar("T")


@dataclass
class Faults:
    stack: ScaleOut
    postgres: PostgresServer
    product: Product
    appid: str


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    base = Path(tempfile.mkdtemp(prefix="iotcloud-scale-out-faults-"))
    postgres = PostgresServer()
    postgres.start()
    try:
        url = postgres.create_database("faults")
        with scale_out(base, url, **SETTINGS) as stack:
            queue_on_node_0(stack)
            product = import_product(
                stack.api, tmp_path_factory.mktemp("products"), "pet_house.json"
            )
            appid = stack.api.create_app("Faults")["appid"]
            yield Faults(stack, postgres, product, appid)
    finally:
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


def queue_on_node_0(stack: ScaleOut) -> None:
    """Have the gateways' queue of device messages (a classic queue: on the node of the gateway
    that declared it first) on broker node 0, so that the tests can lose node 1: in this
    harness a restarted node 1 rejoins in seconds, node 0 only after about 100 s."""
    if queue_node(stack) == 0:
        return
    for gateway in stack.gateways:
        assert gateway.stop() == 0, gateway.log()
    cluster = stack.cluster
    deleted = httpx.delete(
        f"http://127.0.0.1:{cluster.nodes[0].http_port}/api/queues/%2F/"
        + quote(MESSAGES_QUEUE, safe=""),
        auth=(cluster.user, cluster.password),
        timeout=10,
    )
    assert deleted.status_code == 204, deleted.text
    stack.gateways[0].start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):  # not declared yet: 404
            if queue_node(stack) == 0:
                break
        time.sleep(0.1)
    assert queue_node(stack) == 0
    stack.gateways[1].start()


# -- helpers --------------------------------------------------------------------------------------


async def bound_devices(faults: Faults, user: User, count: int) -> list[str]:
    dids = []
    for _ in range(count):
        did, _ = await asyncio.to_thread(register, faults.stack.api, faults.product)
        await bind(faults.stack.api, user, did)
        dids.append(did)
    return dids


async def online(
    exits: AsyncExitStack, stack: ScaleOut, dids: Sequence[str], *, answer: bool
) -> list[MqttDevice]:
    """The devices connected, alternately to node 0 and node 1."""
    devices = []
    for index, did in enumerate(dids):
        device = device_on(stack, index % 2, did, answer=answer)
        await device.__aenter__()
        exits.push_async_callback(leave, device)
        devices.append(device)
    return devices


async def leave(device: MqttDevice) -> None:
    """Disconnect ``device`` (whose connection the broker may have closed already)."""
    with suppress(aiomqtt.MqttError, AssertionError):
        await device.__aexit__(None, None, None)


async def make_schedules(
    http: httpx.AsyncClient,
    user: User,
    product: Product,
    dids: Sequence[str],
    count: int,
    **extra: Any,
) -> list[str]:
    """``count`` one-shot schedules for a day ahead, each commanding one of ``dids`` in turn."""
    later = datetime.now(UTC) + timedelta(days=1)
    ids = []
    for index in range(count):
        body = {
            "date": later.date().isoformat(),
            "time": later.strftime("%H:%M"),
            "repeat": "none",
            "task": [
                {
                    "did": dids[index % len(dids)],
                    "product_key": product.product_key,
                    "attrs": {"LED_R": index % 250},
                }
            ],
            **extra,
        }
        reply = await http.post("/app/scheduler", headers=user.headers(), json=body)
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    return ids


async def due_at(faults: Faults, ids: Sequence[str], instant: datetime) -> None:
    """Make every schedule of ``ids`` due at ``instant``."""
    async with Database(faults.stack.database_url) as db, db.session() as session:
        await session.execute(
            update(ScheduleRow).where(ScheduleRow.public_id.in_(ids)).values(next_due_at=instant)
        )


def soon(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


async def runs_of(faults: Faults, ids: Sequence[str]) -> dict[str, list[ScheduleRunRow]]:
    """Every run of the schedules ``ids``, by schedule id."""
    found: dict[str, list[ScheduleRunRow]] = {schedule_id: [] for schedule_id in ids}
    async with Database(faults.stack.database_url) as db, db.session() as session:
        rows = await session.execute(
            select(ScheduleRow.public_id, ScheduleRunRow)
            .join(ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id)
            .where(ScheduleRow.public_id.in_(ids))
            .order_by(ScheduleRunRow.id)
        )
        for public_id, run in rows.all():
            found[public_id].append(run)
    return found


async def finished_runs(
    faults: Faults, ids: Sequence[str], wait: float
) -> dict[str, list[ScheduleRunRow]]:
    """The runs of ``ids`` once each schedule has one and none is running."""

    async def probe() -> dict[str, list[ScheduleRunRow]] | None:
        runs = await runs_of(faults, ids)
        done = all(runs[i] and all(run.status != "running" for run in runs[i]) for i in ids)
        return runs if done else None

    return await eventually(probe, wait=wait)


async def succeeded(server: RunningServer, http: httpx.AsyncClient) -> float:
    """The runs ``server`` recorded ``succeed`` (its ``/metrics``)."""
    reply = await http.get(server.base_url + "/metrics")
    return sample(reply.text, "iotcloud_schedule_runs_total", result="succeed") or 0.0


def pid_of_lease(lease_owner: str) -> int:
    """The process id in a lease token (``{host}:{pid}:{random}/{claim}.{n}``)."""
    return int(lease_owner.split("/", 1)[0].split(":")[1])


async def readiness(http: httpx.AsyncClient, server: RunningServer) -> httpx.Response:
    return await http.get(server.base_url + "/readyz")


async def within(seconds: float, call: Awaitable[T]) -> T:
    """``call``'s result; fails when it takes longer than ``seconds``."""
    async with asyncio.timeout(seconds):
        return await call


def gizwits_error(reply: httpx.Response) -> int:
    """The ``error_code`` of a Gizwits error answer."""
    body = reply.json()
    assert set(body) >= {"error_code", "error_message"}, body
    return int(body["error_code"])


# -- a burst ---------------------------------------------------------------------------------------


async def test_two_schedulers_fire_a_burst_due_at_one_instant_once_each(faults: Faults) -> None:
    stack = faults.stack
    user = await asyncio.to_thread(sign_up, stack.api, faults.appid)
    dids = await bound_devices(faults, user, 20)
    async with (
        AsyncExitStack() as exits,
        httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http,
    ):
        devices = await online(exits, stack, dids, answer=True)
        ids = await make_schedules(http, user, faults.product, dids, BURST)
        before = [await succeeded(server, http) for server in stack.schedulers]
        instant = soon(4)
        await due_at(faults, ids, instant)
        # acknowledged within a minute of the instant
        runs = await finished_runs(faults, ids, wait=4 + 60)
        assert all(len(runs[i]) == 1 for i in ids), "an occurrence ran twice"
        results = Counter(run.status for i in ids for run in runs[i])
        assert results == {"succeed": BURST}, results
        assert {run.scheduled_at for i in ids for run in runs[i]} == {instant}
        assert all(len(run.attempts) == 1 for i in ids for run in runs[i])
        await asyncio.sleep(0.5)  # a duplicate command would have come by now
        assert [len(device.frames) for device in devices] == [BURST // len(dids)] * len(dids)
        after = [await succeeded(server, http) for server in stack.schedulers]
    fired = [late - early for early, late in zip(before, after, strict=True)]
    assert sum(fired) == BURST
    assert all(count > 0 for count in fired), fired  # the burst was shared


# -- a scheduler killed --------------------------------------------------------------------------


async def test_a_scheduler_killed_mid_run_leaves_its_runs_to_the_other_once_each(
    faults: Faults,
) -> None:
    stack = faults.stack
    user = await asyncio.to_thread(sign_up, stack.api, faults.appid)
    dids = await bound_devices(faults, user, 10)
    count = 40
    victim: RunningServer | None = None
    async with (
        AsyncExitStack() as exits,
        httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as http,
    ):
        # the devices hold the first commands unacknowledged: the runs are in flight
        devices = await online(exits, stack, dids, answer=False)
        ids = await make_schedules(http, user, faults.product, dids, count, retry_count=3)
        instant = soon(3)
        await due_at(faults, ids, instant)

        async def all_sent() -> bool:
            return sum(len(device.frames) for device in devices) >= count

        await eventually(all_sent, wait=15)
        runs = await runs_of(faults, ids)
        holders = Counter(
            pid_of_lease(run.lease_owner)
            for i in ids
            for run in runs[i]
            if run.lease_owner is not None
        )
        assert holders, "no run in flight"
        pid, held = holders.most_common(1)[0]
        [victim] = [s for s in stack.schedulers if s.process is not None and s.process.pid == pid]
        try:
            assert await asyncio.to_thread(victim.stop, signal.SIGKILL) == -signal.SIGKILL
            for device in devices:
                device.answer = True
            # the survivor takes the victim's runs over once their lease (4 s) expires
            runs = await finished_runs(faults, ids, wait=30)
        finally:
            await asyncio.to_thread(victim.start)
    assert all(len(runs[i]) == 1 for i in ids), "an occurrence ran twice"
    assert Counter(run.status for i in ids for run in runs[i]) == {"succeed": count}
    interrupted = [
        run for i in ids for run in runs[i] if run.attempts[0].get("interrupted") is True
    ]
    assert len(interrupted) == held  # each of the victim's, resumed as a retry
    assert all(len(run.attempts) <= 1 + run.retry_count for i in ids for run in runs[i])


# -- PostgreSQL restarted ------------------------------------------------------------------------


async def test_postgresql_restarted_requests_fail_fast_then_everything_recovers(
    faults: Faults,
) -> None:
    stack = faults.stack
    user = await asyncio.to_thread(sign_up, stack.api, faults.appid)
    [did] = await bound_devices(faults, user, 1)
    async with (
        AsyncExitStack() as exits,
        httpx.AsyncClient(timeout=30) as http,
        httpx.AsyncClient(base_url=stack.api.base_url, timeout=30) as api_http,
    ):
        [device] = await online(exits, stack, [did], answer=True)
        [schedule_id] = await make_schedules(
            api_http, user, faults.product, [did], 1, retry_count=2
        )
        # due while the database is down (beyond the 2 s the engines claim ahead)
        instant = soon(SETTINGS["scheduler_prepare_seconds"] + 3)
        await due_at(faults, [schedule_id], instant)
        await asyncio.to_thread(faults.postgres.stop_only)
        try:
            for api in stack.apis:
                began = time.monotonic()
                reply = await within(
                    FAIL_FAST_SECONDS,
                    http.get(api.base_url + "/app/bindings", headers=user.headers()),
                )
                assert gizwits_error(reply) == 9008, reply.text
                assert reply.status_code == 503, reply.text
                assert time.monotonic() - began < FAIL_FAST_SECONDS
                signed_up = await within(
                    FAIL_FAST_SECONDS,
                    http.post(
                        api.base_url + "/app/users",
                        headers={"X-Gizwits-Application-Id": faults.appid},
                        json={"username": "u-down", "password": "pw-123456"},
                    ),
                )
                assert (signed_up.status_code, gizwits_error(signed_up)) == (503, 9008)
            for server in stack.processes:
                reply = await within(FAIL_FAST_SECONDS, readiness(http, server))
                assert reply.status_code == 503, (server.data_dir.name, reply.text)
                checks = reply.json()["checks"]
                assert checks["database"] != "ok", checks
                assert checks["broker"] == "ok", checks
            await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds() + 1))
        finally:
            await asyncio.to_thread(faults.postgres.start_again)
        # every process finds its database again by itself
        for server in stack.processes:

            async def ready(server: RunningServer = server) -> bool:
                return (await readiness(http, server)).status_code == 200

            await eventually(ready, wait=30)
        for api in stack.apis:
            reply = await http.get(api.base_url + "/app/bindings", headers=user.headers())
            assert reply.status_code == 200, reply.text
        # the occurrence due during the outage fires late (within the grace window), once
        runs = await finished_runs(faults, [schedule_id], wait=30)
        [run] = runs[schedule_id]
        assert (run.status, run.scheduled_at) == ("succeed", instant)
        assert len(run.attempts) == 1
        await asyncio.sleep(0.5)  # a second command would have come by now
        assert len(device.frames) == 1


# -- a broker node lost ----------------------------------------------------------------------------


async def is_online(http: httpx.AsyncClient, server: RunningServer, user: User, did: str) -> bool:
    reply = await http.get(f"{server.base_url}/app/devices/{did}", headers=user.headers())
    return reply.status_code == 200 and bool(reply.json()["is_online"])


async def broker_unready(
    http: httpx.AsyncClient, server: RunningServer, wait: float
) -> dict[str, str]:
    """Wait until ``server``'s ``/readyz`` is 503 with the database still ok; its checks."""

    async def unready() -> httpx.Response | None:
        reply = await readiness(http, server)
        return reply if reply.status_code == 503 else None

    checks: dict[str, str] = (await eventually(unready, wait=wait)).json()["checks"]
    assert checks["database"] == "ok", checks
    return checks


@pytest.mark.parametrize(
    "graceful",
    [
        pytest.param(True, id="stopped"),
        pytest.param(False, id="crashed"),
    ],
)
async def test_a_broker_node_lost_fails_its_processes_fast_and_they_come_back_alone(
    faults: Faults, graceful: bool
) -> None:
    stack = faults.stack
    kept, lost = 0, 1  # the queue of device messages is on node 0 (`queue_on_node_0`)
    assert queue_node(stack) == kept
    on_lost, on_kept = node_processes(stack, lost), node_processes(stack, kept)
    user = await asyncio.to_thread(sign_up, stack.api, faults.appid)
    gone, staying = await bound_devices(faults, user, 2)
    async with AsyncExitStack() as exits, httpx.AsyncClient(timeout=30) as http:
        for node, did in ((lost, gone), (kept, staying)):
            device = device_on(stack, node, did, answer=True)
            await device.__aenter__()
            exits.push_async_callback(leave, device)

        async def both_online() -> bool:
            return await is_online(http, stack.apis[kept], user, gone) and await is_online(
                http, stack.apis[kept], user, staying
            )

        async def gone_offline() -> bool:
            return not await is_online(http, stack.apis[kept], user, gone)

        await eventually(both_online, wait=10)
        await asyncio.to_thread(stack.cluster.stop_node, lost, graceful=graceful)
        try:
            # the processes connected to the lost node say why they are not ready
            for server in on_lost:
                checks = await broker_unready(http, server, wait=15)
                assert checks["broker"] != "ok", checks
            for server in on_kept:
                assert (await readiness(http, server)).status_code == 200
            # a command through the API on the lost node fails at once, without a hang
            for did in (gone, staying):
                began = time.monotonic()
                reply = await within(
                    FAIL_FAST_SECONDS,
                    http.post(
                        f"{stack.apis[lost].base_url}/app/control/{did}",
                        headers=user.headers(),
                        json={"attrs": {"LED_OnOff": True}},
                    ),
                )
                assert reply.status_code != 500, reply.text
                assert gizwits_error(reply) in (9042, 9008), reply.text
                assert time.monotonic() - began < FAIL_FAST_SECONDS
            # presence: the device of the lost node goes offline, the other one stays online
            # (checked at the end, so that the rest is checked whatever it shows)
            went_offline = False
            with suppress(TimeoutError):
                went_offline = await eventually(gone_offline, wait=10)
            assert await is_online(http, stack.apis[kept], user, staying)
        finally:
            await asyncio.to_thread(stack.cluster.start_node, lost)
        # the processes reconnect by themselves
        for server in on_lost:

            async def ready(server: RunningServer = server) -> bool:
                return (await readiness(http, server)).status_code == 200

            await eventually(ready, wait=60)
        back = device_on(stack, lost, gone, answer=True)
        await back.__aenter__()
        exits.push_async_callback(leave, back)
        for server in (stack.apis[lost], stack.apis[kept]):

            async def online_again(server: RunningServer = server) -> bool:
                return await is_online(http, server, user, gone)

            await eventually(online_again, wait=15)
        assert await is_online(http, stack.apis[kept], user, staying)
        reply = await http.post(
            f"{stack.apis[lost].base_url}/app/control/{gone}",
            headers=user.headers(),
            json={"attrs": {"LED_OnOff": True}},
        )
        assert reply.status_code == 200, reply.text
    assert went_offline, "the device of the lost node stayed online while the node was down"


async def test_readyz_names_the_broker_when_only_the_amqp_connection_is_lost(
    faults: Faults,
) -> None:
    """RabbitMQ closes the AMQP connections of one node's processes (management API) and, for
    a while, takes no new connection (a virtual host limit): those processes are unready,
    naming AMQP, and ready again by themselves once they may reconnect."""
    stack = faults.stack
    cluster = stack.cluster
    node = 0
    processes = node_processes(stack, node)
    async with (
        httpx.AsyncClient(timeout=30) as http,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{cluster.nodes[node].http_port}/api",
            auth=(cluster.user, cluster.password),
            timeout=10,
        ) as management,
    ):
        listed = (await management.get("/connections")).json()
        amqp = [
            connection["name"]
            for connection in listed
            if connection.get("user") == cluster.user
            and "AMQP" in str(connection.get("protocol"))
            and connection.get("node") == cluster.node_names[node]
        ]
        assert len(amqp) >= len(processes), listed
        limit = "/vhost-limits/%2F/max-connections"
        reply = await management.put(limit, json={"value": 0})
        assert reply.status_code in (201, 204), reply.text
        try:
            for name in amqp:
                reply = await management.delete(
                    "/connections/" + quote(name, safe=""), headers={"X-Reason": "test"}
                )
                assert reply.status_code in (200, 204), reply.text
            for server in processes:
                checks = await broker_unready(http, server, wait=10)
                assert "AMQP" in checks["broker"], checks
        finally:
            reply = await management.delete(limit)
            assert reply.status_code in (200, 204), reply.text
        for server in processes:

            async def ready(server: RunningServer = server) -> bool:
                return (await readiness(http, server)).status_code == 200

            await eventually(ready, wait=30)
