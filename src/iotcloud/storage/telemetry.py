"""Device telemetry storage: latest state (one row per device), history, and the frame log.

Writes come in batches from the ingest path; each method is one set-based statement (or two) for
the whole batch, never one statement per report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.storage.models import (
    DeviceEventRow,
    DeviceHistoryRow,
    DeviceLatestRow,
    DeviceRow,
)


@dataclass(frozen=True)
class StateChange:
    """Values one report carried (JSON-ready display values), for the latest state and history."""

    device_id: int
    at: datetime
    values: dict[str, Any]


@dataclass(frozen=True)
class FrameEvent:
    """One entry of a device's frame log (``raw_data``)."""

    device_id: int
    at: datetime
    kind: str  # app2dev | dev2app | dev_online | dev_re_online | dev_offline
    payload: bytes | None = None
    detail: str | None = None


@dataclass(frozen=True)
class PresenceChange:
    device_id: int
    at: datetime
    online: bool


class TelemetryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.dialect = session.bind.dialect.name if session.bind is not None else "sqlite"

    async def apply_states(self, changes: Sequence[StateChange], *, history: bool) -> None:
        """Merge each change into its device's latest state (in order) and append history."""
        if not changes:
            return
        ids = sorted({c.device_id for c in changes})
        current: dict[int, tuple[datetime, dict[str, Any]]] = {
            row.device_id: (row.updated_at, dict(row.attrs))
            for row in await self.session.scalars(
                select(DeviceLatestRow).where(DeviceLatestRow.device_id.in_(ids))
            )
        }
        merged: dict[int, tuple[datetime, dict[str, Any]]] = {}
        for change in changes:
            at, attrs = merged.get(change.device_id) or current.get(
                change.device_id, (change.at, {})
            )
            attrs = {**attrs, **change.values}
            merged[change.device_id] = (max(at, change.at), attrs)
        rows = [
            {"device_id": device_id, "updated_at": at, "attrs": attrs}
            for device_id, (at, attrs) in merged.items()
        ]
        upsert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(
            DeviceLatestRow
        )
        await self.session.execute(
            upsert.on_conflict_do_update(
                index_elements=[DeviceLatestRow.device_id],
                set_={"updated_at": upsert.excluded.updated_at, "attrs": upsert.excluded.attrs},
            ),
            rows,
        )
        if history:
            await self.session.execute(
                insert(DeviceHistoryRow),
                [{"device_id": c.device_id, "at": c.at, "attrs": c.values} for c in changes],
            )

    async def log_frames(self, events: Sequence[FrameEvent]) -> None:
        if events:
            await self.session.execute(
                insert(DeviceEventRow),
                [
                    {
                        "device_id": e.device_id,
                        "at": e.at,
                        "kind": e.kind,
                        "payload": e.payload,
                        "detail": e.detail,
                    }
                    for e in events
                ],
            )

    async def set_presence(self, changes: Sequence[PresenceChange]) -> None:
        """Apply the last presence change per device of the batch."""
        last: dict[int, PresenceChange] = {}
        for change in changes:
            last[change.device_id] = change
        online = [c for c in last.values() if c.online]
        offline = [c for c in last.values() if not c.online]
        if online:  # ORM bulk UPDATE by primary key: one executemany
            await self.session.execute(
                update(DeviceRow),
                [{"id": c.device_id, "is_online": True, "last_online_at": c.at} for c in online],
            )
        if offline:
            await self.session.execute(
                update(DeviceRow),
                [{"id": c.device_id, "is_online": False, "last_offline_at": c.at} for c in offline],
            )

    async def mark_all_offline(self, at: datetime) -> None:
        """After a restart nobody is connected to this broker yet."""
        await self.session.execute(
            update(DeviceRow)
            .where(DeviceRow.is_online.is_(True))
            .values(is_online=False, last_offline_at=at)
        )

    async def latest(self, device_id: int) -> DeviceLatestRow | None:
        return await self.session.get(DeviceLatestRow, device_id)

    async def purge_before(self, history_before: datetime, events_before: datetime) -> int:
        removed = 0
        for table, column, before in (
            (DeviceHistoryRow, DeviceHistoryRow.at, history_before),
            (DeviceEventRow, DeviceEventRow.at, events_before),
        ):
            result = await self.session.execute(delete(table).where(column < before))
            removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return removed
