"""Idle connections: the memory of one embedded ``iotcloud serve`` process holding tens of
thousands of connected, idle devices.

Starts a real ``iotcloud serve`` (SQLite, or PostgreSQL with ``--postgres``) with
``IOTCLOUD_MQTT_MAX_CONNECTIONS`` above ``--devices``, creates the devices with ``iotcloud device
import``, reads the server's RSS, then connects every device at once from ``--processes``
`bench.mqtt_load` processes (``--concurrency`` handshakes in flight in each; Gizwits MQTT 3.1,
keep-alive 300 s, nothing published) and reads the RSS again once they have been idle for
``--settle`` seconds: the difference per device is what an idle connection costs. The server's
CPU over that idle stretch is reported too (keep-alive timers, presence writes).

Each connection is a file descriptor in the server and in a generator, so this process raises
its open-file limit (``RLIMIT_NOFILE``) to ``--devices`` plus a margin before starting them:
they inherit it. Without the privilege to go past the hard limit it stops there, and the run
connects as many devices as the limit allows (a note says so, and the figure at ``--devices`` is
projected from the cost per device).

Usage: ``uv run --frozen python -m bench.idle [--devices 20000] [--processes 4] [--write]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench.harness import (
    DATAPOINTS,
    Child,
    bench_server,
    cpu_seconds,
    database_query,
    edge_counters,
    import_product,
    load_average,
    open_files_limit,
    peak_rss_mib,
    pid_of,
    raise_open_files,
    rss_mib,
    throwaway_database,
    write_section,
)
from bench.ingest import create_devices

BEFORE_KIB = 54
"""KiB of RSS per idle connected device with the embedded amqtt broker (issue 12)."""
TARGET_MIB = 1024
MAX_CONNECTIONS = 25_000
FD_RESERVE = 200
"""File descriptors the server needs besides device connections (database, listeners, logs)."""


@dataclass
class Figures:
    backend: str
    wanted: int
    devices: int = 0
    load_average: str = ""
    open_files: int = 0
    create_seconds: float = 0.0
    connected: int = 0
    refused: int = 0
    connect_seconds: float = 0.0
    still_connected: int = 0
    rss_before: float = 0.0
    rss_after: float = 0.0
    rss_peak: float = 0.0
    idle_cpu: float = 0.0
    connect_cpu: float = 0.0
    transport_connections: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_device_kib(self) -> float:
        if not self.connected:
            return 0.0
        return (self.rss_after - self.rss_before) * 1024 / self.connected

    @property
    def projected_mib(self) -> float:
        """RSS with ``wanted`` devices at the cost per device measured."""
        return self.rss_before + self.per_device_kib * self.wanted / 1024


def measure(figures: Figures, args: argparse.Namespace, database_url: str | None) -> None:
    with bench_server(
        database_url, notes=figures.notes, mqtt_max_connections=MAX_CONNECTIONS
    ) as server:
        pid = pid_of(server)
        figures.open_files = open_files_limit(pid)
        if figures.open_files < figures.wanted + FD_RESERVE:
            figures.devices = max(0, figures.open_files - FD_RESERVE)
            figures.notes.append(
                f"the server's open-file limit is {figures.open_files:,} (this machine's hard "
                f"limit, which an unprivileged process cannot raise), so {figures.devices:,} "
                f"devices were connected, not {figures.wanted:,}; RSS at {figures.wanted:,} is "
                "projected from the cost per device"
            )
        else:
            figures.devices = figures.wanted
        query = database_query(server, database_url)
        started = time.monotonic()
        devices = create_devices(server, query, import_product(server), figures.devices)
        figures.create_seconds = time.monotonic() - started
        print(
            f"  created {len(devices):,} devices in {figures.create_seconds:.0f} s",
            file=sys.stderr,
        )
        time.sleep(args.settle)
        figures.rss_before = rss_mib(pid)
        generators = [Child("bench.mqtt_load") for _ in range(args.processes)]
        try:
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            for index, generator in enumerate(generators):
                generator.send(
                    cmd="connect",
                    host="127.0.0.1",
                    port=int(server.env["IOTCLOUD_MQTT_PORT"]),
                    devices=devices[index :: args.processes],
                    datapoints=str(DATAPOINTS),
                    concurrency=args.concurrency,
                )
            replies = [generator.read() for generator in generators]
            figures.connect_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            figures.connected = sum(reply["connected"] for reply in replies)
            figures.refused = sum(reply["refused"] for reply in replies)
            figures.connect_seconds = max(reply["seconds"] for reply in replies)
            print(
                f"  connected {figures.connected:,} devices ({figures.refused:,} refused) in "
                f"{figures.connect_seconds:.1f} s; RSS {figures.rss_before:,.0f} MiB before, "
                f"{rss_mib(pid):,.0f} MiB now",
                file=sys.stderr,
            )
            time.sleep(args.settle)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(args.settle)
            figures.idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            figures.rss_after = rss_mib(pid)
            figures.rss_peak = peak_rss_mib(pid)
            stats = edge_counters(server)
            figures.transport_connections = None if stats is None else stats["connections"]
            figures.still_connected = sum(
                int(generator.call(cmd="stats")["connected"]) for generator in generators
            )
        finally:
            for generator in generators:
                generator.close()


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    full = figures.connected >= figures.wanted
    total = figures.rss_after if full else figures.projected_mib
    measured = (
        f"**{figures.rss_after:,.0f} MiB**"
        if full
        else f"**{figures.projected_mib:,.0f} MiB projected** ({figures.rss_after:,.0f} MiB "
        f"with {figures.connected:,})"
    )
    before_mib = figures.rss_before + BEFORE_KIB * figures.wanted / 1024
    transport = (
        "n/a" if figures.transport_connections is None else f"{figures.transport_connections:,}"
    )
    lines = [
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
        f"{figures.load_average} at the start): one `iotcloud serve` process ({figures.backend}, "
        "uvloop, embedded device transport, `IOTCLOUD_MQTT_MAX_CONNECTIONS` "
        f"{MAX_CONNECTIONS:,}, open-file limit {figures.open_files:,}) and {args.processes} "
        "load-generator processes (`bench.mqtt_load`: Gizwits MQTT 3.1 connections, keep-alive "
        f"300 s, {args.concurrency} handshakes in flight each) on the same machine. RSS read "
        f"from `/proc` before connecting and after {2 * args.settle:g} s idle.",
        "",
        "| target | this run | before the device transport | |",
        "|---|---:|---:|---|",
        f"| RSS of one embedded process with {figures.wanted:,} connected idle devices "
        f"| {measured}, {figures.per_device_kib:,.1f} KiB per device | ~{BEFORE_KIB} KiB per "
        f"device (≈ {before_mib:,.0f} MiB) | < 1 GiB: {verdict(total < TARGET_MIB)} |",
        "",
        "| devices connected | refused | connect time s | connections/s | still connected "
        "| transport's count | RSS before MiB | RSS idle MiB | peak RSS MiB | KiB per device "
        "| server CPU connecting | server CPU idle |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {figures.connected:,} | {figures.refused:,} | {figures.connect_seconds:.1f} "
        f"| {figures.connected / figures.connect_seconds if figures.connect_seconds else 0:,.0f} "
        f"| {figures.still_connected:,} | {transport} | {figures.rss_before:,.0f} "
        f"| {figures.rss_after:,.0f} | {figures.rss_peak:,.0f} | {figures.per_device_kib:,.1f} "
        f"| {figures.connect_cpu:.0%} | {figures.idle_cpu:.0%} |",
        "",
        f"- devices created with `iotcloud device import` in {figures.create_seconds:.0f} s",
    ]
    lines += [f"- {note}" for note in figures.notes]
    options = " --postgres" if args.postgres else ""
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.idle --devices {figures.wanted} --processes "
        f"{args.processes}{options} --write`",
    ]
    return "\n".join(lines)


SECTION = """## Idle connections: memory per connected device

`uv run --frozen python -m bench.idle --write`: one embedded `iotcloud serve` process, its RSS
before and after 20,000 Gizwits devices connect and stay idle. Each device connection is a file
descriptor: the benchmark raises the open-file limit for the server and the load generators (see
"Open files" in the README for production).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight per generator"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds idle before each reading"
    )
    parser.add_argument("--database-url", default=None, help="an existing, empty database")
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL and use it"
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    raise_open_files(args.devices + FD_RESERVE + 1000)
    with throwaway_database(args.postgres, args.database_url) as database_url:
        figures = Figures(
            backend="PostgreSQL 15" if database_url else "SQLite (WAL)",
            wanted=args.devices,
            load_average=load_average(),
        )
        measure(figures, args, database_url)
    report = render(figures, args)
    print(report)
    if args.write:
        write_section(
            "idle",
            "postgres" if database_url else "sqlite",
            report,
            heading="Idle connections: memory per connected device",
            intro=SECTION,
        )


if __name__ == "__main__":
    main()
