"""The in-process services contract tests run against: ``running_services`` on the real database
of ``database_url`` (both backends), with a frozen clock starting at ``START``. A module that
needs other settings overrides ``settings_options``; one that needs another setup defines its
own ``services``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotcloud.app import running_services
from iotcloud.config import Settings
from iotcloud.domain.clock import FrozenClock
from iotcloud.services.registry import Services

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def settings_options() -> dict[str, Any]:
    """Settings that replace or add to the common ones; a module overrides this fixture."""
    return {}


@pytest.fixture
async def services(
    database_url: str, tmp_path: Path, clock: FrozenClock, settings_options: dict[str, Any]
) -> AsyncIterator[Services]:
    options: dict[str, Any] = {
        "data_dir": tmp_path,
        "http_host": "127.0.0.1",
        "database_url": database_url,
        "mqtt_port": 1884,
    }
    settings = Settings.load({}, **(options | settings_options))
    async with running_services(settings, clock) as svc:
        yield svc
