"""Acknowledged commands through the embedded device transport alone, beside Mosquitto: the
closed loop 0x0093 -> device -> 0x0094 with K commands in flight, measured in one run.

What the scheduler does for every run, minus the database: write a 0x0093 command (with an SN)
to a device and wait for the device's 0x0094 with the same SN. Two paths, each with the same
``--devices`` device connections (`bench.control_load` in a process of its own: raw sockets,
every 0x0093 answered at once with a bare 0x0094 on ``dev2app/{did}/{sender}``):

* transport: `iotcloud.gateway.embedded.EmbeddedBroker`, the transport ``iotcloud serve`` runs,
  started in this process with an accept-all authenticator and no registry or storage. A command
  is ``await broker.publish(f"app2dev/{did}/cloud", encode_frame(0x0093 frame))``; the device's
  answer reaches ``on_publish``, which decodes it (`decode_frame`) and completes the command
  waiting for its SN. Nothing else runs in the process: its CPU is the transport's cost.
* Mosquitto (`bench.ceiling_broker`): the devices connected to a throwaway Mosquitto; this
  process plays the cloud through one raw-socket MQTT connection, publishing the same frames on
  ``app2dev/{did}/cloud`` and subscribed to ``dev2app/#`` for the answers.

For each K in ``--in-flight``: K lanes, each sending a command round-robin over the devices and
waiting for its 0x0094 before sending the next (a command not answered within ``--timeout``
seconds counts as lost); ``--warmup`` seconds, then ``--window`` seconds measured: commands
acknowledged per second, and each command's latency from send to acknowledgement.

Usage: ``uv run --frozen python -m bench.control_broker [--devices 1000] [--in-flight 32,256]
[--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

from bench.ceiling_broker import PassThroughMosquitto
from bench.harness import (
    DATAPOINTS,
    Child,
    cpu_seconds,
    load_average,
    machine_busy_seconds,
    own_cpu_seconds,
    percentile,
    raise_open_files,
    wait_for_quiet,
    write_section,
)
from bench.mqtt_wire import (
    CONNACK,
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
from iotcloud.gateway.broker import AclAction, DevicePrincipal, DisconnectReason
from iotcloud.gateway.embedded import EmbeddedBroker

BEFORE = "~1,000"
"""Acknowledged commands/s through the embedded amqtt broker, before the device transport
(issue 12)."""
TARGET = 8000
CLOUD = "cloud"
"""The last level of the command topics: whom the devices answer."""

Send = Callable[[str, bytes], Awaitable[None] | None]


class AcceptAll:
    """`Authenticator`: every client id is a device of product ``bench``."""

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal:
        return DevicePrincipal(did=client_id, product_key="bench")


class ClosedLoop:
    """Commands in flight, each completed by the 0x0094 carrying its SN."""

    def __init__(self, topics: list[str], p0: bytes) -> None:
        self.topics = topics
        self.p0 = p0
        self.pending: dict[int, tuple[asyncio.Future[bool], float]] = {}
        self.sn = 0
        self.unknown = 0
        """Acknowledgements of no command in flight (late, after a timeout, or duplicated)."""

    def acknowledged(self, sn: int) -> None:
        entry = self.pending.pop(sn, None)
        if entry is None:
            self.unknown += 1
        elif not entry[0].done():
            entry[0].set_result(True)

    async def run(
        self,
        send: Send,
        in_flight: int,
        args: argparse.Namespace,
        cpu: Callable[[], dict[str, float]],
    ) -> dict[str, Any]:
        """``in_flight`` lanes for ``args.warmup`` + ``args.window`` seconds; ``cpu()`` is read
        at both ends of the window (CPU seconds of each process that matters)."""
        loop = asyncio.get_running_loop()
        running, recording = True, False
        acked = lost = 0
        latencies: list[float] = []

        async def lane() -> None:
            nonlocal acked, lost
            topics, count = self.topics, len(self.topics)
            while running:
                self.sn = sn = self.sn % 0xFFFF_FFFF + 1
                future: asyncio.Future[bool] = loop.create_future()
                started = time.monotonic()
                self.pending[sn] = (future, started)
                sent = send(topics[sn % count], encode_frame(Frame(CMD_CONTROL_SN, self.p0, sn=sn)))
                if sent is not None:
                    await sent
                ok = await future
                if recording:
                    if ok:
                        acked += 1
                        latencies.append(time.monotonic() - started)
                    else:
                        lost += 1

        async def sweep() -> None:
            while True:
                await asyncio.sleep(args.timeout / 4)
                now = time.monotonic()
                for sn, (future, started) in list(self.pending.items()):
                    if now - started > args.timeout:
                        del self.pending[sn]
                        future.set_result(False)

        sweeper = asyncio.create_task(sweep())
        lanes = [asyncio.create_task(lane()) for _ in range(in_flight)]
        await asyncio.sleep(args.warmup)
        cpu0, m0, t0 = cpu(), machine_busy_seconds(), time.monotonic()
        recording = True
        await asyncio.sleep(args.window)
        recording = False
        cpu1, m1, elapsed = cpu(), machine_busy_seconds(), time.monotonic() - t0
        running = False
        await asyncio.wait(lanes, timeout=args.timeout + 1)
        for task in [*lanes, sweeper]:
            task.cancel()
        await asyncio.gather(*lanes, sweeper, return_exceptions=True)
        self.pending.clear()
        latencies.sort()
        used = {name: (cpu1[name] - cpu0[name]) / elapsed for name in cpu0}
        return {
            "in_flight": in_flight,
            "seconds": elapsed,
            "rate": acked / elapsed,
            "lost": lost,
            "p50": percentile(latencies, 0.50) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
            "max": (latencies[-1] if latencies else 0.0) * 1000,
            "cpu": used,
            "other_cpu": max(0.0, (m1 - m0) / elapsed - sum(used.values())),
        }


class AckEvents:
    """`BrokerEvents` of the transport path: a device's 0x0094 completes its command."""

    def __init__(self) -> None:
        self.closed_loop: ClosedLoop | None = None
        self.sessions = 0
        self.denied = 0

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        self.sessions += 1

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        self.sessions -= 1

    async def on_publish(self, principal: DevicePrincipal, topic: str, payload: bytes) -> None:
        frame = decode_frame(payload)
        if frame.cmd == CMD_ACK_SN and frame.sn is not None and self.closed_loop is not None:
            self.closed_loop.acknowledged(frame.sn)

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        self.denied += 1


