"""Token buckets in the database, shared by every process that serves it.

One row per bucket (``rate_limit_buckets``): the tokens it held at ``stamp`` (seconds since the
epoch by the database's clock), its rate and capacity as last asked, and what the last take
granted. Takes are one statement, ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... RETURNING``,
for any number of buckets at once (their requests travel as one JSON parameter, as the
scheduler's results do): the upsert's row lock makes concurrent takes from any number of
processes queue on the row, and the refill (``min(capacity, tokens + elapsed * rate)``) is
computed in the statement from the stored state and the database's clock, so the hosts' clocks
never meet. A missing row is a full bucket, which is what lets housekeeping delete every row
that has refilled (`RateLimitRepository.purge_full`) without changing any answer.

The statement is the same on both backends (SQLite has had upserts with RETURNING since 3.35);
the clock, ``least``/``greatest``, ``floor`` and the JSON rows are spelled per dialect.
`RateLimitStore` runs it on an engine of its own: autocommit (one round trip, no BEGIN/COMMIT),
a pool of two connections that request handling never waits for, and short connect and busy
timeouts, so that a slow or absent database shows up as an error the throttle can answer by
failing open.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import Double, Integer, String, TextClause, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column

from iotcloud.storage.models import Base

KEY_MAX = 128


class RateLimitBucketRow(Base):
    """One shared token bucket (a missing row is a full bucket)."""

    __tablename__ = "rate_limit_buckets"

    key: Mapped[str] = mapped_column(String(KEY_MAX), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double())
    stamp: Mapped[float] = mapped_column(Double())  # seconds since the epoch, database clock
    granted: Mapped[int] = mapped_column(Integer())  # what the last take got
    rate: Mapped[float] = mapped_column(Double())  # tokens per second, as last asked
    capacity: Mapped[float] = mapped_column(Double())


@dataclass(frozen=True, slots=True)
class TakeRequest:
    """Up to ``want`` whole tokens of bucket ``key``, refilled at ``rate`` per second (> 0) up
    to ``capacity`` (>= 1)."""

    key: str
    want: int
    rate: float
    capacity: float


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a take: whole tokens granted (0 to ``want``) and those left in the bucket."""

    granted: int
    left: float


def bucket_key(kind: str, key: str) -> str:
    """The row key of bucket ``key`` of ``kind`` (``addr``, ``app``); a key too long for the
    column (an app id is whatever a client sends) is replaced by its SHA-256."""
    full = f"{kind}:{key}"
    if len(full) <= KEY_MAX:
        return full
    return f"{kind}:sha256:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


class RateLimitRepository:
    """The bucket statements on one connection or session (autocommit or a unit of work).

    ``clock`` (seconds since the epoch) replaces the database's clock, for tests."""

    def __init__(
        self, connection: AsyncConnection | AsyncSession, clock: Callable[[], float] | None = None
    ) -> None:
        self.connection = connection
        self.clock = clock

    async def take(self, requests: Sequence[TakeRequest]) -> dict[str, Grant]:
        """Take from every bucket of ``requests`` (distinct keys; a new bucket starts full) in
        one statement; the grants by key."""
        if not requests:
            return {}
        if len({request.key for request in requests}) != len(requests):
            raise ValueError("one take per bucket and statement")
        rows = json.dumps(
            [
                {
                    "key": request.key,
                    # a new bucket grants it all: a lease is never more than the bucket
                    "want": min(request.want, math.floor(request.capacity)),
                    "rate": request.rate,
                    "capacity": request.capacity,
                }
                for request in requests
            ]
        )
        sqlite = _is_sqlite(self.connection)
        params: dict[str, Any] = {"rows": rows}
        if self.clock is not None:
            params["now"] = self.clock()
        result = await self.connection.execute(_TAKE[sqlite, self.clock is not None], params)
        return {key: Grant(int(granted), float(left)) for key, granted, left in result}

    async def purge_full(self) -> int:
        """Delete the buckets that have refilled by now (as good as absent); how many."""
        sqlite = _is_sqlite(self.connection)
        params = {"now": self.clock()} if self.clock is not None else {}
        result = await self.connection.execute(_PURGE[sqlite, self.clock is not None], params)
        return int(getattr(result, "rowcount", 0) or 0)


