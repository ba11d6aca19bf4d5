"""Third-party sign-up (``POST /app/users`` with ``authData``) against fake identity providers.

The test process plays QQ, WeChat and a generic provider with a small stdlib HTTP server on
127.0.0.1; a dedicated ``iotcloud serve`` is pointed at it through ``IOTCLOUD_AUTH_PROVIDERS``.
Provider verification does not touch the database beyond storing the user, so this module runs
on SQLite only.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import unique
from tests.pg import free_port
from tests.server import RunningServer, serving


@dataclass
class FakeProviders:
    """Which access token belongs to which provider uid, and every request received."""

    tokens: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, uid: str | None = None) -> tuple[str, str]:
        """A genuine ``(uid, access_token)`` pair the providers will confirm."""
        uid = uid or unique("openid")
        token = unique("at")
        with self.lock:
            self.tokens[token] = uid
        return uid, token

    def owner(self, token: str) -> str | None:
        with self.lock:
            return self.tokens.get(token)

    def record(self, path: str, query: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((path, query))

    def received(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [query for seen, query in self.requests if seen == path]


def _handler(fake: FakeProviders) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            fake.record(parts.path, query)
            owner = fake.owner(query.get("access_token") or query.get("token") or "")
            if parts.path == "/qq/me":
                if owner is None:
                    body = {"error": 100016, "error_description": "access token check failed"}
                else:
                    body = {"client_id": "x", "openid": owner}
                self._send(200, f"callback( {json.dumps(body)} );\n", "text/javascript")
            elif parts.path == "/wechat/auth":
                if owner is not None and owner == query.get("openid"):
                    self._json(200, {"errcode": 0, "errmsg": "ok"})
                else:
                    self._json(200, {"errcode": 40003, "errmsg": "invalid openid"})
            elif parts.path == "/generic":
                if owner is not None and owner == query.get("uid"):
                    self._json(200, {"uid": owner})
                else:
                    self._json(401, {"error": "invalid token"})
            elif parts.path == "/garbage":
                self._send(200, "<html>maintenance</html>", "text/html")
            else:
                self._json(404, {"error": "not found"})

        def _json(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body), "application/json")

        def _send(self, status: int, text: str, content_type: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[FakeProviders, int]]:
    fake = FakeProviders()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=httpd.serve_forever, name="fake-providers", daemon=True)
    thread.start()
    try:
        yield fake, int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def oauth_server(
    providers: tuple[FakeProviders, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose qq/wechat/google sign-ups are verified by the fake providers; ``baidu``
    points at a closed port and ``facebook`` at an endpoint that answers HTML."""
    _, port = providers
    base = f"http://127.0.0.1:{port}"
    closed = free_port()  # nothing listens there
    data_dir: Path = tmp_path_factory.mktemp("iotcloud-oauth")
    with serving(
        data_dir,
        None,
        auth_providers={
            "qq": f"{base}/qq/me",
            "wechat": f"{base}/wechat/auth",
            "google": {"url": f"{base}/generic", "kind": "generic"},
            "baidu": f"http://127.0.0.1:{closed}/baidu",
            "facebook": {"url": f"{base}/garbage", "kind": "generic"},
        },
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(oauth_server: RunningServer) -> Iterator[httpx.Client]:
    appid = oauth_server.create_app("OAuth App")["appid"]
    with oauth_server.client(appid) as http:
        yield http


def sign_up(client: httpx.Client, **auth_data: Any) -> httpx.Response:
    return client.post("/app/users", json={"authData": auth_data})


def assert_issued(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"uid", "token", "expire_at"}, body
    assert isinstance(body["token"], str)
    assert body["token"]
    return body


def assert_error(response: httpx.Response, code: int, field: str | None = None) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}, body
    assert body["error_code"] == code, body
    if code == 9031:
        assert body["error_message"] == "qq oauth key invalid!"
    if field is not None:
        detail = body["detail_message"] or ""
        assert re.search(rf"(?<![\w.]){re.escape(field)}(?!\w)", detail), (
            f"detail_message {detail!r} does not name {field!r}"
        )


def assert_profile(client: httpx.Client, issued: dict[str, Any]) -> None:
    response = client.get("/app/users", headers={"X-Gizwits-User-token": issued["token"]})
    assert response.status_code == 200, response.text
    me = response.json()
    assert me["uid"] == issued["uid"]
    assert me["is_anonymous"] is False


