"""Follow one device's traffic as it is stored: reports with their data point values, commands
sent to it, its replies, presence changes and template events (``iotcloud device tail``).

The source is the database, not the broker: every process that handles the device writes its
frames to the frame log (``device_events``) and a data-template device's events to
``device_thing_events``, so polling them follows the device whichever process serves it, with
any number of server processes, from a shell that only has the database URL.

Rows are read by time with an overlap (`OVERLAP`) and told apart by id, because a row can
commit after a later one was read (PostgreSQL sessions commit in any order; a batch written a
little later carries the instant it was received). A row committed more than `OVERLAP` after
its instant would be missed; the gateway writes within a second.

Frames are decoded with the device's product: Gizwits frames (P0) into data point values,
data-template messages (JSON) into their method and params. What cannot be decoded is shown
as hex, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, TypeVar

from iotcloud.codecs import DATA_TEMPLATE_PROTOCOL, parse_product_definition
from iotcloud.codecs.errors import CodecError
from iotcloud.codecs.frame import CMD_ACK_SN, decode_frame
from iotcloud.codecs.p0 import Action, P0Codec
from iotcloud.domain.clock import Clock, iso_utc
from iotcloud.errors import DeviceNotFound
from iotcloud.storage.database import Database
from iotcloud.storage.device_admin import DeviceTrafficRepository
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.models import DeviceEventRow, DeviceThingEventRow

__all__ = ["DeviceTail", "TailEvent", "tail_event_view"]

OVERLAP: Final = timedelta(seconds=10)
PAGE: Final = 1000
RowT = TypeVar("RowT", DeviceEventRow, DeviceThingEventRow)
MAX_PAGES: Final = 50
"""At most this many pages a poll; the rest comes with the next poll."""

_STATUS: Final = frozenset(
    {Action.REPORT, Action.READ_REPLY, Action.VAR_REPORT, Action.VAR_READ_REPLY}
)
_CONTROL: Final = frozenset({Action.CONTROL, Action.VAR_CONTROL})
_READ: Final = frozenset({Action.READ, Action.VAR_READ})
_PRESENCE: Final = {
    "dev_online": "online",
    "dev_re_online": "online",
    "dev_offline": "offline",
    "dev_refused": "refused",
}


@dataclass(frozen=True)
class TailEvent:
    """One thing that happened to the device.

    ``kind``: ``report`` (values the device reported or replied with), ``command`` (values
    sent to it), ``read`` (a read request), ``ack`` (a bare acknowledgement), ``raw`` (bytes
    passed through or not decodable), ``message`` (another data-template message), ``event``
    (a template event), ``online``, ``offline``, ``refused``. ``direction`` is ``up`` (from
    the device), ``down`` (to it) or None; ``values`` the data point values or params;
    ``detail`` the rest in words (a method, hex bytes, a reason, a peer address).
    """

    at: datetime
    kind: str
    direction: str | None
    values: dict[str, Any] | None
    detail: str | None


class DeviceTail:
    """A cursor over one device's stored traffic. `start` it, then `poll` repeatedly."""

    def __init__(self, db: Database, clock: Clock, did: str) -> None:
        self.db = db
        self.clock = clock
        self.did = did
        self.product_key = ""
        self._device_id = 0
        self._codec: P0Codec | None = None
        self._start = clock.now()
        self._floor = self._start
        self._seen_frames: dict[int, datetime] = {}
        self._seen_events: dict[int, datetime] = {}

    async def start(self, since: timedelta = timedelta(0)) -> None:
        """Find the device (``DeviceNotFound``, 9014, when there is none) and start from
        ``since`` ago."""
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(self.did)
        if found is None:
            raise DeviceNotFound(f"no device with did {self.did!r}")
        device, product = found
        self._device_id = device.id
        self.product_key = product.product_key
        if product.protocol_type != DATA_TEMPLATE_PROTOCOL:
            try:
                self._codec = P0Codec(parse_product_definition(json.loads(product.definition)))
            except (CodecError, ValueError):
                self._codec = None  # frames are shown as hex
        self._start = self._floor = self.clock.now() - since

    async def poll(self) -> list[TailEvent]:
        """What was stored since the last poll (from the start instant on the first), oldest
        first; each row is returned once."""
        since = max(self._start, self._floor - OVERLAP)
        async with self.db.session() as session:
            traffic = DeviceTrafficRepository(session)
            frames = await _pages(traffic.frames_since, self._device_id, since)
            events = await _pages(traffic.thing_events_since, self._device_id, since)
        found: list[tuple[datetime, int, TailEvent]] = []
        for row in frames:
            if row.id not in self._seen_frames:
                self._seen_frames[row.id] = row.at
                found.append((row.at, 0, self._frame(row)))
        for event in events:
            if event.id not in self._seen_events:
                self._seen_events[event.id] = event.at
                found.append((event.at, 1, _thing_event(event)))
        found.sort(key=lambda item: (item[0], item[1]))
        newest = max((at for at, _, _ in found), default=None)
        if newest is not None and newest > self._floor:
            self._floor = newest
        horizon = self._floor - 2 * OVERLAP
        self._seen_frames = {k: at for k, at in self._seen_frames.items() if at >= horizon}
        self._seen_events = {k: at for k, at in self._seen_events.items() if at >= horizon}
        return [event for _, _, event in found]

    def _frame(self, row: DeviceEventRow) -> TailEvent:
        presence = _PRESENCE.get(row.kind)
        if presence is not None:
            return TailEvent(row.at, presence, None, None, row.detail)
        direction = "down" if row.kind == "app2dev" else "up"
        payload = bytes(row.payload or b"")
        if payload.startswith(b"{"):
            return _thing_message(row.at, direction, payload)
        return self._gizwits_frame(row.at, direction, payload)

    def _gizwits_frame(self, at: datetime, direction: str, payload: bytes) -> TailEvent:
        raw = TailEvent(at, "raw", direction, None, payload.hex())
        try:
            frame = decode_frame(payload)
            if frame.cmd == CMD_ACK_SN and not frame.payload:
                return TailEvent(at, "ack", direction, None, f"sn {frame.sn}")
            if self._codec is None:
                return raw
            message = self._codec.decode(frame.payload)
        except CodecError:
            return raw
        if message.action in _STATUS:
            return TailEvent(at, "report", direction, _jsonable(message.values), None)
        if message.action in _CONTROL:
            return TailEvent(at, "command", direction, _jsonable(message.values), None)
        if message.action in _READ:
            return TailEvent(at, "read", direction, None, ",".join(message.names) or None)
        return TailEvent(at, "raw", direction, None, message.raw.hex())


