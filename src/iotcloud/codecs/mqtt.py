"""MQTT 3.1 and 3.1.1, the server's side of a device connection, without I/O.

The embedded device transport (`iotcloud.gateway.embedded`) feeds the bytes a device sends to
`PacketSplitter` and decodes each packet it returns with the functions below; it writes what the
encoders return. Nothing here touches a socket, so the rules are tested and fuzzed on bytes.

What a device may send is checked strictly, because a device that breaks the protocol is closed
(MQTT 3.1.1 §4.8: "the Server MUST close the Network Connection"):

* the fixed header: the packet types a client sends, with the flags MQTT fixes for them
  (SUBSCRIBE, UNSUBSCRIBE and PUBREL carry ``0b0010`` in 3.1 as in 3.1.1; GAgent sends
  ``0x82``), a remaining length in at most four bytes, at most ``max_size`` bytes, and the exact
  length of the fixed-size packets (PUBACK 2, PINGREQ 0...);
* CONNECT: protocol ``MQIsdp`` level 3 or ``MQTT`` level 4 (another level of a known name is
  answered with CONNACK 1, anything else closed), no reserved flag, no will QoS or will retain
  without the will flag, no will QoS 3, no password flag without the user name flag in 3.1.1,
  every declared field present and nothing after the last one;
* PUBLISH: QoS 0-2, a packet id other than 0 at QoS 1 and 2, a non-empty UTF-8 topic with no
  wildcard and no NUL;
* SUBSCRIBE and UNSUBSCRIBE: a packet id other than 0, at least one filter, well-formed UTF-8,
  requested QoS 0-2 with the reserved bits clear.

Errors are `MqttProtocolError`; its message names what was wrong, for the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

CONNECT_BYTE: Final = CONNECT << 4
PROTOCOL_LEVELS: Final = {("MQIsdp", 3): 3, ("MQTT", 4): 4}
"""(protocol name, level) -> the level, for the two versions devices speak."""
ACCEPTED, UNACCEPTABLE_PROTOCOL, IDENTIFIER_REJECTED, SERVER_UNAVAILABLE = 0, 1, 2, 3
SUBACK_FAILURE: Final = 0x80

# type -> (fixed-header flags, remaining length or None for any) of what a client may send after
# CONNECT besides PUBLISH (whose flags carry DUP, QoS and RETAIN).
CLIENT_PACKETS: Final[dict[int, tuple[int, int | None]]] = {
    PUBACK: (0, 2),
    PUBREC: (0, 2),
    PUBREL: (2, 2),
    PUBCOMP: (0, 2),
    SUBSCRIBE: (2, None),
    UNSUBSCRIBE: (2, None),
    PINGREQ: (0, 0),
    DISCONNECT: (0, 0),
}
_MAX_LENGTH_BYTES: Final = 4

PINGRESP_PACKET: Final = bytes((PINGRESP << 4, 0))


class MqttProtocolError(ValueError):
    """The device broke the protocol; the connection must be closed."""


class UnacceptableProtocol(MqttProtocolError):
    """A CONNECT of a protocol level this server does not speak (answered with CONNACK 1)."""


@dataclass(frozen=True, slots=True)
class Connect:
    """A decoded CONNECT."""

    protocol_name: str
    level: int
    clean_session: bool
    keepalive: int
    client_id: str
    username: str | None
    password: str | None
    will_topic: str | None
    will_qos: int
    will_retain: bool


@dataclass(frozen=True, slots=True)
class Publish:
    """A decoded PUBLISH (``packet_id`` 0 at QoS 0)."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    retain: bool
    dup: bool


