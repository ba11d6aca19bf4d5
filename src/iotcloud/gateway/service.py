"""The device gateway: between the broker and the rest of iotcloud.

It authenticates devices against the registry, keeps their presence, decodes ``dev2app``
frames with the product's data points and hands the results to the batched ingest path. It
implements the broker adapter's `Authenticator` and `BrokerEvents`, so it runs unchanged behind
the embedded broker or an external one.

Data-template (Tencent) devices speak JSON on ``$thing`` topics (`shared/spec/tencent.md` §2):
they sign in with their psk (`iotcloud.domain.thing_auth`), their reports and events are
checked against the product's data template and stored in the same batches (reports in the
device's own form: bool 0/1, enum integers), and listeners hear their reports as Gizwits-form
`DeviceMessage` s, so the Gizwits WebSocket pushes them unchanged. Commands reach them through
the same `DeviceGateway.send` (a ``control``) and `DeviceGateway.call_action`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self

from sqlalchemy import select

from iotcloud.codecs import (
    Action,
    CodecError,
    P0Codec,
    decode_frame,
    parse_product_definition,
    thing,
)
from iotcloud.codecs.dialects import template_to_gizwits
from iotcloud.codecs.frame import (
    CMD_ACK_SN,
    CMD_CONTROL,
    CMD_CONTROL_SN,
    CMD_REPORT,
    Frame,
    encode_frame,
)
from iotcloud.codecs.template import DataTemplate, TemplateValueError, load_data_template
from iotcloud.codecs.thing import (
    BAD_REQUEST,
    REPLY_OK,
    ThingMessage,
    ThingMessageError,
    decode_message,
    parse_thing_topic,
    thing_topic,
)
from iotcloud.domain.clock import Clock
from iotcloud.domain.thing_auth import (
    expiry_passed,
    parse_username,
    password_matches,
    split_client_id,
)
from iotcloud.errors import DeviceOffline
from iotcloud.gateway.broker import (
    PUBLISH_WINDOW,
    AclAction,
    AuthRefusal,
    BrokerAdapter,
    DeviceCredential,
    DevicePrincipal,
    DisconnectReason,
)
from iotcloud.services.credentials import same_secret
from iotcloud.services.ingest import BatchDropped, Batcher
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.models import DeviceRow, ProductRow
from iotcloud.storage.telemetry import (
    FrameEvent,
    PresenceChange,
    StateChange,
    TelemetryRepository,
    ThingEvent,
)

log = logging.getLogger(__name__)

_STATUS_ACTIONS = frozenset(
    {Action.READ_REPLY, Action.REPORT, Action.VAR_READ_REPLY, Action.VAR_REPORT}
)
_WARN_LIMIT = 10_000
_PAGE = 500
CLOUD_CLIENT_ID = "cloud"
STORED_DEVICE_TTL: Final = timedelta(seconds=60)
"""How long `DeviceGateway.store_publish` reuses a device lookup: one query per device and
minute instead of one per queued message. A device changed here or in another process
(disabled, re-keyed) is dropped from it at once (`DeviceGateway.forget_devices`, from the
process bus); the time-to-live bounds what a lost bus message costs."""
_STORED_DEVICES_MAX = 100_000
DATA_TEMPLATE = "data_template"
"""``products.protocol_type`` of a data-template (Tencent) product."""


class _Path(enum.Enum):
    """Which half of a device message's handling runs (see `DeviceGateway.shared_ingest`)."""

    BOTH = "both"
    OBSERVE = "observe"
    """Tell listeners, settle acknowledgements; store and answer nothing."""
    STORE = "store"
    """Store and answer (the consuming process); tell and settle nothing."""


_PATH: ContextVar[_Path] = ContextVar("iotcloud_gateway_path", default=_Path.BOTH)


@dataclass(frozen=True)
class _Session:
    device_id: int
    product_key: str
    codec: P0Codec | None
    """The P0 codec of a Gizwits device; None for a data-template device."""
    template: DataTemplate | None = None
    """The data template of a data-template device."""
    name: str = ""
    reported: dict[str, Any] = field(default_factory=dict)
    """A data-template device's values reported during this session (Tencent form): what
    ``get_status`` answers over the stored state, whose batch may not be written yet."""


@dataclass(frozen=True)
class _Ingest:
    frame: FrameEvent
    state: StateChange | None
    events: tuple[ThingEvent, ...] = ()


BROKER_UNAVAILABLE: Final = "broker_unavailable"
"""`DeviceGateway.command_results`'s key for commands the broker could not take."""


