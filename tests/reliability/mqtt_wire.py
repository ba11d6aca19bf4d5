"""MQTT 3.1/3.1.1 packets as bytes, written here without an MQTT library so that any of their
fields can be wrong, and a reader of what a broker sends back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CONNECT, CONNACK, PUBLISH, SUBACK, PINGRESP = 1, 2, 3, 9, 13
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
    will: tuple[str, bytes, int] | None = None,
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


def subscribe(packet_id: int, filters: list[tuple[str, int]], flags: int = 0x2) -> bytes:
    body = packet_id.to_bytes(2, "big")
    body += b"".join(text(topic) + bytes([qos & 0xFF]) for topic, qos in filters)
    return packet(0x80 | flags, body)


def unsubscribe(packet_id: int, topics: list[str], flags: int = 0x2) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(text(topic) for topic in topics)
    return packet(0xA0 | flags, body)


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
        """A SUBACK's packet id."""
        return int.from_bytes(self.body[:2], "big")


def parse(data: bytes) -> list[Packet]:
    """The complete packets at the start of ``data`` (an incomplete tail is left out)."""
    packets, at = [], 0
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
