"""Gizwits datapoint JSON: parsing, validation rules and display-value conversion."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcloud.codecs import (
    AttrType,
    DatapointError,
    DataType,
    ProductDefinitionError,
    ProtocolType,
    load_product_definition,
    parse_product_definition,
)
from iotcloud.codecs.datapoints import UintSpec

PET_HOUSE_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "datapoints" / "pet_house.json"
PET_HOUSE: dict[str, Any] = json.loads(PET_HOUSE_PATH.read_text(encoding="utf-8"))


def pet_house() -> dict[str, Any]:
    return copy.deepcopy(PET_HOUSE)


def attr_json(data: dict[str, Any], name: str) -> dict[str, Any]:
    for attr in data["entities"][0]["attrs"]:
        if attr["name"] == name:
            return attr  # type: ignore[no-any-return]
    raise KeyError(name)


def test_pet_house_parses_with_all_fields() -> None:
    product = load_product_definition(PET_HOUSE_PATH.read_bytes())

    assert product.name == "My WeChat Pet House SOC"
    assert product.product_key == "de9e8d18d9394cce9081b25a531e552b"
    assert product.protocol_type is ProtocolType.STANDARD
    assert product.packet_version == "0x00000004"
    assert [a.id for a in product.attrs] == list(range(15))
    color = product.attr("LED_Color")
    assert (color.type, color.data_type) == (AttrType.STATUS_WRITABLE, DataType.ENUM)
    assert (color.byte_offset, color.bit_offset, color.length, color.unit) == (0, 1, 2, "bit")
    assert color.enum_labels == ("Customize", "Yellow", "Purple", "Pink")
    assert color.display_name == "LED colour"
    assert product.attr("Motor_Speed").uint_spec == UintSpec(min=0, max=10, ratio=1, addition=-5)
    assert [a.name for a in product.writable_attrs] == [
        "LED_OnOff",
        "LED_Color",
        "LED_R",
        "LED_G",
        "LED_B",
        "Motor_Speed",
    ]


def test_pet_house_standard_layout_matches_spec() -> None:
    layout = parse_product_definition(pet_house()).layout

    assert layout is not None
    assert [(area.name, area.start, area.size) for area in layout.areas] == [
        ("writable bits", 0, 1),
        ("writable bytes", 1, 4),
        ("read-only bits", 5, 1),
        ("read-only bytes", 6, 2),
        ("alert bits", 8, 1),
        ("fault bits", 9, 1),
    ]
    assert (layout.size, layout.writable_size) == (10, 5)
    bits = {attr.name: bit for attr, bit in layout.areas[5].fields}
    assert bits == {"Fault_LED": 0, "Fault_Motor": 1, "Fault_TemHum": 2, "Fault_IR": 3}


def test_source_json_is_kept_verbatim_and_detached() -> None:
    data = pet_house()
    product = parse_product_definition(data)

    data["name"] = "changed"

    assert product.source == PET_HOUSE


def test_attrs_are_ordered_by_id_whatever_the_json_order() -> None:
    data = pet_house()
    data["entities"][0]["attrs"].reverse()

    product = parse_product_definition(data)

    assert [a.id for a in product.attrs] == list(range(15))


def test_var_len_ignores_positions() -> None:
    data = pet_house()
    data["protocolType"] = "var_len"
    for attr in data["entities"][0]["attrs"]:
        attr["position"] = {"len": attr["position"]["len"], "unit": attr["position"]["unit"]}

    product = parse_product_definition(data)

    assert product.protocol_type is ProtocolType.VAR_LEN
    assert product.layout is None
    assert product.attr("LED_R").byte_offset == 0


def test_bit_offset_counted_across_area_bytes_like_generated_code() -> None:
    """``Servo_BYTEOFFSET 1, Servo_BITOFFSET 8, Servo_LEN 3`` with a 2-byte writable bit area."""
    attrs = [
        {
            "id": i,
            "name": f"Sw{i}",
            "type": "status_writable",
            "data_type": "bool",
            "position": {"byte_offset": 0, "bit_offset": i, "len": 1, "unit": "bit"},
        }
        for i in range(8)
    ]
    attrs.append(
        {
            "id": 8,
            "name": "Servo",
            "type": "status_writable",
            "data_type": "enum",
            "enum": ["a", "b", "c", "d", "e"],
            "position": {"byte_offset": 1, "bit_offset": 8, "len": 3, "unit": "bit"},
        }
    )

    product = parse_product_definition({"name": "servo", "entities": [{"attrs": attrs}]})

    assert product.layout is not None
    assert dict((a.name, bit) for a, bit in product.layout.areas[0].fields)["Servo"] == 8
    assert product.layout.areas[0].size == 2


# -- display conversion ---------------------------------------------------------------------


def test_integral_scaling_returns_ints() -> None:
    motor = parse_product_definition(pet_house()).attr("Motor_Speed")

    assert motor.to_display(0) == -5
    assert motor.to_display(8) == 3
    assert isinstance(motor.to_display(8), int)
    assert motor.to_raw(3) == 8
    assert motor.to_raw(5.0) == 10


def test_fractional_scaling_has_no_float_artefacts() -> None:
    spec = UintSpec(min=0, max=1000, ratio=0.1, addition=0)

    assert spec.to_display(3) == 0.3
    assert spec.to_display(7) == 0.7
    assert spec.to_raw(0.3) == 3
    assert spec.to_raw(0.30000000000000004) == 3
    assert spec.to_raw(0.26) == 3


def test_ph_sensor_scaling_with_negative_addition() -> None:
    spec = UintSpec(min=0, max=65535, ratio=0.01, addition=-2000)

    assert spec.to_display(1400) == -1986.0
    assert spec.to_display(1) == -1999.99
    assert isinstance(spec.to_display(1400), float)
    assert spec.to_raw(-1999.99) == 1
    assert (spec.display_min, spec.display_max) == (-2000.0, -1344.65)


@pytest.mark.parametrize("ratio", [0, -1, float("inf"), float("nan")])
def test_uint_spec_refuses_unusable_ratio(ratio: float) -> None:
    with pytest.raises(ProductDefinitionError, match="ratio > 0"):
        UintSpec(min=0, max=1, ratio=ratio, addition=0)


def test_out_of_range_display_value_names_attr_and_range() -> None:
    motor = parse_product_definition(pet_house()).attr("Motor_Speed")

    with pytest.raises(DatapointError, match=r"'Motor_Speed'.*out of range -5\.\.5") as info:
        motor.to_raw(6)
    assert info.value.attr_name == "Motor_Speed"
    with pytest.raises(DatapointError, match="out of range"):
        motor.to_raw(-5.6)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LED_R", "12", "expected a number"),
        ("LED_R", True, "expected a number"),
        ("LED_R", float("nan"), "finite"),
        ("LED_OnOff", 2, "expected true/false"),
        ("LED_OnOff", "on", "expected true/false"),
        ("LED_Color", "Purple ", "unknown enum label"),
        ("LED_Color", 4, "enum index 4 out of range"),
        ("LED_Color", False, "expected an enum label or index"),
    ],
)
def test_values_that_do_not_fit_raise_datapoint_error(name: str, value: Any, message: str) -> None:
    attr = parse_product_definition(pet_house()).attr(name)

    with pytest.raises(DatapointError, match=message):
        attr.to_raw(value)


def test_bool_and_enum_conversion() -> None:
    product = parse_product_definition(pet_house())

    assert product.attr("LED_OnOff").to_raw(True) == 1
    assert product.attr("LED_OnOff").to_raw(0) == 0
    assert product.attr("LED_OnOff").to_display(1) is True
    assert product.attr("LED_Color").to_raw("Pink") == 3
    assert product.attr("LED_Color").to_raw(2) == 2
    assert product.attr("LED_Color").to_display(1) == "Yellow"


def test_unknown_attr_lookup() -> None:
    product = parse_product_definition(pet_house())

    with pytest.raises(DatapointError, match="'Nope': unknown attr"):
        product.attr("Nope")
    assert "LED_R" in product
    assert "Nope" not in product


# -- validation rules -----------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def set_attr(name: str, /, **changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        attr_json(data, name).update(changes)

    return mutate


def set_position(name: str, /, **changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        attr_json(data, name)["position"].update(changes)

    return mutate


def set_spec(name: str, /, **changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        attr_json(data, name)["uint_spec"].update(changes)

    return mutate


def delete(name: str | None, *path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: dict[str, Any] = data if name is None else attr_json(data, name)
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def append_attr(**attr: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["entities"][0]["attrs"].append(attr)

    return mutate


def product_level(**changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data.update(changes)

    return mutate


BINARY_ATTR: dict[str, Any] = {
    "id": 15,
    "name": "Blob",
    "type": "status_readonly",
    "data_type": "binary",
    "position": {"byte_offset": 8, "bit_offset": 0, "len": 0, "unit": "byte"},
}

RULES: list[tuple[str, Mutation, str | None, str]] = [
    ("unknown data_type", set_attr("LED_R", data_type="int8"), "LED_R", "unknown data_type"),
    ("unknown type", set_attr("LED_R", type="writable"), "LED_R", "unknown type"),
    ("duplicate name", set_attr("LED_G", name="LED_R"), "LED_R", "duplicate name"),
    ("duplicate id", set_attr("LED_G", id=2), "LED_G", "duplicate id 2"),
    ("name with space", set_attr("LED_R", name="LED R"), "LED R", "bad name"),
    ("empty name", set_attr("LED_R", name=""), "", "bad name"),
    ("non-string name", set_attr("LED_R", name=7), "7", "bad name"),
    ("negative id", set_attr("LED_R", id=-1), "LED_R", "must not be negative"),
    ("string id", set_attr("LED_R", id="2"), "LED_R", "must be an integer"),
    ("overlapping bits", set_position("LED_Color", bit_offset=0), "LED_Color", "overlaps"),
    ("overlapping bytes", set_position("LED_G", byte_offset=1), "LED_G", "overlaps attr 'LED_R'"),
    ("bits outside group", set_position("Infrared", byte_offset=0), "Infrared", "outside"),
    ("bytes outside group", set_position("Temperature", byte_offset=2), "Temperature", "outside"),
    ("bits past area", set_position("LED_Color", bit_offset=7), "LED_Color", "extend past"),
    ("enum too narrow", set_position("LED_Color", len=1), "LED_Color", "too small for 4 labels"),
    ("enum without labels", set_attr("LED_Color", enum=[]), "LED_Color", "non-empty list"),
    ("enum duplicate labels", set_attr("LED_Color", enum=["a", "a"]), "LED_Color", "duplicate"),
    ("enum missing labels", delete("LED_Color", "enum"), "LED_Color", "missing field 'enum'"),
    ("bool len 2", set_position("LED_OnOff", len=2), "LED_OnOff", "bool must have len 1"),
    ("uint8 max 256", set_spec("LED_R", max=256), "LED_R", "uint_spec.max 256 outside"),
    ("negative min", set_spec("LED_R", min=-1), "LED_R", "uint_spec.min -1 outside"),
    ("min > max", set_spec("LED_R", min=10, max=5), "LED_R", "min 10 > uint_spec.max 5"),
    ("ratio zero", set_spec("LED_R", ratio=0), "LED_R", "ratio must be > 0"),
    ("ratio negative", set_spec("LED_R", ratio=-0.5), "LED_R", "ratio must be > 0"),
    ("ratio not a number", set_spec("LED_R", ratio="1"), "LED_R", "must be a number"),
    ("binary without length", append_attr(**BINARY_ATTR), "Blob", "binary needs a byte length"),
    (
        "binary too long",
        append_attr(**{**BINARY_ATTR, "position": {**BINARY_ATTR["position"], "len": 65536}}),
        "Blob",
        "binary needs a byte length 1..65535",
    ),
    ("uint16 in 1 byte", set_attr("LED_R", data_type="uint16"), "LED_R", "does not match uint16"),
    ("uint32 in 1 byte", set_attr("LED_R", data_type="uint32"), "LED_R", "does not match uint32"),
    ("wrong unit", set_position("LED_R", unit="bit"), "LED_R", "unit must be 'byte'"),
    ("alert not bool", set_attr("Alert_1", data_type="uint8"), "Alert_1", "alert attrs must be"),
    ("missing type", delete("LED_R", "type"), "LED_R", "missing field 'type'"),
    ("missing data_type", delete("LED_R", "data_type"), "LED_R", "missing field 'data_type'"),
    ("missing position", delete("LED_R", "position"), "LED_R", "missing field 'position'"),
    ("missing len", delete("LED_R", "position", "len"), "LED_R", "missing field 'len'"),
    ("missing offset", delete("LED_R", "position", "byte_offset"), "LED_R", "'byte_offset'"),
    ("missing uint_spec", delete("LED_R", "uint_spec"), "LED_R", "missing field 'uint_spec'"),
    ("missing ratio", delete("LED_R", "uint_spec", "ratio"), "LED_R", "'uint_spec.ratio'"),
    ("missing id", delete("LED_R", "id"), "LED_R", "missing field 'id'"),
    ("missing name", delete("LED_R", "name"), None, r"attrs\[2\]: missing field 'name'"),
    ("missing product name", delete(None, "name"), None, "missing field 'name'"),
    ("missing entities", delete(None, "entities"), None, "missing field 'entities'"),
    ("two entities", product_level(entities=[{"attrs": []}] * 2), None, "exactly one entity"),
    ("unknown protocol", product_level(protocolType="fixed"), None, "unknown protocolType"),
]


@pytest.mark.parametrize(
    ("mutate", "attr_name", "message"),
    [pytest.param(mutate, attr, message, id=rule) for rule, mutate, attr, message in RULES],
)
def test_invalid_definitions_raise_product_definition_error(
    mutate: Mutation, attr_name: str | None, message: str
) -> None:
    data = pet_house()
    mutate(data)

    with pytest.raises(ProductDefinitionError, match=message) as info:
        parse_product_definition(data)
    assert info.value.attr_name == attr_name
    if attr_name is not None:
        assert repr(attr_name) in str(info.value)


def test_invalid_json_text() -> None:
    with pytest.raises(ProductDefinitionError, match="not valid JSON"):
        load_product_definition(b"{")
    with pytest.raises(ProductDefinitionError, match="must be a JSON object"):
        load_product_definition("[]")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.integers()
    | st.floats()
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
ATTR_KEYS = ["id", "name", "type", "data_type", "position", "uint_spec", "enum", "display_name"]
POSITION_KEYS = ["byte_offset", "bit_offset", "len", "unit"]
SPEC_KEYS = ["min", "max", "ratio", "addition"]


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, 14),
    path=st.sampled_from(
        [(key,) for key in ATTR_KEYS]
        + [("position", key) for key in POSITION_KEYS]
        + [("uint_spec", key) for key in SPEC_KEYS]
    ),
    value=JSON_VALUES,
    protocol=st.sampled_from(["standard", "var_len"]),
)
def test_mutated_definitions_raise_only_product_definition_errors(
    index: int, path: tuple[str, ...], value: Any, protocol: str
) -> None:
    data = pet_house()
    data["protocolType"] = protocol
    target = data["entities"][0]["attrs"][index]
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value

    try:
        product = parse_product_definition(data)
    except ProductDefinitionError:
        return
    assert len(product.attrs) == 15


@settings(deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_raises_only_product_definition_errors(value: Any) -> None:
    try:
        product = parse_product_definition(value)
    except ProductDefinitionError:
        return
    assert product.source == value
