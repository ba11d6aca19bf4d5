"""Shared token buckets on both backends: the upsert's arithmetic, takes from several engines at
once (as from several processes), leases, housekeeping, and failing open when the database
does not answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select, text

from iotcloud.api.throttle import RateLimit, SharedBuckets, SharedLimits, TokenBuckets
from iotcloud.storage.database import Database
from iotcloud.storage.rate_limits import (
    Grant,
    RateLimitBucketRow,
    RateLimitRepository,
    RateLimitStore,
    TakeRequest,
    bucket_key,
)
from tests.conftest import new_database_url
from tests.pg import PostgresServer, free_port


class Clock:
    """Seconds, moved by hand (an epoch clock for the database, a monotonic one for leases)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class CountingStore(RateLimitStore):
    """The real store, counting the statements it runs."""

    takes = 0

    async def take(self, requests: Sequence[TakeRequest]) -> dict[str, Grant]:
        self.takes += 1
        return await super().take(requests)


async def take_one(
    store: RateLimitStore, key: str, want: int, rate: float, capacity: float
) -> Grant:
    return (await store.take([TakeRequest(key, want, rate, capacity)]))[key]


@pytest.fixture
async def migrated(database_url: str) -> str:
    async with Database(database_url) as db:
        await db.migrate()
    return database_url


async def test_a_take_grants_whole_tokens_refilled_by_the_clock(migrated: str) -> None:
    epoch = Clock(1_700_000_000.0)
    async with RateLimitStore(migrated, clock=epoch) as store:

        async def take(key: str, want: int, rate: float, capacity: float) -> Grant:
            return await take_one(store, key, want, rate, capacity)

        assert await take("app:a", 4, 10.0, 10.0) == Grant(4, 6.0)  # a new bucket starts full
        assert await take("app:a", 4, 10.0, 10.0) == Grant(4, 2.0)
        assert await take("app:a", 4, 10.0, 10.0) == Grant(2, 0.0)
        assert await take("app:a", 4, 10.0, 10.0) == Grant(0, 0.0)
        assert await take("app:b", 1, 10.0, 10.0) == Grant(1, 9.0)  # buckets are independent
        epoch.now += 0.25
        assert await take("app:a", 4, 10.0, 10.0) == Grant(2, 0.5)
        epoch.now -= 60  # a clock stepping back adds nothing and takes nothing
        assert await take("app:a", 4, 10.0, 10.0) == Grant(0, 0.5)
        epoch.now += 3600
        assert await take("app:a", 4, 10.0, 10.0) == Grant(4, 6.0)  # refilled to capacity only


async def test_housekeeping_deletes_only_buckets_that_are_full_again(migrated: str) -> None:
    epoch = Clock(1_700_000_000.0)
    async with RateLimitStore(migrated, clock=epoch) as store:
        await take_one(store, "addr:192.0.2.1", 10, 10.0, 10.0)  # empty; full again in 1 s
        await take_one(store, "addr:192.0.2.2", 1, 10.0, 10.0)  # full again in 0.1 s
        epoch.now += 0.5
        async with store.engine.connect() as connection:
            assert await RateLimitRepository(connection, epoch).purge_full() == 1
            keys = (await connection.scalars(select(RateLimitBucketRow.key))).all()
            assert keys == ["addr:192.0.2.1"]
    async with Database(migrated) as db, db.session() as session:
        # housekeeping's own call runs on the database's clock: an hour ahead of it, nothing
        # is full yet
        await session.execute(text("UPDATE rate_limit_buckets SET stamp = stamp + 1e10"))
        assert await RateLimitRepository(session).purge_full() == 0


async def test_takes_from_several_engines_at_once_never_grant_more_than_the_bucket(
    migrated: str,
) -> None:
    epoch = Clock(1_700_000_000.0)
    async with (
        RateLimitStore(migrated, clock=epoch) as first,
        RateLimitStore(migrated, clock=epoch) as second,
    ):
        grants = await asyncio.gather(
            *(take_one(store, "app:race", 3, 1.0, 50.0) for store in [first, second] * 20)
        )
    assert sum(grant.granted for grant in grants) == 50
    assert max(grant.granted for grant in grants) <= 3


async def test_one_statement_takes_from_many_buckets(migrated: str) -> None:
    epoch = Clock(1_700_000_000.0)
    async with RateLimitStore(migrated, clock=epoch) as store:
        await take_one(store, "app:old", 5, 1.0, 5.0)
        grants = await store.take(
            [
                TakeRequest("app:old", 3, 1.0, 5.0),
                TakeRequest("app:new", 3, 1.0, 5.0),
                TakeRequest("addr:192.0.2.1", 50, 10.0, 20.0),  # more than the bucket holds
            ]
        )
        assert grants == {
            "app:old": Grant(0, 0.0),
            "app:new": Grant(3, 2.0),
            "addr:192.0.2.1": Grant(20, 0.0),
        }
        assert await store.take([]) == {}
        with pytest.raises(ValueError, match="one take per bucket"):
            await store.take([TakeRequest("app:x", 1, 1.0, 1.0)] * 2)


async def test_lease_requests_arriving_together_share_a_statement(migrated: str) -> None:
    store = CountingStore(migrated)
    shared = SharedLimits(store)
    async with shared.running():
        buckets = SharedBuckets(shared, "addr", 100.0, 1.0)
        waits = await asyncio.gather(*(buckets.take(f"192.0.2.{n}") for n in range(100)))
    assert waits == [0.0] * 100
    assert store.takes == 1


