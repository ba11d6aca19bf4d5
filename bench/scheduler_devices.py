"""The scheduler benchmark's devices, run as their own process: lean MQTT connections that answer
every 0x0093 command at once with a bare 0x0094 carrying the same SN, and note when each
command arrived.

Plain asyncio protocols and pre-built packets (`bench.mqtt_wire`), so the server, not this
process, is what is measured. A command's arrival is noted with the wall clock
(``time.time()``, the clock the server stamps runs with, on the same machine) and its P0 kept
undecoded; `records` hands them to the driver, which decodes them afterwards.

For the ceiling, one more connection plays the cloud (`cloud`): through the broker alone
(`bench.control_broker`, or Mosquitto with the gateway's account) it publishes 0x0093 commands
to the devices and reads their 0x0094 on ``dev2app/#``.

Controlled by JSON lines on stdin, one JSON line answered per command (see
`bench.harness.serve_commands`):

* ``{"cmd": "devices", "host", "port", "devices": [[did, passcode], ...]}``: one MQTT 3.1
  connection per device, subscribed to ``app2dev/{did}/#`` (waits for every SUBACK);
* ``{"cmd": "cloud", "host", "port", "client_id", "username"?, "password"?}``: the ceiling's
  cloud connection;
* ``{"cmd": "ceiling", "count", "concurrency", "datapoints"}``: ``count`` acknowledged commands
  due at once, round-robin over the devices, at most ``concurrency`` awaiting their 0x0094; see
  `Fleet.ceiling`;
* ``{"cmd": "stats"}``: commands received and answered, connections up, this process's CPU;
* ``{"cmd": "records"}``: ``[[did, arrived_at, sn, p0_hex], ...]`` of every 0x0093 received
  since the last call;
* ``{"cmd": "close"}``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

from bench.harness import own_cpu_seconds, percentile, serve_commands
from bench.mqtt_wire import (
    CONNACK,
    PINGREQ,
    PUBLISH,
    SUBACK,
    PacketReader,
    connect_packet,
    publish_packet,
    publish_parts,
    subscribe_packet,
)
from iotcloud.codecs import Frame, P0Codec, encode_frame, load_product_definition
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL_SN, decode_frame

KEEPALIVE = 300
HANDSHAKES = 100  # connections being set up at a time


class Connection(asyncio.Protocol):
    """One MQTT connection: CONNECT, SUBSCRIBE to one filter once accepted, then hands every
    PUBLISH (topic, payload) to ``on_publish``."""

    def __init__(self, hello: bytes, topic_filter: str) -> None:
        self.hello = hello
        self.topic_filter = topic_filter
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self._packets = PacketReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        buffer = self._packets.buffer
        for kind, start, end in self._packets.feed(data):
            if kind == PUBLISH:
                topic, payload = publish_parts(buffer, start, end)
                self.on_publish(topic, bytes(buffer[payload:end]))
            elif kind == CONNACK and not self.subscribed.done():
                code = buffer[start + 1]
                if code == 0:
                    self.write(subscribe_packet(self.topic_filter))
                else:
                    self.subscribed.set_exception(RuntimeError(f"refused with CONNACK {code}"))
            elif kind == SUBACK and not self.subscribed.done():
                if buffer[end - 1] == 0x80:
                    self.subscribed.set_exception(RuntimeError(f"{self.topic_filter} refused"))
                else:
                    self.subscribed.set_result(None)

    def on_publish(self, topic: str, payload: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"closed ({exc})"))


class Device(Connection):
    """A device: notes each 0x0093 and answers it with a bare 0x0094 (same SN) on
    ``dev2app/{did}/{client id of the sender}``."""

    def __init__(self, did: str, passcode: str, fleet: Fleet) -> None:
        super().__init__(connect_packet(did, passcode, keepalive=KEEPALIVE), f"app2dev/{did}/#")
        self.did = did
        self.fleet = fleet

    def on_publish(self, topic: str, payload: bytes) -> None:
        arrived = time.time()
        frame = decode_frame(payload)
        if frame.cmd != CMD_CONTROL_SN:
            self.fleet.other_frames += 1
            return
        sender = topic.split("/", 2)[2] if topic.count("/") >= 2 else ""
        reply = encode_frame(Frame(CMD_ACK_SN, b"", sn=frame.sn))
        self.write(publish_packet(f"dev2app/{self.did}/{sender}", reply))
        self.fleet.received.append((self.did, arrived, frame.sn or 0, frame.payload))
        self.fleet.answered += 1


class Cloud(Connection):
    """The ceiling's sender: hears the devices' 0x0094 on ``dev2app/#``."""

    def __init__(self, hello: bytes, fleet: Fleet) -> None:
        super().__init__(hello, "dev2app/#")
        self.fleet = fleet

    def on_publish(self, topic: str, payload: bytes) -> None:
        frame = decode_frame(payload)
        if frame.cmd == CMD_ACK_SN and frame.sn is not None:
            self.fleet.acknowledged(frame.sn)


