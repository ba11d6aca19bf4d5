"""Shared fixtures: a real PostgreSQL server, real ``iotcloud serve`` processes, unique names."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import MosquittoServer
from tests.pg import PostgresServer
from tests.server import RunningServer, serving

BACKENDS = ["sqlite", "postgres"]
#: What a run leaves for people to look at (console screenshots, the fuzz case counts).
TEST_OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name what this run left under ``test-output/`` (written by any worker process)."""
    fresh = sorted(
        path
        for path in TEST_OUTPUT.rglob("*")
        if path.is_file() and path.stat().st_mtime >= _STARTED
    )
    if not fresh:
        return
    terminalreporter.section("test output")
    for path in fresh:
        if path.suffix == ".txt":
            terminalreporter.write_line(f"{path}: {path.read_text().strip()}")
    shots = [path for path in fresh if path.suffix == ".png"]
    if shots:
        terminalreporter.write_line(f"{len(shots)} console screenshots in {shots[0].parent}:")
        terminalreporter.write_line("  " + " ".join(path.name for path in shots))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | str]:
    """The session's PostgreSQL: ``IOTCLOUD_TEST_POSTGRES_URL`` if set, else a throwaway server."""
    given = os.environ.get("IOTCLOUD_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """The session's Mosquitto broker (dynamic security, connection log on ``$SYS``)."""
    broker = MosquittoServer()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def new_database_url(postgres: PostgresServer | str, backend: str, directory: Path) -> str | None:
    """A fresh, empty database for ``backend``: a new SQLite file or a new PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{directory / f'{uuid.uuid4().hex}.db'}"
    if isinstance(postgres, str):
        return postgres
    return postgres.create_database("t_" + uuid.uuid4().hex[:16])


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrized over both backends by ``pytest_generate_tests``."""
    backend = request.param
    postgres = request.getfixturevalue("postgres") if backend == "postgres" else ""
    url = new_database_url(postgres, backend, tmp_path)
    assert url is not None
    return url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backend(name): runs against the session's server on that backend only (HTTP-edge "
        "tests whose storage is covered on both backends elsewhere)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the runs of a ``backend(name)`` test on the session ``server`` of the other
    backend."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("server") if callspec is not None else None
        marker = item.get_closest_marker("backend")
        if backend is not None and marker is not None and backend not in marker.args:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """One running ``iotcloud serve`` per backend for the whole session."""
    backend = request.param
    data_dir = Path(tempfile.mkdtemp(prefix=f"iotcloud-{backend}-"))
    postgres = request.getfixturevalue("postgres") if backend == "postgres" else ""
    url = new_database_url(postgres, backend, data_dir) if backend == "postgres" else None
    with serving(data_dir, url, rate_limit_per_address=0, rate_limit_per_app=0) as running:
        yield running


@pytest.fixture(scope="session")
def app(server: RunningServer) -> dict[str, str]:
    """An app on the session's server: ``{"appid", "appsecret"}``."""
    return server.create_app("Integration")


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def unique_phone() -> str:
    return "1" + str(uuid.uuid4().int)[:10]