def test_long_keys_are_hashed_to_fit_the_column() -> None:
    assert bucket_key("app", "abc") == "app:abc"
    long = bucket_key("app", "x" * 500)
    assert long.startswith("app:sha256:")
    assert len(long) <= 128
    assert long == bucket_key("app", "x" * 500)


async def test_two_processes_share_one_limit_through_leases(migrated: str) -> None:
    """Two processes (two stores and their leases) on one bucket of 80 tokens at 80/s: leases
    of 8, so together they are allowed exactly the bucket, and each then denies locally
    without asking the database again until a lease's worth has refilled."""
    epoch, monotonic = Clock(1_700_000_000.0), Clock(100.0)
    stores = [CountingStore(migrated, clock=epoch) for _ in range(2)]
    processes = [SharedLimits(store, clock=monotonic) for store in stores]
    async with processes[0].running(), processes[1].running():
        buckets = [SharedBuckets(p, "app", 80.0, 1.0, clock=monotonic) for p in processes]
        assert buckets[0].lease_size == 8
        waits = [await buckets[i % 2].take("shared") for i in range(300)]
        allowed = sum(1 for wait in waits if wait == 0)
        assert allowed == 80
        assert all(0 < wait <= 0.1 for wait in waits[allowed:])
        assert stores[0].takes + stores[1].takes == 12  # 10 leases, then one refusal each
        # 10 tokens later (a lease and a bit), the two share exactly those
        epoch.now += 0.125
        monotonic.now += 0.125
        waits = [await buckets[i % 2].take("shared") for i in range(40)]
        assert sum(1 for wait in waits if wait == 0) == 10
        assert stores[0].takes + stores[1].takes == 16  # a lease, the rest, two refusals


async def test_the_process_bucket_answers_first(migrated: str) -> None:
    monotonic = Clock(100.0)
    store = CountingStore(migrated)
    shared = SharedLimits(store, clock=monotonic)
    async with shared.running():
        limit = RateLimit(
            TokenBuckets(5.0, 1.0, clock=monotonic),
            SharedBuckets(shared, "addr", 5.0, 1.0, clock=monotonic),
        )
        waits = [await limit.take("192.0.2.1") for _ in range(20)]
    assert waits[:5] == [0.0] * 5
    assert all(wait > 0 for wait in waits[5:])
    assert store.takes == 5  # lease size 1; the 15 refusals asked only the process's bucket


async def test_an_unreachable_database_is_served_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens on the port: every request is allowed (the process's own bucket still
    applies), the failure is logged once, and the database is asked again once a second."""
    monotonic = Clock(100.0)
    url = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none"
    store = CountingStore(url, timeout=1.0)
    shared = SharedLimits(store, clock=monotonic)
    caplog.set_level(logging.INFO, logger="iotcloud.api.throttle")
    async with shared.running():
        buckets = SharedBuckets(shared, "app", 1.0, 1.0, clock=monotonic)
        waits = [await buckets.take(f"key{i % 3}") for i in range(30)]
        assert waits == [0.0] * 30
        assert store.takes == 1
        assert not shared.available
        monotonic.now += 1.5
        assert await buckets.take("key0") == 0
        assert store.takes == 2
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert not any(r.exc_info for r in caplog.records)


async def test_a_database_that_fails_then_recovers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the table exists every take fails (served); once it does, the next probe finds
    the database again, logs its recovery once and limits again."""
    monotonic = Clock(100.0)
    shared = SharedLimits(RateLimitStore(database_url), clock=monotonic)
    caplog.set_level(logging.INFO, logger="iotcloud.api.throttle")
    async with shared.running():
        buckets = SharedBuckets(shared, "app", 1.0, 2.0, clock=monotonic)
        assert [await buckets.take("k") for _ in range(5)] == [0.0] * 5
        async with Database(database_url) as db:
            await db.migrate()
        monotonic.now += 1.5
        waits = [await buckets.take("k") for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]  # a fresh bucket of 2
    assert all(wait > 0 for wait in waits[2:])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1


async def test_a_slow_database_is_served_after_the_wait(
    postgres: PostgresServer | str, tmp_path: Path
) -> None:
    """Another transaction holds the bucket's row: the request waits at most the shared wait
    and is served; the lease arrives once the row is free."""
    url = new_database_url(postgres, "postgres", tmp_path)
    assert url is not None
    async with Database(url) as db:
        await db.migrate()
        shared = SharedLimits(RateLimitStore(url), wait_seconds=0.2)
        async with shared.running():
            buckets = SharedBuckets(shared, "app", 10.0, 1.0)  # leases of one token
            assert await buckets.take("slow") == 0  # creates the row
            # on a busy machine that first take may itself have been served after the wait:
            # let its lease arrive and spend it, so that the next take must ask again
            first = buckets._leases["slow"]
            if first.refill is not None:
                await first.refill
            first.tokens = 0
            row = select(RateLimitBucketRow).where(
                RateLimitBucketRow.key == bucket_key("app", "slow")
            )
            async with db.session() as session:
                await session.execute(row.with_for_update())
                assert await buckets.take("slow") == 0  # served while the row is locked
                refill = buckets._leases["slow"].refill
                assert refill is not None
            assert (await refill or Grant(0, 0)).granted == 1
            assert buckets._leases["slow"].tokens == 1
