"""Byte-level fuzzing of the embedded MQTT device transport, from many connections at once,
while well-behaved devices keep reporting and taking commands.

`SLOTS` raw TCP connections are open at a time, each signing in as a device of its own (so the
corpus never takes its own connections over). A case sends random bytes, a CONNECT broken in
its bytes (`mqtt_wire.PacketMutator`: bits flipped, cut short, extended, a wrong or five-byte
remaining length, another type or flag nibble) or in its fields (protocol name and level,
flags that contradict, identifiers with NUL or bytes that are not UTF-8, strings that overrun),
or a valid CONNECT followed by packets broken either way (PUBLISH with QoS 3, packet id 0,
topics with wildcards, NUL or bytes that are not UTF-8, oversize lengths, packets a client
never sends). Its bytes go in one write, in many tiny writes, or slow-loris: the last packet
left unfinished, dribbled a byte at a time, then nothing.

What must hold: no connection hangs. The server closes it within `CONNECT_TIMEOUT` of its
opening unless a CONNECT was accepted; after an accepted CONNECT with a keep-alive of at most
`LONGEST_KEEPALIVE`, within 1.5 x that keep-alive of the case's last byte; a CONNECT with a
longer keep-alive (or none) must at least be answered. A well-formed CONNECT sent alone is
accepted at once, also right after the same device was dropped for a protocol error.

Meanwhile `HealthyDevices` run with reporters of MQTT 3.1 and 3.1.1 at QoS 0 and 1 (paho):
they report without pause and take up controls sent through ``POST /app/control``; none is
disconnected and every QoS 1 report that got a PUBACK is in the device's history.
``GET /status`` answers within `STATUS_SECONDS` throughout. The server's RSS once the corpus
is done is within `RSS_GROWTH_MIB` of what it was after the first quarter of the cases. Every
fuzzing device is counted offline afterwards, and the log holds no traceback, no error (such
as "Task exception was never retrieved") and no flood.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiomqtt
import httpx
import pytest

from iotcloud.codecs import Frame, P0Codec, encode_frame
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.simulator.device import random_status
from tests.devices import mqtt_port
from tests.reliability import mqtt_wire as wire
from tests.reliability.fuzzing import FuzzPlan, log_flood, log_problems, report
from tests.reliability.healthy import HealthyDevices
from tests.reliability.mqtt_fleet import Device, Fleet, register_fleet, still_online
from tests.server import RunningServer

SLOTS: Final = 64
"""Connections of the corpus open at once."""
THING_SLOTS: Final = 16
"""Of them, those that sign in as data-template devices (the others as Gizwits devices)."""
CONNECT_TIMEOUT: Final = 10.0
"""How long the transport waits for a CONNECT (its default)."""
KEEPALIVES: Final = (1, 2)
"""Keep-alives of the valid CONNECTs of the corpus."""
LONGEST_KEEPALIVE: Final = 4
"""An accepted CONNECT with a longer keep-alive (or 0) is only required to be answered."""
GRACE: Final = 3.0
"""Allowance for a busy machine over every deadline the transport keeps."""
CONNACK_SECONDS: Final = 2.0
"""How soon a valid CONNECT sent alone must be accepted."""
QUIET_SECONDS: Final = 0.5
"""How long an answered connection is watched before the corpus closes it."""
SLOW_PAUSE: Final = 0.4
"""Seconds between the bytes of a slow-loris case."""
CASE_SECONDS: Final = 40.0
"""The longest a case may take, whatever the server does (the deadlines above, added up)."""
STATUS_SECONDS: Final = 2.0
"""The longest ``GET /status`` may take while the corpus runs."""
RSS_GROWTH_MIB: Final = 64
REPORTERS: Final = [
    (aiomqtt.ProtocolVersion.V31, 0),
    (aiomqtt.ProtocolVersion.V311, 0),
    (aiomqtt.ProtocolVersion.V31, 1),
    (aiomqtt.ProtocolVersion.V311, 1),
]


@dataclass
class Case:
    """One connection of the corpus: ``first`` then ``rest``, sent as ``delivery`` says
    (``whole``, ``pieces``: writes of 1-8 bytes, ``slow``: the end dribbled, unfinished)."""

    index: int
    group: str
    """``random bytes``, ``broken CONNECT`` or ``session`` (a valid CONNECT first)."""
    what: list[str]
    first: bytes
    rest: bytes = b""
    delivery: str = "whole"
    valid: bool = False
    """``first`` is a well-formed CONNECT of the device."""
    alone: bool = False
    """``rest`` goes only after the CONNACK (``first`` is valid)."""

    def describe(self) -> str:
        return f"#{self.index} {', '.join(self.what)} ({self.delivery}): {self.first[:120]!r}"


# -- making cases ------------------------------------------------------------------------------

ODD_TOPICS: Final[tuple[str | bytes, ...]] = (
    "",
    "/",
    "#",
    "+",
    "dev2app/+",
    "dev2app/#",
    "a/#/b",
    "a\x00b",
    "$SYS/x",
    b"\xff\xfe",
    b"\xc0\xaf",  # an overlong encoding of "/"
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    "x" * 70_000,
)


def report_frame(rng: random.Random, codec: P0Codec, fleet: Fleet) -> bytes:
    status = random_status(fleet.products.definition, rng)
    return encode_frame(Frame(CMD_REPORT, codec.encode_status(status)))


def session_packet(rng: random.Random, me: Device, payload: bytes) -> tuple[bytes, str]:
    """A packet a device may send once connected (a DISCONNECT now and then)."""
    pid = rng.randint(1, 0xFFFF)
    kind = rng.choice(("publish", "publish", "publish", "subscribe", "unsubscribe", "ping"))
    if kind == "publish":
        qos = rng.choice((0, 1))
        return wire.publish(rng.choice(me.uplinks()), payload, qos=qos, packet_id=pid), kind
    if kind == "subscribe":
        return wire.subscribe(pid, [(f, rng.choice((0, 1))) for f in me.own_filters()]), kind
    if kind == "unsubscribe":
        return wire.unsubscribe(pid, me.own_filters()), kind
    if rng.random() < 0.1:
        return wire.DISCONNECT, "disconnect"
    return wire.PINGREQ, kind


def hostile_packet(rng: random.Random, me: Device, payload: bytes) -> tuple[bytes, str]:
    """A packet wrong in one of its fields."""
    uplink, pid = me.uplinks()[0], rng.randint(1, 0xFFFF)
    kind = rng.choice(HOSTILE_PACKETS)
    if kind == "qos 3":
        flags = rng.choice((0x6, 0x7, 0xE, 0xF))
        return wire.packet(0x30 | flags, wire.text(uplink) + pid.to_bytes(2, "big") + payload), kind
    if kind == "packet id 0":
        return rng.choice(
            (
                wire.publish(uplink, payload, qos=1, packet_id=0),
                wire.subscribe(0, [(me.own_filters()[0], 0)]),
                wire.unsubscribe(0, [me.own_filters()[0]]),
            )
        ), kind
    if kind == "odd topic":
        topic = rng.choice(ODD_TOPICS)
        return wire.publish(topic, payload, qos=rng.choice((0, 1)), packet_id=pid), kind
    if kind == "odd filter":
        return wire.subscribe(pid, [(rng.choice(ODD_TOPICS), rng.choice((0, 1, 2, 3, 0x80)))]), kind
    if kind == "oversize":
        return wire.publish(uplink, b"x" * rng.choice((65_536, 200_000))), kind
    if kind == "oversize length":
        # a header claiming more than any packet may hold, and a little of the body
        return b"\x30" + wire.varint(rng.choice((2**20, 2**28 - 1))) + wire.text(uplink), kind
    if kind == "topic overruns":
        return wire.packet(0x30, b"\xff\xff" + uplink.encode()), kind
    if kind == "empty subscribe":
        return rng.choice((wire.subscribe(pid, []), wire.unsubscribe(pid, []))), kind
    if kind == "pingreq with a body":
        return b"\xc0\x02ab", kind
    if kind == "wrong header flags":
        return rng.choice(
            (
                wire.subscribe(pid, [(me.own_filters()[0], 0)], flags=rng.choice((0, 1, 3, 15))),
                wire.unsubscribe(pid, [me.own_filters()[0]], flags=rng.choice((0, 1, 3))),
                bytes([0xC0 | rng.randint(1, 15), 0]),
                bytes([0xE0 | rng.randint(1, 15), 0]),
            )
        ), kind
    if kind == "server packet":
        first = rng.choice((0x20, 0x90, 0xB0, 0xD0))  # CONNACK, SUBACK, UNSUBACK, PINGRESP
        return wire.packet(first, rng.randbytes(rng.choice((0, 2, 3)))), kind
    if kind == "qos 2 flow":
        return rng.choice(
            (
                wire.publish(uplink, payload, qos=2, packet_id=pid),
                wire.packet(0x62, pid.to_bytes(2, "big")),
                wire.packet(0x50, pid.to_bytes(2, "big")),
                wire.packet(0x70, pid.to_bytes(2, "big")),
            )
        ), kind
    if kind == "reserved type":
        return wire.packet(rng.choice((0x00, 0xF0)), rng.randbytes(rng.randint(0, 8))), kind
    return me.connect(keepalive=rng.choice(KEEPALIVES)), kind  # a second CONNECT


HOSTILE_PACKETS: Final = (
    "qos 3",
    "packet id 0",
    "odd topic",
    "odd topic",
    "odd filter",
    "odd filter",
    "oversize",
    "oversize length",
    "topic overruns",
    "empty subscribe",
    "pingreq with a body",
    "wrong header flags",
    "server packet",
    "qos 2 flow",
    "reserved type",
    "second CONNECT",
)


def hostile_connect(rng: random.Random, me: Device) -> tuple[bytes, str]:
    """``me``'s CONNECT wrong in one of its fields."""
    keepalive = rng.choice(KEEPALIVES)
    kind = rng.choice(HOSTILE_CONNECTS)
    if kind == "protocol name":
        name = rng.choice((b"MQTT\xff", b"", b"MQTT\x00", b"\xc0\x80", b"mqtt", b"M" * 300))
        return me.connect(name=name, keepalive=keepalive), kind
    if kind == "protocol level":
        return me.connect(level=rng.choice((0, 1, 2, 5, 255)), keepalive=keepalive), kind
    if kind == "flags":
        flags = rng.choice((0xE2, 0xCA, 0xD2, 0xC3, 0x42, 0xDE, 0xC6, rng.randrange(256)))
        return me.connect(flags=flags, keepalive=keepalive), kind
    if kind == "client id":
        client_id = rng.choice((b"", b"\xff\xfe\xfd", b"a\x00b", b"\xed\xa0\x80", b"x" * 65_535))
        return wire.connect(client_id, me.username, me.password_for(me.username)), kind
    if kind == "user name":
        username = rng.choice((b"\xff" + me.username.encode(), me.username.encode() + b"\x00"))
        return wire.connect(me.client_id, username, me.password_for(me.username)), kind
    if kind == "will":
        will = (rng.choice(ODD_TOPICS), rng.randbytes(rng.randint(0, 20)), rng.randrange(4))
        return me.connect(will=will, keepalive=keepalive), kind
    if kind == "string overruns":
        good = me.connect(keepalive=keepalive)
        first, length, body = wire.split(good)
        at = 2 + int.from_bytes(body[:2], "big") + 4  # the client id's length
        body = body[:at] + rng.choice((b"\xff\xff", b"\x01\x00")) + body[at + 2 :]
        return bytes([first]) + length + body, kind
    if kind == "long keep-alive":
        return me.connect(keepalive=rng.choice((0, 60, 65_535))), kind
    return me.connect(password=None, keepalive=keepalive), kind  # no password


