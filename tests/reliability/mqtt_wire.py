"""MQTT 3.1/3.1.1 packets as bytes, written here without an MQTT library so that any of their
fields can be wrong, `PacketMutator` to break them byte by byte, and a reader of what a broker
sends back."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

CONNECT, CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 1, 2, 3, 4, 9, 13
PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"


def varint(value: int) -> bytes:
    """MQTT's remaining length (any non-negative value: the 4-byte limit is not enforced)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def text(value: str | bytes) -> bytes:
    """A length-prefixed string (cut at 65,535 bytes)."""
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    data = data[:0xFFFF]
    return len(data).to_bytes(2, "big") + data


def packet(first: int, body: bytes, length: int | None = None) -> bytes:
    """A packet with fixed-header byte ``first``; ``length`` overrides the true length."""
    return bytes([first]) + varint(len(body) if length is None else length) + body


def connect(
    client_id: str | bytes,
    username: str | bytes | None,
    password: str | bytes | None,
    *,
    name: str | bytes = "MQTT",
    level: int = 4,
    keepalive: int = 60,
    flags: int | None = None,
    will: tuple[str | bytes, bytes, int] | None = None,
) -> bytes:
    """A CONNECT (clean session; ``will`` is ``(topic, message, qos)``); ``flags`` overrides the
    flags byte the other arguments imply."""
    implied = 0x02
    payload = text(client_id)
    if will is not None:
        implied |= 0x04 | (will[2] & 0x3) << 3
        payload += text(will[0]) + text(will[1])
    if username is not None:
        implied |= 0x80
        payload += text(username)
    if password is not None:
        implied |= 0x40
        payload += text(password)
    header = text(name) + bytes([level & 0xFF, (implied if flags is None else flags) & 0xFF])
    return packet(0x10, header + (keepalive & 0xFFFF).to_bytes(2, "big") + payload)


def publish(
    topic: str | bytes, payload: bytes, *, qos: int = 0, packet_id: int = 1, retain: bool = False
) -> bytes:
    first = 0x30 | (qos & 0x3) << 1 | int(retain)
    body = text(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return packet(first, body)


def subscribe(packet_id: int, filters: list[tuple[str | bytes, int]], flags: int = 0x2) -> bytes:
    body = packet_id.to_bytes(2, "big")
    body += b"".join(text(topic) + bytes([qos & 0xFF]) for topic, qos in filters)
    return packet(0x80 | flags, body)


def unsubscribe(packet_id: int, topics: list[str], flags: int = 0x2) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(text(topic) for topic in topics)
    return packet(0xA0 | flags, body)


def puback(packet_id: int) -> bytes:
    return packet(0x40, packet_id.to_bytes(2, "big"))


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """A packet's first byte, its remaining-length bytes and the rest (the bytes after at most
    four length bytes, whatever they claim)."""
    at = 1
    while at < min(len(data), 5) and data[at] & 0x80:
        at += 1
    return data[0], data[1 : at + 1], data[at + 1 :]


def connect_keepalive(data: bytes) -> int | None:
    """The keep-alive of the CONNECT at the start of ``data`` (None when ``data`` does not
    start with a CONNECT whose variable header is all there)."""
    found = parse(data)
    if not found or found[0].kind != CONNECT or len(found[0].body) < 2:
        return None
    body = found[0].body
    at = 2 + int.from_bytes(body[:2], "big") + 2  # protocol name, level, flags
    return int.from_bytes(body[at : at + 2], "big") if len(body) >= at + 2 else None


FIVE_BYTE_LENGTHS: Final = (
    b"\xff\xff\xff\xff\x7f",
    b"\x80\x80\x80\x80\x01",
    b"\xff\xff\xff\xff\xff",
)
"""Remaining lengths of five bytes (MQTT allows four): a parser must not read on."""


class PacketMutator:
    """Packets broken byte by byte, drawn from one seeded generator: bits flipped, bytes
    replaced, the packet cut short or followed by more, its remaining length rewritten (wrong,
    huge, five bytes, not minimal), its type or flag nibble changed, or the packet doubled.
    `mutate` names the change it made."""

    KINDS: Final = (
        "bit flip",
        "byte",
        "truncated",
        "extended",
        "length",
        "length",
        "type nibble",
        "flag nibble",
        "doubled",
    )

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def mutate(self, data: bytes) -> tuple[bytes, str]:
        """``data`` (a packet, or packets) changed in one way, and the name of the change."""
        rng, kind = self.rng, self.rng.choice(self.KINDS)
        out = bytearray(data)
        if kind == "bit flip":
            for _ in range(rng.randint(1, 3)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            for _ in range(rng.randint(1, 3)):
                out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == "truncated":
            del out[rng.randrange(1, max(2, len(out))) :]
        elif kind == "extended":
            out += rng.randbytes(rng.choice((1, 2, 7, 64, 1_000)))
        elif kind == "length":
            first, length, body = split(data)
            kind, length = self.length(len(body))
            out = bytearray(bytes([first]) + length + body)
        elif kind == "type nibble":
            out[0] = rng.randrange(16) << 4 | out[0] & 0x0F
        elif kind == "flag nibble":
            out[0] = out[0] & 0xF0 | rng.randrange(16)
        else:
            out += data
        return bytes(out), kind

    def length(self, true: int) -> tuple[str, bytes]:
        """Remaining-length bytes for a body of ``true`` bytes that do not say ``true`` in the
        minimal way, and what they are."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.3:
            return "length off by a little", varint(max(0, true + rng.choice((-2, -1, 1, 2, 100))))
        if roll < 0.45:
            return "length 0", b"\x00"
        if roll < 0.6:
            return "huge length", varint(rng.choice((2**16, 2**21, 2**28 - 1)))
        if roll < 0.8:
            return "five-byte length", rng.choice(FIVE_BYTE_LENGTHS)
        # the right value in more bytes than needed (continuation bits on zero groups)
        minimal = varint(true)
        if len(minimal) == 4:
            return "length", minimal
        padded = bytes(b | 0x80 for b in minimal) + b"\x80" * rng.randint(0, 3 - len(minimal))
        return "length not minimal", padded + b"\x00"


@dataclass(frozen=True)
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def return_code(self) -> int:
        """A CONNACK's return code."""
        return self.body[1] if len(self.body) > 1 else -1

    @property
    def topic(self) -> str:
        """A PUBLISH's topic."""
        size = int.from_bytes(self.body[:2], "big")
        return self.body[2 : 2 + size].decode(errors="replace")

    @property
    def packet_id(self) -> int:
        """A PUBACK's or SUBACK's packet id."""
        return int.from_bytes(self.body[:2], "big")


def parse(data: bytes) -> list[Packet]:
    """The complete packets at the start of ``data`` (an incomplete tail is left out)."""
    packets: list[Packet] = []
    at = 0
    while at < len(data):
        first, length, shift, cursor = data[at], 0, 0, at + 1
        while True:
            if cursor >= len(data):
                return packets
            byte = data[cursor]
            length |= (byte & 0x7F) << shift
            shift, cursor = shift + 7, cursor + 1
            if not byte & 0x80:
                break
        if cursor + length > len(data):
            return packets
        packets.append(Packet(first >> 4, first & 0xF, data[cursor : cursor + length]))
        at = cursor + length
    return packets
