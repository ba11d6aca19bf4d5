"""The database component: engine, sessions and schema migrations, for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from alembic import command
from alembic.config import Config
from asyncpg import exceptions as asyncpg_errors  # type: ignore[import-untyped]
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from iotcloud.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS: Final = 5.0
"""How long opening a PostgreSQL connection may take before the unit of work fails with
`DatabaseUnavailable` (asyncpg's own default is 60 s: a request would hang that long)."""
POOL_TIMEOUT_SECONDS: Final = 10.0
"""How long a unit of work waits for a free pooled connection (SQLAlchemy's default is 30 s)."""

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# An arbitrary constant: every process migrating the same PostgreSQL database takes this lock.
_MIGRATION_LOCK_ID = 0x10C10D


class Database:
    """Owns the engine. Use as ``async with Database(url) as db`` and ``async with db.session()``.

    SQLite runs in WAL mode with foreign keys on and a busy timeout, so readers never block the
    single writer. PostgreSQL uses a connection pool.
    """

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=POOL_TIMEOUT_SECONDS,
                connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
            )
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._local_locks: dict[str, _KeyLock] = {}
        self._unreachable = False
        """The last unit of work failed for want of the database (logged once, and once
        when a unit of work succeeds again)."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def session(self, *, lock: str | None = None) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block ends normally, rolled back otherwise.

        ``lock`` serialises units of work that share the key, for check-then-write sequences
        no constraint can guard (e.g. "fewer than N rows, then insert one"): a transaction-scoped
        advisory lock on PostgreSQL (across processes), an in-process lock on SQLite (whose
        server is a single process), held until the commit.

        Raises `DatabaseUnavailable` when the database cannot be reached (`is_outage`), within
        `CONNECT_TIMEOUT_SECONDS` when it does not answer a new connection.
        """
        try:
            async with self._unit_of_work(lock) as session:
                yield session
        except Exception as exc:
            if not is_outage(exc):
                raise
            if not self._unreachable:
                self._unreachable = True
                log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        if self._unreachable:
            self._unreachable = False
            log.info("database reachable again")

    @asynccontextmanager
    async def _unit_of_work(self, lock: str | None) -> AsyncIterator[AsyncSession]:
        if lock is not None and self.is_sqlite:
            entry = self._local_locks.setdefault(lock, _KeyLock())
            entry.users += 1
            try:
                async with entry.lock, self._unit_of_work(None) as session:
                    yield session
            finally:
                entry.users -= 1
                if entry.users == 0:
                    del self._local_locks[lock]
            return
        async with self._sessions() as session:
            try:
                if lock is not None:
                    await session.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_id(lock)}
                    )
                yield session
                await session.commit()
            except BaseException:
                # on a lost connection the rollback fails too: the first error is the one to tell
                with suppress(Exception):
                    await session.rollback()
                raise

    async def ping(self) -> None:
        """One round trip to the database (``SELECT 1``); raises what the driver raises."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent, safe from several processes)."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID}
                )
            await conn.run_sync(_upgrade)
        log.info("database schema is current (%s)", self.url.render_as_string(hide_password=True))


_DRIVER_OUTAGES: Final[tuple[type[BaseException], ...]] = (
    asyncpg_errors.PostgresConnectionError,
    asyncpg_errors.CannotConnectNowError,
    asyncpg_errors.AdminShutdownError,
    asyncpg_errors.CrashShutdownError,
    asyncpg_errors.TooManyConnectionsError,
    asyncpg_errors.InterfaceError,
)
_UNREACHABLE_ERRNOS: Final = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})
_DRIVER_MODULES: Final = ("sqlalchemy.", "asyncpg", "aiosqlite", "sqlite3")
_SQLITE_UNAVAILABLE: Final = ("database is locked", "unable to open database", "disk I/O error")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now - refused, reset, timed out,
    shutting down or starting up, out of connections - rather than that it refused a
    statement (a constraint, a syntax error)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        if isinstance(exc, sa_exc.OperationalError):
            # SQLite files its schema errors ("no such column") as operational too: a bug
            # to be logged as one, not an outage
            if isinstance(exc.orig, sqlite3.Error):
                return any(text in str(exc.orig) for text in _SQLITE_UNAVAILABLE)
            return True
        return exc.orig is not None and is_outage(exc.orig)
    if isinstance(exc, (sa_exc.TimeoutError, *_DRIVER_OUTAGES)):
        return True  # no free pooled connection; the driver's own connection errors
    if isinstance(exc, OSError) and _raised_by_driver(exc):
        # opening a connection: refused, reset, no answer, unknown or unreachable host (an
        # OSError of other code in the unit of work - a mail server down - is not ours)
        return isinstance(exc, ConnectionError | TimeoutError | socket.gaierror) or (
            exc.errno in _UNREACHABLE_ERRNOS
        )
    return False


def _raised_by_driver(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in SQLAlchemy or a database driver."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_DRIVER_MODULES):
            return True
        tb = tb.tb_next
    return False


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


class _KeyLock:
    """An in-process lock for one key, forgotten when nobody holds or awaits it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _lock_id(key: str) -> int:
    """A stable signed 64-bit id for an advisory lock key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