@pytest.mark.parametrize("src", ["qq", "wechat", "google"])
def test_valid_provider_token_signs_up_and_again_signs_in(
    client: httpx.Client, providers: tuple[FakeProviders, int], src: str
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    first = assert_issued(sign_up(client, src=src, uid=uid, token=token))
    assert_profile(client, first)
    _, token2 = fake.issue(uid)  # a later access token of the same provider account
    again = assert_issued(sign_up(client, src=src, uid=uid, token=token2))
    assert again["uid"] == first["uid"]
    assert again["token"] != first["token"]
    assert_profile(client, first)  # the first session still works
    assert_profile(client, again)


def test_the_provider_receives_the_clients_token(
    client: httpx.Client, providers: tuple[FakeProviders, int]
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    assert_issued(sign_up(client, src="qq", uid=uid, token=token))
    assert {"access_token": token} in fake.received("/qq/me")
    assert_issued(sign_up(client, src="wechat", uid=uid, token=token))
    assert {"access_token": token, "openid": uid} in fake.received("/wechat/auth")
    assert_issued(sign_up(client, src="google", uid=uid, token=token))
    assert {"uid": uid, "token": token} in fake.received("/generic")


def test_same_provider_uid_from_different_sources_are_different_users(
    client: httpx.Client, providers: tuple[FakeProviders, int]
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    via_qq = assert_issued(sign_up(client, src="qq", uid=uid, token=token))
    via_wechat = assert_issued(sign_up(client, src="wechat", uid=uid, token=token))
    assert via_qq["uid"] != via_wechat["uid"]


@pytest.mark.parametrize("src", ["qq", "wechat", "google"])
def test_provider_rejection_is_9031_and_creates_nobody(
    client: httpx.Client, providers: tuple[FakeProviders, int], src: str
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    assert_error(sign_up(client, src=src, uid=uid, token=unique("forged")), 9031)
    other_uid, _ = fake.issue()
    assert_error(sign_up(client, src=src, uid=other_uid, token=token), 9031)  # someone else's
    # the genuine pair still works afterwards
    assert_issued(sign_up(client, src=src, uid=uid, token=token))


def test_known_but_unconfigured_source_is_9031(
    client: httpx.Client, providers: tuple[FakeProviders, int]
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    for src in ("sina", "twitter", "amazon"):
        assert_error(sign_up(client, src=src, uid=uid, token=token), 9031)


def test_unknown_source_is_9015_naming_it(
    client: httpx.Client, providers: tuple[FakeProviders, int]
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    assert_error(sign_up(client, src="myspace", uid=uid, token=token), 9015, "authData.src")
    assert_error(sign_up(client, src="", uid=uid, token=token), 9015, "authData.src")


def test_unreachable_or_broken_provider_is_9031_not_500(
    client: httpx.Client, providers: tuple[FakeProviders, int]
) -> None:
    fake, _ = providers
    uid, token = fake.issue()
    assert_error(sign_up(client, src="baidu", uid=uid, token=token), 9031)
    assert_error(sign_up(client, src="facebook", uid=uid, token=token), 9031)
    # the server keeps serving sign-ups that can be verified
    assert_issued(sign_up(client, src="qq", uid=uid, token=token))


@pytest.mark.parametrize(
    ("auth_data", "field"),
    [
        ({"src": "qq", "uid": "u1"}, "authData.token"),
        ({"src": "qq", "token": "t1"}, "authData.uid"),
        ({"uid": "u1", "token": "t1"}, "authData.src"),
        ({"src": "qq", "uid": "u1", "token": ""}, "authData.token"),
        ({"src": "qq", "uid": "", "token": "t1"}, "authData.uid"),
        ({"src": "qq", "uid": "u1", "token": 5}, "authData.token"),
        ({"src": "qq", "uid": "u1", "token": "t1", "scope": "all"}, "authData.scope"),
    ],
)
def test_malformed_auth_data_is_9015_naming_the_field(
    client: httpx.Client,
    providers: tuple[FakeProviders, int],
    auth_data: dict[str, Any],
    field: str,
) -> None:
    fake, _ = providers
    before = len(fake.requests)
    assert_error(sign_up(client, **auth_data), 9015, field)
    assert len(fake.requests) == before  # nothing was asked of the provider


def test_auth_data_must_be_an_object(client: httpx.Client) -> None:
    response = client.post("/app/users", json={"authData": "qq:u1:t1"})
    assert_error(response, 9015, "authData")
    response = client.post(
        "/app/users", json={"authData": {"src": "qq", "uid": "u", "token": "t"}, "x": 1}
    )
    assert_error(response, 9015, "x")
