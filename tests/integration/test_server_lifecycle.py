"""Starting, stopping and crashing a real server: settings are enforced, nothing is lost."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import new_database_url
from tests.pg import PostgresServer
from tests.server import IOTCLOUD, make_server, server_env


def test_production_refuses_a_fixed_captcha_answer(tmp_path: Path) -> None:
    env = server_env(tmp_path, None)
    env["IOTCLOUD_ENV"] = "production"
    result = subprocess.run(
        [*IOTCLOUD, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "IOTCLOUD_DEV_CAPTCHA_CODE" in result.stderr


def test_a_malformed_setting_stops_start_up_with_its_name(tmp_path: Path) -> None:
    env = server_env(tmp_path, None)
    env["IOTCLOUD_HTTP_PORT"] = "eighty"
    result = subprocess.run(
        [*IOTCLOUD, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "IOTCLOUD_HTTP_PORT" in result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_users_and_tokens_survive_sigterm_and_kill_9(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    postgres: PostgresServer | str = (
        request.getfixturevalue("postgres") if backend == "postgres" else ""
    )
    url = new_database_url(postgres, backend, tmp_path) if backend == "postgres" else None
    server = make_server(tmp_path / "data", url)
    server.start()
    creds = server.create_app("Lifecycle")
    with server.client(creds["appid"]) as client:
        made = client.post("/app/users", json={"username": "keeper", "password": "123456"})
        assert made.status_code == 201
        token = made.json()["token"]
        client.put(
            "/app/users", json={"name": "Keeper"}, headers={"X-Gizwits-User-token": token}
        ).raise_for_status()

    assert server.stop(signal.SIGTERM) == 0
    log = server.log()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log

    server.start()
    with server.client(creds["appid"]) as client:
        profile = client.get("/app/users", headers={"X-Gizwits-User-token": token})
        assert profile.status_code == 200
        assert profile.json()["name"] == "Keeper"
        relog = client.post("/app/login", json={"username": "keeper", "password": "123456"})
        assert relog.status_code == 200
        second = relog.json()["token"]

    server.stop(signal.SIGKILL)
    server.start()
    with server.client(creds["appid"]) as client:
        for t in (token, second):
            assert client.get("/app/users", headers={"X-Gizwits-User-token": t}).status_code == 200
    assert server.stop() == 0
