"""Broker authentication over HTTP: the questions an external broker asks before it lets a
device connect, publish or subscribe, answered with the embedded transport's rules.

The rules are not restated here. Admission is `Authenticator.authenticate` (the device
gateway: did + passcode, a data-template device's signed user name, disabled devices refused)
and topics are `may_publish` / `may_subscribe` (`iotcloud.gateway.broker`). This module adds
what asking over HTTP needs on top of them:

* **Translation.** RabbitMQ's MQTT plugin routes through the ``amq.topic`` exchange: an MQTT
  topic becomes a routing key with ``/`` -> ``.`` and ``+`` -> ``*`` (``#`` stays), and a
  subscription is a binding of the client's own queues ``mqtt-subscription-{clientid}qos0`` /
  ``qos1``. `may_publish_routing_key` and `may_bind` decide in that space: a Gizwits device's
  key is read back as an MQTT topic (its did and product key hold no ``.``) and handed to the
  same ACL; a data-template device may use exactly the keys of its own ``$thing`` topics
  (compared as keys, so a DeviceName holding ``.`` still matches only itself). EMQX keeps
  ``/`` and is asked with the MQTT topic itself.
* **Memory** (`BrokerAuthService`). A RabbitMQ CONNECT asks ``user`` twice (authentication,
  then authorization), then ``vhost``, then a ``resource`` / ``topic`` question per queue,
  binding and new topic, and asks again whenever a channel hibernates (its permission cache is
  dropped then). The answers come from memory: an admission is kept per (user name, keyed
  digest of the password) and a device per user name, each for ``cache_seconds``; topic and
  resource decisions are pure functions of the device, computed per request. What it trades:
  a device disabled or given a new passcode by *another* process is still admitted for up to
  ``cache_seconds``. Changes made by this process apply at once (`devices_changed` drops the
  device's entries, and every refusal cached before the change), and a lookup that was in
  flight during a change is not stored (``epoch``), so a stale read never outlives it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar, cast

from prometheus_client.core import CounterMetricFamily, Metric

from iotcloud.codecs.thing import THING_KINDS, Direction, thing_topic
from iotcloud.domain.clock import Clock
from iotcloud.domain.devices import DID_LENGTH
from iotcloud.domain.thing_auth import expiry_passed, parse_username
from iotcloud.gateway.broker import (
    Authenticator,
    AuthRefusal,
    DeviceDirectory,
    DevicePrincipal,
    may_publish,
    may_subscribe,
)

log = logging.getLogger(__name__)

RABBITMQ_EXCHANGE: Final = "amq.topic"
"""The exchange RabbitMQ's MQTT plugin publishes to and binds its queues on (``mqtt.exchange``,
left at its default)."""
SUBSCRIPTION_QUEUE_PREFIX: Final = "mqtt-subscription-"
RABBITMQ_PERMISSIONS: Final = frozenset({"configure", "write", "read"})
MAX_ENTRIES: Final = 100_000
"""Entries each cache holds at most (least recently used dropped first)."""
LOOKUP_TIMEOUT: Final = 5.0
"""Seconds a registry lookup may take before the question is answered as an error."""
_PEERS_KEPT: Final = 1024

_NOT_IN_KEY_WORD: Final = frozenset("/+#*\0")
"""Characters an identifier may not hold to stand as a routing-key word of its own (``.``
is checked separately: a DeviceName may hold it)."""

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- translation (pure) ---------------------------------------------------------------------------


def routing_key(topic: str) -> str:
    """The routing key RabbitMQ's MQTT plugin gives MQTT topic (or filter) ``topic``."""
    return topic.replace("/", ".").replace("+", "*")


def mqtt_topic(key: str) -> str:
    """The MQTT topic (or filter) RabbitMQ hands to MQTT subscribers for routing (or binding)
    key ``key``: ``.`` -> ``/``, ``*`` -> ``+``."""
    return key.replace("*", "+").replace(".", "/")


