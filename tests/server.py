"""Run a real ``iotcloud serve`` process for integration tests, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from iotcloud.config import Settings
from tests.pg import free_port

IOTCLOUD = [sys.executable, "-m", "iotcloud.cli"]
DEV_CAPTCHA = "7K3Q"
ADMIN_TOKEN = "test-admin-token-0123456789"


@dataclass
class RunningServer:
    """A server process plus what a test needs to talk to it."""

    data_dir: Path
    env: dict[str, str]
    http_port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def database_url(self) -> str:
        """The database URL the server runs on (its data directory's SQLite file by default)."""
        return Settings.load(self.env).resolved_database_url

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*IOTCLOUD, "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"iotcloud serve exited early:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.process.kill()  # never leave a server behind that no test will stop
        self.process.wait()
        raise RuntimeError(f"iotcloud serve did not answer within {timeout:.0f} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, check=check, cwd=self.data_dir)

    def create_app(self, name: str = "Test App", **ids: str) -> dict[str, str]:
        extra = [part for key, value in ids.items() for part in (f"--{key}", value)]
        out = self.cli("app", "create", "--name", name, *extra, "--json").stdout
        return dict(json.loads(out))

    def client(self, appid: str | None = None, **headers: str) -> httpx.Client:
        base = {"X-Gizwits-Application-Id": appid} if appid else {}
        return httpx.Client(base_url=self.base_url, headers={**base, **headers}, timeout=30)

    def operator(self) -> httpx.Client:
        """A client of the operator API (``/admin/v1``) holding the admin token."""
        return self.client(Authorization=f"Bearer {ADMIN_TOKEN}")


def server_env(data_dir: Path, database_url: str | None, **settings: Any) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IOTCLOUD_")}
    env.update(
        IOTCLOUD_DATA_DIR=str(data_dir),
        IOTCLOUD_HTTP_PORT=str(free_port()),
        IOTCLOUD_MQTT_PORT=str(free_port()),
        IOTCLOUD_PUBLIC_HOST="127.0.0.1",
        IOTCLOUD_ENV="development",
        IOTCLOUD_DEV_CAPTCHA_CODE=DEV_CAPTCHA,
        IOTCLOUD_ADMIN_TOKEN=ADMIN_TOKEN,
        IOTCLOUD_LOG_LEVEL="INFO",
    )
    if database_url:
        env["IOTCLOUD_DATABASE_URL"] = database_url
    for key, value in settings.items():
        env["IOTCLOUD_" + key.upper()] = (
            json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        )
    return env


def make_server(data_dir: Path, database_url: str | None, **settings: Any) -> RunningServer:
    env = server_env(data_dir, database_url, **settings)
    return RunningServer(data_dir=data_dir, env=env, http_port=int(env["IOTCLOUD_HTTP_PORT"]))


@contextmanager
def serving(
    data_dir: Path, database_url: str | None, *, allow_tracebacks: bool = False, **settings: Any
) -> Iterator[RunningServer]:
    """A started server; on exit it must stop with status 0 (and, unless allowed, with no
    traceback in its log)."""
    running = make_server(data_dir, database_url, **settings)
    running.start()
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"server exited with {code}:\n{running.log()}"
        if not allow_tracebacks:
            assert "Traceback" not in running.log(), running.log()


def run_cli(
    env: Mapping[str, str], *args: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*IOTCLOUD, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"iotcloud {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
