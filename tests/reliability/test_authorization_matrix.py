"""The authorization matrix, generated from the route table.

User A owns a Gizwits device (bound with a remark and an alias), schedules of both families, a
Tencent timer and a data-template device; user B, of the same app, owns the same kinds of
things. Every route of the server has an entry in `calls.ROUTES` (a route without one fails
`test_every_route_has_an_entry`), and every protected route is called, naming A's things, with
each kind of wrong credentials: none, a made-up token, A's logged-out token, B's token, and A's
token under another app's id. None may succeed, and no answer may hold anything of A's that the
request did not itself carry. B's own calls (``self`` scope) are answered about B only.
Afterwards everything of A's is as it was.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from iotcloud.codecs import P0Codec
from iotcloud.simulator.device import random_status
from tests.accounts import APP_ID, USER_TOKEN
from tests.devices import MqttDevice, mqtt_port
from tests.reliability.calls import (
    NO_BODY,
    ROUTES,
    TOKENAPI,
    HttpCall,
    RouteEntry,
    Target,
    tokenapi_call,
)
from tests.reliability.envelopes import envelope_problem
from tests.reliability.routes import app_routes, tokenapi_actions
from tests.reliability.scene import Owned, import_products, login, new_owner
from tests.server import ADMIN_TOKEN, RunningServer
from tests.tencent import TOKENAPI as TOKENAPI_PATH

pytestmark = pytest.mark.backend("sqlite")


@dataclass(frozen=True)
class Scene:
    a: Owned
    b: Owned
    other_appid: str
    logged_out: str
    """A token of A's, logged out."""


@pytest.fixture(scope="module")
async def scene(server: RunningServer) -> Scene:
    app = server.create_app("Matrix")
    other = server.create_app("Matrix other")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        products = await import_products(server)
        a = await new_owner(server, http, app["appid"], products, "alice")
        b = await new_owner(server, http, app["appid"], products, "bob")
        spare = await login(http, a.appid, a.username)
        ended = await http.delete("/app/logout", headers={APP_ID: a.appid, USER_TOKEN: spare})
        assert ended.status_code == 204, ended.text
    return Scene(a, b, other["appid"], spare)


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client


# -- judging answers ---------------------------------------------------------------------------


def request_text(call: HttpCall, headers: dict[str, str]) -> str:
    """Everything the request carried, lower case: what an answer may echo."""
    body = json.dumps(call.json) if call.json is not NO_BODY else ""
    content = call.content.decode(errors="replace") if call.content else ""
    parts = [call.url, json.dumps(call.query), *headers.values(), body, content]
    return " ".join(parts).lower()


def leaks(owner: Owned, answer: str, sent: str) -> list[str]:
    """The names of ``owner``'s private values in ``answer`` that ``sent`` did not carry."""
    answer, sent = answer.lower(), sent.lower()
    return [
        name
        for name, value in owner.private().items()
        if value.lower() in answer and value.lower() not in sent
    ]


def refused(reply: httpx.Response) -> bool:
    """The dialect's refusal: an HTTP error, or a Tencent ``Error`` (always HTTP 200)."""
    if reply.url.path.startswith("/api/exploreropen/"):
        try:
            return "Error" in reply.json()["Response"]
        except (ValueError, KeyError, TypeError):
            return False
    return 400 <= reply.status_code < 500


async def send(http: httpx.AsyncClient, call: HttpCall, headers: dict[str, str]) -> httpx.Response:
    extra: dict[str, Any] = {}
    if call.json is not NO_BODY:
        extra["json"] = call.json
    elif call.content is not None:
        extra["content"] = call.content
    return await http.request(
        call.method, call.url, params=call.query, headers={**call.headers, **headers}, **extra
    )


@dataclass
class Verdicts:
    """Every problem found, so that one run shows them all."""

    owner: Owned
    problems: list[str]
    calls: int = 0

    async def check(
        self,
        http: httpx.AsyncClient,
        label: str,
        call: HttpCall,
        headers: dict[str, str],
        *,
        must_refuse: bool,
    ) -> httpx.Response:
        self.calls += 1
        reply = await send(http, call, headers)
        where = f"{call.method} {call.url} [{label}] -> {reply.status_code} {reply.text[:300]}"
        envelope = envelope_problem(
            reply.status_code, reply.headers.get("content-type", ""), reply.content, call.url
        )
        if envelope is not None:
            self.problems.append(f"{where}: {envelope}")
        if must_refuse and not refused(reply):
            self.problems.append(f"{where}: not refused")
        leaked = leaks(self.owner, reply.text, request_text(call, headers))
        if leaked:
            self.problems.append(f"{where}: leaks A's {', '.join(leaked)}")
        return reply

    def assert_none(self) -> None:
        assert not self.problems, f"{len(self.problems)} problems:\n" + "\n".join(self.problems)


