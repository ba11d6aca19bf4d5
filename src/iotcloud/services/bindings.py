"""Bindings: which app users may see and control which devices.

A user belongs to one app, so bindings are per app: a user sees a device only through their own
binding. Within an app the first user to bind a device is its ``owner``; later binders are
``guest``s. When the owner unbinds, the guests of that app lose the device too (as Gizwits does
when a shared device's owner lets it go); the next user to bind becomes the owner. Aliases,
remarks and labels belong to the binding, so every user names a device their own way.

Users bind in three ways: by did + passcode (``POST /app/bindings``, several devices at once),
by product_key + MAC with a request signed with the product secret (``POST /app/bind_mac``), and,
for operators and tests, by did alone (:meth:`BindingService.bind`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, overload

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from iotcloud.domain import devices as rules
from iotcloud.domain.accounts import FieldInvalid
from iotcloud.domain.clock import Clock
from iotcloud.errors import (
    DeviceAuthInvalid,
    DeviceDisabled,
    DeviceNotBound,
    DeviceNotFound,
    FormInvalid,
    ProductKeyInvalid,
    SignatureInvalid,
    TimestampInvalid,
)
from iotcloud.services.validation import checked
from iotcloud.storage.bindings import AlreadyBound, BindingRepository, BoundUser, DeviceRecord
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository, ProductRepository
from iotcloud.storage.models import BindingRow, DeviceRow, ProductRow

log = logging.getLogger(__name__)

OWNER: Final = "owner"
GUEST: Final = "guest"
DEV_ALIAS_MAX: Final = 128
REMARK_MAX: Final = 1024
LABELS_MAX: Final = 20
LABEL_MAX: Final = 32
BATCH_MAX: Final = 100
LIST_LIMIT_MAX: Final = 1000
#: ``X-Gizwits-Timestamp`` may differ from the server's clock by this much, either way.
SIGNATURE_WINDOW_SECONDS: Final = 300

_UNIX_SECONDS: Final = re.compile(r"[0-9]{1,15}")


#: how many (ProductId, DeviceName) -> did answers `BindingService.did_named` keeps
NAMED_DIDS_MAX = 100_000


class AppUser(Protocol):
    """Whoever binds or reads: a signed-in user of an app (``CurrentUser`` is one)."""

    @property
    def app_id(self) -> int: ...

    @property
    def user_id(self) -> int: ...


@dataclass(frozen=True)
class Binding:
    role: str  # owner | guest
    dev_alias: str
    remark: str
    created_at: datetime
    dev_label: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoundDevice:
    """A device as the user bound to it sees it; ``state_updated_at`` is the time of its latest
    reported values (None before the first report)."""

    did: str
    product_key: str
    product_name: str
    mac: str
    """The MAC; empty for a data-template (Tencent) device, which has none."""
    name: str
    """The device's name within its product: the MAC, or a data-template device's DeviceName."""
    passcode: str
    is_online: bool
    is_disabled: bool
    mcu_soft_version: str | None
    mcu_hard_version: str | None
    wifi_soft_version: str | None
    wifi_hard_version: str | None
    binding: Binding
    state_updated_at: datetime | None
    visible_from: datetime | None = None
    """Since when the user may read the device's past (history, events, frame log): None for
    all of it, else since their binding or the device's last change of ownership, whichever
    is later (see `visible_from`)."""


@dataclass(frozen=True)
class BindingChange:
    """A binding made or removed: ``bound`` is True for a new binding, False for a removed one.

    ``user_id`` is the internal id (``CurrentUser.user_id``), ``uid`` the public one."""

    user_id: int
    uid: str
    app_id: int
    did: str
    bound: bool


OnBindingChange = Callable[[BindingChange], Awaitable[None]]


@dataclass(frozen=True)
class PasscodeBind:
    """One item of ``POST /app/bindings``."""

    did: str
    passcode: str
    dev_alias: str = ""
    remark: str = ""


@dataclass(frozen=True)
class BatchOutcome:
    """Which items of a batch were done (``success``) and which were refused (``failed``), in
    the order they were given."""

    success: list[str]
    failed: list[str]


@dataclass(frozen=True)
class DeviceUser:
    """A user bound to a device, as the other users of the device see them: ``username``,
    ``phone`` and ``email`` are masked (None when the user has none)."""

    uid: str
    username: str | None
    phone: str | None
    email: str | None
    role: str
    created_at: datetime


def visible_from(record: DeviceRecord, binding: BindingRow | None = None) -> datetime | None:
    """Since when the user bound by ``binding`` (default: ``record``'s) may read the device's
    past: once a device has changed ownership (registered with a new passcode), each user sees
    it only from their own binding, and never before the change; before any change, all of it
    (None)."""
    owner_since = record.device.owner_since
    binding = binding or record.binding
    if owner_since is None:
        return None
    if binding is None:
        return owner_since
    return max(owner_since, binding.created_at)


@overload
def clipped(start: datetime, floor: datetime | None) -> datetime: ...
@overload
def clipped(start: datetime | None, floor: datetime | None) -> datetime | None: ...
def clipped(start: datetime | None, floor: datetime | None) -> datetime | None:
    """``start`` moved up to ``floor`` (what the user may see), either may be None (open)."""
    if floor is None:
        return start
    return floor if start is None or start < floor else start


async def bound_record(session: AsyncSession, user: AppUser, did: str) -> DeviceRecord:
    """The device ``did`` as ``user`` sees it, within ``session``.

    Raises ``DeviceNotFound`` (9014) when there is no such device and ``DeviceNotBound`` (9017)
    when it exists but is not bound to ``user``.
    """
    record = await BindingRepository(session).device(did, user.user_id)
    if record is None:
        raise DeviceNotFound(f"no device with did {did!r}")
    if record.binding is None:
        raise DeviceNotBound(f"device {did} is not bound to this user")
    return record


class BindingService:
    """Binds and unbinds users and devices, and answers whether a user may see a device.

    Binds and unbinds of one device within one app are serialised (an advisory lock on
    PostgreSQL), so two first binders cannot both become the owner. Every method is its own unit
    of work (a batch method: one per item), so a refused item leaves nothing behind.

    ``on_change``, when given, hears of every binding made or removed — including the guests
    unbound with their owner and the guests an owner removes — once per user and device, after
    the change was committed (the WebSocket API pushes ``s2c_binding_changed`` from it). Binding
    a device again is no change. The hook's failures are logged and never reach the caller: the
    binding stands whether or not anybody could be told.
    """

    def __init__(
        self, db: Database, clock: Clock, on_change: OnBindingChange | None = None
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_change = on_change
        # (ProductId, DeviceName) as checked -> did. A device keeps its did and its name for
        # life (devices are disabled, never deleted or renamed), so a found pair is kept until
        # the cache is full; misses are not kept.
        self._named_dids: dict[tuple[str, str], str] = {}

    # -- binding --------------------------------------------------------------------------------

    async def bind(
        self, user: AppUser, did: str, *, dev_alias: str = "", remark: str = ""
    ) -> BoundDevice:
        """Bind ``user`` to ``did``: ``owner`` if nobody of the user's app owns it, else ``guest``.

        Binding again changes nothing and returns the existing binding. Raises ``DeviceNotFound``
        (9014), ``DeviceDisabled`` (9023), or ``FormInvalid`` (9015) naming ``dev_alias`` or
        ``remark`` when too long.
        """
        dev_alias = _bounded("dev_alias", dev_alias, DEV_ALIAS_MAX)
        remark = _bounded("remark", remark, REMARK_MAX)
        return await self._bind(user, did, dev_alias, remark)

    async def bind_by_mac(
        self,
        user: AppUser,
        product_key: str,
        mac: str,
        *,
        timestamp: str | None,
        signature: str | None,
        dev_alias: str = "",
        remark: str = "",
    ) -> BoundDevice:
        """``POST /app/bind_mac``: bind the device of (``product_key``, ``mac``), as :meth:`bind`.

        ``timestamp`` (Unix seconds) must lie within ``SIGNATURE_WINDOW_SECONDS`` of the clock,
        else ``TimestampInvalid`` (9043); ``signature`` must be the lower-case hex
        ``md5(product_secret + timestamp)`` (upper-case hex is accepted too), compared in constant
        time, else ``SignatureInvalid`` (9044). The device must exist: it registered itself or an
        operator created it. Raises, in this order, 9043, ``ProductKeyInvalid`` (9002) for a
        malformed product_key, ``FormInvalid`` (9015) naming ``mac``, ``dev_alias`` or
        ``remark``, 9002 for an unknown product_key, 9044, ``DeviceNotFound`` (9014) when the
        product has no such MAC, and ``DeviceDisabled`` (9023): only a signed request learns
        whether a MAC exists.
        """
        ts = self._check_timestamp(timestamp)
        key = _product_key(product_key)
        mac = checked(rules.check_mac, mac)
        dev_alias = _bounded("dev_alias", dev_alias, DEV_ALIAS_MAX)
        remark = _bounded("remark", remark, REMARK_MAX)
        async with self.db.session() as session:
            product = await ProductRepository(session).by_key(key)
            if product is None:
                raise ProductKeyInvalid(f"unknown product_key {key}")
            _check_signature(product.product_secret, ts, signature)
            record = await BindingRepository(session).device_by_mac(key, mac, user.user_id)
        if record is None:
            raise DeviceNotFound(f"product {key} has no device with mac {mac}")
        return await self._bind(user, record.device.did, dev_alias, remark)

    async def bind_by_passcode(self, user: AppUser, items: Sequence[PasscodeBind]) -> BatchOutcome:
        """``POST /app/bindings``: bind each device whose passcode matches, as :meth:`bind`.

        An unknown did, a wrong passcode (compared in constant time) or a disabled device puts
        the did under ``failed`` and leaves nothing behind for it; the other items go on. The
        whole call is refused with ``FormInvalid`` (9015), before anything is written, when the
        list is empty, longer than ``BATCH_MAX``, names a did twice, or an alias or remark is
        too long (the detail names ``devices[i].field``).
        """
        _check_batch("devices", [item.did for item in items], "did")
        texts = [
            (
                _bounded(f"devices[{i}].dev_alias", item.dev_alias, DEV_ALIAS_MAX),
                _bounded(f"devices[{i}].remark", item.remark, REMARK_MAX),
            )
            for i, item in enumerate(items)
        ]
        outcome = BatchOutcome([], [])
        for item, (dev_alias, remark) in zip(items, texts, strict=True):
            try:
                await self._bind(user, item.did, dev_alias, remark, passcode=item.passcode)
            except (DeviceNotFound, DeviceAuthInvalid, DeviceDisabled) as exc:
                log.info("user %d could not bind device %s: %s", user.user_id, item.did, exc)
                outcome.failed.append(item.did)
            else:
                outcome.success.append(item.did)
        return outcome

    async def _bind(
        self,
        user: AppUser,
        did: str,
        dev_alias: str,
        remark: str,
        *,
        passcode: str | None = None,
    ) -> BoundDevice:
        """Bind (checking ``passcode`` unless None) and tell ``on_change`` of a new binding."""
        try:
            async with self.db.session(lock=_lock(did, user)) as session:
                repo = BindingRepository(session)
                record = await repo.device(did, user.user_id)
                if record is None:
                    raise DeviceNotFound(f"no device with did {did!r}")
                # the passcode first: who does not know it learns nothing about the device
                if passcode is not None and not _same(passcode, record.device.passcode):
                    raise DeviceAuthInvalid(f"wrong passcode for device {did}")
                if record.device.is_disabled:
                    raise DeviceDisabled(f"device {did} is disabled")
                if record.binding is not None:
                    return _bound(record, record.binding)
                role = GUEST if await repo.owner(record.device.id, user.app_id) else OWNER
                binding = await repo.add(
                    BindingRow(
                        user_id=user.user_id,
                        device_id=record.device.id,
                        role=role,
                        dev_alias=dev_alias,
                        remark=remark,
                        dev_label=[],
                        created_at=self.clock.now(),
                    )
                )
                bound = _bound(record, binding)
                uid = await repo.uid_of(user.user_id) if self.on_change else ""
        except AlreadyBound:  # only another process on the same SQLite file can race here
            return await self.require_bound(user, did)
        log.info("device %s bound to user %d as %s", did, user.user_id, role)
        await self._tell([BindingChange(user.user_id, uid, user.app_id, did, bound=True)])
        return bound

    # -- unbinding ------------------------------------------------------------------------------

    async def unbind(self, user: AppUser, did: str) -> None:
        """Remove ``user``'s binding to ``did``; when the owner unbinds, the guests of the same
        app are unbound too. Raises ``DeviceNotFound`` (9014) or ``DeviceNotBound`` (9017)."""
        async with self.db.session(lock=_lock(did, user)) as session:
            record = await bound_record(session, user, did)
            binding = record.binding
            assert binding is not None  # bound_record guarantees it
            repo = BindingRepository(session)
            await repo.remove(binding)
            guests: list[BoundUser] = []
            if binding.role == OWNER:
                guests = await repo.remove_guests(record.device.id, user.app_id)
            uid = await repo.uid_of(user.user_id) if self.on_change else ""
        log.info(
            "device %s unbound from user %d (%s; %d guests unbound with it)",
            did,
            user.user_id,
            binding.role,
            len(guests),
        )
        await self._tell(
            [BindingChange(user.user_id, uid, user.app_id, did, bound=False)]
            + [BindingChange(g.user.id, g.user.uid, user.app_id, did, bound=False) for g in guests]
        )

    async def unbind_many(self, user: AppUser, dids: Sequence[str]) -> BatchOutcome:
        """``DELETE /app/bindings``: :meth:`unbind` each did; an unknown did or one not bound to
        ``user`` goes under ``failed``. Refused whole (9015) like :meth:`bind_by_passcode`."""
        _check_batch("devices", dids, "did")
        outcome = BatchOutcome([], [])
        for did in dids:
            try:
                await self.unbind(user, did)
            except (DeviceNotFound, DeviceNotBound):
                outcome.failed.append(did)
            else:
                outcome.success.append(did)
        return outcome

    async def remove_users(self, owner: AppUser, did: str, uids: Sequence[str]) -> BatchOutcome:
        """``DELETE /app/{did}/bindings?uid=``: the owner unbinds guests of the device.

        A uid that is not a guest of the device in the owner's app (unknown, of another app, not
        bound, or the owner's own) goes under ``failed``. Raises ``DeviceNotFound`` (9014),
        ``DeviceNotBound`` (9017) when the caller is not bound, and ``FormInvalid`` (9015) naming
        ``uid`` when the caller is a guest or the list is empty, too long or repeats a uid.
        """
        _check_batch("uid", uids, None)
        async with self.db.session(lock=_lock(did, owner)) as session:
            record = await bound_record(session, owner, did)
            assert record.binding is not None
            if record.binding.role != OWNER:
                raise FormInvalid(f"uid: only the owner of device {did} may remove its users")
            repo = BindingRepository(session)
            bound = {
                entry.user.uid: entry
                for entry in await repo.bound_users(record.device.id, owner.app_id)
            }
            outcome = BatchOutcome([], [])
            removed: list[BoundUser] = []
            for uid in uids:
                entry = bound.get(uid)
                if entry is None or entry.binding.role != GUEST:
                    outcome.failed.append(uid)
                    continue
                await repo.remove(entry.binding)
                removed.append(entry)
                outcome.success.append(uid)
        if removed:
            log.info("owner %d of device %s removed %d guests", owner.user_id, did, len(removed))
        await self._tell(
            [BindingChange(e.user.id, e.user.uid, owner.app_id, did, bound=False) for e in removed]
        )
        return outcome

    # -- reading and naming ---------------------------------------------------------------------

    async def require_bound(self, user: AppUser, did: str) -> BoundDevice:
        """The device ``did`` as ``user`` sees it. Raises ``DeviceNotFound`` (9014) for an unknown
        did and ``DeviceNotBound`` (9017) for a device not bound to ``user``."""
        async with self.db.session() as session:
            record = await bound_record(session, user, did)
        assert record.binding is not None
        return _bound(record, record.binding)

    async def find_bound(self, user: AppUser, product_key: str, mac: str) -> BoundDevice:
        """The device of (``product_key``, ``mac``) as ``user`` sees it.

        Raises ``ProductKeyInvalid`` (9002) for a malformed or unknown product_key,
        ``FormInvalid`` (9015) naming ``mac``, ``DeviceNotFound`` (9014) when the product has no
        such MAC, ``DeviceNotBound`` (9017) when the device is not bound to ``user``.
        """
        key = _product_key(product_key)
        mac = checked(rules.check_mac, mac)
        async with self.db.session() as session:
            if await ProductRepository(session).by_key(key) is None:
                raise ProductKeyInvalid(f"unknown product_key {key}")
            record = await BindingRepository(session).device_by_mac(key, mac, user.user_id)
        if record is None:
            raise DeviceNotFound(f"product {key} has no device with mac {mac}")
        if record.binding is None:
            # named by what the caller sent: the did is only for those bound to the device
            raise DeviceNotBound(f"the device with mac {mac} is not bound to this user")
        return _bound(record, record.binding)

    async def find_bound_named(
        self, user: AppUser, product_id: str, device_name: str
    ) -> BoundDevice:
        """The device Tencent names ``product_id`` + ``device_name``, as ``user`` sees it.

        Named as `named_device` finds it; also raises ``DeviceNotBound`` (9017) when it is not
        bound to ``user``. Every message names the Tencent field (``ProductId: ...``,
        ``DeviceName: ...``) and what the caller sent, never the did.
        """
        async with self.db.session() as session:
            device, product = await _named_device(session, product_id, device_name)
            record = await BindingRepository(session).device(device.did, user.user_id)
        if record is None:  # deleted between the two reads
            raise DeviceNotFound(
                f"DeviceName: product {product.product_key} has no device {device.name}"
            )
        if record.binding is None:
            raise DeviceNotBound(
                f"DeviceName: device {product.product_key}/{device.name} is not bound to this user"
            )
        return _bound(record, record.binding)

    async def did_named(self, product_id: str, device_name: str) -> str:
        """The did of the device Tencent names ``product_id`` + ``device_name``, bound or not;
        errors as `named_device`. Answered from memory after the first lookup (the hot path of
        Tencent commands: whether the caller may use the device is checked apart, through the
        control service's cache of passed binding checks)."""
        key = (product_id, device_name)
        did = self._named_dids.get(key)
        if did is None:
            device, _ = await self.named_device(product_id, device_name)
            if len(self._named_dids) >= NAMED_DIDS_MAX:
                self._named_dids.clear()
            did = self._named_dids[key] = device.did
        return did

    async def named_device(self, product_id: str, device_name: str) -> tuple[DeviceRow, ProductRow]:
        """The device Tencent names ``product_id`` + ``device_name``, with its product, bound
        or not (for a device proving itself, as a device-signed binding does).

        ``product_id`` is a Gizwits product_key (any case; ``device_name`` then a MAC in any of
        its accepted spellings) or a data-template ProductId (exact, as is the name). Raises
        ``ProductKeyInvalid`` (9002) for a malformed or unknown ProductId, ``FormInvalid``
        (9015) naming ``DeviceName`` when it cannot name a device of that kind of product,
        ``DeviceNotFound`` (9014) when the product has no such device.
        """
        async with self.db.session() as session:
            return await _named_device(session, product_id, device_name)

    async def is_bound(self, user: AppUser, did: str) -> bool:
        """Whether ``user`` is bound to ``did`` (False for an unknown did)."""
        async with self.db.session() as session:
            record = await BindingRepository(session).device(did, user.user_id)
        return record is not None and record.binding is not None

    async def list_bound(
        self, user: AppUser, *, limit: int = 20, skip: int = 0, show_disabled: bool = False
    ) -> list[BoundDevice]:
        """``GET /app/bindings``: the devices bound to ``user``, in the order they were bound,
        ``skip`` of them skipped, at most ``limit`` (1 to ``LIST_LIMIT_MAX``); disabled devices
        only with ``show_disabled``. Raises ``FormInvalid`` naming ``limit`` or ``skip``."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise FormInvalid(f"limit: must be 1 to {LIST_LIMIT_MAX}")
        if skip < 0:
            raise FormInvalid("skip: must not be negative")
        async with self.db.session() as session:
            records = await BindingRepository(session).bound_devices(
                user.user_id, limit=limit, skip=skip, show_disabled=show_disabled
            )
        return [_bound(record, record.binding) for record in records if record.binding]

    async def update(
        self,
        user: AppUser,
        did: str,
        *,
        dev_alias: str | None = None,
        remark: str | None = None,
        dev_label: Sequence[str] | None = None,
    ) -> BoundDevice:
        """``PUT /app/bindings/{did}``: change the given names of ``user``'s binding (None keeps
        a name). Labels: at most ``LABELS_MAX``, each 1 to ``LABEL_MAX`` characters after
        trimming, no label twice. Raises ``FormInvalid`` (9015) naming the field (or ``body``
        when nothing is given), ``DeviceNotFound`` (9014), ``DeviceNotBound`` (9017).
        """
        if dev_alias is None and remark is None and dev_label is None:
            raise FormInvalid("body: give dev_alias, remark or dev_label")
        if dev_alias is not None:
            dev_alias = _bounded("dev_alias", dev_alias, DEV_ALIAS_MAX)
        if remark is not None:
            remark = _bounded("remark", remark, REMARK_MAX)
        labels = _labels(dev_label) if dev_label is not None else None
        try:
            # the unbinding lock: an unbinding in flight finishes first, and this then finds
            # the binding gone
            async with self.db.session(lock=_lock(did, user)) as session:
                record = await bound_record(session, user, did)
                binding = record.binding
                assert binding is not None
                if dev_alias is not None:
                    binding.dev_alias = dev_alias
                if remark is not None:
                    binding.remark = remark
                if labels is not None:
                    binding.dev_label = labels
                await session.flush()
        except StaleDataError as exc:  # ended meanwhile by a new ownership of the device
            raise DeviceNotBound(f"device {did} is not bound to this user") from exc
        return _bound(record, binding)

    async def bound_users(self, user: AppUser, did: str) -> list[DeviceUser]:
        """``GET /app/{did}/bindings``: the users of ``user``'s app bound to ``did``, oldest
        binding first, with their personal data masked (see :func:`mask_username`). Raises
        ``DeviceNotFound`` (9014) and ``DeviceNotBound`` (9017): only a bound user may ask."""
        async with self.db.session() as session:
            record = await bound_record(session, user, did)
            entries = await BindingRepository(session).bound_users(record.device.id, user.app_id)
        return [
            DeviceUser(
                uid=entry.user.uid,
                username=mask_username(entry.user.username),
                phone=mask_phone(entry.user.phone),
                email=mask_email(entry.user.email),
                role=entry.binding.role,
                created_at=entry.binding.created_at,
            )
            for entry in entries
        ]

    # -- internals ------------------------------------------------------------------------------

    def _check_timestamp(self, timestamp: str | None) -> str:
        """The stripped timestamp, when it is Unix seconds within the window of the clock."""
        value = (timestamp or "").strip()
        if not value:
            raise TimestampInvalid("X-Gizwits-Timestamp: missing")
        if not _UNIX_SECONDS.fullmatch(value):
            raise TimestampInvalid("X-Gizwits-Timestamp: must be Unix seconds")
        skew = int(value) - int(self.clock.now().timestamp())
        if abs(skew) > SIGNATURE_WINDOW_SECONDS:
            raise TimestampInvalid(
                f"X-Gizwits-Timestamp: {abs(skew)} s "
                f"{'ahead of' if skew > 0 else 'behind'} the server's clock "
                f"(at most {SIGNATURE_WINDOW_SECONDS} s either way)"
            )
        return value

    async def _tell(self, changes: Sequence[BindingChange]) -> None:
        if self.on_change is None:
            return
        for change in changes:
            try:
                await self.on_change(change)
            except Exception:  # a listener's failure must not undo or fail the binding
                log.exception(
                    "binding change hook failed (device %s, user %d)", change.did, change.user_id
                )


# -- masking -------------------------------------------------------------------------------------

_MASK: Final = "****"


def _mask(value: str, head: int, tail: int) -> str:
    """``value`` with all but ``head`` leading and ``tail`` trailing characters replaced by four
    stars (whatever their number, so the length does not show); all stars when too short."""
    if len(value) <= head + tail:
        return _MASK
    return value[:head] + _MASK + value[len(value) - tail :]


def mask_username(value: str | None) -> str | None:
    """First and last character kept (``2****2``, the Gizwits example)."""
    return None if value is None else _mask(value, 1, 1)


def mask_phone(value: str | None) -> str | None:
    """First three and last four characters of phones longer than 7 (``138****5678``),
    else like a username."""
    if value is None:
        return None
    return _mask(value, 3, 4) if len(value) > 7 else _mask(value, 1, 1)


def mask_email(value: str | None) -> str | None:
    """The local part masked like a username, the domain kept (``a****e@example.com``)."""
    if value is None:
        return None
    local, at, domain = value.rpartition("@")
    if not at:
        return _mask(value, 1, 1)
    return f"{_mask(local, 1, 1)}@{domain}"


# -- rules ---------------------------------------------------------------------------------------


def _lock(did: str, user: AppUser) -> str:
    return f"binding:{did}:{user.app_id}"


async def _named_device(
    session: AsyncSession, product_id: str, device_name: str
) -> tuple[DeviceRow, ProductRow]:
    """See `BindingService.named_device`."""
    try:
        key, name = rules.check_device_named(product_id, device_name)
    except FieldInvalid as exc:
        if exc.field == "ProductId":
            raise ProductKeyInvalid(str(exc)) from exc
        raise FormInvalid(str(exc)) from exc
    found = await DeviceRepository(session).with_product_by_name(key, name)
    if found is not None:
        return found
    if await ProductRepository(session).by_key(key) is None:
        raise ProductKeyInvalid(f"ProductId: no product {product_id.strip()}")
    raise DeviceNotFound(f"DeviceName: product {key} has no device {name}")


def _product_key(value: str) -> str:
    try:
        return rules.check_product_key(value.strip())
    except FieldInvalid as exc:
        raise ProductKeyInvalid(str(exc)) from exc


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _check_signature(product_secret: str, timestamp: str, signature: str | None) -> None:
    expected = hashlib.md5((product_secret + timestamp).encode(), usedforsecurity=False)
    given = (signature or "").strip().lower()
    if not given:
        raise SignatureInvalid("X-Gizwits-Signature: missing")
    if not _same(given, expected.hexdigest()):
        raise SignatureInvalid(
            "X-Gizwits-Signature: must be md5(product_secret + X-Gizwits-Timestamp) in hex"
        )


def _check_batch(name: str, keys: Sequence[str], key_name: str | None) -> None:
    """A batch holds 1 to ``BATCH_MAX`` non-empty keys, none twice."""
    if not keys:
        raise FormInvalid(f"{name}: at least one is required")
    if len(keys) > BATCH_MAX:
        raise FormInvalid(f"{name}: at most {BATCH_MAX} per request, got {len(keys)}")
    seen: set[str] = set()
    for i, key in enumerate(keys):
        where = f"{name}[{i}].{key_name}" if key_name else name
        if not key.strip():
            raise FormInvalid(f"{where}: must not be empty")
        if key in seen:
            raise FormInvalid(f"{where}: {key} is given twice")
        seen.add(key)


def _bounded(name: str, value: str, limit: int) -> str:
    value = value.strip()
    if len(value) > limit:
        raise FormInvalid(f"{name}: at most {limit} characters")
    return value


def _labels(values: Sequence[str]) -> list[str]:
    if len(values) > LABELS_MAX:
        raise FormInvalid(f"dev_label: at most {LABELS_MAX} labels")
    labels: list[str] = []
    for i, value in enumerate(values):
        label = value.strip()
        if not 1 <= len(label) <= LABEL_MAX:
            raise FormInvalid(f"dev_label[{i}]: must be 1 to {LABEL_MAX} characters")
        if label in labels:
            raise FormInvalid(f"dev_label[{i}]: {label!r} is given twice")
        labels.append(label)
    return labels


def _bound(record: DeviceRecord, binding: BindingRow) -> BoundDevice:
    device = record.device
    return BoundDevice(
        did=device.did,
        product_key=record.product.product_key,
        product_name=record.product.name,
        mac=device.mac or "",  # a data-template device has no MAC
        name=device.name,
        passcode=device.passcode,
        is_online=device.is_online,
        is_disabled=device.is_disabled,
        mcu_soft_version=device.mcu_soft_version,
        mcu_hard_version=device.mcu_hard_version,
        wifi_soft_version=device.wifi_soft_version,
        wifi_hard_version=device.wifi_hard_version,
        binding=Binding(
            role=binding.role,
            dev_alias=binding.dev_alias,
            remark=binding.remark,
            created_at=binding.created_at,
            dev_label=tuple(binding.dev_label or ()),
        ),
        state_updated_at=record.state_updated_at,
        visible_from=visible_from(record, binding),
    )
