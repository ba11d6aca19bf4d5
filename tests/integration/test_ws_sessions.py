"""An open ``/ws/app/v1`` connection lasts only as long as the token it logged in with, and
hostile messages are answered without losing the connection — against real ``iotcloud serve``
processes: one checking the sessions' tokens every second, one issuing short-lived tokens."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from iotcloud.services.credentials import digest
from iotcloud.storage.accounts import UserTokenRepository
from iotcloud.storage.database import Database
from iotcloud.storage.models import UserTokenRow
from tests.accounts import User, sign_up
from tests.integration.test_password_reset import phone_user, send_code
from tests.integration.test_websocket import AppSocket, app_socket, ws_url
from tests.server import RunningServer, serving

#: IOTCLOUD_AUTH_CACHE_SECONDS of the `quick` server: how often it checks the sessions' tokens.
CHECK_SECONDS = 1.0
#: IOTCLOUD_USER_TOKEN_TTL of the `short_lived` server.
TOKEN_TTL = 3
#: Leeway for a busy test machine on top of a promised delay.
SLACK = 4.0
PASSWORD = "pw-123456"  # what `sign_up` signs users up with

SIGNED_OUT = (9004, "user token revoked: signed out")
PASSWORD_CHANGED = (9004, "user token revoked: the password was changed")
PASSWORD_RESET = (9004, "user token revoked: the password was reset")
REVOKED_ELSEWHERE = (9004, "user token revoked: signed out, or the password changed or reset")
#: the close code that follows the token error (policy violation)
TOKEN_CLOSE = 1008


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Checks the tokens of open sessions every ``CHECK_SECONDS``; no traceback in its log."""
    with serving(
        tmp_path_factory.mktemp("ws-quick"),
        None,
        auth_cache_seconds=CHECK_SECONDS,
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Issues tokens valid for ``TOKEN_TTL`` seconds and checks sessions only every minute: a
    session that ends on time was ended by its expiry timer."""
    with serving(
        tmp_path_factory.mktemp("ws-short"),
        None,
        user_token_ttl=TOKEN_TTL,
        auth_cache_seconds=60,
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def app(quick: RunningServer) -> dict[str, str]:
    return quick.create_app("WS sessions")


@pytest.fixture(scope="module")
def appid(app: dict[str, str]) -> str:
    return app["appid"]


@pytest.fixture
async def http(quick: RunningServer, appid: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=quick.base_url, headers={"X-Gizwits-Application-Id": appid}, timeout=30
    ) as client:
        yield client


async def sign_in(http: httpx.AsyncClient, user: User) -> User:
    """Another token of ``user`` (signed up by ``sign_up``), from ``POST /app/login``."""
    profile = await http.get("/app/users", headers=user.headers())
    assert profile.status_code == 200, profile.text
    reply = await http.post(
        "/app/login", json={"username": profile.json()["username"], "password": PASSWORD}
    )
    assert reply.status_code == 200, reply.text
    return User(user.appid, user.uid, reply.json()["token"])


async def ended(client: AppSocket, within: float) -> tuple[int, str]:
    """The token error the server ends ``client``'s session with (``s2c_invalid_msg``, as the
    next message, within ``within`` seconds), after which it must close with ``TOKEN_CLOSE``."""
    async with asyncio.timeout(within):
        message = json.loads(await client.ws.recv())
    assert message["cmd"] == "s2c_invalid_msg", message
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(SLACK):
            await client.ws.recv()
    assert closed.value.rcvd is not None, "dropped without a close frame"
    assert closed.value.rcvd.code == TOKEN_CLOSE, closed.value
    return message["data"]["error_code"], message["data"]["msg"]


async def still_logged_in(client: AppSocket) -> None:
    """``client`` is open and logged in: a subscription is answered (not with 1003)."""
    await client.send("subscribe_req", [{"did": "x" * 22}])
    answer = await client.expect("subscribe_res")
    assert answer["data"]["failed"][0]["error_code"] == 9014, answer
    assert (await client.invalid())[0] == 9014


async def revoke_in_database(server: RunningServer, token: str) -> None:
    """Revoke ``token`` the way another server process would: in the database only."""
    async with Database(server.database_url) as db, db.session() as session:
        await UserTokenRepository(session).revoke(digest(token))


async def expire_in_database(server: RunningServer, token: str) -> None:
    async with Database(server.database_url) as db, db.session() as session:
        await session.execute(
            update(UserTokenRow)
            .where(UserTokenRow.digest == digest(token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


@asynccontextmanager
async def sockets(server: RunningServer, *users: User) -> AsyncIterator[list[AppSocket]]:
    """One logged-in connection per user (token)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(app_socket(server, user)) for user in users]


# -- the end of the token ends the session --------------------------------------------------------


async def test_logout_ends_that_tokens_sessions_only(
    quick: RunningServer, appid: str, http: httpx.AsyncClient
) -> None:
    user = sign_up(quick, appid)
    second = await sign_in(http, user)
    other = sign_up(quick, appid)
    async with sockets(quick, user, user, second, other) as (one, two, kept, bystander):
        reply = await http.delete("/app/logout", headers=user.headers())
        assert reply.status_code == 204, reply.text
        # told at once by the process that signed the token out, not at its next check
        assert await ended(one, SLACK) == SIGNED_OUT
        assert await ended(two, SLACK) == SIGNED_OUT
        await still_logged_in(kept)  # the same user's other token
        await still_logged_in(bystander)