class Cloud(asyncio.Protocol):
    """The Mosquitto path's cloud: one MQTT connection publishing the commands and subscribed
    to ``dev2app/#`` for the devices' 0x0094."""

    def __init__(self, closed_loop: ClosedLoop) -> None:
        self.closed_loop = closed_loop
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._packets = PacketReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(connect_packet("bench-cloud", "x", keepalive=0))

    def data_received(self, data: bytes) -> None:
        buffer = self._packets.buffer
        for kind, start, end in self._packets.feed(data):
            if kind == PUBLISH:
                _, payload = publish_parts(buffer, start, end)
                frame = decode_frame(bytes(buffer[payload:end]))
                if frame.cmd == CMD_ACK_SN and frame.sn is not None:
                    self.closed_loop.acknowledged(frame.sn)
            elif kind == CONNACK and buffer[start + 1] != 0 and not self.ready.done():
                self.ready.set_exception(RuntimeError(f"CONNACK {buffer[start + 1]}"))
            elif kind == CONNACK:
                self.write(subscribe_packet("dev2app/#"))
            elif kind == SUBACK and not self.ready.done():
                self.ready.set_result(None)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def send(self, topic: str, frame: bytes) -> None:
        self.write(publish_packet(topic, frame))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed ({exc})"))


@dataclass
class Figures:
    devices: int
    load_average: str = ""
    mosquitto: str = ""
    transport: list[dict[str, Any]] = field(default_factory=list)
    ceiling: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fake_dids(count: int) -> list[list[str]]:
    return [[f"bench{index:017d}", "x"] for index in range(count)]


