"""The MQTT fuzz corpus: malformed CONNECTs, and after a valid CONNECT malformed PUBLISH,
SUBSCRIBE and other packets, from Gizwits devices (did and passcode, ``dev2app/{did}``) and
data-template devices (``$thing`` topics, JSON payloads), several connections at once.

Every case runs on a raw TCP connection (`mqtt_wire`), so any field can be wrong. What must
hold: a CONNECT with wrong credentials, an unknown protocol or a reserved flag is never
accepted (the well-behaved device it impersonates stays connected); a valid CONNECT is always
accepted; a SUBSCRIBE to another device's topics is refused (0x80) and no message on anything
but the device's own topics ever arrives. Meanwhile `HealthyDevices` keep working. Afterwards
every fuzzing device is counted offline (its connections are all closed) and still connects,
and the server's log holds no crash and no flood.
"""

from __future__ import annotations

import asyncio
import json
import random
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

from iotcloud.codecs import Frame, P0Codec, encode_frame
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.simulator.device import random_status
from tests.devices import mqtt_port
from tests.reliability import mqtt_wire as wire
from tests.reliability.fuzzing import FuzzPlan, Mutator, log_flood, log_problems, report
from tests.reliability.healthy import HealthyDevices
from tests.reliability.mqtt_fleet import (
    Device,
    Fleet,
    gizwits_device,
    register_fleet,
    still_online,
    thing_device,
)
from tests.reliability.scene import Products
from tests.server import RunningServer

WORKERS: Final = 10
"""Connections at once."""
DEVICES: Final = 12
"""Fuzzing devices of each kind (each plays one case at a time)."""
CONNACK_SECONDS: Final = 10.0
"""A device reconnecting waits for the end of its previous session (5 s at most)."""
QUIET_SECONDS: Final = 0.5
"""How long a case waits for the broker after its last packet (a PINGRESP ends it sooner)."""
REFUSED: Final = 0x80
VALID_LEVELS: Final = {("MQTT", 4), ("MQIsdp", 3)}


def foreign_filters(victim: Device) -> list[str]:
    """Filters no fuzzing device may subscribe to: the victim's topics and wildcards."""
    return [
        "#",
        "+/+",
        "+/#",
        "app2dev/+/#",
        "app2dev/#",
        "dev2app/#",
        "$SYS/#",
        "$thing/#",
        f"app2dev/{victim.did}/#",
        f"dev2app/{victim.did}",
        f"ser2cli_res/{victim.did}",
        *[topic.replace("/up/", "/down/") for topic in victim.uplinks()],
        *victim.uplinks(),
        "$thing/down/property/+/+",
    ]


@dataclass
class Case:
    """One connection's bytes: ``first`` (a CONNECT or not), then, once a valid CONNECT is
    accepted, ``after`` (a PINGREQ is added to learn when the broker is through)."""

    index: int
    what: str
    first: bytes
    valid_connect: bool = False
    must_refuse: bool = False
    after: list[bytes] = field(default_factory=list)
    refused_ids: set[int] = field(default_factory=set)
    """SUBSCRIBE packet ids whose every filter must be refused."""

    def describe(self) -> str:
        shown = b"".join([self.first, *self.after])
        return f"#{self.index} {self.what}: {shown[:200]!r}"


# -- payloads ----------------------------------------------------------------------------------


class Payloads:
    """Uplink payloads to mutate: P0 frames for Gizwits devices, JSON for data-template ones."""

    def __init__(
        self, rng: random.Random, mutator: Mutator, products: Products, codec: P0Codec
    ) -> None:
        self.rng = rng
        self.mutator = mutator
        self.products = products
        self.codec = codec

    def frame(self) -> bytes:
        rng = self.rng
        status = random_status(self.products.definition, rng)
        frame = encode_frame(Frame(CMD_REPORT, self.codec.encode_status(status)))
        roll = rng.random()
        if roll < 0.2:
            return frame
        if roll < 0.45:
            data = bytearray(frame)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            return bytes(data)
        if roll < 0.6:
            return frame[: rng.randrange(len(frame))]
        if roll < 0.7:
            cmd = rng.randrange(0x10000)
            sn = rng.randrange(2**32) if cmd in (0x93, 0x94) else None
            return encode_frame(Frame(cmd, rng.randbytes(rng.randint(0, 40)), sn=sn))
        if roll < 0.8:
            return b"\x00\x00\x00\x03" + wire.varint(rng.choice((0, 1, 2**21, 2**28 - 1)))
        if roll < 0.95:
            return rng.randbytes(rng.randint(0, 200))
        return frame + rng.randbytes(rng.choice((1_000, 30_000)))

    def thing_json(self) -> bytes:
        rng, mutator = self.rng, self.mutator
        template = rng.choice(THING_MESSAGES)
        roll = rng.random()
        if roll < 0.55:
            return mutator.json_text(mutator.mutate(template)).encode("utf-8", "surrogatepass")
        if roll < 0.7:
            return mutator.deep_inside(template).encode()
        if roll < 0.8:
            text = json.dumps(template)
            return text[: rng.randrange(len(text))].encode()
        if roll < 0.85:
            return mutator.deep_text().encode()
        if roll < 0.92:
            return rng.randbytes(rng.randint(0, 100))
        if roll < 0.96:
            return json.dumps(template).encode()
        return json.dumps({**template, "pad": "x" * 50_000}).encode()