def subscription_queues(client_id: str) -> tuple[str, str]:
    """The two queues RabbitMQ's MQTT plugin declares for a client: QoS 0 and QoS 1."""
    base = SUBSCRIPTION_QUEUE_PREFIX + client_id
    return base + "qos0", base + "qos1"


def _thing_keys(principal: DevicePrincipal, direction: Direction) -> frozenset[str]:
    """The routing keys of a data-template device's own ``$thing/{direction}`` topics (empty
    when its identifiers cannot stand as key words)."""
    names = (principal.product_key, principal.device_name)
    if not all(name and _NOT_IN_KEY_WORD.isdisjoint(name) for name in names):
        return frozenset()
    return frozenset(
        routing_key(thing_topic(direction, kind, principal.product_key, principal.device_name))
        for kind in THING_KINDS
    )


def _plain_words(principal: DevicePrincipal) -> bool:
    """Whether a Gizwits device's did and product key read back unchanged from a key."""
    return all(
        name and "." not in name and _NOT_IN_KEY_WORD.isdisjoint(name)
        for name in (principal.did, principal.product_key)
    )


def may_publish_routing_key(principal: DevicePrincipal, key: str) -> bool:
    """Whether the device may publish with routing key ``key`` on ``amq.topic``."""
    if principal.thing:
        return key in _thing_keys(principal, "up")
    return _plain_words(principal) and may_publish(principal, mqtt_topic(key))


def may_bind(principal: DevicePrincipal, key: str) -> bool:
    """Whether the device's queue may be bound to ``amq.topic`` with binding key ``key``
    (its MQTT SUBSCRIBE): ``*`` and ``#`` are wildcards here, as in the filter."""
    if principal.thing:
        return key in _thing_keys(principal, "down")
    return _plain_words(principal) and may_subscribe(principal, mqtt_topic(key))


def rabbitmq_resource_allowed(
    principal: DevicePrincipal, resource: str, name: str, permission: str
) -> bool:
    """RabbitMQ's ``resource`` question: the device's own two subscription queues (declare,
    delete, bind, consume: every permission), and ``amq.topic`` to publish to (``write``) and
    bind from (``read``), never to reconfigure. Nothing else."""
    if permission not in RABBITMQ_PERMISSIONS:
        return False
    if resource == "queue":
        return name in subscription_queues(principal.client_id)
    if resource == "exchange":
        return name == RABBITMQ_EXCHANGE and permission in ("write", "read")
    return False


def rabbitmq_topic_allowed(
    principal: DevicePrincipal, exchange: str, permission: str, key: str
) -> bool:
    """RabbitMQ's ``topic`` question: ``write`` is a PUBLISH (`may_publish_routing_key`),
    ``read`` a SUBSCRIBE's binding (`may_bind`), both on ``amq.topic`` only."""
    if exchange != RABBITMQ_EXCHANGE:
        return False
    if permission == "write":
        return may_publish_routing_key(principal, key)
    if permission == "read":
        return may_bind(principal, key)
    return False


def emqx_allowed(principal: DevicePrincipal, action: str, topic: str) -> bool:
    """EMQX's authorization question: ``publish`` to a topic or ``subscribe`` to a filter,
    with the MQTT topic as the device sent it."""
    if action == "publish":
        return may_publish(principal, topic)
    if action == "subscribe":
        return may_subscribe(principal, topic)
    return False


def device_shaped(username: str) -> bool:
    """Whether ``username`` can name a device: a did (22 letters or digits) or a data-template
    user name (``{PID}{NAME};{sdkappid};{connid};{expiry}``). Other names belong to somebody
    else (EMQX is answered ``ignore`` for them)."""
    if parse_username(username) is not None:
        return True
    return len(username) == DID_LENGTH and username.isascii() and username.isalnum()


def expected_client_id(username: str) -> str:
    """The MQTT client id a device signing in as ``username`` must use: the did itself, or a
    data-template user name's first field ``{PID}{NAME}``."""
    fields = parse_username(username)
    return fields.client_id if fields is not None else username


