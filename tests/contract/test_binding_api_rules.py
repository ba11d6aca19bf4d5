"""The binding API's rules on SQLite and PostgreSQL, with a frozen clock.

Signed binding by MAC, binding by passcode in batches, unbinding, listing, per-user names and
labels, who is bound (masked) and the owner removing guests, all through ``BindingService``, plus
the change hook the WebSocket API listens on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text, update

from iotcloud.app import running_services
from iotcloud.config import Settings
from iotcloud.domain.clock import FrozenClock
from iotcloud.errors import (
    DeviceDisabled,
    DeviceNotBound,
    DeviceNotFound,
    FormInvalid,
    IotCloudError,
    ProductKeyInvalid,
    SignatureInvalid,
    TimestampInvalid,
)
from iotcloud.services.accounts import CurrentUser
from iotcloud.services.apps import App
from iotcloud.services.bindings import (
    BATCH_MAX,
    BindingChange,
    BindingService,
    BoundDevice,
    PasscodeBind,
)
from iotcloud.services.registry import Services
from iotcloud.storage.models import BindingRow, UserRow, UTCDateTime
from tests.pg import free_port

START = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
NOW_S = int(START.timestamp())
FIXTURES = Path(__file__).parents[1] / "fixtures" / "datapoints"


@dataclass(frozen=True)
class Device:
    did: str
    mac: str
    passcode: str


@dataclass
class World:
    services: Services
    clock: FrozenClock
    app: App
    other_app: App
    product_key: str
    product_secret: str
    other_secret: str
    devices: list[Device]
    changes: list[BindingChange] = field(default_factory=list)

    @property
    def bindings(self) -> BindingService:
        return self.services.bindings


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
        definition = json.loads((FIXTURES / "pet_house.json").read_text())
        made = await services.products.import_definition(definition)
        other = json.loads((FIXTURES / "var_len_speaker.json").read_text())
        other_made = await services.products.import_definition(other)
        devices = []
        for n in range(4):
            creds = await services.devices.create(made.product_key, f"AA:BB:CC:00:00:0{n}")
            devices.append(Device(creds.did, creds.mac, creds.passcode))
        apps = []
        for name in ("Pet app", "Other app"):
            app_creds = await services.apps.create(name)
            apps.append(await services.apps.get(app_creds.appid))
        world = World(
            services,
            clock,
            apps[0],
            apps[1],
            made.product_key,
            made.product_secret,
            other_made.product_secret,
            devices,
        )

        async def record(change: BindingChange) -> None:
            world.changes.append(change)

        services.bindings.on_change = record
        yield world


async def new_user(world: World, app: App | None = None, name: str | None = None) -> CurrentUser:
    app = app or world.app
    accounts = world.services.accounts
    issued = await accounts.create_with_username(
        app, name or "u" + uuid.uuid4().hex[:12], "secret-pw-1"
    )
    return await accounts.authenticate(app, issued.token)


def signature(secret: str, timestamp: int | str) -> str:
    return hashlib.md5(f"{secret}{timestamp}".encode(), usedforsecurity=False).hexdigest()


async def bind_mac(
    world: World,
    user: CurrentUser,
    device: Device,
    *,
    timestamp: str | None = str(NOW_S),
    sig: str | None = None,
    product_key: str | None = None,
    **texts: str,
) -> BoundDevice:
    if sig is None and timestamp is not None:
        sig = signature(world.product_secret, timestamp)
    return await world.bindings.bind_by_mac(
        user,
        product_key or world.product_key,
        device.mac,
        timestamp=timestamp,
        signature=sig,
        **texts,
    )


# -- bind by MAC, signed ---------------------------------------------------------------------------


async def test_a_signed_bind_by_mac_binds_the_first_user_as_owner(world: World) -> None:
    alice, bob = await new_user(world), await new_user(world)
    device = world.devices[0]
    colon_mac = ":".join(device.mac[i : i + 2] for i in range(0, 12, 2)).upper()
    bound = await world.bindings.bind_by_mac(
        alice,
        world.product_key.upper(),
        colon_mac,
        timestamp=str(NOW_S),
        signature=signature(world.product_secret, NOW_S).upper(),
        dev_alias=" Pet house ",
        remark="hall",
    )
    assert (bound.did, bound.binding.role) == (device.did, "owner")
    assert (bound.binding.dev_alias, bound.binding.remark) == ("Pet house", "hall")
    assert bound.binding.dev_label == ()
    assert (await bind_mac(world, bob, device)).binding.role == "guest"
    assert [(c.uid, c.did, c.bound) for c in world.changes] == [
        (alice.uid, device.did, True),
        (bob.uid, device.did, True),
    ]
    # binding again changes nothing and tells nobody
    await bind_mac(world, alice, device, dev_alias="other")
    assert (await world.bindings.require_bound(alice, device.did)).binding.dev_alias == "Pet house"
    assert len(world.changes) == 2


@pytest.mark.parametrize("skew", [-300, 300])
async def test_timestamps_within_five_minutes_are_accepted(world: World, skew: int) -> None:
    user = await new_user(world)
    await bind_mac(world, user, world.devices[0], timestamp=str(NOW_S + skew))
    assert await world.bindings.is_bound(user, world.devices[0].did)


@pytest.mark.parametrize(
    ("timestamp", "detail"),
    [
        (None, "missing"),
        ("", "missing"),
        ("12.5", "must be Unix seconds"),
        ("-5", "must be Unix seconds"),
        ("0x10", "must be Unix seconds"),
        (str(NOW_S - 301), "301 s behind"),
        (str(NOW_S + 301), "301 s ahead of"),
        (str(NOW_S * 1000), "ahead of"),  # milliseconds
    ],
)
async def test_stale_future_and_malformed_timestamps_answer_9043(
    world: World, timestamp: str | None, detail: str
) -> None:
    user = await new_user(world)
    sig = signature(world.product_secret, timestamp or "")
    with pytest.raises(TimestampInvalid) as refused:
        await bind_mac(world, user, world.devices[0], timestamp=timestamp, sig=sig)
    assert refused.value.code == 9043
    assert refused.value.detail is not None
    assert detail in refused.value.detail
    assert not await world.bindings.is_bound(user, world.devices[0].did)
    assert world.changes == []


async def test_a_replayed_signature_is_refused_once_the_window_has_passed(world: World) -> None:
    user = await new_user(world)
    sig = signature(world.product_secret, NOW_S)
    world.clock.advance(301)
    with pytest.raises(TimestampInvalid):
        await bind_mac(world, user, world.devices[0], sig=sig)


@pytest.mark.parametrize(
    "sig",
    [
        "",
        "0" * 32,
        "not hex at all",
        "é" * 32,
        "signature-of-another-timestamp",
        "secret-of-another-product",
    ],
)
async def test_wrong_signatures_answer_9044(world: World, sig: str) -> None:
    user = await new_user(world)
    if sig == "signature-of-another-timestamp":
        sig = signature(world.product_secret, NOW_S + 1)
    elif sig == "secret-of-another-product":
        sig = signature(world.other_secret, NOW_S)
    with pytest.raises(SignatureInvalid) as refused:
        await bind_mac(world, user, world.devices[0], sig=sig)
    assert refused.value.code == 9044
    assert not await world.bindings.is_bound(user, world.devices[0].did)


async def test_a_missing_signature_answers_9044(world: World) -> None:
    user = await new_user(world)
    with pytest.raises(SignatureInvalid, match="missing"):
        await world.bindings.bind_by_mac(
            user, world.product_key, world.devices[0].mac, timestamp=str(NOW_S), signature=None
        )


async def test_unknown_devices_are_told_only_to_signed_requests(world: World) -> None:
    user = await new_user(world)
    stranger = Device("x" * 22, "0242ac110099", "")
    with pytest.raises(SignatureInvalid):
        await bind_mac(world, user, stranger, sig="0" * 32)
    with pytest.raises(DeviceNotFound) as unknown:
        await bind_mac(world, user, stranger)
    assert unknown.value.code == 9014
    with pytest.raises(ProductKeyInvalid):
        await bind_mac(world, user, world.devices[0], product_key="0" * 32)
    with pytest.raises(ProductKeyInvalid):
        await bind_mac(world, user, world.devices[0], product_key="nothex")
    with pytest.raises(FormInvalid, match="mac"):
        await bind_mac(world, user, Device("", "aabbcc", ""))
    with pytest.raises(FormInvalid, match="dev_alias"):
        await bind_mac(world, user, world.devices[0], dev_alias="x" * 129)
    assert await world.bindings.list_bound(user) == []


async def test_a_disabled_device_cannot_be_bound_by_mac(world: World) -> None:
    user = await new_user(world)
    await world.services.devices.set_disabled(world.devices[0].did, True)
    with pytest.raises(DeviceDisabled) as refused:
        await bind_mac(world, user, world.devices[0])
    assert refused.value.code == 9023
    assert not await world.bindings.is_bound(user, world.devices[0].did)
    assert world.changes == []


# -- bind by passcode, in batches ------------------------------------------------------------------


async def test_a_batch_binds_the_good_items_and_lists_the_bad_ones(world: World) -> None:
    user = await new_user(world)
    good, wrong, disabled, already = world.devices
    await world.services.devices.set_disabled(disabled.did, True)
    await world.bindings.bind(user, already.did, dev_alias="kept")
    world.changes.clear()
    outcome = await world.bindings.bind_by_passcode(
        user,
        [
            PasscodeBind(good.did, good.passcode, dev_alias="Good", remark="r"),
            PasscodeBind(wrong.did, wrong.passcode.lower()),
            PasscodeBind("Z" * 22, "ABCDEFGHIJ"),
            PasscodeBind(disabled.did, disabled.passcode),
            PasscodeBind(already.did, already.passcode, dev_alias="ignored"),
            PasscodeBind("short", "x"),
        ],
    )
    assert outcome.success == [good.did, already.did]
    assert outcome.failed == [wrong.did, "Z" * 22, disabled.did, "short"]
    listed = await world.bindings.list_bound(user, show_disabled=True)
    assert [(d.did, d.binding.dev_alias) for d in listed] == [
        (already.did, "kept"),
        (good.did, "Good"),
    ]
    assert [c.did for c in world.changes] == [good.did]


async def test_a_wrong_passcode_leaves_the_device_to_its_owner(world: World) -> None:
    thief, owner = await new_user(world), await new_user(world)
    device = world.devices[0]
    assert (
        await world.bindings.bind_by_passcode(thief, [PasscodeBind(device.did, "WRONG")])
    ).failed
    outcome = await world.bindings.bind_by_passcode(
        owner, [PasscodeBind(device.did, device.passcode)]
    )
    assert outcome.success == [device.did]
    assert (await world.bindings.require_bound(owner, device.did)).binding.role == "owner"


@pytest.mark.parametrize(
    ("items", "detail"),
    [
        ([], "devices: at least one is required"),
        ([("d0", "")] * (BATCH_MAX + 1), f"devices: at most {BATCH_MAX}"),
        ([("d0", ""), ("d1", ""), ("d0", "")], "devices[2].did: "),
        ([("d0", ""), ("", "")], "devices[1].did: must not be empty"),
        ([("d0", ""), ("d1", "x" * 129)], "devices[1].dev_alias: at most 128 characters"),
    ],
)
async def test_malformed_batches_are_refused_before_anything_is_bound(
    world: World, items: list[tuple[str, str]], detail: str
) -> None:
    user = await new_user(world)
    names = {"d0": world.devices[0], "d1": world.devices[1]}
    batch = [
        PasscodeBind(
            names[did].did if did in names else did,
            names[did].passcode if did in names else "x",
            dev_alias=alias,
        )
        for did, alias in items
    ]
    with pytest.raises(FormInvalid) as refused:
        await world.bindings.bind_by_passcode(user, batch)
    assert refused.value.detail is not None
    assert refused.value.detail.startswith(detail)
    assert await world.bindings.list_bound(user) == []


# -- unbinding -------------------------------------------------------------------------------------


async def test_unbinding_a_batch_lists_what_was_not_bound(world: World) -> None:
    owner, guest, other = await new_user(world), await new_user(world), await new_user(world)
    first, second, third, _ = world.devices
    for device in (first, second):
        await world.bindings.bind(owner, device.did)
    await world.bindings.bind(guest, first.did)
    await world.bindings.bind(other, third.did)
    world.changes.clear()
    outcome = await world.bindings.unbind_many(owner, [first.did, third.did, "Q" * 22])
    assert (outcome.success, outcome.failed) == ([first.did], [third.did, "Q" * 22])
    # the guest left with the owner; the other user's device stayed theirs
    assert not await world.bindings.is_bound(guest, first.did)
    assert await world.bindings.is_bound(other, third.did)
    assert [d.did for d in await world.bindings.list_bound(owner)] == [second.did]
    assert {(c.uid, c.did, c.bound) for c in world.changes} == {
        (owner.uid, first.did, False),
        (guest.uid, first.did, False),
    }
    with pytest.raises(FormInvalid, match="given twice"):
        await world.bindings.unbind_many(owner, [second.did, second.did])
    assert await world.bindings.is_bound(owner, second.did)


# -- listing and naming ----------------------------------------------------------------------------


async def test_the_list_pages_in_binding_order_and_hides_disabled_devices(world: World) -> None:
    user, neighbour = await new_user(world), await new_user(world)
    order = [world.devices[i] for i in (2, 0, 3, 1)]
    for n, device in enumerate(order):
        world.clock.advance(1)
        await world.bindings.bind(user, device.did, dev_alias=f"d{n}")
    await world.bindings.bind(neighbour, order[0].did, dev_alias="theirs")
    await world.services.devices.set_disabled(order[1].did, True)

    listed = await world.bindings.list_bound(user, show_disabled=True)
    assert [d.did for d in listed] == [d.did for d in order]
    assert [d.binding.dev_alias for d in listed] == ["d0", "d1", "d2", "d3"]
    assert [d.is_disabled for d in listed] == [False, True, False, False]
    visible = await world.bindings.list_bound(user)
    assert [d.did for d in visible] == [order[0].did, order[2].did, order[3].did]
    page = await world.bindings.list_bound(user, limit=2, skip=1)
    assert [d.did for d in page] == [order[2].did, order[3].did]
    assert await world.bindings.list_bound(user, limit=2, skip=3) == []
    theirs = await world.bindings.list_bound(neighbour)
    assert [(d.did, d.binding.dev_alias, d.binding.role) for d in theirs] == [
        (order[0].did, "theirs", "guest")
    ]
    for limit, skip, name in ((0, 0, "limit"), (1001, 0, "limit"), (1, -1, "skip")):
        with pytest.raises(FormInvalid, match=name):
            await world.bindings.list_bound(user, limit=limit, skip=skip)


async def test_names_and_labels_belong_to_each_users_binding(world: World) -> None:
    owner, guest = await new_user(world), await new_user(world)
    did = world.devices[0].did
    await world.bindings.bind(owner, did, dev_alias="Kitchen", remark="r")
    await world.bindings.bind(guest, did, dev_alias="Mine")
    changed = await world.bindings.update(owner, did, dev_label=[" pets ", "hall"])
    assert (changed.binding.dev_alias, changed.binding.remark) == ("Kitchen", "r")
    assert changed.binding.dev_label == ("pets", "hall")
    changed = await world.bindings.update(owner, did, dev_alias="Porch", remark="")
    assert (changed.binding.dev_alias, changed.binding.remark) == ("Porch", "")
    assert changed.binding.dev_label == ("pets", "hall")
    again = await world.bindings.require_bound(owner, did)
    assert (again.binding.dev_alias, again.binding.dev_label) == ("Porch", ("pets", "hall"))
    theirs = await world.bindings.require_bound(guest, did)
    assert (theirs.binding.dev_alias, theirs.binding.dev_label) == ("Mine", ())
    cleared = await world.bindings.update(owner, did, dev_label=[])
    assert cleared.binding.dev_label == ()


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"dev_alias": "x" * 129}, "dev_alias: at most 128"),
        ({"remark": "x" * 1025}, "remark: at most 1024"),
        ({"dev_label": ["a"] * 21}, "dev_label: at most 20 labels"),
        ({"dev_label": ["a", " "]}, "dev_label[1]: must be 1 to 32"),
        ({"dev_label": ["x" * 33]}, "dev_label[0]: must be 1 to 32"),
        ({"dev_label": ["a", "b", "a "]}, "dev_label[2]: 'a' is given twice"),
    ],
)
async def test_bad_names_are_refused_and_nothing_changes(
    world: World, change: dict[str, object], detail: str
) -> None:
    user = await new_user(world)
    did = world.devices[0].did
    await world.bindings.bind(user, did, dev_alias="Kept")
    # a valid remark beside the bad field is not stored either
    arguments: dict[str, Any] = {"remark": "changed?", **change}
    with pytest.raises(FormInvalid) as refused:
        await world.bindings.update(user, did, **arguments)
    assert refused.value.detail is not None
    assert refused.value.detail.startswith(detail)
    assert (await world.bindings.require_bound(user, did)).binding.remark == ""
    with pytest.raises(FormInvalid) as empty:
        await world.bindings.update(user, did)
    assert empty.value.detail == "body: give dev_alias, remark or dev_label"


async def test_only_bound_users_rename(world: World) -> None:
    owner, stranger = await new_user(world), await new_user(world)
    did = world.devices[0].did
    await world.bindings.bind(owner, did, dev_alias="Kept")
    with pytest.raises(DeviceNotBound):
        await world.bindings.update(stranger, did, dev_alias="Mine")
    with pytest.raises(DeviceNotFound):
        await world.bindings.update(owner, "Q" * 22, dev_alias="x")
    assert (await world.bindings.require_bound(owner, did)).binding.dev_alias == "Kept"


# -- who is bound, and the owner removing guests ---------------------------------------------------


async def set_identity(world: World, user: CurrentUser, **values: str) -> None:
    async with world.services.devices.db.session() as session:
        await session.execute(update(UserRow).where(UserRow.id == user.user_id).values(**values))


async def test_bound_users_see_each_other_masked(world: World) -> None:
    owner = await new_user(world, name="alice2022")
    guest = await new_user(world)
    await set_identity(world, guest, username=None, phone="13812345678", email="bob@example.com")
    foreigner = await new_user(world, world.other_app)
    stranger = await new_user(world)
    did = world.devices[0].did
    await world.bindings.bind(owner, did)
    world.clock.advance(60)
    await world.bindings.bind(guest, did)
    await world.bindings.bind(foreigner, did)

    for viewer in (owner, guest):
        users = await world.bindings.bound_users(viewer, did)
        assert [(u.uid, u.username, u.phone, u.email, u.role, u.created_at) for u in users] == [
            (owner.uid, "a****2", None, None, "owner", START),
            (
                guest.uid,
                None,
                "138****5678",
                "b****b@example.com",
                "guest",
                START.replace(minute=1),
            ),
        ]
    elsewhere = await world.bindings.bound_users(foreigner, did)
    assert [(u.uid, u.role) for u in elsewhere] == [(foreigner.uid, "owner")]
    with pytest.raises(DeviceNotBound):
        await world.bindings.bound_users(stranger, did)
    with pytest.raises(DeviceNotFound):
        await world.bindings.bound_users(owner, "Q" * 22)


async def test_the_owner_removes_guests_and_nobody_else_does(world: World) -> None:
    owner, guest, second = await new_user(world), await new_user(world), await new_user(world)
    foreigner, stranger = await new_user(world, world.other_app), await new_user(world)
    did = world.devices[0].did
    for user in (owner, guest, second):
        await world.bindings.bind(user, did)
    await world.bindings.bind(foreigner, did)
    world.changes.clear()

    with pytest.raises(FormInvalid, match="only the owner") as refused:
        await world.bindings.remove_users(guest, did, [owner.uid, second.uid])
    assert refused.value.code == 9015
    with pytest.raises(DeviceNotBound):
        await world.bindings.remove_users(stranger, did, [guest.uid])
    with pytest.raises(DeviceNotFound):
        await world.bindings.remove_users(owner, "Q" * 22, [guest.uid])
    with pytest.raises(FormInvalid, match="uid"):
        await world.bindings.remove_users(owner, did, [])
    assert world.changes == []
    assert all([await world.bindings.is_bound(u, did) for u in (owner, guest, second)])

    outcome = await world.bindings.remove_users(
        owner, did, [guest.uid, owner.uid, foreigner.uid, stranger.uid, "nobody"]
    )
    assert (outcome.success, outcome.failed) == (
        [guest.uid],
        [owner.uid, foreigner.uid, stranger.uid, "nobody"],
    )
    assert not await world.bindings.is_bound(guest, did)
    assert await world.bindings.is_bound(second, did)
    assert await world.bindings.is_bound(owner, did)
    assert await world.bindings.is_bound(foreigner, did)
    assert [(c.uid, c.app_id, c.bound) for c in world.changes] == [(guest.uid, world.app.id, False)]
    # a removed guest may bind again, as a guest
    assert (await world.bindings.bind(guest, did)).binding.role == "guest"


# -- the change hook and storage ------------------------------------------------------------------


async def test_a_failing_hook_is_logged_and_the_binding_stands(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(change: BindingChange) -> None:
        raise RuntimeError("listener down")

    world.bindings.on_change = broken
    user = await new_user(world)
    did = world.devices[0].did
    with caplog.at_level(logging.ERROR, logger="iotcloud.services.bindings"):
        bound = await world.bindings.bind(user, did)
        await world.bindings.unbind(user, did)
    assert bound.binding.role == "owner"
    assert not await world.bindings.is_bound(user, did)
    failures = [r for r in caplog.records if "binding change hook failed" in r.getMessage()]
    assert len(failures) == 2
    assert did in failures[0].getMessage()


async def test_the_hook_hears_changes_only_after_they_are_committed(world: World) -> None:
    user = await new_user(world)
    did = world.devices[0].did
    seen: list[bool] = []

    async def check(change: BindingChange) -> None:
        # another unit of work sees the new state already
        seen.append(await world.services.bindings.is_bound(user, change.did))

    world.bindings.on_change = check
    await world.bindings.bind(user, did)
    await world.bindings.unbind(user, did)
    assert seen == [True, False]


async def test_bindings_made_before_labels_existed_read_as_unlabelled(world: World) -> None:
    user = await new_user(world)
    did = world.devices[0].did
    async with world.services.devices.db.session() as session:
        device_id = await session.scalar(text("SELECT id FROM devices WHERE did = :d"), {"d": did})
        # an insert that does not name dev_label, as rows written before migration 0005
        await session.execute(
            text(
                "INSERT INTO bindings (user_id, device_id, role, created_at)"
                " VALUES (:u, :d, 'owner', :t)"
            ).bindparams(bindparam("t", type_=UTCDateTime())),
            {"u": user.user_id, "d": device_id, "t": START},
        )
    bound = await world.bindings.require_bound(user, did)
    assert (bound.binding.role, bound.binding.dev_label, bound.binding.dev_alias) == (
        "owner",
        (),
        "",
    )
    async with world.services.devices.db.session() as session:
        row = await session.scalar(select(BindingRow).where(BindingRow.user_id == user.user_id))
    assert row is not None
    assert row.dev_label == []


def test_binding_errors_have_the_gizwits_codes() -> None:
    assert (TimestampInvalid().code, TimestampInvalid().http_status) == (9043, 400)
    assert (SignatureInvalid().code, SignatureInvalid().message) == (
        9044,
        "X-Gizwits-Signature invalid!",
    )
    assert isinstance(TimestampInvalid(), IotCloudError)
