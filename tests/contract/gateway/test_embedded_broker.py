"""The embedded device transport against real MQTT clients: aiomqtt (paho) and a raw-socket device.

Each test runs its own broker on a free port with an in-memory device registry, and checks what a
device or the gateway would notice: CONNACK codes, delivered and dropped messages, SUBACK codes,
presence events and closed connections.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from iotcloud.gateway.broker import (
    AclAction,
    AuthRefusal,
    DevicePrincipal,
    DisconnectReason,
)
from iotcloud.gateway.embedded import EmbeddedBroker

PK = "6f3074fe43894547a4f1314bd7e3ae0b"
OTHER_PK = "0123456789abcdef0123456789abcdef"
A = "gKufzxZwYeyd3Skbsb6mza"
B = "hLvgayAxZfze4Tlctc7nzb"
DISABLED = "iMwhbzByAgaf5Umdud8oac"
PASSCODES = {A: "ABCDEFGHIJ", B: "KLMNOPQRST", DISABLED: "UVWXYABCDE"}
PROTOCOLS = [
    pytest.param(aiomqtt.ProtocolVersion.V31, id="mqtt3.1"),
    pytest.param(aiomqtt.ProtocolVersion.V311, id="mqtt3.1.1"),
]
WAIT = 5.0


class Registry:
    """An in-memory device registry: A and B of product PK are enabled, DISABLED is not."""

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal | AuthRefusal | None:
        self.calls += 1
        if username not in PASSCODES or PASSCODES[username] != password:
            return None
        if username == DISABLED:
            return AuthRefusal.NOT_AUTHORIZED
        return DevicePrincipal(did=username, product_key=PK)


class Recorder:
    """`BrokerEvents` that records every callback as ``(kind, did, detail...)``."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()
        self.fail_publish = False

    def _add(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        self._changed.set()

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        self._add(("connect", principal.did, client_id, keepalive, peer))

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        self._add(("disconnect", principal.did, reason))

    async def on_publish(self, principal: DevicePrincipal, topic: str, payload: bytes) -> None:
        if self.fail_publish:
            raise RuntimeError("gateway is broken")
        self._add(("publish", principal.did, topic, payload))

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        self._add(("denied", principal.did, action, topic))

    def of(self, kind: str, did: str | None = None) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind and (did is None or e[1] == did)]

    async def wait_for(
        self, kind: str, did: str | None = None, count: int = 1
    ) -> list[tuple[Any, ...]]:
        """Wait until at least ``count`` events of ``kind`` (for ``did``) were recorded."""
        async with asyncio.timeout(WAIT):
            while len(found := self.of(kind, did)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


@asynccontextmanager
async def running_broker(**options: Any) -> AsyncIterator[tuple[EmbeddedBroker, Recorder]]:
    recorder = Recorder()
    async with EmbeddedBroker("127.0.0.1", 0, Registry(), recorder, **options) as broker:
        yield broker, recorder


def device(
    broker: EmbeddedBroker,
    did: str,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
    **options: Any,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier=did,
        username=did,
        password=PASSCODES[did],
        protocol=protocol,
        **options,
    )


async def suback_code(client: aiomqtt.Client, topic_filter: str) -> int:
    """The SUBACK return code for one filter: the granted QoS, or 0x80 for a failure."""
    (code,) = await client.subscribe(topic_filter)
    return code.value if isinstance(code, ReasonCode) else code


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(client.messages))


# -- a raw-socket device, for exact bytes and for going silent -------------------------------


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes((first, *encoded)) + body


