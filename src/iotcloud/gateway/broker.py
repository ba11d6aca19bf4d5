"""The broker-adapter interface: who a device is, what it may do, and what the gateway hears.

A broker adapter (the embedded device transport, or an external broker calling our hooks)
authenticates every device CONNECT through an `Authenticator`, enforces the topic ACL
(`may_publish`, `may_subscribe`) on every PUBLISH and SUBSCRIBE, and reports presence and traffic
to `BrokerEvents`.

Topic ACL (Gizwits device side, `shared/spec/gizwits.md` §3.3-3.4), for a device with ``did`` of
product ``product_key``:

* publish: ``dev2app/{did}`` (broadcast reports) and ``dev2app/{did}/{clientid}`` (replies to one
  app client; exactly one more non-empty level, no deeper levels), and ``cli2ser_req`` (GAgent's
  server-control requests; the topic carries no did, the principal tells who sent it);
* subscribe: exactly ``ser2cli_res/{did}`` and ``ser2cli_noti/{product_key}``, and any well-formed
  filter under ``app2dev/{did}`` (``app2dev/{did}``, ``app2dev/{did}/#``, ``app2dev/{did}/+``,
  ``app2dev/{did}/{clientid}``). A filter whose first two levels are not literally one of these
  prefixes is refused, so no wildcard can reach another device's topics.

A data-template (Tencent) device, ``PID`` + ``NAME`` (`shared/spec/tencent.md` §2.2), may only
publish exactly ``$thing/up/{property,event,action,service}/{PID}/{NAME}`` and subscribe exactly
``$thing/down/{property,event,action,service}/{PID}/{NAME}`` (no wildcards): its own topics.
Gizwits topics are refused to it, and ``$thing`` topics to Gizwits devices.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol, Self

from iotcloud.codecs.thing import parse_thing_topic

_FORBIDDEN_IN_ID = frozenset("/+#\0")

BUS_TOPIC: Final = "iotcloud/bus"
"""Where the iotcloud processes sharing an external broker tell each other of changes
(`iotcloud.services.bus`); devices may neither publish nor subscribe there."""

PUBLISH_WINDOW: Final = 64
"""Most publishes a sender keeps pending at once on a broker whose `publish` suspends (an
external broker's client waits for its socket): a burst of commands goes out this many per
event-loop iteration instead of one."""


@dataclass(frozen=True, slots=True)
class DevicePrincipal:
    """An authenticated device: the identity every ACL decision and event refers to."""

    did: str
    product_key: str
    device_name: str = ""
    """The device's name in its product (its DeviceName; a Gizwits device's MAC)."""
    thing: bool = False
    """A data-template (Tencent) device: client id ``{product_key}{device_name}``, ``$thing``
    topics."""

    @property
    def client_id(self) -> str:
        """The MQTT client id the device connects with."""
        return f"{self.product_key}{self.device_name}" if self.thing else self.did


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """What a broker that keeps its own credential store needs to know of one device."""

    did: str
    product_key: str
    passcode: str
    enabled: bool
    thing: bool = False
    """A data-template device: it signs in with its psk, which a broker's static credential
    store cannot check (its user name changes on every connection)."""


class DeviceDirectory(Protocol):
    """The registry as a broker adapter sees it (for adapters that cannot ask per CONNECT)."""

    async def principal_of(self, did: str) -> DevicePrincipal | None:
        """The enabled device with ``did``, else None. A session may follow: an adapter that
        learns of a connection after the fact calls this in place of `Authenticator`."""
        ...

    async def principal_of_client(self, client_id: str) -> DevicePrincipal | None:
        """Like `principal_of`, by the MQTT client id: a Gizwits did or a data-template
        device's ``{ProductId}{DeviceName}``."""
        ...

    def credentials(
        self, dids: Sequence[str] | None = None
    ) -> AsyncIterator[list[DeviceCredential]]:
        """Every device (``dids`` None), or the named ones that exist, in pages."""
        ...


class AuthRefusal(enum.IntEnum):
    """Why an `Authenticator` refuses a CONNECT; the value is the MQTT 3.1/3.1.1 CONNACK code."""

    BAD_CREDENTIALS = 4
    """Unknown did or wrong passcode ("bad user name or password")."""
    NOT_AUTHORIZED = 5
    """Known device that may not connect now, e.g. disabled ("not authorized")."""


