"""The WebSocket fuzz corpus: mutated messages on ``/ws/app/v1``, over several connections at
once, each logged in as a fuzzing user whose devices are online.

Each case sends one message (a mutated command, text that is not JSON, bytes, nesting far too
deep, a message over the size limit) and then a ``ping``; everything the server sends until
the ``pong`` must be a message of the protocol (`check_message`): ``s2c_invalid_msg`` with an
error code and text, or a valid answer, and none about a device the user does not own. A
connection may be closed by the server only with a close frame; it is then opened and logged
in again. Meanwhile `HealthyDevices` keep working, and afterwards the server's log holds no
crash.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from iotcloud.errors import ServerError
from tests.reliability.fuzzing import FuzzPlan, Mutator, log_flood, log_problems, report
from tests.reliability.healthy import HealthyDevices
from tests.reliability.scene import Owned, devices_online, import_products, new_owner
from tests.server import RunningServer

CONNECTIONS: Final = 8
ANSWER_SECONDS: Final = 10.0
MESSAGE_MAX_BYTES: Final = 1 << 20
"""The largest message the server reads (larger ones are refused)."""
KNOWN: Final = frozenset(
    {
        "login_res",
        "subscribe_res",
        "s2c_invalid_msg",
        "pong",
        "s2c_noti",
        "s2c_raw",
        "s2c_ack",
        "s2c_online_status",
        "s2c_binding_changed",
    }
)


@pytest.fixture(scope="module")
async def owner(fuzz_server: RunningServer) -> Owned:
    app = fuzz_server.create_app("WebSocket fuzz")
    async with httpx.AsyncClient(base_url=fuzz_server.base_url, timeout=30) as http:
        products = await import_products(fuzz_server)
        return await new_owner(fuzz_server, http, app["appid"], products, "wsfuzz")


def login_data(owner: Owned) -> dict[str, Any]:
    return {
        "appid": owner.appid,
        "uid": owner.uid,
        "token": owner.token,
        "p0_type": "attrs_v4",
        "heartbeat_interval": 180,
        "auto_subscribe": True,
    }


def templates(owner: Owned) -> list[dict[str, Any]]:
    """A well-formed message of every command, about the owner's devices."""
    did, thing = owner.did, owner.thing.did
    return [
        {"cmd": "login_req", "data": login_data(owner)},
        {"cmd": "subscribe_req", "data": [{"did": did}, {"did": thing}]},
        {"cmd": "c2s_write", "data": {"did": did, "attrs": {"LED_OnOff": True, "LED_R": 10}}},
        {"cmd": "c2s_write", "data": {"did": thing, "attrs": {"power_switch": 1}}},
        {"cmd": "c2s_read", "data": {"did": did, "names": ["LED_R"]}, "req_sn": 7},
        {"cmd": "c2s_read", "data": {"did": thing}},
        {"cmd": "c2s_raw", "data": {"did": did, "raw": [1, 0, 0, 0, 0, 0, 0, 1]}},
        {"cmd": "c2s_ack", "data": {"did": did}, "res_sn": 5},
        {"cmd": "ping"},
    ]


def make_message(rng: random.Random, mutator: Mutator, owner: Owned) -> str | bytes:
    """One hostile message: most are a mutated command, the rest text or bytes of all kinds."""
    template = rng.choice(templates(owner))
    roll = rng.random()
    if roll < 0.6:
        return mutator.json_text(mutator.mutate(template))
    if roll < 0.68:
        return mutator.deep_inside(template)
    if roll < 0.74:
        text = json.dumps(template)
        return text[: rng.randrange(1, len(text))]
    if roll < 0.8:
        return json.dumps(template).encode() if rng.random() < 0.5 else rng.randbytes(40)
    if roll < 0.85:
        return rng.choice(("", " ", "null", "[]", "1", '"ping"', "{}", '{"cmd": null}'))
    if roll < 0.9:
        return json.dumps({"cmd": mutator.scalar(), "data": mutator.value()})
    if roll < 0.93:
        return json.dumps({**template, "pad": "x" * (MESSAGE_MAX_BYTES + 10)})
    if roll < 0.96:
        return mutator.deep_text()
    return b"\xff\xfe" + json.dumps(template).encode("utf-16-le")


