"""Bindings and device data for apps on SQLite and PostgreSQL, with a frozen clock.

Users bind devices through the service layer; reports and frames are written the way the gateway
writes them (``TelemetryRepository.apply_states`` / ``log_frames``) at chosen instants, and the
services must read back exactly what a bound user may see.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from iotcloud.app import running_services
from iotcloud.config import Settings
from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import (
    DeviceDisabled,
    DeviceNotBound,
    DeviceNotFound,
    FormInvalid,
    ProductKeyInvalid,
)
from iotcloud.services import telemetry as telemetry_module
from iotcloud.services.accounts import CurrentUser
from iotcloud.services.apps import App
from iotcloud.services.registry import Services
from iotcloud.services.telemetry import Aggregator, BucketUnit, FrameLogType
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.models import DeviceRow
from iotcloud.storage.telemetry import (
    FrameEvent,
    PresenceChange,
    StateChange,
    TelemetryRepository,
)
from tests.pg import free_port

# A Thursday; the week of 2026-03-02 starts on Monday 2026-03-02.
START = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "datapoints"


@dataclass(frozen=True)
class World:
    services: Services
    clock: FrozenClock
    app: App
    other_app: App
    product_key: str
    did: str
    mac: str
    device_id: int


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    clock = FrozenClock(START)
    settings = Settings.load(
        {},
        data_dir=tmp_path,
        http_host="127.0.0.1",
        database_url=database_url,
        mqtt_port=free_port(),
    )
    async with running_services(settings, clock) as services:
        definition = json.loads((FIXTURES / "var_len_speaker.json").read_text())
        product_key = (await services.products.import_definition(definition)).product_key
        made = await services.devices.create(product_key, "AA:BB:CC:00:00:01")
        apps = []
        for name in ("Speaker app", "Other app"):
            creds = await services.apps.create(name)
            apps.append(await services.apps.get(creds.appid))
        async with services.devices.db.session() as session:
            row = await DeviceRepository(session).by_did(made.did)
        assert row is not None
        yield World(services, clock, apps[0], apps[1], product_key, made.did, made.mac, row.id)


async def new_user(world: World, app: App | None = None) -> CurrentUser:
    app = app or world.app
    accounts = world.services.accounts
    issued = await accounts.create_with_username(app, "u" + uuid.uuid4().hex[:12], "secret-pw-1")
    return await accounts.authenticate(app, issued.token)


async def report(world: World, at: datetime, **values: Any) -> None:
    async with world.services.devices.db.session() as session:
        await TelemetryRepository(session).apply_states(
            [StateChange(world.device_id, at, values)], history=True
        )


async def frames(world: World, *events: tuple[datetime, str, bytes | None, str | None]) -> None:
    async with world.services.devices.db.session() as session:
        await TelemetryRepository(session).log_frames(
            [
                FrameEvent(world.device_id, at, kind, payload, detail)
                for at, kind, payload, detail in events
            ]
        )


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


# -- presence --------------------------------------------------------------------------------------


async def presence(world: World, *changes: PresenceChange) -> tuple[bool, Any, Any]:
    """Apply ``changes`` as one batch; the device's (is_online, last_online_at,
    last_offline_at) after it."""
    async with world.services.devices.db.session() as session:
        await TelemetryRepository(session).set_presence(list(changes))
    async with world.services.devices.db.session() as session:
        row = (
            await session.execute(
                select(
                    DeviceRow.is_online, DeviceRow.last_online_at, DeviceRow.last_offline_at
                ).where(DeviceRow.id == world.device_id)
            )
        ).one()
    return bool(row[0]), row[1], row[2]


async def test_presence_changes_stored_out_of_order_leave_the_latest(world: World) -> None:
    """Two gateways may store a quick connect and disconnect in either order: a change with the
    broker's instant (``ordered``) applies only if nothing later is stored."""
    device = world.device_id

    def change(hours: float, online: bool, ordered: bool = True) -> PresenceChange:
        return PresenceChange(device, at(hours), online, ordered=ordered)

    # the disconnect is stored first: the older connect does not bring the device back
    assert await presence(world, change(2, False)) == (False, None, at(2))
    assert await presence(world, change(1, True)) == (False, None, at(2))
    # a later connect does
    assert await presence(world, change(3, True)) == (True, at(3), at(2))
    # an older disconnect changes nothing
    assert await presence(world, change(2.5, False)) == (True, at(3), at(2))
    # within one batch the latest wins, wherever it is
    assert await presence(world, change(5, False), change(4, True)) == (False, at(3), at(5))
    # a change with the process's own clock (one broker, in order) always applies
    assert await presence(world, change(4.5, True, ordered=False)) == (True, at(4.5), at(5))


