from __future__ import annotations

import asyncio
from collections.abc import Sequence

from iotcloud.services.ingest import Batcher


async def test_items_are_written_in_batches_and_flushed_on_exit() -> None:
    written: list[list[int]] = []

    async def write(batch: Sequence[int]) -> None:
        written.append(list(batch))

    async with Batcher(write, max_batch=10, max_delay=10) as batcher:
        for n in range(25):
            assert batcher.offer(n)
        await asyncio.sleep(0)  # let the writer take the first full batches
    assert [n for batch in written for n in batch] == list(range(25))
    assert max(len(b) for b in written) == 10
    assert batcher.stats.written == 25


async def test_a_full_queue_sheds_load_and_counts_it() -> None:
    gate = asyncio.Event()

    async def slow(batch: Sequence[int]) -> None:
        await gate.wait()

    async with Batcher(slow, max_batch=1, max_delay=0, capacity=2, put_timeout=0.01) as batcher:
        try:
            batcher.offer(0)
            await asyncio.sleep(0.01)  # the writer takes item 0 and waits on the gate
            results = [batcher.offer(n) for n in range(1, 6)]
            timed_out = await batcher.put(99)
        finally:
            gate.set()
    assert results == [True, True, False, False, False]
    assert timed_out is False
    assert batcher.stats.dropped == 4
    assert batcher.stats.written == 3


async def test_failed_writes_are_retried_then_dropped_and_counted() -> None:
    calls = 0

    async def flaky(batch: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError("database away")

    async with Batcher(flaky, max_batch=5, max_delay=0, retries=3) as batcher:
        batcher.offer(1)
        await asyncio.sleep(0.5)
    assert batcher.stats.written == 1
    assert calls == 3

    async def broken(batch: Sequence[int]) -> None:
        raise OSError("gone")

    async with Batcher(broken, max_batch=5, max_delay=0, retries=1) as batcher:
        batcher.offer(1)
        await asyncio.sleep(0.3)
    assert batcher.stats.dropped == 1
    assert batcher.stats.failed_batches == 1
