"""Device report ingestion: reports/s persisted by ``iotcloud serve`` beside the embedded broker's
own pass-through rate, and the server's memory with thousands of connected devices.

One run measures, at each offered rate in ``--rates`` (reports/s, spread evenly over
``--devices`` connections):

* the ceiling: `bench.ceiling_broker` (the same embedded broker, no registry, no storage) with
  the device connections publishing and one subscriber on ``dev2app/#``; PUBLISH packets/s the
  subscriber received;
* persisted: a real ``iotcloud serve`` (SQLite, or PostgreSQL with ``--postgres``) with as many
  registered devices publishing valid 0x0091 reports; rows/s added to ``device_history`` (each
  report also upserts ``device_latest`` and appends to ``device_events`` in the same
  transaction), read from the database while it runs, so only committed reports count;
* memory: the server's RSS with every device connected and idle, and while they report.

The load comes from `bench.mqtt_load`, a separate process writing pre-encoded packets on raw
asyncio sockets; its own CPU use is reported beside the server's. Each step runs ``--warmup``
seconds, then is measured over ``--window`` seconds; between steps the server drains.

Usage: ``uv run python -m bench.ingest [--devices 5000] [--rates 1000,2000,3000,4000]
[--postgres] [--write]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.server import RunningServer

from bench.harness import (
    DATAPOINTS,
    Child,
    add_run_options,
    bench_server,
    cpu_seconds,
    database_query,
    import_product,
    machine_busy_seconds,
    pid_of,
    rss_mib,
    throwaway_database,
    wait_for_quiet,
    write_section,
)


@dataclass
class Step:
    offered: int
    sent: float = 0.0
    rate: float = 0.0  # delivered (ceiling) or persisted, per second
    server_cpu: float = 0.0  # fraction of one core
    generator_cpu: float = 0.0
    rss: float = 0.0
    other_cpu: float = 0.0  # every other process on the machine, in cores
    skipped: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Figures:
    backend: str
    devices: int
    packet_bytes: int = 0
    ceiling: list[Step] = field(default_factory=list)
    persisted: list[Step] = field(default_factory=list)
    rss_before: float = 0.0
    rss_idle: float = 0.0
    connect_seconds: float = 0.0


def measure_steps(
    generator: Child,
    server_pid: int,
    rates: list[int],
    count: Any,
    args: argparse.Namespace,
) -> list[Step]:
    """Run each offered rate; ``count()`` is what is measured (delivered or persisted).

    Before each rate the machine must be quiet (`wait_for_quiet`), after it the count must
    stop growing (the backlog of an overloaded step is drained before the next one starts).
    """

    def settle() -> None:
        last, deadline = count(), time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            now = count()
            if now == last:
                return
            last = now

    steps = []
    for offered in rates:
        wait_for_quiet([generator.pid, server_pid], args.quiet_wait)
        generator.call(cmd="rate", rate=offered)
        time.sleep(args.warmup)
        g0, c0, s0 = generator.call(cmd="stats"), count(), cpu_seconds(server_pid)
        t0, m0 = time.monotonic(), machine_busy_seconds()
        time.sleep(args.window)
        g1, c1, s1 = generator.call(cmd="stats"), count(), cpu_seconds(server_pid)
        elapsed, m1 = time.monotonic() - t0, machine_busy_seconds()
        rss = rss_mib(server_pid)
        generator.call(cmd="rate", rate=0)
        step = Step(
            offered=offered,
            sent=(g1["sent"] - g0["sent"]) / (g1["time"] - g0["time"]),
            rate=(c1 - c0) / elapsed,
            server_cpu=(s1 - s0) / elapsed,
            generator_cpu=(g1["cpu"] - g0["cpu"]) / (g1["time"] - g0["time"]),
            rss=rss,
            skipped=g1["skipped"] - g0["skipped"],
        )
        step.other_cpu = max(0.0, (m1 - m0) / elapsed - step.server_cpu - step.generator_cpu)
        steps.append(step)
        print(
            f"  {offered:>6}/s offered: sent {step.sent:,.0f}/s, measured {step.rate:,.0f}/s, "
            f"server CPU {step.server_cpu:.0%}, generator CPU {step.generator_cpu:.0%}, "
            f"other processes {step.other_cpu:.0%}, RSS {rss:,.0f} MiB",
            file=sys.stderr,
        )
        settle()
    return steps


def measure_ceiling(figures: Figures, rates: list[int], args: argparse.Namespace) -> None:
    print("ceiling: embedded broker, no storage", file=sys.stderr)
    broker = Child("bench.ceiling_broker", "--port", "0")
    generator = Child("bench.mqtt_load")
    try:
        port = broker.read()["port"]
        devices = [[f"bench{index:017d}", "x"] for index in range(args.devices)]
        made = generator.call(
            cmd="connect", host="127.0.0.1", port=port, devices=devices, datapoints=str(DATAPOINTS)
        )
        if made["connected"] != args.devices:
            raise RuntimeError(f"ceiling: only {made['connected']} devices connected")
        figures.packet_bytes = made["packet_bytes"]
        generator.call(
            cmd="subscribe",
            host="127.0.0.1",
            port=port,
            client_id="bench-subscriber",
            passcode="x",
            filter="dev2app/#",
        )
        time.sleep(1)
        figures.ceiling = measure_steps(
            generator, broker.pid, rates, lambda: generator.call(cmd="stats")["received"], args
        )
    finally:
        generator.close()
        broker.close()


def create_devices(
    server: RunningServer, query: Any, product_key: str, devices: int
) -> list[list[str]]:
    """Create the devices with ``iotcloud device import`` (a CSV with passcodes), then read their
    dids back from the database: ``[[did, passcode], ...]``. Much faster than registering each
    over HTTP, which the simulator and the integration tests already cover."""
    csv = server.data_dir / "devices.csv"
    passcode = "BENCHPASSX"
    csv.write_text(
        "product_key,mac,passcode\n"
        + "".join(f"{product_key},02b0c0{index:06x},{passcode}\n" for index in range(devices))
    )
    server.cli("device", "import", str(csv), "--json")
    rows = query("SELECT did, passcode FROM devices WHERE mac LIKE '02b0c0%' ORDER BY mac")
    return [[str(did), str(code)] for did, code in rows]


def measure_persisted(
    figures: Figures, rates: list[int], args: argparse.Namespace, database_url: str | None
) -> None:
    print(f"persisted: iotcloud serve, {figures.backend}", file=sys.stderr)
    with bench_server(database_url) as server:
        pid = pid_of(server)
        product_key = import_product(server)
        query = database_query(server, database_url)
        devices = create_devices(server, query, product_key, args.devices)
        time.sleep(2)
        figures.rss_before = rss_mib(pid)
        generator = Child("bench.mqtt_load")
        try:
            made = generator.call(
                cmd="connect",
                host="127.0.0.1",
                port=int(server.env["IOTCLOUD_MQTT_PORT"]),
                devices=devices,
                datapoints=str(DATAPOINTS),
            )
            if made["connected"] != args.devices:
                raise RuntimeError(f"persisted: only {made['connected']} devices connected")
            figures.connect_seconds = made["seconds"]
            time.sleep(5)  # presence written, garbage settled
            figures.rss_idle = rss_mib(pid)
            print(
                f"  connected {made['connected']} devices in {made['seconds']:.0f}s; "
                f"RSS {figures.rss_before:,.0f} MiB before, {figures.rss_idle:,.0f} MiB idle",
                file=sys.stderr,
            )

            def count() -> int:
                return int(query("SELECT count(*) FROM device_history")[0][0])

            figures.persisted = measure_steps(generator, pid, rates, count, args)
            connected = generator.call(cmd="stats")["connected"]
            if connected != args.devices:
                print(f"  warning: {args.devices - connected} devices lost", file=sys.stderr)
        finally:
            generator.close()


def kept_up(step: Step) -> bool:
    """Whether the measured rate kept pace with what the generator sent (and was not a
    backlog being worked off)."""
    return 0.95 * step.sent <= step.rate <= 1.05 * step.sent


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ceiling = {step.offered: step for step in figures.ceiling}
    rows = [
        "| offered reports/s | ceiling: delivered/s | broker CPU | persisted/s | % of ceiling "
        "| server CPU | generator CPU | other processes CPU | server RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in figures.persisted:
        top = ceiling.get(step.offered)
        share = f"{100 * step.rate / top.rate:.0f}%" if top and top.rate else "-"
        behind = "" if kept_up(step) else " †"
        top_behind = "" if top is None or kept_up(top) else " †"
        rows.append(
            f"| {step.offered:,} | {top.rate if top else 0:,.0f}{top_behind} "
            f"| {top.server_cpu if top else 0:.0%} | {step.rate:,.0f}{behind} | {share} "
            f"| {step.server_cpu:.0%} | {step.generator_cpu:.0%} | {step.other_cpu:.0%} "
            f"| {step.rss:,.0f} |"
        )
    best_ceiling = max((s.rate for s in figures.ceiling if kept_up(s)), default=0.0)
    best = max((s.rate for s in figures.persisted if kept_up(s)), default=0.0)
    peak = max((s.rate for s in figures.persisted), default=0.0)
    peak_rss = max((s.rss for s in figures.persisted), default=0.0)
    ratio = best / best_ceiling if best_ceiling else 0.0
    database = "PostgreSQL 15" if args.postgres or args.database_url else "SQLite (WAL)"
    return "\n".join(
        [
            f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}): one "
            f"`iotcloud serve` process ({database}, uvloop) and one load-generator process "
            f"(`bench.mqtt_load`: {figures.devices:,} MQTT 3.1 device connections, QoS 0 "
            f"PUBLISH of a {figures.packet_bytes}-byte pet_house 0x0091 report) on the same "
            f"machine, sharing its cores. Each rate: {args.warmup:g} s warm-up, "
            f"{args.window:g} s measured.",
            "",
            *rows,
            "",
            "† did not keep pace with what the generator sent (fell behind: queued, then shed).",
            "",
            f"- best persisted while keeping up: **{best:,.0f} reports/s** (highest at any "
            f"rate: {peak:,.0f}/s); broker ceiling {best_ceiling:,.0f} messages/s; persisted / "
            f"ceiling **{ratio:.0%}**",
            f"- server RSS: {figures.rss_before:,.0f} MiB with no device connected, "
            f"**{figures.rss_idle:,.0f} MiB with {figures.devices:,} connected idle devices** "
            f"(connected in {figures.connect_seconds:.0f} s), {peak_rss:,.0f} MiB at most while "
            "they report",
            "",
            f"Command: `uv run python -m bench.ingest --devices {figures.devices} --rates "
            f"{args.rates}{' --postgres' if args.postgres else ''} --write`",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument(
        "--rates", default="1000,2000,3000,4000", help="offered reports/s, comma-separated"
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    add_run_options(
        parser, ceiling_skips="measure persisted only", quiet_before="before each measured window"
    )
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    with throwaway_database(args.postgres, args.database_url) as database_url:
        backend = "postgres" if database_url else "sqlite"
        figures = Figures(backend=backend, devices=args.devices)
        if not args.skip_ceiling:
            measure_ceiling(figures, rates, args)
        measure_persisted(figures, rates, args, database_url)
    report = render(figures, args)
    print(report)
    if args.write:
        write_section("ingest", backend, report)


if __name__ == "__main__":
    main()
