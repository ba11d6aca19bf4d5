"""The embedded MQTT device transport: iotcloud terminates MQTT 3.1 and 3.1.1 itself.

In embedded mode no message goes from one device to another (the ACL lets a device publish only
to the cloud and subscribe only to what the cloud sends it), so there is no broker here: each
device connection is one `asyncio.Protocol` object that hands the device's PUBLISHes straight to
the gateway (`BrokerEvents`) and gets the cloud's messages written to its own socket. No task
runs per connection; a connection costs its protocol object, its session and the socket.

* **Admission.** The first packet must be a CONNECT (else the socket is closed without a word),
  of at most ``max_packet_size`` bytes, within ``connect_timeout`` seconds. MQTT 3.1 (``MQIsdp``
  level 3) and 3.1.1 (``MQTT`` level 4) are accepted; another level of those names gets CONNACK
  1. The client id must be the user name (a Gizwits device) or its first ``;``-separated field
  (a data-template device); then the `Authenticator` decides (CONNACK 4 or 5). Reading stops
  while it does, so what the device sent after its CONNECT is handled once it is online.
* **Packets** are cut and checked by `iotcloud.codecs.mqtt` (sans-I/O); a device that breaks the
  protocol is closed at once (`DisconnectReason.PROTOCOL_ERROR`) and may reconnect at once.
  PUBLISH QoS 0, 1 and 2 from devices (RETAIN ignored: nothing is kept), QoS 0 and 1 to them;
  SUBSCRIBE grants at most QoS 1, or 0x80 for a filter the ACL refuses; a Gizwits device
  publishing to a ``$`` topic is closed, as MQTT brokers do; a data-template device's
  ``$thing/up`` topics go through the ACL like any other.
* **Durability.** A QoS 1 PUBLISH is acknowledged when the awaitable that ``on_publish``
  returned completes, i.e. when the batch holding the report is committed; if it fails, there
  is no PUBACK and the connection is closed (`DisconnectReason.SERVER_ERROR`) so that the
  device sends it again. QoS 2 likewise, with PUBREC.
* **Backpressure.** ``backlog()`` says how many device messages the gateway holds uncommitted;
  with this transport's own undelivered events it is the *pressure*. When a packet brings it to
  ``pause_above``, that connection stops being read, with the rest of what it sent still
  buffered (TCP pushes back on the device; keep-alive does not count the pause against it).
  Once the pressure is under half of it, paused connections are taken back a slice per poll,
  longest-paused first, so the intake of one loop iteration stays bounded and HTTP keeps its
  turn. Past ``shed_above`` (reached only when the backlog grows on its own, e.g. a slow
  database), QoS 0 reports are dropped at the edge and counted (``stats.shed``); QoS 1 and 2
  ones, whose devices wait for the acknowledgement, are taken up to twice that, then refused
  (counted, connection closed).
* **Sessions.** A second CONNECT with the same client id closes the first connection
  (`DisconnectReason.TAKEOVER`). With clean session 0 the subscriptions and the QoS 1 messages
  not yet acknowledged (at most ``max_queued_messages``) outlive the connection for
  ``session_expiry`` seconds and are re-sent when the device comes back (CONNACK session present
  in 3.1.1; 3.1 has no such flag). A will is checked against the ACL at CONNECT and otherwise
  treated as the device going offline: ``on_disconnect`` is the only thing it causes.
* **Keep-alive** 1.5 x the device's value (0 disables it), counting whole packets; a device
  silent that long (or only dribbling bytes of one packet) is closed
  (`DisconnectReason.KEEPALIVE_TIMEOUT`).

With a TLS context the transport also listens on ``tls_port`` for MQTT over TLS; asyncio
terminates TLS and a connection whose handshake succeeded takes the same path as a plain one.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Any, Final, Self

from iotcloud.codecs.mqtt import (
    CONNECT_BYTE,
    DISCONNECT,
    IDENTIFIER_REJECTED,
    PINGREQ,
    PINGRESP_PACKET,
    PROTOCOL_LEVELS,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SERVER_UNAVAILABLE,
    SUBACK_FAILURE,
    SUBSCRIBE,
    UNACCEPTABLE_PROTOCOL,
    UNSUBACK,
    UNSUBSCRIBE,
    Connect,
    MqttProtocolError,
    PacketSplitter,
    Publish,
    UnacceptableProtocol,
    check_fixed_header,
    decode_connect,
    decode_packet_id,
    decode_publish,
    decode_subscribe,
    decode_unsubscribe,
    encode_ack,
    encode_connack,
    encode_publish,
    encode_suback,
    set_dup,
)
from iotcloud.gateway.broker import (
    AclAction,
    Authenticator,
    AuthRefusal,
    BrokerEvents,
    BrokerStats,
    DeviceCredential,
    DevicePrincipal,
    DisconnectReason,
    filter_prefix,
    is_cloud_topic,
    may_publish,
    may_subscribe,
    topic_matches,
    topic_prefixes,
)

log = logging.getLogger(__name__)

_CONNECTING, _AUTHENTICATING, _ONLINE, _CLOSED = 0, 1, 2, 3
_YIELD_EVERY: Final = 200
"""Events the dispatcher delivers before letting the event loop run other work."""
_PRESSURE_POLL: Final = 0.005
_RESUME_BATCH: Final = 64
"""Paused connections resumed per poll once the pressure is low: a fleet paused together is
taken back a slice at a time, so no loop iteration reads every socket at once."""
_SPARE_FILES: Final = 1_024
"""File descriptors beyond the device connections: database, listeners, HTTP clients."""


class _Refused(Exception):
    """Admission failed; ``code`` is the CONNACK return code to send, or None to just close."""

    def __init__(self, code: int | None, why: str) -> None:
        super().__init__(why)
        self.code = code


class _Session:
    """A client id's MQTT session: its subscriptions and unacknowledged QoS 1 messages."""

    __slots__ = (
        "clean",
        "client_id",
        "connection",
        "expiry",
        "inflight",
        "next_packet_id",
        "queue",
        "subscriptions",
    )

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.connection: _DeviceConnection | None = None
        self.subscriptions: dict[str, int] = {}
        self.inflight: dict[int, bytes] = {}
        self.queue: deque[tuple[str, bytes]] = deque()
        self.next_packet_id = 0
        self.expiry: asyncio.TimerHandle | None = None

    def _packet_id(self) -> int:
        while True:
            self.next_packet_id = self.next_packet_id % 0xFFFF + 1
            if self.next_packet_id not in self.inflight:
                return self.next_packet_id

    def deliver(self, topic: str, data: bytes, qos: int, limit: int) -> bool:
        """Send or keep one message; False if it was dropped."""
        connection = self.connection
        if not qos:
            if connection is None or not connection.writable:
                return False
            connection.write(encode_publish(topic, data))
            return True
        if connection is not None and connection.writable and len(self.inflight) < limit:
            packet_id = self._packet_id()
            packet = encode_publish(topic, data, 1, packet_id)
            self.inflight[packet_id] = packet
            connection.write(packet)
            return True
        if len(self.queue) >= limit:
            self.queue.popleft()
            self.queue.append((topic, data))
            return False
        self.queue.append((topic, data))
        return True

    def flush(self, limit: int) -> None:
        """Send what was kept while the connection was away or not writable."""
        connection = self.connection
        while (
            self.queue
            and connection is not None
            and connection.writable
            and len(self.inflight) < limit
        ):
            topic, data = self.queue.popleft()
            packet_id = self._packet_id()
            packet = encode_publish(topic, data, 1, packet_id)
            self.inflight[packet_id] = packet
            connection.write(packet)

    def resend(self) -> None:
        """Re-send the unacknowledged messages to a returning device (DUP set)."""
        connection = self.connection
        if connection is not None:
            for packet in self.inflight.values():
                connection.write(set_dup(packet))


