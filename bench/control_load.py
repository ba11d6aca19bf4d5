"""The control benchmark's client side, run as its own process: the app sending commands and the
devices receiving them, on one clock.

Plain asyncio protocols, no HTTP or MQTT library: requests and packets are pre-built bytes, and
responses are parsed only as far as the status code and ``Content-Length``. A few microseconds
of CPU per command, so the server, not this process, is what is measured.

Every command carries a sequence number in its P0 (``01``, 4-byte big-endian sequence number,
``00 00 00``); the device connection that receives the 0x0090 frame reads it back, so latency is
measured from the moment a command is released to the moment its frame arrives, both with
``time.monotonic`` in this process. Commands go round-robin over the devices.

Controlled by JSON lines on stdin, one JSON line answered per command:

* ``{"cmd": "devices", "host", "port", "devices": [[did, passcode], ...]}``: one MQTT 3.1
  connection per device, each subscribed to ``app2dev/{did}/#`` (waits for every SUBACK);
  a Gizwits device answers every 0x0093 at once with a bare 0x0094 carrying the same SN on
  ``dev2app/{did}/{sender}`` (``sender``: the last level of the command's topic), as firmware
  does, which is the closed loop `bench.control_broker` measures;
  with ``"dialect": "tencent"``, data-template devices ``[[product_id, name, psk, ...], ...]``
  signed as Tencent's SDKs sign, each subscribed to ``$thing/down/property/{PID}/{NAME}``;
  such a device reads the sequence number from the ``name`` property of every ``control`` it
  receives and answers it with a ``control_reply`` (code 0, its clientToken), as devices do;
  sent again with another ``port``, it adds devices on another broker node; with
  ``"username"`` (and ``"password"``), Gizwits devices sign in with that account instead of
  their own (a broker ceiling run, where a broker account stands in for the devices);
* ``{"cmd": "publisher", "host", "port", "client_id"}``: the MQTT connection the broker
  ceiling publishes from (``app2dev/{did}/bench``; ``"username"``/``"password"`` as above);
* ``{"cmd": "http", "host", "port", "pool", "appid", "token"}``: a pool of keep-alive HTTP/1.1
  connections, one request in flight on each (a ``tokenapi`` answer holding ``"Error"`` counts
  as an error, whatever its HTTP 200); with ``"ports"``, the connections are spread over
  several servers and requests released round-robin over them;
* ``{"cmd": "step", "kind", "rate", "concurrency", "warmup", "window", "drain", "server_pid",
  "quiet_wait"}``: one measured run, see `Generator.step`; ``"server_pids"`` (several
  servers: their CPU is summed) and ``"pids"`` (``{name: [pid, ...]}``: the CPU of each group
  reported apart, and not counted as other processes') are optional;
* ``{"cmd": "stats"}``: 0x0093 commands the devices acknowledged, devices connected, this
  process's CPU seconds;
* ``{"cmd": "close"}``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from bench.harness import (
    QUIET_SHARE,
    cpu_seconds_of,
    machine_busy_seconds,
    own_cpu_seconds,
    percentile,
    serve_commands,
)
from bench.mqtt_wire import (
    CONNACK,
    PINGREQ,
    PUBLISH,
    SUBACK,
    PacketReader,
    connect_packet,
    publish_packet,
    subscribe_packet,
    thing_connect_packet,
)
from iotcloud.codecs import Frame, encode_frame
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL
from iotcloud.codecs.thing import thing_topic

KEEPALIVE = 300
TICK = 0.001
TOKENAPI = "/api/exploreropen/tokenapi"
ERROR_CODE = re.compile(rb'"Error":\s*\{[^}]*"Code":\s*"([^"]*)"')


def p0_of(seq: int) -> bytes:
    """The command's P0: a sequence number between a fixed first byte and three padding bytes."""
    return b"\x01" + (seq & 0xFFFFFFFF).to_bytes(4, "big") + b"\x00\x00\x00"


