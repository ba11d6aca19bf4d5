"""The broker adapter for an external MQTT broker: Mosquitto 2 with its dynamic-security plugin.

The gateway connects to the broker as one privileged client. It

* subscribes to ``dev2app/#`` and ``$thing/up/#`` and hands every device message to
  `BrokerEvents.on_publish`; the publishing device is the one the topic names (the did, or a
  data-template device's ``{PID}/{NAME}``), which the broker's ACL guarantees;
* learns presence from the broker's own connection log, which Mosquitto publishes on
  ``$SYS/broker/log/N`` and ``$SYS/broker/log/E`` when configured with ``log_dest topic``;
* keeps the broker's credential store in step with the device registry through the
  dynamic-security control topic (``$CONTROL/dynamic-security/v1``): one client per device
  (username = client id = did, password = passcode) with one role holding that device's topic
  ACL (see `iotcloud.gateway.broker`). A full reconciliation runs on every (re)connection and
  every ``sync_interval`` seconds; `devices_changed` applies a change at once.

With ``credentials="none"`` the operator manages device credentials and ACLs in the broker
(for example through an auth plugin); the gateway then only listens and publishes.

Data-template (Tencent) devices sign a user name that holds a random connection id, so a
static credential store (dynamic security matches exact user names) cannot admit them: they
are never written to it, and they connect only where the operator's own authentication admits
them (``credentials="none"``, e.g. an HTTP auth plugin calling back into iotcloud). Their
traffic is handled the same way in both modes.

What the broker does not tell a client: ACL denials (the broker drops the message; the counters
`BrokerStats.denied_publish`/`denied_subscribe` stay 0) and which clients are connected when the
gateway (re)connects. Presence is therefore learned from connection log lines and, for a device
that was connected before, from its next message; when the gateway loses the broker it marks
every device offline (a broker restart disconnects them all).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qs, unquote, urlsplit

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from iotcloud.codecs.thing import parse_thing_topic
from iotcloud.gateway.broker import (
    BUS_TOPIC,
    PUBLISH_WINDOW,
    BrokerEvents,
    BrokerStats,
    DeviceCredential,
    DeviceDirectory,
    DevicePrincipal,
    DisconnectReason,
    is_cloud_topic,
)

log = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = CONTROL_TOPIC + "/response"
LOG_TOPICS: Final = ("$SYS/broker/log/N", "$SYS/broker/log/E")
DEVICE_TOPICS: Final = "dev2app/#"
THING_TOPICS: Final = "$thing/up/#"
CLIENT_TEXT_NAME: Final = "iotcloud device"
ROLE_PREFIX: Final = "iotcloud-device-"
UNKNOWN_PEER: Final = "unknown"
RECONNECT_MAX_SECONDS: Final = 30.0
"""The longest wait between two attempts to reconnect to the broker (1 s, then doubling, each
wait jittered down by up to half)."""

CredentialMode = Literal["dynsec", "none"]
PresenceSource = Literal["log", "none"]
"""Where presence comes from: Mosquitto's ``$SYS`` connection log (``log``), or the caller
(``none``: `start_session`/`end_session`, as `iotcloud.gateway.rabbitmq` does from RabbitMQ's
event exchange)."""

_CONNECTED = re.compile(r"New client connected from (\S+) as (\S+) \(p\d+, c\d+, k(\d+)")
_CLIENT_LINE = re.compile(r"(?:^|: )Client (\S+) (.+)$")
_SOCKET_ERROR = re.compile(r"Bad socket read/write on client (\S+?):")
_ENDINGS: Final = (
    ("already connected, closing old connection", DisconnectReason.TAKEOVER),
    ("has exceeded timeout", DisconnectReason.KEEPALIVE_TIMEOUT),
    ("closed its connection", DisconnectReason.LOST),
    ("administrative action", DisconnectReason.KICKED),
    ("protocol error", DisconnectReason.PROTOCOL_ERROR),
    ("malformed packet", DisconnectReason.PROTOCOL_ERROR),
    ("oversize packet", DisconnectReason.PROTOCOL_ERROR),
    ("disconnected, not authorised", DisconnectReason.KICKED),
)


class BrokerUnavailable(ConnectionError):
    """The external broker cannot be reached now."""


def default_client_id() -> str:
    """``iotcloud-{host}-{pid}``: unique per server process, so several processes can share
    one broker."""
    return f"iotcloud-{socket.gethostname()[:24]}-{os.getpid()}"


@dataclass(frozen=True)
class BrokerTarget:
    """Where the external broker is and how the gateway signs in: a ``mqtt://`` or ``mqtts://``
    URL, ``mqtt://user:password@host:port?client_id=NAME``. Without ``client_id`` each process
    takes its own (`default_client_id`): two clients with one id would keep taking each
    other's session over."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    client_id: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("the URL names no host")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from exc
        query = parse_qs(parts.query, keep_blank_values=True)  # "client_id=" must not vanish
        unknown = set(query) - {"client_id"}
        if unknown:
            raise ValueError(f"unknown URL parameter {sorted(unknown)[0]!r}")
        client_id = query.get("client_id", [default_client_id()])[0]
        if not client_id:
            raise ValueError("client_id must not be empty")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            client_id=client_id,
            tls=tls,
        )

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def fingerprint(credential: DeviceCredential) -> str:
    """What the broker's copy of a device must match; stored as the client's description."""
    text = f"{credential.product_key}\n{credential.passcode}\n{credential.enabled}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def device_acls(did: str, product_key: str) -> list[dict[str, Any]]:
    """The dynamic-security ACL of one device: the rules of `iotcloud.gateway.broker`."""
    return [
        {"acltype": acltype, "topic": topic, "allow": True}
        for acltype, topic in (
            ("publishClientSend", f"dev2app/{did}"),
            ("publishClientSend", f"dev2app/{did}/+"),
            ("publishClientSend", "cli2ser_req"),
            ("subscribePattern", f"app2dev/{did}/#"),
            ("subscribePattern", f"ser2cli_res/{did}"),
            ("subscribePattern", f"ser2cli_noti/{product_key}"),
        )
    ]


