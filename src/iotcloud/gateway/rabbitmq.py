"""The broker adapter for a RabbitMQ cluster (``IOTCLOUD_MQTT_BROKER=rabbitmq``).

RabbitMQ's MQTT plugin carries the device connections; iotcloud talks to the cluster three ways:

* **MQTT** (`ExternalBroker`, with the internal administrator account, ``presence="none"`` and
  ``credentials="none"``: devices are authenticated by iotcloud's HTTP auth endpoints, so
  nothing is written into the broker). Every process subscribes ``dev2app/#``, ``$thing/up/#``
  and the process bus, and publishes commands: every process hears device messages for its
  listeners and the acknowledgements of its own commands. These are *observed* only
  (`DeviceGateway.shared_ingest`).
* **AMQP** (aio-pika). Every process binds an exclusive, auto-delete queue to
  ``amq.rabbitmq.event`` (``connection.created``, ``connection.closed``) to know who is
  connected, whichever node they are on. A durable classic queue, `MESSAGES_QUEUE`, bound to
  ``amq.topic`` with the device routing keys and to the same two connection events, is consumed
  by the ``gateway`` processes as competing consumers: each report and each presence change is
  stored by exactly one gateway, and acknowledged to the broker only once what it carried is
  committed (a gateway killed with ``kill -9`` leaves its unacknowledged messages to another).
* **The management API**: ``GET /api/connections`` resynchronises presence when the process
  starts and after the AMQP connection comes back (connections opened or closed meanwhile);
  ``DELETE /api/connections/{name}`` closes a disabled device's connection.

RabbitMQ's MQTT plugin turns a topic into a routing key by replacing ``/`` with ``.``, and
delivers a routing key to MQTT subscribers with every ``.`` as ``/``: a data-template device
name with dots arrives in several levels (`ExternalBroker` rejoins it, ``dotted_levels``);
`topic_of_routing_key` turns a key back. ``connection.created`` carries the user and
the MQTT client id (``variable_map``); ``connection.closed`` only the connection name, so the
name -> client id map is kept from the created events and the management listing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from iotcloud.gateway.broker import BrokerStats, DeviceCredential, DisconnectReason
from iotcloud.gateway.external import BrokerTarget, ExternalBroker
from iotcloud.gateway.service import DeviceGateway

log = logging.getLogger(__name__)

EVENT_EXCHANGE: Final = "amq.rabbitmq.event"
CREATED: Final = "connection.created"
CLOSED: Final = "connection.closed"
MESSAGES_QUEUE: Final = "iotcloud.device-messages"
MESSAGES_MAX_LENGTH: Final = 1_000_000
"""`MESSAGES_QUEUE` holds at most this many messages; past it the broker refuses new ones
(``reject-publish``): for MQTT QoS 1 publishers the PUBACK is withheld, so the device keeps
its report and sends it again, instead of the queue dropping the oldest stored report."""
DEVICE_BINDINGS: Final = ("dev2app.#", "$thing.up.#")
CLOSED_KEPT: Final = 10_000
NODE_CHECK_SECONDS: Final = 3.0
"""How often each process asks the management API which cluster nodes are running: a node
that crashed says nothing of its connections (no ``connection.closed``)."""
LISTING_MARGIN: Final = timedelta(seconds=10)
"""The management API lists a connection only after its statistics tick (up to 5 s, measured):
a resynchronisation stores offline only devices that came online longer ago than this."""
CLOSE_LOOKUP_SECONDS: Final = 5.0
"""How long a gateway waits to learn which device a queued ``connection.closed`` was about
(only ``connection.created`` names it); a close of a connection never heard of is dropped."""
PREFETCH: Final = 500
"""Unacknowledged messages one gateway holds at once: enough to fill the report batcher's
group commits, few enough that a killed gateway hands little back for redelivery."""

_CLIENT_ID = re.compile(r'<<"client_id">>\s*=>\s*<<"((?:[^"\\]|\\.)*)">>')


def topic_of_routing_key(routing_key: str) -> str | None:
    """The MQTT topic a device published to, from the routing key RabbitMQ's MQTT plugin made
    of it by turning every ``/`` into ``.`` (measured on 3.10: a ``.`` in the topic stays a
    ``.``, so the key alone cannot tell the two apart); None for a key that is not a device
    topic. What the ACL allows fixes the levels: ``dev2app.{did}[.{client id}]`` (a did has no
    dot; the rest is the app's client id), and ``$thing.up.{kind}.{PID}.{name}`` with the
    device name, dots included, after the four fixed levels."""
    if routing_key.startswith("dev2app."):
        levels = routing_key.split(".", 2)
        if not levels[1] or (len(levels) == 3 and not levels[2]):
            return None
        return "/".join(levels)
    if routing_key.startswith("$thing.up."):
        levels = routing_key.split(".", 4)
        if len(levels) != 5 or not all(levels):
            return None
        return "/".join(levels)
    return None


def routing_key_of_topic(topic: str) -> str:
    """The routing key RabbitMQ's MQTT plugin makes of ``topic``."""
    return topic.replace("/", ".")


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One ``amq.rabbitmq.event`` connection event of an MQTT client."""

    created: bool
    name: str
    """The connection's name (``peer -> listener``), the only field ``connection.closed``
    carries."""
    user: str | None = None
    client_id: str | None = None
    """The MQTT client id (``connection.created`` only)."""
    at: datetime | None = None
    """When the node that had the connection emitted the event (``timestamp_in_ms``)."""
    node: str | None = None
    """The broker node the connection is on."""


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def parse_connection_event(routing_key: str, headers: dict[str, Any]) -> ConnectionEvent | None:
    """A connection event from the event exchange's routing key and headers, or None for
    another event, or a connection that is not an MQTT client's (``connection.closed`` cannot
    tell: it names the connection only)."""
    name = _text(headers.get("name"))
    if not name or routing_key not in (CREATED, CLOSED):
        return None
    at = _instant(headers.get("timestamp_in_ms"))
    node = _text(headers.get("node"))
    if routing_key == CLOSED:
        return ConnectionEvent(False, name, at=at, node=node)
    protocol = _text(headers.get("protocol")) or ""
    if "MQTT" not in protocol:
        return None
    variables = _text(headers.get("variable_map")) or ""
    found = _CLIENT_ID.search(variables)
    user = _text(headers.get("user"))
    client_id = found.group(1) if found else client_id_of_user(user)
    return ConnectionEvent(True, name, user, client_id, at, node)


def _instant(milliseconds: Any) -> datetime | None:
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int) or milliseconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(milliseconds / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def client_id_of_user(user: str | None) -> str | None:
    """The MQTT client id a device signing in as ``user`` has: a Gizwits device's user name is
    its did (= client id); a data-template device's is ``{PID}{NAME};{sdkappid};{connid};
    {expiry}``, its client id the first field."""
    if not user:
        return None
    return user.split(";", 1)[0]


class JitteredConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, waiting a jittered interval between two attempts to
    reconnect (half to one and a half times the URL's ``reconnect_interval``, 5 s unless given)
    instead of a fixed one, so that the processes a lost node dropped do not all come back to
    the cluster in step."""

    @property
    def reconnect_interval(self) -> float:
        return self._reconnect_base * random.uniform(0.5, 1.5)

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._reconnect_base = float(value)  # set by aio-pika from the URL


