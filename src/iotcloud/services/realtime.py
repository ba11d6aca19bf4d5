"""Real-time fan-out: device messages, presence and binding changes to app sessions.

One `RealtimeHub` per process listens to the `DeviceGateway` and to `BindingService`'s change
hook, and indexes the open sessions (one per WebSocket connection) by the devices they
subscribed to, by user and by client id. Delivery never waits: each session has a bounded queue
of outgoing items, drained by its own connection; a session whose queue is full is dropped (its
connection closes) rather than slowing the gateway or the other sessions.

A session only ever hears of devices bound to its user: subscriptions and commands are checked
against the bindings, and an unbinding removes the device from the sessions of that user before
it is announced to them. The hub knows nothing of the wire format: the API layer renders the
items it queues (`DeviceUpdate`, `OnlineStatus`, `BindingChange`, `Reply`, `Close`,
`LoginEnded`).

A login lasts only as long as its token. The hub ends it (`LoginEnded`, then the connection
closes) when the token expires (a timer per session, set for the token's expiry), at once when
this process signs the token out or changes the user's password (`tokens_revoked`), and, for
revocations made by other processes (which share only the database), at the next check: every
``token_check_seconds`` the tokens of all logged-in sessions are looked up in one read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL_SN
from iotcloud.domain.clock import Clock, SystemClock, iso_utc
from iotcloud.errors import (
    DeviceNotBound,
    DeviceNotFound,
    IotCloudError,
    TokenExpired,
    TokenInvalid,
)
from iotcloud.gateway.service import (
    CLOUD_CLIENT_ID,
    DeviceGateway,
    DeviceMessage,
    GatewayEvent,
    PresenceEvent,
)
from iotcloud.services.accounts import TokensRevoked
from iotcloud.services.bindings import (
    LIST_LIMIT_MAX,
    AppUser,
    BindingChange,
    BindingService,
    BoundDevice,
)

log = logging.getLogger(__name__)

#: Outgoing items a session may have waiting before it counts as too slow and is dropped.
QUEUE_SIZE: Final = 1000
#: Client ids are sent to devices as the last topic level; GAgent keeps at most 23 characters.
CLIENT_ID_MAX: Final = 23
_CLIENT_ID_PREFIX: Final = "ws"
_RECHECKS: Final = 3
#: How often the tokens of logged-in sessions are looked up, unless told otherwise (seconds).
TOKEN_CHECK_SECONDS: Final = 5.0

_REVOKED_MESSAGE: Final = "user token revoked: signed out, or the password changed or reset"

#: The expiry of each live token among some token digests (revoked ones absent).
TokenExpiries = Callable[[Collection[str]], Awaitable[Mapping[str, datetime]]]


@dataclass(frozen=True)
class DeviceUpdate:
    """A device message for one session; ``reply`` when it answers that session's own command
    (the device addressed it to the session's client id)."""

    message: DeviceMessage
    reply: bool = False


@dataclass(frozen=True)
class OnlineStatus:
    """A subscribed device came online or went offline."""

    did: str
    mac: str
    passcode: str
    online: bool


@dataclass(frozen=True)
class Reply:
    """An answer the connection itself produced, already in wire form (JSON-ready)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Close:
    """Close the connection once everything queued before this item has been sent."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class LoginEnded:
    """The session's token stopped being valid (``error``: 9004 revoked, 9006 expired, naming
    why): tell the client, then close the connection."""

    error: IotCloudError


Outgoing = DeviceUpdate | OnlineStatus | BindingChange | Reply | Close | LoginEnded


class Dropped(enum.StrEnum):
    """Why the hub dropped a session."""

    SLOW = "too slow: outgoing queue full"
    STOPPING = "the server is stopping"


@dataclass(frozen=True)
class SubscribeOutcome:
    """One device of a subscription: ``error`` is None when it was subscribed."""

    did: str
    error: IotCloudError | None = None


@dataclass(eq=False)
class RealtimeSession:
    """One app connection as the hub sees it.

    ``queue`` holds what is still to be sent (at most ``QUEUE_SIZE`` items). ``killed`` is set
    when the hub dropped the session and ``dropped`` says why. ``user`` is None until the login
    succeeded; ``token_digest`` and ``token_expires`` are those of the token it logged in with.
    """

    client_id: str
    queue: asyncio.Queue[Outgoing]
    user: AppUser | None = None
    auto_subscribe: bool = False
    subscribed: set[str] = field(default_factory=set)
    #: devices known to be bound to ``user``: subscribed or commanded (replies may reach it)
    allowed: set[str] = field(default_factory=set)
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: Dropped | None = None
    token_digest: str | None = None
    token_expires: datetime | None = None
    #: ends the login when the token expires
    expiry_timer: asyncio.TimerHandle | None = None

    def offer(self, item: Outgoing) -> bool:
        """Queue ``item`` unless the session is dead or its queue is full (False then)."""
        if self.killed.is_set():
            return False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True


@dataclass(eq=False)
class _Watch:
    """A device some session subscribed to: its MAC and passcode (for presence pushes)."""

    mac: str
    passcode: str
    sessions: set[RealtimeSession] = field(default_factory=set)


class RealtimeHub:
    """Fans gateway events and binding changes out to the sessions (see module docstring).

    An async context manager: entering it starts listening to the gateway (and, given
    ``token_expiries``, checking the sessions' tokens every ``token_check_seconds``), leaving it
    stops both and drops every session still open.
    """

    def __init__(
        self,
        gateway: DeviceGateway,
        bindings: BindingService,
        *,
        queue_size: int = QUEUE_SIZE,
        clock: Clock | None = None,
        token_expiries: TokenExpiries | None = None,
        token_check_seconds: float = TOKEN_CHECK_SECONDS,
    ) -> None:
        if token_check_seconds <= 0:
            raise ValueError("token_check_seconds must be positive")
        self.gateway = gateway
        self.bindings = bindings
        self.queue_size = queue_size
        self.clock = clock or SystemClock()
        self.token_expiries = token_expiries
        self.token_check_seconds = token_check_seconds
        self._token_checks: asyncio.Task[None] | None = None
        #: sessions dropped for not reading their messages (since the start)
        self.dropped_slow = 0
        self._by_client: dict[str, RealtimeSession] = {}
        self._by_user: dict[int, set[RealtimeSession]] = {}
        self._watched: dict[str, _Watch] = {}
        # bumped on every binding change of a user with sessions: a check that awaited the
        # database is repeated when the user's bindings changed meanwhile
        self._changes: dict[int, int] = {}

    async def __aenter__(self) -> Self:
        self.gateway.add_listener(self._on_gateway_event)
        if self.token_expiries is not None:
            self._token_checks = asyncio.create_task(
                self._check_tokens_forever(), name="realtime-token-checks"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.gateway.remove_listener(self._on_gateway_event)
        if self._token_checks is not None:
            self._token_checks.cancel()
            with suppress(asyncio.CancelledError):
                await self._token_checks
        for session in list(self._by_client.values()):
            self._kill(session, Dropped.STOPPING)

    # -- sessions -------------------------------------------------------------------------------

    def open(self) -> RealtimeSession:
        """A new session with its own client id (unique among the open sessions)."""
        while True:
            client_id = _CLIENT_ID_PREFIX + secrets.token_hex(10)
            if client_id not in self._by_client and client_id != CLOUD_CLIENT_ID:
                break
        assert len(client_id) <= CLIENT_ID_MAX
        session = RealtimeSession(client_id, asyncio.Queue(self.queue_size))
        self._by_client[client_id] = session
        return session

    def close(self, session: RealtimeSession) -> None:
        """Forget ``session``: every subscription ends. Idempotent."""
        self._forget_user(session)
        self._by_client.pop(session.client_id, None)

    def logout(self, session: RealtimeSession) -> None:
        """``session`` belongs to nobody any more: its subscriptions end."""
        self._forget_user(session)

    async def login(
        self,
        session: RealtimeSession,
        user: AppUser,
        *,
        auto_subscribe: bool,
        token_digest: str,
        token_expires: datetime,
    ) -> None:
        """Make ``session`` the user's (ending what a previous login subscribed) for as long as
        the token (``token_digest``, expiring at ``token_expires``) lives; with
        ``auto_subscribe`` every device bound to the user is subscribed, and so is every device
        bound later."""
        self._forget_user(session)
        session.user = user
        session.auto_subscribe = auto_subscribe
        session.token_digest = token_digest
        session.token_expires = token_expires
        self._schedule_expiry(session)
        self._by_user.setdefault(user.user_id, set()).add(session)
        if not auto_subscribe:
            return
        for _ in range(_RECHECKS):
            before = self._changes.get(user.user_id, 0)
            devices = await self._all_bound(user)
            if self._changes.get(user.user_id, 0) == before:
                break
        else:
            devices = []  # bindings keep changing: the client is told of each change anyway
        if session.user is user and not session.killed.is_set():
            for device in devices:
                self._watch(session, device)

    async def subscribe(
        self, session: RealtimeSession, dids: Sequence[str]
    ) -> list[SubscribeOutcome]:
        """Subscribe the logged-in ``session`` to each device of ``dids`` bound to its user;
        the others come back with their error (9014 unknown, 9017 not bound)."""
        user = session.user
        assert user is not None, "login first"
        outcomes: list[SubscribeOutcome] = []
        for did in dids:
            try:
                device = await self.checked_bound(user, did)
            except (DeviceNotFound, DeviceNotBound) as exc:
                outcomes.append(SubscribeOutcome(did, exc))
                continue
            if session.user is user and not session.killed.is_set():
                self._watch(session, device)
            outcomes.append(SubscribeOutcome(did))
        return outcomes

    async def commanded(
        self, session: RealtimeSession, did: str, command: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``command`` (which checks the binding itself) and let the device's replies to
        the session's client id reach it afterwards, unless the user's bindings changed
        meanwhile."""
        user = session.user
        assert user is not None, "login first"
        before = self._changes.get(user.user_id, 0)
        await command()
        if session.user is user and self._changes.get(user.user_id, 0) == before:
            session.allowed.add(did)

    async def checked_bound(self, user: AppUser, did: str) -> BoundDevice:
        """``BindingService.require_bound``, repeated when a binding change of the user raced
        with the read."""
        for _ in range(_RECHECKS):
            before = self._changes.get(user.user_id, 0)
            device = await self.bindings.require_bound(user, did)
            if self._changes.get(user.user_id, 0) == before:
                return device
        raise DeviceNotBound(f"device {did}: the bindings of this user keep changing")

    # -- token lifetimes -------------------------------------------------------------------------

    def tokens_revoked(self, revoked: TokensRevoked) -> None:
        """`AccountService`'s ``on_tokens_revoked``: end the logins made with those tokens."""
        for session in tuple(self._by_user.get(revoked.user_id, ())):
            digest = session.token_digest
            if revoked.digest is not None and digest != revoked.digest:
                continue
            if revoked.digest is None and digest == revoked.kept:
                continue
            self._end_login(session, TokenInvalid(f"user token revoked: {revoked.reason}"))

    async def check_tokens(self) -> None:
        """End every login whose token is no longer in the database (revoked by any process)
        or has expired; the tokens of all sessions are looked up together."""
        if self.token_expiries is None:
            return
        held: list[tuple[RealtimeSession, str]] = [
            (session, session.token_digest)
            for session in self._by_client.values()
            if session.user is not None and session.token_digest is not None
        ]
        if not held:
            return
        live = await self.token_expiries({digest for _, digest in held})
        now = self.clock.now()
        for session, digest in held:
            if session.user is None or session.token_digest != digest:
                continue  # logged out, or in again with another token, meanwhile
            expires = live.get(digest)
            if expires is None:
                self._end_login(session, TokenInvalid(_REVOKED_MESSAGE))
            elif expires <= now:
                self._end_login(session, _expired(expires))
            elif expires != session.token_expires:
                session.token_expires = expires
                self._schedule_expiry(session)

    async def _check_tokens_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.token_check_seconds)
            try:
                await self.check_tokens()
            except Exception:  # keep checking; log the failure once, and its recovery once
                if not failing:
                    log.exception("checking the tokens of websocket sessions failed; will retry")
                    failing = True
                continue
            if failing:
                log.info("checking the tokens of websocket sessions recovered")
                failing = False

    def _schedule_expiry(self, session: RealtimeSession) -> None:
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        if session.token_expires is None:
            return
        delay = (session.token_expires - self.clock.now()).total_seconds()
        session.expiry_timer = asyncio.get_running_loop().call_later(
            max(delay, 0.0), self._expiry_due, session
        )

    def _expiry_due(self, session: RealtimeSession) -> None:
        session.expiry_timer = None
        expires = session.token_expires
        if session.user is None or expires is None:
            return
        if expires > self.clock.now():  # the loop's clock ran ahead of the wall clock
            self._schedule_expiry(session)
            return
        self._end_login(session, _expired(expires))

    def _end_login(self, session: RealtimeSession, error: IotCloudError) -> None:
        """Log ``session`` out at once (no more pushes) and have its connection tell the client
        ``error`` and close."""
        if session.user is None or session.killed.is_set():
            return
        log.info("websocket client %s: login ended: %s", session.client_id, error)
        self._forget_user(session)
        self.deliver(session, LoginEnded(error))

    # -- the binding hook -----------------------------------------------------------------------

    async def binding_changed(self, change: BindingChange) -> None:
        """`BindingService`'s ``on_change``: tell the user's sessions; an unbound device leaves
        them before they hear of it, a new one is subscribed by auto-subscribing sessions."""
        if change.user_id not in self._by_user:
            return
        self._changes[change.user_id] = self._changes.get(change.user_id, 0) + 1
        sessions = [s for s in self._by_user[change.user_id] if _in_app(s, change.app_id)]
        if not change.bound:
            for session in sessions:
                self._unwatch(session, change.did)
                session.allowed.discard(change.did)
                self.deliver(session, change)
            return
        # told first, so that a later unbinding is always told after it
        for session in sessions:
            self.deliver(session, change)
        subscribing = [s for s in sessions if s.auto_subscribe]
        if not subscribing:
            return
        user = subscribing[0].user
        assert user is not None
        try:
            device = await self.checked_bound(user, change.did)
        except IotCloudError:
            return  # unbound again meanwhile
        for session in subscribing:
            if session.user is not None and session.user.user_id == change.user_id:
                self._watch(session, device)

    # -- the gateway listener (synchronous: never blocks) ----------------------------------------

    def _on_gateway_event(self, event: GatewayEvent) -> None:
        watch = self._watched.get(event.did)
        if isinstance(event, PresenceEvent):
            if watch is not None:
                status = OnlineStatus(event.did, watch.mac, watch.passcode, event.online)
                self._deliver_all(watch.sessions, status)
            return
        if watch is None and not event.client_id:
            return  # nobody watches this device and the message names no client
        subscribers: Iterable[RealtimeSession] = watch.sessions if watch is not None else ()
        target = self._by_client.get(event.client_id) if event.client_id else None
        if target is not None and event.did not in target.allowed:
            target = None  # not (or no longer) this user's device
        recipients: Iterable[RealtimeSession]
        if event.cmd == CMD_CONTROL_SN:
            # the device asks for an acknowledgement: of one client, or of every subscriber
            if event.client_id is None:
                recipients = subscribers
            else:
                recipients = () if target is None else (target,)
        elif event.cmd == CMD_ACK_SN:
            if target is not None:
                self.deliver(target, DeviceUpdate(event, reply=True))
            if event.attrs is None:
                return  # a bare ack or transparent reply belongs to whoever asked
            # a status in a reply (to this client, another one or the cloud) is the device's
            # state: every other subscriber sees it too
            recipients = (s for s in subscribers if s is not target)
        elif target is None or target in subscribers:
            recipients = subscribers
        else:
            recipients = (*subscribers, target)
        self._deliver_all(recipients, DeviceUpdate(event))

    # -- internals ------------------------------------------------------------------------------

    def _deliver_all(self, sessions: Iterable[RealtimeSession], item: Outgoing) -> None:
        for session in tuple(sessions):
            self.deliver(session, item)

    def deliver(self, session: RealtimeSession, item: Outgoing) -> None:
        """Queue ``item`` for ``session``; a session whose queue is full is dropped."""
        if not session.offer(item) and not session.killed.is_set():
            self.dropped_slow += 1
            log.info(
                "websocket client %s dropped: %d messages waiting (too slow)",
                session.client_id,
                self.queue_size,
            )
            self._kill(session, Dropped.SLOW)

    def _kill(self, session: RealtimeSession, reason: Dropped) -> None:
        session.dropped = reason
        session.killed.set()
        self.close(session)

    def _watch(self, session: RealtimeSession, device: BoundDevice) -> None:
        watch = self._watched.get(device.did)
        if watch is None:
            watch = self._watched[device.did] = _Watch(device.mac, device.passcode)
        else:
            watch.mac, watch.passcode = device.mac, device.passcode
        watch.sessions.add(session)
        session.subscribed.add(device.did)
        session.allowed.add(device.did)

    def _unwatch(self, session: RealtimeSession, did: str) -> None:
        session.subscribed.discard(did)
        watch = self._watched.get(did)
        if watch is None:
            return
        watch.sessions.discard(session)
        if not watch.sessions:
            del self._watched[did]

    def _forget_user(self, session: RealtimeSession) -> None:
        for did in list(session.subscribed):
            self._unwatch(session, did)
        session.allowed.clear()
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        session.token_digest = session.token_expires = None
        if session.user is not None:
            peers = self._by_user.get(session.user.user_id)
            if peers is not None:
                peers.discard(session)
                if not peers:
                    del self._by_user[session.user.user_id]
                    self._changes.pop(session.user.user_id, None)
        session.user = None

    async def _all_bound(self, user: AppUser) -> list[BoundDevice]:
        devices: list[BoundDevice] = []
        while True:
            page = await self.bindings.list_bound(
                user, limit=LIST_LIMIT_MAX, skip=len(devices), show_disabled=True
            )
            devices.extend(page)
            if len(page) < LIST_LIMIT_MAX:
                return devices


def _expired(expires: datetime) -> TokenExpired:
    return TokenExpired(f"user token expired at {iso_utc(expires)}; sign in again")


def _in_app(session: RealtimeSession, app_id: int) -> bool:
    return session.user is not None and session.user.app_id == app_id