def command_p0() -> bytes:
    """The P0 of the commands: two pet_house data points written, as a timer's task does."""
    codec = P0Codec(load_product_definition(Path(DATAPOINTS).read_bytes()))
    return codec.encode_control({"LED_R": 10, "LED_G": 20})


async def connect_devices(port: int, args: argparse.Namespace) -> Child:
    devices = Child("bench.control_load")
    try:
        made = await asyncio.to_thread(
            devices.call,
            cmd="devices",
            host="127.0.0.1",
            port=port,
            devices=fake_dids(args.devices),
        )
    except BaseException:
        await asyncio.to_thread(devices.close)
        raise
    if made["connected"] != args.devices:
        await asyncio.to_thread(devices.close)
        raise RuntimeError(f"only {made['connected']} of {args.devices} devices connected")
    return devices


async def quiet(pids: list[int], args: argparse.Namespace) -> None:
    await asyncio.to_thread(wait_for_quiet, pids, args.quiet_wait)


def report(label: str, result: dict[str, Any]) -> None:
    used = ", ".join(f"{name} {share:.0%}" for name, share in result["cpu"].items())
    print(
        f"  {label}, {result['in_flight']} in flight: {result['rate']:,.0f} acknowledged/s, "
        f"p50 {result['p50']:.1f} p99 {result['p99']:.1f} max {result['max']:.1f} ms, lost "
        f"{result['lost']}; CPU {used}, other {result['other_cpu']:.0%}",
        file=sys.stderr,
    )


async def measure_transport(figures: Figures, args: argparse.Namespace, p0: bytes) -> None:
    print("transport: EmbeddedBroker in this process", file=sys.stderr)
    events = AckEvents()
    topics = [f"app2dev/{did}/{CLOUD}" for did, _ in fake_dids(args.devices)]
    async with EmbeddedBroker("127.0.0.1", 0, AcceptAll(), events) as broker:
        devices = await connect_devices(broker.port, args)
        try:
            for in_flight in args.in_flight:
                closed_loop = events.closed_loop = ClosedLoop(topics, p0)
                await quiet([devices.pid], args)

                def cpu() -> dict[str, float]:
                    return {"transport": own_cpu_seconds(), "devices": cpu_seconds(devices.pid)}

                result = await closed_loop.run(broker.publish, in_flight, args, cpu)
                result["unknown"] = closed_loop.unknown
                report("transport", result)
                figures.transport.append(result)
            if events.denied:
                figures.notes.append(f"the transport refused {events.denied} device actions")
        finally:
            await asyncio.to_thread(devices.close)