def connect_packet(
    client_id: str,
    username: str | None,
    password: str | None,
    *,
    name: str = "MQTT",
    level: int = 4,
    keepalive: int = 60,
    clean: bool = True,
    will_topic: str | None = None,
    will_retain: bool = False,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    payload = _string(client_id)
    if will_topic is not None:
        flags |= 0x24 if will_retain else 0x04
        payload += _string(will_topic) + _string("bye")
    payload += _string(username) if username is not None else b""
    payload += _string(password) if password is not None else b""
    header = _string(name) + bytes((level, flags)) + struct.pack("!H", keepalive)
    return _packet(0x10, header + payload)


class RawDevice:
    """A device speaking MQTT bytes directly over one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self) -> tuple[int, bytes]:
        """The next packet as (first byte, body)."""
        async with asyncio.timeout(WAIT):
            first = (await self.reader.readexactly(1))[0]
            length, multiplier = 0, 1
            while True:
                byte = (await self.reader.readexactly(1))[0]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            return first, await self.reader.readexactly(length)

    async def subscribe(self, topic_filter: str, packet_id: int = 1, qos: int = 0) -> int:
        request = struct.pack("!H", packet_id) + _string(topic_filter) + bytes((qos,))
        await self.send(_packet(0x82, request))
        first, body = await self.read_packet()
        assert first == 0x90
        return body[2]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.send(_packet(0x31 if retain else 0x30, _string(topic) + payload))

    async def ping(self) -> None:
        await self.send(b"\xc0\x00")
        assert await self.read_packet() == (0xD0, b"")

    async def closed_by_broker(self) -> bool:
        """Wait for the broker to close the connection (EOF or reset)."""
        async with asyncio.timeout(WAIT):
            try:
                while await self.reader.read(1024):
                    pass
            except ConnectionError:
                pass
        return True


@asynccontextmanager
async def raw_device(
    broker: EmbeddedBroker, packet: bytes
) -> AsyncIterator[tuple[RawDevice, bytes]]:
    """Open a connection, send ``packet`` (a CONNECT) and yield the device and the CONNACK bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    raw = RawDevice(reader, writer)
    try:
        await raw.send(packet)
        async with asyncio.timeout(WAIT):
            connack = await reader.read(4)
        yield raw, connack
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def raw_connect(did: str, **options: Any) -> bytes:
    return connect_packet(did, did, PASSCODES[did], **options)


# -- no leaks ---------------------------------------------------------------------------------


HAVE_PROC = os.path.isdir("/proc/self/fd")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> set[threading.Thread]:
    # The session loop's default executor (name resolution) is shared by all tests and reused.
    return {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Every test closes the threads and sockets it opened (measured inside the running loop)."""
    threads = _threads()
    fds = _open_fds() if HAVE_PROC else None
    yield
    assert _threads() <= threads
    if fds is not None:
        assert _open_fds() <= fds


# -- connecting -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_device_connects_with_mqtt_31_and_311(protocol: aiomqtt.ProtocolVersion) -> None:
    async with running_broker() as (broker, events):
        async with device(broker, A, protocol, keepalive=120):
            (connect,) = await events.wait_for("connect", A)
            assert connect[2:4] == (A, 120)
            assert connect[4].startswith("127.0.0.1:")
            assert broker.connected_dids() == {A}
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.CLEAN
        assert broker.connected_dids() == set()
        assert broker.stats.connects == 1


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        pytest.param(connect_packet(A, A, "WRONGWRONG"), 4, id="wrong-passcode"),
        pytest.param(connect_packet("nobody", "nobody", "ABCDEFGHIJ"), 4, id="unknown-did"),
        pytest.param(raw_connect(DISABLED), 5, id="disabled-device"),
        pytest.param(connect_packet(A, B, PASSCODES[B]), 2, id="client-id-not-username"),
        pytest.param(connect_packet("", A, PASSCODES[A]), 2, id="empty-client-id"),
        pytest.param(connect_packet(A, None, None), 4, id="anonymous"),
        pytest.param(connect_packet(A, A, None), 4, id="no-password"),
        pytest.param(raw_connect(A, level=5), 1, id="mqtt5"),
        pytest.param(raw_connect(A, name="MQIsdp", level=4), 1, id="mqisdp-level-4"),
        pytest.param(raw_connect(A, will_topic=f"app2dev/{B}/x"), 5, id="will-on-foreign-topic"),
    ],
)
async def test_refused_connect_gets_the_connack_code_and_is_closed(
    packet: bytes, code: int
) -> None:
    async with running_broker() as (broker, events), raw_device(broker, packet) as (raw, connack):
        assert connack == bytes((0x20, 0x02, 0x00, code))
        assert await raw.closed_by_broker()
        assert events.events == []
        assert broker.connected_dids() == set()
        assert broker.stats.connects == 0


async def test_not_mqtt_is_closed_without_connack() -> None:
    request = b"GET / HTTP/1.1\r\n\r\n"
    async with running_broker() as (broker, _), raw_device(broker, request) as (raw, reply):
        assert reply == b""
        assert await raw.closed_by_broker()
        assert broker.stats.rejected_connections == 1


async def test_refusals_are_counted() -> None:
    async with running_broker() as (broker, _):
        async with raw_device(broker, connect_packet(A, A, "WRONGWRONG")) as (_, connack):
            assert connack[3] == 4
        async with raw_device(broker, raw_connect(DISABLED)) as (_, connack):
            assert connack[3] == 5
        assert broker.stats.auth_failures == 2


async def test_silent_socket_is_closed_after_the_connect_timeout() -> None:
    async with running_broker(connect_timeout=0.2) as (broker, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            assert await RawDevice(reader, writer).closed_by_broker()
        finally:
            writer.close()
        assert broker.stats.rejected_connections == 1


async def test_connections_over_capacity_are_closed() -> None:
    async with (
        running_broker(max_connections=1) as (broker, _),
        raw_device(broker, raw_connect(A)) as (_, connack),
    ):
        assert connack[3] == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            assert await RawDevice(reader, writer).closed_by_broker()
        finally:
            writer.close()
        assert broker.stats.rejected_connections == 1


async def test_mqtt31_connack_never_claims_a_session() -> None:
    """MQTT 3.1 has no session-present flag: a resumed session still gets a zero first byte."""
    async with running_broker() as (broker, events):
        for expected in (0, 1):
            async with raw_device(broker, raw_connect(A, clean=False)) as (raw, connack):
                assert connack == bytes((0x20, 0x02, expected, 0x00))
                await raw.send(b"\xe0\x00")
                assert await raw.closed_by_broker()
            await events.wait_for("disconnect", A, count=expected + 1)
        for _ in range(2):
            packet = raw_connect(A, clean=False, name="MQIsdp", level=3)
            async with raw_device(broker, packet) as (raw, connack):
                assert connack == bytes((0x20, 0x02, 0x00, 0x00))


# -- publishing -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_device_publish_on_its_topics_reaches_the_gateway(
    protocol: aiomqtt.ProtocolVersion,
) -> None:
    async with running_broker() as (broker, events), device(broker, A, protocol) as client:
        await client.publish(f"dev2app/{A}", b"\x00\x00\x00\x03\x03\x00\x00\x91")
        await client.publish(f"dev2app/{A}/app-client-7", b"reply")
        await client.publish("cli2ser_req", b"\x00\x00\x00\x03\x02\x0f")
        published = await events.wait_for("publish", A, count=3)
        assert published == [
            ("publish", A, f"dev2app/{A}", b"\x00\x00\x00\x03\x03\x00\x00\x91"),
            ("publish", A, f"dev2app/{A}/app-client-7", b"reply"),
            ("publish", A, "cli2ser_req", b"\x00\x00\x00\x03\x02\x0f"),
        ]
        assert broker.stats.messages_in == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_forbidden_publish_is_dropped_and_the_device_stays_connected(
    protocol: aiomqtt.ProtocolVersion,
) -> None:
    async with (
        running_broker() as (broker, events),
        device(broker, A, protocol) as attacker,
        device(broker, B) as victim,
    ):
        await victim.subscribe(f"app2dev/{B}/#")
        forbidden = [f"app2dev/{B}/evil", f"dev2app/{B}", f"dev2app/{A}/x/y", "ser2cli_noti/" + PK]
        for topic in forbidden:
            await attacker.publish(topic, b"forged")
        denied = await events.wait_for("denied", A, count=len(forbidden))
        assert [(e[2], e[3]) for e in denied] == [(AclAction.PUBLISH, t) for t in forbidden]
        assert broker.stats.denied_publish == len(forbidden)

        await broker.publish(f"app2dev/{B}/cloud", b"marker")
        message = await next_message(victim)
        assert (message.topic.value, message.payload) == (f"app2dev/{B}/cloud", b"marker")
        assert broker.stats.messages_out == 1

        await attacker.publish(f"dev2app/{A}", b"still here")
        assert await events.wait_for("publish", A) == [
            ("publish", A, f"dev2app/{A}", b"still here")
        ]
        assert events.of("publish", B) == []
        assert events.of("disconnect") == []


async def test_device_retained_messages_and_wills_are_not_kept() -> None:
    """A device cannot make the broker store messages: RETAIN is cleared, also on its will."""
    async with running_broker() as (broker, events):
        connect = raw_connect(A, will_topic=f"dev2app/{A}", will_retain=True)
        async with raw_device(broker, connect) as (raw, connack):
            assert connack[3] == 0
            await raw.publish(f"dev2app/{A}", b"report", retain=True)
            await events.wait_for("publish", A)
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.LOST
        async with raw_device(broker, raw_connect(A)) as (raw, connack):
            assert connack[3] == 0
            assert await raw.subscribe(f"app2dev/{A}/#") == 0
            await raw.ping()  # nothing retained arrives before the PINGRESP
        with pytest.raises(ValueError, match="retained"):
            await broker.publish(f"app2dev/{A}/cloud", b"x", retain=True)


async def test_oversized_packet_closes_the_connection() -> None:
    async with (
        running_broker(max_packet_size=1024) as (broker, events),
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        await raw.publish(f"dev2app/{A}", b"x" * 2048)
        assert await raw.closed_by_broker()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.PROTOCOL_ERROR
        assert events.of("publish") == []


async def test_second_connect_is_a_protocol_error() -> None:
    async with (
        running_broker() as (broker, events),
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        await raw.send(raw_connect(A))
        assert await raw.closed_by_broker()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.PROTOCOL_ERROR


def _with_connect_flags(packet: bytes, flags: int) -> bytes:
    """A CONNECT built by `connect_packet` ("MQTT" protocol name) with its flags replaced."""
    at = 2 + 6 + 1  # fixed header (one length byte), protocol name, level
    return packet[:at] + bytes((flags,)) + packet[at + 1 :]


@pytest.mark.parametrize(
    ("flags", "will_topic"),
    [
        pytest.param(0xE2, None, id="will-retain-without-will"),
        pytest.param(0xCA, None, id="will-qos-1-without-will"),
        pytest.param(0xD2, None, id="will-qos-2-without-will"),
        pytest.param(0xDE, f"dev2app/{A}", id="will-qos-3"),
    ],
)
async def test_a_connect_with_will_flags_that_contradict_is_closed_without_connack(
    flags: int, will_topic: str | None
) -> None:
    packet = _with_connect_flags(raw_connect(A, will_topic=will_topic), flags)
    async with running_broker() as (broker, events), raw_device(broker, packet) as (raw, reply):
        assert reply == b""
        assert await raw.closed_by_broker()
        assert events.events == []
    async with running_broker() as (broker, _), raw_device(broker, raw_connect(A)) as (_, ok):
        assert ok == bytes((0x20, 0x02, 0x00, 0x00))  # the same CONNECT with its own flags


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"\x36\x05\x00\x01a\x00\x01", id="publish-qos-3"),
        pytest.param(b"\xc0\x02ab", id="pingreq-with-a-body"),
        pytest.param(b"\x80\x06\x00\x01\x00\x01a\x00", id="subscribe-flags-0"),
        pytest.param(b"\xa0\x05\x00\x01\x00\x01a", id="unsubscribe-flags-0"),
        pytest.param(b"\x41\x02\x00\x01", id="puback-flags-1"),
        pytest.param(b"\x40\x03\x00\x01\x00", id="puback-of-3-bytes"),
        pytest.param(b"\x90\x03\x00\x01\x00", id="suback-from-a-client"),
    ],
)
async def test_a_malformed_packet_closes_and_the_device_can_reconnect_at_once(
    packet: bytes,
) -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A)) as (raw, connack):
            assert connack[3] == 0
            await raw.send(packet)
            assert await raw.closed_by_broker()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.PROTOCOL_ERROR
        async with asyncio.timeout(2):  # not after a takeover timeout
            async with raw_device(broker, raw_connect(A)) as (raw, connack):
                assert connack[3] == 0
                await raw.ping()


async def test_a_malformed_packet_sent_with_the_connect_ends_the_session() -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A) + b"\xc0\x02ab") as (raw, connack):
            assert await raw.closed_by_broker()
        await events.wait_for("disconnect", A)
        assert broker.connected_dids() == set()
        async with asyncio.timeout(2):
            async with raw_device(broker, raw_connect(A)) as (raw, connack):
                assert connack[3] == 0


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param(f"dev2app/{A}/+", id="wildcard"),
        pytest.param("$SYS/broker", id="dollar"),
        pytest.param("", id="empty"),
    ],
)
async def test_publish_to_an_invalid_topic_closes_and_the_device_can_come_back(
    topic: str,
) -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A)) as (raw, _):
            assert await raw.subscribe(f"app2dev/{A}/#") == 0
            await raw.publish(topic, b"bad")
            assert await raw.closed_by_broker()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.PROTOCOL_ERROR
        async with raw_device(broker, raw_connect(A)) as (raw, connack):
            assert connack[3] == 0
            assert await raw.subscribe(f"app2dev/{A}/#") == 0
            await broker.publish(f"app2dev/{A}/cloud", b"welcome back")
            first, body = await raw.read_packet()
            assert first == 0x30
            assert body == _string(f"app2dev/{A}/cloud") + b"welcome back"


async def test_failing_gateway_callback_does_not_affect_the_device() -> None:
    async with running_broker() as (broker, events), device(broker, A) as client:
        events.fail_publish = True
        await client.publish(f"dev2app/{A}", b"lost")
        await client.subscribe(f"app2dev/{A}/#")
        await broker.publish(f"app2dev/{A}/cloud", b"ok")
        assert (await next_message(client)).payload == b"ok"
        events.fail_publish = False
        await client.publish(f"dev2app/{A}", b"seen")
        assert await events.wait_for("publish", A) == [("publish", A, f"dev2app/{A}", b"seen")]


# -- subscribing and receiving ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscriptions_beyond_the_device_are_refused(
    protocol: aiomqtt.ProtocolVersion,
) -> None:
    allowed = [f"ser2cli_noti/{PK}", f"ser2cli_res/{A}", f"app2dev/{A}/#", f"app2dev/{A}/+"]
    refused = [
        "#",
        "+/+",
        f"app2dev/{B}/#",
        "app2dev/+/#",
        f"ser2cli_res/{B}",
        f"ser2cli_noti/{OTHER_PK}",
        "ser2cli_noti/+",
        f"dev2app/{A}",
        "$SYS/#",
    ]
    async with running_broker() as (broker, events), device(broker, A, protocol) as client:
        for topic_filter in allowed:
            assert await suback_code(client, topic_filter) == 0, topic_filter
        for topic_filter in refused:
            assert await suback_code(client, topic_filter) == 0x80, topic_filter
        denied = await events.wait_for("denied", A, count=len(refused))
        assert [e[3] for e in denied] == refused
        assert broker.stats.denied_subscribe == len(refused)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_gateway_publish_reaches_the_subscribed_device(
    protocol: aiomqtt.ProtocolVersion,
) -> None:
    async with (
        running_broker() as (broker, _),
        device(broker, A, protocol) as a,
        device(broker, B) as b,
    ):
        await a.subscribe(f"ser2cli_noti/{PK}")
        await a.subscribe(f"app2dev/{A}/#")
        await b.subscribe(f"app2dev/{B}/#")
        await broker.publish(f"app2dev/{A}/cloud", b"\x00\x00\x00\x03\x05\x00\x00\x90\x01")
        message = await next_message(a)
        assert message.topic.value == f"app2dev/{A}/cloud"
        assert message.payload == b"\x00\x00\x00\x03\x05\x00\x00\x90\x01"
        await broker.publish(f"app2dev/{B}/cloud", b"for b")
        assert (await next_message(b)).payload == b"for b"
        await broker.publish(f"ser2cli_noti/{PK}", b"notice")
        assert (await next_message(a)).payload == b"notice"
        assert broker.stats.messages_out == 3
        with pytest.raises(ValueError, match="topic"):
            await broker.publish("app2dev/+/cloud", b"x")


async def test_overlapping_subscriptions_get_one_copy() -> None:
    async with running_broker() as (broker, _), device(broker, A) as client:
        await client.subscribe(f"app2dev/{A}/#")
        await client.subscribe(f"app2dev/{A}/+")
        await broker.publish(f"app2dev/{A}/cloud", b"one")
        await broker.publish(f"app2dev/{A}/cloud", b"two")
        assert [(await next_message(client)).payload for _ in range(2)] == [b"one", b"two"]


async def test_offline_persistent_session_receives_queued_message_on_return() -> None:
    """A QoS 1 message for a device away with clean session 0 waits for it."""
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A, clean=False)) as (raw, _):
            assert await raw.subscribe(f"app2dev/{A}/#", qos=1) == 1
            await raw.send(b"\xe0\x00")
        await events.wait_for("disconnect", A)
        await broker.publish(f"app2dev/{A}/cloud", b"while you were away", qos=1)
        async with raw_device(broker, raw_connect(A, clean=False)) as (raw, connack):
            assert connack == b"\x20\x02\x01\x00"
            first, body = await raw.read_packet()
            assert (first >> 4, (first >> 1) & 3) == (3, 1)
            topic = _string(f"app2dev/{A}/cloud")
            assert body[: len(topic)] == topic
            assert body[len(topic) + 2 :] == b"while you were away"
            await raw.send(b"\x40\x02" + body[len(topic) : len(topic) + 2])


# -- presence ---------------------------------------------------------------------------------


async def test_silent_device_is_disconnected_after_one_and_a_half_keepalives() -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A, keepalive=1)) as (raw, connack):
            assert connack[3] == 0
            await events.wait_for("connect", A)
            assert await raw.closed_by_broker()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.KEEPALIVE_TIMEOUT
        assert broker.connected_dids() == set()


async def test_dribbling_bytes_of_a_packet_does_not_count_as_keep_alive() -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A, keepalive=1)) as (raw, connack):
            assert connack[3] == 0
            partial = _packet(0x30, _string(f"dev2app/{A}") + b"x" * 100)
            for byte in partial[:8]:  # one byte every 0.4 s: never a whole packet
                with suppress(ConnectionError):
                    await raw.send(bytes((byte,)))
                await asyncio.sleep(0.4)
                if events.of("disconnect", A):
                    break
            assert await raw.closed_by_broker()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.KEEPALIVE_TIMEOUT


async def test_pinging_device_stays_connected() -> None:
    async with (
        running_broker() as (broker, events),
        raw_device(broker, raw_connect(A, keepalive=1, name="MQIsdp", level=3)) as (raw, _),
    ):
        for _ in range(5):
            await asyncio.sleep(0.4)
            await raw.ping()
        assert events.of("disconnect") == []
        assert broker.connected_dids() == {A}


async def test_disconnect_device_closes_its_connection() -> None:
    async with (
        running_broker() as (broker, events),
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        await events.wait_for("connect", A)
        assert await broker.disconnect_device(A) is True
        assert broker.connected_dids() == set()
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.KICKED
        assert await raw.closed_by_broker()
        assert await broker.disconnect_device(A) is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_second_connection_with_the_same_id_takes_over(
    protocol: aiomqtt.ProtocolVersion,
) -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A)) as (first, _):
            await events.wait_for("connect", A)
            async with device(broker, A, protocol) as second:
                assert await first.closed_by_broker()
                (kicked,) = await events.wait_for("disconnect", A)
                assert kicked[2] == DisconnectReason.TAKEOVER
                await events.wait_for("connect", A, count=2)
                assert broker.connected_dids() == {A}
                await second.subscribe(f"app2dev/{A}/#")
                await broker.publish(f"app2dev/{A}/cloud", b"to the new one")
                assert (await next_message(second)).payload == b"to the new one"
        disconnects = await events.wait_for("disconnect", A, count=2)
        assert [e[2] for e in disconnects] == [DisconnectReason.TAKEOVER, DisconnectReason.CLEAN]
        kinds = [e[0] for e in events.events if e[0] in ("connect", "disconnect")]
        assert kinds == ["connect", "disconnect", "connect", "disconnect"]


async def test_stopping_the_broker_closes_every_connection() -> None:
    events = Recorder()
    async with AsyncExitStack() as devices:
        async with EmbeddedBroker("127.0.0.1", 0, Registry(), events) as broker:
            raws = [
                await devices.enter_async_context(raw_device(broker, raw_connect(did)))
                for did in (A, B)
            ]
            await events.wait_for("connect", count=2)
        for raw, _ in raws:
            assert await raw.closed_by_broker()
        assert sorted((e[1], e[2]) for e in events.of("disconnect")) == [
            (A, DisconnectReason.SHUTDOWN),
            (B, DisconnectReason.SHUTDOWN),
        ]


# -- acknowledgement after storage, backpressure, QoS 2, sessions -----------------------------


class StoringRecorder(Recorder):
    """`BrokerEvents` whose ``on_publish`` hands back a future the test completes: the
    "batch committed" the transport waits for before a PUBACK."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[asyncio.Future[None]] = []

    async def on_publish(  # type: ignore[override]
        self, principal: DevicePrincipal, topic: str, payload: bytes
    ) -> asyncio.Future[None]:
        await super().on_publish(principal, topic, payload)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stored.append(future)
        return future


def _publish_qos(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    return _packet(0x30 | qos << 1, _string(topic) + struct.pack("!H", packet_id) + payload)


async def _until(condition: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.01)


async def _nothing_arrives(raw: RawDevice, seconds: float = 0.3) -> bool:
    with suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await raw.reader.read(1)
            return False
    return True


async def test_a_qos1_report_is_acknowledged_only_once_stored() -> None:
    events = StoringRecorder()
    async with (
        EmbeddedBroker("127.0.0.1", 0, Registry(), events) as broker,
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        await raw.send(_publish_qos(f"dev2app/{A}", b"report", 1, 42))
        await events.wait_for("publish", A)
        assert await _nothing_arrives(raw)  # not stored yet: no PUBACK
        events.stored[0].set_result(None)
        assert await raw.read_packet() == (0x40, b"\x00\x2a")


async def test_a_qos1_report_that_could_not_be_stored_is_not_acknowledged() -> None:
    events = StoringRecorder()
    async with (
        EmbeddedBroker("127.0.0.1", 0, Registry(), events) as broker,
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        await raw.send(_publish_qos(f"dev2app/{A}", b"report", 1, 7))
        await events.wait_for("publish", A)
        events.stored[0].set_exception(ConnectionError("database down"))
        assert await raw.closed_by_broker()  # no PUBACK: the device sends it again
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.SERVER_ERROR


async def test_a_qos2_report_is_taken_once_and_completed() -> None:
    async with (
        running_broker() as (broker, events),
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        for _ in range(2):  # the second is a re-send of the same packet id
            await raw.send(_publish_qos(f"dev2app/{A}", b"once", 2, 9))
            assert await raw.read_packet() == (0x50, b"\x00\x09")  # PUBREC
        await raw.send(b"\x62\x02\x00\x09")  # PUBREL
        assert await raw.read_packet() == (0x70, b"\x00\x09")  # PUBCOMP
        await raw.ping()
        assert events.of("publish", A) == [("publish", A, f"dev2app/{A}", b"once")]


async def test_reads_pause_while_ingestion_is_behind_and_reports_are_shed_past_the_bound() -> None:
    backlog = [0]
    async with (
        running_broker(backlog=lambda: backlog[0], pause_above=10, shed_above=20) as (
            broker,
            events,
        ),
        raw_device(broker, raw_connect(A)) as (raw, _),
    ):
        backlog[0] = 15  # behind: what is read is taken, then reading stops
        await raw.publish(f"dev2app/{A}", b"taken")
        await events.wait_for("publish", A)
        assert broker.stats.paused_reads == 1
        await raw.send(b"\xc0\x00")
        assert await _nothing_arrives(raw)  # the PINGREQ waits in the socket
        backlog[0] = 3  # caught up: reading resumes
        assert await raw.read_packet() == (0xD0, b"")
        backlog[0] = 25  # past the bound: QoS 0 reports are dropped at the edge
        await raw.publish(f"dev2app/{A}", b"shed")
        await _until(lambda: broker.stats.shed == 1)
        backlog[0] = 0
        await raw.ping()
        assert [e[3] for e in events.of("publish", A)] == [b"taken"]
        backlog[0] = 45  # twice the bound: a QoS 1 report is refused and the device closed
        await raw.send(_publish_qos(f"dev2app/{A}", b"refused", 1, 3))
        assert await raw.closed_by_broker()
        assert broker.stats.shed == 2
        (disconnect,) = await events.wait_for("disconnect", A)
        assert disconnect[2] == DisconnectReason.SERVER_ERROR


async def test_a_returning_persistent_session_gets_unacknowledged_messages_again() -> None:
    async with running_broker() as (broker, events):
        async with raw_device(broker, raw_connect(A, clean=False)) as (raw, _):
            assert await raw.subscribe(f"app2dev/{A}/#", qos=1) == 1
            await broker.publish(f"app2dev/{A}/cloud", b"unacknowledged", qos=1)
            first, body = await raw.read_packet()
            assert first == 0x32  # not acknowledged before the connection drops
        await events.wait_for("disconnect", A)
        async with raw_device(broker, raw_connect(A, clean=False)) as (raw, connack):
            assert connack == b"\x20\x02\x01\x00"
            again, body_again = await raw.read_packet()
            assert (again, body_again) == (0x3A, body)  # the same message, DUP set
            await raw.send(b"\x40\x02" + body[len(_string(f"app2dev/{A}/cloud")) :][:2])
            await raw.ping()
        async with raw_device(broker, raw_connect(A, clean=True)) as (raw, connack):
            assert connack == b"\x20\x02\x00\x00"  # a clean session forgets it all
            await broker.publish(f"app2dev/{A}/cloud", b"not subscribed", qos=1)
            assert await _nothing_arrives(raw)


async def test_unsubscribed_filters_receive_nothing() -> None:
    async with running_broker() as (broker, _), device(broker, A) as client:
        await client.subscribe(f"app2dev/{A}/#")
        await client.unsubscribe(f"app2dev/{A}/#")
        await broker.publish(f"app2dev/{A}/cloud", b"gone")
        await client.subscribe(f"ser2cli_res/{A}")
        await broker.publish(f"ser2cli_res/{A}", b"here")
        assert (await next_message(client)).payload == b"here"
