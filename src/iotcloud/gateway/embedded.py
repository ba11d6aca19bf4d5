"""The embedded MQTT broker: amqtt inside the server's event loop, behind our own TCP listener.

Each TCP connection is served in two phases:

1. *Admission* (our code): read the CONNECT (bounded size and time), accept MQTT 3.1 (``MQIsdp``,
   level 3) and 3.1.1 (``MQTT``, level 4) only, check the identity rule (client id = user name,
   or for a data-template device the user name's first ``;``-separated field; a 3.1 client id may
   be longer than 23 characters),
   authenticate through the `Authenticator`, and answer refusals with the exact CONNACK code.
   A second connection for the same client id closes the first one and waits for it to end.
2. *Session* (amqtt): the CONNECT is re-encoded as MQTT 3.1.1 and the connection is handed to
   amqtt through its public external-listener entry point (``Broker.external_connected``), with
   this module's `_Connection` as the reader/writer adapter. amqtt then does CONNACK, routing,
   SUBSCRIBE and QoS flows; its auth and topic-checking plugin hooks (`_AmqttHooks`) bind the
   session to our connection and enforce the ACL.

The adapter sees every byte, so it also enforces what amqtt does not: the keep-alive (1.5 x the
client's value; amqtt's own read timeout is a no-op on the broker side), a maximum packet size,
closing on packets amqtt would skip and lose its place in the stream after, and "no retained
messages from devices" (the RETAIN bit of device PUBLISHes and wills is cleared: amqtt replays
retained messages to clients by other clients' subscriptions, bypassing the ACL). It also tells
a clean DISCONNECT from a lost connection.

With a TLS context the broker also listens on a second port for MQTT over TLS; asyncio
terminates TLS, and a connection whose handshake succeeded takes the same path as a plain one.

amqtt itself runs as `_AmqttBroker`, which avoids its scans of every subscription per message and
per CONNECT (O(devices) each), and the server's own messages go straight to the subscribed
connections when they are all online.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NoReturn, Self

from amqtt.adapters import BufferReader
from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig, ListenerType
from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from iotcloud.gateway.broker import (
    AclAction,
    Authenticator,
    AuthRefusal,
    BrokerEvents,
    BrokerStats,
    DeviceCredential,
    DevicePrincipal,
    DisconnectReason,
    is_cloud_topic,
    matching_filters,
    may_publish,
    may_subscribe,
)

log = logging.getLogger(__name__)

_LISTENER: Final = "default"
_PRINCIPAL_KEY: Final = "iotcloud.principal"
_PROTOCOL_LEVELS: Final = {("MQIsdp", 3): 3, ("MQTT", 4): 4}

# MQTT control packet types (high nibble of the first byte) and CONNACK return codes.
_CONNECT, _CONNACK, _PUBLISH, _DISCONNECT = 1, 2, 3, 14
_UNACCEPTABLE_PROTOCOL, _IDENTIFIER_REJECTED, _SERVER_UNAVAILABLE = 1, 2, 3
_FORBIDDEN_AFTER_CONNECT = frozenset((0, _CONNECT, 15))  # a second CONNECT, reserved types
# what a client may send after CONNECT besides PUBLISH: type -> (fixed-header flags, remaining
# length or None for any). Anything else is malformed (MQTT 3.1.1 §2.2.2: the connection is
# closed); a wrong length would also desynchronise amqtt's parser. SUBSCRIBE, UNSUBSCRIBE and
# PUBREL carry flags 0b0010 in MQTT 3.1 as in 3.1.1 (GAgent sends 0x82).
_CLIENT_PACKETS: Final[dict[int, tuple[int, int | None]]] = {
    4: (0, 2),  # PUBACK
    5: (0, 2),  # PUBREC
    6: (2, 2),  # PUBREL
    7: (0, 2),  # PUBCOMP
    8: (2, None),  # SUBSCRIBE
    10: (2, None),  # UNSUBSCRIBE
    12: (0, 0),  # PINGREQ
    14: (0, 0),  # DISCONNECT
}
_AT_TYPE, _IN_LENGTH, _IN_BODY = 0, 1, 2  # where the next byte a device sends falls in a packet
_DIRECT_WRITE_LIMIT: Final = 64 * 1024
"""A QoS 0 PUBLISH is written straight to a connection whose send buffer holds less than
this; above it (a slow reader) it goes through amqtt, which waits for the buffer to drain."""


def _publish_packet(topic: str, data: bytes) -> bytes:
    """The bytes of a QoS 0 PUBLISH (no DUP, no RETAIN) of ``data`` on ``topic``, as amqtt
    encodes it."""
    name = topic.encode()
    length = 2 + len(name) + len(data)
    header = bytearray((_PUBLISH << 4,))
    while True:
        byte, length = length & 0x7F, length >> 7
        header.append(byte | 0x80 if length else byte)
        if not length:
            break
    return b"".join((header, len(name).to_bytes(2, "big"), name, data))


class _Refused(Exception):
    """Admission failed; ``code`` is the CONNACK return code to send, or None to just close."""

    def __init__(self, code: int | None, why: str) -> None:
        super().__init__(why)
        self.code = code


class EmbeddedBroker:
    """A `BrokerAdapter` running amqtt in the current event loop, listening on ``host:port``.

    ``port`` 0 picks a free port (read it from `port` once started). Single use: enter it once.
    Enter and leave it from the same task (it owns a `asyncio.TaskGroup`).

    Limits: ``max_connections`` TCP connections (more are closed at once and counted in
    ``stats.rejected_connections``); a CONNECT must arrive within ``connect_timeout`` seconds and
    the `Authenticator` must answer within ``auth_timeout``; a packet larger than
    ``max_packet_size`` closes the connection (`DisconnectReason.PROTOCOL_ERROR`); at most
    ``event_queue_limit`` queued ``on_publish``/``on_denied`` events (more are dropped and
    counted; presence events are never dropped). Offline persistent sessions (clean session 0)
    are forgotten after ``session_expiry`` seconds. Keep-alive 0 disables the keep-alive check,
    as MQTT specifies.

    With ``tls`` (a server-side `ssl.SSLContext`) it also listens on ``tls_port`` for MQTT over
    TLS (0 picks a free port: read `tls_port` once started); a TLS handshake must finish within
    ``connect_timeout`` seconds, and a client that fails it is closed before it counts as a
    connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        authenticator: Authenticator,
        events: BrokerEvents,
        *,
        max_connections: int = 10_000,
        connect_timeout: float = 10.0,
        auth_timeout: float = 10.0,
        max_packet_size: int = 64 * 1024,
        event_queue_limit: int = 10_000,
        session_expiry: int = 3600,
        shutdown_timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        tls_port: int = 8883,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._tls = tls
        self._requested_tls_port = tls_port
        self._authenticator = authenticator
        self._events = events
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self.max_packet_size = max_packet_size
        self.event_queue_limit = event_queue_limit
        self.session_expiry = session_expiry
        self.shutdown_timeout = shutdown_timeout
        self._stats = BrokerStats()
        self._connections: dict[_Connection, asyncio.Task[None]] = {}
        self._by_did: dict[str, _Connection] = {}
        self._by_client: dict[str, _Connection] = {}
        self._handing_over: dict[str, _Connection] = {}
        self._queue: asyncio.Queue[tuple[Any, tuple[Any, ...]] | None] = asyncio.Queue()
        self._failing_callbacks: set[str] = set()
        self._at_capacity = False
        self._shedding = False
        self._auth_failing = False
        self._amqtt: Any = None
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._delivering: dict[int, int] = {}  # id(handler) -> its deliveries through amqtt
        self._dispatcher: asyncio.Task[None] | None = None
        self._stack = AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise RuntimeError("an EmbeddedBroker can be started only once")
        self._loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
            self._dispatcher = self._tasks.create_task(
                self._dispatch_events(), name="mqtt-broker-events"
            )
            stack.push_async_callback(self._stop_dispatcher)
            self._amqtt = _AmqttBroker(self._amqtt_config(), self)
            await self._amqtt.start()
            stack.push_async_callback(self._amqtt.shutdown)
            self._server = await asyncio.start_server(
                self._accept, self.host, self._requested_port, reuse_address=True, backlog=1024
            )
            stack.push_async_callback(self._close_connections)
            if self._tls is not None:
                self._tls_server = await asyncio.start_server(
                    self._accept,
                    self.host,
                    self._requested_tls_port,
                    ssl=self._tls,
                    ssl_handshake_timeout=self.connect_timeout,
                    reuse_address=True,
                    backlog=1024,
                )
            self._stack = stack.pop_all()
        log.info("MQTT broker listening on %s:%d", self.host, self.port)
        if self._tls_server is not None:
            log.info("MQTT over TLS listening on %s:%d", self.host, self.tls_port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("MQTT broker stopped")

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (the real one when started with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The port of MQTT over TLS (the real one when started with port 0); None without
        TLS."""
        if self._tls is None:
            return None
        if self._tls_server is None or not self._tls_server.sockets:
            return self._requested_tls_port
        return int(self._tls_server.sockets[0].getsockname()[1])

    def _amqtt_config(self) -> Any:
        plugin = f"{_AmqttHooks.__module__}.{_AmqttHooks.__qualname__}"
        return BrokerConfig(
            listeners={_LISTENER: ListenerConfig(type=ListenerType.EXTERNAL, bind="external")},
            plugins={plugin: {"broker": self}},
            session_expiry_interval=self.session_expiry,
        )

    async def _close_connections(self) -> None:
        """Stop accepting, close every connection and wait for their sessions to end."""
        listeners = [server for server in (self._server, self._tls_server) if server is not None]
        for server in listeners:
            server.close()
        for connection in list(self._connections):
            connection.abort(DisconnectReason.SHUTDOWN)
        pending = list(self._connections.values())
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=self.shutdown_timeout)
            for task in stuck:
                task.cancel()
        for server in listeners:
            await server.wait_closed()

    async def _stop_dispatcher(self) -> None:
        """Deliver the queued events (bounded by ``shutdown_timeout``), then end the dispatcher."""
        self._queue.put_nowait(None)
        if self._dispatcher is None:
            return
        done, _ = await asyncio.wait({self._dispatcher}, timeout=self.shutdown_timeout)
        if not done:
            log.warning("MQTT broker stopped with %d undelivered events", self._queue.qsize())
            self._dispatcher.cancel()

    # -- BrokerAdapter -----------------------------------------------------------------------

    @property
    def stats(self) -> BrokerStats:
        """Live counters (see `BrokerStats`)."""
        return self._stats

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Route ``payload`` to the devices subscribed to ``topic`` (see `BrokerAdapter.publish`).

        When every subscriber is connected, the message goes straight to their connections (a
        few table lookups); otherwise (an offline persistent session may need it queued) through
        amqtt's routing, which scans all subscriptions.

        ``retain`` is refused with ``ValueError``: amqtt replays a retained message to every
        client connecting while any client has a matching subscription, bypassing the ACL.
        """
        if self._amqtt is None or self._server is None or not self._server.is_serving():
            raise RuntimeError("the MQTT broker is not running")
        if not is_cloud_topic(topic):
            raise ValueError(f"not a valid MQTT topic name: {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        if retain:
            raise ValueError("the embedded broker does not keep retained messages")
        data = bytes(payload)
        handlers = self._amqtt.connected_subscribers(topic)
        if handlers is None:
            await self._amqtt.internal_message_broadcast(topic, data, qos)
            return
        assert self._tasks is not None
        packet = _publish_packet(topic, data) if qos == 0 else None
        for handler in handlers:
            if packet is not None and self._write_now(handler, packet):
                continue
            key = id(handler)
            self._delivering[key] = self._delivering.get(key, 0) + 1
            self._tasks.create_task(self._deliver(handler, topic, data, qos))

    def _write_now(self, handler: Any, packet: bytes) -> bool:
        """Write a QoS 0 PUBLISH ``packet`` to the handler's connection at once, as amqtt would
        (a QoS 0 PUBLISH has no flow): only when nothing is on its way to it through amqtt (so
        messages keep their order) and its send buffer is short; False otherwise."""
        connection = handler.writer
        if (
            not isinstance(connection, _Connection)
            or id(handler) in self._delivering
            or handler._write_lock.locked()
            or connection.is_closing()
            or connection.writer.transport.get_write_buffer_size() >= _DIRECT_WRITE_LIMIT
        ):
            return False
        connection.write(packet)
        return True

    async def _deliver(self, handler: Any, topic: str, data: bytes, qos: int) -> None:
        try:
            await handler.mqtt_publish(topic, data, qos, False)
        except Exception as exc:  # the device went away or did not acknowledge in time
            log.debug("PUBLISH on %s not delivered: %r", topic, exc)
        finally:
            key = id(handler)
            left = self._delivering.pop(key, 1) - 1
            if left:
                self._delivering[key] = left

    async def disconnect_device(self, did: str) -> bool:
        """Close the device's connection and wait for its session to end (see `BrokerAdapter`)."""
        connection = self._by_did.get(did)
        if connection is None:
            return False
        connection.abort(DisconnectReason.KICKED)
        with suppress(TimeoutError):
            async with asyncio.timeout(self.shutdown_timeout):
                await connection.wait_done()
        return True

    def connected_dids(self) -> set[str]:
        """The dids with a session now (CONNACK sent, not yet ended)."""
        return {did for did, connection in self._by_did.items() if connection.online}

    async def devices_changed(self, credentials: Sequence[DeviceCredential]) -> None:
        """Close the sessions of devices no longer enabled (credentials are checked per
        CONNECT, so nothing else needs doing)."""
        for credential in credentials:
            if not credential.enabled:
                await self.disconnect_device(credential.did)

    # -- connection lifecycle ----------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            self._stats.rejected_connections += 1
            writer.transport.abort()
            if not self._at_capacity:
                self._at_capacity = True
                log.warning(
                    "MQTT broker at capacity (%d connections), refusing new ones",
                    self.max_connections,
                )
            return
        if self._at_capacity:
            self._at_capacity = False
            log.info("MQTT broker below capacity again, accepting connections")
        assert self._loop is not None
        assert self._tasks is not None
        connection = _Connection(self, self._loop, reader, writer)
        self._connections[connection] = self._tasks.create_task(
            self._serve(connection), name=f"mqtt {connection.peer}"
        )

    async def _run_session(self, connection: _Connection) -> None:
        """amqtt's session of ``connection``, to its end.

        amqtt ends a session when its reader stops, but misses a stream that ended before its
        handler started waiting for that (e.g. a malformed packet sent with the CONNECT): the
        session would stay "connected" for good. So once the stream has ended, amqtt gets a
        second to notice, and is then told itself. Costs nothing while the stream is open.
        """
        session = asyncio.ensure_future(
            self._amqtt.external_connected(connection, connection, _LISTENER)
        )
        await asyncio.wait({session, connection.ended}, return_when=asyncio.FIRST_COMPLETED)
        if not session.done():
            await asyncio.wait({session}, timeout=1.0)
        if not session.done():
            entry = self._amqtt.sessions.get(connection.client_id)
            if entry is not None and entry[1].writer is connection:
                await entry[1].handle_connection_closed()
            await asyncio.wait({session}, timeout=self.shutdown_timeout)
            if not session.done():
                log.warning("MQTT session of %s did not end with its stream", connection.peer)
                session.cancel()
                await asyncio.gather(session, return_exceptions=True)
                return
        await session

    async def _serve(self, connection: _Connection) -> None:
        try:
            if await self._admit(connection):
                await self._take_over(connection)
                if connection.close_reason is None:
                    self._handing_over[connection.client_id] = connection
                    connection.start_keepalive()
                    await self._run_session(connection)
        except Exception:  # one connection must never take the broker down
            log.exception("MQTT connection from %s failed", connection.peer)
        finally:
            await self._finish(connection)

    async def _admit(self, connection: _Connection) -> bool:
        """Read and check the CONNECT and authenticate; on success the connection may proceed."""
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    packet = await _read_connect(connection.reader, self.max_packet_size)
            except (TimeoutError, OSError, EOFError) as exc:
                raise _Refused(None, f"no CONNECT ({type(exc).__name__})") from exc
            principal = await self._authenticate(packet)
        except _Refused as refused:
            if refused.code in (None, _UNACCEPTABLE_PROTOCOL, _SERVER_UNAVAILABLE):
                self._stats.rejected_connections += 1
            log.debug("MQTT CONNECT from %s refused: %s", connection.peer, refused)
            if refused.code is not None:
                connection.send_connack_refusal(refused.code)
            return False
        level = _PROTOCOL_LEVELS[packet.proto_name, packet.proto_level]
        connection.admitted(principal, packet.client_id, packet.keep_alive, level)
        header = packet.variable_header
        header.proto_name, header.proto_level, header.keep_alive = "MQTT", 4, 0
        header.will_retain_flag = False
        connection.prefix = packet.to_bytes()
        return True

    async def _authenticate(self, packet: Any) -> DevicePrincipal:
        """Apply the protocol and identity rules, then the `Authenticator`; raise `_Refused`."""
        header = packet.variable_header
        if (header.proto_name, header.proto_level) not in _PROTOCOL_LEVELS:
            known_name = header.proto_name in ("MQTT", "MQIsdp")
            raise _Refused(
                _UNACCEPTABLE_PROTOCOL if known_name else None,
                f"protocol {header.proto_name!r} level {header.proto_level}",
            )
        if header.reserved_flag:
            raise _Refused(None, "reserved CONNECT flag set")
        if not header.will_flag and (header.will_qos or header.will_retain_flag):
            raise _Refused(None, "will QoS or will retain set without the will flag")
        if header.will_qos == 3:
            raise _Refused(None, "will QoS 3")
        client_id = "" if packet.payload.client_id_is_random else packet.client_id or ""
        username = packet.username if header.username_flag else None
        password = packet.password if header.password_flag else None
        if username is None or password is None:
            self._stats.auth_failures += 1
            raise _Refused(AuthRefusal.BAD_CREDENTIALS, "no user name or password")
        if not client_id or (client_id != username and not username.startswith(client_id + ";")):
            self._stats.auth_failures += 1
            raise _Refused(_IDENTIFIER_REJECTED, "client id is not the user name")
        try:
            async with asyncio.timeout(self.auth_timeout):
                result = await self._authenticator.authenticate(client_id, username, password)
        except Exception as exc:
            if not self._auth_failing:
                self._auth_failing = True
                log.exception("MQTT authentication failed; refusing devices until it recovers")
            raise _Refused(_SERVER_UNAVAILABLE, "authenticator failed") from exc
        if self._auth_failing:
            self._auth_failing = False
            log.info("MQTT authentication recovered")
        if not isinstance(result, DevicePrincipal):
            self._stats.auth_failures += 1
            code = AuthRefusal.BAD_CREDENTIALS if result is None else result
            raise _Refused(int(code), f"device {client_id} refused: {code.name}")
        if result.client_id != client_id:
            log.error("authenticator returned device %s for client id %s", result.did, client_id)
            raise _Refused(AuthRefusal.NOT_AUTHORIZED, "principal does not match the client id")
        if header.will_flag and not may_publish(result, packet.will_topic or ""):
            self._stats.auth_failures += 1
            raise _Refused(AuthRefusal.NOT_AUTHORIZED, f"will topic {packet.will_topic!r}")
        return result

    async def _take_over(self, connection: _Connection) -> None:
        """Make ``connection`` the device's only one: close the previous and wait for its end."""
        did = connection.did
        previous = self._by_did.get(did)
        self._by_did[did] = connection
        self._by_client[connection.client_id] = connection
        if previous is not None:
            log.info(
                "device %s reconnected from %s, closing its session from %s",
                did,
                connection.peer,
                previous.peer,
            )
            previous.abort(DisconnectReason.TAKEOVER)
            with suppress(TimeoutError):
                async with asyncio.timeout(self.shutdown_timeout):
                    await previous.wait_done()

    async def _finish(self, connection: _Connection) -> None:
        """Close the socket and release everything; report the end of an online session once."""
        connection.stop_keepalive()
        if not connection.is_closing():
            # amqtt gave up on the session without closing it (e.g. a PUBLISH to "a/+")
            if connection.online and connection.close_reason is None:
                connection.close_reason = DisconnectReason.PROTOCOL_ERROR
            connection.abort(connection.close_reason or DisconnectReason.LOST)
        else:
            connection.abort_later(self.connect_timeout)
        if self._handing_over.get(connection.client_id) is connection:
            del self._handing_over[connection.client_id]
        entry = self._amqtt.sessions.get(connection.client_id) if connection.client_id else None
        if entry is not None and entry[1].writer is connection:
            # amqtt leaves a session "connected" when it refused it or gave up on it
            session = entry[0]
            if session.transitions.is_connected():
                session.transitions.disconnect()
        if connection.online:
            # amqtt reports PUBLISHes through already-scheduled event tasks; let them run first so
            # that this session's on_publish events precede its on_disconnect.
            await asyncio.sleep(0)
            reason = connection.end_reason()
            log.debug("device %s disconnected: %s", connection.did, reason)
            self._emit(
                self._events.on_disconnect,
                (connection.principal, connection.client_id, reason),
                droppable=False,
            )
        if self._by_did.get(connection.did) is connection:
            del self._by_did[connection.did]
        if self._by_client.get(connection.client_id) is connection:
            del self._by_client[connection.client_id]
        self._connections.pop(connection, None)
        connection.set_done()

    def _went_online(self, connection: _Connection) -> None:
        self._stats.connects += 1
        log.debug(
            "device %s connected from %s (MQTT %s, keep-alive %ds)",
            connection.did,
            connection.peer,
            "3.1" if connection.level == 3 else "3.1.1",
            connection.keepalive,
        )
        self._emit(
            self._events.on_connect,
            (connection.principal, connection.client_id, connection.keepalive, connection.peer),
            droppable=False,
        )

    # -- amqtt plugin hooks ------------------------------------------------------------------

    def _bind_session(self, session: Any) -> bool:
        """amqtt's authentication step: accept only connections this broker admitted.

        Keyed by client id, not peer address: amqtt keeps the first connection's address on a
        resumed (clean session 0) session.
        """
        connection = self._handing_over.pop(session.client_id, None)
        if connection is None or connection.close_reason is not None:
            return False
        session.attributes[_PRINCIPAL_KEY] = connection.principal
        return True

    def _check_topic(self, session: Any, topic: str | None, action: Any) -> bool:
        """amqtt's topic check for PUBLISH, SUBSCRIBE and delivery (RECEIVE)."""
        principal = session.attributes.get(_PRINCIPAL_KEY) if session is not None else None
        if principal is None or topic is None:
            return False
        if action == Action.RECEIVE:
            return True
        if action == Action.PUBLISH:
            if may_publish(principal, topic):
                self._stats.messages_in += 1
                return True
            self._stats.denied_publish += 1
            denied = AclAction.PUBLISH
        elif action == Action.SUBSCRIBE:
            if may_subscribe(principal, topic):
                return True
            self._stats.denied_subscribe += 1
            denied = AclAction.SUBSCRIBE
        else:
            return False
        log.debug("device %s may not %s %s", principal.did, denied, topic)
        self._emit(self._events.on_denied, (principal, denied, topic), droppable=True)
        return False

    def _message_routed(self, client_id: str, topic: str, data: bytes | bytearray) -> None:
        """amqtt accepted an (ACL-allowed) PUBLISH from ``client_id`` for routing."""
        connection = self._by_client.get(client_id)
        if connection is None or connection.principal is None:
            log.debug(
                "PUBLISH from %s on %s after its session ended; not reported", client_id, topic
            )
            return
        self._emit(
            self._events.on_publish, (connection.principal, topic, bytes(data)), droppable=True
        )

    # -- events ------------------------------------------------------------------------------

    def _emit(self, callback: Any, args: tuple[Any, ...], *, droppable: bool) -> None:
        size = self._queue.qsize()
        if droppable and size >= self.event_queue_limit:
            self._stats.events_dropped += 1
            if not self._shedding:
                self._shedding = True
                log.warning("MQTT event queue full (%d); dropping device messages", size)
            return
        if self._shedding and size < self.event_queue_limit // 2:
            self._shedding = False
            log.info("MQTT event queue drained; delivering device messages again")
        self._queue.put_nowait((callback, args))

    async def _dispatch_events(self) -> None:
        """Await the `BrokerEvents` callbacks one at a time, in order, until the sentinel."""
        while (item := await self._queue.get()) is not None:
            callback, args = item
            name = callback.__name__
            try:
                await callback(*args)
            except Exception:
                if name not in self._failing_callbacks:
                    self._failing_callbacks.add(name)
                    log.exception("MQTT event handler %s failed; logging its recovery only", name)
                continue
            if name in self._failing_callbacks:
                self._failing_callbacks.discard(name)
                log.info("MQTT event handler %s recovered", name)


class _Connection:
    """One device TCP connection: amqtt's reader and writer adapter, keep-alive and framing.

    amqtt reads packets field by field through `read`; the framing state below follows the
    packet boundaries in those bytes (type byte, remaining-length varint, body).
    """

    __slots__ = (
        "_broker",
        "_done",
        "_ended",
        "_frame_kind",
        "_frame_length",
        "_frame_multiplier",
        "_frame_remaining",
        "_frame_state",
        "_loop",
        "_timer",
        "_topic",
        "client_id",
        "close_reason",
        "keepalive",
        "last_received",
        "level",
        "online",
        "peer",
        "peer_key",
        "prefix",
        "principal",
        "reader",
        "saw_disconnect",
        "writer",
    )

    def __init__(
        self,
        broker: EmbeddedBroker,
        loop: asyncio.AbstractEventLoop,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._broker = broker
        self._loop = loop
        self.reader = reader
        self.writer = writer
        peername = writer.get_extra_info("peername") or ("?", 0)
        self.peer_key: tuple[str, int] = (str(peername[0]), int(peername[1]))
        host = self.peer_key[0]
        self.peer = f"[{host}]:{self.peer_key[1]}" if ":" in host else f"{host}:{self.peer_key[1]}"
        self.principal: DevicePrincipal | None = None
        self.client_id = ""
        self.keepalive = 0
        self.level = 0
        self.prefix = b""
        self.online = False
        self.close_reason: DisconnectReason | None = None
        self.saw_disconnect = False
        self.last_received = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Event | None = None
        self._ended: asyncio.Future[None] = loop.create_future()
        self._frame_state = _AT_TYPE
        self._frame_length = 0
        self._frame_multiplier = 1
        self._frame_remaining = 0
        self._frame_kind = 0
        self._topic: bytearray | None = None

    @property
    def did(self) -> str:
        return self.principal.did if self.principal is not None else ""

    def admitted(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, level: int
    ) -> None:
        self.principal, self.client_id, self.keepalive, self.level = (
            principal,
            client_id,
            keepalive,
            level,
        )
        self.last_received = self._loop.time()

    def end_reason(self) -> DisconnectReason:
        if self.close_reason is not None:
            return self.close_reason
        return DisconnectReason.CLEAN if self.saw_disconnect else DisconnectReason.LOST

    # -- ending ------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.writer.transport.is_closing()

    def abort(self, reason: DisconnectReason) -> None:
        """Close the socket now, without flushing (the peer may be gone); first reason wins."""
        if self.close_reason is None and not self.is_closing():
            self.close_reason = reason
        self.writer.transport.abort()
        self._end()

    @property
    def ended(self) -> asyncio.Future[None]:
        """Done once the stream has ended: aborted, or end of file or an error when reading."""
        return self._ended

    def _end(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    def abort_later(self, delay: float) -> None:
        """Make sure a closing socket is gone after ``delay`` even if the peer stops reading."""
        if self.writer.transport.get_write_buffer_size():
            self._loop.call_later(delay, self.writer.transport.abort)

    def send_connack_refusal(self, code: int) -> None:
        self.writer.write(bytes((_CONNACK << 4, 2, 0, code)))
        self.writer.close()

    async def wait_done(self) -> None:
        """Wait until the broker finished with this connection (its session ended)."""
        if self._done is None:
            self._done = asyncio.Event()
        await self._done.wait()

    def set_done(self) -> None:
        if self._done is None:
            self._done = asyncio.Event()
        self._done.set()

    # -- keep-alive --------------------------------------------------------------------------

    def start_keepalive(self) -> None:
        if self.keepalive > 0:
            self._timer = self._loop.call_later(self.keepalive * 1.5, self._check_keepalive)

    def stop_keepalive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_keepalive(self) -> None:
        limit = self.keepalive * 1.5
        idle = self._loop.time() - self.last_received
        if idle >= limit:
            self._timer = None
            log.debug(
                "device %s silent for %.1fs (keep-alive %ds), closing",
                self.did,
                idle,
                self.keepalive,
            )
            self.abort(DisconnectReason.KEEPALIVE_TIMEOUT)
        else:
            self._timer = self._loop.call_later(limit - idle, self._check_keepalive)

    # -- amqtt ReaderAdapter -----------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        if self.prefix:
            chunk = self.prefix if n < 0 else self.prefix[:n]
            self.prefix = self.prefix[len(chunk) :]
            return chunk
        try:
            data = await (self.reader.read(n) if n < 0 else self.reader.readexactly(n))
        except BaseException:
            self._end()
            raise
        if not data:
            self._end()
        self.last_received = self._loop.time()
        return self._follow_frames(data)

    def feed_eof(self) -> None:
        self.reader.feed_eof()

    def _follow_frames(self, data: bytes) -> bytes:
        """Follow the packet boundaries through ``data``, the bytes amqtt just read.

        Clears the RETAIN bit of PUBLISH and notes DISCONNECT. Closes the connection on what
        would desynchronise amqtt's parser (it skips a packet it cannot parse and reads on from
        the middle of it) or make it buffer without bound: an oversized or malformed length, a
        second CONNECT or a reserved type, a PUBLISH whose topic has a wildcard or overruns it.
        """
        index, size = 0, len(data)
        while index < size:
            if self._frame_state == _IN_BODY:
                if self._topic is not None:
                    index = self._follow_topic(data, index)
                else:
                    step = min(self._frame_remaining, size - index)
                    self._frame_remaining -= step
                    index += step
                if not self._frame_remaining:
                    self._frame_state = _AT_TYPE
            elif self._frame_state == _AT_TYPE:
                first = data[index]
                kind = first >> 4
                if kind == _PUBLISH and first & 0x01:
                    data = data[:index] + bytes((first & 0xFE,)) + data[index + 1 :]
                elif kind == _DISCONNECT:
                    self.saw_disconnect = True
                elif kind in _FORBIDDEN_AFTER_CONNECT:
                    self._protocol_error(f"packet type {kind}")
                if kind == _PUBLISH:
                    if (first >> 1) & 0x3 == 3:
                        self._protocol_error("PUBLISH with QoS 3")
                elif kind not in _CLIENT_PACKETS:
                    self._protocol_error(f"packet type {kind} from a client")
                elif first & 0x0F != _CLIENT_PACKETS[kind][0]:
                    self._protocol_error(f"flags {first & 0x0F:#x} on packet type {kind}")
                self._frame_kind, self._frame_state = kind, _IN_LENGTH
                self._frame_length, self._frame_multiplier = 0, 1
                index += 1
            else:
                byte = data[index]
                index += 1
                self._frame_length += (byte & 0x7F) * self._frame_multiplier
                self._frame_multiplier *= 128
                if byte & 0x80 and self._frame_multiplier <= 128**3:
                    continue
                length = self._frame_length
                if byte & 0x80 or length > self._broker.max_packet_size:
                    self._protocol_error(f"{length} byte packet")
                publish = self._frame_kind == _PUBLISH
                wanted = _CLIENT_PACKETS.get(self._frame_kind, (0, None))[1]
                if wanted is not None and length != wanted:
                    self._protocol_error(f"{length} byte packet of type {self._frame_kind}")
                if publish and length < 2:
                    self._protocol_error("PUBLISH without topic")
                self._topic = bytearray() if publish else None
                self._frame_remaining = length
                self._frame_state = _IN_BODY if length else _AT_TYPE
        return data

    def _follow_topic(self, data: bytes, index: int) -> int:
        """Collect a PUBLISH topic (2-byte length, then the name); return the new index."""
        topic = self._topic
        assert topic is not None
        wanted = 2 if len(topic) < 2 else 2 + int.from_bytes(topic[:2], "big")
        step = min(wanted - len(topic), len(data) - index)
        topic += data[index : index + step]
        self._frame_remaining -= step
        if len(topic) >= 2:
            name_length = int.from_bytes(topic[:2], "big")
            if len(topic) == 2 and name_length > self._frame_remaining:
                self._protocol_error("PUBLISH topic longer than the packet")
            if len(topic) == 2 + name_length:
                if b"+" in topic[2:] or b"#" in topic[2:]:
                    self._protocol_error("wildcard in a PUBLISH topic")
                self._topic = None
        return index + step

    def _protocol_error(self, what: str) -> NoReturn:
        """Close the connection; amqtt reads the reset as the end of the stream."""
        log.info("device %s broke the protocol (%s), closing", self.did, what)
        self.abort(DisconnectReason.PROTOCOL_ERROR)
        raise ConnectionResetError(what)

    # -- amqtt WriterAdapter -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.is_closing():
            return
        kind = data[0] >> 4
        if kind == _PUBLISH:
            self._broker.stats.messages_out += 1
        elif kind == _CONNACK and not self.online and len(data) == 4:
            if self.level == 3 and data[2]:
                data = data[:2] + b"\x00" + data[3:]  # MQTT 3.1 has no session-present flag
            if data[3] == 0:
                self.online = True
                self._broker._went_online(self)
        self.writer.write(data)

    async def drain(self) -> None:
        if not self.is_closing():
            await self.writer.drain()

    def get_peer_info(self) -> tuple[str, int]:
        return self.peer_key

    def get_ssl_info(self) -> ssl.SSLObject | None:
        ssl_object: ssl.SSLObject | None = self.writer.get_extra_info("ssl_object")
        return ssl_object

    async def close(self) -> None:
        self.writer.close()


async def _read_connect(reader: asyncio.StreamReader, max_size: int) -> Any:
    """Read the first packet, which must be a CONNECT of at most ``max_size`` bytes.

    Parsed with amqtt's CONNECT codec; the protocol is checked by the caller. Raises `_Refused`
    (close without CONNACK) for anything else.
    """
    first = (await reader.readexactly(1))[0]
    if first != _CONNECT << 4:
        raise _Refused(None, f"first packet type byte is {first:#04x}, not CONNECT")
    length, multiplier = 0, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            break
        multiplier *= 128
        if multiplier > 128**3:
            raise _Refused(None, "malformed CONNECT length")
    if length > max_size:
        raise _Refused(None, f"CONNECT of {length} bytes")
    body = BufferReader(await reader.readexactly(length))
    fixed = MQTTFixedHeader(_CONNECT, 0, length)
    try:
        header = await ConnectVariableHeader.from_stream(body, fixed)
        if (header.proto_name, header.proto_level) not in _PROTOCOL_LEVELS:
            return ConnectPacket(fixed, header, ConnectPayload())
        payload = await ConnectPayload.from_stream(body, fixed, header)
    except Exception as exc:  # any decoding failure of untrusted bytes
        raise _Refused(None, f"malformed CONNECT ({exc!r})") from exc
    return ConnectPacket(fixed, header, payload)


class _SubscriptionTable(dict[str, list[tuple[Any, int]]]):
    """amqtt's subscription table (filter -> [(session, qos)]), with a constant-size repr.

    amqtt logs ``repr()`` of the whole table after every SUBSCRIBE, evaluated eagerly even when
    debug logging is off: O(all subscriptions) per SUBSCRIBE.
    """

    def __repr__(self) -> str:
        return f"<{len(self)} subscription filters>"


class _AmqttBroker(Broker):  # type: ignore[misc]
    """amqtt's Broker with its per-message and per-connect full scans avoided where possible.

    amqtt routes each message by scanning every subscription filter, and replays retained
    messages on each CONNECT by every filter of every client: O(devices) per operation. Here a
    message whose topic no subscription can match (the usual case: device reports go to
    ``dev2app/...``, which no device may subscribe to) is dropped before the scan, by looking up
    its few `matching_filters`; `connected_subscribers` finds the targets of the server's own
    messages the same way; and the replay is skipped while there are no retained messages,
    which this broker never keeps. The two overrides replace private amqtt methods; a contract
    test checks that they still exist with the same parameters.
    """

    def __init__(self, config: Any, adapter: EmbeddedBroker) -> None:
        super().__init__(config)
        self._subscriptions = _SubscriptionTable()
        self._adapter = adapter

    async def _topic_filtering(self, session: Any, topic: str | None, action: Any) -> bool:
        # `_AmqttHooks` is the only topic plugin: ask the adapter directly rather than through
        # amqtt's plugin manager, which spawns a task and a gather per PUBLISH.
        return self._adapter._check_topic(session, topic, action)

    def connected_subscribers(self, topic: str) -> list[Any] | None:
        """The protocol handlers of the sessions subscribed to ``topic``, once each.

        None when amqtt's own routing must decide: a subscribed session is offline (a
        persistent one queues QoS 1/2 messages) or the topic has too many levels to enumerate.
        """
        candidates = matching_filters(topic)
        if candidates is None:
            return None
        handlers: dict[int, Any] = {}
        for topic_filter in candidates:
            for session, _qos in self._subscriptions.get(topic_filter, ()):
                entry = self._sessions.get(session.client_id)
                if (
                    entry is None
                    or entry[0] is not session
                    or not session.transitions.is_connected()
                ):
                    return None
                handlers[id(session)] = entry[1]
        return list(handlers.values())

    async def _broadcast_message(
        self, session: Any, topic: str | None, data: Any, force_qos: int | None = None
    ) -> None:
        if session is not None and topic is not None and force_qos is None:
            # A client PUBLISH that passed the topic check (amqtt passes ``force_qos`` only for
            # a will, and no session for its own messages): report it here, synchronously,
            # instead of through a MESSAGE_BROADCAST plugin event, which costs a task per message.
            self._adapter._message_routed(session.client_id, topic, data)
        if topic is not None:
            candidates = matching_filters(topic)
            if candidates is not None and not any(map(self._subscriptions.get, candidates)):
                return
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        if self._retained_messages:
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _handle_message_delivery(
        self, client_session: Any, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        # amqtt closes the connection of a client publishing to a "$" topic (kept for Gizwits
        # devices), but a data-template device publishes on "$thing/up/...": its message
        # (already PUBACKed at QoS 1) goes through the ACL here and is reported, never routed
        # (no device may subscribe to "$thing/up" topics). A refused one is dropped and the
        # connection stays up, as for any other topic.
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        principal = client_session.attributes.get(_PRINCIPAL_KEY)
        thing = isinstance(principal, DevicePrincipal) and principal.thing
        if not thing or not isinstance(topic, str) or not topic.startswith("$"):
            return bool(
                await super()._handle_message_delivery(client_session, handler, wait_deliver)
            )
        if self._adapter._check_topic(client_session, topic, Action.PUBLISH):
            self._adapter._message_routed(client_session.client_id, topic, message.data)
        return True


@dataclass
class _HooksConfig:
    broker: Any = None


class _AmqttHooks(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """amqtt plugin forwarding authentication and topic checks to the broker (routed messages
    are reported by `_AmqttBroker._broadcast_message`)."""

    Config = _HooksConfig

    async def authenticate(self, *, session: Any) -> bool:
        broker: EmbeddedBroker = self.config.broker
        return broker._bind_session(session)

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        broker: EmbeddedBroker = self.config.broker
        return broker._check_topic(session, topic, action)
