"""Fixtures of the reliability suite: the fuzz plan, and servers of a module's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.fuzzing import FuzzPlan
from tests.reliability.scene import QUICK_SERVER
from tests.server import RunningServer, serving


@pytest.fixture(scope="session")
def fuzz_plan() -> FuzzPlan:
    return FuzzPlan.from_env()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A SQLite server of the module's own: what its corpus does to the server, and the
    server's log, belong to that module (whose test reads the log for crashes)."""
    with serving(
        tmp_path_factory.mktemp("fuzz"), None, allow_tracebacks=True, **QUICK_SERVER
    ) as running:
        yield running
