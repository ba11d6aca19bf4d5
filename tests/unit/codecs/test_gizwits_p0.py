"""P0 encodings pinned to the spec's worked examples and hand-computed bytes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from iotcloud.codecs import (
    Action,
    DatapointError,
    Frame,
    P0Codec,
    P0Error,
    P0Message,
    ProductDefinition,
    decode_frame,
    encode_frame,
    parse_product_definition,
)

PET_HOUSE_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "datapoints" / "pet_house.json"


def pet_house_codec() -> P0Codec:
    return P0Codec(parse_product_definition(json.loads(PET_HOUSE_PATH.read_text("utf-8"))))


def bit_attr(
    attr_id: int, name: str, attr_type: str, byte_offset: int, bit_offset: int, **extra: Any
) -> dict[str, Any]:
    enum = extra.get("enum")
    return {
        "id": attr_id,
        "name": name,
        "type": attr_type,
        "data_type": "enum" if enum else "bool",
        "position": {
            "byte_offset": byte_offset,
            "bit_offset": bit_offset,
            "len": extra.get("len", 1),
            "unit": "bit",
        },
        **({"enum": enum} if enum else {}),
    }


def byte_attr(
    attr_id: int, name: str, attr_type: str, data_type: str, byte_offset: int, **spec: Any
) -> dict[str, Any]:
    widths = {"uint8": 1, "uint16": 2, "uint32": 4}
    attr: dict[str, Any] = {
        "id": attr_id,
        "name": name,
        "type": attr_type,
        "data_type": data_type,
        "position": {
            "byte_offset": byte_offset,
            "bit_offset": 0,
            "len": spec.pop("len", widths.get(data_type)),
            "unit": "byte",
        },
    }
    if data_type in widths:
        attr["uint_spec"] = {"min": 0, "max": 255, "ratio": 1, "addition": 0, **spec}
    return attr


def eleven_writable_json(protocol: str) -> dict[str, Any]:
    """11 writable attrs (flags need 2 bytes) and a 12-bit writable bit area (2 bytes).

    Standard dev_status: writable bits @0-1 (B0..B8 at bits 0..8, E9 at bits 9..11), U16 @2-3,
    read-only bit R @4, T (uint32) @5-8, alert A @9, fault F @10.
    """
    attrs = [bit_attr(i, f"B{i}", "status_writable", i // 8, i) for i in range(9)]
    attrs += [
        bit_attr(9, "E9", "status_writable", 1, 9, len=3, enum=["a", "b", "c", "d", "e"]),
        byte_attr(10, "U16", "status_writable", "uint16", 2, max=1000, ratio=0.5, addition=-10),
        bit_attr(11, "R", "status_readonly", 4, 0),
        byte_attr(12, "T", "status_readonly", "uint32", 5, max=4294967295),
        bit_attr(13, "A", "alert", 9, 0),
        bit_attr(14, "F", "fault", 10, 0),
    ]
    return {"name": "eleven", "protocolType": protocol, "entities": [{"attrs": attrs}]}


def eleven_codec(protocol: str) -> P0Codec:
    return P0Codec(parse_product_definition(eleven_writable_json(protocol)))


ELEVEN_STATUS: dict[str, Any] = {
    **{f"B{i}": i in (0, 8) for i in range(9)},
    "E9": "c",
    "U16": 119.0,
    "R": True,
    "T": 0x01020304,
    "A": False,
    "F": True,
}
ELEVEN_CONTROL: dict[str, Any] = {"B0": True, "B8": True, "E9": "e", "U16": 20.5}


def firmware_var_len_product() -> ProductDefinition:
    """A var_len product whose attr id 4 is a writable uint8, as in the firmware comment."""
    attrs = [
        bit_attr(0, "Power", "status_writable", 0, 0),
        bit_attr(1, "Mode", "status_writable", 0, 0, len=2, enum=["auto", "cool", "heat"]),
        byte_attr(2, "Level", "status_readonly", "uint8", 0),
        bit_attr(3, "Overheat", "alert", 0, 0),
        byte_attr(4, "Volume", "status_writable", "uint8", 0, max=100),
        byte_attr(5, "Token", "status_writable", "binary", 0, len=3),
        byte_attr(6, "Voltage", "status_readonly", "uint16", 0, max=65535, ratio=0.1),
    ]
    return parse_product_definition(
        {"name": "firmware", "protocolType": "var_len", "entities": [{"attrs": attrs}]}
    )


# -- spec examples ---------------------------------------------------------------------------


def test_spec_worked_example_pet_house_control() -> None:
    codec = pet_house_codec()

    p0 = codec.encode_control({"LED_OnOff": 1, "LED_Color": "Purple", "Motor_Speed": 3})

    assert p0 == bytes.fromhex("01230500000008")
    assert encode_frame(Frame(cmd=0x0090, payload=p0)) == bytes.fromhex(
        "000000030a00009001230500000008"
    )
    assert codec.decode(p0) == P0Message(
        action=Action.CONTROL,
        values={"LED_OnOff": True, "LED_Color": "Purple", "Motor_Speed": 3},
        names=("LED_OnOff", "LED_Color", "Motor_Speed"),
    )


def test_spec_firmware_var_len_frame_decodes() -> None:
    frame = decode_frame(bytes.fromhex("000000030A00009300000000111001"))
    codec = P0Codec(firmware_var_len_product())

    message = codec.decode(frame.payload)

    assert (frame.cmd, frame.sn) == (0x93, 0)
    assert message.action is Action.VAR_CONTROL
    assert frame.payload[1] == 0x10
    assert message.values == {"Volume": 1}
    assert codec.encode_control({"Volume": 1}) == frame.payload


def test_pet_house_full_report() -> None:
    codec = pet_house_codec()
    status = {
        "LED_OnOff": True,
        "LED_Color": "Pink",
        "LED_R": 1,
        "LED_G": 2,
        "LED_B": 3,
        "Motor_Speed": 5,
        "Infrared": True,
        "Temperature": 20,
        "Humidity": 50,
        "Alert_1": False,
        "Alert_2": True,
        "Fault_LED": False,
        "Fault_Motor": True,
        "Fault_TemHum": False,
        "Fault_IR": True,
    }

    p0 = codec.encode_status(status)

    assert p0 == bytes.fromhex("04 07 0102030a 01 2132 02 0a".replace(" ", ""))
    message = codec.decode(p0)
    assert message.action is Action.REPORT
    assert message.values == status
    assert codec.encode_status(status, action=0x03)[0] == 0x03


def test_pet_house_read_is_a_bare_action() -> None:
    codec = pet_house_codec()

    assert codec.encode_read() == b"\x02"
    assert codec.decode(b"\x02").names[:2] == ("LED_OnOff", "LED_Color")


def test_standard_control_fills_unflagged_fields_from_last_known() -> None:
    codec = pet_house_codec()
    last_known = {
        "LED_OnOff": True,
        "LED_Color": "Yellow",
        "LED_G": 20,
        "LED_B": 999,
        "Motor_Speed": 0,
        "Temperature": 99,
    }

    p0 = codec.encode_control({"LED_R": 10}, last_known=last_known)

    # LED_B's stale 999 no longer fits, so it is sent as 0 (the device ignores unflagged fields).
    assert p0 == bytes.fromhex("01 04 03 0a 14 00 05".replace(" ", ""))
    assert codec.decode(p0).values == {"LED_R": 10}


# -- byte reversal with more than 8 writable attrs ---------------------------------------------


def test_standard_control_reverses_two_byte_flags_and_bit_area() -> None:
    codec = eleven_codec("standard")

    p0 = codec.encode_control(ELEVEN_CONTROL)

    # flags: bits 0, 8, 9, 10 -> 0x0701; wBitBuf: B0 | B8<<8 | 4<<9 -> 0x0901; U16 (20.5+10)/0.5
    assert p0 == bytes.fromhex("01 0701 0901 003d".replace(" ", ""))
    assert codec.decode(p0).values == ELEVEN_CONTROL


def test_standard_status_with_two_byte_bit_area() -> None:
    codec = eleven_codec("standard")

    p0 = codec.encode_status(ELEVEN_STATUS)

    assert p0 == bytes.fromhex("04 0501 0102 01 01020304 00 01".replace(" ", ""))
    assert codec.decode(p0).values == ELEVEN_STATUS


def test_var_len_control_flags_every_attr_and_packs_bits_contiguously() -> None:
    codec = eleven_codec("var_len")

    p0 = codec.encode_control(ELEVEN_CONTROL)

    # bit segment: B0 @0, B8 @1, E9 (=4) @2..4 -> 0x13
    assert p0 == bytes.fromhex("11 0701 13 003d".replace(" ", ""))
    assert codec.decode(p0).values == ELEVEN_CONTROL


def test_var_len_full_report_reverses_two_byte_bit_segment() -> None:
    codec = eleven_codec("var_len")

    p0 = codec.encode_status(ELEVEN_STATUS)

    # bits: B0 @0, B8 @8, E9 (=2) @9..11, R @12, A @13, F @14 -> 0x5501
    assert p0 == bytes.fromhex("14 7fff 5501 0102 01020304".replace(" ", ""))
    assert codec.decode(p0).values == ELEVEN_STATUS


def test_var_len_report_of_changed_attrs_only() -> None:
    codec = eleven_codec("var_len")

    p0 = codec.encode_status(ELEVEN_STATUS, changed=["T", "E9"])

    assert p0 == bytes.fromhex("14 1200 02 01020304".replace(" ", ""))
    assert codec.decode(p0).values == {"E9": "c", "T": 0x01020304}


def test_var_len_read_flags_requested_attrs() -> None:
    codec = eleven_codec("var_len")

    p0 = codec.encode_read(["T", "B8"])

    assert p0 == bytes.fromhex("121100")
    assert codec.decode(p0) == P0Message(action=Action.VAR_READ, names=("B8", "T"))
    assert codec.encode_read() == bytes.fromhex("127fff")


def test_var_len_binary_and_fractional_values_in_byte_segment() -> None:
    codec = P0Codec(firmware_var_len_product())

    p0 = codec.encode_status({"Token": b"abc", "Voltage": 230.5}, action=0x13)

    assert p0 == bytes.fromhex("13 60 616263 0901".replace(" ", ""))
    assert codec.decode(p0).values == {"Token": b"abc", "Voltage": 230.5}


def test_transparent_payloads_pass_through() -> None:
    codec = pet_house_codec()

    assert codec.encode_transparent(b"\x01\x02") == b"\x05\x01\x02"
    assert codec.encode_transparent(b"hi", upstream=True) == b"\x06hi"
    assert codec.decode(b"\x06hi") == P0Message(action=Action.TRANSPARENT_UP, raw=b"hi")


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["standard", "var_len"])
@pytest.mark.parametrize(
    ("values", "attr_name", "message"),
    [
        ({"R": True}, "R", "read only"),
        ({"T": -1}, "T", "read only"),
        ({"A": True}, "A", "read only"),
        ({"Nope": 1}, "Nope", "unknown attr"),
        ({"U16": 491}, "U16", "out of range -10.0..490.0"),
        ({"E9": "z"}, "E9", "unknown enum label"),
        ({"B0": "yes"}, "B0", "expected true/false"),
    ],
)
def test_control_values_that_do_not_fit(
    protocol: str, values: dict[str, Any], attr_name: str, message: str
) -> None:
    codec = eleven_codec(protocol)

    with pytest.raises(DatapointError, match=message) as info:
        codec.encode_control(values)
    assert info.value.attr_name == attr_name


def test_binary_must_have_declared_length() -> None:
    codec = P0Codec(firmware_var_len_product())

    with pytest.raises(DatapointError, match="expected exactly 3 bytes, got 2"):
        codec.encode_control({"Token": b"ab"})


def test_empty_control_is_rejected() -> None:
    with pytest.raises(P0Error, match="at least one value"):
        pet_house_codec().encode_control({})


def test_status_action_must_be_a_status_action() -> None:
    with pytest.raises(P0Error, match="not a status action"):
        pet_house_codec().encode_status({}, action=0x01)
    with pytest.raises(P0Error, match="not a status action"):
        eleven_codec("var_len").encode_status({}, action=0x04)


def test_changed_attr_without_value() -> None:
    with pytest.raises(DatapointError, match="'T': changed attr has no value"):
        eleven_codec("var_len").encode_status({"R": True}, changed=["T"])


@pytest.mark.parametrize(
    ("protocol", "p0", "message"),
    [
        ("standard", "", "empty P0"),
        ("standard", "07", "unknown action 0x07"),
        ("standard", "11070113003d", "not valid for a standard product"),
        ("var_len", "0107010901003d", "not valid for a var_len product"),
        ("standard", "0107010901", "too short"),
        ("standard", "0107010901003d00", "1 trailing bytes"),
        ("standard", "0201", "trailing"),
        ("standard", "04050101020101020304", "too short"),
        ("standard", "010801" + "0901003d", "bits beyond the 11 attrs"),
        ("var_len", "11", "too short for the 2-byte attr flags"),
        ("var_len", "1107011300", "too short"),
        ("var_len", "147fff550101020102030405", "trailing"),
        ("var_len", "128000", "bits beyond the 15 attrs"),
    ],
)
def test_malformed_payloads(protocol: str, p0: str, message: str) -> None:
    with pytest.raises(P0Error, match=message):
        eleven_codec(protocol).decode(bytes.fromhex(p0))


def test_enum_index_without_label_is_a_datapoint_error() -> None:
    codec = eleven_codec("var_len")

    # flags: E9 only; bit segment value 7 but E9 has 5 labels
    with pytest.raises(DatapointError, match="'E9': enum index 7 out of range"):
        codec.decode(bytes.fromhex("14020007"))


def test_var_len_control_flagging_read_only_attr_is_rejected() -> None:
    codec = eleven_codec("var_len")

    with pytest.raises(DatapointError, match="'R': read only"):
        codec.decode(bytes.fromhex("11080001"))


def test_decode_does_not_range_check_device_numbers() -> None:
    codec = pet_house_codec()
    status = bytearray(codec.encode_status({}))
    status[2] = 255  # LED_R beyond its uint_spec max of 254

    assert codec.decode(bytes(status)).values["LED_R"] == 255


def test_codec_does_not_mutate_inputs() -> None:
    codec = eleven_codec("standard")
    values = copy.deepcopy(ELEVEN_STATUS)

    codec.encode_status(values)
    codec.encode_control({"B0": True}, last_known=values)

    assert values == ELEVEN_STATUS
