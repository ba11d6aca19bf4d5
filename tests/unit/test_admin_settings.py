"""The operator API's token setting: refused when weak in production, never printed."""

from __future__ import annotations

import pytest

from iotcloud.config import ConfigError, Settings


def test_a_short_admin_token_is_refused_in_production_only() -> None:
    with pytest.raises(ConfigError, match="IOTCLOUD_ADMIN_TOKEN"):
        Settings.load({"IOTCLOUD_ADMIN_TOKEN": "short"})
    assert Settings.load({"IOTCLOUD_ADMIN_TOKEN": "short", "IOTCLOUD_ENV": "development"})
    assert Settings.load({"IOTCLOUD_ADMIN_TOKEN": "x" * 16}).admin_token == "x" * 16
    assert Settings.load({}).admin_token == ""


def test_the_admin_token_stays_out_of_the_settings_repr() -> None:
    settings = Settings.load({"IOTCLOUD_ADMIN_TOKEN": "s3cret-operator-token"})
    assert "s3cret-operator-token" not in repr(settings)
