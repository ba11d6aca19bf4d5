"""Reading device data: the latest values, the history of reports, aggregates over it, and the
frame log (``raw_data``).

Everything but ``latest`` (which the Open API serves to any app) is for the users bound to the
device: those reads raise ``DeviceNotFound`` (9014) for an unknown did and ``DeviceNotBound``
(9017) for a device the user is not bound to. Bad ranges and names raise ``FormInvalid`` (9015)
naming the Gizwits parameter at fault.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, NoReturn

from iotcloud.codecs import (
    DATA_TEMPLATE_PROTOCOL,
    DataTemplate,
    parse_data_template,
    parse_product_definition,
    template_to_gizwits,
)
from iotcloud.codecs.datapoints import NUMERIC_WIDTHS
from iotcloud.config import Settings
from iotcloud.domain.clock import Clock
from iotcloud.errors import DeviceNotFound, FormInvalid
from iotcloud.services.bindings import AppUser, bound_record, clipped, visible_from
from iotcloud.storage.database import Database
from iotcloud.storage.models import DeviceEventRow, ProductRow
from iotcloud.storage.telemetry import ONLINE_KINDS, TelemetryRepository

HISTORY_LIMIT_MAX: Final = 1000
"""Most reports one history page returns."""
AGGREGATE_MAX_REPORTS: Final = 100_000
"""Most reports one aggregation may scan; a range holding more is refused (9015)."""
FRAME_LOG_LIMIT_MAX: Final = 1000
FRAME_LOG_DEPTH: Final = 5000
"""``skip + limit`` of a frame log page may not exceed this (Gizwits' rule)."""
FRAME_LOG_WINDOW: Final = timedelta(hours=48)
"""Longest ``end_time - start_time`` of a frame log query (Gizwits' rule)."""
CLOCK_SKEW: Final = timedelta(minutes=5)
"""How far in the future an ``end_time`` may lie (clients' clocks run ahead)."""


class Aggregator(StrEnum):
    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"


class BucketUnit(StrEnum):
    """Aggregation buckets, in UTC; weeks start on Monday."""

    HOURS = "hours"
    DAYS = "days"
    WEEKS = "weeks"
    MONTHS = "months"


class FrameLogType(StrEnum):
    """``raw_data`` types: frames to and from the device, or its comings and goings."""

    CMD = "cmd"
    ONLINE = "online"


FRAME_KINDS: Final[dict[FrameLogType, tuple[str, ...]]] = {
    FrameLogType.CMD: ("app2dev", "dev2app"),
    # dev_refused: a registration, provision or delete call the device's product refused
    FrameLogType.ONLINE: (*ONLINE_KINDS, "dev_offline", "dev_refused"),
}


@dataclass(frozen=True)
class LatestState:
    did: str
    updated_at: datetime | None
    attrs: dict[str, Any]


@dataclass(frozen=True)
class HistoryEntry:
    """One report: the values it carried (display form)."""

    at: datetime
    attrs: dict[str, Any]


@dataclass(frozen=True)
class HistoryPage:
    total: int
    entries: list[HistoryEntry]


@dataclass(frozen=True)
class Bucket:
    """One aggregation bucket: its start and a value per requested attr (None when the attr
    was not reported in the bucket)."""

    start: datetime
    values: dict[str, int | float | None]


@dataclass(frozen=True)
class Aggregation:
    did: str
    product_key: str
    buckets: list[Bucket]


@dataclass(frozen=True)
class FrameLogEntry:
    """One frame log entry. ``ip`` is the device's address in the session the entry belongs to
    (None when unknown; for ``dev_refused``, the caller's); ``reason`` says why a session ended
    (``dev_offline``) or why a device call was refused (``dev_refused``)."""

    kind: str
    at: datetime
    payload: bytes | None
    ip: str | None
    reason: str | None


@dataclass(frozen=True)
class FrameLogPage:
    total: int
    entries: list[FrameLogEntry]


class TelemetryService:
    def __init__(self, db: Database, clock: Clock, settings: Settings) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        # product_key -> (updated_at, {data point: (type name, numeric?)}, template or None)
        self._products: dict[
            str, tuple[datetime, Mapping[str, tuple[str, bool]], DataTemplate | None]
        ] = {}

    async def latest(self, did: str) -> LatestState:
        """The merged latest values of ``did`` (empty before its first report); 9014 if unknown."""
        async with self.db.session() as session:
            exists, latest = await TelemetryRepository(session).latest_of_did(did)
        if not exists:
            raise DeviceNotFound(f"no device with did {did}")
        if latest is None:
            return LatestState(did=did, updated_at=None, attrs={})
        return LatestState(did=did, updated_at=latest[0], attrs=latest[1])

    async def history(
        self,
        user: AppUser,
        did: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        attr: str | None = None,
        limit: int = 20,
        skip: int = 0,
        descending: bool = True,
    ) -> HistoryPage:
        """The device's reports in ``[start, end]`` (either end open when None), newest first
        unless ``descending`` is False. With ``attr``, only reports carrying it, and only its
        value. Values are in Gizwits form, as ``/latest`` serves them: a data-template device's
        stored Tencent values converted (`template_to_gizwits`: enum integers as labels, 0/1 as
        false/true). Raises ``FormInvalid`` naming ``start_ts``, ``attr``, ``limit`` or ``skip``."""
        _check_page(limit, skip, HISTORY_LIMIT_MAX)
        if start is not None and end is not None and start > end:
            raise FormInvalid("start_ts: must not be after end_ts")
        async with self.db.session() as session:
            record = await bound_record(session, user, did)
            if attr is not None and attr not in self._point_types(record.product):
                _unknown_attr("attr", attr)
            start = clipped(start, visible_from(record))
            if start is not None and end is not None and start > end:
                return HistoryPage(total=0, entries=[])
            repo = TelemetryRepository(session)
            device_id = record.device.id
            total = await repo.history_count(device_id, start, end, attr)
            rows = await repo.history_page(
                device_id, start, end, attr, limit=limit, skip=skip, descending=descending
            )
        template = self._template(record.product)
        entries = []
        for row in rows:
            values = {attr: row.attrs[attr]} if attr is not None else dict(row.attrs)
            if template is not None:
                values = template_to_gizwits(template, values)
            entries.append(HistoryEntry(at=row.at, attrs=values))
        return HistoryPage(total=total, entries=entries)

    async def aggregate(
        self,
        user: AppUser,
        did: str,
        *,
        start: datetime,
        end: datetime,
        attrs: Sequence[str],
        aggregator: Aggregator,
        unit: BucketUnit,
    ) -> Aggregation:
        """``aggregator`` over each numeric attr of ``attrs``, per ``unit`` bucket (UTC), over
        the reports in ``[start, end]``. Buckets without any of the attrs are left out.

        Raises ``FormInvalid`` naming ``attrs`` (unknown, repeated or not numeric) or
        ``start_ts`` (after ``end_ts``, or a range holding more than ``AGGREGATE_MAX_REPORTS``
        reports).
        """
        if start > end:
            raise FormInvalid("start_ts: must not be after end_ts")
        if not attrs:
            raise FormInvalid("attrs: name at least one attr")
        async with self.db.session() as session:
            record = await bound_record(session, user, did)
            _check_numeric(self._point_types(record.product), attrs)
            start = clipped(start, visible_from(record))
            repo = TelemetryRepository(session)
            count = await repo.history_count(record.device.id, start, end)
            if count > AGGREGATE_MAX_REPORTS:
                raise FormInvalid(
                    f"start_ts: the range holds {count} reports, more than the "
                    f"{AGGREGATE_MAX_REPORTS} one aggregation may scan; ask for a shorter range"
                )
            reports = await repo.history_values(record.device.id, start, end, attrs)
        return Aggregation(
            did=did,
            product_key=record.product.product_key,
            buckets=aggregate_reports(reports, attrs, aggregator, unit),
        )

    async def frame_log(
        self,
        user: AppUser,
        did: str,
        *,
        log_type: FrameLogType,
        start: datetime,
        end: datetime,
        limit: int = 20,
        skip: int = 0,
        descending: bool = True,
    ) -> FrameLogPage:
        """The device's frame log entries of ``log_type`` in ``[start, end]``.

        Gizwits' rules apply: the window spans at most 48 hours, lies within the frame log's
        retention (``frame_log_retention_days``) and not in the future (beyond a little clock
        skew); ``limit`` is at most 1000 and ``skip + limit`` at most 5000. Raises
        ``FormInvalid`` naming the parameter at fault.
        """
        _check_page(limit, skip, FRAME_LOG_LIMIT_MAX)
        if skip + limit > FRAME_LOG_DEPTH:
            raise FormInvalid(f"skip: skip + limit may not exceed {FRAME_LOG_DEPTH}")
        if start > end:
            raise FormInvalid("start_time: must not be after end_time")
        if end - start > FRAME_LOG_WINDOW:
            raise FormInvalid("end_time: the window may span at most 48 hours")
        now = self.clock.now()
        if end > now + CLOCK_SKEW:
            raise FormInvalid("end_time: must not be in the future")
        retention = self.settings.frame_log_retention_days
        if start < now - timedelta(days=retention):
            raise FormInvalid(
                f"start_time: must lie within the last {retention} days (the frame log's retention)"
            )
        kinds = FRAME_KINDS[log_type]
        async with self.db.session() as session:
            record = await bound_record(session, user, did)
            start = clipped(start, visible_from(record))
            if start > end:
                return FrameLogPage(total=0, entries=[])
            repo = TelemetryRepository(session)
            total = await repo.events_count(record.device.id, kinds, start, end)
            rows = await repo.events_page(
                record.device.id,
                kinds,
                start,
                end,
                limit=limit,
                skip=skip,
                descending=descending,
            )
            sessions = (
                await repo.sessions(
                    record.device.id, min(row.at for row in rows), max(row.at for row in rows)
                )
                if rows
                else []
            )
        return FrameLogPage(total=total, entries=_frame_entries(rows, sessions))

    def _point_types(self, product: ProductRow) -> Mapping[str, tuple[str, bool]]:
        """The product's data points -> (type name, numeric?): the attrs of a Gizwits product,
        the properties of a data-template one (int and float are numeric there)."""
        return self._product(product)[0]

    def _template(self, product: ProductRow) -> DataTemplate | None:
        """The data template of a data-template product; None for a Gizwits one."""
        return self._product(product)[1]

    def _product(
        self, product: ProductRow
    ) -> tuple[Mapping[str, tuple[str, bool]], DataTemplate | None]:
        """What reads need of a product's definition, parsed once per product version."""
        cached = self._products.get(product.product_key)
        if cached is not None and cached[0] == product.updated_at:
            return cached[1], cached[2]
        points: dict[str, tuple[str, bool]]
        template: DataTemplate | None = None
        if product.protocol_type == DATA_TEMPLATE_PROTOCOL:
            template = parse_data_template(json.loads(product.definition))
            points = {
                pid: (prop.kind, prop.kind in ("int", "float"))
                for pid, prop in template.properties.items()
            }
        else:
            definition = parse_product_definition(json.loads(product.definition))
            points = {
                attr.name: (attr.data_type.value, attr.data_type in NUMERIC_WIDTHS)
                for attr in definition.attrs
            }
        self._products[product.product_key] = (product.updated_at, points, template)
        return points, template


def aggregate_reports(
    reports: Sequence[tuple[datetime, Sequence[Any]]],
    attrs: Sequence[str],
    aggregator: Aggregator,
    unit: BucketUnit,
) -> list[Bucket]:
    """Aggregate ``reports`` (``(at, value of each of attrs)``, oldest first) per ``unit``
    bucket; values that are not numbers are skipped. Sums are exact decimal sums (``0.1 + 0.2``
    is ``0.3``); a sum of integers is an integer, an average always a float."""
    buckets: dict[datetime, list[list[int | float]]] = {}
    start = end = None  # the bucket of the previous report: reports come in time order
    for at, values in reports:
        if start is None or end is None or not start <= at < end:
            start = bucket_start(at, unit)
            end = bucket_end(start, unit)
        found = None
        for index, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if found is None:
                found = buckets.get(start)
                if found is None:
                    found = buckets[start] = [[] for _ in attrs]
            found[index].append(value)
    return [
        Bucket(
            start=start,
            values={
                name: _combine(collected, aggregator) if collected else None
                for name, collected in zip(attrs, found, strict=True)
            },
        )
        for start, found in sorted(buckets.items())
    ]


def bucket_start(at: datetime, unit: BucketUnit) -> datetime:
    """The start (UTC) of the ``unit`` bucket holding ``at``; weeks start on Monday."""
    hour = at.replace(minute=0, second=0, microsecond=0)
    if unit is BucketUnit.HOURS:
        return hour
    day = hour.replace(hour=0)
    if unit is BucketUnit.DAYS:
        return day
    if unit is BucketUnit.WEEKS:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def bucket_end(start: datetime, unit: BucketUnit) -> datetime:
    """The start of the bucket after the one starting at ``start``."""
    if unit is BucketUnit.HOURS:
        return start + timedelta(hours=1)
    if unit is BucketUnit.DAYS:
        return start + timedelta(days=1)
    if unit is BucketUnit.WEEKS:
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _combine(values: list[int | float], aggregator: Aggregator) -> int | float:
    if aggregator is Aggregator.MAX:
        return max(values)
    if aggregator is Aggregator.MIN:
        return min(values)
    integers = sum(v for v in values if isinstance(v, int))
    floats = [v for v in values if isinstance(v, float)]
    total = (
        Decimal(integers) + sum((Decimal(str(v)) for v in floats), Decimal(0))
        if floats
        else integers
    )
    if aggregator is Aggregator.AVG:
        return float(total / len(values)) if floats else integers / len(values)
    return float(total) if floats else integers


def _check_numeric(points: Mapping[str, tuple[str, bool]], attrs: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in attrs:
        if name in seen:
            raise FormInvalid(f"attrs: {name} is named twice")
        seen.add(name)
        if name not in points:
            _unknown_attr("attrs", name)
        type_name, numeric = points[name]
        if not numeric:
            raise FormInvalid(f"attrs: {name} is not numeric ({type_name})")


def _unknown_attr(param: str, name: str) -> NoReturn:
    raise FormInvalid(f"{param}: {name} is not a data point of this device's product")


def _check_page(limit: int, skip: int, max_limit: int) -> None:
    if not 1 <= limit <= max_limit:
        raise FormInvalid(f"limit: must be 1 to {max_limit}")
    if skip < 0:
        raise FormInvalid("skip: must not be negative")


def _frame_entries(
    rows: Sequence[DeviceEventRow], sessions: Sequence[DeviceEventRow]
) -> list[FrameLogEntry]:
    """``rows`` with the address of the session each belongs to: that of the newest online
    event at or before it (by time, then by log order). ``sessions`` are oldest first."""
    keys = [(online.at, online.id) for online in sessions]
    entries = []
    for row in rows:
        if row.kind == "dev_refused":  # an HTTP call: its own address, not the session's
            reason, _, peer = (row.detail or "").partition("|")
            entries.append(FrameLogEntry(row.kind, row.at, row.payload, _host(peer), reason))
            continue
        index = bisect.bisect_right(keys, (row.at, row.id))
        entries.append(
            FrameLogEntry(
                kind=row.kind,
                at=row.at,
                payload=row.payload,
                ip=_host(sessions[index - 1].detail) if index else None,
                reason=row.detail if row.kind == "dev_offline" else None,
            )
        )
    return entries


def _host(peer: str | None) -> str | None:
    """``1.2.3.4`` of ``1.2.3.4:5678``, ``::1`` of ``[::1]:5678``."""
    if not peer:
        return None
    host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 or peer.startswith("[") else peer
    return host.strip("[]") or None