def _thing_message(at: datetime, direction: str, payload: bytes) -> TailEvent:
    """A data-template message: ``report`` and ``control`` (and their replies with values)
    show their params; others their method."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return TailEvent(at, "raw", direction, None, payload.hex())
    if not isinstance(message, dict):
        return TailEvent(at, "raw", direction, None, payload.hex())
    method = str(message.get("method", ""))
    params = message.get("params")
    values = dict(params) if isinstance(params, Mapping) else None
    if method == "report":
        return TailEvent(at, "report", direction, values, None)
    if method == "control":
        return TailEvent(at, "command", direction, values, None)
    if method == "action":
        action = message.get("actionId")
        return TailEvent(at, "command", direction, values, f"action {action}")
    return TailEvent(at, "message", direction, values, method or None)


async def _pages(
    fetch: Callable[[int, datetime, int, int], Awaitable[Sequence[RowT]]],
    device_id: int,
    since: datetime,
) -> list[RowT]:
    """Every row after ``since``, page by page on (at, id), so that more than a page of rows
    in the overlap cannot stall the tail (at most `MAX_PAGES` a poll; the rest comes next)."""
    rows: list[RowT] = []
    cursor = (since, 0)
    for _ in range(MAX_PAGES):
        page = await fetch(device_id, cursor[0], PAGE, cursor[1])
        rows.extend(page)
        if len(page) < PAGE:
            break
        cursor = (page[-1].at, page[-1].id)
    return rows


def _thing_event(row: DeviceThingEventRow) -> TailEvent:
    return TailEvent(row.at, "event", "up", dict(row.params), f"{row.event_id} ({row.event_type})")


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Decoded values as JSON values: bytes as hex, decimals as numbers."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, bytes | bytearray):
            out[name] = value.hex()
        elif isinstance(value, Decimal):
            out[name] = int(value) if value == value.to_integral_value() else float(value)
        else:
            out[name] = value
    return out


def tail_event_view(event: TailEvent) -> dict[str, Any]:
    """One JSON line of ``iotcloud device tail --json``."""
    return {
        "at": iso_utc(event.at),
        "kind": event.kind,
        "direction": event.direction,
        "values": event.values,
        "detail": event.detail,
    }
