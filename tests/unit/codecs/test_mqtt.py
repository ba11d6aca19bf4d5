"""The MQTT codec on bytes alone: packet splitting, CONNECT/PUBLISH/SUBSCRIBE decoding, encoders."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcloud.codecs.mqtt import (
    PUBACK,
    PUBLISH,
    UNSUBACK,
    MqttProtocolError,
    PacketSplitter,
    UnacceptableProtocol,
    check_fixed_header,
    decode_connect,
    decode_packet_id,
    decode_publish,
    decode_subscribe,
    decode_unsubscribe,
    encode_ack,
    encode_connack,
    encode_publish,
    encode_suback,
    set_dup,
)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _connect_body(
    *,
    name: str = "MQTT",
    level: int = 4,
    flags: int = 0xC2,
    keepalive: int = 60,
    fields: tuple[str, ...] = ("dev", "dev", "secret"),
) -> bytes:
    return (
        _string(name)
        + bytes((level, flags))
        + struct.pack("!H", keepalive)
        + b"".join(map(_string, fields))
    )


def _split_all(data: bytes, max_size: int = 1024) -> list[tuple[int, bytes]]:
    splitter = PacketSplitter(max_size)
    splitter.feed(data)
    packets = []
    while (packet := splitter.next_packet()) is not None:
        packets.append(packet)
    return packets


# -- splitting --------------------------------------------------------------------------------


def test_packets_split_the_same_whatever_the_chunks() -> None:
    stream = encode_publish("dev2app/a", b"x" * 300) + b"\xc0\x00" + encode_publish("t", b"")
    whole = _split_all(stream)
    assert [first for first, _ in whole] == [0x30, 0xC0, 0x30]
    splitter = PacketSplitter(1024)
    byte_by_byte = []
    for index in range(len(stream)):
        splitter.feed(stream[index : index + 1])
        while (packet := splitter.next_packet()) is not None:
            byte_by_byte.append(packet)
    assert byte_by_byte == whole
    assert splitter.buffered == 0


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    splitter = PacketSplitter(1024)
    splitter.feed(b"\x30\x81\x08")  # 1,025 bytes announced, none sent
    with pytest.raises(MqttProtocolError, match="1025 byte packet"):
        splitter.next_packet()


def test_a_remaining_length_of_five_bytes_is_refused() -> None:
    splitter = PacketSplitter(1 << 30)
    splitter.feed(b"\x30\xff\xff\xff\xff")
    with pytest.raises(MqttProtocolError, match="four bytes"):
        splitter.next_packet()


def test_a_partial_packet_waits_for_the_rest() -> None:
    splitter = PacketSplitter(1024)
    splitter.feed(b"\x30\x05\x00\x01")
    assert splitter.next_packet() is None
    assert splitter.first_byte() == 0x30
    splitter.feed(b"ab\x00")
    assert splitter.next_packet() == (0x30, b"\x00\x01ab\x00")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_the_protocol_error(data: bytes) -> None:
    """No input makes the codec raise anything but `MqttProtocolError` (fuzzed)."""
    try:
        packets = _split_all(data, 128)
    except MqttProtocolError:
        return
    for first, body in packets:
        try:
            if first >> 4 == 1:
                decode_connect(body)
                continue
            kind = check_fixed_header(first, len(body))
            if kind == PUBLISH:
                decode_publish(first, body)
            elif kind == 8:
                decode_subscribe(body)
            elif kind == 10:
                decode_unsubscribe(body)
            elif len(body) == 2:
                decode_packet_id(body)
        except MqttProtocolError:
            pass


# -- CONNECT ----------------------------------------------------------------------------------


def test_mqtt_311_and_31_connects_decode() -> None:
    packet = decode_connect(_connect_body(keepalive=120))
    assert (packet.protocol_name, packet.level, packet.keepalive) == ("MQTT", 4, 120)
    assert (packet.client_id, packet.username, packet.password) == ("dev", "dev", "secret")
    assert packet.clean_session is True
    assert packet.will_topic is None
    old = decode_connect(_connect_body(name="MQIsdp", level=3, flags=0xC0))
    assert (old.level, old.clean_session) == (3, False)


def test_a_will_is_decoded_with_its_topic() -> None:
    body = _connect_body(flags=0xC2 | 0x04 | 0x08, fields=("dev", "dev2app/dev", "bye", "dev", "p"))
    packet = decode_connect(body)
    assert (packet.will_topic, packet.will_qos, packet.will_retain) == ("dev2app/dev", 1, False)


@pytest.mark.parametrize(("name", "level"), [("MQTT", 5), ("MQTT", 3), ("MQIsdp", 4)])
def test_another_level_of_a_known_protocol_is_unacceptable(name: str, level: int) -> None:
    with pytest.raises(UnacceptableProtocol):
        decode_connect(_connect_body(name=name, level=level))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(_connect_body(name="HTTP"), "protocol", id="unknown-protocol"),
        pytest.param(_connect_body(flags=0xC3), "reserved", id="reserved-flag"),
        pytest.param(_connect_body(flags=0xE2), "without the will flag", id="will-retain"),
        pytest.param(_connect_body(flags=0xCA), "without the will flag", id="will-qos"),
        pytest.param(
            _connect_body(flags=0xDE, fields=("dev", "t", "m", "dev", "p")), "QoS 3", id="will-qos3"
        ),
        pytest.param(_connect_body(flags=0x42, fields=("dev", "p")), "password", id="no-user"),
        pytest.param(_connect_body(fields=("dev", "dev")), "password missing", id="truncated"),
        pytest.param(_connect_body() + b"x", "after the CONNECT", id="trailing-byte"),
        pytest.param(
            _connect_body(fields=("dev", "dev")) + _string(b"\xff\xfe"), "UTF-8", id="bad-password"
        ),
        pytest.param(_connect_body(fields=("d\0v", "dev", "p")), "NUL", id="nul-client-id"),
        pytest.param(b"\x00", "missing", id="empty"),
    ],
)
def test_malformed_connects_are_protocol_errors(body: bytes, why: str) -> None:
    with pytest.raises(MqttProtocolError, match=why):
        decode_connect(body)


# -- PUBLISH, SUBSCRIBE, fixed headers --------------------------------------------------------


def test_publish_round_trips_at_qos_0_and_1() -> None:
    for qos, packet_id in ((0, 0), (1, 513)):
        ((first, body),) = _split_all(
            encode_publish("app2dev/d/cloud", b"\x01\x02", qos, packet_id)
        )
        message = decode_publish(first, body)
        assert (message.topic, message.payload) == ("app2dev/d/cloud", b"\x01\x02")
        assert (message.qos, message.packet_id, message.dup, message.retain) == (
            qos,
            packet_id,
            False,
            False,
        )
    ((first, _),) = _split_all(set_dup(encode_publish("t", b"", 1, 7)))
    assert first == 0x3A


@pytest.mark.parametrize(
    ("first", "body", "why"),
    [
        pytest.param(0x30, b"\x00", "without topic", id="no-topic"),
        pytest.param(0x30, b"\x00\x05ab", "longer than the packet", id="overrun"),
        pytest.param(0x30, b"\x00\x00x", "empty topic", id="empty-topic"),
        pytest.param(0x30, _string("a/+") + b"x", "wildcard", id="plus"),
        pytest.param(0x30, _string("a/#"), "wildcard", id="hash"),
        pytest.param(0x30, _string("a\0b"), "NUL", id="nul"),
        pytest.param(0x30, _string(b"\xc3\x28"), "UTF-8", id="bad-utf8"),
        pytest.param(0x32, _string("a") + b"\x00\x00x", "packet id 0", id="qos1-id-0"),
        pytest.param(0x32, _string("a") + b"\x00", "packet id", id="qos1-no-id"),
    ],
)
def test_malformed_publishes_are_protocol_errors(first: int, body: bytes, why: str) -> None:
    with pytest.raises(MqttProtocolError, match=why):
        decode_publish(first, body)


@pytest.mark.parametrize(
    ("first", "length", "why"),
    [
        pytest.param(0x36, 5, "QoS 3", id="publish-qos3"),
        pytest.param(0xC0, 2, "2 byte packet of type 12", id="pingreq-body"),
        pytest.param(0x80, 6, "flags 0x0 on packet type 8", id="subscribe-flags"),
        pytest.param(0xA0, 6, "flags 0x0 on packet type 10", id="unsubscribe-flags"),
        pytest.param(0x60, 2, "flags 0x0 on packet type 6", id="pubrel-flags"),
        pytest.param(0x41, 2, "flags 0x1 on packet type 4", id="puback-flags"),
        pytest.param(0x40, 3, "3 byte packet of type 4", id="puback-length"),
        pytest.param(0x10, 12, "type 1", id="second-connect"),
        pytest.param(0x90, 3, "type 9", id="suback"),
        pytest.param(0xF0, 0, "type 15", id="reserved"),
        pytest.param(0x00, 0, "type 0", id="reserved-0"),
    ],
)
def test_fixed_headers_a_client_may_not_send(first: int, length: int, why: str) -> None:
    with pytest.raises(MqttProtocolError, match=why):
        check_fixed_header(first, length)


def test_fixed_headers_a_client_may_send() -> None:
    for first, length in ((0x30, 9), (0x3B, 9), (0x82, 6), (0xA2, 5), (0x62, 2), (0xC0, 0)):
        check_fixed_header(first, length)


def test_subscribe_and_unsubscribe_decode() -> None:
    body = b"\x00\x07" + _string("app2dev/d/#") + b"\x01" + _string("ser2cli_res/d") + b"\x00"
    assert decode_subscribe(body) == (7, [("app2dev/d/#", 1), ("ser2cli_res/d", 0)])
    assert decode_unsubscribe(b"\x00\x08" + _string("a")) == (8, ["a"])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"\x00\x01", "without a topic filter", id="no-filter"),
        pytest.param(b"\x00\x00" + _string("a") + b"\x00", "packet id 0", id="id-0"),
        pytest.param(b"\x00\x01" + _string("a") + b"\x03", "QoS byte", id="qos-3"),
        pytest.param(b"\x00\x01" + _string("a") + b"\x41", "QoS byte", id="reserved-bits"),
        pytest.param(b"\x00\x01" + _string("a"), "requested QoS missing", id="no-qos"),
    ],
)
def test_malformed_subscribes_are_protocol_errors(body: bytes, why: str) -> None:
    with pytest.raises(MqttProtocolError, match=why):
        decode_subscribe(body)


def test_encoders() -> None:
    assert encode_connack(True, 0) == b"\x20\x02\x01\x00"
    assert encode_connack(False, 5) == b"\x20\x02\x00\x05"
    assert encode_ack(PUBACK, 0x1234) == b"\x40\x02\x12\x34"
    assert encode_ack(UNSUBACK, 1) == b"\xb0\x02\x00\x01"
    assert encode_suback(9, [1, 0x80]) == b"\x90\x04\x00\x09\x01\x80"
    big = encode_publish("t", b"x" * 200)
    assert big[:3] == b"\x30\xcb\x01"  # 203 in two length bytes
