"""What only the web console needs: operator sign-in sessions, the overview's figures, device
search, an operator's view of one device (live state, chart series, frame log) and commands
sent from a form.

Sessions: signing in with the operator token (``IOTCLOUD_ADMIN_TOKEN``, compared in constant
time) makes a random session token that goes to the browser as a cookie; the database keeps
only its SHA-256 digest (`ConsoleSessionRow`), so a copy of the database cannot sign in. A
session ends after `SESSION_IDLE` without a request or `SESSION_LIFETIME` after sign-in,
whichever comes first, or at sign-out (its row is deleted). The CSRF token of a session is an
HMAC of a fixed label keyed with the session token: only a holder of the cookie can compute it,
and nothing more needs storing.

The operator sees every device: reads here are not filtered by binding, unlike the Open API's.
A command is validated and encoded by `ControlService` exactly as an app's (the same
`AttrInvalid` messages) and sent as a cloud command.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from iotcloud.codecs import DataTemplate
from iotcloud.codecs.datapoints import NUMERIC_WIDTHS, AttrType, DataType
from iotcloud.config import Settings
from iotcloud.domain.clock import Clock
from iotcloud.errors import (
    AttrInvalid,
    DeviceDisabled,
    DeviceNotFound,
    DeviceOffline,
    OperatorAuthFailed,
)
from iotcloud.gateway.service import SendResult
from iotcloud.services.control import ControlService, encode_template_control
from iotcloud.services.credentials import digest
from iotcloud.services.devices import (
    DeviceImportRow,
    DeviceService,
    ImportFailure,
    ImportReport,
)
from iotcloud.services.products import ProductService
from iotcloud.services.telemetry import TelemetryService
from iotcloud.storage.console import (
    ConsoleQueries,
    ConsoleSessionRepository,
    DueSchedule,
    ProblemRun,
    ProductFleet,
)
from iotcloud.storage.database import Database
from iotcloud.storage.models import ConsoleSessionRow, DeviceRow, ProductRow

log = logging.getLogger(__name__)

SESSION_IDLE: Final = timedelta(minutes=30)
"""A session unused this long is over."""
SESSION_LIFETIME: Final = timedelta(hours=12)
"""A session is over this long after sign-in, however busy."""
_TOUCH_EVERY: Final = timedelta(seconds=30)
"""``last_seen_at`` is written at most this often per session (not on every request)."""
CHART_RANGES: Final[Mapping[str, timedelta]] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
CHART_MAX_REPORTS: Final = 2000
"""A chart draws at most the newest this many reports of its range."""
FRAME_LOG_ROWS: Final = 50
_FIELD: Final = re.compile(r"^(?:attr '(?P<quoted>[^']+)'|(?P<plain>[A-Za-z0-9_.]+)):")


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in console session; ``token`` is the cookie's value."""

    token: str
    created_at: datetime
    expires_at: datetime

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.token)