def parse_networks(text: str) -> tuple[Network, ...]:
    """``IOTCLOUD_BROKER_AUTH_FROM``: comma-separated addresses or CIDR networks. Raises
    ``ValueError`` naming a bad entry."""
    networks: list[Network] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network ({exc})") from exc
    return tuple(networks)


# -- memory ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T
    did: str | None
    """The device a positive answer is about (dropped when it changes); None for a refusal."""
    deadline: float
    epoch: int


class _Answers(Generic[T]):
    """Answers for ``ttl`` seconds, at most `MAX_ENTRIES`, dropped per device.

    A positive answer (about a device) is indexed by did and dropped when that device changes;
    a refusal (``did`` None: an unknown or refused name cannot be told apart cheaply) is
    valid only in the epoch it was stored in, and every change starts a new epoch.
    """

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self.epoch = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[object, _Entry[T]] = OrderedDict()
        self._by_did: dict[str, set[object]] = {}

    def get(self, key: object) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is not None and (
            entry.deadline <= self.clock() or (entry.did is None and entry.epoch != self.epoch)
        ):
            self._remove(key)
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: object, value: T, did: str | None, epoch: int) -> None:
        """Keep ``value`` unless caching is off or a change happened since ``epoch`` (when the
        lookup that produced it started)."""
        if self.ttl <= 0 or epoch != self.epoch:
            return
        self._remove(key)
        self._entries[key] = _Entry(value, did, self.clock() + self.ttl, epoch)
        if did is not None:
            self._by_did.setdefault(did, set()).add(key)
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def drop(self, dids: Sequence[str] | None) -> None:
        """Forget the answers about ``dids`` (every answer for None) and every refusal."""
        self.epoch += 1
        if dids is None:
            self._entries.clear()
            self._by_did.clear()
            return
        for did in dids:
            for key in self._by_did.pop(did, ()):
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: object) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.did is not None:
            keys = self._by_did.get(entry.did)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_did[entry.did]


