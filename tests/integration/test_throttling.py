"""Per-address and per-app request limits answer HTTP 429 / 9041 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server import RunningServer, serving


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small limits (SQLite: throttling keeps no state in the database)."""
    with serving(
        tmp_path_factory.mktemp("throttle"),
        None,
        rate_limit_per_address=5,
        rate_limit_per_app=2,
        rate_limit_burst_seconds=4,
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
