"""Per-address and per-app request limits answer HTTP 429 / 9041 with Retry-After; they hold
across processes on one PostgreSQL, key on the client behind trusted proxies, and fail open
when the database is down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_database_url
from tests.pg import PostgresServer
from tests.server import RunningServer, make_server, serving


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small limits (SQLite: throttling keeps no state in the database) and no
    trusted proxies."""
    with serving(
        tmp_path_factory.mktemp("throttle"),
        None,
        rate_limit_per_address=5,
        rate_limit_per_app=2,
        rate_limit_burst_seconds=4,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose loopback peer is a trusted proxy: a burst of 10 requests per client
    address, refilled at 1 a second (slowly, so that a loaded machine cannot refill it)."""
    with serving(
        tmp_path_factory.mktemp("proxied"),
        None,
        rate_limit_per_address=1,
        rate_limit_per_app=0,
        rate_limit_burst_seconds=10,
        trusted_proxies="127.0.0.1, ::1",
    ) as server:
        yield server


def test_an_app_over_its_limit_is_throttled_and_others_are_not(limited: RunningServer) -> None:
    busy = limited.create_app("Busy")["appid"]
    quiet = limited.create_app("Quiet")["appid"]
    with limited.client(busy) as client:
        answers = [
            client.post("/app/login", json={"username": "x", "password": "123456"})
            for _ in range(12)
        ]
    codes = [a.status_code for a in answers]
    assert codes[:8] == [400] * 8  # a burst of 2/s x 4 s; wrong password, but not throttled
    throttled = [a for a in answers if a.status_code == 429]
    assert throttled
    body = throttled[0].json()
    assert body["error_code"] == 9041
    assert body["error_message"] == "request was throttled"
    assert "app" in body["detail_message"]
    assert int(throttled[0].headers["Retry-After"]) >= 1
    with limited.client(quiet) as client:
        assert client.post("/app/login", json={"username": "x", "password": "123456"}).json()[
            "error_code"
        ] in {9020, 9041}


def test_a_client_address_over_its_limit_is_throttled(limited: RunningServer) -> None:
    with limited.client() as client:
        codes = [client.get("/app/users").status_code for _ in range(40)]
    assert 429 in codes
    assert codes[0] != 429
    # The ceiling endpoint outside /app is never throttled.
    with limited.client() as client:
        assert all(client.get("/status").status_code == 200 for _ in range(30))


def test_tencent_calls_over_the_limit_get_the_tencent_envelope(limited: RunningServer) -> None:
    with limited.client() as client:
        answers = [
            client.post("/api/exploreropen/tokenapi", json={"Action": "AppGetTimerList"})
            for _ in range(40)
        ]
    throttled = [
        a
        for a in answers
        if a.json()["Response"]["Error"]["Code"] != ("InvalidParameterValue.InvalidAccessToken")
    ]
    assert throttled, [a.json() for a in answers[-3:]]
    assert {a.status_code for a in throttled} == {200}
    error = throttled[0].json()["Response"]
    assert error["Error"]["Code"] == "RequestLimitExceeded"
    assert "client address" in error["Error"]["Message"]
    assert error["RequestId"]
    assert int(throttled[0].headers["Retry-After"]) >= 1


def test_forwarding_headers_from_an_untrusted_peer_are_ignored(limited: RunningServer) -> None:
    """Without IOTCLOUD_TRUSTED_PROXIES a client cannot pick its own bucket: every request
    below names another address, and all of them share the peer's."""
    with limited.client() as client:
        codes = [
            client.get(
                "/app/users",
                headers={
                    "X-Forwarded-For": f"198.51.100.{n}",
                    "Forwarded": f"for=203.0.113.{n}",
                },
            ).status_code
            for n in range(40)
        ]
    assert 429 in codes


def burst(client: httpx.Client, count: int, **headers: str) -> list[int]:
    return [client.get("/app/users", headers=headers).status_code for _ in range(count)]


def test_a_trusted_proxy_separates_its_clients(behind_proxy: RunningServer) -> None:
    with behind_proxy.client() as client:
        first = burst(client, 30, **{"X-Forwarded-For": "6.6.6.6, 198.51.100.1"})
        assert first[0] != 429
        assert 429 in first
        # another client behind the same proxy has a bucket of its own ...
        second = burst(client, 8, **{"X-Forwarded-For": "198.51.100.2"})
        assert 429 not in second
        # ... as has one the proxy names by RFC 7239, IPv6 with a port
        third = burst(client, 8, Forwarded='for="[2001:db8::1]:4711";proto=https')
        assert 429 not in third
        # what the first client writes to the left of the proxy's entry changes nothing
        again = burst(client, 3, **{"X-Forwarded-For": "7.7.7.7, 198.51.100.1"})
        assert 429 in again


@pytest.mark.parametrize(
    "forwarded",
    [
        "for=2001:db8::1",  # IPv6 unquoted
        'for="[2001:db8::1',
        "for=198.51.100.3;for=198.51.100.4",
        "for=",
        "\x7f\x00garbage",
        "for=" + "9" * 5000,
    ],
)
def test_a_malformed_forwarded_header_counts_against_the_proxy_never_a_500(
    behind_proxy: RunningServer, forwarded: str
) -> None:
    peer = f"203.0.113.{uuid.uuid4().int % 250}"  # a bucket of its own for the comparison
    with behind_proxy.client() as client:
        codes = burst(client, 12, Forwarded=forwarded.replace("\x00", ""))
        assert 500 not in codes
        # all of them went to the peer's (the proxy's) bucket: the proxy itself is now limited,
        # while a well-formed client is not
        assert 429 in burst(client, 1) + codes, codes
        assert burst(client, 1, **{"X-Forwarded-For": peer}) != [429]


# -- several processes on one PostgreSQL --------------------------------------------------------


def test_two_processes_share_one_app_limit(postgres: PostgresServer | str, tmp_path: Path) -> None:
    """Two ``iotcloud serve`` on one database, 5 requests/s and a burst of 20 per app: apart
    they would allow 20 each; together they allow the bucket, plus at most one lease each."""
    url = new_database_url(postgres, "postgres", tmp_path)
    limits = {
        "rate_limit_per_app": 5,
        "rate_limit_per_address": 0,
        "rate_limit_burst_seconds": 4,
    }
    first, second = (make_server(tmp_path / name, url, **limits) for name in "ab")
    with started_together(first, second):
        appid = first.create_app("Shared")["appid"]
        with first.client(appid) as one, second.client(appid) as two:
            started = time.monotonic()
            codes = [(one, two)[n % 2].get("/app/users").status_code for n in range(60)]
            elapsed = time.monotonic() - started
    allowed = sum(1 for code in codes if code != 429)
    assert allowed >= 20
    assert allowed <= 20 + 5 * elapsed + 2, (allowed, elapsed)
    assert 429 in codes[0::2]  # both processes refuse
    assert 429 in codes[1::2]


def test_requests_are_served_while_the_database_of_the_shared_limits_is_down(
    tmp_path: Path,
) -> None:
    """The database stops: a profile read served from the token cache still answers 200 (the
    shared bucket fails open, the process's own still applies), at once; the failure is logged
    once; once the database is back the shared limits work again and say so once."""
    pg = PostgresServer()
    pg.start()
    try:
        url = pg.create_database("shared_down")
        with serving(
            tmp_path / "down",
            url,
            allow_tracebacks=True,
            rate_limit_per_app=5,  # leases of one token: every request asks the database
            rate_limit_per_address=0,
            rate_limit_burst_seconds=2,
            auth_cache_seconds=60,
        ) as server:
            appid = server.create_app("Down")["appid"]
            with server.client(appid) as client:
                made = client.post("/app/users", json={"username": "down", "password": "pw1234"})
                user = {"X-Gizwits-User-token": made.json()["token"]}
                assert client.get("/app/users", headers=user).status_code == 200
                pg_ctl(pg, "stop", "-m", "immediate")
                down = [client.get("/app/users", headers=user).status_code for _ in range(6)]
                assert down == [200] * 6
                pg_ctl(pg, "start")
                deadline = time.monotonic() + 20
                while "shared rate limits recovered" not in server.log():
                    assert time.monotonic() < deadline, server.log()[-3000:]
                    burst(client, 1, **{"X-Gizwits-Application-Id": "probe-" + appid})
                    time.sleep(0.2)
                assert 429 in burst(client, 15, **{"X-Gizwits-Application-Id": "up-" + appid})
            log = server.log()
        assert log.count("shared rate limits unavailable") == 1
        assert log.count("shared rate limits recovered") == 1
    finally:
        pg.stop()


@contextmanager
def started_together(*servers: RunningServer) -> Iterator[None]:
    """``serving`` for several servers, started at once; each must stop cleanly."""
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.start(), servers))
        yield
    finally:
        codes = [server.stop() for server in servers if server.process is not None]
    assert codes == [0] * len(servers)
    for server in servers:
        assert "Traceback" not in server.log(), server.log()


def pg_ctl(pg: PostgresServer, action: str, *args: str) -> None:
    """Stop or start the test's PostgreSQL in place (same data directory and port)."""
    options = f"-p {pg.port} -k {pg.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    command = [str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-w", *args, action]
    if action == "start":
        command[-1:-1] = ["-o", options, "-l", str(pg.dir / "log")]
    pg._run(*command)
