"""The operator's schedule service on SQLite and PostgreSQL: every user's schedules, upcoming
firings from the shared recurrence rules, and run history with failed and missed runs first.
Runs are made by the real engine, stepped with a frozen clock, against real MQTT devices."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from iotcloud.domain.schedules import Recurrence, Weekly, parse_tencent_timer
from iotcloud.errors import FormInvalid, ScheduleNotFound
from iotcloud.services.schedule_admin import rule_text, run_view, schedule_detail_view
from tests.contract.test_scheduler import (
    Device,
    World,
    bound_device,
    daily,
    new_user,
    spec,
    task,
    utc,
    world,
)

__all__ = ["world"]  # the fixture, shared with the scheduler's own suite


async def test_lists_every_users_schedules_with_filters_and_readable_rules(world: World) -> None:
    scheduler, admin = world.services.scheduler, world.services.schedule_admin
    other = await new_user(world.services, world.app)
    mine = await bound_device(world)
    theirs = await bound_device(world, other)
    morning = await scheduler.create(world.user, spec(daily(7), task(world, mine)))
    world.clock.advance(1)
    berlin = parse_tencent_timer(
        days="0100010", time_point="7:30", repeat=1, time_zone="Europe/Berlin", default_zone="UTC"
    )
    timer = await scheduler.create(
        other, spec(berlin, task(world, theirs), dialect="tencent", device=theirs.did, name="Lamp")
    )
    world.clock.advance(1)
    off = await scheduler.create(
        world.user, spec(daily(21, 15), task(world, mine), enabled=False, name="night")
    )

    listed = await admin.list()
    assert [s.schedule_id for s in listed] == [off, timer, morning]
    by_id = {s.schedule_id: s for s in listed}
    assert by_id[morning].rule_text == "daily 07:00 UTC"
    assert by_id[timer].rule_text == "weekly mon,fri 07:30 Europe/Berlin"
    assert (by_id[timer].uid, by_id[timer].did, by_id[timer].dialect) == (
        other.uid,
        theirs.did,
        "tencent",
    )
    assert by_id[timer].appid == world.app.appid
    assert (by_id[off].enabled, by_id[off].next_due_at) == (False, None)
    assert by_id[morning].next_due_at == utc(2026, 3, 2, 7)
    assert by_id[morning].last_status is None

    assert [s.schedule_id for s in await admin.list(uid=other.uid)] == [timer]
    assert [s.schedule_id for s in await admin.list(did=theirs.did)] == [timer]
    # a schedule of no device is listed for the devices its tasks are for
    assert [s.schedule_id for s in await admin.list(did=mine.did)] == [off, morning]
    assert await admin.list(did="no-such-device") == []
    assert [s.schedule_id for s in await admin.list(enabled=False)] == [off]
    assert await admin.list(uid="no-such-uid") == []
    assert [s.schedule_id for s in await admin.list(limit=1, offset=1)] == [timer]
    with pytest.raises(FormInvalid, match="limit"):
        await admin.list(limit=0)
    with pytest.raises(FormInvalid, match="offset"):
        await admin.list(offset=-1)


async def test_a_schedule_shows_its_tasks_and_next_firings(world: World) -> None:
    scheduler, admin = world.services.scheduler, world.services.schedule_admin
    target = await bound_device(world)
    schedule_id = await scheduler.create(
        world.user, spec(daily(7), task(world, target), retry_count=3, retry_task="failed")
    )
    detail = await admin.get(schedule_id)
    assert detail.upcoming == [utc(2026, 3, day, 7) for day in range(2, 7)]
    assert detail.tasks == [
        {"did": target.did, "product_key": world.product_key, "attrs": {"LED_OnOff": True}}
    ]
    assert (detail.retry_count, detail.retry_task) == (3, "failed")
    view = schedule_detail_view(detail)
    assert view["upcoming"][0] == "2026-03-02T07:00:00.000Z"
    assert view["rule"] == "daily 07:00 UTC"

    await scheduler.set_enabled(world.user, schedule_id, False)
    assert (await admin.get(schedule_id)).upcoming == []
    with pytest.raises(ScheduleNotFound):
        await admin.get("no-such-schedule")


async def test_upcoming_lists_every_firing_in_the_window_soonest_first(world: World) -> None:
    scheduler, admin = world.services.scheduler, world.services.schedule_admin
    target = await bound_device(world)
    seven = await scheduler.create(world.user, spec(daily(7), task(world, target)))
    half = await scheduler.create(world.user, spec(daily(6, 30), task(world, target)))
    await scheduler.create(world.user, spec(daily(6, 45), task(world, target), enabled=False))

    firings = await admin.upcoming(within=timedelta(days=1, hours=1))
    assert [(f.schedule_id, f.at) for f in firings] == [
        (half, utc(2026, 3, 2, 6, 30)),
        (seven, utc(2026, 3, 2, 7)),
        (half, utc(2026, 3, 3, 6, 30)),
        (seven, utc(2026, 3, 3, 7)),
    ]
    assert firings[0].uid == world.user.uid
    assert [f.at for f in await admin.upcoming(within=timedelta(hours=1), limit=1)] == [
        utc(2026, 3, 2, 6, 30)
    ]
    assert await admin.upcoming(within=timedelta(minutes=29)) == []
    # an occurrence the engine has not handled yet stays listed while overdue
    world.at(utc(2026, 3, 2, 6, 40))
    assert (await admin.upcoming(within=timedelta(minutes=1)))[0].schedule_id == half
    for within in (timedelta(0), timedelta(days=367)):
        with pytest.raises(FormInvalid, match="within"):
            await admin.upcoming(within=within)


async def test_runs_put_failed_and_missed_first_with_every_attempt(world: World) -> None:
    scheduler, admin = world.services.scheduler, world.services.schedule_admin
    online = await bound_device(world)
    offline = await bound_device(world)
    good = await scheduler.create(world.user, spec(daily(7), task(world, online)))
    bad = await scheduler.create(
        world.user, spec(daily(7, 5), task(world, offline), retry_count=1, name="offline lamp")
    )
    async with Device(world.services, online, answer=True):
        # down until Tuesday 07:10: Monday's runs are missed, Tuesday's fire
        world.at(utc(2026, 3, 3, 7, 10))
        await world.run_due()
        world.at(utc(2026, 3, 3, 7, 10) + timedelta(seconds=60))
        await world.run_due()  # the retry of the offline device's run, which fails again

    runs = await admin.runs()
    assert [(r.schedule_id, r.scheduled_at, r.status) for r in runs] == [
        (bad, utc(2026, 3, 3, 7, 5), "failed"),
        (bad, utc(2026, 3, 2, 7, 5), "missed"),
        (good, utc(2026, 3, 2, 7), "missed"),
        (good, utc(2026, 3, 3, 7), "succeed"),
    ]
    failed = runs[0]
    assert failed.schedule_name == "offline lamp"
    assert [a.detail for a in failed.attempts] == [{offline.did: False}, {offline.did: False}]
    assert failed.detail == {offline.did: False}
    assert runs[1].attempts == []
    assert runs[1].note is not None
    assert run_view(failed)["attempts"][0]["detail"] == {offline.did: False}

    newest = await admin.runs(problems_first=False)
    assert [r.scheduled_at for r in newest] == sorted((r.scheduled_at for r in runs), reverse=True)
    assert [r.status for r in await admin.runs(good)] == ["missed", "succeed"]
    assert len(await admin.runs(limit=1)) == 1
    assert [(r.schedule_id, r.status) for r in await admin.recent_problems(limit=2)] == [
        (bad, "failed"),
        (bad, "missed"),
    ]
    assert {s.schedule_id: s.last_status for s in await admin.list()} == {
        good: "succeed",
        bad: "failed",
    }
    with pytest.raises(ScheduleNotFound):
        await admin.runs("no-such-schedule")
    with pytest.raises(FormInvalid, match="limit"):
        await admin.recent_problems(limit=0)


def test_rule_text_names_dates_and_bounds() -> None:
    weekly = Recurrence(
        Weekly(frozenset({0, 6})),
        time(23, 5),
        "Asia/Shanghai",
        utc(2026, 1, 1).date(),
        utc(2026, 2, 1).date(),
    )
    assert (
        rule_text(weekly) == "weekly mon,sun 23:05 Asia/Shanghai from 2026-01-01 until 2026-02-01"
    )
