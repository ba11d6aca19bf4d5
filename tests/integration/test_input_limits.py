"""Hostile input against a real ``iotcloud serve``, answered with the dialect's error on every
route: JSON nested too deeply (HTTP bodies, Tencent ``Data``, device messages), bodies over the
size limit (JSON and form-encoded), and request heads over their limits (414/431, answered
before any body is read). None of it crashes: nothing is logged as one, the server stays up.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from iotcloud.app import MAX_BODY_BYTES, create_app
from iotcloud.config import Settings
from tests.accounts import User, sign_up
from tests.server import ADMIN_TOKEN, RunningServer
from tests.tencent import APPAPI, TOKENAPI, response_of
from tests.thing_devices import ThingDevice, create_thing_device, import_thing_product

pytestmark = pytest.mark.backend("sqlite")  # the HTTP edge; storage is not involved

DEEP = b"[" * 1000  # 1 KB: what made 17 routes answer 500 with a RecursionError logged
TOO_DEEP = "nested deeper than 64 levels"
INVALID_JSON = "InvalidParameterValue.InvalidJSON"
TOO_LARGE = f"body: larger than {MAX_BODY_BYTES} bytes"
# routes that read a JSON body, as (method, path): each must name the depth in its answer
JSON_ROUTES = {
    ("POST", "/app/users"),
    ("PUT", "/app/users"),
    ("POST", "/app/login"),
    ("POST", "/app/reset_password"),
    ("POST", "/app/verify/codes"),
    ("PUT", "/app/verify/codes"),
    ("POST", "/app/sms_code"),
    ("POST", "/dev/devices"),
    ("DELETE", "/dev/devices"),
    ("POST", "/dev/{product_key:str}/device"),
    ("POST", "/app/bind_mac"),
    ("POST", "/app/bindings"),
    ("DELETE", "/app/bindings"),
    ("PUT", "/app/bindings/{did:str}"),
    ("POST", "/app/control/{did:str}"),
    ("POST", "/app/scheduler"),
    ("POST", "/admin/v1/products"),
    ("POST", "/admin/v1/devices"),
    ("PUT", "/admin/v1/devices/{did:str}"),
    ("POST", "/api/exploreropen/tokenapi"),
    ("POST", "/api/exploreropen/appapi"),
}


@pytest.fixture(scope="module")
def log_start(server: RunningServer) -> Iterator[int]:
    """Where the server's log stood before this module; at its end, nothing after it may be
    a crash, and the server must still answer."""
    start = len(server.log())
    yield start
    written = server.log()[start:]
    assert "Traceback" not in written, written
    assert "crashed" not in written, written
    assert httpx.get(server.base_url + "/status", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def user(server: RunningServer, app: dict[str, str], log_start: int) -> User:
    return sign_up(server, app["appid"])


@pytest.fixture(scope="module")
def app_token(server: RunningServer, app: dict[str, str], log_start: int) -> str:
    auth = hashlib.md5((app["appid"] + app["appsecret"]).encode()).hexdigest()  # noqa: S324
    with server.client(app["appid"]) as http:
        reply = http.post("/app/request_token", headers={"X-Gizwits-Application-Auth": auth})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["token"])


def every_route() -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route of the app, from its route table."""
    app = create_app(Settings(env="development"))
    return sorted(
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", ())
        if method not in ("OPTIONS", "HEAD")
    )


ROUTES = every_route()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x" * 22, path)


def assert_gizwits_error(reply: httpx.Response, status: int, detail: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}, body
    assert body["error_code"] == 9015, body
    assert detail in body["detail_message"], body


def assert_tencent_error(reply: httpx.Response, code: str, detail: str, status: int = 200) -> None:
    assert reply.status_code == status, reply.text
    response = reply.json()["Response"]
    assert response["Error"]["Code"] == code, response
    assert detail in response["Error"]["Message"], response


# -- deep JSON --------------------------------------------------------------------------------


def test_the_json_routes_are_all_in_the_route_table() -> None:
    assert set(JSON_ROUTES) <= set(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_deep_json_on_every_route_is_refused_by_name_never_a_crash(
    server: RunningServer, app: dict[str, str], user: User, app_token: str, method: str, path: str
) -> None:
    headers = {
        **user.headers(),
        "X-Gizwits-Application-Token": app_token,
        "Authorization": f"Bearer {ADMIN_TOKEN}",
        "Content-Type": "application/json",
    }
    if path == "/app/logout":  # would end the session of the user every other case uses
        headers.update(sign_up(server, app["appid"]).headers())
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        reply = http.request(method, concrete(path), content=DEEP, headers=headers)

    assert reply.status_code < 500, reply.text
    if path.startswith("/api/exploreropen"):
        assert_tencent_error(reply, INVALID_JSON, f"body: {TOO_DEEP}")
    elif (method, path) in JSON_ROUTES:
        assert_gizwits_error(reply, 400, f"body: {TOO_DEEP}")
    elif reply.headers.get("content-type", "").startswith("application/json"):
        body = reply.json()  # answered without reading the body: any answer of the dialect
        error_key = "error" if path.startswith("/console") else "error_code"  # the console's own
        assert error_key in body or reply.status_code < 300, body


@pytest.mark.parametrize(
    "document",
    [
        b'{"username": "a", "password": ' + b"[" * 65 + b"]" * 65 + b"}",
        b'{"username": "a", "password": ' + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}",
        b"[" * 100_000,
    ],
    ids=["65 arrays", "100 objects", "100,000 arrays"],
)
def test_any_deep_shape_is_refused_on_login(
    server: RunningServer, app: dict[str, str], document: bytes, log_start: int
) -> None:
    with server.client(app["appid"]) as http:
        reply = http.post("/app/login", content=document)
    assert_gizwits_error(reply, 400, f"body: {TOO_DEEP}")