def sync_commands(
    credential: DeviceCredential, present: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Dynamic-security commands that make the broker's client ``present`` (None: no such
    client) match ``credential``."""
    did = credential.did
    mark = fingerprint(credential)
    if credential.thing:  # see the module docstring: such a client is removed, never made
        return [] if present is None else [{"command": "deleteClient", "username": did}]
    if present is None:
        if not credential.enabled:
            return []
        role = ROLE_PREFIX + did
        return [
            {
                "command": "createRole",
                "rolename": role,
                "acls": device_acls(did, credential.product_key),
            },
            {
                "command": "createClient",
                "username": did,
                "clientid": did,
                "password": credential.passcode,
                "textname": CLIENT_TEXT_NAME,
                "textdescription": mark,
                "roles": [{"rolename": role}],
            },
        ]
    if present.get("textdescription") == mark:
        return []
    commands: list[dict[str, Any]] = []
    if credential.enabled:
        commands += [
            {"command": "setClientPassword", "username": did, "password": credential.passcode},
            {"command": "enableClient", "username": did},
        ]
    else:
        commands.append({"command": "disableClient", "username": did})
    commands.append({"command": "modifyClient", "username": did, "textdescription": mark})
    return commands


class ExternalBroker:
    """`BrokerAdapter` for an external broker (see module docstring)."""

    def __init__(
        self,
        target: BrokerTarget,
        directory: DeviceDirectory,
        events: BrokerEvents,
        *,
        credentials: CredentialMode = "dynsec",
        presence: PresenceSource = "log",
        dotted_levels: bool = False,
        sync_interval: float = 30.0,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        queue_capacity: int = 50_000,
    ) -> None:
        self.target = target
        self.directory = directory
        self.events = events
        self.credentials = credentials
        self.presence = presence
        self.dotted_levels = dotted_levels
        """The broker delivers a ``.`` of a topic as a level separator (RabbitMQ's MQTT
        plugin): a data-template device name with dots arrives split over several levels."""
        self.sync_interval = sync_interval
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.queue_capacity = queue_capacity
        self._stats = BrokerStats()
        self.bus_receiver: Callable[[bytes], Awaitable[None]] | None = None
        """Where messages on `BUS_TOPIC` go (`ProcessBus.received`)."""
        self._sessions: dict[str, DevicePrincipal] = {}
        """Device sessions by MQTT client id."""
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._first_error: BaseException | None = None
        self._pending: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._sync_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._resync = asyncio.Event()

    @property
    def stats(self) -> BrokerStats:
        return self._stats

    def unready_reason(self) -> str | None:
        if self._connected.is_set():
            return None
        return f"not connected to the MQTT broker at {self.target}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run(), name="external-broker")
        waiter = asyncio.create_task(self._connected.wait())
        done, _ = await asyncio.wait(
            {self._runner, waiter}, timeout=self.connect_timeout, return_when="FIRST_COMPLETED"
        )
        if waiter not in done:
            waiter.cancel()
            await self._stop()
            why = f": {self._first_error}" if self._first_error else ""
            raise BrokerUnavailable(f"cannot reach the MQTT broker at {self.target}{why}")
        if self.credentials == "dynsec":
            self._syncer = asyncio.create_task(self._sync_forever(), name="broker-credentials")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()
        await self._end_all(DisconnectReason.SHUTDOWN)

    async def _stop(self) -> None:
        for task in (self._syncer, self._runner):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        """Stay connected: (re)connect, subscribe, dispatch; on loss mark devices offline."""
        delay = 1.0
        while True:
            try:
                async with self._new_client() as client:
                    await self._subscribe(client)
                    await self._subscribe_bus(client)
                    self._client = client
                    self._connected.set()
                    self._resync.set()
                    delay = 1.0
                    log.info("connected to the MQTT broker at %s", self.target)
                    async for message in client.messages:
                        await self._dispatch(str(message.topic), _payload(message.payload))
            except aiomqtt.MqttError as exc:
                if self._first_error is None:
                    self._first_error = exc
                if self._connected.is_set():
                    log.warning("lost the MQTT broker at %s: %s; reconnecting", self.target, exc)
            finally:
                self._client = None
                was_connected = self._connected.is_set()
                self._connected.clear()
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(BrokerUnavailable("lost the MQTT broker"))
                self._pending.clear()
            if was_connected and self.presence == "log":
                # a lost Mosquitto dropped every device; a clustered broker's presence source
                # (presence="none") says for itself who is gone
                await self._end_all(DisconnectReason.LOST)
            # jittered, so that the processes a broker restart dropped do not come back in step
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _new_client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.target.host,
            self.target.port,
            username=self.target.username,
            password=self.target.password,
            identifier=self.target.client_id,
            clean_session=True,
            keepalive=30,
            timeout=self.request_timeout,
            tls_context=ssl.create_default_context() if self.target.tls else None,
            max_queued_incoming_messages=self.queue_capacity,
        )
        # the gateway keeps up to PUBLISH_WINDOW publishes pending at once (a burst of
        # commands); aiomqtt logs a warning for each call made past this many
        client.pending_calls_threshold = 2 * PUBLISH_WINDOW
        return client

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics = [DEVICE_TOPICS, THING_TOPICS]
        if self.presence == "log":
            topics += LOG_TOPICS
        if self.credentials == "dynsec":
            topics.append(RESPONSE_TOPIC)
        for topic in topics:
            granted = await client.subscribe(topic, qos=0)
            codes = [code.value if isinstance(code, ReasonCode) else code for code in granted]
            if any(code >= 0x80 for code in codes) and topic == THING_TOPICS:
                # a broker set up before data-template devices existed: Gizwits devices work
                log.warning(
                    "the broker refused the subscription to %r: data-template (Tencent) devices "
                    "are not heard; grant the gateway's account subscribe and receive rights on "
                    "it, and send rights on $thing/down/#",
                    topic,
                )
            elif any(code >= 0x80 for code in codes):
                raise aiomqtt.MqttError(
                    f"the broker refused the subscription to {topic!r}; "
                    "grant the gateway's account subscribe and receive rights on it"
                )

    async def _subscribe_bus(self, client: aiomqtt.Client) -> None:
        granted = await client.subscribe(BUS_TOPIC, qos=1)
        codes = [code.value if isinstance(code, ReasonCode) else code for code in granted]
        if any(code >= 0x80 for code in codes):
            log.warning(
                "the broker refused the subscription to %r: this process will not hear other "
                "processes' sign-outs, binding and device changes before its caches expire; "
                "grant the gateway's account subscribe, receive and send rights on it",
                BUS_TOPIC,
            )

    async def publish_bus(self, payload: bytes) -> None:
        """Publish a message to the other iotcloud processes on this broker (`ProcessBus`)."""
        await self._send(BUS_TOPIC, payload, qos=1)

    async def _send(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Hand one message to the broker; `BrokerUnavailable` when it cannot take it."""
        client = self._client
        if client is None:
            raise BrokerUnavailable(f"not connected to the MQTT broker at {self.target}")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def _end_all(self, reason: DisconnectReason) -> None:
        sessions, self._sessions = self._sessions, {}
        for client_id, principal in sessions.items():
            await self._safely(self.events.on_disconnect(principal, client_id, reason))

    # -- incoming -----------------------------------------------------------------------------

    async def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic.startswith("dev2app/"):
            if self.dotted_levels:
                topic = rejoin_device_name(topic)
            await self._device_message(topic.split("/")[1], topic, payload)
        elif topic.startswith("$thing/up/"):
            if self.dotted_levels:
                topic = rejoin_device_name(topic)
            parsed = parse_thing_topic(topic)
            if parsed is not None:
                client_id = parsed.product_id + parsed.device_name
                await self._device_message(client_id, topic, payload)
        elif topic in LOG_TOPICS:
            await self._log_line(payload.decode("utf-8", "replace").strip())
        elif topic == RESPONSE_TOPIC:
            self._control_response(payload)
        elif topic == BUS_TOPIC and self.bus_receiver is not None:
            await self._safely(self.bus_receiver(payload))

    async def _device_message(self, client_id: str, topic: str, payload: bytes) -> None:
        principal = self._sessions.get(client_id)
        if principal is None:  # connected before the gateway was: its message proves it
            principal = await self._start_session(client_id, 0, UNKNOWN_PEER)
            if principal is None:
                return
        if principal.thing != topic.startswith("$"):  # a did-named topic of a Tencent device
            return
        self._stats.messages_in += 1
        await self._safely(self.events.on_publish(principal, topic, payload))

    async def _log_line(self, line: str) -> None:
        connected = _CONNECTED.search(line)
        if connected is not None:
            peer, client_id, keepalive = connected.groups()
            old = self._sessions.pop(client_id, None)
            if old is not None:
                await self._safely(
                    self.events.on_disconnect(old, client_id, DisconnectReason.TAKEOVER)
                )
            await self._start_session(client_id, int(keepalive), peer)
            return
        broken = _SOCKET_ERROR.search(line)
        if broken is not None:
            principal = self._sessions.pop(broken.group(1), None)
            if principal is not None:
                await self._safely(
                    self.events.on_disconnect(principal, broken.group(1), DisconnectReason.LOST)
                )
            return
        ended = _CLIENT_LINE.search(line)
        if ended is None:
            return
        client_id, rest = ended.groups()
        if rest.startswith("disconnected, not authorised") and client_id == "<unknown>":
            self._stats.auth_failures += 1
            return
        reason = _ending(rest)
        principal = self._sessions.pop(client_id, None) if reason is not None else None
        if principal is not None and reason is not None:
            await self._safely(self.events.on_disconnect(principal, client_id, reason))

    async def _start_session(
        self, client_id: str, keepalive: int, peer: str
    ) -> DevicePrincipal | None:
        try:
            principal = await self.directory.principal_of_client(client_id)
        except Exception:
            log.exception("could not look up device %s", client_id)
            return None
        if principal is None or principal.client_id != client_id:
            return None  # not a device of ours (another client of the broker)
        self._sessions[client_id] = principal
        self._stats.connects += 1
        await self._safely(self.events.on_connect(principal, client_id, keepalive, peer))
        return principal

    async def start_session(self, client_id: str, peer: str) -> DevicePrincipal | None:
        """Presence from outside (``presence="none"``): the client ``client_id`` connected.
        A session it already has is kept (no second ``on_connect``); a client that is not an
        enabled device of ours is ignored (None)."""
        known = self._sessions.get(client_id)
        if known is not None:
            return known
        return await self._start_session(client_id, 0, peer)

    async def end_session(self, client_id: str, reason: DisconnectReason) -> bool:
        """Presence from outside: the client's session ended; False if it had none."""
        principal = self._sessions.pop(client_id, None)
        if principal is None:
            return False
        await self._safely(self.events.on_disconnect(principal, client_id, reason))
        return True

    def session_clients(self) -> set[str]:
        """The MQTT client ids with a device session now (a snapshot)."""
        return set(self._sessions)

    def session_of(self, client_id: str) -> DevicePrincipal | None:
        """The device with a session under ``client_id``, if any."""
        return self._sessions.get(client_id)

    def _client_of(self, did: str) -> str | None:
        """The client id of the device's session, if it has one."""
        for client_id, principal in self._sessions.items():
            if principal.did == did:
                return client_id
        return None

    def _control_response(self, payload: bytes) -> None:
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable dynamic-security response: %r", payload[:200])
            return
        by_request: dict[str, list[dict[str, Any]]] = {}
        for response in responses:
            by_request.setdefault(str(response.get("correlationData")), []).append(response)
        for request_id, answers in by_request.items():
            future = self._pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(answers)

    @staticmethod
    async def _safely(call: Any) -> None:
        try:
            await call
        except Exception:
            log.exception("gateway event handler failed")

    # -- outgoing -----------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if not is_cloud_topic(topic):
            raise ValueError(f"{topic!r} is not a topic name")
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos}")
        await self._send(topic, payload, qos, retain)
        self._stats.messages_out += 1

    async def disconnect_device(self, did: str) -> bool:
        """Kick the device (dynamic security: disable, then enable the client again; a
        data-template device, which dynamic security does not know, cannot be kicked)."""
        client_id = self._client_of(did)
        was_connected = client_id is not None
        if self.credentials != "dynsec":
            return False
        if client_id is not None and self._sessions[client_id].thing:
            return False
        await self._control(
            [
                {"command": "disableClient", "username": did},
                {"command": "enableClient", "username": did},
            ]
        )
        principal = self._sessions.pop(did, None)
        if principal is not None:
            await self._safely(self.events.on_disconnect(principal, did, DisconnectReason.KICKED))
        return was_connected

    def connected_dids(self) -> set[str]:
        return {principal.did for principal in self._sessions.values()}

    async def devices_changed(self, credentials: Sequence[DeviceCredential]) -> None:
        if self.credentials != "dynsec" or not credentials:
            for credential in credentials:
                if not credential.enabled and self._client_of(credential.did) is not None:
                    await self.disconnect_device(credential.did)
            return
        try:
            async with self._sync_lock:
                await self._apply(credentials)
        except (BrokerUnavailable, TimeoutError) as exc:
            log.warning(
                "could not update %d device credential(s) in the broker (%s); "
                "the next reconciliation retries",
                len(credentials),
                exc,
            )

    # -- credentials (dynamic security) -------------------------------------------------------

    async def _control(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send dynamic-security commands and wait for their responses."""
        client = self._client
        if client is None:
            raise BrokerUnavailable(f"not connected to the MQTT broker at {self.target}")
        request_id = uuid.uuid4().hex
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        body = {"commands": [{**command, "correlationData": request_id} for command in commands]}
        try:
            await client.publish(CONTROL_TOPIC, json.dumps(body).encode(), qos=1)
            async with asyncio.timeout(self.request_timeout):
                return await future
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        finally:
            self._pending.pop(request_id, None)

    async def _checked(self, commands: list[dict[str, Any]]) -> None:
        for response in await self._control(commands) if commands else []:
            error = response.get("error")
            if error and not str(error).endswith("already exists"):
                log.warning("broker refused %s: %s", response.get("command"), error)

    async def _apply(self, credentials: Sequence[DeviceCredential]) -> None:
        answers = await self._control(
            [{"command": "getClient", "username": c.did} for c in credentials]
        )
        present = {
            answer["data"]["client"]["username"]: answer["data"]["client"]
            for answer in answers
            if "data" in answer and "client" in answer["data"]
        }
        commands = [
            command
            for credential in credentials
            for command in sync_commands(credential, present.get(credential.did))
        ]
        await self._checked(commands)
        for credential in credentials:
            if not credential.enabled and not credential.thing:
                principal = self._sessions.pop(credential.did, None)
                if principal is not None:
                    await self._safely(
                        self.events.on_disconnect(
                            principal, credential.did, DisconnectReason.KICKED
                        )
                    )

    async def reconcile(self) -> int:
        """Make the broker's device clients match the registry; returns the commands sent."""
        async with self._sync_lock:
            listed = await self._control(
                [{"command": "listClients", "verbose": True, "count": -1, "offset": 0}]
            )
            clients = {
                client["username"]: client
                for answer in listed
                for client in answer.get("data", {}).get("clients", [])
                if client.get("textname") == CLIENT_TEXT_NAME
            }
            sent = 0
            async for page in self.directory.credentials():
                commands = [
                    command
                    for credential in page
                    for command in sync_commands(credential, clients.pop(credential.did, None))
                ]
                await self._checked(commands)
                sent += len(commands)
            stale = [
                command
                for username in clients
                for command in (
                    {"command": "deleteClient", "username": username},
                    {"command": "deleteRole", "rolename": ROLE_PREFIX + username},
                )
            ]
            await self._checked(stale)
            return sent + len(stale)

    async def _sync_forever(self) -> None:
        failing = False
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(self.sync_interval):
                    await self._resync.wait()
            self._resync.clear()
            if not self._connected.is_set():
                continue
            try:
                sent = await self.reconcile()
                if sent:
                    log.info("broker credentials reconciled (%d commands)", sent)
                if failing:
                    log.info("broker credential reconciliation recovered")
                failing = False
            except Exception as exc:  # keep reconciling; log the failure once
                if not failing:
                    log.warning("broker credential reconciliation failed: %s; will retry", exc)
                failing = True


def rejoin_device_name(topic: str) -> str:
    """A device topic whose last field's dots a broker delivered as level separators, made
    whole again: the device name of ``$thing/up/{kind}/{PID}/{name}`` (``.../lamp/kitchen`` ->
    ``.../lamp.kitchen``), the app client id of ``dev2app/{did}/{client id}``."""
    fixed = 2 if topic.startswith("dev2app/") else 4
    levels = topic.split("/", fixed)
    if len(levels) <= fixed:
        return topic
    return "/".join([*levels[:fixed], levels[fixed].replace("/", ".")])


def _ending(rest: str) -> DisconnectReason | None:
    """The reason a ``Client <id> <rest>`` log line ends a session with, if it does."""
    for text, reason in _ENDINGS:
        if text in rest:
            return reason
    if rest.startswith("disconnected"):
        return DisconnectReason.CLEAN if rest == "disconnected." else DisconnectReason.LOST
    return None


def _payload(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return str(payload).encode() if payload is not None else b""
