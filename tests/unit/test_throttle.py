"""How the throttle is assembled from the settings, and the size of its leases."""

from __future__ import annotations

import pytest

from iotcloud.api.client_address import trusted_proxies
from iotcloud.api.throttle import (
    SharedBuckets,
    SharedLimits,
    Throttle,
    shared_limits_enabled,
)
from iotcloud.config import Settings
from iotcloud.storage.rate_limits import RateLimitStore

SQLITE = "sqlite+aiosqlite:////tmp/x.db"
POSTGRES = "postgresql+asyncpg://u@db/iot"


@pytest.mark.parametrize(
    ("setting", "url", "enabled"),
    [
        ("auto", POSTGRES, True),
        ("auto", SQLITE, False),
        ("on", SQLITE, True),
        ("TRUE", SQLITE, True),
        ("off", POSTGRES, False),
        ("0", POSTGRES, False),
    ],
)
def test_shared_limits_follow_the_database_unless_set(
    setting: str, url: str, enabled: bool
) -> None:
    assert shared_limits_enabled(setting, url) is enabled


def test_the_embedded_mode_pays_for_no_shared_store() -> None:
    throttle = Throttle.from_settings(Settings.load({}))
    assert throttle.shared is None
    assert throttle.per_address.shared is None
    assert not throttle.trusted


def test_postgres_shares_both_limits_unless_they_are_off() -> None:
    throttle = Throttle.from_settings(
        Settings.load({"IOTCLOUD_DATABASE_URL": POSTGRES, "IOTCLOUD_TRUSTED_PROXIES": "::1"})
    )
    assert throttle.shared is not None
    assert throttle.per_address.shared is not None
    assert throttle.per_app.shared is not None
    assert "::1" in throttle.trusted
    off = Throttle.from_settings(
        Settings.load(
            {
                "IOTCLOUD_DATABASE_URL": POSTGRES,
                "IOTCLOUD_RATE_LIMIT_PER_APP": "0",
                "IOTCLOUD_RATE_LIMIT_PER_ADDRESS": "0",
            }
        )
    )
    assert off.shared is None


@pytest.mark.parametrize(
    ("rate", "burst", "lease"),
    [(100.0, 2.0, 10), (1000.0, 2.0, 100), (5.0, 2.0, 1), (0.5, 1.0, 1), (100.0, 0.05, 5)],
)
def test_a_lease_is_a_tenth_of_a_second_never_more_than_the_bucket(
    rate: float, burst: float, lease: int
) -> None:
    limits = SharedLimits(RateLimitStore(SQLITE))
    assert SharedBuckets(limits, "addr", rate, burst).lease_size == lease


def test_trusted_proxies_are_parsed_once_per_value() -> None:
    assert trusted_proxies("10.0.0.0/8") is trusted_proxies("10.0.0.0/8")
