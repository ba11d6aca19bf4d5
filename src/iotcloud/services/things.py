"""Devices as the Tencent app API names and reads them: by ``ProductId`` + ``DeviceName``, with
each data point's last report time, with the events they posted, and bound by a device's own
signature.

A device of either protocol has a name in its product: a Gizwits device's is its MAC (12
lower-case hex digits), a data-template device's its Tencent ``DeviceName``. Values are served in
Tencent form whatever the device speaks: a Gizwits device's stored display values are converted
with `datapoints_to_template` (bool 0/1, enum index). Binding goes through
`BindingService.bind`, so owner/guest roles, binding-change notifications and the caches that
hear of them work as for every other binding.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from iotcloud.codecs import (
    DATA_TEMPLATE_PROTOCOL,
    DataTemplate,
    ProductDefinition,
    datapoints_to_template,
    parse_product_definition,
)
from iotcloud.domain.clock import Clock
from iotcloud.domain.thing_auth import SIGN_METHODS, sign
from iotcloud.errors import (
    DeviceNotFound,
    DeviceSignatureInvalid,
    DeviceTimestampInvalid,
    FormInvalid,
    ProductProtocolMismatch,
)
from iotcloud.services.bindings import AppUser, BindingService, BoundDevice, clipped
from iotcloud.services.products import ProductService
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository, ProductRepository
from iotcloud.storage.models import ProductRow
from iotcloud.storage.telemetry import TelemetryRepository

__all__ = [
    "SIGNATURE_WINDOW_SECONDS",
    "DeviceData",
    "EventPage",
    "PropertyValue",
    "ThingEvent",
    "ThingService",
    "bind_message",
]

#: ``DeviceTimestamp`` of a device-signed binding may differ from the clock by this much.
SIGNATURE_WINDOW_SECONDS: Final = 300


@dataclass(frozen=True)
class PropertyValue:
    """A data point's latest value (Tencent form) and when it was last reported (Unix ms)."""

    value: Any
    last_update: int


@dataclass(frozen=True)
class DeviceData:
    """A device's latest values by data point (empty before its first report)."""

    values: dict[str, PropertyValue]


@dataclass(frozen=True)
class ThingEvent:
    """An event a data-template device posted."""

    at: datetime
    event_id: str
    event_type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class EventPage:
    total: int
    events: list[ThingEvent]


def bind_message(product_id: str, device_name: str, timestamp: int, conn_id: str) -> str:
    """What a device signs to let a user bind it (``AppSigBindDeviceInFamily``)."""
    return (
        f"DeviceName={device_name}&DeviceTimestamp={timestamp}"
        f"&ProductId={product_id}&ConnId={conn_id}"
    )