def _same(protocol: Device) -> Device:
    return protocol


async def wait_until(done: Callable[[], bool], seconds: float) -> None:
    """Poll ``done`` until it holds, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        if done() or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.05)


class Tracker:
    """Commands released and not yet completed (delivered, or answered for ``GET /status``)."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, bool]] = {}
        self.recording = False
        self.latencies: list[float] = []
        self.completed_in_window = 0
        self.recorded = 0
        self.duplicates = 0
        self.on_complete: Callable[[], None] | None = None

    def reset(self) -> None:
        self.pending.clear()
        self.latencies = []
        self.completed_in_window = 0
        self.recorded = 0
        self.duplicates = 0
        self.on_complete = None

    def released(self, seq: int, t0: float) -> None:
        self.pending[seq] = (t0, self.recording)
        if self.recording:
            self.recorded += 1

    def completed(self, seq: int, now: float) -> None:
        entry = self.pending.pop(seq, None)
        if entry is None:
            self.duplicates += 1
            return
        if self.recording:
            self.completed_in_window += 1
        if entry[1]:
            self.latencies.append(now - entry[0])
        if self.on_complete is not None:
            self.on_complete()

    def failed(self, seq: int) -> None:
        self.pending.pop(seq, None)

    def outstanding_recorded(self) -> int:
        return sum(1 for _, recorded in self.pending.values() if recorded)