class BrokerAuthService:
    """Answers an external broker's questions about devices (see the module docstring); an
    async context manager owning its registry lookups.

    ``cache_seconds`` is how long an answer is reused (0: never); ``allowed_from`` the
    networks whose addresses may ask at all (`peer_allowed`).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        directory: DeviceDirectory,
        clock: Clock,
        *,
        cache_seconds: float,
        allowed_from: Sequence[Network],
        monotonic: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.authenticator = authenticator
        self.directory = directory
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.allowed_from = tuple(allowed_from)
        self._admissions: _Answers[DevicePrincipal | AuthRefusal] = _Answers(
            cache_seconds, monotonic, max_entries
        )
        self._devices: _Answers[DevicePrincipal | None] = _Answers(
            cache_seconds, monotonic, max_entries
        )
        self._pending: dict[object, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._peers: dict[str | None, bool] = {}
        # passwords are kept only as digests keyed with a secret of this process
        self._key = secrets.token_bytes(32)
        self._failing = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- who may ask --------------------------------------------------------------------------

    def peer_allowed(self, host: str | None) -> bool:
        """Whether the socket peer ``host`` is in ``allowed_from`` (an IPv4-mapped IPv6
        address counts as its IPv4 address; no address, e.g. a Unix socket, is refused)."""
        allowed = self._peers.get(host)
        if allowed is None:
            allowed = self._peers[host] = self._in_networks(host)
            if len(self._peers) > _PEERS_KEPT:
                self._peers.clear()
                self._peers[host] = allowed
        return allowed

    def _in_networks(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_from)

    # -- questions ----------------------------------------------------------------------------

    async def admit(
        self, username: str, password: str, client_id: str
    ) -> DevicePrincipal | AuthRefusal:
        """Whether a device may connect as ``username`` with ``password`` and MQTT client id
        ``client_id``: the embedded transport's admission, plus its rule that the client id is
        the device's own (a device must not take over another's session by its client id).

        Raises what the registry raised when it could not be read (nothing is cached then).
        """
        if not password or not device_shaped(username) or client_id != expected_client_id(username):
            return AuthRefusal.BAD_CREDENTIALS
        digest = hashlib.blake2b(password.encode(), key=self._key, digest_size=16).digest()
        key = (username, digest)
        entry = self._admissions.get(key)
        if entry is not None:
            answer = entry.value
        else:
            answer = await self._once(
                ("admit", key), lambda: self._admit(key, username, password, client_id)
            )
        if isinstance(answer, DevicePrincipal) and self._expired(username):
            return AuthRefusal.BAD_CREDENTIALS
        return answer

    async def _admit(
        self, key: object, username: str, password: str, client_id: str
    ) -> DevicePrincipal | AuthRefusal:
        epoch = self._admissions.epoch
        found = await self._ask(self.authenticator.authenticate(client_id, username, password))
        answer = found if found is not None else AuthRefusal.BAD_CREDENTIALS
        if isinstance(answer, DevicePrincipal):
            self._admissions.put(key, answer, answer.did, epoch)
            self._devices.put(username, answer, answer.did, epoch)
        else:
            self._admissions.put(key, answer, None, epoch)
        return answer

    async def device(self, username: str) -> DevicePrincipal | None:
        """The enabled device that signs in as ``username`` (a broker that authenticated the
        user asks what it may do), else None. No password: the broker vouches for the user.

        Raises what the registry raised when it could not be read.
        """
        if not device_shaped(username):
            return None
        entry = self._devices.get(username)
        if entry is not None:
            return entry.value
        return await self._once(("device", username), lambda: self._device(username))

    async def _device(self, username: str) -> DevicePrincipal | None:
        epoch = self._devices.epoch
        client_id = expected_client_id(username)
        found = await self._ask(self.directory.principal_of_client(client_id))
        # the user name's shape must match the device's: a did names a Gizwits device only
        thing = parse_username(username) is not None
        if found is not None and (found.thing != thing or found.client_id != client_id):
            found = None
        self._devices.put(username, found, found.did if found is not None else None, epoch)
        return found

    def devices_changed(self, dids: Sequence[str] | None) -> None:
        """The registry changed these devices (every device for None): forget what was known
        of them, and every refusal (one of them may concern a device just created or
        enabled). Lookups in flight finish, but what they found is not kept."""
        self._admissions.drop(dids)
        self._devices.drop(dids)
        self._pending.clear()

    # -- internals ----------------------------------------------------------------------------

    def _expired(self, username: str) -> bool:
        """A cached admission of a data-template user name whose expiry has passed since."""
        fields = parse_username(username)
        return fields is not None and expiry_passed(fields.expiry, self.clock.now().timestamp())

    async def _once(self, key: object, lookup: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``lookup`` once (as a task of its own, so that a caller going away does not
        cancel it for the others) for every caller asking for ``key`` meanwhile."""
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(lookup(), name="broker-auth lookup")
            self._pending[key] = task
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._settled, key))
        return cast(T, await asyncio.shield(task))

    def _settled(self, key: object, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved here: its callers re-raise it

    async def _ask(self, question: Awaitable[T]) -> T:
        """Await the registry, `LOOKUP_TIMEOUT` seconds at most (a broker waits for the
        answer, and its device waits on it); its failure is logged once, and its recovery
        once."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                answer = await question
        except Exception:
            if not self._failing:
                self._failing = True
                log.exception("broker authentication cannot read the device registry")
            raise
        if self._failing:
            self._failing = False
            log.info("broker authentication reads the device registry again")
        return answer

    def metrics(self) -> Iterator[Metric]:
        """``iotcloud_broker_auth_cache_requests_total{cache,result}``, read at scrape time."""
        family = CounterMetricFamily(
            "iotcloud_broker_auth_cache_requests",
            "Lookups in this process's memory of broker-auth answers (admissions by user name "
            "and password, devices by user name), by result.",
            labels=["cache", "result"],
        )
        for name, answers in (("admission", self._admissions), ("device", self._devices)):
            family.add_metric([name, "hit"], answers.hits)
            family.add_metric([name, "miss"], answers.misses)
        yield family
