"""Repository for bindings between app users and devices.

Reads return a device together with its product, the caller's binding (if any) and the time of
its latest state, in one query: every app-facing device read needs all four. Bindings are per app
(a user belongs to one app), so queries about "the users of a device" take the app too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, delete, false, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.errors import IotCloudError
from iotcloud.storage.models import BindingRow, DeviceLatestRow, DeviceRow, ProductRow, UserRow

# outer joins: the binding and the time are None where nothing matched
_DeviceQuery = Select[DeviceRow, ProductRow, BindingRow, datetime]


class AlreadyBound(IotCloudError):
    """The user is bound to the device already (a concurrent bind won); callers read it."""

    code = 9015


@dataclass(frozen=True)
class BoundUser:
    """A binding to a device together with the user who holds it."""

    binding: BindingRow
    user: UserRow


@dataclass(frozen=True)
class DeviceRecord:
    """A device as one user sees it: ``binding`` is that user's binding, None when unbound."""

    device: DeviceRow
    product: ProductRow
    binding: BindingRow | None
    state_updated_at: datetime | None


class BindingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def device(self, did: str, user_id: int) -> DeviceRecord | None:
        """The device ``did`` with ``user_id``'s binding to it; None when there is no device."""
        return await self._record(self._device_query(user_id).where(DeviceRow.did == did))

    async def device_by_mac(self, product_key: str, mac: str, user_id: int) -> DeviceRecord | None:
        """The device of (product, MAC) with ``user_id``'s binding to it."""
        return await self._record(
            self._device_query(user_id).where(
                ProductRow.product_key == product_key, DeviceRow.mac == mac
            )
        )

    async def add(self, binding: BindingRow) -> BindingRow:
        """Insert ``binding``; raises ``AlreadyBound`` when the user is bound to the device."""
        self.session.add(binding)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise AlreadyBound("the user is already bound to the device") from exc
        return binding

    async def owner(self, device_id: int, app_id: int) -> BindingRow | None:
        """The owner's binding to the device among the users of ``app_id``."""
        return await self.session.scalar(
            select(BindingRow)
            .join(UserRow, UserRow.id == BindingRow.user_id)
            .where(
                BindingRow.device_id == device_id,
                UserRow.app_id == app_id,
                BindingRow.role == "owner",
            )
            .limit(1)
        )

    async def remove(self, binding: BindingRow) -> None:
        await self.session.delete(binding)
        await self.session.flush()

    async def remove_guests(self, device_id: int, app_id: int) -> list[BoundUser]:
        """Drop the guest bindings to the device of the users of ``app_id``; returns whose."""
        guests = [
            entry
            for entry in await self.bound_users(device_id, app_id)
            if entry.binding.role == "guest"
        ]
        if guests:
            await self.session.execute(
                delete(BindingRow).where(BindingRow.id.in_([g.binding.id for g in guests]))
            )
        return guests

    async def remove_all(self, device_id: int) -> list[BoundUser]:
        """Drop every binding to the device, in every app; returns whose (a new ownership)."""
        rows = await self.session.execute(
            select(BindingRow, UserRow)
            .join(UserRow, UserRow.id == BindingRow.user_id)
            .where(BindingRow.device_id == device_id)
            .order_by(BindingRow.id)
        )
        ended = [BoundUser(binding=binding, user=user) for binding, user in rows]
        if ended:
            await self.session.execute(delete(BindingRow).where(BindingRow.device_id == device_id))
        return ended

    async def bound_users(self, device_id: int, app_id: int) -> list[BoundUser]:
        """Every binding to the device of the users of ``app_id``, oldest first."""
        rows = await self.session.execute(
            select(BindingRow, UserRow)
            .join(UserRow, UserRow.id == BindingRow.user_id)
            .where(BindingRow.device_id == device_id, UserRow.app_id == app_id)
            .order_by(BindingRow.created_at, BindingRow.id)
        )
        return [BoundUser(binding=binding, user=user) for binding, user in rows]

    async def bound_devices(
        self, user_id: int, *, limit: int, skip: int, show_disabled: bool
    ) -> list[DeviceRecord]:
        """The devices ``user_id`` is bound to, in the order they were bound; disabled ones only
        with ``show_disabled``."""
        query = (
            select(DeviceRow, ProductRow, BindingRow, DeviceLatestRow.updated_at)
            .join(BindingRow, BindingRow.device_id == DeviceRow.id)
            .join(ProductRow, ProductRow.id == DeviceRow.product_id)
            .outerjoin(DeviceLatestRow, DeviceLatestRow.device_id == DeviceRow.id)
            .where(BindingRow.user_id == user_id)
            .order_by(BindingRow.id)
            .limit(limit)
            .offset(skip)
        )
        if not show_disabled:
            query = query.where(DeviceRow.is_disabled == false())
        rows = await self.session.execute(query)
        return [
            DeviceRecord(device=row[0], product=row[1], binding=row[2], state_updated_at=row[3])
            for row in rows
        ]

    async def uid_of(self, user_id: int) -> str:
        """The public uid of the user with the internal id ``user_id``."""
        uid = await self.session.scalar(select(UserRow.uid).where(UserRow.id == user_id))
        assert uid is not None, "bindings only exist for existing users"
        return uid

    def _device_query(self, user_id: int) -> _DeviceQuery:
        return (
            select(DeviceRow, ProductRow, BindingRow, DeviceLatestRow.updated_at)
            .join(ProductRow, ProductRow.id == DeviceRow.product_id)
            .outerjoin(
                BindingRow,
                (BindingRow.device_id == DeviceRow.id) & (BindingRow.user_id == user_id),
            )
            .outerjoin(DeviceLatestRow, DeviceLatestRow.device_id == DeviceRow.id)
        )

    async def _record(self, query: _DeviceQuery) -> DeviceRecord | None:
        row = (await self.session.execute(query)).first()
        if row is None:
            return None
        return DeviceRecord(device=row[0], product=row[1], binding=row[2], state_updated_at=row[3])
