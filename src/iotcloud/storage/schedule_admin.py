"""Operator queries about schedules and their runs across every user and app.

The scheduler's own store (`iotcloud.scheduler.store`) reads a schedule only on behalf of its
owner; these reads are the operator's, unscoped, and never write. Each repository wraps one
``AsyncSession`` (one unit of work).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, exists, func, literal, or_, select, type_coerce
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from iotcloud.storage.models import AppRow, ScheduleRow, ScheduleRunRow, UserRow

PROBLEM_STATUSES: tuple[str, ...] = ("failed", "missed")


@dataclass(frozen=True)
class ScheduleListing:
    """A schedule with its owner's uid and appid and the status of its latest run (None
    before the first)."""

    schedule: ScheduleRow
    uid: str
    appid: str
    last_status: str | None


@dataclass(frozen=True)
class RunListing:
    """A run with its schedule's public id and name."""

    run: ScheduleRunRow
    schedule_id: str
    schedule_name: str


def _listing_query() -> Select[ScheduleRow, str, str, str | None]:
    last_status = (
        select(ScheduleRunRow.status)
        .where(ScheduleRunRow.schedule_id == ScheduleRow.id)
        .order_by(ScheduleRunRow.scheduled_at.desc(), ScheduleRunRow.id.desc())
        .limit(1)
        .correlate(ScheduleRow)
        .scalar_subquery()
    )
    return (
        select(ScheduleRow, UserRow.uid, AppRow.appid, last_status)
        .join(UserRow, UserRow.id == ScheduleRow.user_id)
        .join(AppRow, AppRow.id == ScheduleRow.app_id)
    )


class ScheduleAdminRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def page(
        self,
        *,
        uid: str | None,
        did: str | None,
        enabled: bool | None,
        limit: int,
        offset: int,
    ) -> list[ScheduleListing]:
        """Schedules, newest first, of user ``uid``, of device ``did`` (it belongs to the
        device or one of its tasks is for it), enabled or not, when given."""
        query = _listing_query()
        if uid is not None:
            query = query.where(UserRow.uid == uid)
        if did is not None:
            query = query.where(or_(ScheduleRow.device_did == did, self._has_task_for(did)))
        if enabled is not None:
            query = query.where(ScheduleRow.enabled.is_(enabled))
        query = (
            query.order_by(ScheduleRow.created_at.desc(), ScheduleRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = await self.session.execute(query)
        return [ScheduleListing(*row) for row in rows]

    def _has_task_for(self, did: str) -> ColumnElement[bool]:
        """One of the schedule's tasks is for device ``did`` (a JSON query per backend)."""
        dialect = self.session.bind.dialect.name if self.session.bind is not None else "sqlite"
        if dialect == "postgresql":
            tasks = type_coerce(ScheduleRow.tasks, postgresql.JSONB)
            found: ColumnElement[bool] = tasks.contains([{"did": did}])
            return found
        each = func.json_each(ScheduleRow.tasks).table_valued("value").alias("task")
        return exists(
            select(literal(1))
            .select_from(each)
            .where(func.json_extract(each.c.value, "$.did") == did)
        )

    async def by_public_id(self, public_id: str) -> ScheduleListing | None:
        row = (
            await self.session.execute(_listing_query().where(ScheduleRow.public_id == public_id))
        ).first()
        return ScheduleListing(*row) if row is not None else None

    async def due_before(self, horizon: datetime, limit: int) -> list[ScheduleListing]:
        """Enabled schedules whose next occurrence is at or before ``horizon``, soonest first."""
        query = (
            _listing_query()
            .where(
                ScheduleRow.enabled.is_(True),
                ScheduleRow.next_due_at.is_not(None),
                ScheduleRow.next_due_at <= horizon,
            )
            .order_by(ScheduleRow.next_due_at, ScheduleRow.id)
            .limit(limit)
        )
        rows = await self.session.execute(query)
        return [ScheduleListing(*row) for row in rows]

    async def runs(
        self,
        *,
        schedule: int | None,
        problems_first: bool,
        problems_only: bool,
        limit: int,
    ) -> list[RunListing]:
        """Runs of ``schedule`` (every schedule when None), newest occurrence first; failed and
        missed ones before the rest with ``problems_first``, only those with
        ``problems_only``."""
        query = select(ScheduleRunRow, ScheduleRow.public_id, ScheduleRow.name).join(
            ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id
        )
        if schedule is not None:
            query = query.where(ScheduleRunRow.schedule_id == schedule)
        if problems_only:
            query = query.where(ScheduleRunRow.status.in_(PROBLEM_STATUSES))
        order: list[ColumnElement[Any]] = [
            ScheduleRunRow.scheduled_at.desc(),
            ScheduleRunRow.id.desc(),
        ]
        if problems_first and not problems_only:
            order.insert(0, case((ScheduleRunRow.status.in_(PROBLEM_STATUSES), 0), else_=1))
        rows = await self.session.execute(query.order_by(*order).limit(limit))
        return [RunListing(*row) for row in rows]

    async def schedule_pk(self, public_id: str) -> int | None:
        found: int | None = await self.session.scalar(
            select(ScheduleRow.id).where(ScheduleRow.public_id == public_id)
        )
        return found
