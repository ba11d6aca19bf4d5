"""A lean MQTT load generator for the ingest benchmark, run as its own process.

Plain asyncio protocols writing pre-encoded MQTT 3.1 packets (`bench.mqtt_wire`: CONNECT, QoS 0
PUBLISH of a Gizwits 0x0091 report built with the project's P0 codec, PINGREQ): a few
microseconds of CPU per message, so the server, not the generator, is what is measured.
aiomqtt/paho cost far more per connection and per message.

Controlled by JSON lines on stdin, answering one JSON line per command on stdout:

* ``{"cmd": "connect", "host", "port", "devices": [[did, passcode], ...], "datapoints": path}``
  opens one connection per device (``concurrency`` handshakes at a time) and waits for CONNACK;
* ``{"cmd": "subscribe", "host", "port", "client_id", "passcode", "filter"}`` adds one
  subscriber that counts the PUBLISH packets it receives;
* ``{"cmd": "rate", "rate": R}`` publishes R reports/s spread over every device (0: stop);
* ``{"cmd": "stats"}`` counters, CPU seconds of this process, monotonic time;
* ``{"cmd": "close"}`` closes everything and exits.

A PUBLISH is skipped (and counted) while the connection's send buffer holds over 64 KiB: the
broker is not reading, and an open-loop generator must not buffer without bound.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
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
)
from iotcloud.codecs import Frame, P0Codec, encode_frame, load_product_definition
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.simulator import random_status

KEEPALIVE = 300
PING_EVERY = 100.0
SEND_BUFFER_LIMIT = 64 * 1024
VARIANTS = 4  # reports per device with different values, sent in turn


class Connection(asyncio.Protocol):
    """One MQTT client connection; counts the PUBLISH packets it receives."""

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
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
                self.accepted.set_result(self._packets.buffer[start + 1])
            elif kind == PUBLISH:
                self.received += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.accepted.done():
            self.accepted.set_exception(ConnectionError(f"closed before CONNACK ({exc})"))


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
        definition = await asyncio.to_thread(Path(cmd["datapoints"]).read_bytes)
        codec = P0Codec(load_product_definition(definition))
        product = codec.product
        rng = random.Random(cmd.get("seed", 1))
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        started = time.monotonic()
        refused = 0

        async def one(did: str, passcode: str) -> Connection | None:
            nonlocal refused
            async with gate:
                for attempt in range(5):
                    try:
                        _, conn = await loop.create_connection(
                            lambda: Connection(connect_packet(did, passcode, keepalive=KEEPALIVE)),
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

        pairs = [(str(did), str(passcode)) for did, passcode in cmd["devices"]]
        made = await asyncio.gather(*(one(did, passcode) for did, passcode in pairs))
        for (did, _), conn in zip(pairs, made, strict=True):
            if conn is None:
                continue
            self.devices.append(conn)
            self.packets.append(
                [
                    publish_packet(
                        f"dev2app/{did}",
                        encode_frame(
                            Frame(CMD_REPORT, codec.encode_status(random_status(product, rng)))
                        ),
                    )
                    for _ in range(VARIANTS)
                ]
            )
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
                connect_packet(cmd["client_id"], cmd["passcode"], keepalive=KEEPALIVE)
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
            "received": sum(s.received for s in self.subscribers),
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
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
