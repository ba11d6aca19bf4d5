"""A short-lived, bounded cache of checked user tokens for the request hot path."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")


class AuthCache(Generic[T]):
    """Maps a token digest to what checking it produced, for ``ttl`` seconds.

    Every change this process makes to a user or their tokens drops the affected entries at
    once; other processes of a scale-out deployment see such a change within ``ttl``. An entry
    is only stored if no drop happened while its database read was in flight (``epoch``), so a
    revocation can never be overwritten by a stale read. ``ttl`` 0 disables caching.
    """

    def __init__(
        self, ttl: float, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.epoch = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[float, int, datetime, T]] = OrderedDict()

    def get(self, token_digest: str) -> tuple[T, datetime] | None:
        """The cached value and token expiry, if still fresh."""
        entry = self._entries.get(token_digest)
        if entry is None:
            self.misses += 1
            return None
        deadline, _, expires, value = entry
        if deadline <= self.clock():
            del self._entries[token_digest]
            self.misses += 1
            return None
        self.hits += 1
        return value, expires

    def put(self, token_digest: str, user_id: int, expires: datetime, value: T, epoch: int) -> None:
        if self.ttl <= 0 or epoch != self.epoch:
            return
        self._entries[token_digest] = (self.clock() + self.ttl, user_id, expires, value)
        self._entries.move_to_end(token_digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop_token(self, token_digest: str) -> None:
        self.epoch += 1
        self._entries.pop(token_digest, None)

    def drop_user(self, user_id: int) -> None:
        self.epoch += 1
        stale = [key for key, entry in self._entries.items() if entry[1] == user_id]
        for key in stale:
            del self._entries[key]
