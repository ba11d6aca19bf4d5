"""Gizwits frame format shared by MQTT payloads, LAN TCP/UDP and the WebSocket ``raw`` field.

Layout::

    00 00 00 03 | LEN (1-4 B varint) | FLAG (1 B) | CMD (2 B, BE) | [SN (4 B, BE)] | PAYLOAD

LEN is encoded like the MQTT "remaining length" and counts every byte after itself. SN is present
only for cmd 0x0093 and 0x0094.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from iotcloud.codecs.errors import FrameError

PROTOCOL_HEADER: Final = b"\x00\x00\x00\x03"

CMD_CONTROL: Final = 0x0090
"""App/cloud -> device P0 without ack (the device answers with 0x0091)."""
CMD_REPORT: Final = 0x0091
"""Device -> cloud P0 report or reply, broadcast to every client."""
CMD_CONTROL_SN: Final = 0x0093
"""P0 with a 4-byte SN; the receiver must acknowledge with 0x0094 and the same SN."""
CMD_ACK_SN: Final = 0x0094
"""Acknowledgement/reply to 0x0093 carrying the same SN."""

SN_COMMANDS: Final = frozenset({CMD_CONTROL_SN, CMD_ACK_SN})
VARINT_MAX: Final = 268_435_455
"""Largest value a 4-byte MQTT remaining-length varint can carry."""

_SN_MAX: Final = 0xFFFF_FFFF


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (0..268435455) as an MQTT remaining-length varint of 1-4 bytes.

    Raises `FrameError` when the value is out of range.
    """
    if not 0 <= value <= VARINT_MAX:
        raise FrameError(f"varint value {value} out of range 0..{VARINT_MAX}")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode an MQTT remaining-length varint starting at ``data[offset]``.

    Returns ``(value, next_offset)``. Raises `FrameError` when the input ends inside the varint or
    the varint is longer than 4 bytes. Non-minimal encodings are accepted.
    """
    value = 0
    for index in range(4):
        position = offset + index
        if position >= len(data):
            raise FrameError("truncated LEN varint")
        byte = data[position]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position + 1
    raise FrameError("LEN varint longer than 4 bytes")


@dataclass(frozen=True, slots=True)
class Frame:
    """One Gizwits frame.

    Invariants (checked on construction, violations raise `FrameError`): ``cmd`` fits 2 bytes,
    ``flag`` fits 1 byte, ``sn`` is a 4-byte unsigned int when ``cmd`` is 0x0093/0x0094 and
    None otherwise.
    """

    cmd: int
    payload: bytes
    sn: int | None = None
    flag: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.cmd <= 0xFFFF:
            raise FrameError(f"cmd {self.cmd} does not fit 2 bytes")
        if not 0 <= self.flag <= 0xFF:
            raise FrameError(f"flag {self.flag} does not fit 1 byte")
        if self.cmd in SN_COMMANDS:
            if self.sn is None:
                raise FrameError(f"missing SN for cmd 0x{self.cmd:04x}")
            if not 0 <= self.sn <= _SN_MAX:
                raise FrameError(f"SN {self.sn} does not fit 4 bytes")
        elif self.sn is not None:
            raise FrameError(f"cmd 0x{self.cmd:04x} carries no SN")


def encode_frame(frame: Frame) -> bytes:
    """Serialise ``frame``; raises `FrameError` when the frame is longer than LEN can express."""
    body = bytearray()
    body.append(frame.flag)
    body += frame.cmd.to_bytes(2, "big")
    if frame.sn is not None:
        body += frame.sn.to_bytes(4, "big")
    body += frame.payload
    return PROTOCOL_HEADER + encode_varint(len(body)) + bytes(body)


def decode_frame(data: bytes) -> Frame:
    """Parse exactly one frame from ``data``.

    Raises `FrameError` for a wrong header, a bad LEN varint, a LEN that differs from the number of
    bytes after it, a body too short for FLAG+CMD, or a missing SN on cmd 0x0093/0x0094.
    """
    data = bytes(data)
    if len(data) < len(PROTOCOL_HEADER):
        raise FrameError(f"frame too short ({len(data)} bytes)")
    if data[: len(PROTOCOL_HEADER)] != PROTOCOL_HEADER:
        raise FrameError(f"wrong protocol header {data[:4].hex()} (expected 00000003)")
    length, start = decode_varint(data, len(PROTOCOL_HEADER))
    actual = len(data) - start
    if length != actual:
        raise FrameError(f"LEN says {length} bytes but {actual} follow")
    if length < 3:
        raise FrameError(f"LEN {length} too short for FLAG and CMD")
    flag = data[start]
    cmd = int.from_bytes(data[start + 1 : start + 3], "big")
    payload_start = start + 3
    sn: int | None = None
    if cmd in SN_COMMANDS:
        if length < 7:
            raise FrameError(f"missing SN for cmd 0x{cmd:04x}")
        sn = int.from_bytes(data[payload_start : payload_start + 4], "big")
        payload_start += 4
    return Frame(cmd=cmd, payload=data[payload_start:], sn=sn, flag=flag)
