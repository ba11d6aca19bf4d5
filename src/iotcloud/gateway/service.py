"""The device gateway: between the broker and the rest of iotcloud.

It authenticates devices against the registry, keeps their presence, decodes ``dev2app``
frames with the product's data points and hands the results to the batched ingest path. It
implements the broker adapter's `Authenticator` and `BrokerEvents`, so it runs unchanged behind
the embedded broker or an external one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
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
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_REPORT
from iotcloud.domain.clock import Clock
from iotcloud.gateway.broker import (
    AclAction,
    AuthRefusal,
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


@dataclass(frozen=True)
class _Session:
    device_id: int
    product_key: str
    codec: P0Codec


@dataclass(frozen=True)
class _Ingest:
    frame: FrameEvent
    state: StateChange | None


@dataclass
class GatewayStats:
    reports: int = 0
    transparent: int = 0
    malformed: int = 0
    denied: int = 0
    ignored: int = 0


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
        try:
            frame = decode_frame(payload)
            if frame.cmd not in (CMD_REPORT, CMD_ACK_SN):
                raise CodecError(f"command 0x{frame.cmd:04x} is not a device report")
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
        detail = parts[2] if len(parts) > 2 else None
        self.reports.offer(
            _Ingest(FrameEvent(session.device_id, now, "dev2app", payload, detail), state)
        )

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