async def measure_mosquitto(figures: Figures, args: argparse.Namespace, p0: bytes) -> None:
    print("ceiling: Mosquitto", file=sys.stderr)
    topics = [f"app2dev/{did}/{CLOUD}" for did, _ in fake_dids(args.devices)]
    loop = asyncio.get_running_loop()
    with PassThroughMosquitto() as mosquitto:
        figures.mosquitto = mosquitto.version
        devices = await connect_devices(mosquitto.port, args)
        try:
            for in_flight in args.in_flight:
                closed_loop = ClosedLoop(topics, p0)
                transport, cloud = await loop.create_connection(
                    partial(Cloud, closed_loop), "127.0.0.1", mosquitto.port
                )
                try:
                    await asyncio.wait_for(cloud.ready, 30)
                    await quiet([devices.pid, mosquitto.pid], args)

                    def cpu() -> dict[str, float]:
                        return {
                            "Mosquitto": cpu_seconds(mosquitto.pid),
                            "cloud": own_cpu_seconds(),
                            "devices": cpu_seconds(devices.pid),
                        }

                    result = await closed_loop.run(cloud.send, in_flight, args, cpu)
                    result["unknown"] = closed_loop.unknown
                finally:
                    transport.close()
                report("Mosquitto", result)
                figures.ceiling.append(result)
        finally:
            await asyncio.to_thread(devices.close)


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    best = max(figures.transport, key=lambda r: r["rate"], default=None)
    ceiling = max(figures.ceiling, key=lambda r: r["rate"], default=None)
    targets = [
        "| target | this run | before the device transport | |",
        "|---|---:|---:|---|",
    ]
    if best is not None:
        targets.append(
            "| acknowledged commands/s through the embedded transport, closed loop "
            f"({best['in_flight']} in flight) | **{best['rate']:,.0f}** | {BEFORE} "
            f"| ≥ {TARGET:,}: {verdict(best['rate'] >= TARGET)} |"
        )
    if ceiling is not None:
        share = (
            f" (the transport: {best['rate'] / ceiling['rate']:.0%} of this)"
            if best and ceiling["rate"]
            else ""
        )
        targets.append(
            f"| ceiling: Mosquitto, the same closed loop ({ceiling['in_flight']} in flight) "
            f"| {ceiling['rate']:,.0f}{share} | - | |"
        )
    rows = [
        "| path | in flight | acknowledged/s | p50 ms | p99 ms | max ms | lost "
        "| transport or broker CPU | cloud CPU | devices CPU | other processes CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, results in (
        ("embedded transport", figures.transport),
        ("Mosquitto", figures.ceiling),
    ):
        for result in results:
            cpu = result["cpu"]
            broker = cpu.get("transport", cpu.get("Mosquitto", 0.0))
            cloud = f"{cpu['cloud']:.0%}" if "cloud" in cpu else "(same process)"
            rows.append(
                f"| {name} | {result['in_flight']} | {result['rate']:,.0f} "
                f"| {result['p50']:.1f} | {result['p99']:.1f} | {result['max']:.1f} "
                f"| {result['lost']:,} | {broker:.0%} | {cloud} | {cpu['devices']:.0%} "
                f"| {result['other_cpu']:.0%} |"
            )
    lines = [
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
        f"{figures.load_average} at the start): `EmbeddedBroker` in the benchmark's own process "
        "(uvloop, accept-all authenticator, no storage) sending 0x0093 commands with "
        "`broker.publish` and completing each on the device's 0x0094 in `on_publish`; beside it "
        f"{figures.mosquitto or 'Mosquitto'} with the benchmark's process as the cloud (one MQTT "
        f"connection). One device process (`bench.control_load`: {figures.devices:,} MQTT 3.1 "
        "device connections answering each 0x0093 at once) on the same machine, sharing its "
        f"cores. Each row: {args.warmup:g} s warm-up, {args.window:g} s measured; latency from "
        "send to acknowledgement.",
        "",
        *targets,
        "",
        *rows,
    ]
    lines += [f"- {note}" for note in figures.notes]
    in_flight = ",".join(str(k) for k in args.in_flight)
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.control_broker --devices {figures.devices} "
        f"--in-flight {in_flight} --write`",
    ]
    return "\n".join(lines)


SECTION = """## Commands: acknowledged through the device transport

`uv run --frozen python -m bench.control_broker --write`: the closed loop the scheduler runs for
every timer (0x0093 to a device, its 0x0094 back, matched by SN) through the embedded device
transport alone, in the benchmark's process with no database, beside Mosquitto carrying the same
loop. HTTP control through the whole server is in "Control: app command to device frame".
"""


async def run(args: argparse.Namespace) -> Figures:
    figures = Figures(devices=args.devices, load_average=load_average())
    p0 = command_p0()
    await measure_transport(figures, args, p0)
    if not args.skip_ceiling:
        await measure_mosquitto(figures, args, p0)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--in-flight",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[32, 256],
        help="commands awaiting their acknowledgement, comma-separated (one row each)",
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds before a command is lost"
    )
    parser.add_argument("--skip-ceiling", action="store_true", help="measure the transport only")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait, before each row, for other processes to go quiet",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    raise_open_files(2 * args.devices + 1000)
    import uvloop

    figures = uvloop.run(run(args))
    text = render(figures, args)
    print(text)
    if args.write:
        write_section(
            "commands",
            "transport",
            text,
            heading="Commands: acknowledged through the device transport",
            intro=SECTION,
        )


if __name__ == "__main__":
    main()
