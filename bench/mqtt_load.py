"""A lean MQTT load generator for the ingest benchmark, run as its own process.

Plain asyncio protocols writing pre-encoded MQTT 3.1 packets (CONNECT, QoS 0 PUBLISH of a
Gizwits 0x0091 report built with the project's P0 codec, PINGREQ): a few microseconds of CPU per
message, so the server, not the generator, is what is measured. aiomqtt/paho cost far more per
connection and per message.

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
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, cast

from iotcloud.codecs import Frame, P0Codec, encode_frame, encode_varint, load_product_definition
from iotcloud.codecs.frame import CMD_REPORT
from iotcloud.simulator import random_status

KEEPALIVE = 300
PING_EVERY = 100.0
SEND_BUFFER_LIMIT = 64 * 1024
VARIANTS = 4  # reports per device with different values, sent in turn


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, password: str, *, keepalive: int = KEEPALIVE) -> bytes:
    """MQTT 3.1 (``MQIsdp``, level 3) CONNECT, clean session, user name = client id."""
    flags = 0x80 | 0x40 | 0x02
    body = _string("MQIsdp") + bytes((3, flags)) + keepalive.to_bytes(2, "big")
    body += _string(client_id) + _string(client_id) + _string(password)
    return b"\x10" + encode_varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _string(topic) + payload
    return b"\x30" + encode_varint(len(body)) + body


def subscribe_packet(topic_filter: str, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _string(topic_filter) + b"\x00"
    return b"\x82" + encode_varint(len(body)) + body


class Connection(asyncio.Protocol):
    """One MQTT client connection; counts the PUBLISH packets it receives."""

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.transport: asyncio.Transport | None = None
        self.accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.received = 0
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        index = 0
        while True:  # walk the complete packets: type byte, remaining length, body
            if len(buffer) - index < 2:
                break
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
                break
            if cursor + length > len(buffer):
                break
            if kind == 2 and not self.accepted.done():
                self.accepted.set_result(buffer[cursor + 1])
            elif kind == 3:
                self.received += 1
            index = cursor + length
        del buffer[:index]

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
                            lambda: Connection(connect_packet(did, passcode)),
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
            lambda: Connection(connect_packet(cmd["client_id"], cmd["passcode"])),
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
                    conn.transport.write(b"\xc0\x00")

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
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    generator = Generator()
    while line := await reader.readline():
        cmd = json.loads(line)
        name = cmd["cmd"]
        try:
            if name == "connect":
                reply = await generator.connect(cmd)
            elif name == "subscribe":
                reply = await generator.subscribe(cmd)
            elif name == "rate":
                reply = generator.set_rate(float(cmd["rate"]))
            elif name == "stats":
                reply = generator.stats()
            elif name == "close":
                generator.close()
                print(json.dumps({"closed": True}), flush=True)
                return
            else:
                reply = {"error": f"unknown command {name!r}"}
        except Exception as exc:  # report it to the driver instead of dying silently
            reply = {"error": repr(exc)}
        print(json.dumps(reply), flush=True)
    generator.close()


def main() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