HOSTILE_CONNECTS: Final = (
    "protocol name",
    "protocol level",
    "flags",
    "flags",
    "client id",
    "user name",
    "will",
    "string overruns",
    "long keep-alive",
)


def make_case(plan: FuzzPlan, index: int, me: Device, fleet: Fleet, codec: P0Codec) -> Case:
    """Case ``index`` of the corpus, played by ``me`` (the same changes for a seed, whichever
    device plays it)."""
    rng = plan.rng(f"mqtt-transport/{index}")
    mutator = wire.PacketMutator(rng)
    delivery = rng.choices(("whole", "pieces", "slow"), (0.6, 0.25, 0.15))[0]
    roll = rng.random()
    if roll < 0.12:
        data = rng.randbytes(rng.choice((1, 2, 5, 40, 300, 5_000)))
        if rng.random() < 0.5:
            data = b"\x10" + data  # the first byte of a CONNECT, for a parser to read on
        return Case(index, "random bytes", ["random bytes"], data, delivery=delivery)
    connect = me.connect(keepalive=rng.choice(KEEPALIVES))
    if roll < 0.4:
        broken, kind = mutator.mutate(connect) if rng.random() < 0.5 else hostile_connect(rng, me)
        case = Case(index, "broken CONNECT", [f"CONNECT {kind}"], broken, delivery=delivery)
    else:
        alone = rng.random() < 0.7
        case = Case(
            index, "session", ["CONNECT"], connect, delivery=delivery, valid=True, alone=alone
        )
    rest = []
    for _ in range(rng.randint(0, 6) if case.valid else rng.choice((0, 0, 1, 2))):
        payload = report_frame(rng, codec, fleet) if rng.random() < 0.7 else rng.randbytes(20)
        packet, kind = session_packet(rng, me, payload)
        roll = rng.random()
        if roll < 0.35:
            packet, change = mutator.mutate(packet)
            kind = f"{kind} {change}"
        elif roll < 0.65:
            packet, kind = hostile_packet(rng, me, payload)
        rest.append(packet)
        case.what.append(kind)
    case.rest = b"".join(rest)
    return case