def csrf_token(session_token: str) -> str:
    """The CSRF token tied to a session."""
    return hmac.new(session_token.encode(), b"iotcloud-console-csrf", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Overview:
    fleet: list[ProductFleet]
    reports_per_minute: int
    """Frames devices sent (reports and replies) in the last minute, over every process."""
    commands_per_minute: int
    """Commands sent to devices in the last minute, over every process."""
    due: list[DueSchedule]
    """Enabled schedules firing within the next hour, soonest first."""
    problems: list[ProblemRun]
    """The last failed or missed runs, newest first."""

    @property
    def devices_online(self) -> int:
        return sum(product.online for product in self.fleet)

    @property
    def devices_total(self) -> int:
        return sum(product.total for product in self.fleet)


@dataclass(frozen=True)
class DataPoint:
    """One data point of a product as the console shows it and builds command forms from.

    ``kind``: ``bool``, ``enum``, ``number``, ``text`` (binary as hex, strings) or ``other``
    (structs and the like: shown, not writable from a form)."""

    name: str
    display_name: str
    type: str
    kind: str
    writable: bool
    minimum: int | float | None = None
    maximum: int | float | None = None
    step: int | float | None = None
    unit: str = ""
    labels: tuple[str, ...] = ()
    length: int | None = None
    """Bytes of a binary data point (its hex text is twice as long)."""

    @property
    def numeric(self) -> bool:
        return self.kind == "number"


@dataclass(frozen=True)
class DeviceSummary:
    """A row of the device list (never its passcode or psk)."""

    did: str
    product_key: str
    product_name: str
    mac: str
    name: str
    is_online: bool
    is_disabled: bool
    last_online_at: datetime | None


@dataclass(frozen=True)
class DeviceSearch:
    total: int
    devices: list[DeviceSummary]


@dataclass(frozen=True)
class LiveState:
    did: str
    online: bool
    disabled: bool
    updated_at: datetime | None
    values: dict[str, Any]


@dataclass(frozen=True)
class ChartSeries:
    """A numeric data point's values over the chosen range, oldest first."""

    name: str
    points: list[tuple[datetime, float]]


@dataclass(frozen=True)
class FrameRow:
    at: datetime
    kind: str
    payload_hex: str
    detail: str


class CommandInvalid(AttrInvalid):
    """A command form value was refused; ``field`` names the data point (None: the form)."""

    def __init__(self, detail: str, field: str | None) -> None:
        super().__init__(detail)
        self.field = field


class ConsoleService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: Settings,
        products: ProductService,
        devices: DeviceService,
        telemetry: TelemetryService,
        control: ControlService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.products = products
        self.devices = devices
        self.telemetry = telemetry
        self.control = control

    # -- sessions ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False when no operator token is configured: the console is closed."""
        return bool(self.settings.admin_token)

    async def sign_in(self, token: str, address: str | None) -> ConsoleSession:
        """A new session for the holder of the operator token. Raises `OperatorAuthFailed`
        (``disabled`` when no token is configured)."""
        expected = self.settings.admin_token
        if not expected:
            raise OperatorAuthFailed(
                "the console is disabled; set IOTCLOUD_ADMIN_TOKEN on the server to enable it",
                disabled=True,
            )
        if not token.strip() or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise OperatorAuthFailed("token: wrong operator token")
        raw = secrets.token_urlsafe(32)
        now = self.clock.now()
        expires = now + SESSION_LIFETIME
        async with self.db.session() as session:
            repo = ConsoleSessionRepository(session)
            await repo.purge(now, now - SESSION_IDLE)
            await repo.add(
                ConsoleSessionRow(
                    digest=digest(raw),
                    created_at=now,
                    expires_at=expires,
                    last_seen_at=now,
                    address=(address or "")[:64] or None,
                )
            )
        log.info("console sign-in from %s", address)
        return ConsoleSession(raw, now, expires)

    async def session(self, token: str | None) -> ConsoleSession | None:
        """The live session of cookie value ``token``; None when there is none or it expired
        (idle or absolute). Always None while the console is disabled."""
        if not token or not self.enabled or len(token) > 128:
            return None
        now = self.clock.now()
        async with self.db.session() as session:
            repo = ConsoleSessionRepository(session)
            row = await repo.by_digest(digest(token))
            if row is None:
                return None
            if row.expires_at <= now or row.last_seen_at + SESSION_IDLE <= now:
                await repo.delete(row.digest)
                return None
            if now - row.last_seen_at >= _TOUCH_EVERY:
                await repo.touch(row.id, now)
            return ConsoleSession(token, row.created_at, row.expires_at)

    async def sign_out(self, token: str) -> None:
        async with self.db.session() as session:
            await ConsoleSessionRepository(session).delete(digest(token))

    # -- overview ------------------------------------------------------------------------------

    async def overview(self) -> Overview:
        now = self.clock.now()
        async with self.db.session() as session:
            queries = ConsoleQueries(session)
            fleet = await queries.fleet()
            frames = await queries.frames_since(now - timedelta(minutes=1), ("dev2app", "app2dev"))
            due = await queries.due_schedules(now, now + timedelta(hours=1), 50)
            problems = await queries.problem_runs(10)
        return Overview(fleet, frames["dev2app"], frames["app2dev"], due, problems)

    # -- products ------------------------------------------------------------------------------

    async def data_points(self, product_key: str) -> list[DataPoint]:
        """The product's data points (attrs, or a data template's properties); 9002 when
        unknown."""
        product = await self.products.get(product_key)
        if product.is_data_template:
            return _template_points(await self.products.template(product_key))
        definition = await self.products.definition(product_key)
        points = []
        for attr in definition.attrs:
            writable = attr.type is AttrType.STATUS_WRITABLE
            common: dict[str, Any] = {
                "name": attr.name,
                "display_name": attr.display_name,
                "type": attr.data_type.value,
                "writable": writable,
            }
            if attr.data_type in NUMERIC_WIDTHS and attr.uint_spec is not None:
                spec = attr.uint_spec
                points.append(
                    DataPoint(
                        **common,
                        kind="number",
                        minimum=spec.display_min,
                        maximum=spec.display_max,
                        step=spec.ratio,
                    )
                )
            elif attr.data_type is DataType.BOOL:
                points.append(DataPoint(**common, kind="bool"))
            elif attr.data_type is DataType.ENUM:
                points.append(DataPoint(**common, kind="enum", labels=attr.enum_labels))
            else:
                points.append(DataPoint(**common, kind="text", length=attr.length))
        return points

    # -- devices -------------------------------------------------------------------------------

    async def import_devices(
        self, product_key: str, lines: Sequence[str], first_line: int = 1
    ) -> ImportReport:
        """Create the devices of a console CSV chunk: ``lines`` of the file, the first being line
        ``first_line``; each holds a MAC (a device name for a data-template product) and
        optionally a passcode. A header line (``mac``/``name``) opening the file is skipped.
        Raises ``ProductKeyInvalid`` (9002) for an unknown product; bad lines are reported."""
        product = await self.products.get(product_key)
        rows, failures = device_rows(product_key, product.is_data_template, lines, first_line)
        report = await self.devices.import_csv(rows)
        report.failed = sorted([*failures, *report.failed], key=lambda failure: failure.line)
        return report

    async def search_devices(
        self, text: str, product_key: str | None, *, limit: int = 50, offset: int = 0
    ) -> DeviceSearch:
        """Devices whose did, MAC or name contains ``text`` (colons and dashes of a MAC
        ignored), of ``product_key`` when given, newest first."""
        needle = text.strip()
        if re.fullmatch(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}", needle):
            needle = re.sub("[:-]", "", needle)
        async with self.db.session() as session:
            total, rows = await ConsoleQueries(session).search_devices(
                needle, product_key or None, limit, offset
            )
        return DeviceSearch(total, [_summary(device, product) for device, product in rows])

    async def live(self, did: str) -> LiveState:
        """The device's presence and latest values (Gizwits form); 9014 when unknown."""
        device = await self.devices.get(did)
        latest = await self.telemetry.latest(did)
        values = await self.control.in_gizwits_form(did, dict(latest.attrs))
        return LiveState(did, device.is_online, device.is_disabled, latest.updated_at, values)

    async def chart(self, did: str, points: Sequence[DataPoint], span: str) -> list[ChartSeries]:
        """A series per numeric data point over the last ``span`` (a key of `CHART_RANGES`;
        an unknown one is read as ``24h``)."""
        numeric = [point.name for point in points if point.numeric]
        window = CHART_RANGES.get(span, CHART_RANGES["24h"])
        now = self.clock.now()
        async with self.db.session() as session:
            queries = ConsoleQueries(session)
            device_id = await queries.device_id(did)
            if device_id is None:
                raise DeviceNotFound(f"no device with did {did!r}")
            reports = await queries.history(device_id, now - window, now, CHART_MAX_REPORTS)
        series = []
        for name in numeric:
            values = [
                (at, float(value))
                for at, attrs in reports
                if isinstance(value := attrs.get(name), int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ]
            series.append(ChartSeries(name, values))
        return series

    async def frames(self, did: str, limit: int = FRAME_LOG_ROWS) -> list[FrameRow]:
        """The device's newest frame log entries, newest first."""
        async with self.db.session() as session:
            queries = ConsoleQueries(session)
            device_id = await queries.device_id(did)
            if device_id is None:
                raise DeviceNotFound(f"no device with did {did!r}")
            rows = await queries.frames(device_id, limit)
        return [
            FrameRow(row.at, row.kind, (row.payload or b"").hex(), row.detail or "") for row in rows
        ]

    async def send_command(
        self, did: str, points: Sequence[DataPoint], form: Mapping[str, str]
    ) -> SendResult:
        """Write the values of a command form (text as a browser posts it) to ``did``: every
        writable data point with a value (an absent checkbox is false, an empty field is left
        out). Validated as an app's control (`CommandInvalid` naming the data point, with the
        API's message); raises `DeviceDisabled`, `DeviceOffline`, `DeviceNotFound`."""
        values: dict[str, Any] = {}
        for point in points:
            if not point.writable or point.kind == "other":
                continue
            values.update(form_value(point, form.get(point.name)))
        if not values:
            raise CommandInvalid("attrs: at least one data point is needed", None)
        device = await self.devices.get(did)
        try:
            template = await self.control.template_of(did)
            if isinstance(template, DataTemplate):
                payload = encode_template_control(template, values, gizwits_form=True)
            else:
                payload = await self.control.encode_attrs(did, values)
        except AttrInvalid as exc:
            message = exc.detail or str(exc)
            found = _FIELD.match(message)
            field = (found.group("quoted") or found.group("plain")) if found else None
            raise CommandInvalid(
                message, field if field in {p.name for p in points} else None
            ) from exc
        if device.is_disabled:
            raise DeviceDisabled(f"device {did} is disabled")
        try:
            result = await self.control.send(did, payload)
        except ConnectionError as exc:
            raise DeviceOffline(f"device {did} cannot be reached now: {exc}") from exc
        if result is SendResult.DEVICE_OFFLINE:
            raise DeviceOffline(f"device {did} is offline")
        log.info("console command sent to device %s", did)
        return result


CSV_HEADERS: Final = frozenset({"mac", "name", "device_name"})
MAX_CSV_LINE: Final = 256


def device_rows(
    product_key: str, named: bool, lines: Sequence[str], first_line: int = 1
) -> tuple[list[DeviceImportRow], list[ImportFailure]]:
    """Rows of a console device CSV (``mac[,passcode]``, or ``name[,passcode]`` for a
    data-template product), with the failures of lines that are not such rows."""
    rows: list[DeviceImportRow] = []
    failures: list[ImportFailure] = []
    seen_data = first_line > 1
    for offset, text in enumerate(lines):
        number = first_line + offset
        if not text.strip():
            continue
        if len(text) > MAX_CSV_LINE:
            failures.append(ImportFailure(number, f"longer than {MAX_CSV_LINE} characters"))
            continue
        cells = [cell.strip() for cell in next(csv.reader([text]), [])]
        if not seen_data:
            seen_data = True
            if cells and cells[0].lower() in CSV_HEADERS:
                continue
        if not cells or not cells[0] or len(cells) > 2:
            what = "name" if named else "mac"
            failures.append(ImportFailure(number, f"expected {what}[,passcode]"))
            continue
        passcode = cells[1] if len(cells) == 2 and cells[1] else None
        if named:
            rows.append(DeviceImportRow(number, product_key, name=cells[0], passcode=passcode))
        else:
            rows.append(DeviceImportRow(number, product_key, mac=cells[0], passcode=passcode))
    return rows, failures


def form_value(point: DataPoint, raw: str | None) -> dict[str, Any]:
    """The value of one form field as the control API takes it; `CommandInvalid` naming it."""
    if point.kind == "bool":
        return {point.name: (raw or "").strip().lower() in {"true", "on", "1", "yes"}}
    text = (raw or "").strip()
    if not text:
        return {}
    if point.kind == "enum":
        if text not in point.labels:
            raise CommandInvalid(
                f"{point.name}: choose one of {', '.join(point.labels)}", point.name
            )
        return {point.name: text}
    if point.kind == "number":
        try:
            number = Decimal(text)
        except ArithmeticError:
            raise CommandInvalid(f"{point.name}: {text!r} is not a number", point.name) from None
        if not number.is_finite():
            raise CommandInvalid(f"{point.name}: {text!r} is not a number", point.name)
        value: int | float = int(number) if number == number.to_integral_value() else float(number)
        return {point.name: value}
    return {point.name: text}


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _template_points(template: DataTemplate) -> list[DataPoint]:
    points = []
    for prop in template.properties.values():
        common: dict[str, Any] = {
            "name": prop.id,
            "display_name": prop.name,
            "type": prop.kind,
            "writable": prop.mode == "rw",
            "unit": prop.unit,
        }
        if prop.kind in ("int", "float"):
            points.append(
                DataPoint(
                    **common,
                    kind="number",
                    minimum=_number(prop.min),
                    maximum=_number(prop.max),
                    step=_number(prop.step),
                )
            )
        elif prop.kind == "bool":
            points.append(DataPoint(**common, kind="bool"))
        elif prop.kind == "enum":
            labels = tuple(prop.mapping[key] for key in sorted(prop.mapping))
            points.append(DataPoint(**common, kind="enum", labels=labels))
        elif prop.kind == "string":
            points.append(DataPoint(**common, kind="text", maximum=_number(prop.max)))
        else:
            points.append(DataPoint(**common, kind="other"))
    return points


def _summary(device: DeviceRow, product: ProductRow) -> DeviceSummary:
    return DeviceSummary(
        did=device.did,
        product_key=product.product_key,
        product_name=product.name,
        mac=device.mac or "",
        name=device.name,
        is_online=device.is_online,
        is_disabled=device.is_disabled,
        last_online_at=device.last_online_at,
    )
