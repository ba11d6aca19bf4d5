"""The database component: engine, sessions and schema migrations, for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger(__name__)

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
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._local_locks: dict[str, _KeyLock] = {}

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
        """
        if lock is not None and self.is_sqlite:
            entry = self._local_locks.setdefault(lock, _KeyLock())
            entry.users += 1
            try:
                async with entry.lock, self.session() as session:
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