THING_MESSAGES: Final[list[dict[str, Any]]] = [
    {
        "method": "report",
        "clientToken": "t-1",
        "timestamp": 1_700_000_000,
        "params": {"power_switch": 1, "brightness": 50, "color": 1, "name": "lamp"},
    },
    {"method": "get_status", "clientToken": "t-2", "type": "report", "showmeta": 0},
    {
        "method": "event_post",
        "clientToken": "t-3",
        "version": "1.0",
        "eventId": "status_report",
        "type": "info",
        "timestamp": 1_700_000_000_000,
        "params": {"status": 1, "message": "ok"},
    },
    {
        "method": "events_post",
        "clientToken": "t-4",
        "events": [{"eventId": "low_voltage", "type": "alert", "params": {"voltage": 1.5}}],
    },
    {"method": "control_reply", "clientToken": "t-5", "code": 0, "status": "ok"},
    {"method": "action_reply", "clientToken": "t-6", "code": 0, "response": {"result": 1}},
    {"method": "report_info", "clientToken": "t-7", "params": {"module_hardinfo": "x"}},
    {"method": "clear_control", "clientToken": "t-8"},
]


# -- making cases ------------------------------------------------------------------------------


def connect_case(
    index: int, rng: random.Random, mutator: Mutator, me: Device, victim: Device
) -> Case:
    """A CONNECT that is wrong in one way (or not a CONNECT at all)."""
    kind = rng.choice(CONNECT_KINDS)
    case = Case(index, f"CONNECT {kind}", b"", must_refuse=True)
    if kind == "protocol":
        name = rng.choice(("MQTT", "MQIsdp", "mqtt", "MQTTT", "", "M" * 300, "MQTT\x00", "Ω"))
        level = rng.choice((0, 1, 2, 3, 4, 5, 6, 255))
        case.first = me.connect(name=name, level=level)
        case.must_refuse = (name, level) not in VALID_LEVELS
    elif kind == "reserved flag":
        flags = 0x80 | 0x40 | 0x02 | 0x01
        case.first = me.connect(flags=flags)
    elif kind == "no credentials":
        case.first = wire.connect(me.client_id, rng.choice((None, me.username)), None)
    elif kind == "wrong password":
        case.first = wire.connect(me.client_id, me.username, mutator.text())
    elif kind == "impersonation":
        username = victim.username
        case.first = wire.connect(victim.client_id, username, rng.choice(("x", me.password)))
    elif kind == "client id is not the user":
        case.first = wire.connect(mutator.text(), me.username, me.password_for(me.username))
    elif kind == "will on a foreign topic":
        will = (rng.choice(foreign_filters(victim)).replace("#", "x").replace("+", "x"), b"w", 0)
        case.first = me.connect(will=will)
    elif kind == "lying length":
        good = me.connect()
        body = good[2:] if good[1] < 0x80 else good[3:]
        length = rng.choice((0, 1, len(body) - 1, len(body) + 5, 2**28 - 1, 2**21))
        case.first = wire.packet(0x10, body, length)
        case.must_refuse = False  # a longer length may still hold a whole, valid CONNECT
    elif kind == "five-byte length":
        case.first = b"\x10\xff\xff\xff\xff\x7f" + me.connect()[2:]
    elif kind == "truncated":
        good = me.connect()
        case.first = good[: rng.randrange(1, len(good))]
    elif kind == "trailing bytes":
        case.first = me.connect() + rng.randbytes(rng.randint(1, 30))
        case.must_refuse = False
    elif kind == "oversized":
        case.first = wire.connect(me.client_id, me.username, "p" * 70_000)
    elif kind == "not a CONNECT first":
        case.first = rng.choice(
            (
                wire.PINGREQ,
                wire.publish(me.uplinks()[0], b"x"),
                wire.subscribe(1, [("#", 0)]),
                wire.DISCONNECT,
                bytes([rng.randrange(256)]) + b"\x00",
            )
        )
    elif kind == "garbage":
        case.first = rng.choice(
            (
                rng.randbytes(rng.randint(1, 300)),
                b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(64),
            )
        )
    else:  # odd but well-formed: the broker may accept it
        case.must_refuse = False
        case.first = me.connect(keepalive=rng.choice((0, 1, 65_535)))
    return case


