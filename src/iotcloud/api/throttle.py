"""Request throttling: token buckets per app id and per client address (HTTP 429 / 9041)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from iotcloud.api.gizwits.wire import error_body
from iotcloud.api.tencent.errors import PATH_PREFIX as TENCENT_PREFIX
from iotcloud.api.tencent.wire import error_body as tencent_error_body
from iotcloud.api.tencent.wire import new_request_id, tencent_error
from iotcloud.errors import Throttled

_APP_ID_HEADER = b"x-gizwits-application-id"


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


class ThrottleMiddleware:
    """Limits every request under the given path prefixes, before any other work is done."""

    def __init__(
        self,
        app: ASGIApp,
        per_address: TokenBuckets,
        per_app: TokenBuckets,
        prefixes: tuple[str, ...] = ("/app", "/api", "/dev"),
    ) -> None:
        self.app = app
        self.per_address = per_address
        self.per_app = per_app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) == "http" and scope["path"].startswith(self.prefixes):
            client = scope.get("client")
            address = client[0] if client else "-"
            wait = self.per_address.take(address)
            scope_kind = "client address"
            if not wait:
                appid = next((v for k, v in scope["headers"] if k == _APP_ID_HEADER), None)
                if appid:
                    wait = self.per_app.take(appid.decode("latin-1"))
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
