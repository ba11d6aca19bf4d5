"""App users against a real ``iotcloud serve``: sign one up over HTTP, and bind devices to them
through ``BindingService`` on the database the server runs on (or expire their tokens there)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from iotcloud.domain.clock import SystemClock
from iotcloud.services.bindings import BindingService
from iotcloud.services.credentials import digest
from iotcloud.storage.accounts import UserTokenRepository
from iotcloud.storage.database import Database
from iotcloud.storage.models import UserTokenRow
from tests.server import RunningServer

APP_ID = "X-Gizwits-Application-Id"
USER_TOKEN = "X-Gizwits-User-token"


@dataclass(frozen=True)
class Member:
    """An app user as ``BindingService`` takes it."""

    app_id: int
    user_id: int


@dataclass(frozen=True)
class User:
    """A signed-up app user, as the app knows it."""

    appid: str
    uid: str
    token: str

    def headers(self) -> dict[str, str]:
        """The headers an app sends for this user."""
        return {APP_ID: self.appid, USER_TOKEN: self.token}


def sign_up(server: RunningServer, appid: str) -> User:
    """A new user of ``appid`` with a fresh username (``POST /app/users`` must answer 201)."""
    with server.client(appid) as http:
        reply = http.post(
            "/app/users", json={"username": "u" + uuid.uuid4().hex[:12], "password": "pw-123456"}
        )
    assert reply.status_code == 201, reply.text
    return User(appid, reply.json()["uid"], reply.json()["token"])


async def bind(server: RunningServer, user: User, did: str, **texts: str) -> None:
    """Bind through the service layer, on the database the server runs on."""
    async with Database(server.database_url) as db:
        async with db.session() as session:
            found = await UserTokenRepository(session).user_for(digest(user.token))
        assert found is not None
        row = found[1]
        await BindingService(db, SystemClock()).bind(Member(row.app_id, row.id), did, **texts)


async def expire_token(server: RunningServer, token: str) -> None:
    """Make the user token ``token`` expired a second ago, in the server's database (a token
    the server has not used yet, so not in its cache)."""
    async with Database(server.database_url) as db, db.session() as session:
        await session.execute(
            update(UserTokenRow)
            .where(UserTokenRow.digest == digest(token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