class SendResult(enum.StrEnum):
    """What became of a command handed to `DeviceGateway.send`."""

    DELIVERED = "delivered"
    """Handed to the broker (without ack), or acknowledged by the device (with ack)."""
    DEVICE_OFFLINE = "device_offline"
    """The device has no session; nothing was sent."""
    TIMED_OUT = "timed_out"
    """Sent with an ack requested, but no 0x0094 with its SN (no ``control_reply`` with its
    clientToken) came back in time."""
    REJECTED = "rejected"
    """A data-template device answered the ``control`` with a non-zero code."""


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
    refused: int = 0
    """Data-template messages answered with a non-zero code (bad values, unknown event...)."""
    events: int = 0
    """Events posted by data-template devices and stored."""


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
        consumer: bool = True,
        max_batch: int = 1000,
        queue_capacity: int = 50_000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.keep_history = keep_history
        self.consumer = consumer
        """Whether this process consumes device traffic (the ``gateway`` role): stores reports,
        events and presence, and answers data-template devices. Without it the process still
        knows who is connected, matches acknowledgements of its own commands and tells its
        listeners (real-time pushes), but writes and answers nothing for the devices."""
        self.shared_ingest = False
        """Set by a broker adapter that hands every device message (and presence change) to
        this process twice: once to every process (`on_publish`, `on_connect`,
        `on_disconnect`: observed only, for listeners and acknowledgements) and once to one
        consuming process (`store_publish`, `store_presence`: stored and answered). False (the
        embedded and Mosquitto adapters): one path does both."""
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
        self._stored_devices: dict[str, tuple[datetime, DevicePrincipal, _Session]] = {}
        """`store_publish`'s device lookups by client id, with when they expire."""
        self._warned: set[str] = set()
        self._stack = AsyncExitStack()
        self._broker: BrokerAdapter | None = None
        self._listeners: list[Listener] = []
        self._acks: dict[tuple[str, int], tuple[str, asyncio.Future[None]]] = {}
        self._next_sn = secrets.randbelow(1 << 31)
        self._templates: dict[str, tuple[datetime, DataTemplate]] = {}
        self._replies: dict[tuple[str, str], asyncio.Future[ThingMessage]] = {}
        self._token_prefix = f"iotcloud-{secrets.token_hex(4)}-"
        self._tasks: set[asyncio.Task[None]] = set()
        self.command_results: collections.Counter[str] = collections.Counter()
        """Commands sent through `send` and `send_many`, by `SendResult` value (and
        ``broker_unavailable``: the broker could not take them)."""
        self._lookups: dict[str, list[asyncio.Future[tuple[DeviceRow, ProductRow] | None]]] = {}
        self._lookup_task: asyncio.Task[None] | None = None

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

    def _stores(self) -> bool:
        """Whether the handling running now stores and answers (see `shared_ingest`)."""
        return self.consumer and _PATH.get() is not _Path.OBSERVE

    def _observes(self) -> bool:
        return _PATH.get() is not _Path.STORE

    def _tell(self, event: GatewayEvent) -> None:
        if not self._observes():
            return
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
        """`_send`, its outcome counted in `command_results`."""
        try:
            result = await self._send(
                did,
                payload,
                require_ack=require_ack,
                client_id=client_id,
                ack_timeout=ack_timeout,
                sn=sn,
            )
        except ConnectionError:
            self.command_results[BROKER_UNAVAILABLE] += 1
            raise
        self.command_results[result.value] += 1
        return result

    def _count_result(self, result: asyncio.Future[SendResult]) -> None:
        if result.cancelled():
            return
        failed = result.exception()
        if failed is not None:
            self.command_results[BROKER_UNAVAILABLE] += 1
        else:
            self.command_results[result.result().value] += 1

    async def _send(
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

        For a data-template device ``payload`` is the UTF-8 JSON object of the properties to
        write (already checked against its template; ``ValueError`` when it is not an object):
        it goes out as a ``control`` on ``$thing/down/property/{PID}/{NAME}`` and, with
        ``require_ack``, the device's ``control_reply`` with its clientToken decides:
        code 0 ``DELIVERED``, another code ``REJECTED``, none in time ``TIMED_OUT``. ``sn`` and
        ``client_id`` do not apply to it.
        """
        session = self._sessions.get(did)
        if session is not None and session.template is not None:
            if sn is not None:
                raise ValueError("a data-template device has no sequence numbers")
            return await self._send_control(did, session, payload, require_ack, ack_timeout)
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

    async def _send_control(
        self, did: str, session: _Session, payload: bytes, require_ack: bool, ack_timeout: float
    ) -> SendResult:
        params = json.loads(payload)
        if not isinstance(params, dict):
            raise ValueError("a control carries a JSON object of properties")
        token = self._new_token()
        message = thing.control(token, params, int(self.clock.now().timestamp() * 1000))
        reply = await self._request(
            did, session, "property", token, message, require_ack, ack_timeout
        )
        if reply is None:
            return SendResult.DELIVERED if not require_ack else SendResult.TIMED_OUT
        if isinstance(reply, SendResult):
            return reply
        try:
            code = reply.code()
        except ThingMessageError:
            return SendResult.REJECTED
        return SendResult.DELIVERED if code == REPLY_OK else SendResult.REJECTED

    async def call_action(
        self,
        did: str,
        action_id: str,
        params: dict[str, Any],
        timeout: float = 5.0,  # noqa: ASYNC109 (the wait is the caller's parameter)
    ) -> tuple[int, str, dict[str, Any]]:
        """Call an action of a data-template device and wait up to ``timeout`` seconds for its
        ``action_reply``: ``(code, status, response)`` as the device answered (``response``
        {} when it sent none).

        ``params`` is checked against the action's input (`TemplateValueError`). Raises
        `DeviceOffline` when the device has no session, ``ValueError`` for a device that is
        not a data-template one, ``TimeoutError`` when no reply came, ``ConnectionError``
        when the broker cannot take the call.
        """
        session = self._sessions.get(did)
        if session is None or self._broker is None:
            raise DeviceOffline(f"device {did} is offline")
        if session.template is None:
            raise ValueError(f"device {did} is not a data-template device")
        checked = session.template.check_action_input(action_id, params)
        token = self._new_token()
        message = thing.action(token, action_id, checked, int(self.clock.now().timestamp() * 1000))
        reply = await self._request(did, session, "action", token, message, True, timeout)
        if reply is None:
            raise TimeoutError(f"device {did} did not answer action {action_id} in time")
        if isinstance(reply, SendResult):
            raise DeviceOffline(f"device {did} is offline")
        response = reply.body.get("response")
        try:
            code = reply.code()
        except ThingMessageError:
            code = thing.BAD_REQUEST
        return code, reply.status(), response if isinstance(response, dict) else {}

    def _new_token(self) -> str:
        self._next_sn = (self._next_sn + 1) & 0xFFFFFFFF
        return f"{self._token_prefix}{self._next_sn}"

    async def _request(
        self,
        did: str,
        session: _Session,
        kind: str,
        token: str,
        message: bytes,
        await_reply: bool,
        reply_timeout: float,
    ) -> ThingMessage | SendResult | None:
        """Publish a cloud message on ``$thing/down/{kind}`` and log it; with ``await_reply``
        wait for the device's reply with ``token`` (None: none in time, or not awaited)."""
        if self._broker is None:
            return SendResult.DEVICE_OFFLINE
        topic = thing_topic("down", kind, session.product_key, session.name)
        waiter: asyncio.Future[ThingMessage] | None = None
        if await_reply:
            waiter = asyncio.get_running_loop().create_future()
            self._replies[(did, token)] = waiter
        try:
            await self._broker.publish(topic, message)
            self.stats.commands += 1
            self.reports.offer(
                _Ingest(FrameEvent(session.device_id, self.clock.now(), "app2dev", message), None)
            )
            if waiter is None:
                return None
            try:
                async with asyncio.timeout(reply_timeout):
                    return await waiter
            except TimeoutError:
                return None
        finally:
            if waiter is not None:
                self._replies.pop((did, token), None)

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
        if session.template is not None:
            raise ValueError(f"device {did} is a data-template device: it takes no frames")
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
        if self._lookup_task is not None:
            self._lookup_task.cancel()
            await asyncio.gather(self._lookup_task, return_exceptions=True)
        await self._stack.aclose()

    # -- Authenticator ------------------------------------------------------------------------

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal | AuthRefusal | None:
        if username is not None and username != client_id:
            return await self._authenticate_thing(client_id, username, password)
        found = await self._look_up(client_id)
        if found is None or not password:
            return AuthRefusal.BAD_CREDENTIALS
        device, product = found
        if not same_secret(device.passcode, password):
            return AuthRefusal.BAD_CREDENTIALS
        if device.is_disabled:
            return AuthRefusal.NOT_AUTHORIZED
        if product.protocol_type == DATA_TEMPLATE:  # it signs in with its psk
            return AuthRefusal.BAD_CREDENTIALS
        self._authenticated[device.did] = _Session(
            device.id, product.product_key, self._codec(product)
        )
        return DevicePrincipal(did=device.did, product_key=product.product_key)

    async def _look_up(self, did: str) -> tuple[DeviceRow, ProductRow] | None:
        """The device and its product. CONNECTs that arrive together (a fleet reconnecting
        after a restart or a network outage) share one query per batch of up to `_PAGE`
        dids instead of one each."""
        waiter: asyncio.Future[tuple[DeviceRow, ProductRow] | None]
        waiter = asyncio.get_running_loop().create_future()
        self._lookups.setdefault(did, []).append(waiter)
        if self._lookup_task is None or self._lookup_task.done():
            self._lookup_task = asyncio.get_running_loop().create_task(
                self._look_up_batches(), name="device-lookups"
            )
        return await waiter

    async def _look_up_batches(self) -> None:
        await asyncio.sleep(0)  # CONNECTs read in the same loop iteration join the first batch
        while self._lookups:
            dids = list(self._lookups)[:_PAGE]
            waiters = {did: self._lookups.pop(did) for did in dids}
            try:
                async with self.db.session() as session:
                    found = await DeviceRepository(session).with_products(dids)
            except Exception as exc:  # each CONNECT is refused with "server unavailable"
                for pending in waiters.values():
                    for waiter in pending:
                        if not waiter.done():
                            waiter.set_exception(exc)
                continue
            for did, pending in waiters.items():
                for waiter in pending:
                    if not waiter.done():
                        waiter.set_result(found.get(did))

    async def _authenticate_thing(
        self, client_id: str, username: str, password: str | None
    ) -> DevicePrincipal | AuthRefusal:
        """A data-template device: ``{PID}{NAME}`` signed with its psk (see `thing_auth`)."""
        fields = parse_username(username)
        split = split_client_id(client_id)
        if fields is None or fields.client_id != client_id or split is None or not password:
            return AuthRefusal.BAD_CREDENTIALS
        found = await self._thing_device(*split)
        if found is None:
            return AuthRefusal.BAD_CREDENTIALS
        device, product = found
        if not device.psk or not password_matches(device.psk, username, password):
            return AuthRefusal.BAD_CREDENTIALS
        if expiry_passed(fields.expiry, self.clock.now().timestamp()):
            return AuthRefusal.BAD_CREDENTIALS
        if device.is_disabled:
            return AuthRefusal.NOT_AUTHORIZED
        principal, session = self._thing_session(device, product)
        self._authenticated[device.did] = session
        return principal

    async def _thing_device(
        self, product_id: str, name: str
    ) -> tuple[DeviceRow, ProductRow] | None:
        """The data-template device ``name`` of product ``product_id``, with its product."""
        async with self.db.session() as session:
            found = await DeviceRepository(session).with_product_by_name(product_id, name)
        if found is None or found[1].protocol_type != DATA_TEMPLATE:
            return None
        return found

    def _thing_session(
        self, device: DeviceRow, product: ProductRow
    ) -> tuple[DevicePrincipal, _Session]:
        principal = DevicePrincipal(
            did=device.did, product_key=product.product_key, device_name=device.name, thing=True
        )
        return principal, _Session(
            device.id, product.product_key, None, self._template(product), device.name
        )

    def _template(self, product: ProductRow) -> DataTemplate:
        cached = self._templates.get(product.product_key)
        if cached is not None and cached[0] == product.updated_at:
            return cached[1]
        template = load_data_template(product.definition)
        self._templates[product.product_key] = (product.updated_at, template)
        return template

    # -- DeviceDirectory ----------------------------------------------------------------------

    async def principal_of(self, did: str) -> DevicePrincipal | None:
        found = await self._look_up(did)
        if found is None or found[0].is_disabled:
            return None
        device, product = found
        if product.protocol_type == DATA_TEMPLATE:
            principal, thing_session = self._thing_session(device, product)
            self._authenticated[device.did] = thing_session
            return principal
        self._authenticated[device.did] = _Session(
            device.id, product.product_key, self._codec(product)
        )
        return DevicePrincipal(did=device.did, product_key=product.product_key)

    async def principal_of_client(self, client_id: str) -> DevicePrincipal | None:
        """The enabled device that connects with MQTT client id ``client_id`` (a Gizwits did,
        or a data-template ``{PID}{NAME}``), else None; like `principal_of`."""
        principal = await self.principal_of(client_id)
        if principal is not None:
            return principal
        split = split_client_id(client_id)
        found = await self._thing_device(*split) if split is not None else None
        if found is None or found[0].is_disabled:
            return None
        principal, session = self._thing_session(*found)
        self._authenticated[principal.did] = session
        return principal

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
                    things = await self._template_products(session, {row[2] for row in rows})
                if not rows:
                    break
                yield [
                    DeviceCredential(did, key, passcode, enabled=not disabled, thing=key in things)
                    for _, did, key, passcode, disabled in rows
                ]
                after = rows[-1][0]

    @staticmethod
    async def _template_products(session: Any, product_keys: set[str]) -> set[str]:
        """Which of ``product_keys`` are data-template products."""
        if not product_keys:
            return set()
        found = await session.scalars(
            select(ProductRow.product_key).where(
                ProductRow.product_key.in_(sorted(product_keys)),
                ProductRow.protocol_type == DATA_TEMPLATE,
            )
        )
        return set(found.all())

    def session_template(self, did: str) -> DataTemplate | None:
        """The data template of a data-template device with a session now (no database read);
        None otherwise (offline, unknown or a Gizwits device)."""
        session = self._sessions.get(did)
        return session.template if session is not None else None

    async def codec_of(self, did: str) -> P0Codec | None:
        """The P0 codec of the device's product (None for an unknown did or a data-template
        device)."""
        session = self._sessions.get(did)
        if session is not None:
            return session.codec
        async with self.db.session() as db_session:
            found = await DeviceRepository(db_session).with_product(did)
        if found is None or found[1].protocol_type == DATA_TEMPLATE:
            return None
        return self._codec(found[1])

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
        if not self.consumer or self.shared_ingest:
            return
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
        if not self.consumer or self.shared_ingest:
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

    async def on_publish(
        self, principal: DevicePrincipal, topic: str, payload: bytes
    ) -> asyncio.Future[None] | None:
        """Handle one device message; the returned future is done once what it carried is
        committed (None when nothing was stored)."""
        if self.shared_ingest:  # observed here; stored through store_publish
            token = _PATH.set(_Path.OBSERVE)
            try:
                await self._handle_publish(principal, topic, payload)
            finally:
                _PATH.reset(token)
            return None
        return await self._stored(principal, topic, payload, None)

    async def store_publish(
        self, client_id: str, topic: str, payload: bytes
    ) -> asyncio.Future[None] | None:
        """The consuming half of a device message (`shared_ingest`): store what it carried and
        answer a data-template device, without telling listeners or settling
        acknowledgements (`on_publish` did). The device need not be connected any more (the
        message may have waited in a queue): it is looked up by its MQTT ``client_id``; a
        device that is unknown or disabled now is dropped (None). Returns like `on_publish`."""
        now = self.clock.now()
        cached = self._stored_devices.get(client_id)
        if cached is not None and cached[0] > now:
            _, principal, looked_up = cached
        else:
            known = await self._stored_device(client_id, now)
            if known is None:
                self.stats.ignored += 1
                return None
            principal, looked_up = known
        session = self._sessions.get(principal.did) or looked_up
        token = _PATH.set(_Path.STORE)
        try:
            return await self._stored(principal, topic, payload, session)
        finally:
            _PATH.reset(token)

    async def _stored_device(
        self, client_id: str, now: datetime
    ) -> tuple[DevicePrincipal, _Session] | None:
        """Look the device of ``client_id`` up for `store_publish` (the lookups of a burst share
        one query, `_look_up`), kept `STORED_DEVICE_TTL`."""
        found = await self.principal_of_client(client_id)
        session = self._authenticated.pop(found.did, None) if found else None
        if found is None or session is None:
            return None
        if len(self._stored_devices) >= _STORED_DEVICES_MAX:
            self._stored_devices.clear()
        self._stored_devices[client_id] = (now + STORED_DEVICE_TTL, found, session)
        return found, session

    def forget_devices(self, dids: Sequence[str] | None) -> None:
        """Devices changed (disabled, re-keyed, deleted) here or in another process: drop what
        `store_publish` keeps of them (all, for None)."""
        if dids is None:
            self._stored_devices.clear()
            return
        wanted = set(dids)
        for client_id, (_, principal, _) in list(self._stored_devices.items()):
            if principal.did in wanted:
                del self._stored_devices[client_id]

    async def store_presence(
        self, client_id: str, online: bool, detail: str, *, at: datetime | None = None
    ) -> bool:
        """The consuming half of a presence change (`shared_ingest`): store that the device
        with MQTT ``client_id`` went online or offline; False if no enabled device has it.

        ``at`` is when the broker saw the change. Several consumers may store a device's
        changes out of order (a quick connect and disconnect taken by two gateways): with
        ``at`` the change is applied only if the device has no later one stored, and logged
        at that instant."""
        if not self.consumer:
            return False
        principal = await self.principal_of_client(client_id)
        if principal is None:
            return False
        session = self._authenticated.pop(principal.did, None) or self._sessions.get(principal.did)
        if session is None:
            return False
        when = at if at is not None else self.clock.now()
        kind = "dev_online" if online else "dev_offline"
        self.presence.offer(
            (
                PresenceChange(session.device_id, when, online=online, ordered=at is not None),
                FrameEvent(session.device_id, when, kind, detail=detail),
            )
        )
        return True

    async def store_gone(self, client_ids: Sequence[str], detail: str) -> int:
        """The consuming half of devices that went without a close event (their broker node
        went down): store each offline now, unless it is offline already or has a later
        change stored. Every gateway may do this for the same devices: a device is stored
        and logged offline once, by the first. Returns how many were stored offline."""
        if not self.consumer:
            return 0
        device_ids = []
        for client_id in client_ids:
            principal = await self.principal_of_client(client_id)
            if principal is None:
                continue
            session = self._authenticated.pop(principal.did, None) or self._sessions.get(
                principal.did
            )
            if session is not None:
                device_ids.append(session.device_id)
        return await self._store_offline(device_ids, self.clock.now(), detail)

    async def store_unlisted_offline(
        self, connected: Sequence[str], listed_at: datetime, detail: str
    ) -> int:
        """The consuming half of a resynchronisation: every device stored online that is not
        among the ``connected`` MQTT client ids the broker listed at ``listed_at`` is stored
        offline (as `store_gone`), unless it came online after ``listed_at`` (a listing may
        miss connections younger than its statistics tick). Returns how many."""
        if not self.consumer:
            return 0
        keep = set()
        for client_id in connected:
            principal = await self.principal_of_client(client_id)
            if principal is not None:
                keep.add(principal.did)
        async with self.db.session() as session:
            online = await TelemetryRepository(session).online_devices(listed_at)
        gone = [device_id for device_id, did in online if did not in keep]
        return await self._store_offline(gone, listed_at, detail)

    async def _store_offline(self, device_ids: Sequence[int], at: datetime, detail: str) -> int:
        changed: list[int] = []
        for start in range(0, len(device_ids), _PAGE):
            async with self.db.session() as session:
                repo = TelemetryRepository(session)
                page = await repo.set_offline_if_online(device_ids[start : start + _PAGE], at)
                await repo.log_frames(
                    [FrameEvent(device_id, at, "dev_offline", detail=detail) for device_id in page]
                )
            changed += page
        return len(changed)

    async def _stored(
        self, principal: DevicePrincipal, topic: str, payload: bytes, session: _Session | None
    ) -> asyncio.Future[None] | None:
        stats = self.reports.stats
        queued, dropped = stats.submitted, stats.dropped
        await self._handle_publish(principal, topic, payload, session)
        if stats.dropped != dropped:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lost.set_exception(BatchDropped("the report queue is full"))
            return lost
        if stats.submitted == queued:
            return None
        return self.reports.committed()

    @property
    def backlog(self) -> int:
        """Device messages taken and not yet committed (reports and presence changes)."""
        return self.reports.backlog

    def _ingest(self, item: _Ingest) -> None:
        """Queue what a device sent for storage, in the process that consumes device traffic."""
        if self._stores():
            self.reports.offer(item)

    async def _handle_publish(
        self,
        principal: DevicePrincipal,
        topic: str,
        payload: bytes,
        session: _Session | None = None,
    ) -> None:
        session = session or self._sessions.get(principal.did)
        if session is not None and session.template is not None:
            await self._thing_message(principal.did, session, session.template, topic, payload)
            return
        parts = topic.split("/")
        if session is None or session.codec is None or parts[0] != "dev2app":
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
                self._ingest(
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
            self.stats.reports += 1 if self._stores() else 0
        elif message.action is Action.TRANSPARENT_UP:
            self.stats.transparent += 1
        else:
            self.stats.malformed += 1
            self._warn_once(principal.did, "dropped action 0x%02x on %s", message.action, topic)
            return
        self._ingest(_Ingest(FrameEvent(session.device_id, now, "dev2app", payload, detail), state))
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

    # -- data-template devices ----------------------------------------------------------------

    async def _thing_message(
        self, did: str, session: _Session, template: DataTemplate, topic: str, payload: bytes
    ) -> None:
        """One message of a data-template device (the ACL let through only its own
        ``$thing/up`` topics). A message that cannot be read, or whose method the topic does
        not know, is dropped and counted (``stats.malformed``); a known method with bad content
        is answered with a non-zero code where it has a reply (``stats.refused``)."""
        parsed = parse_thing_topic(topic)
        try:
            message = decode_message(payload)
        except ThingMessageError as exc:
            self.stats.malformed += 1
            self._warn_once(did, "dropped a message on %s: %s", topic, exc)
            return
        kind = parsed.kind if parsed is not None else ""
        method = message.method
        if kind == "property" and method == "report":
            await self._thing_report(did, session, template, message, payload)
        elif kind == "property" and method == "get_status":
            if self._stores():  # the consuming process answers
                self._spawn(self._thing_status(did, session, message))
        elif (kind == "property" and method in ("control_reply", "")) or (
            kind == "action" and method == "action_reply"
        ):
            self._thing_reply(did, message)
        elif kind == "property" and method in ("report_info", "clear_control"):
            # report_info (module, firmware and SDK versions) is kept in the frame log
            self._ingest(
                _Ingest(FrameEvent(session.device_id, self.clock.now(), "dev2app", payload), None)
            )
            await self._thing_answer(session, "property", f"{method}_reply", message, REPLY_OK)
        elif kind == "event" and method in ("event_post", "events_post"):
            await self._thing_events(did, session, template, message, payload)
        else:
            self.stats.malformed += 1
            self._warn_once(did, "dropped method %r on %s", method, topic)

    async def _thing_report(
        self,
        did: str,
        session: _Session,
        template: DataTemplate,
        message: ThingMessage,
        payload: bytes,
    ) -> None:
        try:
            values = template.check_report(message.params())
        except (ThingMessageError, TemplateValueError) as exc:
            self.stats.refused += 1
            await self._thing_answer(
                session, "property", "report_reply", message, BAD_REQUEST, str(exc)
            )
            return
        now = self.clock.now()
        session.reported.update(values)
        state = StateChange(session.device_id, now, values)
        self.stats.reports += 1 if self._stores() else 0
        self._ingest(_Ingest(FrameEvent(session.device_id, now, "dev2app", payload), state))
        self._tell(
            DeviceMessage(
                did,
                CMD_REPORT,
                int(Action.REPORT),
                template_to_gizwits(template, values),
                payload,
            )
        )
        await self._thing_answer(session, "property", "report_reply", message, REPLY_OK)

    async def _thing_status(self, did: str, session: _Session, message: ThingMessage) -> None:
        """``get_status``: the stored latest values, overlaid with this session's reports."""
        report: dict[str, Any] = {}
        try:
            async with self.db.session() as db_session:
                latest = await TelemetryRepository(db_session).latest(session.device_id)
            if latest is not None:
                report.update(latest.attrs)
        except Exception:
            log.exception("device %s: could not read its latest state", did)
            await self._thing_answer(
                session, "property", "get_status_reply", message, thing.SERVER_ERROR, "error"
            )
            return
        report.update(session.reported)
        await self._thing_answer(
            session,
            "property",
            "get_status_reply",
            message,
            REPLY_OK,
            type=message.body.get("type", "report"),
            data={"report": report},
        )

    def _thing_reply(self, did: str, message: ThingMessage) -> None:
        """A ``control_reply`` (its method may be missing) or ``action_reply``: completes the
        command with its clientToken; a reply nobody waits for is only counted."""
        if not self._observes():
            return
        self.stats.acks += 1
        waiter = self._replies.get((did, message.client_token))
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def _thing_events(
        self,
        did: str,
        session: _Session,
        template: DataTemplate,
        message: ThingMessage,
        payload: bytes,
    ) -> None:
        """``event_post`` (one event) or ``events_post`` (``events`` array): every event is
        checked against the template; one bad event refuses the whole message."""
        body = message.body
        posted: Any = [body] if message.method == "event_post" else body.get("events")
        now = self.clock.now()
        events: list[ThingEvent] = []
        try:
            if not isinstance(posted, list) or not posted:
                raise ThingMessageError("events: must be a non-empty array")
            for index, item in enumerate(posted):
                where = "" if message.method == "event_post" else f"events[{index}]."
                if not isinstance(item, dict):
                    raise ThingMessageError(f"{where[:-1]}: must be a JSON object")
                event_id = item.get("eventId")
                try:
                    params = template.check_event(event_id, item.get("params"))
                except TemplateValueError as exc:
                    raise ThingMessageError(f"{where}{exc}") from exc
                event = template.events[str(event_id)]
                events.append(
                    ThingEvent(
                        session.device_id,
                        now,
                        event.id,
                        event.type,
                        params,
                        message.client_token or None,
                    )
                )
        except ThingMessageError as exc:
            self.stats.refused += 1
            await self._thing_answer(
                session, "event", "event_reply", message, BAD_REQUEST, str(exc), version="1.0"
            )
            return
        self.stats.events += len(events)
        self._ingest(
            _Ingest(FrameEvent(session.device_id, now, "dev2app", payload), None, tuple(events))
        )
        await self._thing_answer(
            session, "event", "event_reply", message, REPLY_OK, version="1.0", data={}
        )

    async def _thing_answer(
        self,
        session: _Session,
        kind: str,
        method: str,
        message: ThingMessage,
        code: int,
        status: str = "success",
        **extra: Any,
    ) -> None:
        if self._broker is None or not self._stores():  # the consuming process answers
            return
        topic = thing_topic("down", kind, session.product_key, session.name)
        data = thing.reply(method, message.client_token, code, status, **extra)
        try:
            await self._broker.publish(topic, data)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            log.debug("could not answer %s on %s: %r", method, topic, exc)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _acknowledged(self, did: str, sn: int | None, client_id: str | None) -> None:
        if not self._observes():
            return
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
            await repo.log_thing_events([event for item in batch for event in item.events])

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

    # -- batched commands (the scheduler) ------------------------------------------------------

    async def send_many(
        self, commands: Sequence[tuple[str, bytes]], *, ack_timeout: float = 5.0
    ) -> list[asyncio.Future[SendResult]]:
        """Send each ``(did, payload)`` as `send` with ``require_ack`` does, without waiting for
        the devices: returns once every command is handed to the broker, with one future per
        command, in order. A future resolves to ``DELIVERED`` when the device acknowledged
        its command (the 0x0094 with the command's SN; a data-template device's
        ``control_reply`` with code 0), ``TIMED_OUT`` when nothing came within
        ``ack_timeout`` seconds, ``DEVICE_OFFLINE`` at once when the device has no session
        (nothing sent), ``REJECTED`` as in `send`; it holds the ``ConnectionError`` when the
        broker could not take the command.

        Acknowledgements are correlated by (did, SN) as in `send`, but a burst costs no task
        and no timer per command: the commands of one call share one timer for their
        timeouts (data-template commands, which await a reply token, each run as `send`)."""
        loop = asyncio.get_running_loop()
        results: list[asyncio.Future[SendResult]] = []
        awaiting: list[tuple[tuple[str, int], asyncio.Future[None]]] = []

        def settle(
            key: tuple[str, int], result: asyncio.Future[SendResult]
        ) -> Callable[[asyncio.Future[None]], None]:
            def acknowledged_or_expired(waiter: asyncio.Future[None]) -> None:
                entry = self._acks.get(key)
                if entry is not None and entry[1] is waiter:
                    del self._acks[key]
                if not result.done():
                    result.set_result(
                        SendResult.TIMED_OUT if waiter.cancelled() else SendResult.DELIVERED
                    )

            return acknowledged_or_expired

        async def control(did: str, payload: bytes, result: asyncio.Future[SendResult]) -> None:
            try:
                sent = await self._send(did, payload, require_ack=True, ack_timeout=ack_timeout)
            except asyncio.CancelledError:
                result.cancel()
                raise
            except Exception as exc:  # handed to the caller through the future
                if not result.done():
                    result.set_exception(exc)
            else:
                if not result.done():
                    result.set_result(sent)

        def expire() -> None:
            for _, waiter in awaiting:
                waiter.cancel()  # no effect on the acknowledged ones

        frames: list[tuple[tuple[str, int], asyncio.Future[SendResult], Frame]] = []
        for did, payload in commands:
            result: asyncio.Future[SendResult] = loop.create_future()
            results.append(result)
            session = self._sessions.get(did)
            if session is None or self._broker is None:
                result.set_result(SendResult.DEVICE_OFFLINE)
                continue
            if session.template is not None:
                self._spawn(control(did, payload, result))
                continue
            sn = self._next_sn = (self._next_sn + 1) & 0xFFFFFFFF
            frames.append(((did, sn), result, Frame(CMD_CONTROL_SN, payload, sn=sn)))
        waiters: list[asyncio.Future[None]] = []
        for key, _, _ in frames:  # registered before any frame goes out
            waiter: asyncio.Future[None] = loop.create_future()
            self._acks[key] = (CLOUD_CLIENT_ID, waiter)
            waiters.append(waiter)
        # One after another while the broker takes frames without suspending (the embedded
        # transport writes to the socket at once); once a publish suspends (aiomqtt waits for
        # its client's write), PUBLISH_WINDOW at a time, so that one loop iteration writes
        # that many frames (aiomqtt scans its pending calls on each call: cheap at 64).
        window = PUBLISH_WINDOW
        suspended = False

        def mark_suspended() -> None:
            nonlocal suspended
            suspended = True

        outcomes: list[SendResult | BaseException] = []
        try:
            index = 0
            while index < len(frames):
                if suspended:
                    outcomes += await asyncio.gather(
                        *(
                            self.publish_frame(key[0], frame)
                            for key, _, frame in frames[index : index + window]
                        ),
                        return_exceptions=True,
                    )
                    index += window
                    continue
                key, _, frame = frames[index]
                marker = loop.call_soon(mark_suspended)
                try:
                    outcomes.append(await self.publish_frame(key[0], frame))
                except Exception as exc:  # as gather's return_exceptions: settled below
                    outcomes.append(exc)
                finally:
                    marker.cancel()
                index += 1
        except asyncio.CancelledError:
            for (key, result, _), waiter in zip(frames, waiters, strict=True):
                self._acks.pop(key, None)
                waiter.cancel()
                result.cancel()
            raise
        for (key, result, _), waiter, outcome in zip(frames, waiters, outcomes, strict=True):
            if isinstance(outcome, BaseException) or outcome is not SendResult.DELIVERED:
                self._acks.pop(key, None)
                if not isinstance(outcome, BaseException):
                    result.set_result(outcome)
                elif isinstance(outcome, ConnectionError):
                    result.set_exception(outcome)
                else:
                    result.set_exception(ConnectionError(str(outcome)))
                continue
            waiter.add_done_callback(settle(key, result))
            awaiting.append((key, waiter))
        if awaiting:
            loop.call_later(ack_timeout, expire)
        for result in results:
            result.add_done_callback(self._count_result)
        return results
