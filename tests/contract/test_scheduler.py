"""The scheduler engine and service on SQLite and PostgreSQL, with a frozen clock and the engine
stepped explicitly (`SchedulerEngine.run_due`). Devices are real MQTT clients on the embedded
broker: one acknowledges every 0x0093 with a 0x0094, another stays silent, others are offline.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from iotcloud.app import running_services
from iotcloud.codecs.frame import CMD_CONTROL_SN
from iotcloud.config import Settings
from iotcloud.domain.clock import FrozenClock
from iotcloud.domain.schedules import (
    Daily,
    Once,
    Recurrence,
    Weekly,
    parse_gizwits_scheduler,
    parse_tencent_timer,
)
from iotcloud.errors import (
    AttrInvalid,
    DeviceNotBound,
    DeviceNotFound,
    FormInvalid,
    ProductKeyInvalid,
    ScheduleNotFound,
)
from iotcloud.scheduler.engine import EngineConfig, SchedulerEngine
from iotcloud.scheduler.store import ClaimedAttempt, ScheduleStore
from iotcloud.services.accounts import CurrentUser
from iotcloud.services.apps import App
from iotcloud.services.registry import Services
from iotcloud.services.scheduler import ScheduleSpec, Task
from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRow, ScheduleRunRow
from tests.devices import FIXTURES, MqttDevice, eventually
from tests.pg import free_port

# Monday 2026-03-02, 06:00 UTC
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
ACK_TIMEOUT = 0.5
RETRY = 60.0
GRACE = 900.0
ON = {"LED_OnOff": True}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@dataclass
class World:
    services: Services
    clock: FrozenClock
    app: App
    user: CurrentUser
    product_key: str
    settings: Settings

    @property
    def engine(self) -> SchedulerEngine:
        return self.services.scheduler.engine

    async def run_due(self) -> Any:
        return await self.engine.run_due()

    def at(self, instant: datetime) -> None:
        self.clock.set(instant)


def scheduler_settings(database_url: str, tmp_path: Path, **extra: Any) -> Settings:
    options: dict[str, Any] = {
        "data_dir": tmp_path,
        "http_host": "127.0.0.1",
        "public_host": "127.0.0.1",
        "database_url": database_url,
        "mqtt_port": free_port(),
        "scheduler_enabled": False,  # the tests step the engine themselves
        "scheduler_ack_timeout_seconds": ACK_TIMEOUT,
        "scheduler_lease_seconds": 5.0,
        "scheduler_retry_interval_seconds": RETRY,
        "scheduler_grace_seconds": GRACE,
    }
    return Settings.load({}, **{**options, **extra})


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    clock = FrozenClock(START)
    settings = scheduler_settings(database_url, tmp_path)
    async with running_services(settings, clock) as services:
        yield await new_world(services, clock, settings)


async def new_world(services: Services, clock: FrozenClock, settings: Settings) -> World:
    definition = json.loads((FIXTURES / "pet_house.json").read_text())
    definition["product_key"] = uuid.uuid4().hex
    product_key = (await services.products.import_definition(definition)).product_key
    creds = await services.apps.create("Timers")
    app = await services.apps.get(creds.appid)
    return World(services, clock, app, await new_user(services, app), product_key, settings)


async def new_user(services: Services, app: App) -> CurrentUser:
    accounts = services.accounts
    issued = await accounts.create_with_username(app, "u" + uuid.uuid4().hex[:12], "secret-pw-1")
    return await accounts.authenticate(app, issued.token)


@dataclass(frozen=True)
class NewDevice:
    did: str
    passcode: str


async def bound_device(world: World, user: CurrentUser | None = None) -> NewDevice:
    creds = await world.services.devices.create(world.product_key, "02" + uuid.uuid4().hex[:10])
    await world.services.bindings.bind(user or world.user, creds.did)
    return NewDevice(creds.did, creds.passcode)


class Device(MqttDevice):
    """``NewDevice`` online on the broker of ``services`` (see ``MqttDevice.on_services``)."""

    def __init__(self, services: Services, device: NewDevice, *, answer: bool) -> None:
        super().__init__(
            services.settings.mqtt_port,
            device.did,
            device.passcode,
            answer=answer,
            gateway=services.control.gateway,
        )


def daily(hour: int, minute: int = 0, zone: str = "UTC") -> Recurrence:
    return Recurrence(Daily(), time(hour, minute), zone)


def spec(timing: Any, *tasks: Task, **options: Any) -> ScheduleSpec:
    return ScheduleSpec(
        dialect=options.pop("dialect", "gizwits"), timing=timing, tasks=tasks, **options
    )


def task(world: World, device: NewDevice, attrs: dict[str, Any] | None = None) -> Task:
    return Task(device.did, world.product_key, attrs=attrs or ON)


async def run_rows(world: World, schedule_id: str) -> list[ScheduleRunRow]:
    async with world.services.devices.db.session() as session:
        rows = await session.scalars(
            select(ScheduleRunRow)
            .join(ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id)
            .where(ScheduleRow.public_id == schedule_id)
            .order_by(ScheduleRunRow.scheduled_at)
        )
        return list(rows.all())


# -- firing --------------------------------------------------------------------------------------


async def test_a_schedule_fires_at_its_due_instant_and_moves_to_the_next(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        assert (await scheduler.get(world.user, schedule_id)).next_due_at == utc(2026, 3, 2, 7)

        world.at(utc(2026, 3, 2, 6, 59, 59, 999_999))
        assert (await world.run_due()).fired == 0
        assert await scheduler.latest_run(world.user, schedule_id) is None
        expected = await world.services.control.encode_attrs(target.did, ON)

        world.at(utc(2026, 3, 2, 7))
        report = await world.run_due()
        assert (report.fired, report.succeeded, report.missed) == (1, 1, 0)
        assert [(f.cmd, f.payload) for f in device.frames] == [(CMD_CONTROL_SN, expected)]

        latest = await scheduler.latest_run(world.user, schedule_id)
        assert latest is not None
        assert (latest.scheduled_at, latest.status) == (utc(2026, 3, 2, 7), "succeed")
        assert latest.detail == {target.did: True}
        assert [a.detail for a in latest.attempts] == [{target.did: True}]
        schedule = await scheduler.get(world.user, schedule_id)
        assert schedule.next_due_at == utc(2026, 3, 3, 7)
        assert schedule.enabled

        # the same instant again, or a second look: nothing fires twice
        assert (await world.run_due()).fired == 0
        world.at(utc(2026, 3, 3, 7))
        assert (await world.run_due()).fired == 1
        assert len(device.frames) == 2
    runs = await scheduler.runs(world.user, schedule_id)
    assert [(r.scheduled_at, r.status) for r in runs] == [
        (utc(2026, 3, 3, 7), "succeed"),
        (utc(2026, 3, 2, 7), "succeed"),
    ]
    latest = await scheduler.latest_run(world.user, schedule_id)
    assert latest is not None
    assert latest.scheduled_at == utc(2026, 3, 3, 7)


async def test_dst_crossing_schedules_keep_their_wall_time(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    berlin = parse_tencent_timer(
        days="1111111", time_point="2:30", repeat=1, time_zone="Europe/Berlin", default_zone="UTC"
    )
    new_york = Recurrence(Daily(), time(1, 30), "America/New_York")
    world.at(utc(2026, 3, 27, 12))
    spring = await scheduler.create(
        world.user, spec(berlin, task(world, target), dialect="tencent", device=target.did)
    )
    world.at(utc(2026, 10, 30, 12))
    autumn = await scheduler.create(world.user, spec(new_york, task(world, target)))

    async def fire(schedule_id: str, times: int) -> list[datetime]:
        fired = []
        for _ in range(times):
            due = (await scheduler.get(world.user, schedule_id)).next_due_at
            assert due is not None
            world.at(due)
            assert (await world.run_due()).fired == 1
            fired.append(due)
        return fired

    world.at(utc(2026, 3, 27, 12))
    spring_fired = await fire(spring, 3)
    assert spring_fired == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 30, 0, 30),
    ]
    walls = [t.astimezone(ZoneInfo("Europe/Berlin")).strftime("%d %H:%M") for t in spring_fired]
    assert walls == ["28 02:30", "29 03:30", "30 02:30"]  # the gap day fires once, shifted
    timer = (await scheduler.get(world.user, spring)).timer
    assert timer is not None
    assert (timer.days, timer.time_point, timer.repeat) == ("1111111", "02:30", True)
    await scheduler.delete(world.user, spring)

    world.at(utc(2026, 10, 30, 12))
    autumn_fired = await fire(autumn, 3)
    # 01:30 on Nov 1 happens twice in New York: it fires once, at the first (EDT)
    assert autumn_fired == [
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
    ]
    runs = await scheduler.runs(world.user, autumn)
    assert sorted(r.scheduled_at for r in runs) == autumn_fired  # nothing else, nothing twice


async def test_after_downtime_the_latest_occurrence_fires_and_older_ones_are_logged_missed(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    within = await scheduler.create(world.user, spec(daily(7), task(world, target)))
    beyond = await scheduler.create(world.user, spec(daily(7, 30), task(world, target)))
    async with Device(world.services, target, answer=True) as device:
        # down from Monday 06:00 to Thursday 07:14 UTC: Thursday 07:00 is 14 min late (within
        # the 15 min grace), Wednesday 07:30 almost a day (beyond it)
        world.at(utc(2026, 3, 5, 7, 14))
        report = await world.run_due()
        assert (report.fired, report.succeeded, report.missed) == (1, 1, 6)
        assert len(device.frames) == 1

    runs = {r.scheduled_at: r for r in await scheduler.runs(world.user, within)}
    assert [(t.day, runs[t].status) for t in sorted(runs)] == [
        (2, "missed"),
        (3, "missed"),
        (4, "missed"),
        (5, "succeed"),
    ]
    missed = runs[utc(2026, 3, 2, 7)]
    assert missed.detail == {target.did: False}
    assert missed.attempts == ()
    assert missed.note is not None
    assert "grace" in missed.note
    late = await scheduler.runs(world.user, beyond)
    assert sorted((r.scheduled_at.day, r.status) for r in late) == [
        (2, "missed"),
        (3, "missed"),
        (4, "missed"),
    ]
    assert (await scheduler.get(world.user, within)).next_due_at == utc(2026, 3, 6, 7)
    assert (await scheduler.get(world.user, beyond)).next_due_at == utc(2026, 3, 5, 7, 30)


async def test_a_long_downtime_logs_every_missed_occurrence_beyond_the_claim_limit(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
    world.at(utc(2026, 3, 2, 7) + timedelta(days=1_205, minutes=5))
    report = await world.run_due()
    assert (report.missed, report.fired) == (1_205, 1)
    rows = await run_rows(world, schedule_id)
    assert len(rows) == 1_206
    assert len({row.scheduled_at for row in rows}) == 1_206
    assert rows[0].scheduled_at == utc(2026, 3, 2, 7)
    assert rows[-1].scheduled_at == utc(2026, 3, 2, 7) + timedelta(days=1_205)
    assert [row.status for row in rows].count("missed") == 1_205


async def test_a_one_shot_is_switched_off_after_it_fired(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    once = parse_gizwits_scheduler(date="2026-03-02", time="08:30", repeat="none")
    schedule_id = await scheduler.create(world.user, spec(once, task(world, target)))
    world.at(utc(2026, 3, 2, 8, 30))
    assert (await world.run_due()).fired == 1
    schedule = await scheduler.get(world.user, schedule_id)
    assert (schedule.enabled, schedule.next_due_at) == (False, None)
    with pytest.raises(FormInvalid, match="date"):
        await scheduler.set_enabled(world.user, schedule_id, True)
    world.at(utc(2026, 3, 9, 8, 30))
    assert (await world.run_due()).fired == 0


async def test_a_tencent_repeat_0_timer_fires_once_then_is_off_until_enabled_again(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    timer = parse_tencent_timer(
        days="0000000", time_point="06:30", repeat=0, time_zone=None, default_zone="Asia/Shanghai"
    )
    world.at(utc(2026, 3, 2, 0))  # 08:00 in Shanghai: the next 06:30 there is tomorrow's
    timer_id = await scheduler.create(
        world.user, spec(timer, task(world, target), dialect="tencent", device=target.did)
    )
    armed = await scheduler.get(world.user, timer_id)
    assert armed.next_due_at == utc(2026, 3, 2, 22, 30)
    assert armed.recurrence.rule == Once(date(2026, 3, 3))
    world.at(utc(2026, 3, 2, 22, 30))
    assert (await world.run_due()).fired == 1
    fired = await scheduler.get(world.user, timer_id)
    assert (fired.enabled, fired.next_due_at) == (False, None)
    assert fired.timer == timer  # Days/TimePoint/Repeat still render as sent

    world.at(utc(2026, 3, 5, 0))
    again = await scheduler.set_enabled(world.user, timer_id, True)
    assert again.next_due_at == utc(2026, 3, 5, 22, 30)
    assert (await world.run_due()).fired == 0
    world.at(utc(2026, 3, 5, 22, 30))
    assert (await world.run_due()).fired == 1
    assert (await scheduler.get(world.user, timer_id)).enabled is False


# -- retries --------------------------------------------------------------------------------------


async def test_retry_failed_resends_only_to_the_devices_that_missed_it(world: World) -> None:
    scheduler = world.services.scheduler
    acking, silent = await bound_device(world), await bound_device(world)
    async with (
        Device(world.services, acking, answer=True) as good,
        Device(world.services, silent, answer=False) as mute,
    ):
        schedule_id = await scheduler.create(
            world.user,
            spec(
                daily(7),
                task(world, acking),
                task(world, silent),
                retry_count=2,
                retry_task="failed",
            ),
        )
        world.at(utc(2026, 3, 2, 7))
        report = await world.run_due()
        assert (report.fired, report.will_retry) == (1, 1)
        running = await scheduler.latest_run(world.user, schedule_id)
        assert running is not None
        assert running.status == "running"
        assert running.detail == {acking.did: True, silent.did: False}

        world.at(utc(2026, 3, 2, 7, 0, 59))
        assert (await world.run_due()).retried == 0  # the retry interval has not passed
        world.at(utc(2026, 3, 2, 7, 1))
        assert (await world.run_due()).retried == 1
        world.at(utc(2026, 3, 2, 7, 2))
        report = await world.run_due()
        assert (report.retried, report.failed) == (1, 1)
        assert len(good.frames) == 1
        assert len(mute.frames) == 3
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert run.status == "failed"
    assert run.detail == {acking.did: True, silent.did: False}
    assert [a.detail for a in run.attempts] == [
        {acking.did: True, silent.did: False},
        {silent.did: False},
        {silent.did: False},
    ]
    assert [a.at for a in run.attempts] == [
        utc(2026, 3, 2, 7),
        utc(2026, 3, 2, 7, 1),
        utc(2026, 3, 2, 7, 2),
    ]
    world.at(utc(2026, 3, 2, 8))
    assert (await world.run_due()).retried == 0  # the budget is spent


async def test_retry_all_resends_everything_and_the_last_attempt_decides(world: World) -> None:
    scheduler = world.services.scheduler
    acking, offline = await bound_device(world), await bound_device(world)
    async with Device(world.services, acking, answer=True) as good:
        schedule_id = await scheduler.create(
            world.user,
            spec(daily(7), task(world, acking), task(world, offline), retry_count=1),
        )
        world.at(utc(2026, 3, 2, 7))
        await world.run_due()
        world.at(utc(2026, 3, 2, 7, 1))
        report = await world.run_due()
        assert (report.retried, report.failed) == (1, 1)
        assert len(good.frames) == 2
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert (run.status, run.detail) == ("failed", {acking.did: True, offline.did: False})
    assert [a.detail for a in run.attempts] == [{acking.did: True, offline.did: False}] * 2


async def test_a_retry_succeeds_once_the_offline_device_is_back(world: World) -> None:
    scheduler = world.services.scheduler
    acking, late = await bound_device(world), await bound_device(world)
    async with Device(world.services, acking, answer=True) as good:
        schedule_id = await scheduler.create(
            world.user,
            spec(
                daily(7),
                task(world, acking),
                task(world, late),
                retry_count=5,
                retry_task="failed",
            ),
        )
        world.at(utc(2026, 3, 2, 7))
        await world.run_due()
        async with Device(world.services, late, answer=True) as back:
            world.at(utc(2026, 3, 2, 7, 1))
            report = await world.run_due()
            assert (report.retried, report.succeeded) == (1, 1)
            assert (len(good.frames), len(back.frames)) == (1, 1)
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert (run.status, run.detail) == ("succeed", {acking.did: True, late.did: True})
    assert len(run.attempts) == 2


async def test_a_device_unbound_after_scheduling_gets_nothing(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        await world.services.bindings.unbind(world.user, target.did)
        world.at(utc(2026, 3, 2, 7))
        assert (await world.run_due()).failed == 1
        assert device.frames == []
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert (run.status, run.detail) == ("failed", {target.did: False})


async def test_raw_tasks_send_their_bytes(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        raw = Task(target.did, world.product_key, raw=b"\x02")
        await scheduler.create(world.user, spec(daily(7), raw))
        world.at(utc(2026, 3, 2, 7))
        assert (await world.run_due()).succeeded == 1
        assert [(f.cmd, f.payload) for f in device.frames] == [(CMD_CONTROL_SN, b"\x02")]


# -- exactly once ---------------------------------------------------------------------------------


async def test_a_second_engine_on_the_same_database_never_fires_an_occurrence_twice(
    world: World, database_url: str
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with (
        Device(world.services, target, answer=True) as device,
        Database(database_url) as other_db,
        SchedulerEngine(
            other_db,
            world.clock,
            world.services.control,
            EngineConfig(ack_timeout_seconds=ACK_TIMEOUT, lease_seconds=5),
        ) as other,
    ):
        ids = [
            await scheduler.create(world.user, spec(daily(7, minute), task(world, target)))
            for minute in range(5)
        ]
        world.at(utc(2026, 3, 2, 7, 10))
        reports = await asyncio.gather(world.run_due(), other.run_due(), world.run_due())
        assert sum(r.fired for r in reports) == 5
        assert sum(r.succeeded for r in reports) == 5
        assert len(device.frames) == 5
        # one more round on both: nothing left
        later = await asyncio.gather(world.run_due(), other.run_due())
        assert sum(r.fired + r.retried for r in later) == 0
    for schedule_id in ids:
        assert [r.status for r in await run_rows(world, schedule_id)] == ["succeed"]


async def test_an_occurrence_that_already_ran_is_not_fired_again(world: World) -> None:
    """A schedule rewound to an instant it already ran (say, changed by a process whose clock
    lags) hits the unique (schedule, instant) key: nothing fires, nothing is duplicated."""
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        world.at(utc(2026, 3, 2, 7))
        assert (await world.run_due()).fired == 1
        async with world.services.devices.db.session() as session:
            await session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.public_id == schedule_id)
                .values(next_due_at=utc(2026, 3, 2, 7))
            )
        report = await world.run_due()
        assert (report.fired, report.missed) == (0, 0)
        assert len(device.frames) == 1
    assert len(await run_rows(world, schedule_id)) == 1
    assert (await scheduler.get(world.user, schedule_id)).next_due_at == utc(2026, 3, 3, 7)


async def claim_and_die(world: World) -> list[ClaimedAttempt]:
    """Claim what is due as a process that then crashes (never executes or records)."""
    store = ScheduleStore(world.services.devices.db)
    report = await store.claim_due(
        world.clock.now(),
        owner="dead-process",
        limit=10,
        grace=timedelta(seconds=GRACE),
        lease=timedelta(seconds=5),
    )
    return report.attempts


async def test_a_run_abandoned_mid_attempt_is_resumed_as_a_retry(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(
            world.user, spec(daily(7), task(world, target), retry_count=1)
        )
        world.at(utc(2026, 3, 2, 7))
        assert len(await claim_and_die(world)) == 1
        world.at(utc(2026, 3, 2, 7, 0, 4))
        assert (await world.run_due()).retried == 0  # the dead process's lease still holds
        world.at(utc(2026, 3, 2, 7, 0, 5))
        report = await world.run_due()
        assert (report.fired, report.retried, report.succeeded) == (0, 1, 1)
        assert len(device.frames) == 1
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert run.status == "succeed"
    assert [(a.interrupted, a.detail) for a in run.attempts] == [
        (True, {target.did: False}),
        (False, {target.did: True}),
    ]


async def test_an_abandoned_run_without_retries_left_is_finished_failed_not_fired_again(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    resumable = await scheduler.create(
        world.user, spec(daily(7), task(world, target), retry_count=3)
    )
    spent = await scheduler.create(world.user, spec(daily(7), task(world, target)))
    async with Device(world.services, target, answer=True) as device:
        world.at(utc(2026, 3, 2, 7))
        assert len(await claim_and_die(world)) == 2
        # the process stays down for longer than the grace window
        world.at(utc(2026, 3, 2, 7, 20))
        report = await world.run_due()
        assert (report.fired, report.retried, report.given_up) == (0, 0, 2)
        assert device.frames == []
    for schedule_id in (resumable, spent):
        run = await scheduler.latest_run(world.user, schedule_id)
        assert run is not None
        assert (run.status, run.detail) == ("failed", {target.did: False})
        assert run.note is not None
        assert "interrupted" in run.note
    not_retried = await scheduler.latest_run(world.user, resumable)
    assert not_retried is not None
    assert not_retried.note is not None
    assert "not retried" in not_retried.note


async def test_a_retry_overdue_beyond_grace_is_given_up(world: World) -> None:
    scheduler = world.services.scheduler
    offline = await bound_device(world)
    schedule_id = await scheduler.create(
        world.user, spec(daily(7), task(world, offline), retry_count=5)
    )
    world.at(utc(2026, 3, 2, 7))
    await world.run_due()
    world.at(utc(2026, 3, 2, 9))  # the retry was due at 07:01; the process was down since
    report = await world.run_due()
    assert (report.retried, report.given_up) == (0, 1)
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert run.status == "failed"
    assert len(run.attempts) == 1


async def test_the_engine_loop_wakes_for_the_nearest_due_instant(
    database_url: str, tmp_path: Path
) -> None:
    clock = FrozenClock(START)
    settings = scheduler_settings(database_url, tmp_path, scheduler_enabled=True)
    async with running_services(settings, clock) as services:
        world = await new_world(services, clock, settings)
        target = await bound_device(world)
        recorded = asyncio.Event()
        services.scheduler.engine.add_listener(lambda attempt, result: recorded.set())
        async with Device(services, target, answer=True) as device:
            world.at(utc(2026, 3, 2, 6, 59, 59, 700_000))
            schedule_id = await services.scheduler.create(
                world.user, spec(daily(7), task(world, target))
            )
            # the loop now sleeps 0.3 s (the frozen clock's distance to 07:00), then looks
            world.at(utc(2026, 3, 2, 7))
            async with asyncio.timeout(10):
                await recorded.wait()
            assert len(device.frames) == 1
        run = await services.scheduler.latest_run(world.user, schedule_id)
        assert run is not None
        assert run.status == "succeed"


# -- preparing ahead ------------------------------------------------------------------------------

PREPARE = 10.0


@asynccontextmanager
async def looping(world: World, owner: str = "looping") -> AsyncIterator[SchedulerEngine]:
    """An engine of its own running its loop (claims ``PREPARE`` seconds ahead) on the world's
    database and frozen clock; the world's own engine is never run."""
    config = EngineConfig(
        ack_timeout_seconds=ACK_TIMEOUT,
        lease_seconds=5,
        prepare_seconds=PREPARE,
        max_sleep_seconds=0.2,
        grace_seconds=GRACE,
    )
    engine = SchedulerEngine(
        world.services.devices.db, world.clock, world.services.control, config, owner=owner
    )
    async with engine:
        loop = asyncio.create_task(engine.run())
        try:
            yield engine
        finally:
            loop.cancel()
            with suppress(asyncio.CancelledError):
                await loop


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async def probe() -> bool:
        return await check()

    await eventually(probe, wait=10)


