"""Device telemetry storage: latest state (one row per device), history, the frame log, and
the events data-template devices post.

Writes come in batches from the ingest path; each method is one set-based statement (or two) for
the whole batch, never one statement per report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.storage.models import (
    DeviceEventRow,
    DeviceHistoryRow,
    DeviceLatestRow,
    DeviceRow,
    DeviceThingEventRow,
)

_encoder = msgspec.json.Encoder()


def _dumps(value: Any) -> str:
    """JSON text of stored values: msgspec's encoder, several times faster than ``json.dumps``
    on the report path (the text differs only in whitespace)."""
    return _encoder.encode(value).decode()


class _BulkWrite:
    """One INSERT run as a driver-level executemany of ready-made tuples.

    The hot path of device reports: SQLAlchemy's per-row parameter processing (type
    processors for the UTC datetime and JSON columns, parameter dictionaries) cost more than
    the SQL itself, so the repository converts each value once, the way those column types
    store it (BENCHMARKS.md, ingest). Only SQLite (``?``) and PostgreSQL through asyncpg
    (``$n``) are supported, like everywhere else.
    """

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        *,
        sqlite_tail: str = "",
        postgresql_tail: str = "",
    ) -> None:
        names = ", ".join(columns)
        head = f"INSERT INTO {table} ({names}) VALUES "  # noqa: S608 (model names, not input)
        self.sqlite = head + "(" + ", ".join("?" for _ in columns) + ")" + sqlite_tail
        numbered = ", ".join(f"${index}" for index in range(1, len(columns) + 1))
        self.postgresql = head + "(" + numbered + ")" + postgresql_tail

    def sql(self, dialect: str) -> str:
        return self.postgresql if dialect == "postgresql" else self.sqlite


# Display values are never JSON null, so SQLite's json_patch (RFC 7396) and PostgreSQL's
# jsonb || are both the plain "newer values win" merge of the reports, per data point. A struct
# value of a data-template device is an object, which json_patch would merge member-wise while
# jsonb || replaces it whole: on SQLite a fifth parameter, ``{struct: null, ...}`` for the
# structs a row carries (``{}`` otherwise), first removes them, so both replace. attr_times
# (data point -> Unix ms of its last report) is merged the same way; NULL (rows written before
# the column existed) reads as empty.
_UPSERT_LATEST = _BulkWrite(
    DeviceLatestRow.__tablename__,
    ("device_id", "updated_at", "attrs", "attr_times"),
    sqlite_tail=" ON CONFLICT (device_id) DO UPDATE SET"
    " updated_at = max(device_latest.updated_at, excluded.updated_at),"
    " attrs = json_patch(json_patch(device_latest.attrs, ?), excluded.attrs),"
    " attr_times = json_patch(coalesce(device_latest.attr_times, '{}'), excluded.attr_times)",
    postgresql_tail=" ON CONFLICT (device_id) DO UPDATE SET"
    " updated_at = GREATEST(device_latest.updated_at, excluded.updated_at),"
    " attrs = device_latest.attrs || excluded.attrs,"
    " attr_times = coalesce(device_latest.attr_times, '{}'::jsonb) || excluded.attr_times",
)
_INSERT_HISTORY = _BulkWrite(DeviceHistoryRow.__tablename__, ("device_id", "at", "attrs"))
_INSERT_EVENTS = _BulkWrite(
    DeviceEventRow.__tablename__, ("device_id", "at", "kind", "payload", "detail")
)
_INSERT_THING_EVENTS = _BulkWrite(
    DeviceThingEventRow.__tablename__,
    ("device_id", "at", "event_id", "event_type", "params", "client_token"),
)


def _sqlite_instant(at: datetime) -> str:
    """``UTCDateTime`` on SQLite: naive UTC in SQLAlchemy's DATETIME text form."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _aware_instant(at: datetime) -> datetime:
    """``UTCDateTime`` on PostgreSQL: an aware UTC datetime (asyncpg sends it as timestamptz)."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return at.astimezone(UTC)


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


ONLINE_KINDS = ("dev_online", "dev_re_online")


@dataclass(frozen=True)
class ThingEvent:
    """An event a data-template device posted, checked against its template."""

    device_id: int
    at: datetime
    event_id: str
    event_type: str
    params: dict[str, Any]
    client_token: str | None = None


@dataclass(frozen=True)
class PresenceChange:
    device_id: int
    at: datetime
    online: bool
    ordered: bool = False
    """Applied only if the device has no later change stored (``at`` is the broker's instant
    and changes may arrive out of order); otherwise ``at`` is now and it always applies."""


class TelemetryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        self._instant = _aware_instant if self.dialect == "postgresql" else _sqlite_instant

    async def apply_states(self, changes: Sequence[StateChange], *, history: bool) -> None:
        """Merge each change into its device's latest state (in order), note when each data
        point was last reported (``attr_times``, Unix ms), and append history."""
        if not changes:
            return
        # Merge the batch's changes per device here, and each device's stored state in the
        # upsert itself (JSON merge in SQL): no read of the current state, no round trip for it.
        merged: dict[int, tuple[datetime, dict[str, Any], dict[str, int]]] = {}
        for change in changes:
            ms = int(change.at.timestamp() * 1000)
            previous = merged.get(change.device_id)
            if previous is None:
                merged[change.device_id] = (
                    change.at,
                    dict(change.values),
                    dict.fromkeys(change.values, ms),
                )
            else:
                previous[1].update(change.values)
                previous[2].update(dict.fromkeys(change.values, ms))
                merged[change.device_id] = (max(previous[0], change.at), previous[1], previous[2])
        instant = self._instant
        dumps = _dumps
        upserts: list[tuple[Any, ...]] = []
        sqlite = self.dialect != "postgresql"
        for device_id, (at, attrs, times) in merged.items():
            row: tuple[Any, ...] = (device_id, instant(at), dumps(attrs), dumps(times))
            if sqlite:  # see _UPSERT_LATEST: the structs to replace whole rather than merge
                row += (dumps({k: None for k, v in attrs.items() if isinstance(v, dict)}),)
            upserts.append(row)
        await self._write(_UPSERT_LATEST, upserts)
        if history:
            await self._write(
                _INSERT_HISTORY,
                [(c.device_id, instant(c.at), dumps(c.values)) for c in changes],
            )

    async def log_frames(self, events: Sequence[FrameEvent]) -> None:
        if events:
            instant = self._instant
            await self._write(
                _INSERT_EVENTS,
                [(e.device_id, instant(e.at), e.kind, e.payload, e.detail) for e in events],
            )

    async def log_thing_events(self, events: Sequence[ThingEvent]) -> None:
        """Append events posted by data-template devices."""
        if events:
            instant = self._instant
            dumps = json.dumps
            await self._write(
                _INSERT_THING_EVENTS,
                [
                    (
                        e.device_id,
                        instant(e.at),
                        e.event_id,
                        e.event_type,
                        dumps(e.params),
                        e.client_token,
                    )
                    for e in events
                ],
            )

    async def thing_events_page(
        self,
        device_id: int,
        since: datetime | None,
        until: datetime | None,
        event_id: str | None = None,
        event_type: str | None = None,
        *,
        limit: int,
        offset: int = 0,
    ) -> tuple[int, Sequence[DeviceThingEventRow]]:
        """``(total, page)`` of the events the device posted in ``[since, until]`` (of one
        ``event_id`` and/or one ``event_type`` when given), newest first (the latest stored
        first among events of the same instant), ``offset`` skipped, at most ``limit``."""
        conditions: list[ColumnElement[bool]] = [DeviceThingEventRow.device_id == device_id]
        if since is not None:
            conditions.append(DeviceThingEventRow.at >= since)
        if until is not None:
            conditions.append(DeviceThingEventRow.at <= until)
        if event_id is not None:
            conditions.append(DeviceThingEventRow.event_id == event_id)
        if event_type is not None:
            conditions.append(DeviceThingEventRow.event_type == event_type)
        total = await self.session.scalar(
            select(func.count()).select_from(DeviceThingEventRow).where(*conditions)
        )
        rows = await self.session.scalars(
            select(DeviceThingEventRow)
            .where(*conditions)
            .order_by(DeviceThingEventRow.at.desc(), DeviceThingEventRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return int(total or 0), rows.all()

    async def _write(self, statement: _BulkWrite, rows: list[tuple[Any, ...]]) -> None:
        connection = await self.session.connection()
        await connection.exec_driver_sql(statement.sql(self.dialect), rows)

    async def set_presence(self, changes: Sequence[PresenceChange]) -> None:
        """Apply the last presence change per device of the batch (the latest one, for
        ``ordered`` changes, and only if the device has no later change stored)."""
        last: dict[int, PresenceChange] = {}
        for change in changes:
            kept = last.get(change.device_id)
            if kept is None or not (change.ordered and kept.ordered and change.at < kept.at):
                last[change.device_id] = change
        ordered = [c for c in last.values() if c.ordered]
        if ordered:
            await self._set_presence_if_newer(ordered)
        online = [c for c in last.values() if c.online and not c.ordered]
        offline = [c for c in last.values() if not c.online and not c.ordered]
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

    async def _set_presence_if_newer(self, changes: Sequence[PresenceChange]) -> None:
        devices = cast(Table, DeviceRow.__table__)
        at = bindparam("b_at", type_=devices.c.last_online_at.type)
        newer = (
            devices.c.id == bindparam("b_id"),
            or_(devices.c.last_online_at.is_(None), devices.c.last_online_at <= at),
            or_(devices.c.last_offline_at.is_(None), devices.c.last_offline_at <= at),
        )
        for online, stamp in ((True, "last_online_at"), (False, "last_offline_at")):
            rows = [{"b_id": c.device_id, "b_at": c.at} for c in changes if c.online is online]
            if rows:
                await self.session.execute(
                    update(devices).where(*newer).values({"is_online": online, stamp: at}), rows
                )

    async def set_offline_if_online(self, device_ids: Sequence[int], at: datetime) -> list[int]:
        """Store offline at ``at`` those of ``device_ids`` stored online with no change later
        than ``at``; the ids it changed (so that only one of several callers logs it)."""
        if not device_ids:
            return []
        devices = cast(Table, DeviceRow.__table__)
        changed = await self.session.execute(
            update(devices)
            .where(
                devices.c.id.in_(device_ids),
                devices.c.is_online.is_(True),
                or_(devices.c.last_online_at.is_(None), devices.c.last_online_at <= at),
            )
            .values(is_online=False, last_offline_at=at)
            .returning(devices.c.id)
        )
        return [int(device_id) for device_id in changed.scalars()]

    async def online_devices(self, since_before: datetime) -> list[tuple[int, str]]:
        """``(id, did)`` of the devices stored online that came online before
        ``since_before``."""
        rows = await self.session.execute(
            select(DeviceRow.id, DeviceRow.did).where(
                DeviceRow.is_online.is_(True),
                or_(DeviceRow.last_online_at.is_(None), DeviceRow.last_online_at < since_before),
            )
        )
        return [(int(device_id), str(did)) for device_id, did in rows]

    async def mark_all_offline(self, at: datetime) -> None:
        """After a restart nobody is connected to this broker yet."""
        await self.session.execute(
            update(DeviceRow)
            .where(DeviceRow.is_online.is_(True))
            .values(is_online=False, last_offline_at=at)
        )

    async def latest(self, device_id: int) -> DeviceLatestRow | None:
        return await self.session.get(DeviceLatestRow, device_id)

    async def latest_of_did(self, did: str) -> tuple[bool, tuple[datetime, dict[str, Any]] | None]:
        """In one query: whether device ``did`` exists, and its latest ``(updated_at, attrs)``
        (None before its first report)."""
        found = (
            await self.session.execute(
                select(DeviceLatestRow.updated_at, DeviceLatestRow.attrs)
                .select_from(DeviceRow)
                .outerjoin(DeviceLatestRow, DeviceLatestRow.device_id == DeviceRow.id)
                .where(DeviceRow.did == did)
            )
        ).first()
        if found is None:
            return False, None
        updated_at, attrs = found
        return True, (None if updated_at is None else (updated_at, dict(attrs)))

    async def purge_before(self, history_before: datetime, events_before: datetime) -> int:
        removed = 0
        for table, column, before in (
            (DeviceHistoryRow, DeviceHistoryRow.at, history_before),
            (DeviceEventRow, DeviceEventRow.at, events_before),
            (DeviceThingEventRow, DeviceThingEventRow.at, events_before),
        ):
            result = await self.session.execute(delete(table).where(column < before))
            removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return removed

    # -- reads for apps (history, aggregation, the frame log) -----------------------------------

    async def history_count(
        self,
        device_id: int,
        start: datetime | None,
        end: datetime | None,
        attr: str | None = None,
    ) -> int:
        """How many reports of the device fall in ``[start, end]`` (and carry ``attr``)."""
        query = select(func.count()).select_from(DeviceHistoryRow)
        query = query.where(*self._history_filter(device_id, start, end, attr))
        return int(await self.session.scalar(query) or 0)

    async def history_page(
        self,
        device_id: int,
        start: datetime | None,
        end: datetime | None,
        attr: str | None,
        *,
        limit: int,
        skip: int,
        descending: bool,
    ) -> Sequence[DeviceHistoryRow]:
        """One page of the device's reports in ``[start, end]``, by time (then insertion)."""
        order = (
            (DeviceHistoryRow.at.desc(), DeviceHistoryRow.id.desc())
            if descending
            else (DeviceHistoryRow.at, DeviceHistoryRow.id)
        )
        query = (
            select(DeviceHistoryRow)
            .where(*self._history_filter(device_id, start, end, attr))
            .order_by(*order)
            .limit(limit)
            .offset(skip)
        )
        return (await self.session.scalars(query)).all()

    async def history_values(
        self, device_id: int, start: datetime, end: datetime, attrs: Sequence[str]
    ) -> list[tuple[datetime, tuple[Any, ...]]]:
        """``(at, (value of each of attrs))`` of every report of the device in ``[start, end]``,
        oldest first; a value is None where the report lacks the attr. Only these values are
        read from the stored JSON. Callers bound the range (``history_count``) first."""
        columns = [self._attr_value(name) for name in attrs]
        query = (
            select(DeviceHistoryRow.at, *columns)
            .where(*self._history_filter(device_id, start, end, None))
            .order_by(DeviceHistoryRow.at, DeviceHistoryRow.id)
        )
        return [(row[0], tuple(row[1:])) for row in (await self.session.execute(query)).all()]

    async def events_count(
        self, device_id: int, kinds: Sequence[str], start: datetime, end: datetime
    ) -> int:
        query = select(func.count()).select_from(DeviceEventRow)
        query = query.where(*_event_filter(device_id, kinds, start, end))
        return int(await self.session.scalar(query) or 0)

    async def events_page(
        self,
        device_id: int,
        kinds: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        limit: int,
        skip: int,
        descending: bool,
    ) -> Sequence[DeviceEventRow]:
        """One page of the device's frame log entries of ``kinds`` in ``[start, end]``."""
        order = (
            (DeviceEventRow.at.desc(), DeviceEventRow.id.desc())
            if descending
            else (DeviceEventRow.at, DeviceEventRow.id)
        )
        query = (
            select(DeviceEventRow)
            .where(*_event_filter(device_id, kinds, start, end))
            .order_by(*order)
            .limit(limit)
            .offset(skip)
        )
        return (await self.session.scalars(query)).all()

    async def sessions(
        self, device_id: int, start: datetime, end: datetime
    ) -> list[DeviceEventRow]:
        """The device's online events that began the sessions overlapping ``[start, end]``:
        the last one before ``start`` and every one up to ``end``, oldest first."""
        before = await self.session.scalar(
            select(DeviceEventRow)
            .where(
                DeviceEventRow.device_id == device_id,
                DeviceEventRow.kind.in_(ONLINE_KINDS),
                DeviceEventRow.at < start,
            )
            .order_by(DeviceEventRow.at.desc(), DeviceEventRow.id.desc())
            .limit(1)
        )
        during = await self.session.scalars(
            select(DeviceEventRow)
            .where(*_event_filter(device_id, ONLINE_KINDS, start, end))
            .order_by(DeviceEventRow.at, DeviceEventRow.id)
        )
        return ([before] if before is not None else []) + list(during.all())

    def _history_filter(
        self, device_id: int, start: datetime | None, end: datetime | None, attr: str | None
    ) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [DeviceHistoryRow.device_id == device_id]
        if start is not None:
            conditions.append(DeviceHistoryRow.at >= start)
        if end is not None:
            conditions.append(DeviceHistoryRow.at <= end)
        if attr is not None:
            conditions.append(self._has_attr(attr))
        return conditions

    def _attr_value(self, attr: str) -> ColumnElement[Any]:
        """The JSON value of ``attr`` in a report (None when absent)."""
        if self.dialect == "postgresql":
            return type_coerce(DeviceHistoryRow.attrs, postgresql.JSONB)[attr]
        # json_extract yields numbers as SQL numbers (and true/false as 1/0: callers only ask
        # for numeric attrs)
        return func.json_extract(DeviceHistoryRow.attrs, _json_path(attr))

    def _has_attr(self, attr: str) -> ColumnElement[bool]:
        """The report carries ``attr`` (JSON key presence differs per backend)."""
        if self.dialect == "postgresql":
            present: ColumnElement[bool] = type_coerce(
                DeviceHistoryRow.attrs, postgresql.JSONB
            ).has_key(attr)
            return present
        return func.json_type(DeviceHistoryRow.attrs, _json_path(attr)).is_not(None)


def _json_path(attr: str) -> str:
    """SQLite JSON path of a top-level key (attr names are ``[A-Za-z0-9_]+``)."""
    return '$."' + attr.replace('"', "") + '"'


def _event_filter(
    device_id: int, kinds: Sequence[str], start: datetime, end: datetime
) -> ColumnElement[bool]:
    return and_(
        DeviceEventRow.device_id == device_id,
        DeviceEventRow.kind.in_(list(kinds)),
        DeviceEventRow.at >= start,
        DeviceEventRow.at <= end,
    )
