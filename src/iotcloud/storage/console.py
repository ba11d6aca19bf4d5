"""Storage for the web console: its sign-in sessions, and the read-only queries behind its
pages that no other service makes (fleet figures, device search, an operator's view of a
device's history and frame log, schedules due soon and their failed runs).

Every figure is read from the database, not from one process's memory, so the console shows
the same numbers whichever process serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.storage.models import (
    ConsoleSessionRow,
    DeviceEventRow,
    DeviceHistoryRow,
    DeviceRow,
    ProductRow,
    ScheduleRow,
    ScheduleRunRow,
)


class ConsoleSessionRepository:
    """Console sign-ins, found by the SHA-256 digest of their cookie."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: ConsoleSessionRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def by_digest(self, digest: str) -> ConsoleSessionRow | None:
        return await self.session.scalar(
            select(ConsoleSessionRow).where(ConsoleSessionRow.digest == digest)
        )

    async def touch(self, session_id: int, now: datetime) -> None:
        await self.session.execute(
            update(ConsoleSessionRow)
            .where(ConsoleSessionRow.id == session_id)
            .values(last_seen_at=now)
        )

    async def delete(self, digest: str) -> int:
        result = await self.session.execute(
            delete(ConsoleSessionRow).where(ConsoleSessionRow.digest == digest)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def purge(self, absolute_before: datetime, idle_before: datetime) -> int:
        """Drop sessions past their absolute expiry or idle since ``idle_before``."""
        result = await self.session.execute(
            delete(ConsoleSessionRow).where(
                or_(
                    ConsoleSessionRow.expires_at <= absolute_before,
                    ConsoleSessionRow.last_seen_at <= idle_before,
                )
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class ProductFleet:
    product_key: str
    name: str
    online: int
    total: int


@dataclass(frozen=True)
class DueSchedule:
    schedule_id: str
    name: str
    did: str | None
    due_at: datetime


@dataclass(frozen=True)
class ProblemRun:
    run_id: int
    schedule_id: str
    schedule_name: str
    scheduled_at: datetime
    status: str
    note: str | None


class ConsoleQueries:
    """Read-only queries of the console's pages."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def fleet(self) -> list[ProductFleet]:
        """Per product (also those without devices): devices online and in total."""
        online = func.coalesce(func.sum(case((DeviceRow.is_online, 1), else_=0)), 0)
        query = (
            select(ProductRow.product_key, ProductRow.name, online, func.count(DeviceRow.id))
            .select_from(ProductRow)
            .outerjoin(DeviceRow, DeviceRow.product_id == ProductRow.id)
            .group_by(ProductRow.id, ProductRow.product_key, ProductRow.name)
            .order_by(ProductRow.name, ProductRow.product_key)
        )
        return [
            ProductFleet(key, name, int(up), int(total))
            for key, name, up, total in (await self.session.execute(query)).all()
        ]

    async def frames_since(self, since: datetime, kinds: Sequence[str]) -> dict[str, int]:
        """How many frame log entries of each of ``kinds`` were written at or after ``since``."""
        query = (
            select(DeviceEventRow.kind, func.count())
            .where(DeviceEventRow.at >= since, DeviceEventRow.kind.in_(kinds))
            .group_by(DeviceEventRow.kind)
        )
        counts = dict.fromkeys(kinds, 0)
        for kind, count in (await self.session.execute(query)).all():
            counts[kind] = int(count)
        return counts

    async def due_schedules(self, start: datetime, end: datetime, limit: int) -> list[DueSchedule]:
        """Enabled schedules whose next firing lies in ``[start, end)``, soonest first."""
        query = (
            select(
                ScheduleRow.public_id,
                ScheduleRow.name,
                ScheduleRow.device_did,
                ScheduleRow.next_due_at,
            )
            .where(
                ScheduleRow.enabled.is_(True),
                ScheduleRow.next_due_at >= start,
                ScheduleRow.next_due_at < end,
            )
            .order_by(ScheduleRow.next_due_at, ScheduleRow.id)
            .limit(limit)
        )
        return [
            DueSchedule(public_id, name, did, due)
            for public_id, name, did, due in (await self.session.execute(query)).all()
            if due is not None
        ]

    async def problem_runs(self, limit: int) -> list[ProblemRun]:
        """The last failed or missed runs, newest first."""
        query = (
            select(
                ScheduleRunRow.id,
                ScheduleRow.public_id,
                ScheduleRow.name,
                ScheduleRunRow.scheduled_at,
                ScheduleRunRow.status,
                ScheduleRunRow.note,
            )
            .join(ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id)
            .where(ScheduleRunRow.status.in_(("failed", "missed")))
            .order_by(ScheduleRunRow.scheduled_at.desc(), ScheduleRunRow.id.desc())
            .limit(limit)
        )
        return [ProblemRun(*row) for row in (await self.session.execute(query)).all()]

    async def search_devices(
        self, text: str, product_key: str | None, limit: int, offset: int
    ) -> tuple[int, list[tuple[DeviceRow, ProductRow]]]:
        """``(total, page)`` of devices whose did, MAC or name contains ``text`` (any when
        empty), of ``product_key`` when given; newest first."""
        conditions: list[Any] = []
        if text:
            pattern = f"%{_escape_like(text.lower())}%"
            conditions.append(
                or_(
                    func.lower(DeviceRow.did).like(pattern, escape="\\"),
                    func.lower(func.coalesce(DeviceRow.mac, "")).like(pattern, escape="\\"),
                    func.lower(DeviceRow.name).like(pattern, escape="\\"),
                )
            )
        if product_key:
            conditions.append(ProductRow.product_key == product_key)
        base = select(DeviceRow, ProductRow).join(ProductRow, ProductRow.id == DeviceRow.product_id)
        total = await self.session.scalar(
            select(func.count())
            .select_from(DeviceRow)
            .join(ProductRow, ProductRow.id == DeviceRow.product_id)
            .where(*conditions)
        )
        rows = (
            await self.session.execute(
                base.where(*conditions)
                .order_by(DeviceRow.created_at.desc(), DeviceRow.id.desc())
                .limit(limit)
                .offset(offset)
            )
        ).all()
        return int(total or 0), [(device, product) for device, product in rows]

    async def device_id(self, did: str) -> int | None:
        return await self.session.scalar(select(DeviceRow.id).where(DeviceRow.did == did))

    async def history(
        self, device_id: int, since: datetime, until: datetime, limit: int
    ) -> list[tuple[datetime, dict[str, Any]]]:
        """The device's last ``limit`` reports in ``[since, until]``, oldest first."""
        query = (
            select(DeviceHistoryRow.at, DeviceHistoryRow.attrs)
            .where(
                DeviceHistoryRow.device_id == device_id,
                DeviceHistoryRow.at >= since,
                DeviceHistoryRow.at <= until,
            )
            .order_by(DeviceHistoryRow.at.desc(), DeviceHistoryRow.id.desc())
            .limit(limit)
        )
        rows = (await self.session.execute(query)).all()
        return [(at, dict(attrs)) for at, attrs in reversed(rows)]

    async def frames(self, device_id: int, limit: int) -> Sequence[DeviceEventRow]:
        """The device's newest frame log entries, newest first."""
        return (
            await self.session.scalars(
                select(DeviceEventRow)
                .where(DeviceEventRow.device_id == device_id)
                .order_by(DeviceEventRow.at.desc(), DeviceEventRow.id.desc())
                .limit(limit)
            )
        ).all()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