class RateLimitStore:
    """An engine of its own for the bucket statements. ``async with RateLimitStore(url)``.

    Raises what the driver raises (connection refused, timeouts, a missing table): the caller
    decides what a failure means. ``clock`` (seconds since the epoch) replaces the database's
    clock, for tests."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        pool_size: int = 2,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "pool_timeout": timeout}
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite:
            kwargs["connect_args"] = {"timeout": timeout}
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                connect_args={"timeout": timeout, "command_timeout": timeout},
            )
        self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        if sqlite:
            milliseconds = int(timeout * 1000)

            def pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={milliseconds}")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

            event.listen(self.engine.sync_engine, "connect", pragmas)

    async def __aenter__(self) -> RateLimitStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.engine.dispose()

    async def take(self, requests: Sequence[TakeRequest]) -> dict[str, Grant]:
        """`RateLimitRepository.take` on a pooled autocommit connection."""
        async with self.engine.connect() as connection:
            return await RateLimitRepository(connection, self.clock).take(requests)


def _is_sqlite(connection: AsyncConnection | AsyncSession) -> bool:
    if isinstance(connection, AsyncConnection):
        return connection.dialect.name == "sqlite"
    return connection.get_bind().dialect.name == "sqlite"


# {least}, {greatest}, {floor}...{end_floor}: per dialect. The new row proposed by the INSERT
# ("excluded") carries the request: its stamp is now, its granted the tokens wanted, its rate
# and capacity those asked; an existing row's refill is computed from its own tokens and stamp.
_AVAILABLE = (
    "{least}(excluded.capacity, rate_limit_buckets.tokens"
    " + {greatest}(0.0, excluded.stamp - rate_limit_buckets.stamp) * excluded.rate)"
)
_GRANTED = "{least}(excluded.granted, {floor}" + _AVAILABLE + "{end_floor})"
_UPSERT = (
    "INSERT INTO rate_limit_buckets (key, tokens, stamp, granted, rate, capacity) "  # noqa: S608
    "SELECT {key}, {capacity} - {want}, {now}, {want}, {rate}, {capacity} FROM {rows} "
    "ON CONFLICT (key) DO UPDATE SET "
    "tokens = " + _AVAILABLE + " - " + _GRANTED + ", "
    "granted = " + _GRANTED + ", "
    "stamp = excluded.stamp, rate = excluded.rate, capacity = excluded.capacity "
    "RETURNING key, granted, tokens"
)
_REFILLED = (
    "DELETE FROM rate_limit_buckets WHERE tokens >= capacity"
    " OR stamp + (capacity - tokens) / (CASE WHEN rate > 0 THEN rate ELSE 1e-9 END) <= {now}"
)


def _statement(template: str, sqlite: bool, injected_clock: bool) -> TextClause:
    if sqlite:
        parts = {
            "least": "min",
            "greatest": "max",
            # CAST truncates, which is floor for the non-negative
            "floor": "CAST(",
            "end_floor": " AS INTEGER)",
            "rows": "json_each(:rows) WHERE true",  # WHERE: SQLite's upsert-after-SELECT rule
            # 'now' is fixed for the whole statement; julianday keeps milliseconds
            "now": "(julianday('now') - 2440587.5) * 86400.0",
            **{
                name: f"json_extract(value, '$.{name}')"
                for name in ("key", "want", "rate", "capacity")
            },
        }
    else:
        parts = {
            "least": "least",
            "greatest": "greatest",
            "floor": "floor(",
            "end_floor": ")",
            "rows": "jsonb_to_recordset(CAST(:rows AS jsonb))"
            " AS r(key text, want integer, rate double precision, capacity double precision)",
            # statement_timestamp(): one instant for the whole statement
            "now": "CAST(extract(epoch FROM statement_timestamp()) AS double precision)",
            **{name: f"r.{name}" for name in ("key", "want", "rate", "capacity")},
        }
    if injected_clock:
        parts["now"] = "CAST(:now AS double precision)"
    return text(template.format(**parts))


_TAKE = {
    (sqlite, injected): _statement(_UPSERT, sqlite, injected)
    for sqlite in (False, True)
    for injected in (False, True)
}
_PURGE = {
    (sqlite, injected): _statement(_REFILLED, sqlite, injected)
    for sqlite in (False, True)
    for injected in (False, True)
}