# -- the table ---------------------------------------------------------------------------------


def test_every_route_has_an_entry() -> None:
    """A route the server serves without an entry here fails, and so does an entry for a route
    the server no longer has; each public route says why it is public."""
    served = app_routes()
    missing = sorted(served - set(ROUTES))
    stale = sorted(set(ROUTES) - served)
    assert not missing, f"routes without an entry in tests/reliability/calls.py: {missing}"
    assert not stale, f"entries for routes the server does not have: {stale}"
    unexplained = [route for route, entry in ROUTES.items() if entry.access == "public"]
    assert all(ROUTES[route].reason for route in unexplained)
    assert set(TOKENAPI) == tokenapi_actions(), "tokenapi Actions and TOKENAPI differ"


def by_access(access: str) -> list[RouteEntry]:
    """The entries of ``access``, in route order."""
    return [entry for route, entry in sorted(ROUTES.items()) if entry.access == access]


# -- Gizwits app routes ------------------------------------------------------------------------


async def test_app_routes_refuse_wrong_credentials(scene: Scene, http: httpx.AsyncClient) -> None:
    a, b = scene.a, scene.b
    wrong = {
        "no token": {APP_ID: a.appid},
        "made-up token": {APP_ID: a.appid, USER_TOKEN: secrets.token_hex(16)},
        "logged-out token": {APP_ID: a.appid, USER_TOKEN: scene.logged_out},
        "A's token, another app's id": {APP_ID: scene.other_appid, USER_TOKEN: a.token},
    }
    verdicts = Verdicts(a, [])
    target = Target(a, a.family_id)
    for entry in by_access("user"):
        assert entry.build is not None
        for label, headers in wrong.items():
            await verdicts.check(http, label, entry.build(target), headers, must_refuse=True)
        token = await login(http, b.appid, b.username) if entry.ends_session else b.token
        await verdicts.check(
            http,
            "B's token",
            entry.build(target),
            {APP_ID: b.appid, USER_TOKEN: token},
            must_refuse=entry.scope == "resource",
        )
    verdicts.assert_none()
    assert verdicts.calls == 5 * len(by_access("user"))
    await assert_untouched(http, a, b)


# -- Tencent tokenapi --------------------------------------------------------------------------


async def test_tokenapi_actions_refuse_wrong_credentials(
    scene: Scene, http: httpx.AsyncClient
) -> None:
    """Every Action, named with A's things. (An AccessToken names its own app: there is no app
    id to get wrong.)"""
    a, b = scene.a, scene.b
    wrong: dict[str, str | None] = {
        "no token": None,
        "made-up token": secrets.token_hex(16),
        "logged-out token": scene.logged_out,
    }
    verdicts = Verdicts(a, [])
    for action, entry in sorted(TOKENAPI.items()):
        for label, token in wrong.items():
            call = tokenapi_call(action, entry.params(Target(a, a.family_id)), token)
            await verdicts.check(http, label, call, {}, must_refuse=True)
        token_b = await login(http, b.appid, b.username) if entry.ends_session else b.token
        call = tokenapi_call(action, entry.params(Target(a, b.family_id)), token_b)
        await verdicts.check(http, "B's token", call, {}, must_refuse=entry.scope == "resource")
    verdicts.assert_none()
    await assert_untouched(http, a, b)


# -- operator API ------------------------------------------------------------------------------


async def test_operator_routes_refuse_wrong_bearer_tokens(
    scene: Scene, http: httpx.AsyncClient
) -> None:
    a = scene.a
    wrong = {
        "no Authorization": {},
        "made-up bearer": {"Authorization": f"Bearer {secrets.token_hex(16)}"},
        "A's user token as bearer": {"Authorization": f"Bearer {a.token}"},
        "admin token, Basic": {"Authorization": f"Basic {ADMIN_TOKEN}"},
        "admin token plus a character": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        "admin token cut short": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        "bearer without a token": {"Authorization": "Bearer"},
        "user headers": a.headers(),
    }
    verdicts = Verdicts(a, [])
    for entry in by_access("operator"):
        assert entry.build is not None
        for label, headers in wrong.items():
            call = entry.build(Target(a, a.family_id))
            reply = await verdicts.check(http, label, call, headers, must_refuse=True)
            if reply.status_code not in (401, 403):
                verdicts.problems.append(f"{call.method} {call.url} [{label}]: not 401 or 403")
    verdicts.assert_none()
    await assert_untouched(http, a, scene.b)