class Device(asyncio.Protocol):
    """One device's MQTT connection: hands the sequence number of every 0x0090 it receives to
    the tracker."""

    def __init__(
        self,
        hello: bytes,
        topic_filter: str,
        tracker: Tracker,
        reply_topic: str = "",
        did: str = "",
    ) -> None:
        self.hello = hello
        self.topic_filter = topic_filter
        self.tracker = tracker
        self.reply_topic = reply_topic
        """Set for a data-template device: where its ``control_reply`` goes."""
        self.did = did
        self.acknowledged = 0
        """0x0093 commands answered with a 0x0094."""
        self._ack_heads: dict[bytes, bytes] = {}
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.accepted: asyncio.Future[int] = loop.create_future()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.other_frames = 0
        self._packets = PacketReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self._packets.buffer
        for kind, start, end in self._packets.feed(data):
            if kind == PUBLISH and self.reply_topic:
                self._control(buffer, start, end, now)
            elif kind == PUBLISH:
                self._publish(buffer, start, end, now)
            elif kind == CONNACK and not self.accepted.done():
                self.accepted.set_result(buffer[start + 1])
                if buffer[start + 1] == 0:
                    self.transport.write(subscribe_packet(self.topic_filter))  # type: ignore[union-attr]
            elif kind == SUBACK and not self.subscribed.done():
                if buffer[end - 1] == 0x80:
                    self.subscribed.set_exception(RuntimeError(f"{self.topic_filter} refused"))
                else:
                    self.subscribed.set_result(None)

    def _publish(self, buffer: bytearray, start: int, end: int, now: float) -> None:
        """A QoS 0 PUBLISH: topic, then a Gizwits frame whose P0 carries the sequence number."""
        topic_length = int.from_bytes(buffer[start : start + 2], "big")
        frame = start + 2 + topic_length  # QoS 0: no packet identifier
        # 00 00 00 03 | LEN (one byte: these frames are short) | flag | cmd | [SN] | P0
        command = buffer[frame + 6 : frame + 8]
        if command == b"\x00\x93" and end - frame >= 12:
            self._acknowledge(
                bytes(buffer[start + 2 : frame]), bytes(buffer[frame + 8 : frame + 12])
            )
            return
        if end - frame < 16 or command != b"\x00\x90":
            self.other_frames += 1
            return
        p0 = frame + 8
        self.tracker.completed(int.from_bytes(buffer[p0 + 1 : p0 + 5], "big"), now)

    def _acknowledge(self, topic: bytes, sn: bytes) -> None:
        """Answer a 0x0093 with a bare 0x0094 (same SN) to its sender: a PUBLISH whose bytes
        up to the SN are the same for every answer to one sender, so they are built once."""
        sender = topic.rsplit(b"/", 1)[-1] if topic.count(b"/") >= 2 else b""
        head = self._ack_heads.get(sender)
        if head is None:
            ack = encode_frame(Frame(CMD_ACK_SN, b"", sn=0))
            packet = publish_packet(f"dev2app/{self.did}/{sender.decode()}", ack)
            head = self._ack_heads[sender] = packet[:-4]
        assert self.transport is not None
        self.transport.write(head + sn)
        self.acknowledged += 1

    def _control(self, buffer: bytearray, start: int, end: int, now: float) -> None:
        """A QoS 0 PUBLISH to a data-template device: a ``control`` whose ``name`` property is
        the sequence number, answered with a ``control_reply``."""
        topic_length = int.from_bytes(buffer[start : start + 2], "big")
        message = json.loads(buffer[start + 2 + topic_length : end])
        if message.get("method") != "control":
            self.other_frames += 1
            return
        self.tracker.completed(int(message["params"]["name"]), now)
        reply = {
            "method": "control_reply",
            "clientToken": message["clientToken"],
            "code": 0,
            "status": "ok",
        }
        assert self.transport is not None
        self.transport.write(publish_packet(self.reply_topic, json.dumps(reply).encode()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in (self.accepted, self.subscribed):
            if not future.done():
                future.set_exception(ConnectionError(f"closed ({exc})"))


class Publisher(asyncio.Protocol):
    """The MQTT ceiling's publisher connection (it only writes, and reads its CONNACK)."""

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.transport: asyncio.Transport | None = None
        self.accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        if not self.accepted.done() and len(data) >= 4 and data[0] >> 4 == CONNACK:
            self.accepted.set_result(data[3])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(ConnectionError(f"closed ({exc})"))


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, pool: HttpPool, port: int = 0) -> None:
        self.pool = pool
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_flight: tuple[int, float] | None = None
        self.closed = False
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set_result(None)

    def send(self, request: bytes, seq: int, t0: float) -> None:
        assert self.transport is not None
        self.in_flight = (seq, t0)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buffer[:head_end]).lower()
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:  # every response of this server has one; anything else is broken
                self.pool.broken(self, "response without Content-Length")
                return
            line_end = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : line_end if line_end > 0 else len(head)])
            end = head_end + 4 + length
            if len(buffer) < end:
                return
            status = int(buffer[9:12])
            refusal = ERROR_CODE.search(buffer, head_end, end) if self.pool.read_errors else None
            del buffer[:end]
            in_flight, self.in_flight = self.in_flight, None
            if in_flight is not None:
                reason = refusal.group(1).decode() if refusal is not None else ""
                self.pool.answered(self, status, *in_flight, refusal=reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed ({exc})"))
        self.pool.broken(self, f"connection lost ({exc})")


class HttpPool:
    """Keep-alive connections; a released request goes out at once on an idle one, or waits
    (bounded) for one to finish. With several ``ports`` (servers), the connections alternate
    between them and released requests go to them in turn (to another one when the server
    whose turn it is has no idle connection)."""

    def __init__(self, host: str, port: int, size: int, ports: list[int] | None = None) -> None:
        self.host, self.port, self.size = host, port, size
        self.ports = ports or [port]
        self._turn = 0
        self.connections: list[HttpConnection] = []
        self.idle: collections.deque[HttpConnection] = collections.deque()
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.backlog_limit = 1000
        self.build: Callable[[int], bytes] = lambda seq: b""
        self.on_answer: Callable[[HttpConnection, int, int, float, float], None] | None = None
        self.errors = 0
        self.waited = 0
        self.shed = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.read_errors = False
        """Look for a Tencent ``"Error"`` in answers (tokenapi answers HTTP 200 either way)."""

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.size - len(self.connections)):
            port = self.ports[len(self.connections) % len(self.ports)]
            _, conn = await loop.create_connection(
                functools.partial(HttpConnection, self, port), self.host, port
            )
            await conn.ready
            self.connections.append(conn)
            self.idle.append(conn)

    def release(self, seq: int, t0: float) -> bool:
        """Send request ``seq`` now if a connection is idle, else queue it; False if shed."""
        if self.idle:  # the longest idle first, so none idles long enough to be closed
            self._take_idle().send(self.build(seq), seq, t0)
            return True
        if len(self.backlog) >= self.backlog_limit:
            self.shed += 1
            return False
        self.waited += 1
        self.backlog.append((seq, t0))
        return True

    def _take_idle(self) -> HttpConnection:
        if len(self.ports) > 1:
            wanted = self.ports[self._turn % len(self.ports)]
            self._turn += 1
            for index, conn in enumerate(self.idle):
                if conn.port == wanted:
                    del self.idle[index]
                    return conn
        return self.idle.popleft()

    def answered(
        self, conn: HttpConnection, status: int, seq: int, t0: float, *, refusal: str = ""
    ) -> None:
        """Request ``seq`` was answered; a ``refusal`` (a Tencent error code) makes it fail."""
        now = time.monotonic()
        if status != 200:
            self.errors += 1
            self.reasons[f"HTTP {status}"] += 1
        elif refusal:
            self.errors += 1
            self.reasons[refusal] += 1
            status = 0
        assert self.on_answer is not None
        self.on_answer(conn, status, seq, t0, now)

    def next_or_idle(self, conn: HttpConnection) -> None:
        if self.backlog:
            seq, t0 = self.backlog.popleft()
            conn.send(self.build(seq), seq, t0)
        else:
            self.idle.append(conn)

    def broken(self, conn: HttpConnection, why: str) -> None:
        if conn.in_flight is not None:
            self.reasons[why] += 1
            self.errors += 1
            if self.on_answer is not None:
                seq, t0 = conn.in_flight
                conn.in_flight = None
                self.on_answer(conn, 0, seq, t0, time.monotonic())
        if conn in self.idle:
            self.idle.remove(conn)
        if conn in self.connections:
            self.connections.remove(conn)
        if conn.transport is not None:
            conn.transport.abort()