async def test_devices_gone_without_a_close_are_stored_offline_once(world: World) -> None:
    """A broker node that crashed says nothing of its connections: every gateway that notices
    stores its devices offline, and only the first one changes (and logs) anything."""
    device = world.device_id
    assert await presence(world, PresenceChange(device, at(1), True, ordered=True)) == (
        True,
        at(1),
        None,
    )

    async def gone(hours: float) -> list[int]:
        async with world.services.devices.db.session() as session:
            return await TelemetryRepository(session).set_offline_if_online([device], at(hours))

    async def online(since_before: float) -> list[tuple[int, str]]:
        async with world.services.devices.db.session() as session:
            return await TelemetryRepository(session).online_devices(at(since_before))

    assert await online(2) == [(device, world.did)]
    assert await online(1) == []  # came online at 1: not before it
    assert await gone(2) == [device]
    assert await gone(2) == []  # the second gateway: nothing left to change
    assert await presence(world) == (False, at(1), at(2))
    # online again at 3: a loss noticed with an older instant changes nothing
    await presence(world, PresenceChange(device, at(3), True, ordered=True))
    assert await gone(2.5) == []
    assert await presence(world) == (True, at(3), at(2))


# -- bindings --------------------------------------------------------------------------------------


async def test_the_first_binder_owns_the_device_and_later_ones_are_guests(world: World) -> None:
    bindings = world.services.bindings
    alice, bob = await new_user(world), await new_user(world)
    owned = await bindings.bind(alice, world.did, dev_alias="Kitchen", remark="by the window")
    assert owned.binding.role == "owner"
    assert (owned.binding.dev_alias, owned.binding.remark) == ("Kitchen", "by the window")
    assert owned.binding.created_at == START
    assert (owned.did, owned.product_key, owned.mac) == (world.did, world.product_key, world.mac)
    assert owned.product_name == "Smart Speaker (var_len)"
    assert (await bindings.bind(bob, world.did)).binding.role == "guest"

    again = await bindings.bind(alice, world.did, dev_alias="ignored")
    assert (again.binding.role, again.binding.dev_alias) == ("owner", "Kitchen")
    assert await bindings.is_bound(alice, world.did)
    assert (await bindings.require_bound(bob, world.did)).binding.role == "guest"


async def test_roles_are_per_app(world: World) -> None:
    bindings = world.services.bindings
    await bindings.bind(await new_user(world), world.did)
    elsewhere = await new_user(world, world.other_app)
    assert (await bindings.bind(elsewhere, world.did)).binding.role == "owner"


async def test_only_bound_users_see_a_device(world: World) -> None:
    bindings = world.services.bindings
    owner, stranger = await new_user(world), await new_user(world)
    await bindings.bind(owner, world.did)
    with pytest.raises(DeviceNotBound) as not_bound:
        await bindings.require_bound(stranger, world.did)
    assert not_bound.value.code == 9017
    assert not await bindings.is_bound(stranger, world.did)
    with pytest.raises(DeviceNotFound) as unknown:
        await bindings.require_bound(owner, "a" * 22)
    assert unknown.value.code == 9014
    assert not await bindings.is_bound(owner, "a" * 22)


