"""Operator reads of one device's traffic as it is stored: frame log entries and template events
from an instant on, for ``iotcloud device tail``. Each repository wraps one ``AsyncSession``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.storage.models import DeviceEventRow, DeviceThingEventRow


class DeviceTrafficRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def frames_since(
        self, device_id: int, since: datetime, limit: int, after_id: int = 0
    ) -> Sequence[DeviceEventRow]:
        """Frame log entries (frames both ways, presence) after ``(since, after_id)`` in log
        order (``at``, then ``id``): a page, and the next one starts after its last row."""
        rows = await self.session.scalars(
            select(DeviceEventRow)
            .where(
                DeviceEventRow.device_id == device_id,
                or_(
                    DeviceEventRow.at > since,
                    and_(DeviceEventRow.at == since, DeviceEventRow.id > after_id),
                ),
            )
            .order_by(DeviceEventRow.at, DeviceEventRow.id)
            .limit(limit)
        )
        return rows.all()

    async def thing_events_since(
        self, device_id: int, since: datetime, limit: int, after_id: int = 0
    ) -> Sequence[DeviceThingEventRow]:
        """Events a data-template device posted after ``(since, after_id)``, in log order."""
        rows = await self.session.scalars(
            select(DeviceThingEventRow)
            .where(
                DeviceThingEventRow.device_id == device_id,
                or_(
                    DeviceThingEventRow.at > since,
                    and_(DeviceThingEventRow.at == since, DeviceThingEventRow.id > after_id),
                ),
            )
            .order_by(DeviceThingEventRow.at, DeviceThingEventRow.id)
            .limit(limit)
        )
        return rows.all()