class PacketSplitter:
    """Cuts the bytes of one connection into packets: ``(first byte, body)``.

    `feed` the bytes as they arrive, then call `next_packet` until it returns None. A length over
    ``max_size`` is refused as soon as its last byte arrives, so no more than ``max_size`` bytes
    of one packet are ever held.
    """

    __slots__ = ("_data", "_offset", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._data: bytes | bytearray = b""
        self._offset = 0

    def feed(self, data: bytes) -> None:
        if self._offset >= len(self._data):
            self._data, self._offset = data, 0
        elif isinstance(self._data, bytearray):
            if self._offset:
                del self._data[: self._offset]
                self._offset = 0
            self._data += data
        else:
            self._data = bytearray(memoryview(self._data)[self._offset :])
            self._data += data
            self._offset = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a packet."""
        return len(self._data) - self._offset

    def first_byte(self) -> int | None:
        """The first byte of the next packet, if it has arrived."""
        return self._data[self._offset] if self._offset < len(self._data) else None

    def next_packet(self) -> tuple[int, bytes] | None:
        """The next whole packet, or None until more bytes arrive (`MqttProtocolError` for a
        malformed or oversized remaining length)."""
        data, start = self._data, self._offset
        size = len(data)
        index = start + 1
        length, shift = 0, 0
        while True:
            if index >= size:
                if index - start - 1 >= _MAX_LENGTH_BYTES:
                    raise MqttProtocolError("remaining length longer than four bytes")
                return None
            byte = data[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 7 * _MAX_LENGTH_BYTES:
                raise MqttProtocolError("remaining length longer than four bytes")
        if length > self.max_size:
            raise MqttProtocolError(f"{length} byte packet (the limit is {self.max_size})")
        end = index + length
        if end > size:
            return None
        self._offset = end
        if end == size:
            self._data, self._offset = b"", 0
        return data[start], bytes(data[index:end])


def check_fixed_header(first: int, length: int) -> int:
    """The packet type of a packet a client sent after CONNECT; `MqttProtocolError` when its
    type, flags or length are not allowed (see the module docstring)."""
    kind = first >> 4
    if kind == PUBLISH:
        if (first >> 1) & 3 == 3:
            raise MqttProtocolError("PUBLISH with QoS 3")
        return kind
    rule = CLIENT_PACKETS.get(kind)
    if rule is None:
        raise MqttProtocolError(f"packet type {kind} from a client after CONNECT")
    flags, size = rule
    if first & 0x0F != flags:
        raise MqttProtocolError(f"flags {first & 0x0F:#x} on packet type {kind}")
    if size is not None and length != size:
        raise MqttProtocolError(f"{length} byte packet of type {kind}")
    return kind


class _Reader:
    __slots__ = ("body", "index")

    def __init__(self, body: bytes) -> None:
        self.body, self.index = body, 0

    def left(self) -> int:
        return len(self.body) - self.index

    def u8(self, what: str) -> int:
        if self.index >= len(self.body):
            raise MqttProtocolError(f"{what} missing")
        self.index += 1
        return self.body[self.index - 1]

    def u16(self, what: str) -> int:
        if self.index + 2 > len(self.body):
            raise MqttProtocolError(f"{what} missing")
        self.index += 2
        return int.from_bytes(self.body[self.index - 2 : self.index], "big")

    def binary(self, what: str) -> bytes:
        size = self.u16(what)
        if self.index + size > len(self.body):
            raise MqttProtocolError(f"{what} longer than the packet")
        self.index += size
        return self.body[self.index - size : self.index]

    def text(self, what: str) -> str:
        raw = self.binary(what)
        try:
            value = raw.decode()
        except UnicodeDecodeError as exc:
            raise MqttProtocolError(f"{what} is not UTF-8") from exc
        if "\0" in value:
            raise MqttProtocolError(f"{what} contains NUL")
        return value


def decode_connect(body: bytes) -> Connect:
    """The CONNECT in ``body`` (the packet after its fixed header ``0x10``).

    `UnacceptableProtocol` for a known protocol name at another level, `MqttProtocolError` for
    anything else that is not a well-formed 3.1 or 3.1.1 CONNECT.
    """
    reader = _Reader(body)
    name_bytes = reader.binary("protocol name")
    name = name_bytes.decode("latin-1")
    level = reader.u8("protocol level")
    if (name, level) not in PROTOCOL_LEVELS:
        if name in ("MQTT", "MQIsdp"):
            raise UnacceptableProtocol(f"protocol {name} level {level}")
        raise MqttProtocolError(f"protocol {name!r} level {level}")
    flags = reader.u8("connect flags")
    keepalive = reader.u16("keep-alive")
    if flags & 0x01:
        raise MqttProtocolError("reserved CONNECT flag set")
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise MqttProtocolError("will QoS or will retain set without the will flag")
    if will_qos == 3:
        raise MqttProtocolError("will QoS 3")
    has_username, has_password = bool(flags & 0x80), bool(flags & 0x40)
    if has_password and not has_username and level == 4:
        raise MqttProtocolError("password without a user name")
    client_id = reader.text("client id")
    will_topic = None
    if will_flag:
        will_topic = reader.text("will topic")
        reader.binary("will message")
    username = reader.text("user name") if has_username else None
    password = None
    if has_password:
        raw = reader.binary("password")
        try:
            password = raw.decode()
        except UnicodeDecodeError as exc:
            raise MqttProtocolError("password is not UTF-8") from exc
    if reader.left():
        raise MqttProtocolError(f"{reader.left()} bytes after the CONNECT's last field")
    return Connect(
        name,
        level,
        bool(flags & 0x02),
        keepalive,
        client_id,
        username,
        password,
        will_topic,
        will_qos,
        will_retain,
    )


def decode_publish(first: int, body: bytes) -> Publish:
    """The PUBLISH in ``body`` with fixed-header byte ``first`` (QoS already checked < 3)."""
    qos = (first >> 1) & 3
    if len(body) < 2:
        raise MqttProtocolError("PUBLISH without topic")
    size = (body[0] << 8) | body[1]
    end = 2 + size
    if end > len(body):
        raise MqttProtocolError("PUBLISH topic longer than the packet")
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError as exc:
        raise MqttProtocolError("PUBLISH topic is not UTF-8") from exc
    if not topic:
        raise MqttProtocolError("PUBLISH to an empty topic")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise MqttProtocolError("wildcard or NUL in a PUBLISH topic")
    packet_id = 0
    if qos:
        if end + 2 > len(body):
            raise MqttProtocolError("PUBLISH without packet id")
        packet_id = (body[end] << 8) | body[end + 1]
        if not packet_id:
            raise MqttProtocolError("PUBLISH with packet id 0")
        end += 2
    return Publish(topic, body[end:], qos, packet_id, bool(first & 1), bool(first & 8))


def decode_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """``(packet id, [(filter, requested QoS)])`` of a SUBSCRIBE."""
    reader = _Reader(body)
    packet_id = _packet_id(reader, "SUBSCRIBE")
    requests: list[tuple[str, int]] = []
    while reader.left():
        topic_filter = reader.text("topic filter")
        qos = reader.u8("requested QoS")
        if qos > 2:
            raise MqttProtocolError(f"requested QoS byte {qos:#x}")
        requests.append((topic_filter, qos))
    if not requests:
        raise MqttProtocolError("SUBSCRIBE without a topic filter")
    return packet_id, requests


def decode_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    """``(packet id, [filter])`` of an UNSUBSCRIBE."""
    reader = _Reader(body)
    packet_id = _packet_id(reader, "UNSUBSCRIBE")
    filters: list[str] = []
    while reader.left():
        filters.append(reader.text("topic filter"))
    if not filters:
        raise MqttProtocolError("UNSUBSCRIBE without a topic filter")
    return packet_id, filters


def decode_packet_id(body: bytes) -> int:
    """The packet id of a PUBACK, PUBREC, PUBREL or PUBCOMP (length already checked)."""
    return (body[0] << 8) | body[1]


def _packet_id(reader: _Reader, what: str) -> int:
    packet_id = reader.u16(f"{what} packet id")
    if not packet_id:
        raise MqttProtocolError(f"{what} with packet id 0")
    return packet_id


# -- encoders ---------------------------------------------------------------------------------


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def encode_connack(session_present: bool, code: int) -> bytes:
    return bytes((CONNACK << 4, 2, 1 if session_present else 0, code))


def encode_publish(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, *, dup: bool = False
) -> bytes:
    """A PUBLISH (never RETAIN: this server keeps no retained messages)."""
    name = topic.encode()
    first = (PUBLISH << 4) | (qos << 1) | (8 if dup else 0)
    length = 2 + len(name) + len(payload) + (2 if qos else 0)
    head = bytes((first,)) + _remaining_length(length) + len(name).to_bytes(2, "big") + name
    if qos:
        head += packet_id.to_bytes(2, "big")
    return head + payload


def set_dup(packet: bytes) -> bytes:
    """``packet`` (a QoS 1 or 2 PUBLISH) with its DUP flag set, for a re-delivery."""
    return bytes((packet[0] | 8,)) + packet[1:]


def encode_ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBCOMP (flags 0) or UNSUBACK of ``packet_id``."""
    return bytes((kind << 4, 2, packet_id >> 8, packet_id & 0xFF))


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    return (
        bytes((SUBACK << 4,))
        + _remaining_length(2 + len(codes))
        + packet_id.to_bytes(2, "big")
        + bytes(codes)
    )