# -- playing cases -----------------------------------------------------------------------------


@dataclass
class Connection:
    """What one case's connection saw."""

    opened: float
    received: bytearray = field(default_factory=bytearray)
    closed_at: float | None = None
    last_write: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def packets(self) -> list[wire.Packet]:
        return wire.parse(bytes(self.received))

    def connack(self) -> int | None:
        """The CONNACK's return code (None: no CONNACK yet)."""
        for p in self.packets():
            if p.kind == wire.CONNACK:
                return p.return_code
        return None

    async def wait(self, until: float, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds, the connection is closed or the monotonic ``until``."""
        while not done() and self.closed_at is None:
            left = until - time.monotonic()
            if left <= 0:
                return
            self.changed.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.changed.wait()


async def read_all(reader: asyncio.StreamReader, seen: Connection) -> None:
    try:
        while chunk := await reader.read(65_536):
            seen.received += chunk
            seen.changed.set()
    except OSError:
        pass  # reset by the server: closed too
    seen.closed_at = time.monotonic()
    seen.changed.set()


async def deliver(
    writer: asyncio.StreamWriter, data: bytes, delivery: str, rng: random.Random, seen: Connection
) -> None:
    """Send ``data`` as ``delivery`` says (see `Case`), stopping when the server closes."""
    if delivery == "whole":
        chunks, pause = [data], 0.0
    elif delivery == "pieces":
        chunks, at, pause = [], 0, 0.002
        while at < len(data):  # 400 tiny writes at most, then the rest
            step = rng.randint(1, 8) if len(chunks) < 400 else len(data)
            chunks.append(data[at : at + step])
            at += step
    else:
        cut = rng.randrange(len(data)) if data else 0
        dribble = data[cut : cut + min(rng.randint(2, 8), len(data) - cut - 1)]
        chunks, pause = [data[:cut], *(bytes([b]) for b in dribble)], SLOW_PAUSE
    for n, chunk in enumerate(chunks):
        if seen.closed_at is not None:
            return
        if n and pause:
            await asyncio.sleep(pause)
        if not chunk:
            continue
        try:
            writer.write(chunk)
            await writer.drain()
        except OSError:
            return
        seen.last_write = time.monotonic()


async def run_case(port: int, case: Case) -> list[str]:
    """Play ``case``; the problems found."""
    try:
        async with asyncio.timeout(CASE_SECONDS):
            return await play(port, case)
    except TimeoutError:
        return [f"{case.describe()} -> not over after {CASE_SECONDS:g} s"]


async def play(port: int, case: Case) -> list[str]:
    rng = random.Random(case.index)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return [f"{case.describe()} -> cannot connect: {exc!r}"]
    seen = Connection(time.monotonic())
    reading = asyncio.create_task(read_all(reader, seen))
    problems: list[str] = []
    try:
        if case.alone:
            await deliver(writer, case.first, "whole", rng, seen)
            await seen.wait(time.monotonic() + CONNACK_SECONDS, lambda: seen.connack() is not None)
            if seen.connack() != 0:
                problems.append(f"{case.describe()} -> a valid CONNECT got {seen.connack()}")
            await deliver(writer, case.rest, case.delivery, rng, seen)
        else:
            await deliver(writer, case.first + case.rest, case.delivery, rng, seen)
        problems += await ended(case, seen)
    finally:
        writer.close()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    return problems


async def ended(case: Case, seen: Connection) -> list[str]:
    """Wait for the server to close the connection (or answer it) within the transport's
    deadlines; a problem if it did not."""
    await seen.wait(seen.opened + CONNECT_TIMEOUT + GRACE, lambda: seen.connack() is not None)
    code = seen.connack()
    if seen.closed_at is not None:
        return []
    if code is None:
        return [f"{case.describe()} -> neither answered nor closed in {CONNECT_TIMEOUT + GRACE} s"]
    keepalive = wire.connect_keepalive(case.first)
    if code == 0 and (keepalive is None or not 0 < keepalive <= LONGEST_KEEPALIVE):
        await asyncio.sleep(QUIET_SECONDS)  # answered, and may stay
        return []
    limit = 1.5 * (keepalive or 0) + GRACE if code == 0 else GRACE
    await seen.wait(max(seen.last_write, time.monotonic()) + limit, lambda: False)
    if seen.closed_at is None:
        after = f"CONNACK {code}, keep-alive {keepalive}"
        return [f"{case.describe()} -> still open {limit:g} s after its last byte ({after})"]
    return []


# -- watching the server -----------------------------------------------------------------------


class ServerWatch:
    """Samples ``GET /status`` (every 0.25 s, failing past `STATUS_SECONDS`) and the server
    process's RSS while the corpus runs."""

    def __init__(self, server: RunningServer) -> None:
        assert server.process is not None
        self.status_path = Path(f"/proc/{server.process.pid}/status")
        self.base_url = server.base_url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.rss: list[tuple[int, int]] = []
        """``(cases done, RSS in KiB)`` samples."""
        self.done = 0

    def rss_kib(self) -> int:
        for line in self.status_path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=STATUS_SECONDS) as http:
            while True:
                started = time.monotonic()
                try:
                    answer = await http.get("/status")
                    if answer.status_code != 200:
                        self.failures.append(f"GET /status: {answer.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"GET /status: {exc!r} after {STATUS_SECONDS} s")
                self.latencies.append(time.monotonic() - started)
                try:
                    self.rss.append((self.done, self.rss_kib()))
                except OSError:
                    self.failures.append("the server process is gone")
                    return
                await asyncio.sleep(0.25)

    def rss_growth(self, cases: int) -> tuple[int, int]:
        """RSS (KiB) once a quarter of the ``cases`` were done, and now."""
        warm = [kib for done, kib in self.rss if done >= cases // 4] or [self.rss_kib()]
        return warm[0], self.rss_kib()


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fleet(fuzz_server: RunningServer) -> Fleet:
    """A device of its own for each slot."""
    return await register_fleet(fuzz_server, SLOTS - THING_SLOTS, THING_SLOTS)


async def test_transport_survives_byte_fuzzing_from_many_connections(
    fuzz_plan: FuzzPlan, fuzz_server: RunningServer, fleet: Fleet
) -> None:
    count, port = fuzz_plan.count("mqtt-transport"), mqtt_port(fuzz_server)
    print(f"MQTT transport fuzz: {count} cases; repeat with {fuzz_plan.reproduce()}")
    appid = fuzz_server.create_app("MQTT transport fuzz")["appid"]
    codec = P0Codec(fleet.products.definition)
    failures: list[str] = []
    kinds: Counter[str] = Counter()
    log_before = len(fuzz_server.log().splitlines())
    watch = ServerWatch(fuzz_server)
    watching = asyncio.create_task(watch.run())
    started = time.monotonic()
    try:
        async with HealthyDevices(fuzz_server, appid, reporters=REPORTERS) as healthy:
            pending = iter(range(count))

            async def slot(me: Device) -> None:
                for index in pending:
                    case = make_case(fuzz_plan, index, me, fleet, codec)
                    kinds.update([case.group, case.delivery])
                    failures.extend(await run_case(port, case))
                    watch.done += 1

            await asyncio.gather(*map(slot, fleet.devices))
            elapsed = time.monotonic() - started
            try:
                await healthy.assert_healthy()
            except AssertionError as exc:
                failures.append(str(exc))
            reports = {r.name: r.sent for r in healthy.reporters}
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    failures += await still_online(fuzz_server, fleet.devices)
    failures += watch.failures
    warm, final = watch.rss_growth(count)
    if final - warm > RSS_GROWTH_MIB * 1024:
        failures.append(f"server RSS grew from {warm // 1024} MiB to {final // 1024} MiB")
    log = fuzz_server.log()
    failures += [f"server log: {line}" for line in log_problems(log)]
    flood = log_flood(log.splitlines()[log_before:], count)
    if flood is not None:
        failures.append(flood)
    slowest = max(watch.latencies, default=0.0)
    print(
        f"{count} cases in {elapsed:.1f} s from {SLOTS} connections; {dict(kinds)}; "
        f"GET /status slowest {slowest * 1000:.0f} ms; "
        f"RSS {warm // 1024} -> {final // 1024} MiB; reports {reports}"
    )
    assert not failures, report(fuzz_plan, "MQTT transport", count, failures)


async def dribbled(port: int, data: bytes) -> tuple[float | None, int | None]:
    """Send ``data`` a byte every `SLOW_PAUSE` seconds until the server closes the connection
    (or `CONNECT_TIMEOUT` and `GRACE` have passed): how long after opening it was closed (None:
    it was not), and the CONNACK code it got (None: no CONNACK)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen = Connection(time.monotonic())
    reading = asyncio.create_task(read_all(reader, seen))
    until = seen.opened + CONNECT_TIMEOUT + GRACE
    try:
        for byte in data:
            if seen.closed_at is not None or time.monotonic() > until:
                break
            with suppress(OSError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.sleep(SLOW_PAUSE)
    finally:
        writer.close()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    closed = None if seen.closed_at is None else seen.closed_at - seen.opened
    return closed, seen.connack()


async def test_a_connect_sent_too_slowly_is_closed_at_the_connect_timeout(
    fuzz_server: RunningServer, fleet: Fleet
) -> None:
    """Slow-loris: CONNECTs that keep coming a byte at a time, too slowly to be whole within
    the connect timeout, are closed by then although bytes keep arriving, without a CONNACK;
    the devices they named then sign in at once."""
    port = mqtt_port(fuzz_server)
    gizwits, thing = fleet.gizwits[0], fleet.things[0]
    assert gizwits.level == 3, "a Gizwits device of MQTT 3.1"
    cases = {
        "a Gizwits device's CONNECT (MQTT 3.1)": gizwits.connect(keepalive=60),
        "a data-template device's CONNECT (MQTT 3.1.1)": thing.connect(keepalive=60),
        "a CONNECT header claiming 65,000 bytes": b"\x10" + wire.varint(65_000) + bytes(100),
    }
    assert all(len(data) * SLOW_PAUSE > CONNECT_TIMEOUT + GRACE for data in cases.values())
    results = await asyncio.gather(*(dribbled(port, data) for data in cases.values()))
    for what, (closed, connack) in zip(cases, results, strict=True):
        assert connack is None, f"{what}: CONNACK {connack}"
        assert closed is not None, f"{what}: open {CONNECT_TIMEOUT + GRACE:g} s after opening"
        assert closed <= CONNECT_TIMEOUT + GRACE, f"{what}: closed after {closed:.1f} s"
    for me in (gizwits, thing):
        connect = me.connect(keepalive=1)
        again = Case(-1, "session", ["CONNECT at once"], connect, valid=True, alone=True)
        assert await run_case(port, again) == []
