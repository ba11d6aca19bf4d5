"""Gizwits frame (``00000003 | LEN | FLAG | CMD | [SN] | P0``) and its LEN varint."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcloud.codecs import (
    CodecError,
    Frame,
    FrameError,
    decode_frame,
    decode_varint,
    encode_frame,
    encode_varint,
)
from iotcloud.codecs.frame import PROTOCOL_HEADER, SN_COMMANDS, VARINT_MAX


def test_spec_control_frame_for_pet_house_example() -> None:
    frame = Frame(cmd=0x0090, payload=bytes.fromhex("01230500000008"))

    encoded = encode_frame(frame)

    assert encoded == bytes.fromhex("000000030a00009001230500000008")
    assert decode_frame(encoded) == frame


def test_cloud_log_frame_decodes() -> None:
    frame = decode_frame(bytes.fromhex("0000000309000090010200000010"))

    assert frame == Frame(cmd=0x0090, payload=bytes.fromhex("010200000010"), sn=None, flag=0)


def test_sn_frame_from_firmware_comment() -> None:
    data = bytes.fromhex("00000003 0A 00 0093 00000000 111001".replace(" ", ""))

    frame = decode_frame(data)

    assert (frame.cmd, frame.sn, frame.flag, frame.payload) == (0x93, 0, 0, b"\x11\x10\x01")
    assert encode_frame(frame) == data


def test_ack_frame_carries_sn_big_endian() -> None:
    encoded = encode_frame(Frame(cmd=0x0094, payload=b"\x13", sn=0x01020304))

    assert encoded == bytes.fromhex("00000003080000940102030413")


def test_long_payload_uses_multi_byte_len() -> None:
    frame = Frame(cmd=0x0091, payload=bytes(200))

    encoded = encode_frame(frame)

    assert encoded[4:6] == bytes([0x80 | (203 & 0x7F), 203 >> 7])
    assert decode_frame(encoded) == frame


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_varint_boundaries(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@given(st.integers(min_value=0, max_value=VARINT_MAX))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)

    assert 1 <= len(encoded) <= 4
    assert decode_varint(b"\xaa" + encoded + b"\xbb", 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("value", [-1, VARINT_MAX + 1])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(FrameError, match="out of range"):
        encode_varint(value)


def test_varint_decode_rejects_five_bytes_and_truncation() -> None:
    with pytest.raises(FrameError, match="longer than 4 bytes"):
        decode_varint(b"\xff\xff\xff\xff\x01")
    with pytest.raises(FrameError, match="truncated"):
        decode_varint(b"\xff\xff")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "too short"),
        ("000000", "too short"),
        ("000000040300009001", "wrong protocol header 00000004"),
        ("00000003", "truncated LEN"),
        ("00000003ffffffff7f", "longer than 4 bytes"),
        ("0000000305000090", "LEN says 5 bytes but 3 follow"),
        ("000000030300009001", "LEN says 3 bytes but 4 follow"),
        ("00000003020000", "too short for FLAG and CMD"),
        ("00000003050000930000", "missing SN"),
        ("0000000306000094000000", "missing SN"),
    ],
)
def test_malformed_frames_raise_frame_error(data: str, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(bytes.fromhex(data))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cmd": 0x0093, "payload": b""}, "missing SN"),
        ({"cmd": 0x0090, "payload": b"", "sn": 1}, "carries no SN"),
        ({"cmd": 0x10000, "payload": b""}, "2 bytes"),
        ({"cmd": 0x0090, "payload": b"", "flag": 256}, "1 byte"),
        ({"cmd": 0x0094, "payload": b"", "sn": 1 << 32}, "4 bytes"),
    ],
)
def test_invalid_frames_cannot_be_built(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FrameError, match=message):
        Frame(**kwargs)  # type: ignore[arg-type]


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    cmd = draw(st.sampled_from([0x0090, 0x0091, 0x0093, 0x0094]) | st.integers(0, 0xFFFF))
    sn = draw(st.integers(0, 0xFFFF_FFFF)) if cmd in SN_COMMANDS else None
    payload = draw(st.binary(max_size=300))
    return Frame(cmd=cmd, payload=payload, sn=sn, flag=draw(st.integers(0, 255)))


@given(frames())
def test_frame_round_trip(frame: Frame) -> None:
    encoded = encode_frame(frame)

    assert encoded.startswith(PROTOCOL_HEADER)
    assert decode_frame(encoded) == frame


@settings(max_examples=300)
@given(st.binary(max_size=40) | st.binary(max_size=40).map(lambda tail: PROTOCOL_HEADER + tail))
def test_decode_frame_fuzz_raises_only_codec_errors(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except CodecError:
        return
    assert decode_frame(encode_frame(frame)) == frame
