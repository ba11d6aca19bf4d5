"""The HTTP fuzz corpus: every route of the route table, called with mutated paths, queries,
headers, methods and bodies, about 20 requests in flight.

Each case starts from the well-formed request `calls` has for the route (naming a fuzzing
user's own device, schedules and timer, with that user's credentials, so mutations reach deep
into the handlers) and changes one to three things. Every answer must be below 500 and in its
dialect's envelope (`envelopes`); meanwhile `HealthyDevices` keep working, and afterwards the
server's log holds no crash.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

import httpx
import pytest

from tests.accounts import APP_ID, USER_TOKEN
from tests.reliability.calls import NO_BODY, ROUTES, TOKENAPI, HttpCall, Target, tokenapi_call
from tests.reliability.envelopes import envelope_problem
from tests.reliability.fuzzing import FuzzPlan, Mutator, log_flood, log_problems, report
from tests.reliability.healthy import HealthyDevices
from tests.reliability.routes import WEBSOCKET, Route, app_routes, fill_path
from tests.reliability.scene import (
    Owned,
    devices_online,
    import_products,
    login,
    new_owner,
)
from tests.server import ADMIN_TOKEN, RunningServer

IN_FLIGHT: Final = 20
MAX_URL: Final = 60_000
"""Longer URLs than this the HTTP client refuses to send."""
APP_TOKEN: Final = "X-Gizwits-Application-Token"
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
QUERY_NAMES: Final = (
    "limit",
    "skip",
    "start_ts",
    "end_ts",
    "attrs",
    "attr",
    "product_key",
    "mac",
    "uid",
    "type",
    "sort",
    "did",
    "show_disabled",
    "entity",
    "aggregator",
    "unit",
    "replace",
    "registration",
    "product_secret",
    "start_time",
    "end_time",
)
COMMON: Final = frozenset({"Action", "AccessToken", "RequestId", "AppKey", "Timestamp", "Nonce"})
"""The Tencent parameters a mutation of the body mostly leaves alone."""
PATHS: Final = (
    "/app/users/",
    "//app//users",
    "/APP/USERS",
    "/app/%ff%fe",
    "/app/%00",
    "/app/devices/%2e%2e%2f%2e%2e%2fstatus",
    "/ws/app/v1",
    "/api/exploreropen",
    "/api/exploreropen/",
    "/api/exploreropen/nothing",
    "/api/exploreropen/tokenapi/x",
    "/admin/v1",
    "/admin/v1/nothing",
    "/dev/devices/",
    "/dev//device",
    "/account/reset/",
    "/" + "a" * 4_000,
    "/app/" + "é" * 300,
)


@dataclass
class FuzzScene:
    owner: Owned
    appsecret: str
    app_token: str
    spare_tokens: list[str] = field(default_factory=list)
    spare_at: int = 0

    def spare(self) -> str:
        """A token of the owner's to spend on a call that ends it (logout)."""
        self.spare_at += 1
        return self.spare_tokens[self.spare_at % len(self.spare_tokens)]


@dataclass
class Case:
    index: int
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str | bytes]
    content: bytes | None
    changes: list[str]

    @property
    def url(self) -> str:
        """The path with the query, percent-encoded here (values may hold lone surrogates,
        sent as the bytes they would be)."""
        url = self.path
        if self.query:
            url += "?" + urlencode(self.query, errors="surrogatepass")
        return url[:MAX_URL]

    def describe(self) -> str:
        query = "&".join(f"{k}={v[:60]!r}" for k, v in self.query)
        headers = {k: v[:80] for k, v in self.headers.items()}
        body = repr(self.content[:300]) if self.content is not None else "-"
        return (
            f"#{self.index} ({', '.join(self.changes)}) {self.method} {self.path[:300]}"
            f"{'?' + query if query else ''} headers={headers} body={body}"
        )


# -- the scene ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fuzz_scene(fuzz_server: RunningServer) -> FuzzScene:
    app = fuzz_server.create_app("HTTP fuzz")
    async with httpx.AsyncClient(base_url=fuzz_server.base_url, timeout=30) as http:
        products = await import_products(fuzz_server)
        owner = await new_owner(fuzz_server, http, app["appid"], products, "fuzz")
        auth = hashlib.md5((app["appid"] + app["appsecret"]).encode(), usedforsecurity=False)
        issued = await http.post(
            "/app/request_token",
            headers={APP_ID: app["appid"], "X-Gizwits-Application-Auth": auth.hexdigest()},
        )
        assert issued.status_code == 200, issued.text
        spares = [await login(http, owner.appid, owner.username) for _ in range(6)]
    return FuzzScene(owner, app["appsecret"], issued.json()["token"], spares)


# -- making cases ------------------------------------------------------------------------------