CONNECT_KINDS: Final = (
    "protocol",
    "reserved flag",
    "no credentials",
    "wrong password",
    "impersonation",
    "impersonation",
    "client id is not the user",
    "will on a foreign topic",
    "lying length",
    "five-byte length",
    "truncated",
    "trailing bytes",
    "oversized",
    "not a CONNECT first",
    "garbage",
    "keep-alive",
)


def session_case(
    index: int,
    rng: random.Random,
    mutator: Mutator,
    payloads: Payloads,
    me: Device,
    victim: Device,
) -> Case:
    """A valid CONNECT, then one to six packets, most of them hostile."""
    case = Case(index, "session", me.connect(), valid_connect=True)
    packet_id = 10
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(SESSION_KINDS)
        case.what += f" {kind}"
        packet_id += 1
        if kind == "uplink":
            payload = payloads.thing_json() if me.thing else payloads.frame()
            qos = rng.choice((0, 0, 1, 2))
            case.after.append(
                wire.publish(rng.choice(me.uplinks()), payload, qos=qos, packet_id=packet_id)
            )
        elif kind == "foreign publish":
            topic = rng.choice([*victim.uplinks(), f"app2dev/{victim.did}/x", "$SYS/x"])
            case.after.append(wire.publish(topic, payloads.frame()))
        elif kind == "odd topic":
            topic = rng.choice(("", "a/+", "#", "a\x00b", "x" * 70_000, "/", "dev2app/+"))
            case.after.append(wire.publish(topic, b"x", qos=rng.choice((0, 1))))
        elif kind == "foreign subscribe":
            filters = rng.sample(foreign_filters(victim), rng.randint(1, 3))
            case.after.append(wire.subscribe(packet_id, [(f, rng.choice((0, 1))) for f in filters]))
            case.refused_ids.add(packet_id)
        elif kind == "own subscribe":
            case.after.append(wire.subscribe(packet_id, [(f, 1) for f in me.own_filters()]))
        elif kind == "bad subscribe":
            case.after.append(
                rng.choice(
                    (
                        wire.subscribe(packet_id, [(me.own_filters()[0], 0)], flags=0),
                        wire.subscribe(packet_id, [(me.own_filters()[0], 3)]),
                        wire.subscribe(packet_id, []),
                        wire.subscribe(packet_id, [("a/#/b", 0), ("+x", 0)]),
                        wire.subscribe(0, [(me.own_filters()[0], 0)]),
                    )
                )
            )
        elif kind == "unsubscribe":
            case.after.append(wire.unsubscribe(packet_id, [mutator.text()[:100]]))
        elif kind == "qos 3":
            case.after.append(wire.packet(0x36, wire.text(me.uplinks()[0]) + b"\x00\x01x"))
        elif kind == "second CONNECT":
            case.after.append(me.connect())
        elif kind == "reserved type":
            case.after.append(wire.packet(rng.choice((0x00, 0xF0)), rng.randbytes(4)))
        elif kind == "stray acknowledgement":
            case.after.append(wire.packet(rng.choice((0x40, 0x50, 0x62, 0x70)), b"\x12\x34"))
        elif kind == "odd ping":
            case.after.append(b"\xc0\x02ab")
        elif kind == "random bytes":
            case.after.append(rng.randbytes(rng.randint(1, 100)))
        elif kind == "oversized":
            case.after.append(wire.publish(me.uplinks()[0], b"x" * 70_000))
        else:  # a truncated packet: the broker waits for the rest
            whole = wire.publish(me.uplinks()[0], payloads.frame())
            case.after.append(whole[: rng.randrange(1, len(whole))])
    return case


SESSION_KINDS: Final = (
    "uplink",
    "uplink",
    "uplink",
    "uplink",
    "foreign publish",
    "odd topic",
    "foreign subscribe",
    "foreign subscribe",
    "own subscribe",
    "bad subscribe",
    "unsubscribe",
    "qos 3",
    "second CONNECT",
    "reserved type",
    "stray acknowledgement",
    "odd ping",
    "random bytes",
    "oversized",
    "truncated",
)


# -- running ---------------------------------------------------------------------------------


class Identities:
    """The fuzzing devices of one kind, each lent to one case at a time (a second connection
    of the same device would take the first one over)."""

    def __init__(self, devices: list[Device]) -> None:
        self.free: asyncio.Queue[Device] = asyncio.Queue()
        for device in devices:
            self.free.put_nowait(device)

    async def take(self) -> Device:
        return await self.free.get()

    def give_back(self, device: Device) -> None:
        self.free.put_nowait(device)