def surely_a_ping(message: str | bytes) -> bool:
    """Whether the server must answer ``message`` with a ``pong``: a small, plain JSON object
    whose ``cmd`` is ``ping`` (anything more doubtful is not counted on)."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    if len(text) > 4_096 or text.count("{") > 1 or "[" in text:
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("cmd") == "ping"


def check_message(text: str | bytes, owner: Owned) -> str | None:
    """Why a message the server sent is not one of the protocol's, or None."""
    if not isinstance(text, str):
        return "a binary message"
    try:
        message = json.loads(text)
    except ValueError:
        return "not JSON"
    if not isinstance(message, dict) or message.get("cmd") not in KNOWN:
        return "not a message of the protocol"
    data = message.get("data")
    if message["cmd"] == "s2c_invalid_msg":
        if not isinstance(data, dict) or set(data) != {"error_code", "msg"}:
            return "s2c_invalid_msg without {error_code, msg}"
        if not isinstance(data["error_code"], int) or not isinstance(data["msg"], str):
            return "s2c_invalid_msg with a wrong type"
        if data["error_code"] == ServerError.code:
            return "a server error"
    did = data.get("did") if isinstance(data, dict) else None
    if isinstance(did, str) and did not in (owner.did, owner.thing.did):
        return f"a message about device {did}, not the user's"
    return None


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)
    answers: int = 0


class Connection:
    """One app connection that reconnects (and logs in again) after a clean close."""

    def __init__(self, url: str, owner: Owned, outcome: Outcome) -> None:
        self.url = url
        self.owner = owner
        self.outcome = outcome
        self.ws: ClientConnection | None = None

    async def open(self) -> ClientConnection:
        ws = await connect(self.url, max_size=None)
        await ws.send(json.dumps({"cmd": "login_req", "data": login_data(self.owner)}))
        await ws.send('{"cmd": "ping"}')
        async with asyncio.timeout(ANSWER_SECONDS):
            while json.loads(await ws.recv()).get("cmd") != "pong":
                pass
        self.ws = ws
        return ws

    async def run(self, index: int, message: str | bytes) -> None:
        ws = self.ws or await self.open()
        shown = repr(message[:300])
        pongs = 1 + surely_a_ping(message)
        try:
            await ws.send(message)
            await ws.send('{"cmd": "ping"}')
            async with asyncio.timeout(ANSWER_SECONDS):
                while pongs:
                    answer = await ws.recv()
                    self.outcome.answers += 1
                    problem = check_message(answer, self.owner)
                    if problem is not None:
                        self.outcome.failures.append(
                            f"#{index} {shown} -> {str(answer)[:300]!r}: {problem}"
                        )
                    elif json.loads(answer)["cmd"] == "pong":
                        pongs -= 1
        except ConnectionClosed as exc:
            self.ws = None
            if exc.rcvd is None:
                self.outcome.failures.append(f"#{index} {shown} -> dropped without a close frame")
            else:
                self.outcome.closes.append(f"#{index}: {exc.rcvd.code} {exc.rcvd.reason}")
        except TimeoutError:
            self.outcome.failures.append(f"#{index} {shown} -> no pong in {ANSWER_SECONDS:g} s")
            await ws.close()
            self.ws = None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def test_websocket_fuzz_corpus(
    fuzz_plan: FuzzPlan, fuzz_server: RunningServer, owner: Owned
) -> None:
    rng = fuzz_plan.rng("ws")
    mutator = Mutator(rng)
    count = fuzz_plan.count("ws")
    messages = [make_message(rng, mutator, owner) for _ in range(count)]
    outcome = Outcome()
    log_before = len(fuzz_server.log().splitlines())
    url = f"ws://127.0.0.1:{fuzz_server.http_port}/ws/app/v1"

    async def connection(share: int) -> None:
        conn = Connection(url, owner, outcome)
        try:
            for index in range(share, count, CONNECTIONS):
                await conn.run(index, messages[index])
        finally:
            await conn.close()

    async with (
        HealthyDevices(fuzz_server, owner.appid) as healthy,
        devices_online(fuzz_server, owner),
    ):
        await asyncio.gather(*(connection(share) for share in range(CONNECTIONS)))
        await healthy.assert_healthy()
    print(
        f"WebSocket fuzz: {count} cases, seed {fuzz_plan.seed}, {outcome.answers} answers, "
        f"{len(outcome.closes)} clean closes"
    )
    log = fuzz_server.log()
    failures = outcome.failures + [f"server log: {line}" for line in log_problems(log)]
    flood = log_flood(log.splitlines()[log_before:], count)
    if flood is not None:
        failures.append(flood)
    assert not failures, report(fuzz_plan, "WebSocket", count, failures)