async def test_an_owner_unbinding_takes_the_guests_of_its_app_along(world: World) -> None:
    bindings = world.services.bindings
    owner, guest = await new_user(world), await new_user(world)
    elsewhere = await new_user(world, world.other_app)
    for user in (owner, guest, elsewhere):
        await bindings.bind(user, world.did)
    await bindings.unbind(owner, world.did)
    assert not await bindings.is_bound(owner, world.did)
    assert not await bindings.is_bound(guest, world.did)
    assert await bindings.is_bound(elsewhere, world.did)
    assert (await bindings.bind(guest, world.did)).binding.role == "owner"


async def test_a_guest_unbinding_leaves_the_owner(world: World) -> None:
    bindings = world.services.bindings
    owner, guest = await new_user(world), await new_user(world)
    await bindings.bind(owner, world.did)
    await bindings.bind(guest, world.did)
    await bindings.unbind(guest, world.did)
    assert await bindings.is_bound(owner, world.did)
    with pytest.raises(DeviceNotBound):
        await bindings.unbind(guest, world.did)
    with pytest.raises(DeviceNotFound):
        await bindings.unbind(guest, "b" * 22)


async def test_concurrent_first_binds_make_exactly_one_owner(world: World) -> None:
    users = [await new_user(world) for _ in range(6)]
    bound = await asyncio.gather(*(world.services.bindings.bind(u, world.did) for u in users))
    assert sorted(b.binding.role for b in bound) == ["guest"] * 5 + ["owner"]


async def test_binding_refuses_disabled_devices_and_long_texts(world: World) -> None:
    user = await new_user(world)
    with pytest.raises(FormInvalid, match="dev_alias"):
        await world.services.bindings.bind(user, world.did, dev_alias="x" * 129)
    with pytest.raises(FormInvalid, match="remark"):
        await world.services.bindings.bind(user, world.did, remark="x" * 1025)
    await world.services.devices.set_disabled(world.did, True)
    with pytest.raises(DeviceDisabled):
        await world.services.bindings.bind(user, world.did)
    assert not await world.services.bindings.is_bound(user, world.did)


async def test_finding_a_bound_device_by_product_and_mac(world: World) -> None:
    bindings = world.services.bindings
    owner, stranger = await new_user(world), await new_user(world)
    await bindings.bind(owner, world.did)
    found = await bindings.find_bound(owner, world.product_key.upper(), "aa-bb-cc-00-00-01")
    assert found.did == world.did
    with pytest.raises(DeviceNotBound) as refused:
        await bindings.find_bound(stranger, world.product_key, world.mac)
    assert world.did not in str(refused.value.detail)  # a stranger does not learn the did
    with pytest.raises(DeviceNotFound):
        await bindings.find_bound(owner, world.product_key, "aabbcc000002")
    with pytest.raises(ProductKeyInvalid):
        await bindings.find_bound(owner, "0" * 32, world.mac)
    with pytest.raises(ProductKeyInvalid):
        await bindings.find_bound(owner, "nothex", world.mac)
    with pytest.raises(FormInvalid, match="mac"):
        await bindings.find_bound(owner, world.product_key, "aabbcc")


# -- history ---------------------------------------------------------------------------------------


async def test_history_pages_newest_first_within_the_range(world: World) -> None:
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    for hour in range(10):
        await report(world, at(hour), Volume=hour, Power=hour % 2 == 0)
    history = world.services.telemetry.history
    page = await history(user, world.did, limit=3)
    assert page.total == 10
    assert [e.attrs["Volume"] for e in page.entries] == [9, 8, 7]
    assert page.entries[0].attrs == {"Volume": 9, "Power": False}
    assert page.entries[0].at == at(9)
    second = await history(user, world.did, limit=3, skip=3, descending=False)
    assert [e.attrs["Volume"] for e in second.entries] == [3, 4, 5]
    ranged = await history(user, world.did, start=at(2), end=at(4), limit=100)
    assert (ranged.total, [e.attrs["Volume"] for e in ranged.entries]) == (3, [4, 3, 2])


