"""Property tests: P0 round trips and fuzzing over generated products (standard and var_len)."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iotcloud.codecs import (
    Action,
    Attr,
    CodecError,
    DataType,
    P0Codec,
    ProductDefinition,
    parse_product_definition,
)

ATTR_TYPES = ["status_writable", "status_readonly", "alert", "fault"]
DATA_TYPES = ["bool", "enum", "uint8", "uint16", "uint32", "binary"]
WIDTHS = {"uint8": 1, "uint16": 2, "uint32": 4}
RATIOS = [1, 2, 10, 0.1, 0.5, 0.25, 0.01, 0.001]
ADDITIONS = [0, -5, -13, 100, -2000, 0.5, -30.25]
GROUPS = [
    ("status_writable", True),
    ("status_writable", False),
    ("status_readonly", True),
    ("status_readonly", False),
    ("alert", True),
    ("fault", True),
]


ATTR_TYPE = st.sampled_from(ATTR_TYPES)
DATA_TYPE = st.sampled_from(DATA_TYPES)
RATIO = st.sampled_from(RATIOS)
ADDITION = st.sampled_from(ADDITIONS)
ENUM_SHAPE = st.integers(1, 5).flatmap(
    lambda width: st.tuples(st.just(width), st.integers(1, min(1 << width, 9)))
)
BINARY_LEN = st.integers(1, 6)
LIMITS = {
    data_type: st.lists(
        st.sampled_from([0, (1 << (8 * width)) - 1]) | st.integers(0, (1 << (8 * width)) - 1),
        min_size=2,
        max_size=2,
    ).map(sorted)
    for data_type, width in WIDTHS.items()
}


@st.composite
def attr_jsons(draw: st.DrawFn, attr_id: int) -> dict[str, Any]:
    attr_type = draw(ATTR_TYPE)
    data_type = "bool" if attr_type in ("alert", "fault") else draw(DATA_TYPE)
    attr: dict[str, Any] = {
        "id": attr_id,
        "name": f"attr_{attr_id}",
        "type": attr_type,
        "data_type": data_type,
    }
    if data_type == "bool":
        attr["position"] = {"len": 1, "unit": "bit"}
    elif data_type == "enum":
        width, count = draw(ENUM_SHAPE)
        attr["position"] = {"len": width, "unit": "bit"}
        attr["enum"] = [f"label{i}" for i in range(count)]
    elif data_type == "binary":
        attr["position"] = {"len": draw(BINARY_LEN), "unit": "byte"}
    else:
        low, high = draw(LIMITS[data_type])
        attr["position"] = {"len": WIDTHS[data_type], "unit": "byte"}
        attr["uint_spec"] = {
            "min": low,
            "max": high,
            "ratio": draw(RATIO),
            "addition": draw(ADDITION),
        }
    return attr


def place_standard(attrs: list[dict[str, Any]], relative_bits: bool) -> None:
    """Give each attr the dev_status position the Gizwits generator would."""
    cursor = 0
    for attr_type, is_bits in GROUPS:
        members = [
            a
            for a in sorted(attrs, key=lambda a: a["id"])
            if a["type"] == attr_type and (a["position"]["unit"] == "bit") is is_bits
        ]
        offset = 0
        for attr in members:
            length = attr["position"]["len"]
            if is_bits:
                attr["position"]["byte_offset"] = cursor + offset // 8
                attr["position"]["bit_offset"] = offset if relative_bits else offset % 8
            else:
                attr["position"]["byte_offset"] = cursor + offset
                attr["position"]["bit_offset"] = 0
            offset += length
        cursor += (offset + 7) // 8 if is_bits else offset


@st.composite
def products(draw: st.DrawFn, protocol: str | None = None) -> ProductDefinition:
    protocol = protocol or draw(st.sampled_from(["standard", "var_len"]))
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 3]), min_size=1, max_size=16))
    ids = [sum(gaps[: i + 1]) - 1 for i in range(len(gaps))]
    attrs = [draw(attr_jsons(attr_id)) for attr_id in ids]
    if protocol == "standard":
        place_standard(attrs, relative_bits=draw(st.booleans()))
    attrs = draw(st.permutations(attrs))
    data = {"name": "generated", "protocolType": protocol, "entities": [{"attrs": attrs}]}
    return parse_product_definition(data)


def display_values(attr: Attr) -> st.SearchStrategy[Any]:
    if attr.data_type is DataType.BOOL:
        return st.booleans()
    if attr.data_type is DataType.ENUM:
        return st.sampled_from(attr.enum_labels)
    if attr.data_type is DataType.BINARY:
        return st.binary(min_size=attr.length, max_size=attr.length)
    spec = attr.uint_spec
    assert spec is not None
    return st.integers(spec.min, spec.max).map(spec.to_display)


@st.composite
def products_with_values(
    draw: st.DrawFn, protocol: str | None = None
) -> tuple[ProductDefinition, dict[str, Any]]:
    product = draw(products(protocol))
    values = {attr.name: draw(display_values(attr)) for attr in product.attrs}
    return product, values


@settings(deadline=None)
@given(products_with_values())
def test_full_status_round_trip(case: tuple[ProductDefinition, dict[str, Any]]) -> None:
    product, values = case
    codec = P0Codec(product)

    message = codec.decode(codec.encode_status(values))

    assert message.action in (Action.REPORT, Action.VAR_REPORT)
    assert message.values == values


@settings(deadline=None)
@given(products_with_values("var_len"), st.data())
def test_var_len_changed_status_round_trip(
    case: tuple[ProductDefinition, dict[str, Any]], data: st.DataObject
) -> None:
    product, values = case
    changed = data.draw(st.lists(st.sampled_from(sorted(values)), unique=True))
    codec = P0Codec(product)

    message = codec.decode(codec.encode_status(values, action=0x13, changed=changed))

    assert message.action is Action.VAR_READ_REPLY
    assert message.values == {name: values[name] for name in changed}


@settings(deadline=None)
@given(products_with_values(), st.data())
def test_control_round_trip(
    case: tuple[ProductDefinition, dict[str, Any]], data: st.DataObject
) -> None:
    product, values = case
    writable = [attr.name for attr in product.writable_attrs]
    assume(writable)
    chosen = data.draw(st.lists(st.sampled_from(writable), unique=True, min_size=1))
    control = {name: values[name] for name in chosen}
    codec = P0Codec(product)

    message = codec.decode(codec.encode_control(control, last_known=values))

    assert message.action in (Action.CONTROL, Action.VAR_CONTROL)
    assert message.values == control
    assert list(message.names) == [a.name for a in product.attrs if a.name in control]


@settings(deadline=None)
@given(products_with_values("standard"), st.data())
def test_standard_control_block_is_writable_prefix_of_status(
    case: tuple[ProductDefinition, dict[str, Any]], data: st.DataObject
) -> None:
    product, values = case
    writable = [attr.name for attr in product.writable_attrs]
    assume(writable)
    chosen = data.draw(st.lists(st.sampled_from(writable), unique=True, min_size=1))
    codec = P0Codec(product)
    assert product.layout is not None
    flag_len = (len(writable) + 7) // 8

    control = codec.encode_control({name: values[name] for name in chosen}, last_known=values)
    status = codec.encode_status(values)

    assert control[1 + flag_len :] == status[1 : 1 + product.layout.writable_size]


@settings(deadline=None)
@given(products("var_len"), st.data())
def test_var_len_read_round_trip(product: ProductDefinition, data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from([a.name for a in product.attrs]), unique=True))
    codec = P0Codec(product)

    message = codec.decode(codec.encode_read(names))

    assert message.action is Action.VAR_READ
    assert set(message.names) == set(names)


@settings(max_examples=300, deadline=None)
@given(products(), st.data())
def test_decode_fuzz_raises_only_codec_errors(
    product: ProductDefinition, data: st.DataObject
) -> None:
    codec = P0Codec(product)
    action = data.draw(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x11, 0x12, 0x13, 0x14, 0x07]))
    payload = data.draw(
        st.binary(max_size=40) | st.binary(max_size=40).map(lambda tail: bytes([action]) + tail)
    )

    try:
        message = codec.decode(payload)
    except CodecError:
        return
    assert set(message.values) <= {attr.name for attr in product.attrs}