async def read_until(
    reader: asyncio.StreamReader, seen: bytearray, done: Any, seconds: float
) -> None:
    """Read into ``seen`` until ``done(packets)``, the end of the stream or ``seconds``."""
    with suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while not done(wire.parse(bytes(seen))):
                chunk = await reader.read(65_536)
                if not chunk:
                    return
                seen += chunk


def judge(case: Case, me: Device, packets: list[wire.Packet]) -> list[str]:
    problems = []
    connacks = [p for p in packets if p.kind == wire.CONNACK]
    accepted = bool(connacks) and connacks[0].return_code == 0
    if case.valid_connect and not accepted:
        codes = [p.return_code for p in connacks]
        problems.append(f"{case.describe()} -> a valid CONNECT not accepted (CONNACK {codes})")
    if case.must_refuse and accepted:
        problems.append(f"{case.describe()} -> accepted")
    for p in packets:
        if p.kind == wire.PUBLISH and not me.own_topic(p.topic):
            problems.append(f"{case.describe()} -> a message on {p.topic!r}")
        if p.kind == wire.SUBACK and p.packet_id in case.refused_ids:
            granted = [code for code in p.body[2:] if code != REFUSED]
            if granted:
                problems.append(f"{case.describe()} -> SUBACK {p.body[2:].hex()} granted")
    return problems


async def run_case(port: int, case: Case, me: Device) -> list[str]:
    """Play ``case`` as ``me``; the problems found."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return [f"{case.describe()} -> cannot connect: {exc!r}"]
    seen = bytearray()
    try:
        writer.write(case.first)
        await writer.drain()
        if case.valid_connect:
            await read_until(
                reader, seen, lambda ps: any(p.kind == wire.CONNACK for p in ps), CONNACK_SECONDS
            )
            writer.write(b"".join([*case.after, wire.PINGREQ]))
            await writer.drain()
        await read_until(
            reader, seen, lambda ps: any(p.kind == wire.PINGRESP for p in ps), QUIET_SECONDS
        )
    except ConnectionError:
        pass  # what the broker sent before it closed the connection is judged
    finally:
        writer.close()
    return judge(case, me, wire.parse(bytes(seen)))


@pytest.fixture(scope="module")
async def fleet(fuzz_server: RunningServer) -> Fleet:
    """`DEVICES` devices of each kind for the corpus: Gizwits ones (MQTT 3.1 and 3.1.1) and
    data-template ones."""
    return await register_fleet(fuzz_server, DEVICES, DEVICES)


def make_case(
    plan: FuzzPlan, index: int, me: Device, victims: list[Device], fleet: Fleet, codec: P0Codec
) -> Case:
    """Case ``index`` of the corpus, played by ``me``: the same for a seed whichever device of
    the kind plays it."""
    rng = plan.rng(f"mqtt/{index}")
    mutator = Mutator(rng)
    victim = rng.choice(victims)
    if rng.random() < 0.4:
        return connect_case(index, rng, mutator, me, victim)
    payloads = Payloads(rng, mutator, fleet.products, codec)
    return session_case(index, rng, mutator, payloads, me, victim)


async def test_mqtt_fuzz_corpus(
    fuzz_plan: FuzzPlan, fuzz_server: RunningServer, fleet: Fleet
) -> None:
    count = fuzz_plan.count("mqtt")
    port = mqtt_port(fuzz_server)
    codec = P0Codec(fleet.products.definition)
    app = fuzz_server.create_app("MQTT fuzz")
    pools = {False: Identities(fleet.gizwits), True: Identities(fleet.things)}
    failures: list[str] = []
    log_before = len(fuzz_server.log().splitlines())

    async with HealthyDevices(fuzz_server, app["appid"]) as healthy:
        victims = [
            gizwits_device(healthy.did, healthy.passcode, healthy.products.product_key, 3),
            thing_device(healthy.thing),
        ]
        pending = list(range(count))

        async def worker() -> None:
            while pending:
                index = pending.pop(0)
                pool = pools[index % 2 == 1]  # odd cases from data-template devices
                me = await pool.take()
                case = make_case(fuzz_plan, index, me, victims, fleet, codec)
                failures.extend(await run_case(port, case, me))
                pool.give_back(me)

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        await healthy.assert_healthy()
    failures += await still_online(fuzz_server, fleet.devices)

    async def connects_again(me: Device) -> list[str]:
        return await run_case(port, Case(-1, "a last CONNECT", me.connect(), True), me)

    for problems in await asyncio.gather(*map(connects_again, fleet.devices)):
        failures += problems
    print(f"MQTT fuzz: {count} cases, seed {fuzz_plan.seed}")
    log = fuzz_server.log()
    failures += [f"server log: {line}" for line in log_problems(log)]
    flood = log_flood(log.splitlines()[log_before:], count)
    if flood is not None:
        failures.append(flood)
    assert not failures, report(fuzz_plan, "MQTT", count, failures)