async def test_history_of_one_attr_skips_reports_without_it(world: World) -> None:
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    await report(world, at(0), Volume=10, Mode="Music")
    await report(world, at(1), Mode="Radio")  # a var_len report carrying one value
    await report(world, at(2), Volume=12)
    page = await world.services.telemetry.history(user, world.did, attr="Volume")
    assert page.total == 2
    assert [(e.at, e.attrs) for e in page.entries] == [
        (at(2), {"Volume": 12}),
        (at(0), {"Volume": 10}),
    ]


async def test_history_refuses_bad_queries_and_strangers(world: World) -> None:
    user, stranger = await new_user(world), await new_user(world)
    await world.services.bindings.bind(user, world.did)
    history = world.services.telemetry.history
    with pytest.raises(FormInvalid, match="attr: Loudness"):
        await history(user, world.did, attr="Loudness")
    with pytest.raises(FormInvalid, match="start_ts"):
        await history(user, world.did, start=at(2), end=at(1))
    with pytest.raises(FormInvalid, match="limit"):
        await history(user, world.did, limit=1001)
    with pytest.raises(FormInvalid, match="skip"):
        await history(user, world.did, skip=-1)
    with pytest.raises(DeviceNotBound):
        await history(stranger, world.did)
    with pytest.raises(DeviceNotFound):
        await history(user, "c" * 22)


# -- aggregation -----------------------------------------------------------------------------------


async def aggregate(
    world: World,
    user: CurrentUser,
    attrs: Sequence[str],
    aggregator: str,
    unit: str,
    start: datetime = START - timedelta(days=60),
    end: datetime = START + timedelta(days=60),
) -> list[tuple[datetime, dict[str, Any]]]:
    result = await world.services.telemetry.aggregate(
        user,
        world.did,
        start=start,
        end=end,
        attrs=attrs,
        aggregator=Aggregator(aggregator),
        unit=BucketUnit(unit),
    )
    assert (result.did, result.product_key) == (world.did, world.product_key)
    return [(bucket.start, bucket.values) for bucket in result.buckets]


async def test_hourly_and_daily_aggregates(world: World) -> None:
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    await report(world, at(0), Volume=10, Temperature=20.5)
    await report(world, at(0.5), Volume=30, Temperature=21.1)
    await report(world, at(1.25), Volume=5)
    await report(world, at(13), Volume=7, Temperature=-3.2)  # 01:00 the next day
    await report(world, at(0.75), Mode="Story")  # no numbers: counts nowhere

    hour, day = START, START.replace(hour=0)
    assert await aggregate(world, user, ["Volume", "Temperature"], "sum", "hours") == [
        (hour, {"Volume": 40, "Temperature": 41.6}),
        (hour + timedelta(hours=1), {"Volume": 5, "Temperature": None}),
        (hour + timedelta(hours=13), {"Volume": 7, "Temperature": -3.2}),
    ]
    assert await aggregate(world, user, ["Volume"], "avg", "hours") == [
        (hour, {"Volume": 20.0}),
        (hour + timedelta(hours=1), {"Volume": 5.0}),
        (hour + timedelta(hours=13), {"Volume": 7.0}),
    ]
    assert await aggregate(world, user, ["Volume", "Temperature"], "max", "days") == [
        (day, {"Volume": 30, "Temperature": 21.1}),
        (day + timedelta(days=1), {"Volume": 7, "Temperature": -3.2}),
    ]
    assert await aggregate(world, user, ["Temperature"], "min", "days") == [
        (day, {"Temperature": 20.5}),
        (day + timedelta(days=1), {"Temperature": -3.2}),
    ]
    # the range is inclusive at both ends and cuts reports outside it
    assert await aggregate(world, user, ["Volume"], "sum", "days", at(0.5), at(1.25)) == [
        (day, {"Volume": 35}),
    ]