class Generator:
    def __init__(self) -> None:
        self.tracker = Tracker()
        self.devices: list[Device] = []
        self.dids: list[str] = []
        self.things: list[tuple[str, str]] = []
        """The data-template devices, ``(product_id, name)``."""
        self.thing_head = b""
        self.thing_bodies: list[bytes] = []
        self.publisher: Publisher | None = None
        self.publish_templates: list[bytes] = []
        self.pool: HttpPool | None = None
        self.control_heads: list[bytes] = []
        self.status_request = b""
        self.seq = 0
        self._pinger: asyncio.Task[None] | None = None

    async def connect_devices(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        thing = cmd.get("dialect", "gizwits") == "tencent"
        for entry in cmd["devices"]:
            if thing:
                product_id, name, psk = entry[:3]
                device = Device(
                    thing_connect_packet(product_id, name, psk, keepalive=KEEPALIVE),
                    thing_topic("down", "property", product_id, name),
                    self.tracker,
                    reply_topic=thing_topic("up", "property", product_id, name),
                )
                label = product_id + name
            else:
                label, passcode = entry[:2]
                device = Device(
                    connect_packet(
                        label,
                        cmd.get("password", passcode),
                        keepalive=KEEPALIVE,
                        username=cmd.get("username"),
                    ),
                    f"app2dev/{label}/#",
                    self.tracker,
                    did=label,
                )
            await loop.create_connection(functools.partial(_same, device), cmd["host"], cmd["port"])
            code = await asyncio.wait_for(device.accepted, 30)
            if code != 0:
                raise RuntimeError(f"device {label} refused with CONNACK {code}")
            await asyncio.wait_for(device.subscribed, 30)
            self.devices.append(device)
            if thing:
                self.things.append((product_id, name))
            else:
                self.dids.append(label)
        if self._pinger is None:
            self._pinger = asyncio.create_task(self._ping())
        return {"connected": len(self.devices), "seconds": time.monotonic() - started}

    async def connect_publisher(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        client_id = cmd["client_id"]
        _, publisher = await loop.create_connection(
            lambda: Publisher(
                connect_packet(
                    client_id,
                    cmd.get("password", "x"),
                    keepalive=0,
                    username=cmd.get("username"),
                )
            ),
            cmd["host"],
            cmd["port"],
        )
        code = await asyncio.wait_for(publisher.accepted, 30)
        if code != 0:
            raise RuntimeError(f"publisher refused with CONNACK {code}")
        self.publisher = publisher
        frame = encode_frame(Frame(CMD_CONTROL, p0_of(0)))
        self.publish_templates = [
            publish_packet(f"app2dev/{did}/bench", frame)[: -len(p0_of(0))] for did in self.dids
        ]
        return {"connected": True, "packet_bytes": len(self.publish_templates[0]) + 8}

    async def open_http(self, cmd: dict[str, Any]) -> dict[str, Any]:
        ports = [int(port) for port in cmd.get("ports", [])]
        self.pool = HttpPool(cmd["host"], int(cmd["port"]), int(cmd["pool"]), ports)
        await self.pool.open()
        host = f"{cmd['host']}:{cmd['port']}"
        self.control_heads = [
            (
                f"POST /app/control/{did} HTTP/1.1\r\nHost: {host}\r\n"
                f"X-Gizwits-Application-Id: {cmd['appid']}\r\n"
                f"X-Gizwits-User-token: {cmd['token']}\r\n"
                "Content-Type: application/json\r\nContent-Length: "
            ).encode()
            for did in self.dids
        ]
        self.status_request = f"GET /status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.thing_head = (
            f"POST {TOKENAPI} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.thing_bodies = [
            json.dumps(
                {
                    "Action": "AppControlDeviceData",
                    "AccessToken": cmd["token"],
                    "ProductId": product_id,
                    "DeviceName": name,
                    "RequestId": "",
                    "Data": "",
                }
            )
            .encode()
            .split(b'"RequestId": ""')[0]
            for product_id, name in self.things
        ]
        return {"connections": len(self.pool.connections)}

    def control_request(self, seq: int) -> bytes:
        body = b'{"raw":[%s]}' % b",".join(b"%d" % byte for byte in p0_of(seq))
        head = self.control_heads[seq % len(self.control_heads)]
        return head + b"%d\r\n\r\n" % len(body) + body

    def thing_request(self, seq: int) -> bytes:
        """``AppControlDeviceData`` setting the ``name`` property to the sequence number."""
        body = self.thing_bodies[seq % len(self.thing_bodies)] + (
            b'"RequestId": "bench-%d", "Data": "{\\"name\\": \\"%d\\"}"}' % (seq, seq)
        )
        return self.thing_head + b"%d\r\n\r\n" % len(body) + body

    def mqtt_publish(self, seq: int) -> bytes:
        return self.publish_templates[seq % len(self.publish_templates)] + p0_of(seq)

    async def step(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One run of ``kind`` (``control``: POST /app/control -> frame at the device;
        ``tencent``: tokenapi ``AppControlDeviceData`` -> ``control`` at the device;
        ``status``: GET /status -> response; ``mqtt``: PUBLISH from the ceiling's publisher ->
        frame at the device), open loop at ``rate`` commands/s, or closed loop with
        ``concurrency`` in flight when ``rate`` is 0. ``warmup`` seconds unmeasured, then
        ``window`` seconds measured, then at most ``drain`` seconds for the stragglers."""
        kind = cmd["kind"]
        rate = float(cmd["rate"])
        concurrency = int(cmd.get("concurrency", 32))
        server_pids = [int(pid) for pid in cmd.get("server_pids", [cmd["server_pid"]])]
        groups = {
            str(name): [int(pid) for pid in pids] for name, pids in cmd.get("pids", {}).items()
        }
        ours = sorted(set(server_pids) | {pid for pids in groups.values() for pid in pids})
        other_before = await self._wait_for_quiet(ours, float(cmd.get("quiet_wait", 0)))
        if self.pool is not None:  # the server closes connections idle for a few seconds
            await self.pool.open()
        tracker = self.tracker
        tracker.reset()
        running = True
        http_latencies: list[float] = []
        pool = self.pool
        if kind in ("control", "status", "tencent"):
            assert pool is not None
            pool.build = {
                "control": self.control_request,
                "status": self._status,
                "tencent": self.thing_request,
            }[kind]
            pool.read_errors = kind == "tencent"
            pool.errors = pool.waited = pool.shed = 0
            pool.reasons.clear()
        closed = rate <= 0

        def release_http(now: float) -> None:
            assert pool is not None
            seq = self.seq = self.seq + 1
            tracker.released(seq, now)
            if not pool.release(seq, now):
                tracker.failed(seq)

        def on_answer(conn: HttpConnection, status: int, seq: int, t0: float, now: float) -> None:
            assert pool is not None
            if status != 200:
                tracker.failed(seq)
            elif kind == "status":
                tracker.completed(seq, now)
            if tracker.recording:
                http_latencies.append(now - t0)
            if conn.closed:
                return
            if closed and running:
                seq = self.seq = self.seq + 1
                tracker.released(seq, now)
                conn.send(pool.build(seq), seq, now)
            else:
                pool.next_or_idle(conn)

        def release_mqtt(now: float) -> None:
            assert self.publisher is not None
            assert self.publisher.transport is not None
            seq = self.seq = self.seq + 1
            tracker.released(seq, now)
            self.publisher.transport.write(self.mqtt_publish(seq))

        release = release_mqtt if kind == "mqtt" else release_http
        if pool is not None:
            pool.on_answer = on_answer
        pacer: asyncio.Task[None] | None = None
        if closed:
            if kind == "mqtt":

                def next_mqtt() -> None:
                    if running:
                        release_mqtt(time.monotonic())

                tracker.on_complete = next_mqtt
            for _ in range(concurrency):
                release(time.monotonic())
        else:
            pacer = asyncio.create_task(self._pace(rate, release))
        await asyncio.sleep(float(cmd["warmup"]))

        g0, s0, m0 = own_cpu_seconds(), cpu_seconds_of(server_pids), machine_busy_seconds()
        helpers = sorted(set(ours) - set(server_pids))  # not "other processes"
        h0 = cpu_seconds_of(helpers)
        group0 = {name: cpu_seconds_of(pids) for name, pids in groups.items()}
        t0 = time.monotonic()
        tracker.recording = True
        errors0 = pool.errors if pool is not None else 0
        await asyncio.sleep(float(cmd["window"]))
        tracker.recording = False
        elapsed = time.monotonic() - t0
        g1, s1, m1 = own_cpu_seconds(), cpu_seconds_of(server_pids), machine_busy_seconds()
        helper_cpu = (cpu_seconds_of(helpers) - h0) / elapsed
        group_cpu = {
            name: (cpu_seconds_of(pids) - group0[name]) / elapsed for name, pids in groups.items()
        }
        errors = (pool.errors if pool is not None else 0) - errors0
        completed = tracker.completed_in_window
        recorded = tracker.recorded

        running = False
        if pacer is not None:
            pacer.cancel()
        await wait_until(lambda: not tracker.outstanding_recorded(), float(cmd["drain"]))
        lost = tracker.outstanding_recorded()
        if pool is not None:  # let the answers to the last requests come in before the next step
            await wait_until(lambda: len(pool.idle) >= len(pool.connections), 10.0)
            pool.backlog.clear()
        latencies = sorted(tracker.latencies)
        http_sorted = sorted(http_latencies)
        server_cpu = (s1 - s0) / elapsed
        generator_cpu = (g1 - g0) / elapsed
        return {
            "kind": kind,
            "offered": rate,
            "concurrency": concurrency if closed else 0,
            "seconds": elapsed,
            "sent": recorded / elapsed,
            "completed": completed / elapsed,
            "errors": errors,
            "lost": lost,
            "samples": len(latencies),
            "p50": percentile(latencies, 0.50) * 1000,
            "p90": percentile(latencies, 0.90) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
            "max": (latencies[-1] if latencies else 0.0) * 1000,
            "http_p50": percentile(http_sorted, 0.50) * 1000,
            "http_p99": percentile(http_sorted, 0.99) * 1000,
            "server_cpu": server_cpu,
            "generator_cpu": generator_cpu,
            "other_cpu": max(0.0, (m1 - m0) / elapsed - server_cpu - generator_cpu - helper_cpu),
            "cpu": group_cpu,
            "other_before": other_before,
            "waited": pool.waited if pool is not None else 0,
            "shed": pool.shed if pool is not None else 0,
            "duplicates": tracker.duplicates,
            "reasons": dict(pool.reasons) if pool is not None else {},
        }

    def _status(self, seq: int) -> bytes:
        return self.status_request

    async def _pace(self, rate: float, release: Callable[[float], None]) -> None:
        """Release ``rate`` commands/s, in ticks of about a millisecond."""
        started = time.monotonic()
        done = 0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            target = int((now - started) * rate)
            for _ in range(target - done):
                release(now)
            done = target

    async def _wait_for_quiet(self, pids: list[int], limit: float) -> float:
        """Wait (at most ``limit`` seconds) until processes other than ``pids`` (the servers
        and their helpers) and this one use under a quarter of a core; return what they used in
        the last sample (cores).

        The machine is shared: another job's test run takes the cores the server needs.
        """
        deadline = time.monotonic() + limit
        while True:
            m0, s0, g0, t0 = (
                machine_busy_seconds(),
                cpu_seconds_of(pids),
                own_cpu_seconds(),
                time.monotonic(),
            )
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - t0
            busy = machine_busy_seconds() - m0
            ours = cpu_seconds_of(pids) - s0 + own_cpu_seconds() - g0
            other = (busy - ours) / elapsed
            if other < QUIET_SHARE or time.monotonic() > deadline:
                return max(0.0, other)
            print(
                f"  waiting for other processes to go quiet ({other:.0%} of a core)",
                file=sys.stderr,
            )

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE / 3)
            for device in self.devices:
                if device.transport is not None and not device.closed:
                    device.transport.write(PINGREQ)

    def stats(self) -> dict[str, Any]:
        """Commands acknowledged by the devices, devices connected, this process's CPU."""
        return {
            "acknowledged": sum(device.acknowledged for device in self.devices),
            "connected": sum(1 for device in self.devices if not device.closed),
            "cpu": own_cpu_seconds(),
        }

    def close(self) -> None:
        for device in self.devices:
            if device.transport is not None:
                device.transport.close()
        if self.publisher is not None and self.publisher.transport is not None:
            self.publisher.transport.close()
        if self.pool is not None:
            for conn in self.pool.connections:
                if conn.transport is not None:
                    conn.transport.close()


async def serve() -> None:
    generator = Generator()
    await serve_commands(
        {
            "devices": generator.connect_devices,
            "publisher": generator.connect_publisher,
            "http": generator.open_http,
            "step": generator.step,
            "stats": lambda cmd: generator.stats(),
        },
        generator.close,
    )


def main() -> None:
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