# -- web console -------------------------------------------------------------------------------


async def test_console_routes_refuse_callers_without_a_session(
    scene: Scene, http: httpx.AsyncClient
) -> None:
    """Pages send a caller without a live console session to sign-in (303), data routes answer
    401; neither the operator's bearer token nor a user's token nor a made-up cookie opens one,
    and nothing is changed."""
    a = scene.a
    wrong = {
        "no cookie": {},
        "made-up cookie": {"Cookie": f"iotcloud_console={secrets.token_urlsafe(32)}"},
        "operator bearer": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        "user headers": a.headers(),
    }
    verdicts = Verdicts(a, [])
    for entry in by_access("console"):
        assert entry.build is not None
        for label, headers in wrong.items():
            call = entry.build(Target(a, a.family_id))
            reply = await http.request(
                call.method, call.url, content=call.content, headers={**call.headers, **headers}
            )
            verdicts.calls += 1
            where = f"{call.method} {call.url} [{label}]"
            if reply.status_code == 303:
                if reply.headers.get("location") != "/console/login":
                    verdicts.problems.append(f"{where}: redirected elsewhere")
            elif reply.status_code != 401 or not reply.headers.get("content-type", "").startswith(
                "application/json"
            ):
                verdicts.problems.append(f"{where}: {reply.status_code}, not 303 or 401 JSON")
            for secret in (a.token, a.passcode):
                if secret in reply.text:
                    verdicts.problems.append(f"{where}: leaks a secret")
    verdicts.assert_none()
    assert verdicts.calls == len(wrong) * len(by_access("console"))
    await assert_untouched(http, a, scene.b)


# -- public routes -----------------------------------------------------------------------------


async def test_public_routes_tell_nothing_of_a_user(scene: Scene, http: httpx.AsyncClient) -> None:
    """Public routes called naming A's things (or A's name, with a wrong password) answer
    nothing of A's beyond what was sent."""
    a = scene.a
    verdicts = Verdicts(a, [])
    for entry in by_access("public"):
        assert entry.build is not None
        call = entry.build(Target(a, a.family_id))
        await verdicts.check(http, "public", call, {APP_ID: a.appid}, must_refuse=False)
    verdicts.assert_none()
    await assert_untouched(http, a, scene.b)


# -- A is as before ----------------------------------------------------------------------------


async def assert_untouched(http: httpx.AsyncClient, a: Owned, b: Owned) -> None:
    """A still signs in, still has A's device (same passcode, remark, alias, enabled), both
    schedules and the timer; B is bound to nothing of A's."""
    assert await login(http, a.appid, a.username)
    listed = await http.get("/app/bindings", headers=a.headers(), params={"limit": 100})
    assert listed.status_code == 200, listed.text
    devices = {item["did"]: item for item in listed.json()["devices"]}
    assert set(devices) == {a.did, a.thing.did}, devices
    mine = devices[a.did]
    assert (mine["passcode"], mine["remark"], mine["dev_alias"], mine["is_disabled"]) == (
        a.passcode,
        a.remark,
        a.alias,
        False,
    )
    schedules = await http.get("/app/scheduler", headers=a.headers())
    assert [item["id"] for item in schedules.json()] == [a.schedule_id], schedules.text
    per_device = await http.get(f"/app/devices/{a.did}/scheduler", headers=a.headers())
    assert [item["id"] for item in per_device.json()] == [a.device_schedule_id]
    timers = await http.post(
        TOKENAPI_PATH,
        json={
            "Action": "AppGetTimerList",
            "AccessToken": a.token,
            "ProductId": a.product_key,
            "DeviceName": a.mac,
        },
    )
    assert [t["TimerId"] for t in timers.json()["Response"]["TimerList"]] == [a.timer_id]
    theirs = await http.get("/app/bindings", headers=b.headers(), params={"limit": 100})
    assert {item["did"] for item in theirs.json()["devices"]} == {b.did, b.thing.did}


# -- the WebSocket -----------------------------------------------------------------------------


