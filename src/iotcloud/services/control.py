"""Remote control: app commands validated against the product's data points and sent to the
device through the gateway (spec §1.4 control, §3.4 command words), for devices of either
protocol.

A Gizwits device is written with a P0 control built by its product's codec. A data-template
(Tencent) device is written with the JSON object of the properties to set, checked against its
template (`DataTemplate.check_control`): the gateway sends it as a ``control`` carrying exactly
those properties, nothing filled in from the last report. `encode_attrs` takes each device's
own dialect (Tencent values for a data-template device); `write_attrs`, the Gizwits app path
(``/app/control`` and WebSocket ``c2s_write``), converts Gizwits-form values (enum labels,
true/false) for a data-template device first. Raw P0 (``raw``, ``c2s_raw``, ``c2s_ack``) has no
meaning for a data-template device and is refused (9015); a P0 read of one is answered from its
latest reported values instead (`read`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from iotcloud.codecs import (
    CodecError,
    DatapointError,
    DataTemplate,
    DataType,
    Frame,
    P0Codec,
    decode_frame,
    gizwits_to_template,
    template_to_datapoints,
    template_to_gizwits,
)
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL, CMD_CONTROL_SN
from iotcloud.codecs.template import DATA_TEMPLATE_PROTOCOL
from iotcloud.errors import AttrInvalid, DeviceDisabled, DeviceNotFound, DeviceOffline, FormInvalid
from iotcloud.gateway.service import CLOUD_CLIENT_ID, DeviceGateway, SendResult
from iotcloud.services.bindings import AppUser, BindingChange, BindingService
from iotcloud.services.products import ProductService
from iotcloud.services.telemetry import TelemetryService
from iotcloud.storage.devices import DeviceRepository

log = logging.getLogger(__name__)

MAX_RAW_BYTES = 65_535


class UsableCache:
    """Which (user, device) pairs passed the control check (bound, device enabled) in the last
    ``ttl`` seconds, so a stream of commands costs one database read per pair and ``ttl``.
    Each entry lives a random 75-100% of ``ttl``, so entries made together (a burst of commands
    to many devices) are not all read again at once.

    Only passes are kept: a refusal is always read afresh. Every change this process makes to a
    binding or a device drops the affected entries at once (`drop_binding`, `drop_devices`);
    other processes of a scale-out deployment see such a change within ``ttl``, as with the
    token cache. An entry is only stored if nothing was dropped while its database read was in
    flight (``epoch``), so a stale read never outlives an unbind. ``ttl`` 0 disables caching.
    """

    def __init__(
        self, ttl: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.epoch = 0
        self._entries: OrderedDict[tuple[int, str], float] = OrderedDict()

    def passed(self, user_id: int, did: str) -> bool:
        key = (user_id, did)
        deadline = self._entries.get(key)
        if deadline is None:
            return False
        if deadline <= self.clock():
            del self._entries[key]
            return False
        return True

    def put(self, user_id: int, did: str, epoch: int) -> None:
        if self.ttl <= 0 or epoch != self.epoch:
            return
        key = (user_id, did)
        self._entries[key] = self.clock() + self.ttl * (1.0 - 0.25 * random.random())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop_binding(self, user_id: int, did: str) -> None:
        self.epoch += 1
        self._entries.pop((user_id, did), None)

    def drop_devices(self, dids: Sequence[str] | None) -> None:
        """Forget the named devices (every device when None)."""
        self.epoch += 1
        if dids is None:
            self._entries.clear()
            return
        wanted = set(dids)
        for key in [key for key in self._entries if key[1] in wanted]:
            del self._entries[key]


class ControlService:
    """Commands from apps (bound users only) and from the cloud itself (the scheduler).

    ``usable_cache_seconds`` > 0 keeps passed binding checks for that long (see `UsableCache`);
    whoever enables it must route binding changes to `binding_changed` and device changes
    (disable, delete) to `devices_changed`. ``products`` parses and caches data templates (one
    is made on the bindings' database when not given).
    """

    def __init__(
        self,
        bindings: BindingService,
        telemetry: TelemetryService,
        gateway: DeviceGateway,
        products: ProductService,
        *,
        usable_cache_seconds: float = 0.0,
    ) -> None:
        self.bindings = bindings
        self.telemetry = telemetry
        self.gateway = gateway
        self.products = products
        self.usable = UsableCache(usable_cache_seconds)
        self._checking: dict[tuple[int, str], asyncio.Event] = {}

    def binding_changed(self, change: BindingChange) -> None:
        """A binding was made or removed (`BindingService`'s ``on_change``)."""
        self.usable.drop_binding(change.user_id, change.did)

    def devices_changed(self, dids: Sequence[str] | None) -> None:
        """Devices were disabled, enabled or deleted (every device when None)."""
        self.usable.drop_devices(dids)

    async def write_attrs(
        self,
        user: AppUser,
        did: str,
        attrs: Mapping[str, Any],
        *,
        client_id: str = CLOUD_CLIENT_ID,
        sn: int | None = None,
        byte_arrays: bool = False,
    ) -> None:
        """Validate ``attrs`` (display values) and send them as a 0x0090 control, or as a
        0x0093 carrying ``sn`` when given (the device answers with a 0x0094 to ``client_id``).

        ``byte_arrays`` also takes binary values as lists of byte values (the WebSocket form).
        Raises 9014 unknown did, 9017 not bound, 9023 disabled, 9025 naming the attr and why,
        9042 offline (without waiting).

        For a data-template device ``attrs`` are Gizwits-form values (enum labels, true/false;
        Tencent integers are taken too), converted and checked against its template, and sent
        as a ``control`` (``sn`` and ``client_id`` do not apply: its ``control_reply`` is not
        awaited).
        """
        await self.require_usable(user, did)
        dialect = await self._dialect(did)
        if isinstance(dialect, DataTemplate):
            payload = encode_template_control(dialect, attrs, gizwits_form=True)
            await self._sent(did, payload, client_id, None)
            return
        payload = await self._encode_p0(did, dialect, attrs, byte_arrays=byte_arrays)
        await self._sent(did, payload, client_id, sn)

    async def write_values(self, user: AppUser, did: str, values: Mapping[str, Any]) -> None:
        """Write Tencent-form ``values`` (bool 0/1, enum integers: what a Tencent app sends) to
        a device of either protocol, without waiting for its reply: a data-template device gets
        a ``control`` with exactly these properties, checked against its template; a Gizwits
        device's values are converted to display values (`template_to_datapoints`) and sent as
        a P0 control. Errors as :meth:`write_attrs`: the values are checked before anything is
        sent, so a refused write sends nothing."""
        await self.require_usable(user, did)
        dialect = await self._dialect(did)
        if isinstance(dialect, DataTemplate):
            payload = encode_template_control(dialect, values, gizwits_form=False)
        else:
            try:
                display = template_to_datapoints(dialect.product, values)
            except CodecError as exc:
                raise AttrInvalid(str(exc)) from exc
            payload = await self._encode_p0(did, dialect, display)
        await self._sent(did, payload, CLOUD_CLIENT_ID, None)

    async def call_action(
        self,
        user: AppUser,
        did: str,
        action_id: str,
        params: dict[str, Any],
        timeout: float,  # noqa: ASYNC109 (the wait is the caller's parameter)
    ) -> tuple[int, str, dict[str, Any]]:
        """Call an action of a data-template device ``user`` may command and wait up to
        ``timeout`` seconds for its reply: ``(code, status, response)`` as the device answered.
        Raises 9014/9017/9023 as :meth:`write_attrs`, `TemplateValueError` for an unknown
        action or bad input (nothing sent), `DeviceOffline`, ``TimeoutError`` (no reply) and
        ``ConnectionError`` (see `DeviceGateway.call_action`)."""
        await self.require_usable(user, did)
        return await self.gateway.call_action(did, action_id, params, timeout)

    async def write_raw(
        self, user: AppUser, did: str, raw: Sequence[int], *, client_id: str = CLOUD_CLIENT_ID
    ) -> None:
        """Send ``raw`` bytes as the P0 of a 0x0090 frame; 9015 naming ``raw`` for a
        data-template device, which has no P0."""
        await self.require_usable(user, did)
        data = raw_bytes(raw)
        await self._refuse_template(did, "raw")
        await self._sent(did, data, client_id, None)

    async def read(
        self,
        user: AppUser,
        did: str,
        names: Sequence[str] | None = None,
        *,
        client_id: str = CLOUD_CLIENT_ID,
        sn: int | None = None,
    ) -> dict[str, Any] | None:
        """Ask the device for its status (P0 read: var_len products flag ``names``, every attr
        when None), as a 0x0090 or, with ``sn``, a 0x0093; None is returned, the device answers
        through the gateway. Errors as :meth:`write_attrs`; an unknown name is 9025.

        A data-template device is not asked (``get_status`` is the device's to send): its
        latest reported values of ``names`` (all when None) are returned in Gizwits form, and
        nothing is sent, so an offline device answers too."""
        await self.require_usable(user, did)
        dialect = await self._dialect(did)
        if isinstance(dialect, DataTemplate):
            return await self._latest_of_template(did, dialect, names)
        try:
            payload = dialect.encode_read(names)
        except CodecError as exc:
            raise AttrInvalid(str(exc)) from exc
        await self._sent(did, payload, client_id, sn)
        return None

    async def _latest_of_template(
        self, did: str, template: DataTemplate, names: Sequence[str] | None
    ) -> dict[str, Any]:
        for name in names or ():
            if name not in template.properties:
                raise AttrInvalid(f"{name}: unknown property of product {template.product_id}")
        latest = (await self.telemetry.latest(did)).attrs
        if names:
            latest = {name: latest[name] for name in names if name in latest}
        return template_to_gizwits(template, latest)

    async def write_frame(
        self, user: AppUser, did: str, frame: Frame, *, client_id: str = CLOUD_CLIENT_ID
    ) -> None:
        """Send a whole frame an app built (see :func:`app_frame`) or a 0x0094 acknowledging a
        device's 0x0093, as it is. Errors as :meth:`write_attrs` (but no 9025); 9015 for a
        data-template device, which takes no frames."""
        await self.require_usable(user, did)
        await self._refuse_template(did, "raw" if frame.payload else "did")
        try:
            result = await self.gateway.publish_frame(did, frame, client_id)
        except ConnectionError as exc:
            raise DeviceOffline(f"device {did} cannot be reached now: {exc}") from exc
        if result is SendResult.DEVICE_OFFLINE:
            raise DeviceOffline(f"device {did} is offline")

    async def encode_attrs(
        self, did: str, attrs: Mapping[str, Any], *, byte_arrays: bool = False
    ) -> bytes:
        """The payload of a control writing ``attrs`` in the device's own dialect: the P0 of a
        Gizwits device (display values), the UTF-8 JSON object of the checked properties of a
        data-template device (Tencent values). Raises `AttrInvalid` (9025) naming the attr or
        property, `DeviceNotFound` (9014) for an unknown did."""
        dialect = await self._dialect(did)
        if isinstance(dialect, DataTemplate):
            return encode_template_control(dialect, attrs, gizwits_form=False)
        return await self._encode_p0(did, dialect, attrs, byte_arrays=byte_arrays)

    async def _encode_p0(
        self, did: str, codec: P0Codec, attrs: Mapping[str, Any], *, byte_arrays: bool = False
    ) -> bytes:
        """The P0 control of a Gizwits device writing ``attrs`` (display values) over its
        latest known state; `AttrInvalid` naming the attr."""
        if not attrs:
            raise AttrInvalid("attrs: at least one data point is needed")
        latest = await self.telemetry.latest(did)
        try:
            values = transport_values(codec, attrs, strict=True, byte_arrays=byte_arrays)
            known = transport_values(codec, latest.attrs, strict=False)
            return codec.encode_control(values, known)
        except DatapointError as exc:
            raise AttrInvalid(str(exc)) from exc
        except CodecError as exc:
            raise AttrInvalid(str(exc)) from exc

    async def send(
        self, did: str, payload: bytes, *, require_ack: bool = False, ack_timeout: float = 5.0
    ) -> SendResult:
        """A cloud command (no user): hand ``payload`` to the device; with ``require_ack`` as a
        0x0093 whose 0x0094 is awaited up to ``ack_timeout`` seconds."""
        return await self.gateway.send(
            did, payload, require_ack=require_ack, ack_timeout=ack_timeout
        )

    async def _dialect(self, did: str) -> P0Codec | DataTemplate:
        """What ``did`` speaks: the P0 codec of a Gizwits device, the data template of a
        data-template one. Raises `DeviceNotFound` (9014) for an unknown did."""
        codec = await self.gateway.codec_of(did)
        if codec is not None:
            return codec
        template = await self.template_of(did)
        if template is None:
            raise DeviceNotFound(f"no device with did {did!r}")
        return template

    async def template_of(self, did: str) -> DataTemplate | None:
        """The data template of the data-template device ``did``; None for a Gizwits device or
        an unknown did (that of an online device from its gateway session; otherwise one
        indexed read; templates are parsed once per product version)."""
        template = self.gateway.session_template(did)
        if template is not None:
            return template
        async with self.bindings.db.session() as session:
            found = await DeviceRepository(session).with_product(did)
        if found is None or found[1].protocol_type != DATA_TEMPLATE_PROTOCOL:
            return None
        return self.products.template_of(found[1])

    async def in_gizwits_form(self, did: str, values: dict[str, Any]) -> dict[str, Any]:
        """Stored values of ``did`` as a Gizwits app reads them: a data-template device's
        Tencent values converted (`template_to_gizwits`), a Gizwits device's kept."""
        if not values or await self.gateway.codec_of(did) is not None:
            return values
        template = await self.template_of(did)
        return values if template is None else template_to_gizwits(template, values)

    async def _refuse_template(self, did: str, field: str) -> None:
        """9015 naming ``field`` when ``did`` is a data-template device (it has no P0)."""
        if await self.gateway.codec_of(did) is None and await self.template_of(did) is not None:
            raise FormInvalid(
                f"{field}: device {did} speaks the Tencent data template: it takes no raw P0 "
                "(write its properties with attrs)"
            )

    async def require_usable(self, user: AppUser, did: str) -> None:
        """Raise 9014, 9017 or 9023 unless ``user`` may command ``did`` now. A pass is cached
        (``usable``) until a binding or device changes or its time-to-live ends."""
        key = (user.user_id, did)
        if self.usable.ttl <= 0:
            await self._check(user, did)
            return
        if self.usable.passed(*key):
            return
        running = self._checking.get(key)
        if running is None:
            self._checking[key] = done = asyncio.Event()
            try:
                await self._check(user, did)
            finally:
                del self._checking[key]
                done.set()
            return
        # another request is reading this pair: a pass it finds serves this one too, so a burst
        # of commands costs one read; a refusal is read again, to raise this request's own error
        await running.wait()
        if not self.usable.passed(*key):
            await self._check(user, did)

    async def _check(self, user: AppUser, did: str) -> None:
        epoch = self.usable.epoch
        device = await self.bindings.require_bound(user, did)
        if device.is_disabled:
            raise DeviceDisabled(f"device {did} is disabled")
        self.usable.put(user.user_id, did, epoch)

    async def _sent(self, did: str, payload: bytes, client_id: str, sn: int | None) -> None:
        try:
            result = await self.gateway.send(did, payload, client_id=client_id, sn=sn)
        except ConnectionError as exc:
            raise DeviceOffline(f"device {did} cannot be reached now: {exc}") from exc
        if result is SendResult.DEVICE_OFFLINE:
            raise DeviceOffline(f"device {did} is offline")


def transport_values(
    codec: P0Codec, attrs: Mapping[str, Any], *, strict: bool, byte_arrays: bool = False
) -> dict[str, Any]:
    """Display values as the codec takes them: binary attrs from hex strings to bytes (and,
    with ``byte_arrays``, from lists of byte values, as the WebSocket API sends them).

    ``strict`` raises `DatapointError` for unknown attrs and bad hex; otherwise such values
    (stale state) are left out.
    """
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        try:
            attr = codec.product.attr(name)
        except DatapointError:
            if strict:
                raise
            continue
        if attr.data_type is DataType.BINARY:
            try:
                if byte_arrays and isinstance(value, list):
                    data = _byte_list(name, value)
                elif not isinstance(value, str):
                    expected = "a byte array or hex string" if byte_arrays else "a hex string"
                    raise DatapointError(name, f"expected {expected}, got {value!r}")
                else:
                    data = bytes.fromhex(value)
            except ValueError:
                if strict:
                    raise DatapointError(name, f"{value!r} is not a hex string") from None
                continue
            except DatapointError:
                if strict:
                    raise
                continue
            if len(data) != attr.length:
                if strict:
                    raise DatapointError(
                        name, f"expected exactly {attr.length} bytes, got {len(data)}"
                    )
                continue
            out[name] = data
        elif attr.data_type is not DataType.BOOL and isinstance(value, bool):
            if strict:
                raise DatapointError(name, f"expected a {attr.data_type.value}, got {value!r}")
        else:
            out[name] = value
    return out


def encode_template_control(
    template: DataTemplate, attrs: Mapping[str, Any], *, gizwits_form: bool
) -> bytes:
    """The UTF-8 JSON object a data-template device's ``control`` carries: exactly ``attrs``,
    checked against ``template`` (unknown, read-only or bad values refused) and in canonical
    Tencent form. ``gizwits_form``: ``attrs`` come from a Gizwits app (enum labels, true/false)
    and are converted first. Raises `AttrInvalid` (9025) naming the property and why."""
    if not attrs:
        raise AttrInvalid("attrs: at least one data point is needed")
    try:
        values = gizwits_to_template(template, attrs) if gizwits_form else dict(attrs)
        checked = template.check_control(values)
    except CodecError as exc:
        raise AttrInvalid(str(exc)) from exc
    return msgspec.json.encode(checked)


def raw_bytes(raw: Sequence[int]) -> bytes:
    """A JSON array of byte values as bytes; 9015 naming ``raw`` otherwise."""
    if not raw:
        raise FormInvalid("raw: at least one byte is needed")
    if len(raw) > MAX_RAW_BYTES:
        raise FormInvalid(f"raw: at most {MAX_RAW_BYTES} bytes")
    for index, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise FormInvalid(f"raw[{index}]: {value!r} is not a byte (0-255)")
    return bytes(raw)


def _byte_list(name: str, values: list[Any]) -> bytes:
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise DatapointError(name, f"[{index}]: {value!r} is not a byte (0-255)")
    return bytes(values)


APP_FRAME_COMMANDS = frozenset({CMD_CONTROL, CMD_CONTROL_SN, CMD_ACK_SN})


def app_frame(raw: Sequence[int]) -> Frame:
    """A whole frame an app sends (WebSocket ``c2s_raw``): ``00 00 00 03``, LEN, flag and a
    0x0090, 0x0093 or 0x0094 command. Raises 9015 naming ``raw`` otherwise."""
    data = raw_bytes(raw)
    try:
        frame = decode_frame(data)
    except CodecError as exc:
        raise FormInvalid(f"raw: not a frame ({exc})") from exc
    if frame.cmd not in APP_FRAME_COMMANDS:
        raise FormInvalid(
            f"raw: command 0x{frame.cmd:04x} cannot be sent to a device (0x0090, 0x0093, 0x0094)"
        )
    if not frame.payload and frame.cmd != CMD_ACK_SN:
        raise FormInvalid("raw: the frame carries no P0")
    return frame
