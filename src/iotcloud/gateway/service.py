"""The device gateway: between the broker and the rest of iotcloud.

It authenticates devices against the registry, keeps their presence, decodes ``dev2app``
frames with the product's data points and hands the results to the batched ingest path. It
implements the broker adapter's `Authenticator` and `BrokerEvents`, so it runs unchanged behind
the embedded broker or an external one.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from iotcloud.codecs import (
    Action,
    CodecError,
    P0Codec,
    decode_frame,
    parse_product_definition,
)
from iotcloud.codecs.frame import (
    CMD_ACK_SN,
    CMD_CONTROL,
    CMD_CONTROL_SN,
    CMD_REPORT,
    Frame,
    encode_frame,
)
from iotcloud.domain.clock import Clock
from iotcloud.gateway.broker import (
    AclAction,
    AuthRefusal,
    BrokerAdapter,
    DeviceCredential,
    DevicePrincipal,
    DisconnectReason,
)
from iotcloud.services.credentials import same_secret
from iotcloud.services.ingest import Batcher
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.models import ProductRow
from iotcloud.storage.telemetry import (
    FrameEvent,
    PresenceChange,
    StateChange,
    TelemetryRepository,
)

log = logging.getLogger(__name__)

_STATUS_ACTIONS = frozenset(
    {Action.READ_REPLY, Action.REPORT, Action.VAR_READ_REPLY, Action.VAR_REPORT}
)
_WARN_LIMIT = 10_000
_PAGE = 500
CLOUD_CLIENT_ID = "cloud"


@dataclass(frozen=True)
class _Session:
    device_id: int
    product_key: str
    codec: P0Codec


@dataclass(frozen=True)
class _Ingest:
    frame: FrameEvent
    state: StateChange | None


class SendResult(enum.StrEnum):
    """What became of a command handed to `DeviceGateway.send`."""

    DELIVERED = "delivered"
    """Handed to the broker (without ack), or acknowledged by the device (with ack)."""
    DEVICE_OFFLINE = "device_offline"
    """The device has no session; nothing was sent."""
    TIMED_OUT = "timed_out"
    """Sent with an ack requested, but no 0x0094 with its SN came back in time."""


@dataclass(frozen=True)
class DeviceMessage:
    """A decoded device message, as listeners (the WebSocket API) receive it.

    ``cmd`` is 0x0091 (a broadcast report), 0x0094 (a reply to a 0x0093) or 0x0093 (the device
    asks for a 0x0094). ``action`` is the P0 action, None for a bare 0x0094 acknowledgement
    (no P0). ``attrs`` holds display values (JSON-ready) for status messages, else None; ``raw``
    is the whole frame; ``client_id`` is the app client a reply is addressed to
    (``dev2app/{did}/{id}``) and ``sn`` the sequence number of a 0x0093/0x0094.
    """

    did: str
    cmd: int
    action: int | None
    attrs: dict[str, Any] | None
    raw: bytes
    client_id: str | None = None
    sn: int | None = None


@dataclass(frozen=True)
class PresenceEvent:
    """A device went online or offline."""

    did: str
    online: bool


GatewayEvent = DeviceMessage | PresenceEvent
Listener = Callable[[GatewayEvent], None]


@dataclass
class GatewayStats:
    reports: int = 0
    transparent: int = 0
    malformed: int = 0
    denied: int = 0
    ignored: int = 0
    commands: int = 0
    acks: int = 0
    listener_errors: int = 0


def json_values(values: dict[str, Any]) -> dict[str, Any]:
    """Display values as JSON: binary becomes lower-case hex, everything else is kept."""
    return {k: v.hex() if isinstance(v, bytes | bytearray) else v for k, v in values.items()}


class DeviceGateway:
    """Authenticator and event sink for a broker adapter (see module docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        keep_history: bool = True,
        max_batch: int = 1000,
        queue_capacity: int = 50_000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.keep_history = keep_history
        self.stats = GatewayStats()
        self.reports: Batcher[_Ingest] = Batcher(
            self._write_reports, max_batch=max_batch, capacity=queue_capacity, name="reports"
        )
        self.presence: Batcher[tuple[PresenceChange, FrameEvent]] = Batcher(
            self._write_presence, max_batch=max_batch, capacity=queue_capacity, name="presence"
        )
        self._sessions: dict[str, _Session] = {}
        self._authenticated: dict[str, _Session] = {}
        self._codecs: dict[str, tuple[datetime, P0Codec]] = {}
        self._warned: set[str] = set()
        self._stack = AsyncExitStack()
        self._broker: BrokerAdapter | None = None
        self._listeners: list[Listener] = []
        self._acks: dict[tuple[str, int], tuple[str, asyncio.Future[None]]] = {}
        self._next_sn = secrets.randbelow(1 << 31)

    def attach(self, broker: BrokerAdapter) -> None:
        """The broker commands go out through (set once, by the composition root)."""
        self._broker = broker

    def add_listener(self, listener: Listener) -> None:
        """Hear every `DeviceMessage` and `PresenceEvent`. Listeners are called synchronously
        on the gateway's event path and must not block (queue the event and return)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with suppress(ValueError):
            self._listeners.remove(listener)

    def is_online(self, did: str) -> bool:
        return did in self._sessions

    def _tell(self, event: GatewayEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                self.stats.listener_errors += 1
                log.exception("gateway listener failed")

    # -- commands -----------------------------------------------------------------------------

    async def send(
        self,
        did: str,
        payload: bytes,
        *,
        require_ack: bool = False,
        client_id: str = CLOUD_CLIENT_ID,
        ack_timeout: float = 5.0,
        sn: int | None = None,
    ) -> SendResult:
        """Send P0 ``payload`` to the device: a 0x0090 frame, or with ``require_ack`` a 0x0093
        with a fresh SN, then wait up to ``ack_timeout`` seconds for the device's 0x0094.

        With an explicit ``sn`` (an app's own sequence number: a WebSocket ``req_sn``) the
        payload goes out as a 0x0093 carrying that SN and nothing is awaited: the device's 0x0094
        reaches the listeners, addressed to ``client_id``. ``sn`` excludes ``require_ack``.

        Published on ``app2dev/{did}/{client_id}`` and written to the frame log. Raises
        ``ConnectionError`` when the broker cannot take it.
        """
        if sn is not None:
            if require_ack:
                raise ValueError("an explicit sn is the app's own: it cannot be awaited here")
            return await self.publish_frame(did, Frame(CMD_CONTROL_SN, payload, sn=sn), client_id)
        if not require_ack:
            return await self.publish_frame(did, Frame(CMD_CONTROL, payload), client_id)
        if did not in self._sessions or self._broker is None:
            return SendResult.DEVICE_OFFLINE
        sn = self._next_sn = (self._next_sn + 1) & 0xFFFFFFFF
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[(did, sn)] = (client_id, waiter)
        try:
            result = await self.publish_frame(did, Frame(CMD_CONTROL_SN, payload, sn=sn), client_id)
            if result is not SendResult.DELIVERED:
                return result
            try:
                async with asyncio.timeout(ack_timeout):
                    await waiter
            except TimeoutError:
                return SendResult.TIMED_OUT
            return SendResult.DELIVERED
        finally:
            self._acks.pop((did, sn), None)

    async def publish_frame(
        self, did: str, frame: Frame, client_id: str = CLOUD_CLIENT_ID
    ) -> SendResult:
        """Publish ``frame`` (0x0090, 0x0093 or 0x0094, built by the caller) to the device on
        ``app2dev/{did}/{client_id}`` and log it; nothing is awaited beyond the broker.

        Returns ``DEVICE_OFFLINE`` (nothing sent) when the device has no session. Raises
        ``ConnectionError`` when the broker cannot take it.
        """
        session = self._sessions.get(did)
        if session is None or self._broker is None:
            return SendResult.DEVICE_OFFLINE
        data = encode_frame(frame)
        await self._broker.publish(f"app2dev/{did}/{client_id}", data)
        self.stats.commands += 1
        self.reports.offer(
            _Ingest(FrameEvent(session.device_id, self.clock.now(), "app2dev", data), None)
        )
        return SendResult.DELIVERED

    async def __aenter__(self) -> Self:
        async with self.db.session() as session:
            await TelemetryRepository(session).mark_all_offline(self.clock.now())
        await self._stack.enter_async_context(self.reports)
        await self._stack.enter_async_context(self.presence)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    # -- Authenticator ------------------------------------------------------------------------

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal | AuthRefusal | None:
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(client_id)
        if found is None or not password:
            return AuthRefusal.BAD_CREDENTIALS
        device, product = found
        if not same_secret(device.passcode, password):
            return AuthRefusal.BAD_CREDENTIALS
        if device.is_disabled:
            return AuthRefusal.NOT_AUTHORIZED
        self._authenticated[device.did] = _Session(
            device.id, product.product_key, self._codec(product)
        )
        return DevicePrincipal(did=device.did, product_key=product.product_key)

    # -- DeviceDirectory ----------------------------------------------------------------------

    async def principal_of(self, did: str) -> DevicePrincipal | None:
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product(did)
        if found is None or found[0].is_disabled:
            return None
        device, product = found
        self._authenticated[device.did] = _Session(
            device.id, product.product_key, self._codec(product)
        )
        return DevicePrincipal(did=device.did, product_key=product.product_key)

    async def credentials(
        self, dids: Sequence[str] | None = None
    ) -> AsyncIterator[list[DeviceCredential]]:
        groups: list[list[str] | None] = [None]
        if dids is not None:
            wanted = sorted(set(dids))
            groups = [wanted[i : i + _PAGE] for i in range(0, len(wanted), _PAGE)]
        for chunk in groups:
            after = 0
            while True:
                async with self.db.session() as session:
                    rows = await DeviceRepository(session).credentials_page(after, _PAGE, chunk)
                if not rows:
                    break
                yield [
                    DeviceCredential(did, key, passcode, enabled=not disabled)
                    for _, did, key, passcode, disabled in rows
                ]
                after = rows[-1][0]

    async def codec_of(self, did: str) -> P0Codec | None:
        """The P0 codec of the device's product (None for an unknown did)."""
        session = self._sessions.get(did)
        if session is not None:
            return session.codec
        async with self.db.session() as db_session:
            found = await DeviceRepository(db_session).with_product(did)
        return self._codec(found[1]) if found is not None else None

    def _codec(self, product: ProductRow) -> P0Codec:
        cached = self._codecs.get(product.product_key)
        if cached is not None and cached[0] == product.updated_at:
            return cached[1]
        codec = P0Codec(parse_product_definition(json.loads(product.definition)))
        self._codecs[product.product_key] = (product.updated_at, codec)
        return codec

    # -- BrokerEvents -------------------------------------------------------------------------

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        session = self._authenticated.pop(principal.did, None)
        if session is None:  # cannot happen: authenticate() always precedes on_connect()
            log.error("device %s connected without authentication", principal.did)
            return
        self._sessions[principal.did] = session
        self._tell(PresenceEvent(principal.did, online=True))
        now = self.clock.now()
        self.presence.offer(
            (
                PresenceChange(session.device_id, now, online=True),
                FrameEvent(session.device_id, now, "dev_online", detail=peer),
            )
        )

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        session = self._sessions.pop(principal.did, None)
        if session is None:
            return
        self._tell(PresenceEvent(principal.did, online=False))
        now = self.clock.now()
        self.presence.offer(
            (
                PresenceChange(session.device_id, now, online=False),
                FrameEvent(session.device_id, now, "dev_offline", detail=str(reason)),
            )
        )

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        self.stats.denied += 1
        self._warn_once(principal.did, "%s to %s denied", action, topic)

    async def on_publish(self, principal: DevicePrincipal, topic: str, payload: bytes) -> None:
        session = self._sessions.get(principal.did)
        parts = topic.split("/")
        if session is None or parts[0] != "dev2app":
            self.stats.ignored += 1
            return
        now = self.clock.now()
        detail = parts[2] if len(parts) > 2 else None
        try:
            frame = decode_frame(payload)
            if frame.cmd not in (CMD_REPORT, CMD_ACK_SN, CMD_CONTROL_SN):
                raise CodecError(f"command 0x{frame.cmd:04x} is not a device report")
            if frame.cmd == CMD_ACK_SN:  # acknowledged, whatever its payload turns out to be
                self._acknowledged(principal.did, frame.sn, detail)
            if frame.cmd == CMD_ACK_SN and not frame.payload:  # a bare acknowledgement
                self.reports.offer(
                    _Ingest(FrameEvent(session.device_id, now, "dev2app", payload, detail), None)
                )
                self._tell(
                    DeviceMessage(principal.did, frame.cmd, None, None, payload, detail, frame.sn)
                )
                return
            message = session.codec.decode(frame.payload)
        except CodecError as exc:
            self.stats.malformed += 1
            self._warn_once(principal.did, "dropped a frame on %s: %s", topic, exc)
            return
        state = None
        if message.action in _STATUS_ACTIONS:
            state = StateChange(session.device_id, now, json_values(message.values))
            self.stats.reports += 1
        elif message.action is Action.TRANSPARENT_UP:
            self.stats.transparent += 1
        else:
            self.stats.malformed += 1
            self._warn_once(principal.did, "dropped action 0x%02x on %s", message.action, topic)
            return
        self.reports.offer(
            _Ingest(FrameEvent(session.device_id, now, "dev2app", payload, detail), state)
        )
        event = DeviceMessage(
            principal.did,
            frame.cmd,
            int(message.action),
            state.values if state is not None else None,
            payload,
            detail,
            frame.sn,
        )
        self._tell(event)

    def _acknowledged(self, did: str, sn: int | None, client_id: str | None) -> None:
        self.stats.acks += 1
        pending = self._acks.get((did, sn or 0))
        if pending is None:
            return
        # an app's 0x0093 may reuse the SN of a cloud command: its reply names the app's client
        addressed, waiter = pending
        if client_id is not None and client_id != addressed:
            return
        if not waiter.done():
            waiter.set_result(None)

    # -- storage ------------------------------------------------------------------------------

    async def _write_reports(self, batch: Sequence[_Ingest]) -> None:
        async with self.db.session() as session:
            repo = TelemetryRepository(session)
            states = [item.state for item in batch if item.state is not None]
            await repo.apply_states(states, history=self.keep_history)
            await repo.log_frames([item.frame for item in batch])

    async def _write_presence(self, batch: Sequence[tuple[PresenceChange, FrameEvent]]) -> None:
        async with self.db.session() as session:
            repo = TelemetryRepository(session)
            await repo.set_presence([change for change, _ in batch])
            await repo.log_frames([event for _, event in batch])

    def _warn_once(self, did: str, message: str, *args: Any) -> None:
        if did in self._warned:
            return
        if len(self._warned) >= _WARN_LIMIT:
            self._warned.clear()
        self._warned.add(did)
        log.warning(
            "device %s: " + message + " (further problems of this device are counted)", did, *args
        )
