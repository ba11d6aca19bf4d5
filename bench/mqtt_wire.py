"""MQTT 3.1 on the wire for the benchmarks' lean clients: pre-encoded packets and a reader that
splits a byte stream into packets.

The load processes (`bench.mqtt_load`, `bench.control_load`, `bench.scheduler_devices`) speak
MQTT on raw asyncio sockets instead of through aiomqtt/paho, which cost far more CPU per
connection and per message: a packet is built once and written many times, and a received
packet is looked at only as far as the benchmark needs (its type, a CONNACK's return code, a
QoS 0 PUBLISH's topic and payload).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from iotcloud.codecs import encode_varint
from iotcloud.domain.thing_auth import device_password

CONNACK: Final = 2
PUBLISH: Final = 3
SUBACK: Final = 9
PINGREQ: Final = b"\xc0\x00"


def encode_string(text: str) -> bytes:
    """An MQTT UTF-8 string: 2-byte big-endian length, then the bytes."""
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(
    client_id: str, password: str, *, keepalive: int, username: str | None = None
) -> bytes:
    """MQTT 3.1 (``MQIsdp``, level 3) CONNECT, clean session; the user name is the client id
    unless given."""
    flags = 0x80 | 0x40 | 0x02
    body = encode_string("MQIsdp") + bytes((3, flags)) + keepalive.to_bytes(2, "big")
    body += encode_string(client_id) + encode_string(username or client_id)
    body += encode_string(password)
    return b"\x10" + encode_varint(len(body)) + body


THING_SDK_APPID: Final = "12010126"
THING_EXPIRY: Final = 4_102_444_800
"""The expiry in the benchmark devices' user names: 2100-01-01, in Unix seconds."""


def thing_connect_packet(product_id: str, name: str, psk: str, *, keepalive: int) -> bytes:
    """The MQTT 3.1 CONNECT of a data-template (Tencent) device, signed as the stock SDKs sign
    it: client id ``{PID}{NAME}``, user name ``{PID}{NAME};{sdkappid};{connid};{expiry}``,
    password ``hex(HMAC-SHA1(base64decode(psk), username));hmacsha1``."""
    client_id = product_id + name
    username = f"{client_id};{THING_SDK_APPID};bench;{THING_EXPIRY}"
    return connect_packet(
        client_id, device_password(psk, username), keepalive=keepalive, username=username
    )


def publish_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (no packet identifier)."""
    body = encode_string(topic) + payload
    return b"\x30" + encode_varint(len(body)) + body


def subscribe_packet(topic_filter: str, packet_id: int = 1) -> bytes:
    """SUBSCRIBE to one filter at QoS 0."""
    body = packet_id.to_bytes(2, "big") + encode_string(topic_filter) + b"\x00"
    return b"\x82" + encode_varint(len(body)) + body


class PacketReader:
    """Splits what a connection receives into MQTT packets.

    `feed` appends the bytes to ``buffer`` and yields ``(type, start, end)`` for every complete
    packet: its type (the high nibble of the first byte) and where its body (after the remaining
    length) lies in ``buffer``. The bytes of the packets yielded are dropped when the iterator
    is exhausted, so iterate it to the end (no ``break``) and read ``buffer`` only inside the
    loop; an incomplete packet at the end stays for the next `feed`.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int, int]]:
        buffer = self.buffer
        buffer += data
        index = 0
        while len(buffer) - index >= 2:
            kind = buffer[index] >> 4
            length, multiplier, cursor = 0, 1, index + 1
            while cursor < len(buffer):
                byte = buffer[cursor]
                cursor += 1
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            else:
                break  # the remaining length itself is incomplete
            end = cursor + length
            if end > len(buffer):
                break
            yield kind, cursor, end
            index = end
        del buffer[:index]


def publish_parts(buffer: bytearray, start: int, end: int) -> tuple[str, int]:
    """A QoS 0 PUBLISH body at ``buffer[start:end]``: its topic and where its payload starts
    (the payload runs to ``end``)."""
    topic_length = int.from_bytes(buffer[start : start + 2], "big")
    payload = start + 2 + topic_length  # QoS 0: no packet identifier
    return buffer[start + 2 : payload].decode(), payload