@dataclass(frozen=True)
class ManagementTarget:
    """The management plugin's HTTP API: ``http[s]://user:password@host:port``."""

    base: str
    username: str
    password: str

    @classmethod
    def parse(cls, url: str) -> ManagementTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be http[s]://USER:PASS@host:port")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return cls(
            f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}",
            unquote(parts.username or ""),
            unquote(parts.password or ""),
        )


class RabbitBroker:
    """`BrokerAdapter` for a RabbitMQ cluster (see module docstring)."""

    def __init__(
        self,
        target: BrokerTarget,
        amqp_url: str,
        management: ManagementTarget,
        gateway: DeviceGateway,
        *,
        admin_user: str | None = None,
        prefetch: int = PREFETCH,
        connect_timeout: float = 10.0,
    ) -> None:
        self.mqtt = ExternalBroker(
            target,
            gateway,
            gateway,
            credentials="none",
            presence="none",
            dotted_levels=True,
            connect_timeout=connect_timeout,
        )
        self.amqp_url = amqp_url
        self.management = management
        self.gateway = gateway
        self.admin_user = admin_user if admin_user is not None else target.username
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        gateway.shared_ingest = True
        self._names: dict[str, str] = {}
        """MQTT client id by connection name, of the device connections open."""
        self._opened: dict[str, datetime | None] = {}
        """When each of them opened (``connection.created``'s instant; None when unknown)."""
        self._node_of: dict[str, str | None] = {}
        """The broker node each of them is on."""
        self._closed: OrderedDict[str, str] = OrderedDict()
        """The same for the last `CLOSED_KEPT` connections closed: the shared queue's copy of
        a ``connection.closed`` may be handled after this process's own."""
        self._connection: AbstractRobustConnection | None = None
        self._http: httpx.AsyncClient | None = None
        self._amqp_up = asyncio.Event()
        self._closing = False
        self._resync_lock = asyncio.Lock()
        self._presence_order = asyncio.Lock()
        self._observe_order = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def stats(self) -> BrokerStats:
        return self.mqtt.stats

    @property
    def bus_receiver(self) -> Any:
        return self.mqtt.bus_receiver

    @bus_receiver.setter
    def bus_receiver(self, receiver: Any) -> None:
        self.mqtt.bus_receiver = receiver

    async def publish_bus(self, payload: bytes) -> None:
        await self.mqtt.publish_bus(payload)

    def unready_reason(self) -> str | None:
        reason = self.mqtt.unready_reason()
        if reason is not None:
            return reason
        if not self._amqp_up.is_set():
            return "not connected to RabbitMQ over AMQP"
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._http = httpx.AsyncClient(
            base_url=self.management.base + "/api",
            auth=(self.management.username, self.management.password),
            timeout=10.0,
        )
        await self.mqtt.__aenter__()
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(self.amqp_url, connection_class=JitteredConnection),
                self.connect_timeout,
            )
            self._connection = connection
            connection.reconnect_callbacks.add(self._reconnected)
            connection.close_callbacks.add(self._lost)
            await self._declare(connection)
            self._amqp_up.set()
            await self.resync()
            self._spawn(self._watch_nodes())
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connection is not None:
            with suppress(Exception):
                await self._connection.close()
        self._amqp_up.clear()
        await self.mqtt.__aexit__(None, None, None)
        if self._http is not None:
            await self._http.aclose()

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        """Queues and consumers (a robust connection declares them again after a reconnect)."""
        channel = await connection.channel()
        events = await channel.get_exchange(EVENT_EXCHANGE, ensure=False)
        presence = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in (CREATED, CLOSED):
            await presence.bind(events, key)
        await presence.consume(self._presence_event, no_ack=True)
        if not self.gateway.consumer:
            return
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=self.prefetch)
        queue = await consuming.declare_queue(
            MESSAGES_QUEUE,
            durable=True,
            arguments={"x-max-length": MESSAGES_MAX_LENGTH, "x-overflow": "reject-publish"},
        )
        topics = await consuming.get_exchange("amq.topic", ensure=False)
        for key in DEVICE_BINDINGS:
            await queue.bind(topics, key)
        for key in (CREATED, CLOSED):
            await queue.bind(events, key)
        await queue.consume(self._queued)

    def _reconnected(self, *_: Any) -> None:
        self._amqp_up.set()
        log.info("AMQP connection to RabbitMQ is back; resynchronising presence")
        self._spawn(self.resync())

    def _lost(self, *_: Any) -> None:
        if self._amqp_up.is_set() and not self._closing:
            log.warning("lost the AMQP connection to RabbitMQ; reconnecting")
        self._amqp_up.clear()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- presence -----------------------------------------------------------------------------

    async def _presence_event(self, message: AbstractIncomingMessage) -> None:
        event = parse_connection_event(message.routing_key or "", dict(message.headers))
        if event is None:
            return
        # the consumer runs each message in a task of its own: taking the lock first keeps
        # them in the queue's order (a quick connect and disconnect must not end online)
        async with self._observe_order:
            await self._observe(event)

    async def _observe(self, event: ConnectionEvent) -> None:
        if event.created:
            if event.user == self.admin_user or event.client_id is None:
                return  # iotcloud's own connections
            self._names[event.name] = event.client_id
            self._opened[event.name] = event.at
            self._node_of[event.name] = event.node
            await self.mqtt.start_session(event.client_id, event.name)
            return
        client_id = self._forget(event.name)
        if client_id is not None and client_id not in self._names.values():
            await self.mqtt.end_session(client_id, DisconnectReason.LOST)

    def _forget(self, name: str) -> str | None:
        """Drop the open connection ``name``; its client id, kept among the closed ones."""
        self._opened.pop(name, None)
        self._node_of.pop(name, None)
        client_id = self._names.pop(name, None)
        if client_id is not None:
            self._closed[name] = client_id
            while len(self._closed) > CLOSED_KEPT:
                self._closed.popitem(last=False)
        return client_id

    async def _watch_nodes(self) -> None:
        """End the sessions of connections on a cluster node that is not running any more,
        and (a gateway) store their devices offline: see `NODE_CHECK_SECONDS`."""
        while True:
            await asyncio.sleep(NODE_CHECK_SECONDS)
            if not self._node_of:
                continue
            try:
                down = await self._nodes_down()
            except (httpx.HTTPError, ValueError) as exc:
                # this process's own management node may be the one down: others will see it
                log.debug("could not list RabbitMQ's nodes: %s", exc)
                continue
            if not down:
                continue
            try:
                await self._nodes_lost(down)
            except Exception:
                log.exception("could not apply the loss of RabbitMQ node(s) %s", down)

    async def _nodes_down(self) -> set[str]:
        assert self._http is not None
        response = await self._http.get("/nodes", params={"columns": "name,running"})
        response.raise_for_status()
        nodes: list[dict[str, Any]] = response.json()
        return {str(node.get("name")) for node in nodes if not node.get("running", False)}

    async def _nodes_lost(self, down: set[str]) -> None:
        async with self._observe_order:
            names = [name for name, node in self._node_of.items() if node in down]
            clients = {client for name in names if (client := self._forget(name)) is not None}
            gone = sorted(client for client in clients if client not in self._names.values())
            for client_id in gone:
                await self.mqtt.end_session(client_id, DisconnectReason.LOST)
        if not gone:
            return
        stored = await self.gateway.store_gone(gone, "broker node down")
        log.warning(
            "RabbitMQ node(s) %s down: %d device connection(s) lost (%d stored offline here)",
            ", ".join(sorted(down)),
            len(gone),
            stored,
        )

    async def _connections(self) -> list[dict[str, Any]]:
        assert self._http is not None
        response = await self._http.get(
            "/connections",
            params={"columns": "name,user,protocol,client_properties,connected_at,node"},
        )
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json()
        return listed

    async def resync(self) -> None:
        """Make the sessions this process knows match the connections the cluster lists:
        devices connected and not known start a session, known ones gone end theirs (`LOST`).
        A gateway process also stores the listed devices online (with the instant each
        connected) and every other device stored online offline, but for connections younger
        than `LISTING_MARGIN`, which the listing may not show yet."""
        async with self._resync_lock:
            listed_at = datetime.now(UTC)
            try:
                listed = await self._connections()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("could not list RabbitMQ's connections: %s", exc)
                return
            names: dict[str, str] = {}
            opened: dict[str, datetime | None] = {}
            nodes: dict[str, str | None] = {}
            for connection in listed:
                if "MQTT" not in str(connection.get("protocol", "")):
                    continue
                user = connection.get("user")
                if user == self.admin_user:
                    continue
                properties = connection.get("client_properties") or {}
                client_id = properties.get("client_id") or client_id_of_user(user)
                if client_id:
                    name = str(connection["name"])
                    names[name] = str(client_id)
                    opened[name] = _instant(connection.get("connected_at"))
                    nodes[name] = _text(connection.get("node"))
            async with self._observe_order:
                young = listed_at - LISTING_MARGIN
                for name, client_id in self._names.items():
                    # opened meanwhile (heard as an event): the listing cannot show it yet
                    at = self._opened.get(name)
                    if name not in names and at is not None and at >= young:
                        names[name], opened[name] = client_id, at
                        nodes[name] = self._node_of.get(name)
                self._names, self._opened, self._node_of = names, opened, nodes
                present = set(names.values())
                for client_id in self.mqtt.session_clients() - present:
                    await self.mqtt.end_session(client_id, DisconnectReason.LOST)
                for name, client_id in names.items():
                    if await self.mqtt.start_session(client_id, name) is not None:
                        await self.gateway.store_presence(
                            client_id, True, name, at=opened.get(name)
                        )
            gone = await self.gateway.store_unlisted_offline(
                sorted(present), young, "not connected to the broker"
            )
            if gone:
                log.info("resynchronised presence: %d device(s) stored offline", gone)

    # -- the shared queue (gateway processes) ---------------------------------------------------

    async def _queued(self, message: AbstractIncomingMessage) -> None:
        """Store one device message or presence change, then acknowledge it; a failure to
        store hands it back to the queue."""
        key = message.routing_key or ""
        try:
            if key in (CREATED, CLOSED):
                await self._queued_presence(key, dict(message.headers))
            else:
                topic = topic_of_routing_key(key)
                if topic is not None:
                    await self._queued_publish(topic, message.body)
        except Exception as exc:
            log.warning("could not store a queued device message (%s): %s; requeued", key, exc)
            with suppress(Exception):
                await message.nack(requeue=True)
            return
        await message.ack()

    async def _queued_publish(self, topic: str, payload: bytes) -> None:
        client_id = _client_id_of_topic(topic)
        if client_id is None:
            return
        committed = await self.gateway.store_publish(client_id, topic, payload)
        if committed is not None:
            await committed

    async def _queued_presence(self, key: str, headers: dict[str, Any]) -> None:
        event = parse_connection_event(key, headers)
        if event is None:
            return
        if event.at is not None:
            # stored with its instant, only if nothing later is (in any order, concurrently:
            # a fleet connecting at once shares the presence batches' commits)
            await self._store_presence_event(event)
            return
        # no instant to order by: one at a time, in the queue's order (the consumer runs
        # messages concurrently; the lock is taken before anything else is awaited)
        async with self._presence_order:
            await self._store_presence_event(event)

    async def _store_presence_event(self, event: ConnectionEvent) -> None:
        if event.created:
            if event.user == self.admin_user or event.client_id is None:
                return
            client_id: str | None = event.client_id
        else:
            client_id = await self._client_of_closed(event.name)
        if client_id is None:
            return
        if not event.created and self._taken_over(client_id, event):
            return  # the device's newer connection is open: it did not go offline
        await self.gateway.store_presence(client_id, event.created, event.name, at=event.at)
        await self.gateway.presence.committed()

    def _taken_over(self, client_id: str, closed: ConnectionEvent) -> bool:
        """Whether another connection of ``client_id`` opened before ``closed`` (a session
        takeover), rather than after it (the device reconnected once it was offline)."""
        for name, other in self._names.items():
            if other != client_id or name == closed.name:
                continue
            opened = self._opened.get(name)
            if opened is None or closed.at is None or opened <= closed.at:
                return True
        return False

    async def _client_of_closed(self, name: str) -> str | None:
        """The client id of the closed connection ``name``, waiting up to
        `CLOSE_LOOKUP_SECONDS` for this process's own event queue to tell it (the shared
        queue's copy of a close may come first when the process is busy)."""
        deadline = asyncio.get_running_loop().time() + CLOSE_LOOKUP_SECONDS
        while (client_id := self._client_of_name(name)) is None:
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.05)
        return client_id

    def _client_of_name(self, name: str) -> str | None:
        return self._names.get(name) or self._closed.get(name)

    # -- BrokerAdapter ------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        await self.mqtt.publish(topic, payload, qos, retain)

    def connected_dids(self) -> set[str]:
        return self.mqtt.connected_dids()

    async def disconnect_device(self, did: str) -> bool:
        """Close every connection of the device through the management API."""
        assert self._http is not None
        wanted = {
            client_id
            for client_id in self.mqtt.session_clients()
            if (principal := self.mqtt.session_of(client_id)) is not None and principal.did == did
        } or {did}
        try:
            listed = await self._connections()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not list RabbitMQ's connections to close %s: %s", did, exc)
            return False
        closed = False
        for connection in listed:
            properties = connection.get("client_properties") or {}
            client_id = properties.get("client_id") or client_id_of_user(connection.get("user"))
            if client_id not in wanted or connection.get("user") == self.admin_user:
                continue
            response = await self._http.delete(
                "/connections/" + quote(str(connection["name"]), safe=""),
                headers={"X-Reason": "device disabled"},
            )
            closed = closed or response.status_code in (200, 204)
        for client_id in wanted:
            await self.mqtt.end_session(client_id, DisconnectReason.KICKED)
        return closed

    async def devices_changed(self, credentials: Sequence[DeviceCredential]) -> None:
        for credential in credentials:
            if not credential.enabled:
                await self.disconnect_device(credential.did)


def _client_id_of_topic(topic: str) -> str | None:
    if topic.startswith("dev2app/"):
        return topic.split("/")[1]
    levels = topic.split("/", 4)
    if len(levels) == 5 and levels[0] == "$thing":
        return levels[3] + levels[4]
    return None