class ThingService:
    """Latest values with report times, event history and device-signed binding of devices
    Tencent names (see module docstring; `BindingService.find_bound_named` finds them)."""

    def __init__(
        self, db: Database, clock: Clock, bindings: BindingService, products: ProductService
    ) -> None:
        self.db = db
        self.clock = clock
        self.bindings = bindings
        self.products = products
        self._definitions: dict[str, tuple[datetime, ProductDefinition]] = {}

    async def template(self, device: BoundDevice) -> DataTemplate | None:
        """The data template of a data-template device, None for a Gizwits one."""
        async with self.db.session() as session:
            product = await ProductRepository(session).by_key(device.product_key)
        if product is None or product.protocol_type != DATA_TEMPLATE_PROTOCOL:
            return None
        return self.products.template_of(product)

    async def device_data(self, device: BoundDevice) -> DeviceData:
        """The latest value of each data point, in Tencent form, with its last report time
        (``attr_times``; the state's ``updated_at`` for points reported before it was kept)."""
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(device.did)
            if found is None:
                raise DeviceNotFound(f"DeviceName: no device {device.name}")
            row, product = found
            latest = await TelemetryRepository(session).latest(row.id)
        if latest is None:
            return DeviceData({})
        values = dict(latest.attrs)
        if product.protocol_type != DATA_TEMPLATE_PROTOCOL:
            values = datapoints_to_template(self._definition(product), values)
        times = latest.attr_times or {}
        fallback = int(latest.updated_at.timestamp() * 1000)
        return DeviceData(
            {
                name: PropertyValue(value, int(times.get(name, fallback)))
                for name, value in values.items()
            }
        )

    async def event_history(
        self,
        device: BoundDevice,
        *,
        since: datetime,
        until: datetime,
        event_id: str | None,
        event_type: str | None,
        limit: int,
        offset: int,
    ) -> EventPage:
        """The events the device posted in ``[since, until]`` (of one ``event_id`` and/or
        ``event_type`` when given), newest first, ``offset`` skipped, at most ``limit``; never
        from before what the user may see (``BoundDevice.visible_from``)."""
        since = clipped(since, device.visible_from)
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(device.did)
            if found is None:
                raise DeviceNotFound(f"DeviceName: no device {device.name}")
            total, rows = await TelemetryRepository(session).thing_events_page(
                found[0].id, since, until, event_id, event_type, limit=limit, offset=offset
            )
        return EventPage(
            total,
            [ThingEvent(r.at, r.event_id, r.event_type, dict(r.params)) for r in rows],
        )

    async def bind_signed(
        self,
        user: AppUser,
        product_id: str,
        device_name: str,
        *,
        timestamp: int,
        conn_id: str,
        signature: str,
        method: str,
    ) -> BoundDevice:
        """Bind ``user`` to a data-template device that signed
        `bind_message` with its psk: ``signature`` = hex HMAC-SHA1/SHA256 (``method``
        ``hmacsha1``/``hmacsha256``), compared in constant time, either case.

        Raises, in this order: ``FormInvalid`` naming ``SignMethod``; ``TimestampInvalid``
        naming ``DeviceTimestamp`` when it is more than `SIGNATURE_WINDOW_SECONDS` from the
        clock; ``ProductKeyInvalid``/``DeviceNotFound`` for an unknown device; ``FormInvalid``
        naming ``ProductId`` for a Gizwits device (it has no psk); ``DeviceSignatureInvalid``
        naming ``Signature``; then what `BindingService.bind` raises (a disabled device). Binding
        again changes nothing.
        """
        if method not in SIGN_METHODS:
            raise FormInvalid(f"SignMethod: must be one of {', '.join(SIGN_METHODS)}")
        now = self.clock.now().timestamp()
        if abs(now - timestamp) > SIGNATURE_WINDOW_SECONDS:
            raise DeviceTimestampInvalid(
                f"DeviceTimestamp: {timestamp} is more than {SIGNATURE_WINDOW_SECONDS} s from "
                "the server's clock"
            )
        device, product = await self.bindings.named_device(product_id, device_name)
        if product.protocol_type != DATA_TEMPLATE_PROTOCOL or not device.psk:
            raise ProductProtocolMismatch(
                f"ProductId: {product.product_key} is a Gizwits product: its devices have no "
                "psk to sign with (bind them with /app/bindings or /app/bind_mac)"
            )
        message = bind_message(product.product_key, device.name, timestamp, conn_id)
        try:
            expected = sign(device.psk, message, method)  # type: ignore[arg-type]
        except ValueError as exc:  # a stored psk that is not base64 cannot sign anything
            raise DeviceSignatureInvalid("Signature: the device's key cannot verify it") from exc
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise DeviceSignatureInvalid(
                f"Signature: not the signature of device {product.product_key}/{device.name}"
            )
        return await self.bindings.bind(user, device.did)

    def _definition(self, product: ProductRow) -> ProductDefinition:
        cached = self._definitions.get(product.product_key)
        if cached is not None and cached[0] == product.updated_at:
            return cached[1]
        definition = parse_product_definition(json.loads(product.definition))
        self._definitions[product.product_key] = (product.updated_at, definition)
        return definition
