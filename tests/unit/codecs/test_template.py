"""Tencent data templates: validation of the template and of every value checked against it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotcloud.codecs import (
    CodecError,
    DataTemplate,
    TemplateDefinitionError,
    TemplateValueError,
    is_data_template,
    load_data_template,
    parse_data_template,
)

LIGHT_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "templates" / "light.json"
LIGHT: dict[str, Any] = json.loads(LIGHT_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def light() -> DataTemplate:
    return parse_data_template(LIGHT)


def _doc() -> dict[str, Any]:
    return copy.deepcopy(LIGHT)


def _refused(doc: Any) -> TemplateDefinitionError:
    with pytest.raises(TemplateDefinitionError) as info:
        parse_data_template(doc)
    return info.value


# --- parsing -------------------------------------------------------------------------------


def test_the_light_template_parses_with_every_kind(light: DataTemplate) -> None:
    assert light.product_id == "LIGHT0TPL1"
    assert light.category_id == "141"
    assert light.version == "1.0"
    kinds = {pid: prop.kind for pid, prop in light.properties.items()}
    assert kinds == {
        "power_switch": "bool",
        "brightness": "int",
        "color": "enum",
        "name": "string",
        "temperature": "float",
        "schedule": "struct",
        "last_seen": "timestamp",
    }
    assert light.properties["color"].mapping == {0: "Red", 1: "Green", 2: "Blue"}
    assert light.properties["power_switch"].writable
    assert not light.properties["temperature"].writable
    assert light.properties["name"].max_length == 64
    assert [m.id for m in light.properties["schedule"].members] == ["enabled", "minutes", "mode"]
    assert light.events["low_voltage"].type == "alert"
    assert set(light.actions["blink"].input) == {"times", "color"}
    assert light.source == LIGHT


def test_source_is_a_private_copy() -> None:
    doc = _doc()
    template = parse_data_template(doc)
    doc["properties"].clear()
    assert len(template.source["properties"]) == 7


def test_numeric_limits_may_be_numbers_not_strings() -> None:
    doc = _doc()
    doc["properties"][1]["define"].update({"min": 0, "max": 100, "step": 1, "start": 1})
    assert parse_data_template(doc).check_report({"brightness": 100}) == {"brightness": 100}


def test_load_refuses_text_that_is_not_json() -> None:
    with pytest.raises(TemplateDefinitionError, match="not valid JSON"):
        load_data_template("{nope")
    assert load_data_template(LIGHT_PATH.read_text(encoding="utf-8")).product_id == "LIGHT0TPL1"


def test_detection_by_profile_and_properties() -> None:
    assert is_data_template(LIGHT)
    assert not is_data_template({"name": "x", "entities": []})
    assert not is_data_template([LIGHT])


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.pop("version"), "version"),
        (lambda d: d.pop("profile"), "profile"),
        (lambda d: d["profile"].update(ProductId="light0tpl1"), "profile.ProductId"),
        (lambda d: d["profile"].update(ProductId="LIGHT0TPL"), "profile.ProductId"),
        (lambda d: d["profile"].update(ProductId="LIGHT0TPL12"), "profile.ProductId"),
        (lambda d: d["profile"].update(CategoryId=[1]), "profile.CategoryId"),
        (lambda d: d.update(properties={}), "properties"),
        (lambda d: d["properties"].append(3), "properties[7]"),
        (lambda d: d["properties"][0].update(id="bad id"), "properties[0].id"),
        (lambda d: d["properties"][0].update(mode="w"), "properties[0].mode"),
        (lambda d: d["properties"][0].update(required="yes"), "properties[0].required"),
        (lambda d: d["properties"][0].pop("define"), "properties[0].define"),
        (lambda d: d["properties"][0]["define"].update(type="double"), "properties[0].define.type"),
        (
            lambda d: d["properties"][0]["define"].update(mapping={"0": "a", "2": "b"}),
            "properties[0].define.mapping",
        ),
        (lambda d: d["properties"][1]["define"].update(max="abc"), "properties[1].define.max"),
        (lambda d: d["properties"][1]["define"].update(max="-1"), "properties[1].define.max"),
        (lambda d: d["properties"][1]["define"].pop("min"), "properties[1].define.min"),
        (lambda d: d["properties"][1]["define"].update(start="101"), "properties[1].define.start"),
        (lambda d: d["properties"][1]["define"].update(step="0.5"), "properties[1].define.step"),
        (lambda d: d["properties"][1]["define"].update(step="0"), "properties[1].define.step"),
        (lambda d: d["properties"][1]["define"].update(max=True), "properties[1].define.max"),
        (lambda d: d["properties"][1]["define"].update(max="NaN"), "properties[1].define.max"),
        (lambda d: d["properties"][1]["define"].update(unit=5), "properties[1].define.unit"),
        (
            lambda d: d["properties"][2]["define"].update(mapping={"a": "Red"}),
            "properties[2].define.mapping",
        ),
        (lambda d: d["properties"][2]["define"].update(mapping={}), "properties[2].define.mapping"),
        (
            lambda d: d["properties"][2]["define"].update(mapping={"0": "Red", "1": "Red"}),
            "properties[2].define.mapping.1",
        ),
        (
            lambda d: d["properties"][2]["define"].update(mapping={"0": 1}),
            "properties[2].define.mapping.0",
        ),
        (lambda d: d["properties"][3]["define"].update(max="-2"), "properties[3].define.max"),
        (lambda d: d["properties"][3]["define"].update(min="-1"), "properties[3].define.min"),
        (lambda d: d["properties"][4]["define"].update(start="200"), "properties[4].define.start"),
        (lambda d: d["properties"][5]["define"].update(specs=[]), "properties[5].define.specs"),
        (lambda d: d["properties"][5]["define"].pop("specs"), "properties[5].define.specs"),
        (
            lambda d: d["properties"][5]["define"]["specs"][1]["dataType"].update(max="x"),
            "properties[5].define.specs[1].dataType.max",
        ),
        (
            lambda d: d["properties"][5]["define"]["specs"][0].update(
                dataType={"type": "struct", "specs": []}
            ),
            "properties[5].define.specs[0].dataType.type",
        ),
        (
            lambda d: d["properties"][5]["define"]["specs"].append(
                d["properties"][5]["define"]["specs"][0]
            ),
            "properties[5].define.specs[3].id",
        ),
        (lambda d: d["properties"].append(copy.deepcopy(d["properties"][0])), "properties[7].id"),
        (lambda d: d["events"][0].update(type="warning"), "events[0].type"),
        (lambda d: d["events"].append(copy.deepcopy(d["events"][1])), "events[2].id"),
        (
            lambda d: d["events"][1]["params"][0]["define"].update(min="30"),
            "events[1].params[0].define.max",
        ),
        (
            lambda d: d["events"][0]["params"].append(d["events"][0]["params"][0]),
            "events[0].params[2].id",
        ),
        (lambda d: d.update(actions="blink"), "actions"),
        (lambda d: d["actions"].append(copy.deepcopy(d["actions"][0])), "actions[1].id"),
        (
            lambda d: d["actions"][0]["input"][0]["define"].update(type="list"),
            "actions[0].input[0].define.type",
        ),
        (
            lambda d: d["actions"][0]["output"].append(d["actions"][0]["output"][0]),
            "actions[0].output[1].id",
        ),
    ],
)
def test_invalid_templates_are_refused_naming_the_json_path(mutate: Any, path: str) -> None:
    doc = _doc()
    mutate(doc)
    error = _refused(doc)
    assert error.path == path
    assert str(error).startswith(f"{path}: ")
    assert isinstance(error, CodecError)


def test_the_root_must_be_an_object() -> None:
    assert _refused([1]).path == ""


def test_events_and_actions_are_optional() -> None:
    doc = _doc()
    del doc["events"], doc["actions"]
    template = parse_data_template(doc)
    assert template.events == {}
    assert template.actions == {}


# --- values --------------------------------------------------------------------------------


def _value_error(call: Any, *args: Any) -> TemplateValueError:
    with pytest.raises(TemplateValueError) as info:
        call(*args)
    return info.value


def test_a_good_report_is_returned_in_canonical_form(light: DataTemplate) -> None:
    report = {
        "power_switch": True,
        "brightness": 32.0,
        "color": 2,
        "name": "hall",
        "temperature": 21.5,
        "schedule": {"enabled": 1, "minutes": 30, "mode": 1},
        "last_seen": 1_700_000_000_000,
    }
    checked = light.check_report(report)
    assert checked == {**report, "power_switch": 1, "brightness": 32}
    assert type(checked["brightness"]) is int


@pytest.mark.parametrize(
    ("params", "name", "reason"),
    [
        ({"power_switch": 2}, "power_switch", "expected 0 or 1"),
        ({"power_switch": "on"}, "power_switch", "expected 0 or 1"),
        ({"brightness": 101}, "brightness", "above max 100"),
        ({"brightness": -1}, "brightness", "below min 0"),
        ({"brightness": 1.5}, "brightness", "expected an integer"),
        ({"brightness": "5"}, "brightness", "expected a number"),
        ({"brightness": True}, "brightness", "expected a number"),
        ({"color": 3}, "color", "unknown enum value 3"),
        ({"color": "Red"}, "color", "unknown enum value"),
        ({"color": True}, "color", "unknown enum value"),
        ({"name": "x" * 65}, "name", "longer than max 64"),
        ({"name": 5}, "name", "expected a string"),
        ({"temperature": 125.6}, "temperature", "above max 125.5"),
        ({"temperature": float("nan")}, "temperature", "finite"),
        ({"temperature": 21.55}, "temperature", "not on the step 0.1 grid from -40"),
        ({"temperature": 0.1 + 0.2}, "temperature", "step 0.1 grid"),
        ({"last_seen": -1}, "last_seen", "non-negative integer"),
        ({"last_seen": 1.5}, "last_seen", "non-negative integer"),
        ({"schedule": [1]}, "schedule", "expected an object"),
        ({"schedule": {"minutes": 7}}, "schedule.minutes", "step 5 grid"),
        ({"schedule": {"hour": 7}}, "schedule.hour", "unknown struct member"),
        ({"schedule": {"mode": 5}}, "schedule.mode", "unknown enum value"),
        ({"volume": 1}, "volume", "unknown property"),
    ],
)
def test_bad_report_values_are_refused_naming_the_property(
    light: DataTemplate, params: dict[str, Any], name: str, reason: str
) -> None:
    error = _value_error(light.check_report, params)
    assert error.name == name
    assert reason in error.reason
    assert str(error).startswith(f"{name}: ")


def test_a_report_must_be_an_object(light: DataTemplate) -> None:
    assert _value_error(light.check_report, [1]).name == "params"


def test_step_grid_counts_from_min() -> None:
    doc = _doc()
    doc["properties"][1]["define"].update(min="3", max="30", step="5", start="3")
    template = parse_data_template(doc)
    assert template.check_report({"brightness": 8}) == {"brightness": 8}
    assert _value_error(template.check_report, {"brightness": 10}).name == "brightness"


def test_float_step_grid_is_exact_on_the_shortest_repr() -> None:
    doc = _doc()
    doc["properties"][4].update(mode="rw")
    doc["properties"][4]["define"].update(min="-0.25", max="1e30", step="0.5")
    template = parse_data_template(doc)
    for good in (-0.25, 0.25, 0.75, 12345678.25, 123456789012.75):
        assert template.check_control({"temperature": good}) == {"temperature": good}
    for bad in (0.0, 0.5, 0.3, 0.2500001, 1e29):
        assert (
            "step 0.5 grid from -0.25"
            in _value_error(template.check_control, {"temperature": bad}).reason
        )
        assert _value_error(template.check_report, {"temperature": bad}).name == "temperature"


def test_a_float_step_of_zero_is_no_grid() -> None:
    doc = _doc()
    doc["properties"][4]["define"]["step"] = "0"
    template = parse_data_template(doc)
    assert template.check_report({"temperature": 0.123456789}) == {"temperature": 0.123456789}


def test_string_min_length_is_enforced() -> None:
    doc = _doc()
    doc["properties"][3]["define"]["min"] = "2"
    assert _value_error(parse_data_template(doc).check_report, {"name": "a"}).name == "name"


def test_control_refuses_read_only_and_empty(light: DataTemplate) -> None:
    assert light.check_control({"power_switch": False, "color": 1}) == {
        "power_switch": 0,
        "color": 1,
    }
    error = _value_error(light.check_control, {"power_switch": 1, "temperature": 20})
    assert (error.name, error.reason) == ("temperature", "property is read-only")
    assert _value_error(light.check_control, {}).name == "params"
    assert _value_error(light.check_control, {"brightness": 500}).name == "brightness"


def test_events_are_checked_against_their_params(light: DataTemplate) -> None:
    assert light.check_event("low_voltage", {"voltage": 3.0}) == {"voltage": 3.0}
    assert light.check_event("low_voltage", {"voltage": 3}) == {"voltage": 3}
    assert "step 1 grid" in _value_error(light.check_event, "low_voltage", {"voltage": 3.3}).reason
    assert light.check_event("status_report", {"status": False, "message": "ok"}) == {
        "status": 0,
        "message": "ok",
    }
    assert _value_error(light.check_event, "PowerAlarm", {}).name == "eventId"
    assert _value_error(light.check_event, None, {}).name == "eventId"
    assert _value_error(light.check_event, "low_voltage", {"voltage": 30}).name == "voltage"
    assert _value_error(light.check_event, "low_voltage", {"volts": 3}).name == "volts"
    assert _value_error(light.check_event, "low_voltage", "3.3").name == "params"


def test_action_input_and_output(light: DataTemplate) -> None:
    assert light.check_action_input("blink", {"times": 3, "color": 0}) == {"times": 3, "color": 0}
    assert light.check_action_output("blink", {"result": True}) == {"result": 1}
    assert _value_error(light.check_action_input, "openDoor", {}).name == "actionId"
    assert _value_error(light.check_action_input, "blink", {"times": 11}).name == "times"
    assert _value_error(light.check_action_input, "blink", {"result": 1}).name == "result"
    assert _value_error(light.check_action_output, "blink", {"result": 2}).name == "result"
    assert _value_error(light.check_action_output, "blink", None).name == "response"


# --- properties (hypothesis) ---------------------------------------------------------------


@given(st.integers(min_value=-1000, max_value=1000))
def test_int_values_are_accepted_exactly_within_range(light_value: int) -> None:
    template = parse_data_template(LIGHT)
    if 0 <= light_value <= 100:
        assert template.check_report({"brightness": light_value}) == {"brightness": light_value}
    else:
        with pytest.raises(TemplateValueError):
            template.check_report({"brightness": light_value})


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-500, 1300).map(lambda tenths: tenths / 10),
        st.floats(-40, 125.5).map(lambda value: round(value, 2)),
    )
)
def test_float_values_are_accepted_within_range_on_the_step_grid(value: float) -> None:
    # temperature: min -40, max 125.5, step 0.1; round(v, 1) == v exactly when the shortest
    # repr of v has at most one decimal, i.e. when v is on the 0.1 grid counted from -40
    template = parse_data_template(LIGHT)
    if -40 <= value <= 125.5 and round(value, 1) == value:
        assert template.check_report({"temperature": value}) == {"temperature": value}
    else:
        with pytest.raises(TemplateValueError):
            template.check_report({"temperature": value})


@given(st.text(max_size=80))
def test_string_values_are_bounded_by_max_length(value: str) -> None:
    template = parse_data_template(LIGHT)
    if len(value) <= 64:
        assert template.check_report({"name": value}) == {"name": value}
    else:
        with pytest.raises(TemplateValueError):
            template.check_report({"name": value})


@given(
    st.dictionaries(
        st.sampled_from(["power_switch", "brightness", "color", "name", "bogus"]),
        st.one_of(st.integers(-5, 200), st.booleans(), st.text(max_size=3), st.none()),
    )
)
def test_check_report_either_refuses_or_returns_only_known_properties(
    params: dict[str, Any],
) -> None:
    template = parse_data_template(LIGHT)
    failure: TemplateValueError | None = None
    try:
        checked = template.check_report(params)
    except TemplateValueError as exc:
        failure = exc
    if failure is not None:
        assert failure.name in params
    else:
        assert set(checked) == set(params) <= set(template.properties)