class Authenticator(Protocol):
    """Decides whether a CONNECT may become a device session."""

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal | AuthRefusal | None:
        """Return the device, or why it is refused (``None`` means `AuthRefusal.BAD_CREDENTIALS`).

        Called once per CONNECT, after the broker checked the protocol and that ``client_id`` is
        non-empty and equals ``username`` (a Gizwits device) or is its first ``;``-separated
        field (a data-template device). The returned principal's ``client_id`` must equal
        ``client_id``. An exception or a slow answer refuses the CONNECT with "server
        unavailable" (3); the device retries later.
        """
        ...


class DisconnectReason(enum.StrEnum):
    """Why a device session ended (reported exactly once per session)."""

    CLEAN = "disconnect"
    """The device sent DISCONNECT."""
    LOST = "lost"
    """The connection closed or failed without DISCONNECT."""
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    """Nothing received for 1.5 x the device's keep-alive."""
    KICKED = "kicked"
    """Closed by `BrokerAdapter.disconnect_device` (device disabled or deleted)."""
    TAKEOVER = "takeover"
    """A new connection with the same client id replaced this one."""
    PROTOCOL_ERROR = "protocol_error"
    """The device broke the protocol (oversized or malformed packet, invalid topic)."""
    SERVER_ERROR = "server_error"
    """The server could not take or store a QoS 1 message of the device (overloaded past its
    bound, or the write failed): it was not acknowledged, and the connection was closed so that
    the device sends it again."""
    SHUTDOWN = "shutdown"
    """The broker stopped."""


class AclAction(enum.StrEnum):
    """What a device tried to do when the ACL said no."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class BrokerEvents(Protocol):
    """What the gateway hears from a broker.

    Callbacks are awaited one at a time, in order, from one task owned by the broker: for one
    session, ``on_connect`` comes first and ``on_disconnect`` last. Callbacks should be quick
    (hand work to a bounded queue); an exception is logged and does not affect the device.
    """

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        """A device session started: CONNACK "accepted" was sent. ``peer`` is ``host:port``."""
        ...

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        """The session that ``on_connect`` reported ended."""
        ...

    async def on_publish(
        self, principal: DevicePrincipal, topic: str, payload: bytes
    ) -> Awaitable[None] | None:
        """The device published a message the ACL allows.

        May return an awaitable that completes once what the message carried is durably
        stored (and fails if it could not be): the embedded transport acknowledges a QoS 1
        PUBLISH only then. None means there is nothing to wait for.
        """
        ...

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        """The ACL refused a PUBLISH (dropped) or a SUBSCRIBE (SUBACK 0x80)."""
        ...


@dataclass(slots=True)
class BrokerStats:
    """Counters since the broker started (monotonic; read them, never reset them)."""

    connects: int = 0
    """Device sessions started (CONNACK accepted)."""
    auth_failures: int = 0
    """CONNECTs refused for identity or credentials (CONNACK 2, 4 or 5)."""
    messages_in: int = 0
    """Device PUBLISH packets the ACL allowed."""
    messages_out: int = 0
    """PUBLISH packets written to devices."""
    denied_publish: int = 0
    """Device PUBLISH packets dropped by the ACL."""
    denied_subscribe: int = 0
    """Subscription filters refused by the ACL."""
    rejected_connections: int = 0
    """TCP connections closed before a session: over capacity, bad protocol, no CONNECT in time."""
    events_dropped: int = 0
    """``on_publish``/``on_denied`` events shed because the event queue was full."""
    shed: int = 0
    """Device PUBLISHes dropped at the edge because ingestion was too far behind (QoS 0, or
    QoS 1 past twice the bound: those also close the connection)."""
    paused_reads: int = 0
    """Times a device connection stopped being read because ingestion was behind."""


class BrokerAdapter(Protocol):
    """A running MQTT broker that devices connect to; an async context manager.

    ``async with adapter:`` starts it; leaving the block closes every device connection
    (reported as `DisconnectReason.SHUTDOWN`) and delivers the pending events.
    """

    @property
    def stats(self) -> BrokerStats: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Route a message to the devices subscribed to ``topic``.

        Returns once the broker accepted it for routing (not when devices received it).
        Raises ``ValueError`` for a topic that is not a valid MQTT topic name or a bad QoS.
        """
        ...

    async def disconnect_device(self, did: str) -> bool:
        """Close the device's connection, if any; True if one was closed.

        On return the session has ended and its ``on_disconnect`` (`DisconnectReason.KICKED`)
        is queued. It does not stop the device from reconnecting: refuse it in the
        `Authenticator`.
        """
        ...

    def connected_dids(self) -> set[str]:
        """The dids with a session now (a snapshot)."""
        ...

    def unready_reason(self) -> str | None:
        """None while the broker can carry messages; else why not (``GET /readyz``)."""
        ...

    async def devices_changed(self, credentials: Sequence[DeviceCredential]) -> None:
        """The registry changed these devices (created, new passcode, disabled, enabled).

        A connected device that is no longer enabled loses its session. An adapter with its
        own credential store updates it before returning, so a device registered over HTTP
        can connect as soon as its registration was answered.
        """
        ...


