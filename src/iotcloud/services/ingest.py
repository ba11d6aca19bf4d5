"""Batched ingestion of device reports: a bounded queue and one writer task.

Reports are written in batches (one transaction each) so that a busy fleet costs a few
transactions per second instead of one per report. The queue is bounded: a producer waits for
room up to ``put_timeout`` (backpressure on the device connection that sent it), then the
report is dropped and counted — memory never grows without bound.

`Batcher.committed` tells when what was queued so far is written: the embedded device transport
acknowledges a QoS 1 report only then, so an acknowledged report survives a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceReport:
    """One decoded device status message, ready to store."""

    device_id: int
    did: str
    at: datetime
    values: dict[str, Any]
    raw: bytes
    direction: str = "dev2app"


class BatchDropped(ConnectionError):
    """The batch holding an item could not be written (after its retries) and was dropped."""


@dataclass
class BatcherStats:
    submitted: int = 0
    written: int = 0
    dropped: int = 0
    batches: int = 0
    failed_batches: int = 0
    last_batch_seconds: float = 0.0
    queued: int = field(default=0)


class Batcher(Generic[T]):
    """Collects items and hands them to ``write`` in batches of at most ``max_batch``.

    A batch is written as soon as ``max_batch`` items are waiting or ``max_delay`` seconds after
    its first item arrived. A failed write is retried ``retries`` times with back-off, then the
    batch is dropped and counted (logged once, and its recovery once). Leaving the context
    writes what is still queued.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_batch: int = 1000,
        max_delay: float = 0.05,
        capacity: int = 50_000,
        put_timeout: float = 1.0,
        retries: int = 3,
        name: str = "batcher",
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.put_timeout = put_timeout
        self.retries = retries
        self.name = name
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[T] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._pending: list[T] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepted = 0  # items queued so far
        self._settled = 0  # of those, items whose batch was written or dropped
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def __aenter__(self) -> Batcher[T]:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await self._idle.wait()  # never cut a write short: its batch would be lost
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drain()

    @property
    def backlog(self) -> int:
        """Items queued or being written, not yet committed."""
        return self._accepted - self._settled

    def committed(self) -> asyncio.Future[None]:
        """A future done once every item queued so far is written; it fails with
        `BatchDropped` if the batch holding the last of them was dropped."""
        waiters = self._waiters
        if waiters and waiters[-1][0] == self._accepted:
            return waiters[-1][1]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._settled >= self._accepted:
            future.set_result(None)
        else:
            waiters.append((self._accepted, future))
        return future

    def _settle(self, count: int, error: BaseException | None) -> None:
        self._settled += count
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._settled:
            _, future = waiters.popleft()
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def offer(self, item: T) -> bool:
        """Queue ``item`` if there is room; False (and counted as dropped) otherwise."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        self.stats.submitted += 1
        self._accepted += 1
        return True

    async def put(self, item: T) -> bool:
        """Queue ``item``, waiting up to ``put_timeout`` for room; False if it was dropped."""
        if self.offer(item):
            return True
        self.stats.dropped -= 1  # offer() counted it; count it once, after the wait
        try:
            async with asyncio.timeout(self.put_timeout):
                await self._queue.put(item)
        except TimeoutError:
            self.stats.dropped += 1
            return False
        self.stats.submitted += 1
        self._accepted += 1
        return True

    async def _run(self) -> None:
        pending = self._pending  # kept on the instance so a cancelled wait loses nothing
        while True:
            pending.append(await self._queue.get())
            deadline = time.monotonic() + self.max_delay
            while len(pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not self._queue.empty():
                    pending.append(self._queue.get_nowait())
                    continue
                try:
                    async with asyncio.timeout(remaining):
                        pending.append(await self._queue.get())
                except TimeoutError:
                    break
            batch = list(pending)
            pending.clear()
            self._idle.clear()
            try:
                await self._flush(batch)
            finally:
                self._idle.set()

    async def _drain(self) -> None:
        batch, self._pending = self._pending, []
        while batch or not self._queue.empty():
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            await self._flush(batch)
            batch = []

    async def _flush(self, batch: list[T]) -> None:
        self.stats.queued = self._queue.qsize()
        for attempt in range(self.retries + 1):
            started = time.monotonic()
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self._failing:
                    log.exception("%s: writing %d items failed; retrying", self.name, len(batch))
                    self._failing = True
                if attempt < self.retries:
                    await asyncio.sleep(0.1 * 2**attempt)
                continue
            if self._failing:
                log.info("%s: writes recovered", self.name)
                self._failing = False
            self.stats.batches += 1
            self.stats.written += len(batch)
            self.stats.last_batch_seconds = time.monotonic() - started
            self._settle(len(batch), None)
            return
        self.stats.failed_batches += 1
        self.stats.dropped += len(batch)
        self._settle(len(batch), BatchDropped(f"{self.name}: a batch of {len(batch)} was dropped"))
        log.error(
            "%s: dropped a batch of %d items after %d attempts",
            self.name,
            len(batch),
            self.retries + 1,
        )
