"""Two scheduler engines, each with its own connection pool, on one PostgreSQL database: 2,000
occurrences due in the same minute each fire exactly once - no duplicates, none lost - and every
device gets exactly the commands meant for it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from datetime import time as clock_time
from pathlib import Path

from sqlalchemy import func, select

from iotcloud.app import running_services
from iotcloud.domain.clock import FrozenClock
from iotcloud.domain.schedules import Daily, Recurrence
from iotcloud.scheduler.engine import EngineConfig, SchedulerEngine, TickReport
from iotcloud.services.scheduler import ScheduleSpec, Task
from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRunRow
from tests.conftest import new_database_url
from tests.contract.test_scheduler import (
    ACK_TIMEOUT,
    Device,
    bound_device,
    new_world,
    scheduler_settings,
)
from tests.pg import PostgresServer

SCHEDULES = 2_000
DEVICES = 20


async def test_two_engines_fire_2000_occurrences_due_in_one_minute_exactly_once(
    postgres: PostgresServer | str, tmp_path: Path
) -> None:
    url = new_database_url(postgres, "postgres", tmp_path)
    assert url is not None
    clock = FrozenClock(datetime(2026, 3, 2, 11, 0, tzinfo=UTC))
    settings = scheduler_settings(url, tmp_path)
    async with running_services(settings, clock) as services:
        world = await new_world(services, clock, settings)
        targets = [await bound_device(world) for _ in range(DEVICES)]
        devices = [Device(services, target, answer=True) for target in targets]
        for device in devices:
            await device.__aenter__()
        try:
            for start in range(0, SCHEDULES, 100):
                await asyncio.gather(
                    *(
                        services.scheduler.create(
                            world.user,
                            ScheduleSpec(
                                dialect="gizwits",
                                # spread over the seconds of 12:00
                                timing=Recurrence(Daily(), clock_time(12, 0, n % 60)),
                                tasks=[
                                    Task(
                                        targets[n % DEVICES].did,
                                        world.product_key,
                                        attrs={"LED_R": n % 200},
                                    )
                                ],
                            ),
                        )
                        for n in range(start, start + 100)
                    )
                )
            clock.set(datetime(2026, 3, 2, 12, 1, tzinfo=UTC))
            config = EngineConfig(ack_timeout_seconds=ACK_TIMEOUT * 10, lease_seconds=60)
            async with (
                Database(url) as first_db,
                Database(url) as second_db,
                SchedulerEngine(first_db, clock, services.control, config, owner="one") as first,
                SchedulerEngine(second_db, clock, services.control, config, owner="two") as second,
            ):
                began = time.perf_counter()
                reports: list[TickReport] = await asyncio.gather(first.run_due(), second.run_due())
                elapsed = time.perf_counter() - began
            print(
                f"\n2,000 occurrences, 2 engines on PostgreSQL: {elapsed:.2f} s "
                f"({SCHEDULES / elapsed:.0f} runs/s); fired per engine: "
                f"{[r.fired for r in reports]}"
            )
        finally:
            for device in devices:
                await device.__aexit__(None, None, None)

    assert sum(r.fired for r in reports) == SCHEDULES
    assert sum(r.succeeded for r in reports) == SCHEDULES
    assert all(r.fired > 0 for r in reports)  # both engines took a share
    assert sum(r.missed + r.retried + r.lost for r in reports) == 0
    for device in devices:
        assert len(device.frames) == SCHEDULES // DEVICES
    async with Database(url) as db, db.session() as session:
        per_schedule = (
            await session.execute(
                select(ScheduleRunRow.schedule_id, func.count()).group_by(
                    ScheduleRunRow.schedule_id
                )
            )
        ).all()
        statuses = (
            await session.execute(
                select(ScheduleRunRow.status, func.count()).group_by(ScheduleRunRow.status)
            )
        ).all()
        runs = (await session.scalars(select(ScheduleRunRow))).all()
    assert len(per_schedule) == SCHEDULES  # none lost
    assert Counter(count for _, count in per_schedule) == {1: SCHEDULES}  # none twice
    assert dict(statuses) == {"succeed": SCHEDULES}
    assert all(len(run.attempts) == 1 for run in runs)
    due = {run.scheduled_at for run in runs}
    assert min(due) == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert max(due) == datetime(2026, 3, 2, 12, 0, 59, tzinfo=UTC)
    assert {run.started_at for run in runs} == {datetime(2026, 3, 2, 12, 1, tzinfo=UTC)}
