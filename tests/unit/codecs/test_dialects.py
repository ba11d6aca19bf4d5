"""Value conversion between the Gizwits and Tencent dialects, both directions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotcloud.codecs import (
    DatapointError,
    TemplateValueError,
    datapoints_to_template,
    gizwits_to_template,
    load_product_definition,
    parse_data_template,
    template_to_datapoints,
    template_to_gizwits,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LIGHT = parse_data_template(
    json.loads((FIXTURES / "templates" / "light.json").read_text(encoding="utf-8"))
)
PET_HOUSE = load_product_definition(
    (FIXTURES / "datapoints" / "pet_house.json").read_text(encoding="utf-8")
)


def test_template_values_read_as_gizwits_labels_and_booleans() -> None:
    stored = {
        "power_switch": 1,
        "color": 2,
        "brightness": 40,
        "temperature": 20.5,
        "schedule": {"enabled": 0, "mode": 1, "minutes": 5},
        "gone": 7,
    }
    assert template_to_gizwits(LIGHT, stored) == {
        "power_switch": True,
        "color": "Blue",
        "brightness": 40,
        "temperature": 20.5,
        "schedule": {"enabled": False, "mode": "daily", "minutes": 5},
        "gone": 7,
    }


def test_gizwits_values_are_written_in_template_form() -> None:
    sent = {"power_switch": False, "color": "Green", "brightness": 10, "name": "hall"}
    assert gizwits_to_template(LIGHT, sent) == {
        "power_switch": 0,
        "color": 1,
        "brightness": 10,
        "name": "hall",
    }
    assert gizwits_to_template(LIGHT, {"power_switch": 1, "color": 2}) == {
        "power_switch": 1,
        "color": 2,
    }
    assert gizwits_to_template(LIGHT, {"schedule": {"enabled": True, "mode": "once"}}) == {
        "schedule": {"enabled": 1, "mode": 0}
    }


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"color": "Purple"}, "color"),
        ({"color": 1.5}, "color"),
        ({"power_switch": "yes"}, "power_switch"),
        ({"power_switch": 3}, "power_switch"),
        ({"volume": 3}, "volume"),
        ({"schedule": 3}, "schedule"),
        ({"schedule": {"hour": 1}}, "schedule.hour"),
    ],
)
def test_bad_gizwits_values_are_refused_naming_the_property(
    values: dict[str, Any], name: str
) -> None:
    with pytest.raises(TemplateValueError) as info:
        gizwits_to_template(LIGHT, values)
    assert info.value.name == name


def test_p0_values_read_in_template_form() -> None:
    stored = {"LED_OnOff": True, "LED_Color": "Purple", "LED_R": 12, "Unknown": "x"}
    assert datapoints_to_template(PET_HOUSE, stored) == {
        "LED_OnOff": 1,
        "LED_Color": 2,
        "LED_R": 12,
        "Unknown": "x",
    }


def test_template_form_values_are_written_to_p0_devices_as_display_values() -> None:
    assert template_to_datapoints(PET_HOUSE, {"LED_OnOff": 1, "LED_Color": 3, "LED_R": 5}) == {
        "LED_OnOff": True,
        "LED_Color": "Pink",
        "LED_R": 5,
    }


@pytest.mark.parametrize(
    ("values", "name"),
    [({"LED_OnOff": 2}, "LED_OnOff"), ({"LED_Color": 4}, "LED_Color"), ({"Nope": 1}, "Nope")],
)
def test_bad_template_values_for_p0_devices_are_refused(values: dict[str, Any], name: str) -> None:
    with pytest.raises(DatapointError) as info:
        template_to_datapoints(PET_HOUSE, values)
    assert info.value.attr_name == name


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "power_switch": st.sampled_from([0, 1]),
            "color": st.sampled_from([0, 1, 2]),
            "brightness": st.integers(0, 100),
            "name": st.text(max_size=64),
        },
    )
)
def test_template_to_gizwits_and_back_is_the_identity(values: dict[str, Any]) -> None:
    assert gizwits_to_template(LIGHT, template_to_gizwits(LIGHT, values)) == values


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "LED_OnOff": st.booleans(),
            "LED_Color": st.sampled_from(["Customize", "Yellow", "Purple", "Pink"]),
            "LED_R": st.integers(0, 254),
        },
    )
)
def test_datapoints_to_template_and_back_is_the_identity(values: dict[str, Any]) -> None:
    assert template_to_datapoints(PET_HOUSE, datapoints_to_template(PET_HOUSE, values)) == values