async def test_weekly_buckets_start_on_monday_and_monthly_on_the_first(world: World) -> None:
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    sunday = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    monday = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    for instant, volume in (
        (datetime(2026, 2, 23, 0, 0, tzinfo=UTC), 1),  # Monday of the week before
        (sunday, 2),
        (monday, 4),
        (datetime(2026, 3, 8, 23, 0, tzinfo=UTC), 8),  # the Sunday ending that week
        (datetime(2026, 3, 31, 23, 59, tzinfo=UTC), 16),
        (datetime(2026, 4, 1, 0, 0, tzinfo=UTC), 32),
    ):
        await report(world, instant, Volume=volume)
    assert await aggregate(world, user, ["Volume"], "sum", "weeks") == [
        (datetime(2026, 2, 23, tzinfo=UTC), {"Volume": 3}),
        (monday, {"Volume": 12}),
        (datetime(2026, 3, 30, tzinfo=UTC), {"Volume": 48}),
    ]
    assert await aggregate(world, user, ["Volume"], "sum", "months") == [
        (datetime(2026, 2, 1, tzinfo=UTC), {"Volume": 1}),
        (datetime(2026, 3, 1, tzinfo=UTC), {"Volume": 30}),
        (datetime(2026, 4, 1, tzinfo=UTC), {"Volume": 32}),
    ]
    assert await aggregate(world, user, ["Volume"], "avg", "months") == [
        (datetime(2026, 2, 1, tzinfo=UTC), {"Volume": 1.0}),
        (datetime(2026, 3, 1, tzinfo=UTC), {"Volume": 7.5}),
        (datetime(2026, 4, 1, tzinfo=UTC), {"Volume": 32.0}),
    ]


async def test_aggregation_refuses_non_numeric_and_unknown_attrs(world: World) -> None:
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    for attrs, named in (
        (["Volume", "Power"], "attrs: Power is not numeric (bool)"),
        (["Mode"], "attrs: Mode is not numeric (enum)"),
        (["Greeting"], "attrs: Greeting is not numeric (binary)"),
        (["Loudness"], "attrs: Loudness is not a data point"),
        (["Volume", "Volume"], "attrs: Volume is named twice"),
        ([], "attrs: name at least one"),
    ):
        with pytest.raises(FormInvalid) as refused:
            await aggregate(world, user, attrs, "sum", "hours")
        assert (refused.value.detail or "").startswith(named), refused.value.detail
    with pytest.raises(FormInvalid, match="start_ts"):
        await aggregate(world, user, ["Volume"], "sum", "hours", at(1), at(0))