async def prepared_run(world: World, schedule_id: str) -> ScheduleRunRow:
    """Wait for the schedule's run to be claimed ahead; returns it."""
    found: list[ScheduleRunRow] = []

    async def claimed() -> bool:
        found[:] = await run_rows(world, schedule_id)
        return bool(found)

    await until(claimed)
    [run] = found
    return run


async def test_an_occurrence_claimed_ahead_is_sent_at_its_instant_not_before(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        expected = await world.services.control.encode_attrs(target.did, ON)
        world.at(utc(2026, 3, 2, 6, 59, 52))  # 8 s ahead: within the preparation window
        async with looping(world) as engine:
            run = await prepared_run(world, schedule_id)
            # claimed and prepared, not started: no attempt yet, leased until 07:00 + lease
            assert (run.status, run.attempts, run.started_at) == ("running", [], None)
            assert run.lease_owner is not None
            assert run.next_attempt_at == utc(2026, 3, 2, 7, 0, 5)
            assert (await scheduler.get(world.user, schedule_id)).next_due_at == utc(2026, 3, 3, 7)
            assert engine.held == 1
            # within the last half second the run is started, still not sent before 07:00
            world.at(utc(2026, 3, 2, 6, 59, 59, 800_000))
            engine.wake()

            async def started() -> bool:
                [row] = await run_rows(world, schedule_id)
                return row.started_at is not None

            await until(started)
            await asyncio.sleep(0.3)  # the dispatcher looks at the frozen clock again
            assert device.frames == []

            world.at(utc(2026, 3, 2, 7))
            engine.wake()

            async def recorded() -> bool:
                return engine.held == 0

            await until(recorded)
        assert [(f.cmd, f.payload) for f in device.frames] == [(CMD_CONTROL_SN, expected)]
    [run] = await run_rows(world, schedule_id)
    assert (run.status, run.started_at, run.lease_owner) == ("succeed", utc(2026, 3, 2, 7), None)
    assert run.attempts == [{"at": "2026-03-02T07:00:00+00:00", "detail": {target.did: True}}]


async def test_a_schedule_deleted_after_its_occurrence_was_prepared_sends_nothing(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        world.at(utc(2026, 3, 2, 6, 59, 55))
        async with looping(world) as engine:
            await prepared_run(world, schedule_id)
            await scheduler.delete(world.user, schedule_id)
            world.at(utc(2026, 3, 2, 7))
            engine.wake()

            async def dropped() -> bool:
                return engine.held == 0

            await until(dropped)
            assert engine.totals.lost == 1
            await asyncio.sleep(ACK_TIMEOUT)
        assert device.frames == []
    assert await count_runs(world) == 0


async def test_a_device_unbound_after_preparation_gets_nothing_and_the_run_fails(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    kept, unbound = await bound_device(world), await bound_device(world)
    async with (
        Device(world.services, kept, answer=True) as good,
        Device(world.services, unbound, answer=True) as dropped,
    ):
        schedule_id = await scheduler.create(
            world.user, spec(daily(7), task(world, kept), task(world, unbound))
        )
        world.at(utc(2026, 3, 2, 6, 59, 55))
        async with looping(world) as engine:
            await prepared_run(world, schedule_id)
            await world.services.bindings.unbind(world.user, unbound.did)
            world.at(utc(2026, 3, 2, 7))
            engine.wake()

            async def recorded() -> bool:
                return engine.held == 0

            await until(recorded)
        assert (len(good.frames), dropped.frames) == (1, [])
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert (run.status, run.detail) == ("failed", {kept.did: True, unbound.did: False})


async def claim_ahead_and_die(world: World, ahead: float = PREPARE) -> list[ClaimedAttempt]:
    """Claim ahead as a process that then crashes (never starts, sends or records)."""
    store = ScheduleStore(world.services.devices.db)
    report = await store.claim_due(
        world.clock.now(),
        owner="dead-process",
        limit=10,
        grace=timedelta(seconds=GRACE),
        lease=timedelta(seconds=5),
        ahead=timedelta(seconds=ahead),
    )
    return report.attempts


async def test_a_claim_made_ahead_by_a_process_that_died_is_fired_once_after_its_lease(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        world.at(utc(2026, 3, 2, 6, 59, 55))
        [claimed] = await claim_ahead_and_die(world)
        assert (claimed.ahead, claimed.at) == (True, utc(2026, 3, 2, 7))
        world.at(utc(2026, 3, 2, 7, 0, 4))
        report = await world.run_due()  # its lease (07:00 + 5 s) still holds
        assert (report.fired, report.retried) == (0, 0)
        assert device.frames == []
        world.at(utc(2026, 3, 2, 7, 0, 5))
        report = await world.run_due()
        # nothing was sent for it: this is its first attempt, not an interrupted one
        assert (report.fired, report.retried, report.succeeded) == (1, 0, 1)
        assert len(device.frames) == 1
        assert (await world.run_due()).fired == 0
    [run] = await run_rows(world, schedule_id)
    assert (run.status, run.started_at) == ("succeed", utc(2026, 3, 2, 7, 0, 5))
    assert run.attempts == [{"at": "2026-03-02T07:00:05+00:00", "detail": {target.did: True}}]


async def test_a_claim_made_ahead_and_abandoned_beyond_grace_is_logged_missed(
    world: World,
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    schedule_id = await scheduler.create(
        world.user, spec(daily(7), task(world, target), retry_count=3)
    )
    world.at(utc(2026, 3, 2, 6, 59, 55))
    assert len(await claim_ahead_and_die(world)) == 1
    world.at(utc(2026, 3, 2, 7, 20))  # nobody took it over within the grace window
    report = await world.run_due()
    assert (report.fired, report.retried, report.missed, report.given_up) == (0, 0, 1, 0)
    run = await scheduler.latest_run(world.user, schedule_id)
    assert run is not None
    assert (run.status, run.detail, run.attempts) == ("missed", {target.did: False}, ())
    assert run.note is not None
    assert "grace" in run.note


async def test_a_stopping_engine_hands_its_prepared_claims_on_to_fire_at_their_instant(
    world: World, database_url: str
) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        world.at(utc(2026, 3, 2, 6, 59, 55))
        async with looping(world, owner="stopping") as engine:
            await prepared_run(world, schedule_id)
        assert engine.held == 0
        [released] = await run_rows(world, schedule_id)
        assert (released.lease_owner, released.next_attempt_at) == (None, utc(2026, 3, 2, 7))
        assert device.frames == []
        async with (
            Database(database_url) as other_db,
            SchedulerEngine(
                other_db,
                world.clock,
                world.services.control,
                EngineConfig(ack_timeout_seconds=ACK_TIMEOUT, lease_seconds=5),
                owner="successor",
            ) as successor,
        ):
            assert (await successor.run_due()).fired == 0  # not before its instant
            world.at(utc(2026, 3, 2, 7))
            report = await successor.run_due()
            assert (report.fired, report.succeeded) == (1, 1)
        assert len(device.frames) == 1
    [run] = await run_rows(world, schedule_id)
    assert (run.status, len(run.attempts)) == ("succeed", 1)


async def test_an_engine_stopped_while_preparing_hands_its_claims_on_unsent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while the commands of a claim are being prepared: the occurrence claimed ahead
    is released for another engine, the one already due is recorded as not sent (its retry
    comes), nothing is sent and nothing stays held."""
    scheduler = world.services.scheduler
    target = await bound_device(world)
    async with Device(world.services, target, answer=True) as device:
        ahead_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
        due_id = await scheduler.create(
            world.user, spec(daily(6, 59), task(world, target), retry_count=1, name="due")
        )
        world.at(utc(2026, 3, 2, 6, 59, 55))
        preparing = asyncio.Event()
        async with looping(world, owner="stopping") as engine:

            async def stalled(attempts: Any) -> Any:
                preparing.set()
                await asyncio.Event().wait()  # until the engine is stopped

            monkeypatch.setattr(engine.commands, "prepare", stalled)
            await asyncio.wait_for(preparing.wait(), 10)
        assert engine.held == 0
        assert device.frames == []
    [released] = await run_rows(world, ahead_id)
    assert (released.lease_owner, released.next_attempt_at) == (None, utc(2026, 3, 2, 7))
    assert (released.status, released.attempts) == ("running", [])
    [due] = await run_rows(world, due_id)
    assert due.status == "running"  # its retry is left
    assert due.attempts == [{"at": "2026-03-02T06:59:55+00:00", "detail": {target.did: False}}]
    assert due.next_attempt_at == utc(2026, 3, 2, 6, 59, 55) + timedelta(seconds=RETRY)


async def test_an_engine_stopped_mid_claim_hands_on_what_the_claim_took(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim is two transactions: stopped after the first committed, the engine lets the
    claim finish and releases the occurrence it took ahead, instead of leaving it leased."""
    scheduler = world.services.scheduler
    target = await bound_device(world)
    schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
    world.at(utc(2026, 3, 2, 6, 59, 55))
    claimed, stopping = asyncio.Event(), asyncio.Event()
    async with looping(world, owner="stopping") as engine:
        claim_due, adopt = engine.store.claim_due, engine._adopt_cut_claims

        async def slow_claim(*args: Any, **kwargs: Any) -> Any:
            report = await claim_due(*args, **kwargs)
            claimed.set()
            await stopping.wait()  # the claim outlasts the loop's cancellation
            return report

        async def stop_path() -> None:
            stopping.set()
            await adopt()

        monkeypatch.setattr(engine.store, "claim_due", slow_claim)
        monkeypatch.setattr(engine, "_adopt_cut_claims", stop_path)
        await asyncio.wait_for(claimed.wait(), 10)
    assert engine.held == 0
    assert engine.totals.fired == 1
    [released] = await run_rows(world, schedule_id)
    assert (released.lease_owner, released.next_attempt_at) == (None, utc(2026, 3, 2, 7))


async def test_two_looping_engines_fire_a_burst_prepared_ahead_exactly_once(
    world: World, database_url: str
) -> None:
    scheduler = world.services.scheduler
    targets = [await bound_device(world) for _ in range(4)]
    devices = [Device(world.services, target, answer=True) for target in targets]
    for device in devices:
        await device.__aenter__()
    try:
        ids = [
            await scheduler.create(
                world.user,
                spec(daily(7), task(world, targets[n % 4], {"LED_R": n}), name=f"n{n}"),
            )
            for n in range(40)
        ]
        world.at(utc(2026, 3, 2, 6, 59, 51))
        async with looping(world, owner="one") as one, looping(world, owner="two") as two:

            async def all_prepared() -> bool:
                return await count_runs(world) == 40

            await until(all_prepared)
            assert all(device.frames == [] for device in devices)
            world.at(utc(2026, 3, 2, 7))
            one.wake()
            two.wake()

            async def all_recorded() -> bool:
                return (
                    one.held + two.held == 0 and one.totals.succeeded + two.totals.succeeded == 40
                )

            await until(all_recorded)
    finally:
        for device in devices:
            await device.__aexit__(None, None, None)
    assert [len(device.frames) for device in devices] == [10] * 4
    for schedule_id in ids:
        assert [r.status for r in await run_rows(world, schedule_id)] == ["succeed"]


# -- the service ----------------------------------------------------------------------------------


async def count_schedules(world: World) -> int:
    async with world.services.devices.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(ScheduleRow)) or 0)


async def count_runs(world: World) -> int:
    async with world.services.devices.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(ScheduleRunRow)) or 0)


async def test_bad_schedules_are_refused_and_nothing_is_stored(world: World) -> None:
    scheduler = world.services.scheduler
    mine = await bound_device(world)
    other_user = await new_user(world.services, world.app)
    theirs = await bound_device(world, other_user)
    ok = task(world, mine)
    cases: list[tuple[ScheduleSpec, type[Exception], str]] = [
        (spec(daily(7), task(world, theirs)), DeviceNotBound, "not bound"),
        (spec(daily(7), Task("x" * 22, world.product_key, attrs=ON)), DeviceNotFound, "no device"),
        (
            spec(daily(7), task(world, mine, {"nope": 1})),
            AttrInvalid,
            r"task\[0\]\.attrs: attr 'nope'",
        ),
        (spec(daily(7), task(world, mine, {"LED_R": 999})), AttrInvalid, "LED_R"),
        (spec(daily(7), task(world, mine, {"Infrared": True})), AttrInvalid, "read only"),
        (spec(daily(7), Task(mine.did, "0" * 32, attrs=ON)), ProductKeyInvalid, "product_key"),
        (spec(daily(7), Task(mine.did, world.product_key)), FormInvalid, "attrs or raw"),
        (spec(daily(7), Task(mine.did, world.product_key, raw=b"")), FormInvalid, r"raw"),
        (spec(daily(7), ok, ok), FormInvalid, r"task\[1\]\.did"),
        (spec(daily(7)), FormInvalid, "at least one task"),
        (spec(daily(7), ok, retry_count=61), FormInvalid, "retry_count"),
        (spec(daily(7), ok, retry_count=-1), FormInvalid, "retry_count"),
        (spec(daily(7), ok, retry_task="some"), FormInvalid, "retry_task"),
        (spec(daily(7), ok, name="n" * 129), FormInvalid, "name"),
        (spec(daily(7), ok, device="another-did"), FormInvalid, "belongs to device"),
        (
            spec(parse_gizwits_scheduler(date="2026-03-02", time="05:59", repeat="none"), ok),
            FormInvalid,
            "date",
        ),
        (
            spec(Recurrence(Weekly(frozenset({0})), time(7), end_date=date(2026, 3, 1)), ok),
            FormInvalid,
            "end_date",
        ),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            await scheduler.create(world.user, bad)
    assert await count_schedules(world) == 0


async def test_schedules_are_private_to_their_owner(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    schedule_id = await scheduler.create(world.user, spec(daily(7), task(world, target)))
    stranger = await new_user(world.services, world.app)
    other_app = await world.services.apps.get((await world.services.apps.create("Other")).appid)
    outsider = await new_user(world.services, other_app)
    for user in (stranger, outsider):
        with pytest.raises(ScheduleNotFound):
            await scheduler.get(user, schedule_id)
        with pytest.raises(ScheduleNotFound):
            await scheduler.set_enabled(user, schedule_id, False)
        with pytest.raises(ScheduleNotFound):
            await scheduler.delete(user, schedule_id)
        with pytest.raises(ScheduleNotFound):
            await scheduler.latest_run(user, schedule_id)
        assert await scheduler.list(user) == []
    with pytest.raises(ScheduleNotFound) as raised:
        await scheduler.get(world.user, "0" * 32)
    assert raised.value.code == 9030
    with pytest.raises(ScheduleNotFound):
        await scheduler.get(world.user, schedule_id, device="another-did")
    assert (await scheduler.get(world.user, schedule_id)).enabled


async def test_list_update_enable_and_delete(world: World) -> None:
    scheduler = world.services.scheduler
    first, second = await bound_device(world), await bound_device(world)
    a = await scheduler.create(world.user, spec(daily(7), task(world, first), name="morning"))
    b = await scheduler.create(
        world.user,
        spec(
            parse_tencent_timer(
                days="0100000", time_point="9:05", repeat=1, time_zone=None, default_zone="UTC"
            ),
            task(world, second),
            dialect="tencent",
            device=second.did,
        ),
    )
    assert [s.id for s in await scheduler.list(world.user)] == [a, b]
    assert [s.id for s in await scheduler.list(world.user, dialect="tencent")] == [b]
    assert [s.id for s in await scheduler.list(world.user, device=second.did)] == [b]
    assert [s.id for s in await scheduler.list(world.user, limit=1, skip=1)] == [b]
    assert await scheduler.count(world.user, dialect="gizwits") == 1
    with pytest.raises(FormInvalid, match="limit"):
        await scheduler.list(world.user, limit=0)

    listed = await scheduler.get(world.user, a)
    assert (listed.name, listed.tasks, listed.dialect) == (
        "morning",
        (task(world, first),),
        "gizwits",
    )
    assert listed.next_due_at == utc(2026, 3, 2, 7)
    # a rename keeps the due occurrence; a new time moves it
    world.at(utc(2026, 3, 2, 6, 30))
    renamed = await scheduler.update(
        world.user, a, spec(daily(7), task(world, first), name="early")
    )
    assert (renamed.name, renamed.next_due_at) == ("early", utc(2026, 3, 2, 7))
    assert renamed.updated_at == utc(2026, 3, 2, 6, 30)
    assert renamed.created_at == START
    moved = await scheduler.update(world.user, a, spec(daily(6, 15), task(world, first)))
    assert moved.next_due_at == utc(2026, 3, 3, 6, 15)
    with pytest.raises(AttrInvalid):
        await scheduler.update(world.user, a, spec(daily(8), task(world, first, {"x": 1})))
    assert (await scheduler.get(world.user, a)).next_due_at == utc(2026, 3, 3, 6, 15)

    off = await scheduler.set_enabled(world.user, a, False)
    assert (off.enabled, off.next_due_at) == (False, None)
    world.at(utc(2026, 3, 3, 6, 15))
    assert (await world.run_due()).fired == 0
    on = await scheduler.set_enabled(world.user, a, True)
    assert (on.enabled, on.next_due_at) == (True, utc(2026, 3, 4, 6, 15))
    # an update that leaves enabled out keeps the state
    still_on = await scheduler.update(world.user, a, spec(daily(6, 15), task(world, first)))
    assert still_on.enabled

    world.at(utc(2026, 3, 4, 6, 15))
    assert (await world.run_due()).fired == 1
    assert await count_runs(world) == 2  # a's run, and b's Monday 09:05 logged missed
    await scheduler.delete(world.user, a)
    with pytest.raises(ScheduleNotFound):
        await scheduler.get(world.user, a)
    assert await count_runs(world) == 1
    with pytest.raises(ScheduleNotFound):
        await scheduler.delete(world.user, a)
    assert [s.id for s in await scheduler.list(world.user)] == [b]


async def test_old_finished_runs_are_purged_and_others_kept(world: World) -> None:
    scheduler = world.services.scheduler
    target = await bound_device(world)
    schedule_id = await scheduler.create(
        world.user, spec(daily(7), task(world, target), retry_count=1)
    )
    world.at(utc(2026, 3, 3, 7, 10))  # Monday's run missed, Tuesday's fired (then failed once)
    await world.run_due()
    store = world.engine.store
    assert await store.purge_runs(utc(2026, 3, 3, 7, 10)) == 0  # nothing finished before that
    assert await store.purge_runs(utc(2026, 3, 3, 7, 10, 1)) == 1  # the missed one
    runs = await scheduler.runs(world.user, schedule_id)
    assert [(r.scheduled_at, r.status) for r in runs] == [(utc(2026, 3, 3, 7), "running")]
    assert await store.purge_runs(utc(2027, 1, 1)) == 0  # a running run is never purged
