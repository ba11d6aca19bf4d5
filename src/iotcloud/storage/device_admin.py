"""Operator reads of one device's traffic as it is stored: frame log entries and template events
from an instant on, for ``iotcloud device tail``. Each repository wraps one ``AsyncSession``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.storage.models import DeviceEventRow, DeviceThingEventRow


class DeviceTrafficRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def frames_since(
        self, device_id: int, since: datetime, limit: int
    ) -> Sequence[DeviceEventRow]:
        """Frame log entries (frames both ways, presence) at or after ``since``, in log order."""
        rows = await self.session.scalars(
            select(DeviceEventRow)
            .where(DeviceEventRow.device_id == device_id, DeviceEventRow.at >= since)
            .order_by(DeviceEventRow.at, DeviceEventRow.id)
            .limit(limit)
        )
        return rows.all()

    async def thing_events_since(
        self, device_id: int, since: datetime, limit: int
    ) -> Sequence[DeviceThingEventRow]:
        """Events a data-template device posted at or after ``since``, in log order."""
        rows = await self.session.scalars(
            select(DeviceThingEventRow)
            .where(DeviceThingEventRow.device_id == device_id, DeviceThingEventRow.at >= since)
            .order_by(DeviceThingEventRow.at, DeviceThingEventRow.id)
            .limit(limit)
        )
        return rows.all()
