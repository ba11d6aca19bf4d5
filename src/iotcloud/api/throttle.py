"""Request throttling: token buckets per app id and per client address (HTTP 429 / 9041).

Every request under ``/app``, ``/api`` and ``/dev`` takes one token from the bucket of its client
address (`client_address`: the socket peer, or what ``IOTCLOUD_TRUSTED_PROXIES`` forwarded) and
one from the bucket of its ``X-Gizwits-Application-Id``, before any other work is done.

Each limit has two layers:

* `TokenBuckets`, in process memory, at the full rate: answers first and costs a dict lookup.
  Alone (one process, the embedded mode) it is the limit.
* `SharedBuckets` (``IOTCLOUD_RATE_LIMIT_SHARED``; on by default with PostgreSQL), so that the
  limit holds across every process serving the database: the bucket lives in the database
  (`storage.rate_limits`), and a process takes tokens from it in **leases** of a tenth of a
  second's worth (`LEASE_SECONDS`) and spends them locally. The database sees one row written
  per lease, not per request: at most about ten a second per busy key and process, whatever
  the request rate, and lease requests that arrive while a statement is in flight share the
  next one (`SharedLimits`), so a process has one statement in flight at a time. What it
  trades: all processes together may admit up to one lease each beyond the bucket (tokens
  leased but not yet spent), and a lease unspent within the burst window is dropped. When the
  database says the bucket is empty, the process denies that key locally until a lease's
  worth has refilled, without asking again.

The shared layer fails open: when the database errs or does not answer within
`SHARED_WAIT_SECONDS`, the request is served (the per-process bucket still applies), the failure
is logged once and the database is asked again once a second; its recovery is logged once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from iotcloud.api.client_address import TrustedProxies, client_address, trusted_proxies
from iotcloud.api.gizwits.wire import error_body
from iotcloud.api.tencent.errors import PATH_PREFIX as TENCENT_PREFIX
from iotcloud.api.tencent.wire import error_body as tencent_error_body
from iotcloud.api.tencent.wire import new_request_id, tencent_error
from iotcloud.errors import Throttled
from iotcloud.storage.rate_limits import Grant, RateLimitStore, TakeRequest, bucket_key

if TYPE_CHECKING:
    from iotcloud.config import Settings

log = logging.getLogger(__name__)

_APP_ID_HEADER = b"x-gizwits-application-id"

LEASE_SECONDS = 0.1
"""A lease holds this many seconds of the rate (at least one token)."""
SHARED_WAIT_SECONDS = 0.25
"""A request waits this long at most for the shared bucket; then it is served."""
SHARED_RETRY_SECONDS = 1.0
"""After a failure the database is asked again this often (meanwhile requests are served)."""
_MIN_DENIAL = 0.01
_Waiting = tuple[TakeRequest, asyncio.Future[Grant | None]]
_SHARED_ON = frozenset({"on", "true", "1", "yes"})
_SHARED_OFF = frozenset({"off", "false", "0", "no"})


def shared_limits_enabled(setting: str, database_url: str) -> bool:
    """``IOTCLOUD_RATE_LIMIT_SHARED``: ``on``, ``off`` or ``auto`` (on unless the database is
    SQLite: one process serves an embedded SQLite file, and it need not pay for the table)."""
    value = setting.strip().lower()
    if value in _SHARED_ON:
        return True
    if value in _SHARED_OFF:
        return False
    return not database_url.startswith("sqlite")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Up to ``max_keys`` buckets refilled at ``rate`` per second, holding ``rate*burst`` tokens.

    The least recently used keys are forgotten first, so memory stays bounded however many
    addresses call. ``rate`` 0 disables the limit.
    """

    def __init__(
        self,
        rate: float,
        burst_seconds: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * burst_seconds)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token for ``key``; returns 0 when allowed, else seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class SharedLimits:
    """The database side of the shared buckets: lease requests of every key, written in
    batches (one statement in flight; whatever arrives meanwhile goes in the next, up to
    `MAX_BATCH`), whether the database answers, and its lifetime (`running`)."""

    MAX_BATCH = 500

    def __init__(
        self,
        store: RateLimitStore,
        *,
        wait_seconds: float = SHARED_WAIT_SECONDS,
        retry_seconds: float = SHARED_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.wait_seconds = wait_seconds
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.available = True
        self._retry_at = 0.0
        self._queue: deque[_Waiting] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SharedLimits]:
        """Own the store's engine and the writer of lease requests; both end on exit, and
        requests still waiting are answered None (served)."""
        async with self.store:
            try:
                yield self
            finally:
                self._closed = True
                writer = self._writer
                if writer is not None:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)

    def request(self, request: TakeRequest) -> asyncio.Future[Grant | None]:
        """Ask for a lease. The future gets the grant, or None when the database failed (or
        failed less than ``retry_seconds`` ago: then at once, without asking it)."""
        future: asyncio.Future[Grant | None] = asyncio.get_running_loop().create_future()
        if self._closed or (not self.available and self.clock() < self._retry_at):
            future.set_result(None)
            return future
        self._queue.append((request, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="rate-limit leases")
        return future

    async def _write(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._queue:
                batch = self._next_batch()
                grants = await self._take([request for request, _ in batch])
                for request, future in batch:
                    if not future.done():
                        future.set_result(None if grants is None else grants.get(request.key))
        finally:
            self._writer = None
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.set_result(None)
            if self._closed:
                self._queue.clear()

    def _next_batch(self) -> list[_Waiting]:
        """Up to `MAX_BATCH` queued requests of distinct buckets (a bucket asked twice, which
        only a forgotten lease can cause, waits for the next statement)."""
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        keys: set[str] = set()
        while self._queue and len(batch) < self.MAX_BATCH:
            item = self._queue.popleft()
            (later if item[0].key in keys else batch).append(item)
            keys.add(item[0].key)
        self._queue.extendleft(reversed(later))
        return batch

    async def _take(self, requests: list[TakeRequest]) -> dict[str, Grant] | None:
        if not self.available:
            now = self.clock()
            if now < self._retry_at:
                return None
            self._retry_at = now + self.retry_seconds
        try:
            grants = await self.store.take(requests)
        except Exception as exc:  # fail open: whatever the driver raised, serve the requests
            self._retry_at = self.clock() + self.retry_seconds
            if self.available:
                self.available = False
                log.warning(
                    "shared rate limits unavailable, each process applies only its own limits "
                    "until the database answers: %r",
                    exc,
                )
            return None
        if not self.available:
            self.available = True
            log.info("shared rate limits recovered")
        return grants


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    denied_until: float = 0.0
    open_until: float = 0.0
    refill: asyncio.Future[Grant | None] | None = None


class SharedBuckets:
    """Buckets of one ``kind`` (``addr``, ``app``) held in the database, spent in leases.

    ``rate`` per second, ``rate*burst`` tokens, as `TokenBuckets`; ``rate`` 0 disables them.
    Up to ``max_keys`` leases are kept (least recently used forgotten first).
    """

    def __init__(
        self,
        limits: SharedLimits,
        kind: str,
        rate: float,
        burst_seconds: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.kind = kind
        self.rate = rate
        self.capacity = max(1.0, rate * burst_seconds)
        self.lease_size = max(1, min(int(self.capacity), int(rate * LEASE_SECONDS)))
        # tokens older than the burst window would have been capped in the bucket anyway
        self.lease_lifetime = max(LEASE_SECONDS, burst_seconds)
        self.max_keys = max_keys
        self.clock = clock
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    async def take(self, key: str) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until the next lease may
        be had. Allowed, too, when the database does not answer within the shared wait."""
        if self.rate <= 0:
            return 0.0
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
            if len(self._leases) > self.max_keys:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(key)
        deadline = 0.0
        while True:
            now = self.clock()
            if lease.tokens > 0 and now < lease.expires:
                lease.tokens -= 1
                return 0.0
            if now < lease.open_until:
                return 0.0
            if now < lease.denied_until:
                return lease.denied_until - now
            refill = lease.refill
            if refill is None:
                request = TakeRequest(
                    bucket_key(self.kind, key), self.lease_size, self.rate, self.capacity
                )
                refill = lease.refill = self.limits.request(request)
                # runs before any waiter resumes, and also when every waiter has given up
                refill.add_done_callback(functools.partial(self._refilled, lease))
            if not deadline:
                deadline = now + self.limits.wait_seconds
            elif now >= deadline:
                return 0.0
            done, _ = await asyncio.wait((refill,), timeout=deadline - now)
            if not done:
                return 0.0  # a slow database is served as a failed one

    def _refilled(self, lease: _Lease, refill: asyncio.Future[Grant | None]) -> None:
        lease.refill = None
        grant = None if refill.cancelled() else refill.result()
        now = self.clock()
        if grant is None:
            lease.open_until = now + self.limits.retry_seconds
        elif grant.granted:
            lease.tokens = grant.granted
            lease.expires = now + self.lease_lifetime
        else:
            # ask again once a lease's worth has refilled, not on every request
            lease.denied_until = now + max(_MIN_DENIAL, (self.lease_size - grant.left) / self.rate)


class RateLimit:
    """One limit: the process's own buckets first, then the shared ones (if any)."""

    def __init__(self, local: TokenBuckets, shared: SharedBuckets | None = None) -> None:
        self.local = local
        self.shared = shared

    async def take(self, key: str) -> float:
        """0 when the request may go on, else seconds until a token is free."""
        wait = self.local.take(key)
        if wait or self.shared is None:
            return wait
        return await self.shared.take(key)


class Throttle:
    """The request limits of one process: per client address and per app, the trusted proxies
    that say who the client is, and the shared store when limits hold across processes."""

    def __init__(
        self,
        per_address: RateLimit,
        per_app: RateLimit,
        trusted: TrustedProxies,
        shared: SharedLimits | None = None,
    ) -> None:
        self.per_address = per_address
        self.per_app = per_app
        self.trusted = trusted
        self.shared = shared

    @classmethod
    def from_settings(cls, settings: Settings) -> Throttle:
        """Limits from ``IOTCLOUD_RATE_LIMIT_*`` and ``IOTCLOUD_TRUSTED_PROXIES``."""
        burst = settings.rate_limit_burst_seconds
        address_rate, app_rate = settings.rate_limit_per_address, settings.rate_limit_per_app
        trusted = trusted_proxies(settings.trusted_proxies)
        url = settings.resolved_database_url
        shared = None
        if (address_rate > 0 or app_rate > 0) and shared_limits_enabled(
            settings.rate_limit_shared, url
        ):
            shared = SharedLimits(RateLimitStore(url))
        return cls(
            RateLimit(
                TokenBuckets(address_rate, burst),
                SharedBuckets(shared, "addr", address_rate, burst) if shared else None,
            ),
            RateLimit(
                TokenBuckets(app_rate, burst),
                SharedBuckets(shared, "app", app_rate, burst) if shared else None,
            ),
            trusted,
            shared,
        )

    def middleware(self) -> DefineMiddleware:
        """The application middleware applying these limits."""
        return DefineMiddleware(ThrottleMiddleware, throttle=self)

    @asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """The application lifespan of the shared store (nothing to do without one)."""
        if self.shared is None:
            yield
            return
        async with self.shared.running():
            yield


class ThrottleMiddleware:
    """Limits every request under the given path prefixes, before any other work is done."""

    def __init__(
        self,
        app: ASGIApp,
        throttle: Throttle,
        prefixes: tuple[str, ...] = ("/app", "/api", "/dev"),
    ) -> None:
        self.app = app
        self.throttle = throttle
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) == "http" and scope["path"].startswith(self.prefixes):
            throttle = self.throttle
            wait = await throttle.per_address.take(client_address(scope, throttle.trusted))
            scope_kind = "client address"
            if not wait:
                appid = next((v for k, v in scope["headers"] if k == _APP_ID_HEADER), None)
                if appid:
                    wait = await throttle.per_app.take(appid.decode("latin-1"))
                    scope_kind = "app"
            if wait:
                error = Throttled(f"too many requests from this {scope_kind}")
                await _reject(send, error, wait, tencent=scope["path"].startswith(TENCENT_PREFIX))
                return
        await self.app(scope, receive, send)


async def _reject(send: Send, error: Throttled, wait: float, *, tencent: bool) -> None:
    """429 with the Gizwits error body; under the Tencent API its envelope with HTTP 200, as
    every Tencent error (the request's RequestId is not read: the body is left unread)."""
    if tencent:
        code, message = tencent_error(error)
        body = msgspec.json.encode(tencent_error_body(new_request_id(), code, message))
        status = 200
    else:
        body = msgspec.json.encode(error_body(error))
        status = error.http_status
    start: Any = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(max(1, math.ceil(wait))).encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