async def test_aggregation_scans_a_bounded_number_of_reports(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    for minute in range(4):
        await report(world, at(minute / 60), Volume=minute)
    monkeypatch.setattr(telemetry_module, "AGGREGATE_MAX_REPORTS", 3)
    with pytest.raises(FormInvalid, match=r"start_ts: the range holds 4 reports, more than the 3"):
        await aggregate(world, user, ["Volume"], "sum", "hours")
    assert await aggregate(world, user, ["Volume"], "sum", "hours", at(0), at(2 / 60)) == [
        (START, {"Volume": 3})
    ]


async def test_strangers_cannot_aggregate(world: World) -> None:
    owner, stranger = await new_user(world), await new_user(world, world.other_app)
    await world.services.bindings.bind(owner, world.did)
    with pytest.raises(DeviceNotBound):
        await aggregate(world, stranger, ["Volume"], "sum", "hours")


# -- frame log (raw_data) --------------------------------------------------------------------------


async def logged_device(world: World) -> CurrentUser:
    """A bound user and a frame log of two sessions."""
    user = await new_user(world)
    await world.services.bindings.bind(user, world.did)
    await frames(
        world,
        (at(-3), "dev_online", None, "10.0.0.5:5555"),
        (at(-2.9), "dev2app", b"\x00\x00\x00\x03\x04\x00\x00\x91", None),
        (at(-2.8), "app2dev", b"\x00\x00\x00\x03\x04\x00\x00\x93", "app1"),
        (at(-2), "dev_offline", None, "keepalive_timeout"),
        (at(-1), "dev_online", None, "[::1]:6000"),
        (at(-0.5), "dev2app", b"\x01\x02", "client7"),
    )
    return user


async def test_the_frame_log_pages_frames_and_presence_apart(world: World) -> None:
    user = await logged_device(world)
    frame_log = world.services.telemetry.frame_log
    cmd = await frame_log(user, world.did, log_type=FrameLogType.CMD, start=at(-4), end=at(0))
    assert cmd.total == 3
    assert [(e.kind, e.at, e.payload, e.ip) for e in cmd.entries] == [
        ("dev2app", at(-0.5), b"\x01\x02", "::1"),
        ("app2dev", at(-2.8), b"\x00\x00\x00\x03\x04\x00\x00\x93", "10.0.0.5"),
        ("dev2app", at(-2.9), b"\x00\x00\x00\x03\x04\x00\x00\x91", "10.0.0.5"),
    ]
    online = await frame_log(
        user, world.did, log_type=FrameLogType.ONLINE, start=at(-4), end=at(0), descending=False
    )
    assert [(e.kind, e.ip, e.reason) for e in online.entries] == [
        ("dev_online", "10.0.0.5", None),
        ("dev_offline", "10.0.0.5", "keepalive_timeout"),
        ("dev_online", "::1", None),
    ]
    paged = await frame_log(
        user, world.did, log_type=FrameLogType.ONLINE, start=at(-4), end=at(0), limit=1, skip=1
    )
    assert (paged.total, [e.kind for e in paged.entries]) == (3, ["dev_offline"])
    narrow = await frame_log(user, world.did, log_type=FrameLogType.CMD, start=at(-1), end=at(-0.5))
    assert [(e.at, e.ip) for e in narrow.entries] == [(at(-0.5), "::1")]


async def test_the_frame_log_keeps_to_gizwits_windows(world: World) -> None:
    user = await logged_device(world)
    frame_log = world.services.telemetry.frame_log
    cmd = FrameLogType.CMD
    for kwargs, named in (
        ({"start": at(-1), "end": at(-2)}, "start_time: must not be after end_time"),
        ({"start": at(-49), "end": at(0)}, "end_time: the window may span at most 48 hours"),
        ({"start": at(0), "end": at(0.25)}, "end_time: must not be in the future"),
        ({"start": at(-24 * 7 - 1), "end": at(-24 * 7 + 1)}, "start_time: must lie within"),
        ({"start": at(-1), "end": at(0), "skip": 4001, "limit": 1000}, "skip: skip + limit"),
        ({"start": at(-1), "end": at(0), "limit": 1001}, "limit: must be 1 to 1000"),
        ({"start": at(-1), "end": at(0), "skip": -1}, "skip: must not be negative"),
    ):
        with pytest.raises(FormInvalid) as refused:
            await frame_log(user, world.did, log_type=cmd, **kwargs)
        assert (refused.value.detail or "").startswith(named), refused.value.detail
    # exactly 48 hours, ending a little ahead of the server's clock, is fine
    await frame_log(user, world.did, log_type=cmd, start=at(-47.95), end=at(0.05))
    stranger = await new_user(world)
    with pytest.raises(DeviceNotBound):
        await frame_log(user=stranger, did=world.did, log_type=cmd, start=at(-1), end=at(0))


# -- latest state merge ----------------------------------------------------------------------------


async def test_the_latest_state_merges_points_and_replaces_struct_values_whole(
    world: World,
) -> None:
    """A data-template struct value is one data point: a newer report replaces it whole (no
    member of the older value survives), within one batch and across batches, while other
    points merge and each keeps the time it was last reported."""
    async with world.services.devices.db.session() as session:
        await TelemetryRepository(session).apply_states(
            [
                StateChange(world.device_id, at(0), {"a": 1, "s": {"x": 1, "y": 2}}),
                StateChange(world.device_id, at(1), {"s": {"x": 3, "z": 4}}),
            ],
            history=False,
        )
    await report(world, at(2), b=True)
    await report(world, at(3), s={"y": 5})
    latest = await world.services.telemetry.latest(world.did)
    assert latest.attrs == {"a": 1, "b": True, "s": {"y": 5}}
    async with world.services.devices.db.session() as session:
        row = await TelemetryRepository(session).latest(world.device_id)
    assert row is not None
    ms = {name: int(at(hours).timestamp() * 1000) for name, hours in (("a", 0), ("b", 2), ("s", 3))}
    assert row.attr_times == ms


# -- a new ownership ---------------------------------------------------------------------------


async def test_a_new_passcode_ends_every_binding_and_the_past_stays_with_the_old_owners(
    world: World,
) -> None:
    services, bindings = world.services, world.services.bindings
    heard: list[tuple[str, bool]] = []
    owners: list[str] = []

    async def new_owner(did: str, changes: Sequence[Any]) -> None:
        owners.append(did)
        heard.extend((change.did, change.bound) for change in changes)

    services.devices.on_new_owner = new_owner
    alice, elsewhere = await new_user(world), await new_user(world, world.other_app)
    for user in (alice, elsewhere):
        await bindings.bind(user, world.did)
    await report(world, at(1), Volume=1)
    await frames(world, (at(1), "dev_online", None, "10.0.0.9:4000"))
    passcode = (await services.devices.get(world.did)).passcode

    world.clock.set(at(2))
    assert await services.devices.register(world.product_key, world.mac, passcode) == world.did
    assert owners == []  # a reboot: same passcode, nothing ends
    world.clock.set(at(3))
    assert await services.devices.register(world.product_key, world.mac, "NEWOWNER01") == world.did
    assert owners == [world.did]
    assert sorted(heard) == [(world.did, False), (world.did, False)]
    for user in (alice, elsewhere):
        assert not await bindings.is_bound(user, world.did)
    device = await services.devices.get(world.did)
    assert device.passcode == "NEWOWNER01"

    world.clock.set(at(4))
    await report(world, at(3.5), Volume=2)  # before the new owner's binding
    newcomer = await new_user(world)
    bound = await bindings.bind(newcomer, world.did)
    assert bound.visible_from == at(4)
    await report(world, at(5), Volume=3)
    world.clock.set(at(6))
    page = await services.telemetry.history(newcomer, world.did, start=at(0))
    assert [(entry.at, entry.attrs["Volume"]) for entry in page.entries] == [(at(5), 3)]
    assert page.total == 1
    log = await services.telemetry.frame_log(
        newcomer, world.did, log_type=FrameLogType.ONLINE, start=at(0), end=at(6)
    )
    assert log.entries == []
    assert log.total == 0


async def test_renaming_a_binding_while_it_is_removed_is_not_bound_never_a_crash(
    world: World,
) -> None:
    bindings = world.services.bindings
    user = await new_user(world)
    for _ in range(10):
        await bindings.bind(user, world.did)
        outcomes = await asyncio.gather(
            *(bindings.update(user, world.did, remark=f"r{i}") for i in range(4)),
            bindings.unbind(user, world.did),
            return_exceptions=True,
        )
        assert outcomes[-1] is None
        for outcome in outcomes[:-1]:
            assert (
                outcome is None or isinstance(outcome, DeviceNotBound) or outcome.did == world.did
            )
        assert not await bindings.is_bound(user, world.did)
