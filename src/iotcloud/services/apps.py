"""Applications (appid/appsecret): operator management and per-request lookup."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from iotcloud.domain.clock import Clock
from iotcloud.errors import AppIdInvalid, FormInvalid
from iotcloud.storage.accounts import AppRepository
from iotcloud.storage.database import Database
from iotcloud.storage.models import AppRow

_APPID = re.compile(r"[A-Za-z0-9_\-]{4,64}")
_SECRET = re.compile(r"[\x21-\x7e]{8,128}")


@dataclass(frozen=True)
class App:
    """An application as the rest of the system sees it (the secret stays in storage)."""

    id: int
    appid: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class AppCredentials:
    appid: str
    appsecret: str


class AppService:
    """Creates apps and resolves the ``X-Gizwits-Application-Id`` header.

    Lookups of known appids are cached for ``cache_seconds`` (apps are never deleted, so a
    positive answer cannot go stale); unknown appids are always looked up again.
    """

    def __init__(self, db: Database, clock: Clock, cache_seconds: float = 30.0) -> None:
        self.db = db
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, App]] = {}

    async def create(
        self, name: str, appid: str | None = None, appsecret: str | None = None
    ) -> AppCredentials:
        """Create an app; ``appid``/``appsecret`` are generated unless given (migrations from
        another cloud keep the ids shipped apps carry). Raises ``FormInvalid`` for bad values or a
        taken appid."""
        name = name.strip()
        if not 1 <= len(name) <= 128:
            raise FormInvalid("name: must be 1 to 128 characters")
        appid = appid if appid is not None else secrets.token_hex(16)
        appsecret = appsecret if appsecret is not None else secrets.token_hex(16)
        if not _APPID.fullmatch(appid):
            raise FormInvalid("appid: 4 to 64 letters, digits, '-' or '_'")
        if not _SECRET.fullmatch(appsecret):
            raise FormInvalid("appsecret: 8 to 128 printable characters without spaces")
        async with self.db.session() as session:
            await AppRepository(session).add(
                AppRow(appid=appid, secret=appsecret, name=name, created_at=self.clock.now())
            )
        return AppCredentials(appid=appid, appsecret=appsecret)

    async def rotate_secret(self, appid: str, appsecret: str | None = None) -> AppCredentials:
        appsecret = appsecret if appsecret is not None else secrets.token_hex(16)
        if not _SECRET.fullmatch(appsecret):
            raise FormInvalid("appsecret: 8 to 128 printable characters without spaces")
        async with self.db.session() as session:
            row = await AppRepository(session).by_appid(appid)
            if row is None:
                raise AppIdInvalid(f"no app with appid {appid}")
            row.secret = appsecret
            row.secret_rotated_at = self.clock.now()
        return AppCredentials(appid=appid, appsecret=appsecret)

    async def list(self) -> Sequence[App]:
        async with self.db.session() as session:
            return [_app(row) for row in await AppRepository(session).all()]

    async def get(self, appid: str) -> App:
        """The app with ``appid``; raises ``AppIdInvalid`` (9003)."""
        now = time.monotonic()
        hit = self._cache.get(appid)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.db.session() as session:
            row = await AppRepository(session).by_appid(appid)
        if row is None:
            raise AppIdInvalid(
                f"unknown appid {appid!r}" if appid else "X-Gizwits-Application-Id missing"
            )
        app = _app(row)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[appid] = (now + self.cache_seconds, app)
        return app

    async def secret(self, app: App) -> str:
        """The current secret, read fresh (never cached, so a rotation takes effect at once)."""
        async with self.db.session() as session:
            row = await AppRepository(session).by_appid(app.appid)
        if row is None:
            raise AppIdInvalid(f"unknown appid {app.appid!r}")
        return row.secret


def _app(row: AppRow) -> App:
    return App(id=row.id, appid=row.appid, name=row.name, created_at=row.created_at)