def is_topic_name(topic: str) -> bool:
    """Whether ``topic`` is a valid MQTT topic name a client may publish to (no wildcards, no $)."""
    return (
        bool(topic)
        and not topic.startswith("$")
        and "+" not in topic
        and "#" not in topic
        and "\0" not in topic
        and len(topic.encode()) <= 0xFFFF
    )


def is_topic_filter(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a well-formed MQTT subscription filter."""
    if not topic_filter or "\0" in topic_filter or len(topic_filter.encode()) > 0xFFFF:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether subscription filter ``topic_filter`` matches topic name ``topic`` (MQTT rules:
    ``+`` is one level, a final ``#`` any number of levels including none, so ``a/#`` matches
    ``a``; a filter starting with a wildcard does not match a ``$`` topic)."""
    if topic[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    filter_levels = topic_filter.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(levels) or (level != "+" and level != levels[index]):
            return False
    return len(filter_levels) == len(levels)


def filter_prefix(topic_filter: str) -> str:
    """The literal levels of ``topic_filter`` before its first wildcard (all of it when it has
    none): every topic it matches starts with them, so a subscription index keyed by this
    finds a topic's subscribers with one lookup per level of the topic."""
    literal: list[str] = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        literal.append(level)
    return "/".join(literal)


def topic_prefixes(topic: str) -> list[str]:
    """Every `filter_prefix` a filter matching ``topic`` can have: "" and each run of leading
    levels of ``topic``."""
    levels = topic.split("/")
    return [""] + ["/".join(levels[: count + 1]) for count in range(len(levels))]


def is_cloud_topic(topic: str) -> bool:
    """Whether the cloud may publish to ``topic``: a valid topic name, or a ``$thing/down``
    topic of a data-template device."""
    if is_topic_name(topic):
        return True
    parsed = parse_thing_topic(topic)
    return parsed is not None and parsed.direction == "down"


def _own_thing_topic(principal: DevicePrincipal, topic: str, direction: str) -> bool:
    parsed = parse_thing_topic(topic)
    return (
        parsed is not None
        and parsed.direction == direction
        and parsed.product_id == principal.product_key
        and parsed.device_name == principal.device_name
        and _usable(principal.product_key)
        and _usable(principal.device_name)
    )


def may_publish(principal: DevicePrincipal, topic: str) -> bool:
    """Whether the device may publish to ``topic`` (see the module docstring)."""
    if principal.thing:
        return _own_thing_topic(principal, topic, "up")
    if not _usable(principal.did) or not is_topic_name(topic):
        return False
    if topic == "cli2ser_req":
        return True
    levels = topic.split("/")
    if levels[0] != "dev2app" or len(levels) not in (2, 3) or levels[1] != principal.did:
        return False
    return len(levels) == 2 or levels[2] != ""


def may_subscribe(principal: DevicePrincipal, topic_filter: str) -> bool:
    """Whether the device may subscribe to ``topic_filter`` (see the module docstring)."""
    if principal.thing:
        return _own_thing_topic(principal, topic_filter, "down")
    if not _usable(principal.did) or not is_topic_filter(topic_filter):
        return False
    levels = topic_filter.split("/")
    if len(levels) < 2:
        return False
    head, rest = (levels[0], levels[1]), levels[2:]
    if head == ("app2dev", principal.did):
        return True
    if head == ("ser2cli_res", principal.did):
        return not rest
    return (
        head == ("ser2cli_noti", principal.product_key)
        and _usable(principal.product_key)
        and not rest
    )


def _usable(identifier: str) -> bool:
    """An id that can be a topic level on its own (not empty, no separator, no wildcard)."""
    return bool(identifier) and _FORBIDDEN_IN_ID.isdisjoint(identifier)
