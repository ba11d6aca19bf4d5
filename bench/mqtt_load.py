"""A lean MQTT load generator for the ingest benchmark, run as its own process.

Plain asyncio protocols writing pre-encoded MQTT 3.1 packets (`bench.mqtt_wire`: CONNECT, QoS 0
PUBLISH, PINGREQ): a few microseconds of CPU per message, so the server, not the generator, is
what is measured. aiomqtt/paho cost far more per connection and per message. Two kinds of
device:

* Gizwits (``dialect`` ``gizwits``): client id = did, password = passcode; a report is a 0x0091
  frame built with the project's P0 codec, on ``dev2app/{did}``;
* data template (``dialect`` ``tencent``): signed as Tencent's device SDKs sign
  (`thing_connect_packet`), subscribed to ``$thing/down/property/{PID}/{NAME}`` (where the
  server's ``report_reply`` arrives: counted in ``received``); a report is
  ``{"method": "report", "clientToken", "timestamp", "params"}`` with a random valid value for
  every property of the template, on ``$thing/up/property/{PID}/{NAME}``.

Controlled by JSON lines on stdin, answering one JSON line per command on stdout:

* ``{"cmd": "connect", "host", "port", "devices": [[did, passcode], ...], "datapoints": path}``
  opens one connection per device (``concurrency`` handshakes at a time) and waits for CONNACK;
  with ``"dialect": "tencent"``, ``devices`` is ``[[product_id, name, psk, ...], ...]`` and
  ``template`` the data template's path; with ``"username"``, every Gizwits connection signs in
  with that user name (and the device's own client id and password), as when a broker's own
  account stands in for the devices in a ceiling run;
* ``{"cmd": "subscribe", "host", "port", "client_id", "passcode", "filter"}`` adds one
  subscriber that counts the PUBLISH packets it receives (``"username"``: another user name
  than the client id);
* ``{"cmd": "rate", "rate": R}`` publishes R reports/s spread over every device (0: stop);
* ``{"cmd": "stats"}`` counters (``received``: PUBLISH packets every connection received),
  CPU seconds of this process, monotonic time;
* ``{"cmd": "close"}`` closes everything and exits.

Before each PUBLISH the connection's send buffer is checked: while it holds over 8 KiB (the
kernel's socket buffer is full, so the broker stopped reading and TCP pushes back) the report
is not written but counted in ``skipped``. An open-loop generator must not buffer without bound,
and "not sent because the server pushed back" is a figure of its own under overload.

It raises its open-file limit to the hard limit at start, for thousands of connections.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import string
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from bench.harness import serve_commands
from bench.mqtt_wire import (
    CONNACK,
    PINGREQ,
    PUBLISH,
    PacketReader,
    connect_packet,
    publish_packet,
    subscribe_packet,
    thing_connect_packet,
)
from iotcloud.codecs import Frame, P0Codec, encode_frame, load_product_definition
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.codecs.template import DataTemplate, TemplateField, parse_data_template
from iotcloud.codecs.thing import thing_topic
from iotcloud.simulator import random_status

KEEPALIVE = 300
PING_EVERY = 100.0
SEND_BUFFER_LIMIT = 8 * 1024
VARIANTS = 4  # reports per device with different values, sent in turn


class Connection(asyncio.Protocol):
    """One MQTT client connection; counts the PUBLISH packets it receives."""

    def __init__(self, hello: bytes, subscribe: bytes = b"") -> None:
        self.hello = hello
        self.subscribe = subscribe
        self.transport: asyncio.Transport | None = None
        self.accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.received = 0
        self._packets = PacketReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        for kind, start, _end in self._packets.feed(data):
            if kind == CONNACK and not self.accepted.done():
                code = self._packets.buffer[start + 1]
                if code == 0 and self.subscribe:
                    assert self.transport is not None
                    self.transport.write(self.subscribe)
                self.accepted.set_result(code)
            elif kind == PUBLISH:
                self.received += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.accepted.done():
            self.accepted.set_exception(ConnectionError(f"closed before CONNACK ({exc})"))


class GizwitsReports:
    """A Gizwits device: its CONNECT, and 0x0091 reports of random pet_house values."""

    def __init__(
        self, codec: P0Codec, did: str, passcode: str, username: str | None = None
    ) -> None:
        self.codec, self.did, self.passcode, self.username = codec, did, passcode, username

    def hello(self) -> bytes:
        return connect_packet(self.did, self.passcode, keepalive=KEEPALIVE, username=self.username)

    def subscription(self) -> bytes:
        return b""

    def report(self, rng: random.Random, variant: int) -> bytes:
        status = self.codec.encode_status(random_status(self.codec.product, rng))
        return publish_packet(f"dev2app/{self.did}", encode_frame(Frame(CMD_REPORT, status)))


class ThingReports:
    """A data-template device: its signed CONNECT, its ``$thing/down/property`` subscription,
    and ``report`` messages with a random valid value for every property of its template."""

    def __init__(self, template: DataTemplate, product_id: str, name: str, psk: str) -> None:
        self.template, self.product_id, self.name, self.psk = template, product_id, name, psk

    def hello(self) -> bytes:
        return thing_connect_packet(self.product_id, self.name, self.psk, keepalive=KEEPALIVE)

    def subscription(self) -> bytes:
        return subscribe_packet(thing_topic("down", "property", self.product_id, self.name))

    def report(self, rng: random.Random, variant: int) -> bytes:
        params = {prop.id: random_value(prop, rng) for prop in self.template.properties.values()}
        self.template.check_report(params)  # a report the server would refuse measures nothing
        body = {
            "method": "report",
            "clientToken": f"{self.name}-{variant}",
            "timestamp": int(time.time()),
            "params": params,
        }
        return publish_packet(
            thing_topic("up", "property", self.product_id, self.name),
            json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        )


DeviceReports = GizwitsReports | ThingReports


def random_value(field: TemplateField, rng: random.Random) -> Any:
    """A random value ``field`` accepts, in Tencent form (bool 0/1, enum integer key)."""
    kind = field.kind
    if kind == "bool":
        return rng.randint(0, 1)
    if kind == "enum":
        return rng.choice(list(field.mapping))
    if kind in ("int", "float"):
        low = field.min if field.min is not None else Decimal(0)
        high = field.max if field.max is not None else low + 1000
        if kind == "float":
            value = round(float(low) + rng.random() * float(high - low), 1)
            return min(max(value, float(low)), float(high))
        step = field.step if field.step is not None and field.step > 0 else Decimal(1)
        return int(low + step * rng.randint(0, int((high - low) // step)))
    if kind == "string":
        limit = min(field.max_length or 16, 16)
        shortest = min(int(field.min) if field.min is not None else 0, limit)
        return "".join(rng.choices(string.ascii_letters, k=rng.randint(shortest, limit)))
    if kind == "timestamp":
        return int(time.time()) - rng.randint(0, 86_400)
    return {member.id: random_value(member, rng) for member in field.members}


class Generator:
    def __init__(self) -> None:
        self.devices: list[Connection] = []
        self.packets: list[list[bytes]] = []
        self.subscribers: list[Connection] = []
        self.rate = 0.0
        self.sent = 0
        self.skipped = 0
        self._pacer: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Connect ``cmd["devices"]`` of ``cmd["dialect"]`` and pre-encode their reports."""
        rng = random.Random(cmd.get("seed", 1))
        devices: list[DeviceReports]
        if cmd.get("dialect", "gizwits") == "tencent":
            text = await asyncio.to_thread(Path(cmd["template"]).read_text)
            template = parse_data_template(json.loads(text))
            devices = [
                ThingReports(template, str(pid), str(name), str(psk))
                for pid, name, psk, *_ in cmd["devices"]
            ]
        else:
            definition = await asyncio.to_thread(Path(cmd["datapoints"]).read_bytes)
            codec = P0Codec(load_product_definition(definition))
            username = cmd.get("username")
            devices = [
                GizwitsReports(codec, str(did), str(code), username)
                for did, code, *_ in cmd["devices"]
            ]
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        started = time.monotonic()
        refused = 0

        async def one(device: DeviceReports) -> Connection | None:
            nonlocal refused
            async with gate:
                for attempt in range(5):
                    try:
                        _, conn = await loop.create_connection(
                            lambda: Connection(device.hello(), device.subscription()),
                            cmd["host"],
                            cmd["port"],
                        )
                        code = await asyncio.wait_for(conn.accepted, 60)
                    except (OSError, TimeoutError):
                        await asyncio.sleep(0.2 * 2**attempt)
                        continue
                    if code != 0:
                        refused += 1
                        return None
                    return conn
            refused += 1
            return None

        made = await asyncio.gather(*(one(device) for device in devices))
        for device, conn in zip(devices, made, strict=True):
            if conn is None:
                continue
            self.devices.append(conn)
            self.packets.append([device.report(rng, variant) for variant in range(VARIANTS)])
        if self._pinger is None:
            self._pinger = asyncio.create_task(self._ping())
        return {
            "connected": len(self.devices),
            "refused": refused,
            "seconds": time.monotonic() - started,
            "packet_bytes": len(self.packets[0][0]) if self.packets else 0,
        }

    async def subscribe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: Connection(
                connect_packet(
                    cmd["client_id"],
                    cmd["passcode"],
                    keepalive=KEEPALIVE,
                    username=cmd.get("username"),
                )
            ),
            cmd["host"],
            cmd["port"],
        )
        code = await asyncio.wait_for(conn.accepted, 30)
        if code != 0:
            raise RuntimeError(f"subscriber refused with CONNACK {code}")
        assert conn.transport is not None
        conn.transport.write(subscribe_packet(cmd["filter"]))
        self.subscribers.append(conn)
        return {"subscribed": True}

    def set_rate(self, rate: float) -> dict[str, Any]:
        self.rate = rate
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        if rate > 0 and self.devices:
            self._pacer = asyncio.create_task(self._pace(rate))
        return {"rate": rate}

    async def _pace(self, rate: float) -> None:
        """Write ``rate`` reports/s, round-robin over the devices, in ticks of a few ms."""
        devices, packets = self.devices, self.packets
        count = len(devices)
        index = 0
        started = time.monotonic()
        due_total = 0
        while True:
            await asyncio.sleep(0.002)
            target = int((time.monotonic() - started) * rate)
            due = target - due_total
            due_total = target
            for _ in range(due):
                slot = index % count
                variant = (index // count) % VARIANTS
                index += 1
                conn = devices[slot]
                transport = conn.transport
                if (
                    conn.closed
                    or transport is None
                    or transport.get_write_buffer_size() > SEND_BUFFER_LIMIT
                ):
                    self.skipped += 1
                    continue
                transport.write(packets[slot][variant])
                self.sent += 1

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            for conn in self.devices + self.subscribers:
                if conn.transport is not None and not conn.closed:
                    conn.transport.write(PINGREQ)

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "time": time.monotonic(),
            "cpu": usage.ru_utime + usage.ru_stime,
            "sent": self.sent,
            "skipped": self.skipped,
            "received": sum(c.received for c in self.subscribers + self.devices),
            "connected": sum(1 for d in self.devices if not d.closed),
            "rss_kib": usage.ru_maxrss,
        }

    def close(self) -> None:
        for conn in self.devices + self.subscribers:
            if conn.transport is not None:
                conn.transport.close()


async def serve() -> None:
    generator = Generator()
    await serve_commands(
        {
            "connect": generator.connect,
            "subscribe": generator.subscribe,
            "rate": lambda cmd: generator.set_rate(float(cmd["rate"])),
            "stats": lambda cmd: generator.stats(),
        },
        generator.close,
    )


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