class Socket:
    """An app connection; `drain` returns what the server answered before a ping's pong."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, cmd: str, data: Any) -> str:
        text = json.dumps({"cmd": cmd, "data": data})
        await self.ws.send(text)
        return text

    async def drain(self) -> list[dict[str, Any]]:
        await self.ws.send('{"cmd": "ping"}')
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await self.ws.recv())
                if message["cmd"] == "pong":
                    return seen
                seen.append(message)


def ws_url(server: RunningServer) -> str:
    return f"ws://127.0.0.1:{server.http_port}/ws/app/v1"


def login_data(appid: str, uid: str, token: str) -> dict[str, Any]:
    return {"appid": appid, "uid": uid, "token": token, "heartbeat_interval": 180}


async def commands_on(socket: Socket, owner: Owned) -> str:
    """Every command on ``owner``'s devices; returns all that was sent."""
    sent = []
    for did in (owner.did, owner.thing.did):
        sent += [
            await socket.send("subscribe_req", [{"did": did}]),
            await socket.send("c2s_read", {"did": did}),
            await socket.send("c2s_write", {"did": did, "attrs": {"LED_OnOff": True}}),
            await socket.send("c2s_raw", {"did": did, "raw": [1, 2, 3]}),
            await socket.send("c2s_ack", {"did": did, "res_sn": 1}),
        ]
    return " ".join(sent)


async def test_websocket_refuses_wrong_logins(scene: Scene, server: RunningServer) -> None:
    a, b = scene.a, scene.b
    wrong = {
        "no token": login_data(a.appid, a.uid, ""),
        "made-up token": login_data(a.appid, a.uid, secrets.token_hex(16)),
        "logged-out token": login_data(a.appid, a.uid, scene.logged_out),
        "B's token, A's uid": login_data(b.appid, a.uid, b.token),
        "A's token, another app's id": login_data(scene.other_appid, a.uid, a.token),
    }
    problems: list[str] = []
    for label, data in wrong.items():
        async with connect(ws_url(server)) as ws:
            socket = Socket(ws)
            sent = await socket.send("login_req", data)
            sent += await commands_on(socket, a)
            answers = await socket.drain()
        if answers[0] != {"cmd": "login_res", "data": {"success": False}}:
            problems.append(f"[{label}] login answered {answers[0]}")
        for answer in answers[1:]:
            if answer["cmd"] != "s2c_invalid_msg" or answer["data"]["error_code"] != 1003:
                problems.append(f"[{label}] a command before login answered {answer}")
        leaked = leaks(a, json.dumps(answers), sent)
        if leaked:
            problems.append(f"[{label}] leaks A's {', '.join(leaked)}: {answers}")
    assert not problems, "\n".join(problems)


async def test_websocket_user_b_hears_nothing_of_a(scene: Scene, server: RunningServer) -> None:
    """B, logged in, cannot subscribe to, read, write or send frames to A's devices, and hears
    nothing when A's device comes online and reports, while A does."""
    a, b = scene.a, scene.b
    async with connect(ws_url(server)) as ws_a, connect(ws_url(server)) as ws_b:
        socket_a, socket_b = Socket(ws_a), Socket(ws_b)
        for socket, owner in ((socket_a, a), (socket_b, b)):
            await socket.send("login_req", login_data(owner.appid, owner.uid, owner.token))
            assert (await socket.drain())[0] == {"cmd": "login_res", "data": {"success": True}}
        sent = await commands_on(socket_b, a)
        answers = await socket_b.drain()
        subscribed = [m for m in answers if m["cmd"] == "subscribe_res"]
        assert len(subscribed) == 2, answers
        for message in subscribed:
            assert message["data"]["success"] == [], message
        others = [m for m in answers if m["cmd"] not in ("subscribe_res", "s2c_invalid_msg")]
        assert others == [], answers
        assert leaks(a, json.dumps(answers), sent) == []

        device = MqttDevice(
            mqtt_port(server), a.did, a.passcode, protocol=aiomqtt.ProtocolVersion.V31
        )
        codec = P0Codec(a.products.definition)
        async with device:
            await device.report(codec, random_status(a.products.definition, random.Random(1)))
            async with asyncio.timeout(15):
                heard: list[dict[str, Any]] = []
                while not any(m["cmd"] == "s2c_noti" for m in heard):
                    heard += await socket_a.drain()
        assert any(m["data"].get("did") == a.did for m in heard if m["cmd"] == "s2c_noti")
        answers_b = await socket_b.drain()  # B's connection is open, and heard nothing
        assert leaks(a, json.dumps(answers_b), "") == [], answers_b
        assert answers_b == [], answers_b