async def test_password_change_ends_the_other_tokens_sessions(
    quick: RunningServer, appid: str, http: httpx.AsyncClient
) -> None:
    user = sign_up(quick, appid)
    changer = await sign_in(http, user)
    other = sign_up(quick, appid)
    async with sockets(quick, user, changer, other) as (old, kept, bystander):
        reply = await http.put(
            "/app/users",
            json={"old_pwd": PASSWORD, "new_pwd": "pw-654321"},
            headers=changer.headers(),
        )
        assert reply.status_code == 200, reply.text
        assert await ended(old, SLACK) == PASSWORD_CHANGED
        await still_logged_in(kept)  # the session that changed it stays signed in
        await still_logged_in(bystander)


async def test_password_reset_ends_every_session_of_the_user(
    quick: RunningServer, app: dict[str, str], appid: str
) -> None:
    with quick.client(appid) as client:
        phone = phone_user(quick, app, client)
        tokens = [
            client.post("/app/login", json={"username": phone, "password": "old-pass-1"})
            for _ in range(2)
        ]
    users = [User(appid, reply.json()["uid"], reply.json()["token"]) for reply in tokens]
    other = sign_up(quick, appid)
    async with sockets(quick, *users, other) as (first, second, bystander):
        code = send_code(quick, app, phone)
        with quick.client(appid) as client:
            reset = client.post(
                "/app/reset_password", json={"phone": phone, "code": code, "new_pwd": "pw-reset-1"}
            )
        assert reset.status_code == 200, reset.text
        assert await ended(first, SLACK) == PASSWORD_RESET
        assert await ended(second, SLACK) == PASSWORD_RESET
        await still_logged_in(bystander)


async def test_another_process_revoking_or_expiring_the_token_ends_the_session(
    quick: RunningServer, appid: str
) -> None:
    revoked, expired, untouched = (sign_up(quick, appid) for _ in range(3))
    async with sockets(quick, revoked, expired, untouched) as (gone, late, bystander):
        await revoke_in_database(quick, revoked.token)
        await expire_in_database(quick, expired.token)
        assert await ended(gone, CHECK_SECONDS + SLACK) == REVOKED_ELSEWHERE
        code, msg = await ended(late, CHECK_SECONDS + SLACK)
        assert code == 9006, msg
        assert msg.startswith("user token expired at "), msg
        await still_logged_in(bystander)


async def test_a_session_ends_when_its_token_expires(short_lived: RunningServer) -> None:
    appid = short_lived.create_app("Short tokens")["appid"]
    with short_lived.client(appid) as client:
        reply = client.post(
            "/app/users", json={"username": "u" + uuid.uuid4().hex[:12], "password": PASSWORD}
        )
    assert reply.status_code == 201, reply.text
    user = User(appid, reply.json()["uid"], reply.json()["token"])
    expire_at = reply.json()["expire_at"]
    async with app_socket(short_lived, user) as client:
        code, msg = await ended(client, TOKEN_TTL + SLACK)
        assert time.time() >= expire_at  # not before the token's expiry
    assert code == 9006, msg
    assert msg.startswith("user token expired at "), msg
    assert msg.endswith("; sign in again"), msg


# -- hostile messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("[" * 1000, "nested deeper than 64 levels"),
        (b"[" * 1000, "nested deeper than 64 levels"),
        ("[" * 1000 + "]" * 1000, "nested deeper than 64 levels"),
        ('{"cmd": "c2s_write", "data": ' + '{"a": ' * 500 + "1" + "}" * 501, "nested deeper"),
        ('{"cmd": "ping", "pad": "' + "x" * (3 << 19) + '"}', "larger than 1048576 bytes"),
        (b"\xff\xfe not json", "malformed JSON"),
        ("not json", "malformed JSON"),
    ],
    ids=["1000-brackets", "binary-brackets", "balanced", "deep-object", "1.5MiB", "binary", "text"],
)
async def test_hostile_messages_are_answered_and_the_session_kept(
    quick: RunningServer, appid: str, message: str | bytes, named: str
) -> None:
    user = sign_up(quick, appid)
    async with app_socket(quick, user) as client:
        await client.ws.send(message)
        code, msg = await client.invalid()
        assert (code, msg.startswith("message: "), named in msg) == (9015, True, True), msg
        await still_logged_in(client)


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(quick: RunningServer) -> None:
    async with connect(ws_url(quick), proxy=None, open_timeout=10) as ws:
        # the client library encodes text itself: send the frame as it is
        ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"cmd": "ping\xff"}'))
        ws.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(SLACK):
                await ws.recv()
    assert closed.value.rcvd is not None, "dropped without a close frame"
    assert closed.value.rcvd.code == 1007
    assert "Traceback" not in quick.log()  # one cheap frame per connection must not fill the log


async def test_a_message_beyond_the_socket_limit_closes_with_1009(quick: RunningServer) -> None:
    async with connect(ws_url(quick), proxy=None, open_timeout=10, max_size=None) as ws:
        await ws.send("[" * (3 << 20))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(SLACK):
                await ws.recv()
    assert closed.value.rcvd is not None, "dropped without a close frame"
    assert closed.value.rcvd.code == 1009