class EmbeddedBroker:
    """A `BrokerAdapter` terminating MQTT for devices in the current event loop.

    ``port`` 0 picks a free port (read it from `port` once started). Single use: enter it once,
    and leave it from the same task.

    Limits: ``max_connections`` TCP connections (more are closed at once and counted in
    ``stats.rejected_connections``); a CONNECT must arrive within ``connect_timeout`` seconds and
    the `Authenticator` must answer within ``auth_timeout``; a packet larger than
    ``max_packet_size`` closes the connection; at most ``event_queue_limit`` undelivered
    ``on_denied`` events (more are dropped and counted; presence events are never dropped);
    backpressure and shedding as the module docstring says (``shed_above`` defaults to
    ``event_queue_limit``). Offline persistent sessions (clean session 0) are forgotten after
    ``session_expiry`` seconds.

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
        backlog: Callable[[], int] | None = None,
        pause_above: int = 4_000,
        shed_above: int | None = None,
        max_queued_messages: int = 1_000,
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
        self.pause_above = pause_above
        self.shed_above = event_queue_limit if shed_above is None else shed_above
        self.max_queued_messages = max_queued_messages
        self._backlog = backlog
        self._stats = BrokerStats()
        self._connections: set[_DeviceConnection] = set()
        self._open_transports = 0
        self._transports_gone: asyncio.Event | None = None
        self._online: dict[str, _DeviceConnection] = {}
        self._by_did: dict[str, _DeviceConnection] = {}
        self._sessions: dict[str, _Session] = {}
        self._index: dict[str, set[_Session]] = {}
        self._queue: deque[tuple[Any, tuple[Any, ...], _DeviceConnection | None, int, int]] = (
            deque()
        )
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._paused: dict[_DeviceConnection, None] = {}  # in the order they were paused
        self._pressure_timer: asyncio.TimerHandle | None = None
        self._failing_callbacks: set[str] = set()
        self._at_capacity = False
        self._shedding = False
        self._auth_failing = False
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._stack = AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise RuntimeError("an EmbeddedBroker can be started only once")
        self._loop = loop = asyncio.get_running_loop()
        _raise_open_file_limit(self.max_connections + _SPARE_FILES)
        async with AsyncExitStack() as stack:
            self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
            self._dispatcher = self._tasks.create_task(
                self._dispatch_events(), name="mqtt-device-events"
            )
            stack.push_async_callback(self._stop_dispatcher)
            self._server = await loop.create_server(
                self._new_connection,
                self.host,
                self._requested_port,
                reuse_address=True,
                backlog=4096,
            )
            stack.push_async_callback(self._close_connections)
            if self._tls is not None:
                self._tls_server = await loop.create_server(
                    self._new_connection,
                    self.host,
                    self._requested_tls_port,
                    ssl=self._tls,
                    ssl_handshake_timeout=self.connect_timeout,
                    reuse_address=True,
                    backlog=4096,
                )
            self._stack = stack.pop_all()
        log.info("MQTT device transport listening on %s:%d", self.host, self.port)
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
        log.info("MQTT device transport stopped")

    @property
    def port(self) -> int:
        """The TCP port it listens on (the real one when started with port 0)."""
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

    def unready_reason(self) -> str | None:
        if self._server is None or not self._server.is_serving():
            return "the MQTT device transport is not listening"
        return None

    @property
    def connection_count(self) -> int:
        """TCP connections open now (admitted or not)."""
        return len(self._connections)

    async def _close_connections(self) -> None:
        """Stop accepting, close every connection and wait until their sockets are gone."""
        listeners = [server for server in (self._server, self._tls_server) if server is not None]
        for server in listeners:
            server.close()
        for connection in list(self._connections):
            connection.close(DisconnectReason.SHUTDOWN)
        if self._pressure_timer is not None:
            self._pressure_timer.cancel()
        for session in list(self._sessions.values()):
            if session.expiry is not None:
                session.expiry.cancel()
        if self._open_transports:
            self._transports_gone = asyncio.Event()
            try:
                async with asyncio.timeout(self.shutdown_timeout):
                    await self._transports_gone.wait()
            except TimeoutError:
                log.warning("%d device sockets did not close in time", self._open_transports)
        for server in listeners:
            await server.wait_closed()

    async def _stop_dispatcher(self) -> None:
        """Deliver the queued events (bounded by ``shutdown_timeout``), then end the dispatcher."""
        self._stopping = True
        self._wakeup.set()
        if self._dispatcher is None:
            return
        done, _ = await asyncio.wait({self._dispatcher}, timeout=self.shutdown_timeout)
        if not done:
            log.warning("MQTT transport stopped with %d undelivered events", len(self._queue))
            self._dispatcher.cancel()

    # -- BrokerAdapter -----------------------------------------------------------------------

    @property
    def stats(self) -> BrokerStats:
        """Live counters (see `BrokerStats`)."""
        return self._stats

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Write ``payload`` to the devices subscribed to ``topic`` (see `BrokerAdapter.publish`).

        Delivered at the lower of ``qos`` and the subscription's QoS (at most 1). A device with
        a persistent session that is away keeps QoS 1 messages until it returns. ``retain`` is
        refused with ``ValueError``: this transport keeps no retained messages.
        """
        if self._server is None or not self._server.is_serving():
            raise RuntimeError("the MQTT device transport is not running")
        if not is_cloud_topic(topic):
            raise ValueError(f"not a valid MQTT topic name: {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        if retain:
            raise ValueError("the embedded transport does not keep retained messages")
        data = bytes(payload)
        for session, granted in self._subscribers(topic).items():
            if session.deliver(topic, data, min(qos, granted, 1), self.max_queued_messages):
                if session.connection is not None:
                    self._stats.messages_out += 1
            else:
                log.debug("message on %s for %s dropped", topic, session.client_id)

    def _subscribers(self, topic: str) -> dict[_Session, int]:
        """Each session with a filter matching ``topic``, with the highest QoS it was granted."""
        found: dict[_Session, int] = {}
        for prefix in topic_prefixes(topic):
            for session in self._index.get(prefix, ()):
                for topic_filter, granted in session.subscriptions.items():
                    if granted > found.get(session, -1) and topic_matches(topic_filter, topic):
                        found[session] = granted
        return found

    async def disconnect_device(self, did: str) -> bool:
        """Close the device's connection (see `BrokerAdapter`); its session ends at once."""
        connection = self._by_did.get(did)
        if connection is None:
            return False
        connection.close(DisconnectReason.KICKED)
        return True

    def connected_dids(self) -> set[str]:
        """The dids with a session now (CONNACK sent, not yet ended)."""
        return set(self._by_did)

    async def devices_changed(self, credentials: Sequence[DeviceCredential]) -> None:
        """Close the sessions of devices no longer enabled (credentials are checked per
        CONNECT, so nothing else needs doing)."""
        for credential in credentials:
            if not credential.enabled:
                await self.disconnect_device(credential.did)

    # -- connections -------------------------------------------------------------------------

    def _new_connection(self) -> _DeviceConnection:
        assert self._loop is not None
        return _DeviceConnection(self, self._loop)

    def _accepted(self, connection: _DeviceConnection) -> bool:
        """A TCP connection arrived; False (and closed) when over capacity."""
        self._open_transports += 1
        if len(self._connections) >= self.max_connections:
            self._stats.rejected_connections += 1
            if not self._at_capacity:
                self._at_capacity = True
                log.warning(
                    "MQTT transport at capacity (%d connections), refusing new ones",
                    self.max_connections,
                )
            return False
        if self._at_capacity:
            self._at_capacity = False
            log.info("MQTT transport below capacity again, accepting connections")
        self._connections.add(connection)
        return True

    def _transport_gone(self) -> None:
        self._open_transports -= 1
        if not self._open_transports and self._transports_gone is not None:
            self._transports_gone.set()

    def _start_admission(self, connection: _DeviceConnection, packet: Connect) -> None:
        assert self._tasks is not None
        self._tasks.create_task(self._admit(connection, packet), name="mqtt-connect")

    async def _admit(self, connection: _DeviceConnection, packet: Connect) -> None:
        try:
            principal = await self._authenticate(packet)
        except _Refused as refused:
            if refused.code in (None, UNACCEPTABLE_PROTOCOL, SERVER_UNAVAILABLE):
                self._stats.rejected_connections += 1
            log.debug("MQTT CONNECT from %s refused: %s", connection.peer, refused)
            connection.refuse(refused.code)
            return
        except Exception:  # one connection must never take the transport down
            log.exception("MQTT CONNECT from %s failed", connection.peer)
            connection.refuse(SERVER_UNAVAILABLE)
            return
        if connection.state == _AUTHENTICATING:
            self._go_online(connection, packet, principal)

    async def _authenticate(self, packet: Connect) -> DevicePrincipal:
        """Apply the identity rules, then the `Authenticator`; raise `_Refused`."""
        client_id, username, password = packet.client_id, packet.username, packet.password
        if username is None or password is None:
            self._stats.auth_failures += 1
            raise _Refused(AuthRefusal.BAD_CREDENTIALS, "no user name or password")
        if not client_id or (client_id != username and not username.startswith(client_id + ";")):
            self._stats.auth_failures += 1
            raise _Refused(IDENTIFIER_REJECTED, "client id is not the user name")
        try:
            async with asyncio.timeout(self.auth_timeout):
                result = await self._authenticator.authenticate(client_id, username, password)
        except Exception as exc:
            if not self._auth_failing:
                self._auth_failing = True
                if isinstance(exc, TimeoutError):
                    log.warning(
                        "MQTT authentication took over %.0f s; refusing devices until it recovers",
                        self.auth_timeout,
                    )
                else:
                    log.exception("MQTT authentication failed; refusing devices until it recovers")
            raise _Refused(SERVER_UNAVAILABLE, "authenticator failed") from exc
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
        if packet.will_topic is not None and not may_publish(result, packet.will_topic):
            self._stats.auth_failures += 1
            raise _Refused(AuthRefusal.NOT_AUTHORIZED, f"will topic {packet.will_topic!r}")
        return result

    def _go_online(
        self, connection: _DeviceConnection, packet: Connect, principal: DevicePrincipal
    ) -> None:
        client_id = packet.client_id
        previous = self._online.get(client_id)
        if previous is not None:
            log.info(
                "device %s reconnected from %s, closing its session from %s",
                principal.did,
                connection.peer,
                previous.peer,
            )
            previous.close(DisconnectReason.TAKEOVER)
        session = self._sessions.get(client_id)
        present = session is not None and not packet.clean_session
        if session is None or packet.clean_session:
            if session is not None:
                self._forget(session)
            session = self._sessions[client_id] = _Session(client_id, packet.clean_session)
        elif session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        session.clean = packet.clean_session
        session.connection = connection
        level = PROTOCOL_LEVELS[packet.protocol_name, packet.level]
        connection.online(principal, session, packet.keepalive, level)
        self._online[client_id] = connection
        self._by_did[principal.did] = connection
        self._stats.connects += 1
        connection.write(encode_connack(present and level == 4, 0))
        log.debug(
            "device %s connected from %s (MQTT %s, keep-alive %ds)",
            principal.did,
            connection.peer,
            "3.1" if level == 3 else "3.1.1",
            packet.keepalive,
        )
        self._emit(
            self._events.on_connect, (principal, client_id, packet.keepalive, connection.peer)
        )
        session.resend()
        session.flush(self.max_queued_messages)
        connection.process()
        if connection.state == _ONLINE and connection not in self._paused:
            connection.transport.resume_reading()

    def _ended(self, connection: _DeviceConnection, reason: DisconnectReason) -> None:
        """A connection closed: release it; report the end of an online session."""
        self._connections.discard(connection)
        self._paused.pop(connection, None)
        principal, session = connection.principal, connection.session
        if principal is None or session is None:
            return
        client_id = session.client_id
        if self._online.get(client_id) is connection:
            del self._online[client_id]
        if self._by_did.get(principal.did) is connection:
            del self._by_did[principal.did]
        if session.connection is connection:
            session.connection = None
            if session.clean:
                self._forget(session)
            else:
                assert self._loop is not None
                session.expiry = self._loop.call_later(self.session_expiry, self._expire, session)
        log.debug("device %s disconnected: %s", principal.did, reason)
        self._emit(self._events.on_disconnect, (principal, client_id, reason))

    def _expire(self, session: _Session) -> None:
        if session.connection is None and self._sessions.get(session.client_id) is session:
            self._forget(session)

    def _forget(self, session: _Session) -> None:
        for topic_filter in list(session.subscriptions):
            self._unsubscribe(session, topic_filter)
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None

    def _subscribe(self, session: _Session, topic_filter: str, qos: int) -> None:
        session.subscriptions[topic_filter] = qos
        self._index.setdefault(filter_prefix(topic_filter), set()).add(session)

    def _unsubscribe(self, session: _Session, topic_filter: str) -> None:
        if session.subscriptions.pop(topic_filter, None) is None:
            return
        prefix = filter_prefix(topic_filter)
        if any(filter_prefix(other) == prefix for other in session.subscriptions):
            return
        bucket = self._index.get(prefix)
        if bucket is not None:
            bucket.discard(session)
            if not bucket:
                del self._index[prefix]

    # -- what devices send -------------------------------------------------------------------

    def _published(self, connection: _DeviceConnection, message: Publish) -> None:
        principal = connection.principal
        assert principal is not None
        topic = message.topic
        if topic[0] == "$" and not principal.thing:
            raise MqttProtocolError(f"PUBLISH to {topic!r}")
        if not may_publish(principal, topic):
            self._stats.denied_publish += 1
            log.debug("device %s may not publish %s", principal.did, topic)
            self._emit(self._events.on_denied, (principal, AclAction.PUBLISH, topic), True)
            connection.acknowledge(message.qos, message.packet_id)
            return
        self._stats.messages_in += 1
        if message.qos == 2 and connection.received_qos2(message.packet_id):
            connection.acknowledge(2, message.packet_id)  # a re-sent QoS 2 message: once only
            return
        pressure = self._pressure()
        if pressure >= self.shed_above:
            if not message.qos or pressure >= 2 * self.shed_above:
                self._stats.shed += 1
                if not self._shedding:
                    self._shedding = True
                    log.warning("device ingestion %d behind; shedding device reports", pressure)
                if message.qos:
                    connection.close(DisconnectReason.SERVER_ERROR)
                return
        elif self._shedding and pressure < self.shed_above // 2:
            self._shedding = False
            log.info("device ingestion caught up; taking device reports again")
        self._queue.append(
            (
                self._events.on_publish,
                (principal, topic, message.payload),
                connection if message.qos else None,
                message.qos,
                message.packet_id,
            )
        )
        self._wakeup.set()

    def _subscribed(self, connection: _DeviceConnection, body: bytes) -> None:
        packet_id, requests = decode_subscribe(body)
        principal, session = connection.principal, connection.session
        assert principal is not None
        assert session is not None
        codes = []
        for topic_filter, qos in requests:
            if may_subscribe(principal, topic_filter):
                granted = min(qos, 1)
                self._subscribe(session, topic_filter, granted)
                codes.append(granted)
                continue
            self._stats.denied_subscribe += 1
            codes.append(SUBACK_FAILURE)
            log.debug("device %s may not subscribe %s", principal.did, topic_filter)
            self._emit(self._events.on_denied, (principal, AclAction.SUBSCRIBE, topic_filter), True)
        connection.write(encode_suback(packet_id, codes))

    def _unsubscribed(self, connection: _DeviceConnection, body: bytes) -> None:
        packet_id, filters = decode_unsubscribe(body)
        session = connection.session
        assert session is not None
        for topic_filter in filters:
            self._unsubscribe(session, topic_filter)
        connection.write(encode_ack(UNSUBACK, packet_id))

    # -- backpressure ------------------------------------------------------------------------

    def _pressure(self) -> int:
        """Device messages taken and not yet stored: undelivered events plus the backlog."""
        return len(self._queue) + (self._backlog() if self._backlog is not None else 0)

    def behind(self) -> bool:
        """Whether ingestion is too far behind to take more from devices now."""
        return self._pressure() >= self.pause_above

    def _pause(self, connection: _DeviceConnection) -> None:
        if connection in self._paused:
            return
        connection.transport.pause_reading()
        self._paused[connection] = None
        self._stats.paused_reads += 1
        if self._pressure_timer is None:
            assert self._loop is not None
            self._pressure_timer = self._loop.call_later(_PRESSURE_POLL, self._check_pressure)

    def _check_pressure(self) -> None:
        """Resume the longest-paused connections, a slice per poll, while the pressure is low:
        each first handles what it had already received (and is paused again if that fills
        the queue), then is read again."""
        self._pressure_timer = None
        paused = self._paused
        budget = _RESUME_BATCH
        while paused and budget and self._pressure() <= self.pause_above // 2:
            connection = next(iter(paused))
            del paused[connection]
            budget -= 1
            if connection.state != _ONLINE:
                continue
            connection.last_received = connection.loop.time()
            connection.process()
            if connection.state == _ONLINE and connection not in paused:
                connection.transport.resume_reading()
        if paused:
            assert self._loop is not None
            self._pressure_timer = self._loop.call_later(_PRESSURE_POLL, self._check_pressure)

    def is_paused(self, connection: _DeviceConnection) -> bool:
        return connection in self._paused

    # -- events ------------------------------------------------------------------------------

    def _emit(self, callback: Any, args: tuple[Any, ...], droppable: bool = False) -> None:
        if droppable and len(self._queue) >= self.event_queue_limit:
            self._stats.events_dropped += 1
            return
        self._queue.append((callback, args, None, 0, 0))
        self._wakeup.set()

    async def _dispatch_events(self) -> None:
        """Await the `BrokerEvents` callbacks one at a time, in order; acknowledge QoS 1 and 2
        PUBLISHes once what they carried is stored."""
        queue = self._queue
        delivered = 0
        while True:
            if not queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            callback, args, connection, qos, packet_id = queue.popleft()
            try:
                result = await callback(*args)
            except Exception:
                name = callback.__name__
                if name not in self._failing_callbacks:
                    self._failing_callbacks.add(name)
                    log.exception("MQTT event handler %s failed; logging its recovery only", name)
                if connection is not None:
                    connection.close(DisconnectReason.SERVER_ERROR)
                continue
            if self._failing_callbacks:
                name = callback.__name__
                if name in self._failing_callbacks:
                    self._failing_callbacks.discard(name)
                    log.info("MQTT event handler %s recovered", name)
            if connection is not None:
                if result is None:
                    connection.acknowledge(qos, packet_id)
                else:
                    _when_stored(result, partial(connection.stored, qos, packet_id))
            delivered += 1
            if delivered % _YIELD_EVERY == 0:
                await asyncio.sleep(0)


def _raise_open_file_limit(wanted: int) -> None:
    """Raise the open-file limit towards ``wanted``: every device connection is a file
    descriptor, and a soft limit of 1,024 is common. The soft limit goes up to the hard one; a
    privileged process may raise the hard one too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = soft
    attempts = [(wanted, hard)] if hard == resource.RLIM_INFINITY or hard >= wanted else []
    attempts += [(wanted, wanted), (hard, hard)]  # a privileged process may raise the hard one
    for limits in attempts:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        except (ValueError, OSError):
            continue
        target = limits[0]
        break
    if target < wanted:
        log.warning(
            "the open-file limit is %d, below the %d device connections allowed plus spares: "
            "raise it (ulimit -n, LimitNOFILE=) or lower IOTCLOUD_MQTT_MAX_CONNECTIONS",
            target,
            wanted - _SPARE_FILES,
        )


def _when_stored(result: Awaitable[None], then: Callable[[asyncio.Future[None]], None]) -> None:
    future = result if isinstance(result, asyncio.Future) else asyncio.ensure_future(result)
    future.add_done_callback(then)


class _DeviceConnection(asyncio.Protocol):
    """One device TCP connection: framing, admission state, keep-alive, writes."""

    __slots__ = (
        "awaiting_release",
        "broker",
        "close_reason",
        "keepalive",
        "last_received",
        "level",
        "loop",
        "peer",
        "principal",
        "session",
        "splitter",
        "state",
        "timer",
        "transport",
        "writable",
    )

    def __init__(self, broker: EmbeddedBroker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop
        self.splitter = PacketSplitter(broker.max_packet_size)
        self.state = _CONNECTING
        self.principal: DevicePrincipal | None = None
        self.session: _Session | None = None
        self.keepalive = 0
        self.level = 0
        self.last_received = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.close_reason: DisconnectReason | None = None
        self.peer = "?"
        self.writable = True
        self.awaiting_release: set[int] | None = None
        self.transport: Any = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername") or ("?", 0)
        host, port = str(peername[0]), int(peername[1])
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self.broker._accepted(self):
            self.state = _CLOSED
            self.transport.abort()
            return
        self.last_received = self.loop.time()
        self.timer = self.loop.call_later(self.broker.connect_timeout, self._connect_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        self.splitter.feed(data)
        if self.state == _AUTHENTICATING:
            return
        if self.state == _ONLINE and self.broker.is_paused(self):
            return  # handled when it is resumed, after what it holds already
        self.process()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != _CLOSED:
            self.close(DisconnectReason.LOST)
        self.broker._transport_gone()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.session is not None and self.state == _ONLINE:
            self.session.flush(self.broker.max_queued_messages)

    # -- packets -----------------------------------------------------------------------------

    def process(self) -> None:
        """Handle the whole packets received so far. Stops at a CONNECT being checked, and when
        ingestion is behind: the connection is then paused with the rest still buffered, so
        one read never takes more than the queue has room for."""
        try:
            while self.state == _CONNECTING or self.state == _ONLINE:
                if self.state == _CONNECTING:
                    first = self.splitter.first_byte()
                    if first is None:
                        return
                    if first != CONNECT_BYTE:
                        raise MqttProtocolError(f"first packet type byte is {first:#04x}")
                    packet = self.splitter.next_packet()
                    if packet is None:
                        return
                    self._connect(packet[1])
                    return
                packet = self.splitter.next_packet()
                if packet is None:
                    return
                # the keep-alive counts whole packets: dribbling bytes does not keep a device on
                self.last_received = self.loop.time()
                self._handle(*packet)
                if self.state == _ONLINE and self.broker.behind():
                    self.broker._pause(self)
                    return
        except MqttProtocolError as exc:
            if self.state == _ONLINE:
                log.info("device %s broke the protocol (%s), closing", self.did, exc)
                self.close(DisconnectReason.PROTOCOL_ERROR)
            elif self.state == _CONNECTING:
                self.broker._stats.rejected_connections += 1
                log.debug("MQTT connection from %s refused: %s", self.peer, exc)
                self.refuse(None)

    def _connect(self, body: bytes) -> None:
        try:
            packet = decode_connect(body)
        except UnacceptableProtocol as exc:
            self.broker._stats.rejected_connections += 1
            log.debug("MQTT CONNECT from %s refused: %s", self.peer, exc)
            self.refuse(UNACCEPTABLE_PROTOCOL)
            return
        self.state = _AUTHENTICATING
        self.transport.pause_reading()
        self.broker._start_admission(self, packet)

    def _handle(self, first: int, body: bytes) -> None:
        kind = check_fixed_header(first, len(body))
        if kind == PUBLISH:
            self.broker._published(self, decode_publish(first, body))
        elif kind == PINGREQ:
            self.write(PINGRESP_PACKET)
        elif kind == PUBACK:
            session = self.session
            assert session is not None
            if session.inflight.pop(decode_packet_id(body), None) is not None and session.queue:
                session.flush(self.broker.max_queued_messages)
        elif kind == SUBSCRIBE:
            self.broker._subscribed(self, body)
        elif kind == UNSUBSCRIBE:
            self.broker._unsubscribed(self, body)
        elif kind == PUBREL:
            packet_id = decode_packet_id(body)
            if self.awaiting_release is not None:
                self.awaiting_release.discard(packet_id)
            self.write(encode_ack(PUBCOMP, packet_id))
        elif kind == DISCONNECT:
            self.close(DisconnectReason.CLEAN)
        # PUBREC and PUBCOMP: this transport sends no QoS 2, so there is nothing to complete

    def received_qos2(self, packet_id: int) -> bool:
        """Note a QoS 2 PUBLISH; True if it is one already taken and not yet released."""
        if self.awaiting_release is None:
            self.awaiting_release = set()
        if packet_id in self.awaiting_release:
            return True
        self.awaiting_release.add(packet_id)
        return False

    # -- state -------------------------------------------------------------------------------

    @property
    def did(self) -> str:
        return self.principal.did if self.principal is not None else ""

    def online(
        self, principal: DevicePrincipal, session: _Session, keepalive: int, level: int
    ) -> None:
        self.principal, self.session, self.keepalive, self.level = (
            principal,
            session,
            keepalive,
            level,
        )
        self.state = _ONLINE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.last_received = self.loop.time()
        if keepalive > 0:
            self.timer = self.loop.call_later(keepalive * 1.5, self._check_keepalive)

    def write(self, data: bytes) -> None:
        if self.state != _CLOSED:
            self.transport.write(data)

    def acknowledge(self, qos: int, packet_id: int) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2) of a device PUBLISH; nothing for QoS 0."""
        if qos and self.state == _ONLINE:
            self.transport.write(encode_ack(PUBACK if qos == 1 else PUBREC, packet_id))

    def stored(self, qos: int, packet_id: int, future: asyncio.Future[None]) -> None:
        """The write holding a QoS 1 or 2 message finished: acknowledge it, or close."""
        if future.cancelled() or future.exception() is not None:
            if self.state == _ONLINE:
                log.warning("device %s: a QoS %d message was not stored", self.did, qos)
                self.close(DisconnectReason.SERVER_ERROR)
            return
        self.acknowledge(qos, packet_id)

    def refuse(self, code: int | None) -> None:
        """End an unadmitted connection, after a CONNACK with ``code`` if given."""
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.broker._ended(self, DisconnectReason.LOST)
        if code is None:
            self.transport.abort()
            return
        self.transport.write(encode_connack(False, code))
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self.loop.call_later(self.broker.connect_timeout, self.transport.abort)

    def close(self, reason: DisconnectReason) -> None:
        """End the connection now (first reason wins); an online session's end is reported."""
        if self.state == _CLOSED:
            return
        if self.state != _ONLINE:
            self.refuse(None)
            return
        self.state = _CLOSED
        self.close_reason = reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if reason is DisconnectReason.CLEAN:
            self.transport.close()
        else:
            self.transport.abort()
        self.broker._ended(self, reason)

    def _connect_timed_out(self) -> None:
        self.timer = None
        if self.state in (_CONNECTING, _AUTHENTICATING):
            self.broker._stats.rejected_connections += 1
            log.debug("no CONNECT from %s in time, closing", self.peer)
            self.refuse(None)

    def _check_keepalive(self) -> None:
        limit = self.keepalive * 1.5
        now = self.loop.time()
        if self.broker.is_paused(self):
            self.last_received = now  # not read because the server is behind: not its fault
        idle = now - self.last_received
        if idle >= limit:
            self.timer = None
            log.debug(
                "device %s silent for %.1fs (keep-alive %ds), closing",
                self.did,
                idle,
                self.keepalive,
            )
            self.close(DisconnectReason.KEEPALIVE_TIMEOUT)
        else:
            self.timer = self.loop.call_later(limit - idle, self._check_keepalive)