def http_routes() -> list[Route]:
    """The HTTP routes, tokenapi weighted by its number of Actions (one route, many)."""
    routes = sorted(route for route in app_routes() if route[0] != WEBSOCKET)
    tokenapi = ("POST", "/api/exploreropen/tokenapi")
    return routes + [tokenapi] * (len(TOKENAPI) // 2) + [("POST", "/api/exploreropen/appapi")] * 3


def template(route: Route, scene: FuzzScene, rng: random.Random) -> HttpCall:
    """The well-formed call of ``route``, with the owner's credentials for its access."""
    owner = scene.owner
    target = Target(owner, owner.family_id)
    entry = ROUTES[route]
    if entry.access == "tencent":
        action = rng.choice(sorted(TOKENAPI))
        token = scene.spare() if TOKENAPI[action].ends_session else owner.token
        return tokenapi_call(action, TOKENAPI[action].params(target), token)
    assert entry.build is not None, route
    call = entry.build(target)
    if entry.access == "user":
        token = scene.spare() if entry.ends_session else owner.token
        call.headers.update({APP_ID: owner.appid, USER_TOKEN: token})
    elif entry.access == "operator":
        call.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    elif route == ("POST", "/api/exploreropen/appapi"):
        call.json = {
            "Action": rng.choice(
                ("AppGetToken", "AppSendVerificationCode", "AppCreateCellphoneUser", "AppX")
            ),
            "RequestId": "fuzz",
            "AppKey": owner.appid,
            "Timestamp": int(time.time()),
            "Nonce": rng.randint(1, 2**31),
            "CountryCode": "86",
            "PhoneNumber": "13800000000",
            "Password": "pw-123456",
            "Type": "register",
        }
        call.json["Signature"] = tencent_signature(scene.appsecret, call.json)
    else:
        call.headers.update({APP_ID: owner.appid, APP_TOKEN: scene.app_token})
    return call


def tencent_signature(secret: str, body: dict[str, Any]) -> str:
    """Tencent's appapi signature over ``body`` (strings as JavaScript's ``String`` writes
    the simple values; anything else as JSON, which the server then refuses)."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else json.dumps(value)

    signed = "&".join(f"{k}={text(body[k])}" for k in sorted(body) if k != "Signature")
    digest = hmac.new(secret.encode(), signed.encode(errors="surrogatepass"), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode()


def make_case(
    index: int, routes: list[Route], scene: FuzzScene, rng: random.Random, mutator: Mutator
) -> Case:
    route = rng.choice(routes)
    call = template(route, scene, rng)
    changes: list[str] = []
    method, path = call.method, call.url
    query = [(name, str(value)) for name, value in call.query.items()]
    headers: dict[str, str | bytes] = dict(call.headers)
    content: bytes | None = None
    document: Any = call.json if call.json is not NO_BODY else None
    if call.content is not None:
        document = dict(parse_qsl(call.content.decode()))
        content = call.content

    for change in rng.choices(
        ("body", "query", "path", "headers", "method", "url"),
        weights=(45, 14, 12, 16, 5, 4),
        k=rng.randint(1, 3),
    ):
        changes.append(change)
        if change == "body":
            content, kind = body_of(route, document, scene, rng, mutator)
            if kind is None:
                headers.pop("Content-Type", None)
            else:
                headers["Content-Type"] = kind
        elif change == "query":
            query = mutated_query(query, rng, mutator)
        elif change == "path" and call.path_params:
            name = rng.choice(sorted(call.path_params))
            values = {k: quote(v, safe="") for k, v in call.path_params.items()}
            # now and then unquoted, slashes and all; lone surrogates as the bytes they'd be
            safe = "" if rng.random() < 0.8 else "/?&=%"
            values[name] = quote(mutator.text(), safe=safe, errors="surrogatepass")
            path = fill_path(call.path, values)
        elif change == "path":
            tail = quote(mutator.text(), safe="", errors="surrogatepass")
            path += rng.choice(("/", "/x", "/..", "%2f", "/" + tail))
        elif change == "headers":
            mutate_headers(headers, rng, mutator)
        elif change == "method":
            method = rng.choice(METHODS)
        else:
            path = rng.choice(PATHS)
    if content is None and call.json is not NO_BODY:
        content = json.dumps(call.json).encode()
        headers.setdefault("Content-Type", "application/json")
    return Case(index, method, path, query, headers, content, changes)


def body_of(
    route: Route, document: Any, scene: FuzzScene, rng: random.Random, mutator: Mutator
) -> tuple[bytes, str | None]:
    """A mutated body for ``route``: for the Tencent endpoints mostly with the common
    parameters kept (an appapi call signed after mutation), so the Action's own are reached."""
    if document is None:
        document = mutator.value()
    tencent = route[1].startswith("/api/exploreropen/") and isinstance(document, dict)
    if tencent and rng.random() < 0.75:
        common = {k: v for k, v in document.items() if k in COMMON}
        own = {k: v for k, v in document.items() if k not in common}
        changed = mutator.mutate(own)
        body = {**common, **changed} if isinstance(changed, dict) else changed
        if route[1].endswith("/appapi") and isinstance(body, dict) and rng.random() < 0.7:
            body["Signature"] = tencent_signature(scene.appsecret, body)
        return mutator.json_text(body).encode("utf-8", "surrogatepass"), "application/json"
    return mutator.body(document)


def mutated_query(
    query: list[tuple[str, str]], rng: random.Random, mutator: Mutator
) -> list[tuple[str, str]]:
    query = list(query)
    roll = rng.random()
    if query and roll < 0.4:
        at = rng.randrange(len(query))
        query[at] = (query[at][0], str(mutator.scalar()))
    elif query and roll < 0.5:
        query.pop(rng.randrange(len(query)))
    elif query and roll < 0.6:
        query.append((query[0][0], str(mutator.scalar())))
    else:
        for _ in range(rng.randint(1, 3)):
            query.append((rng.choice(QUERY_NAMES), str(mutator.scalar())))
    return [(name, value[:20_000]) for name, value in query]


def mutate_headers(headers: dict[str, str | bytes], rng: random.Random, mutator: Mutator) -> None:
    roll = rng.random()
    if roll < 0.25:
        headers[APP_ID] = mutator.header_value()
    elif roll < 0.45:
        headers[USER_TOKEN] = mutator.header_value()
    elif roll < 0.55:
        headers.pop(rng.choice([APP_ID, USER_TOKEN, "Authorization", APP_TOKEN]), None)
    elif roll < 0.65:
        headers["Content-Type"] = mutator.header_value()
    elif roll < 0.72:
        scheme, value = rng.choice((b"Bearer ", b"Basic ", b"")), mutator.header_value()
        headers["Authorization"] = scheme + (value.encode() if isinstance(value, str) else value)
    elif roll < 0.8:
        headers["X-Gizwits-Timestamp"] = mutator.header_value()
        headers["X-Gizwits-Signature"] = mutator.header_value()
    elif roll < 0.9:
        for n in range(rng.choice((10, 60, 150))):  # past the server's limit on header count
            headers[f"X-Junk-{n}"] = "j" * rng.randint(1, 200)
    else:  # past the server's limit on the head's size too
        headers["X-Long"] = "L" * rng.choice((1_000, 7_000, 70_000))


# -- running -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


async def run_case(http: httpx.AsyncClient, case: Case, outcome: Outcome) -> None:
    try:
        reply = await http.request(
            case.method, case.url, headers=case.headers, content=case.content
        )
    except httpx.HTTPError as exc:
        outcome.failures.append(f"{case.describe()} -> no answer: {exc!r}")
        return
    outcome.statuses[reply.status_code] += 1
    problem = envelope_problem(
        reply.status_code,
        reply.headers.get("content-type", ""),
        reply.content,
        reply.request.url.path,
    )
    if problem is not None:
        outcome.failures.append(
            f"{case.describe()} -> {reply.status_code} {reply.text[:300]!r}: {problem}"
        )


async def test_http_fuzz_corpus(
    fuzz_plan: FuzzPlan, fuzz_server: RunningServer, fuzz_scene: FuzzScene
) -> None:
    rng = fuzz_plan.rng("http")
    mutator = Mutator(rng)
    routes = http_routes()
    count = fuzz_plan.count("http")
    cases = [make_case(i, routes, fuzz_scene, rng, mutator) for i in range(count)]
    outcome = Outcome()
    log_before = len(fuzz_server.log().splitlines())
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(case: Case) -> None:
        async with slots:
            await run_case(http, case, outcome)

    async with (
        HealthyDevices(fuzz_server, fuzz_scene.owner.appid) as healthy,
        devices_online(fuzz_server, fuzz_scene.owner),
        httpx.AsyncClient(base_url=fuzz_server.base_url, timeout=30, limits=limits) as http,
    ):
        await asyncio.gather(*(one(case) for case in cases))
        await healthy.assert_healthy()
    print(f"HTTP fuzz: {count} cases, seed {fuzz_plan.seed}, statuses {outcome.statuses}")
    log = fuzz_server.log()
    failures = outcome.failures + [f"server log: {line}" for line in log_problems(log)]
    flood = log_flood(log.splitlines()[log_before:], count)
    if flood is not None:
        failures.append(flood)
    assert not failures, report(fuzz_plan, "HTTP", count, failures)
