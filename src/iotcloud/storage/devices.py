"""Repositories for products and devices.

Each repository wraps one ``AsyncSession`` (one unit of work). Uniqueness violations are
translated into domain errors where they are raised, so a failed write leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.errors import IotCloudError, ProductKeyTaken
from iotcloud.storage.models import DeviceRow, ProductRow


class MacTaken(IotCloudError):
    """A device with that MAC (or name) already exists in the product (or, very unlikely, the
    generated did was taken). Raised when a concurrent writer won the race; callers look the
    device up."""

    code = 9001


class ProductRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, product: ProductRow) -> ProductRow:
        """Insert ``product``; raises ``ProductKeyTaken`` when its product_key exists."""
        self.session.add(product)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise ProductKeyTaken(f"product_key {product.product_key} already exists") from exc
        return product

    async def by_key(self, product_key: str) -> ProductRow | None:
        return await self.session.scalar(
            select(ProductRow).where(ProductRow.product_key == product_key)
        )

    async def all(self) -> Sequence[ProductRow]:
        return (await self.session.scalars(select(ProductRow).order_by(ProductRow.id))).all()


class DeviceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, device: DeviceRow) -> DeviceRow:
        """Insert ``device``; raises ``MacTaken`` when (product, mac), (product, name) or the
        did exists."""
        self.session.add(device)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise MacTaken(f"device {device.name} is already registered") from exc
        return device

    async def add_all(self, devices: Sequence[DeviceRow]) -> None:
        """Insert a batch in one flush; raises ``MacTaken`` (and inserts nothing usable: the
        caller must roll back) when any row collides."""
        self.session.add_all(devices)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise MacTaken("a device of this batch is already registered") from exc

    async def by_did(self, did: str) -> DeviceRow | None:
        return await self.session.scalar(select(DeviceRow).where(DeviceRow.did == did))

    async def credentials_page(
        self, after_id: int, limit: int, dids: Collection[str] | None = None
    ) -> list[tuple[int, str, str, str, bool]]:
        """``(id, did, product_key, passcode, is_disabled)`` of devices with id > ``after_id``
        (all, or those among ``dids``), in id order, at most ``limit``."""
        query = (
            select(
                DeviceRow.id,
                DeviceRow.did,
                ProductRow.product_key,
                DeviceRow.passcode,
                DeviceRow.is_disabled,
            )
            .join(ProductRow, ProductRow.id == DeviceRow.product_id)
            .where(DeviceRow.id > after_id)
            .order_by(DeviceRow.id)
            .limit(limit)
        )
        if dids is not None:
            query = query.where(DeviceRow.did.in_(dids))
        return [tuple(row) for row in (await self.session.execute(query)).all()]  # type: ignore[misc]

    async def with_product(self, did: str) -> tuple[DeviceRow, ProductRow] | None:
        """The device and its product, in one query."""
        row = (
            await self.session.execute(
                select(DeviceRow, ProductRow)
                .join(ProductRow, ProductRow.id == DeviceRow.product_id)
                .where(DeviceRow.did == did)
            )
        ).first()
        return (row[0], row[1]) if row else None

    async def with_products(self, dids: Collection[str]) -> dict[str, tuple[DeviceRow, ProductRow]]:
        """`with_product` for many dids in one query: the ones that exist, by did."""
        rows = await self.session.execute(
            select(DeviceRow, ProductRow)
            .join(ProductRow, ProductRow.id == DeviceRow.product_id)
            .where(DeviceRow.did.in_(list(dids)))
        )
        return {row[0].did: (row[0], row[1]) for row in rows}

    async def with_product_by_name(
        self, product_key: str, name: str
    ) -> tuple[DeviceRow, ProductRow] | None:
        """The device called ``name`` in the product ``product_key`` (exact match on both: a
        Gizwits device's name is its lower-case MAC), with its product, in one query."""
        row = (
            await self.session.execute(
                select(DeviceRow, ProductRow)
                .join(ProductRow, ProductRow.id == DeviceRow.product_id)
                .where(ProductRow.product_key == product_key, DeviceRow.name == name)
            )
        ).first()
        return (row[0], row[1]) if row else None

    async def by_name(self, product_id: int, name: str) -> DeviceRow | None:
        return await self.session.scalar(
            select(DeviceRow).where(DeviceRow.product_id == product_id, DeviceRow.name == name)
        )

    async def existing_names(self, product_id: int, names: Collection[str]) -> set[str]:
        """Which of ``names`` already have a device in the product."""
        if not names:
            return set()
        found = await self.session.scalars(
            select(DeviceRow.name).where(
                DeviceRow.product_id == product_id, DeviceRow.name.in_(list(names))
            )
        )
        return set(found.all())

    async def by_mac(self, product_id: int, mac: str) -> DeviceRow | None:
        return await self.session.scalar(
            select(DeviceRow).where(DeviceRow.product_id == product_id, DeviceRow.mac == mac)
        )

    async def existing_macs(self, product_id: int, macs: Collection[str]) -> set[str]:
        """Which of ``macs`` already have a device in the product."""
        if not macs:
            return set()
        found = await self.session.scalars(
            select(DeviceRow.mac).where(
                DeviceRow.product_id == product_id, DeviceRow.mac.in_(list(macs))
            )
        )
        return {mac for mac in found.all() if mac is not None}

    async def set_disabled(self, did: str, disabled: bool, now: datetime) -> bool:
        """Set the flag; False when there is no such device."""
        result = await self.session.execute(
            update(DeviceRow)
            .where(DeviceRow.did == did)
            .values(is_disabled=disabled, updated_at=now)
        )
        return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]

    async def disable_if_passcode(self, did: str, passcode: str, now: datetime) -> bool:
        """Disable the device only while its passcode is still ``passcode`` (a concurrent
        re-registration that replaced it wins). False when nothing was changed."""
        result = await self.session.execute(
            update(DeviceRow)
            .where(DeviceRow.did == did, DeviceRow.passcode == passcode)
            .values(is_disabled=True, updated_at=now)
        )
        return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]