class Fleet:
    def __init__(self) -> None:
        self.devices: list[Device] = []
        self.cloud: Cloud | None = None
        self.client_id = ""
        self.received: list[tuple[str, float, int, bytes]] = []
        self.answered = 0
        self.other_frames = 0
        self._waiting: dict[int, asyncio.Future[float]] = {}
        self._pinger: asyncio.Task[None] | None = None

    async def connect_devices(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(HANDSHAKES)
        started = time.monotonic()

        async def one(did: str, passcode: str) -> Device:
            async with gate:
                device = Device(did, passcode, self)
                await loop.create_connection(lambda: device, cmd["host"], cmd["port"])
                await asyncio.wait_for(device.subscribed, 60)
                return device

        self.devices += await asyncio.gather(
            *(one(str(did), str(passcode)) for did, passcode in cmd["devices"])
        )
        if self._pinger is None:
            self._pinger = asyncio.create_task(self._ping())
        return {"connected": len(self.devices), "seconds": time.monotonic() - started}

    async def connect_cloud(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.client_id = cmd["client_id"]
        hello = connect_packet(
            self.client_id,
            cmd.get("password") or "x",
            keepalive=0,
            username=cmd.get("username"),
        )
        cloud = Cloud(hello, self)
        await loop.create_connection(lambda: cloud, cmd["host"], cmd["port"])
        await asyncio.wait_for(cloud.subscribed, 30)
        self.cloud = cloud
        return {"connected": True}

    def acknowledged(self, sn: int) -> None:
        waiter = self._waiting.pop(sn, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(time.monotonic())

    async def ceiling(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``count`` commands due at one instant, sent as the scheduler sends them: a 0x0093
        writing two data points (the P0 ``encode_control`` makes), round-robin over the
        devices, at most ``concurrency`` in flight, each done when its 0x0094 is back.
        Reports how long all took and each command's completion time after the start
        (what lateness would be if they were all due at the start)."""
        assert self.cloud is not None
        definition = await asyncio.to_thread(Path(cmd["datapoints"]).read_bytes)
        codec = P0Codec(load_product_definition(definition))
        count, concurrency = int(cmd["count"]), int(cmd["concurrency"])
        packets = [
            publish_packet(
                f"app2dev/{self.devices[index % len(self.devices)].did}/{self.client_id}",
                encode_frame(
                    Frame(
                        CMD_CONTROL_SN,
                        codec.encode_control({"LED_R": index // 255, "LED_G": index % 255}),
                        sn=index + 1,
                    )
                ),
            )
            for index in range(count)
        ]
        self.received.clear()
        cloud = self.cloud
        loop = asyncio.get_running_loop()
        done: list[float] = []
        cpu0 = own_cpu_seconds()
        started = time.monotonic()

        async def worker(indices: list[int]) -> None:
            for index in indices:
                waiter: asyncio.Future[float] = loop.create_future()
                self._waiting[index + 1] = waiter
                cloud.write(packets[index])
                try:
                    finished = await asyncio.wait_for(waiter, 10)
                except TimeoutError:
                    self._waiting.pop(index + 1, None)
                    continue
                done.append(finished - started)

        await asyncio.gather(
            *(worker(list(range(lane, count, concurrency))) for lane in range(concurrency))
        )
        elapsed = time.monotonic() - started
        cpu = own_cpu_seconds() - cpu0
        done.sort()
        return {
            "count": count,
            "completed": len(done),
            "seconds": elapsed,
            "rate": len(done) / elapsed if elapsed else 0.0,
            "p50": percentile(done, 0.50),
            "p90": percentile(done, 0.90),
            "p99": percentile(done, 0.99),
            "max": done[-1] if done else 0.0,
            "generator_cpu": cpu / elapsed if elapsed else 0.0,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "time": time.monotonic(),
            "cpu": own_cpu_seconds(),
            "received": len(self.received),
            "answered": self.answered,
            "other_frames": self.other_frames,
            "connected": sum(1 for device in self.devices if not device.closed),
        }

    def records(self) -> dict[str, Any]:
        found = [[did, arrived, sn, p0.hex()] for did, arrived, sn, p0 in self.received]
        self.received = []
        return {"records": found}

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE / 3)
            for device in self.devices:
                device.write(PINGREQ)

    def close(self) -> None:
        for connection in [*self.devices, *([self.cloud] if self.cloud else [])]:
            if connection.transport is not None:
                connection.transport.close()


async def serve() -> None:
    fleet = Fleet()
    await serve_commands(
        {
            "devices": fleet.connect_devices,
            "cloud": fleet.connect_cloud,
            "ceiling": fleet.ceiling,
            "stats": lambda cmd: fleet.stats(),
            "records": lambda cmd: fleet.records(),
        },
        fleet.close,
    )


def main() -> None:
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