def test_brackets_inside_strings_are_text_not_nesting(
    server: RunningServer, app: dict[str, str], log_start: int
) -> None:
    password = '[{"' * 40  # 80 opening brackets (and quotes) inside one string
    with server.client(app["appid"]) as http:
        username = "b" + uuid.uuid4().hex[:12]
        made = http.post("/app/users", json={"username": username, "password": password})
        assert made.status_code == 201, made.text
        logged_in = http.post("/app/login", json={"username": username, "password": password})
    assert logged_in.status_code == 200, logged_in.text


@pytest.mark.parametrize("action", ["AppControlDeviceData", "AppCreateTimer"])
def test_deep_json_inside_a_tencent_data_parameter_is_invalid_json(
    server: RunningServer, user: User, action: str
) -> None:
    body = {
        "Action": action,
        "RequestId": "req-deep",
        "AccessToken": user.token,
        "ProductId": "ABCDEFGHIJ",
        "DeviceName": "light",
        "Days": "1111111",
        "TimePoint": "08:00",
        "Repeat": 1,
        "TimerName": "deep",
        "Data": "[" * 1000,
    }
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        response = response_of(http.post(TOKENAPI, json=body))
    assert response["RequestId"] == "req-deep"
    assert response["Error"] == {"Code": INVALID_JSON, "Message": f"Data: {TOO_DEEP}"}


async def test_a_deep_device_message_is_dropped_and_the_device_kept(
    server: RunningServer, log_start: int
) -> None:
    product_id = await import_thing_product(server)
    identity = await create_thing_device(server, product_id)
    async with ThingDevice.on_server(server, identity) as device:
        deep = b'{"method":"report","clientToken":"deep","params":' + DEEP + b"}"
        await device.send("property", deep, qos=1)
        reply = await device.report({"power_switch": 1})  # the same connection, still served
    assert reply["code"] == 0, reply
    assert all(body.get("clientToken") != "deep" for _, body in device.received)
    topic = f"$thing/up/property/{product_id}/{identity.name}"
    assert f"dropped a message on {topic}: {TOO_DEEP}" in server.log()


# -- body size --------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_413_naming_it_json_and_form_alike(
    server: RunningServer, app: dict[str, str], log_start: int
) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    with server.client(app["appid"]) as http:
        as_json = http.post("/app/users", content=b'{"username": "' + big + b'"}')
        as_form = http.post(
            "/dev/devices",
            content=b"mac=" + big,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        tencent = http.post(APPAPI, content=b'{"Action": "' + big + b'"}')
    assert_gizwits_error(as_json, 413, TOO_LARGE)
    assert_gizwits_error(as_form, 413, TOO_LARGE)
    assert_tencent_error(tencent, "InvalidParameterValue", TOO_LARGE, status=413)


# -- request heads ----------------------------------------------------------------------------


def raw_exchange(server: RunningServer, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` on a new connection and read the answer to its end (the server closes
    the connection after it): (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_16_mib_header_line_is_431(server: RunningServer, log_start: int) -> None:
    request = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    status, body = raw_exchange(server, request)
    assert status == 431
    assert body == {
        "error_code": 9015,
        "error_message": "form invalid!",
        "detail_message": "request head: larger than 65536 bytes",
    }


def test_too_many_header_fields_are_431(server: RunningServer, log_start: int) -> None:
    fields = b"".join(b"X-Field-%d: v\r\n" % number for number in range(200))
    status, body = raw_exchange(server, b"GET /status HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status == 431
    assert body["detail_message"] == "request head: more than 100 header fields"


def test_a_long_url_is_414_before_the_body_is_sent(server: RunningServer, log_start: int) -> None:
    # the body is announced and never sent: the answer cannot be waiting for it
    request = (
        b"POST /app/users?" + b"a" * (9 * 1024) + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    status, body = raw_exchange(server, request)
    assert status == 414
    assert body["detail_message"] == "request line: URL longer than 8192 bytes"


def test_a_refused_head_under_the_tencent_api_answers_its_envelope(
    server: RunningServer, log_start: int
) -> None:
    fields = b"".join(b"X-Field-%d: v\r\n" % number for number in range(200))
    request = b"POST " + TOKENAPI.encode() + b" HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    status, body = raw_exchange(server, request)
    assert status == 431
    assert body["Response"]["Error"] == {
        "Code": "InvalidParameterValue",
        "Message": "request head: more than 100 header fields",
    }


def test_heads_within_the_limits_are_served(
    server: RunningServer, app: dict[str, str], user: User
) -> None:
    fields = {f"X-Field-{number}": "v" * 500 for number in range(90)}  # 90 fields, 45 KB
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        reply = http.get("/app/users?" + "a" * 8000, headers={**user.headers(), **fields})
    assert reply.status_code == 200, reply.text
    assert reply.json()["uid"] == user.uid
