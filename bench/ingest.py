"""Device report ingestion: reports/s persisted by ``iotcloud serve`` with thousands of connected
devices, beside Mosquitto's own pass-through of the same reports from the same generator, in one
run.

Offered rates (reports/s, spread evenly over ``--devices`` connections) are tried in ascending
order until one is not kept up with (``--all-rates`` goes on):

* the ceiling (``--ceiling-rates``): a throwaway Mosquitto (`bench.ceiling_broker`) with the
  generator's device connections publishing on ``dev2app/{id}`` and one raw-socket subscriber
  on ``dev2app/#`` (a `bench.mqtt_load` process of its own) counting the PUBLISH packets that
  came through: what a C broker does with these messages on this machine;
* persisted (``--rates``): a real ``iotcloud serve`` (SQLite, or PostgreSQL with ``--postgres``)
  with as many registered devices publishing valid reports; rows/s added to ``device_history``
  (each report also upserts ``device_latest`` and appends to ``device_events`` in the same
  transaction), read from the database while it runs, so only committed reports count.
  ``--dialect`` picks the devices: Gizwits (0x0091 pet_house frames on ``dev2app/{did}``),
  data-template (Tencent ``report`` messages of the light template on
  ``$thing/up/property/{PID}/{NAME}``, each answered by the server with a ``report_reply`` the
  device receives), or both: then both fleets are connected to the same server at once and, at
  each rate, the Gizwits step runs, then the data-template step. Reports the server shed at the
  edge come from ``GET /admin/v1/stats`` (``broker.shed``, ``ingest.reports.dropped``; "n/a"
  when the server has no such endpoint), reports the generator could not write because TCP
  pushed back from its own counter;
* memory: the server's RSS with every device connected and idle, and while they report.

A rate is kept up with when the generator sent what was offered (nothing held back by TCP), the
count measured is within 5 % of what was sent, and nothing was shed. The load comes from
`bench.mqtt_load`, a separate process writing pre-encoded packets on raw asyncio sockets; its own
CPU use is reported beside the server's. Each step runs ``--warmup`` seconds, then is measured
over ``--window`` seconds; between steps the server drains.

Usage: ``uv run --frozen python -m bench.ingest [--devices 5000] [--rates 2000,3000,...]
[--ceiling-rates 10000,20000,...] [--dialect gizwits|tencent|both] [--postgres] [--write]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.server import RunningServer

from bench.ceiling_broker import PassThroughMosquitto
from bench.harness import (
    DATAPOINTS,
    TEMPLATE,
    Child,
    add_run_options,
    bench_server,
    count_text,
    counter_delta,
    cpu_seconds,
    create_thing_devices,
    database_query,
    edge_counters,
    import_product,
    import_template,
    load_average,
    machine_busy_seconds,
    pid_of,
    raise_open_files,
    rss_mib,
    throwaway_database,
    wait_for_quiet,
    write_section,
)

BEFORE = "1,945-2,572"
"""Reports/s persisted on SQLite with the embedded amqtt broker (issue 12; BENCHMARKS.md runs of
2026-11 and 2026-12-02), before the device transport."""
TARGET = 5000
IMPORT_BATCH = 5000
"""Devices per ``iotcloud device import`` (each command must finish within a minute)."""
OPEN_FILES_MARGIN = 1000
"""File descriptors beyond the device connections: database, listeners, HTTP, logs."""


@dataclass
class Step:
    offered: int
    sent: float = 0.0
    rate: float = 0.0  # delivered (ceiling) or persisted, per second
    server_cpu: float = 0.0  # fraction of one core
    generator_cpu: float = 0.0
    helper_cpu: float = 0.0  # the ceiling's subscriber
    rss: float = 0.0
    other_cpu: float = 0.0  # every other process on the machine, in cores
    skipped: int = 0  # not written: TCP pushed back
    shed: int | None = None  # shed at the server's edge (broker.shed)
    dropped: int | None = None  # refused by the server's ingest queue
    received: float = 0.0  # what the devices received per second (report_reply)
    backlog: int = 0  # sent since the step started and not yet counted, at the window's end


DIALECTS = {"gizwits": "Gizwits", "tencent": "data template"}
"""The device protocols measured, as the report names them."""


@dataclass
class Fleet:
    """One protocol's devices on the server under test, and what they measured."""

    dialect: str
    packet_bytes: int = 0
    steps: list[Step] = field(default_factory=list)
    rss_before: float = 0.0
    rss_idle: float = 0.0
    connect_seconds: float = 0.0


@dataclass
class Figures:
    backend: str
    devices: int
    load_average: str = ""
    mosquitto: str = ""
    packet_bytes: int = 0
    ceiling: list[Step] = field(default_factory=list)
    fleets: dict[str, Fleet] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def settle(count: Callable[[], int], *, limit: float = 60.0) -> None:
    """Until ``count()`` stops growing (at most ``limit`` seconds): the backlog of an
    overloaded step is drained before the next one starts."""
    last, deadline = count(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(1)
        now = count()
        if now == last:
            return
        last = now


def measure_step(
    generator: Child,
    server_pid: int,
    offered: int,
    count: Callable[[], int],
    args: argparse.Namespace,
    *,
    helpers: Iterable[int] = (),
    server: RunningServer | None = None,
) -> Step:
    """One offered rate; ``count()`` is what is measured (delivered or persisted). ``helpers``
    are the benchmark's other processes (their CPU is not "other processes"); with ``server``,
    what it shed in the window is read from its stats endpoint.

    Before it the machine must be quiet (`wait_for_quiet`), after it the count must settle."""
    helpers = list(helpers)
    wait_for_quiet([generator.pid, server_pid, *helpers], args.quiet_wait)
    start, counted = generator.call(cmd="stats"), count()
    generator.call(cmd="rate", rate=offered)
    time.sleep(args.warmup)
    edge0 = edge_counters(server) if server is not None else None
    g0, c0, s0 = generator.call(cmd="stats"), count(), cpu_seconds(server_pid)
    h0 = sum(cpu_seconds(pid) for pid in helpers)
    t0, m0 = time.monotonic(), machine_busy_seconds()
    time.sleep(args.window)
    g1, c1, s1 = generator.call(cmd="stats"), count(), cpu_seconds(server_pid)
    h1 = sum(cpu_seconds(pid) for pid in helpers)
    elapsed, m1 = time.monotonic() - t0, machine_busy_seconds()
    edge1 = edge_counters(server) if server is not None else None
    rss = rss_mib(server_pid)
    generator.call(cmd="rate", rate=0)
    generated = g1["time"] - g0["time"]
    step = Step(
        offered=offered,
        sent=(g1["sent"] - g0["sent"]) / generated,
        rate=(c1 - c0) / elapsed,
        server_cpu=(s1 - s0) / elapsed,
        generator_cpu=(g1["cpu"] - g0["cpu"]) / generated,
        helper_cpu=(h1 - h0) / elapsed,
        rss=rss,
        skipped=g1["skipped"] - g0["skipped"],
        shed=counter_delta(edge0, edge1, "shed"),
        dropped=counter_delta(edge0, edge1, "dropped"),
        received=(g1["received"] - g0["received"]) / generated,
        backlog=(g1["sent"] - start["sent"]) - (c1 - counted),
    )
    ours = step.server_cpu + step.generator_cpu + step.helper_cpu
    step.other_cpu = max(0.0, (m1 - m0) / elapsed - ours)
    print(
        f"  {offered:>6}/s offered: sent {step.sent:,.0f}/s (not sent {step.skipped:,}), "
        f"measured {step.rate:,.0f}/s ({step.backlog:,} behind), shed {count_text(step.shed)}, "
        "dropped "
        f"{count_text(step.dropped)}, received {step.received:,.0f}/s, server CPU "
        f"{step.server_cpu:.0%}, generator CPU {step.generator_cpu:.0%}, other processes "
        f"{step.other_cpu:.0%}, RSS {rss:,.0f} MiB" + ("" if kept_up(step) else "  (fell behind)"),
        file=sys.stderr,
    )
    settle(count)
    return step


def kept_up(step: Step) -> bool:
    """The generator sent what was offered (within 3 %: TCP did not push back), the measured
    rate kept pace with what was sent (within 5 %), at the window's end less than a second's
    worth of what was sent since the step started was still to be counted, and the server shed
    nothing. (A rate above what was sent is the warm-up's lag being worked off.)"""
    return (
        step.sent >= 0.97 * step.offered
        and step.rate >= 0.95 * step.sent
        and step.backlog <= step.offered
        and not step.shed
        and not step.dropped
    )


def best_kept_up(steps: list[Step]) -> float:
    """The highest rate among the steps that kept up (0 when none did): what was measured, but
    no more than what was sent (a step that kept up may also work off its warm-up's lag)."""
    return max((min(step.rate, step.sent) for step in steps if kept_up(step)), default=0.0)


def first_behind(steps: list[Step]) -> int | None:
    """The lowest offered rate not kept up with, if any."""
    return min((step.offered for step in steps if not kept_up(step)), default=None)


def measure_ceiling(figures: Figures, rates: list[int], args: argparse.Namespace) -> None:
    """Mosquitto's pass-through: the generator's devices publish, one subscriber counts."""
    print("ceiling: Mosquitto pass-through, no storage", file=sys.stderr)
    with PassThroughMosquitto() as mosquitto:
        figures.mosquitto = mosquitto.version
        generator = Child("bench.mqtt_load")
        subscriber = Child("bench.mqtt_load")
        try:
            devices = [[f"bench{index:017d}", "x"] for index in range(args.devices)]
            made = generator.call(
                cmd="connect",
                host="127.0.0.1",
                port=mosquitto.port,
                devices=devices,
                datapoints=str(DATAPOINTS),
            )
            if made["connected"] != args.devices:
                raise RuntimeError(f"ceiling: only {made['connected']} devices connected")
            figures.packet_bytes = made["packet_bytes"]
            subscriber.call(
                cmd="subscribe",
                host="127.0.0.1",
                port=mosquitto.port,
                client_id="bench-subscriber",
                passcode="x",
                filter="dev2app/#",
            )
            time.sleep(1)

            def delivered() -> int:
                return int(subscriber.call(cmd="stats")["received"])

            for offered in rates:
                step = measure_step(
                    generator, mosquitto.pid, offered, delivered, args, helpers=[subscriber.pid]
                )
                figures.ceiling.append(step)
                if not kept_up(step) and not args.all_rates:
                    break
        finally:
            generator.close()
            subscriber.close()


def create_devices(
    server: RunningServer, query: Any, product_key: str, devices: int
) -> list[list[str]]:
    """Create the devices with ``iotcloud device import`` (a CSV with passcodes), then read their
    dids back from the database: ``[[did, passcode], ...]``. Much faster than registering each
    over HTTP, which the simulator and the integration tests already cover."""
    csv = server.data_dir / "devices.csv"
    passcode = "BENCHPASSX"
    for first in range(0, devices, IMPORT_BATCH):
        last = min(devices, first + IMPORT_BATCH)
        csv.write_text(
            "product_key,mac,passcode\n"
            + "".join(
                f"{product_key},02b0c0{index:06x},{passcode}\n" for index in range(first, last)
            )
        )
        server.cli("device", "import", str(csv), "--json")
    rows = query("SELECT did, passcode FROM devices WHERE mac LIKE '02b0c0%' ORDER BY mac")
    return [[str(did), str(code)] for did, code in rows]


def connect_fleet(
    fleet: Fleet, server: RunningServer, query: Any, devices: int, *, processes: int = 1
) -> list[Child]:
    """Create ``devices`` devices of the fleet's protocol on ``server`` and connect them from
    ``processes`` new `bench.mqtt_load` processes at once (returned, idle), each with its share
    of the devices."""
    pid = pid_of(server)
    port = int(server.env["IOTCLOUD_MQTT_PORT"])
    if fleet.dialect == "tencent":
        made_devices = create_thing_devices(server, query, import_template(server), devices)
        connect = {"dialect": "tencent", "template": str(TEMPLATE)}
    else:
        made_devices = create_devices(server, query, import_product(server), devices)
        connect = {"dialect": "gizwits", "datapoints": str(DATAPOINTS)}
    time.sleep(2)
    fleet.rss_before = rss_mib(pid)
    generators = [Child("bench.mqtt_load") for _ in range(processes)]
    try:
        for index, generator in enumerate(generators):
            generator.send(
                cmd="connect",
                host="127.0.0.1",
                port=port,
                devices=made_devices[index::processes],
                concurrency=max(100, 400 // processes),
                **connect,
            )
        replies = [generator.read() for generator in generators]
    except BaseException:
        for generator in generators:
            generator.close()
        raise
    connected = sum(reply["connected"] for reply in replies)
    if connected != devices:
        for generator in generators:
            generator.close()
        raise RuntimeError(f"{fleet.dialect}: only {connected} of {devices} devices connected")
    fleet.connect_seconds = max(reply["seconds"] for reply in replies)
    fleet.packet_bytes = replies[0]["packet_bytes"]
    time.sleep(5)  # presence written, garbage settled
    fleet.rss_idle = rss_mib(pid)
    print(
        f"  {DIALECTS[fleet.dialect]}: connected {connected} devices in "
        f"{fleet.connect_seconds:.0f}s; RSS {fleet.rss_before:,.0f} MiB before, "
        f"{fleet.rss_idle:,.0f} MiB idle",
        file=sys.stderr,
    )
    return generators


def history_count(query: Any) -> Callable[[], int]:
    """Rows committed to ``device_history`` (one per persisted report)."""

    def count() -> int:
        return int(query("SELECT count(*) FROM device_history")[0][0])

    return count


def measure_persisted(
    figures: Figures,
    rates: list[int],
    dialects: list[str],
    args: argparse.Namespace,
    database_url: str | None,
) -> None:
    """Every fleet of ``dialects`` connected to one server; at each rate each fleet's step in
    turn (so both meet the same conditions), counting ``device_history`` rows. A fleet stops
    at the first rate it did not keep up with."""
    print(f"persisted: iotcloud serve, {figures.backend}", file=sys.stderr)
    connections = args.devices * len(dialects)
    with bench_server(
        database_url,
        notes=figures.notes,
        mqtt_max_connections=connections + OPEN_FILES_MARGIN,
    ) as server:
        pid = pid_of(server)
        query = database_query(server, database_url)
        generators: dict[str, Child] = {}
        try:
            for dialect in dialects:
                fleet = figures.fleets[dialect] = Fleet(dialect)
                generators[dialect] = connect_fleet(fleet, server, query, args.devices)[0]
            count = history_count(query)
            running = dict(generators)
            for offered in rates:
                for dialect, generator in list(running.items()):
                    print(f"  {DIALECTS[dialect]}:", file=sys.stderr)
                    step = measure_step(generator, pid, offered, count, args, server=server)
                    figures.fleets[dialect].steps.append(step)
                    if not kept_up(step) and not args.all_rates:
                        del running[dialect]
                if not running:
                    break
            for dialect, generator in generators.items():
                connected = generator.call(cmd="stats")["connected"]
                if connected != args.devices:
                    figures.notes.append(
                        f"{args.devices - connected} {DIALECTS[dialect]} devices were "
                        "disconnected during the run"
                    )
        finally:
            for generator in generators.values():
                generator.close()


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    fleets = list(figures.fleets.values())
    database = "PostgreSQL 15" if args.postgres or args.database_url else "SQLite (WAL)"
    best_ceiling = best_kept_up(figures.ceiling)
    peak_ceiling = max((step.rate for step in figures.ceiling), default=0.0)
    targets = [
        "| target | this run | before the device transport | |",
        "|---|---:|---:|---|",
    ]
    for fleet in fleets:
        best = best_kept_up(fleet.steps)
        if fleet.dialect == "gizwits":
            targets.append(
                f"| Gizwits reports persisted/s, {figures.devices:,} connected devices, "
                f"{database} | **{best:,.0f}** | {BEFORE} | ≥ {TARGET:,}: "
                f"{verdict(best >= TARGET)} |"
            )
        else:
            targets.append(
                f"| data-template reports persisted/s, {figures.devices:,} connected devices, "
                f"{database} | **{best:,.0f}** | 1,003 | |"
            )
    if figures.ceiling:
        targets.append(
            f"| ceiling: Mosquitto pass-through, messages/s kept up with (highest delivered) "
            f"| {best_ceiling:,.0f} ({peak_ceiling:,.0f}) | - | |"
        )
    lines = [
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
        f"{figures.load_average} at the start): one `iotcloud serve` process ({database}, "
        "uvloop, embedded device transport) and one load-generator process per device protocol "
        f"(`bench.mqtt_load`: {figures.devices:,} MQTT 3.1 device connections each, QoS 0 "
        "PUBLISH) on the same machine, sharing its cores; for the ceiling, a throwaway "
        f"{figures.mosquitto or 'Mosquitto'} instead of the server, the same generator and one "
        "subscriber process on `dev2app/#`. Each step: "
        f"{args.warmup:g} s warm-up, {args.window:g} s measured; rates are tried in ascending "
        "order until one is not kept up with.",
        "",
        *targets,
        "",
    ]
    if figures.ceiling:
        lines += [
            f"Ceiling: Mosquitto, {figures.packet_bytes}-byte pet_house 0x0091 report.",
            "",
            "| offered/s | sent/s | delivered/s | Mosquitto CPU | generator CPU "
            "| subscriber CPU | other processes CPU |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for step in figures.ceiling:
            lines.append(
                f"| {step.offered:,} | {step.sent:,.0f} | {step.rate:,.0f}{mark(step)} "
                f"| {step.server_cpu:.0%} | {step.generator_cpu:.0%} | {step.helper_cpu:.0%} "
                f"| {step.other_cpu:.0%} |"
            )
        lines.append("")
    packets = ", ".join(
        f"{fleet.packet_bytes}-byte "
        + ("pet_house 0x0091 report" if fleet.dialect == "gizwits" else "light `report`")
        for fleet in fleets
    )
    lines += [
        f"Persisted: `iotcloud serve`, {packets}. Not sent: reports the generator held back "
        "because TCP pushed back (the server stopped reading); shed and dropped: from "
        "`GET /admin/v1/stats` (`broker.shed`, `ingest.reports.dropped`). Replies: the "
        "`report_reply` the server publishes to a data-template device for each report.",
        "",
        "| offered/s | devices | sent/s | not sent | persisted/s | behind at the end | shed "
        "| dropped | server CPU | server CPU µs/report | replies/s | generator CPU "
        "| other processes CPU | server RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for offered in sorted({step.offered for fleet in fleets for step in fleet.steps}):
        for fleet in fleets:
            found = next((s for s in fleet.steps if s.offered == offered), None)
            if found is None:
                continue
            step = found
            cost = f"{1e6 * step.server_cpu / step.rate:,.0f}" if step.rate else "-"
            lines.append(
                f"| {offered:,} | {DIALECTS[fleet.dialect]} | {step.sent:,.0f} "
                f"| {step.skipped:,} | {step.rate:,.0f}{mark(step)} | {step.backlog:,} "
                f"| {count_text(step.shed)} "
                f"| {count_text(step.dropped)} | {step.server_cpu:.0%} | {cost} "
                f"| {step.received:,.0f} | {step.generator_cpu:.0%} | {step.other_cpu:.0%} "
                f"| {step.rss:,.0f} |"
            )
    lines += [
        "",
        "† not kept up with: the generator could not send what was offered (TCP pushed back), "
        "the measured rate fell more than 5 % behind what was sent, over a second's worth of "
        "reports was still to be counted at the end of the window, or the server shed reports.",
        "",
    ]
    for fleet in fleets:
        best = best_kept_up(fleet.steps)
        behind = first_behind(fleet.steps)
        peak = max((step.rate for step in fleet.steps), default=0.0)
        peak_rss = max((step.rss for step in fleet.steps), default=0.0)
        ratio = f"{best / best_ceiling:.0%}" if best_ceiling else "-"
        behind_text = (
            f"first fell behind at {behind:,}/s offered" if behind else "kept up at every rate"
        )
        per_device = (fleet.rss_idle - fleet.rss_before) * 1024 / figures.devices
        ceiling_text = (
            f"Mosquitto's pass-through kept up with {best_ceiling:,.0f} messages/s; persisted / "
            f"ceiling **{ratio}**; "
            if figures.ceiling
            else ""
        )
        lines.append(
            f"- {DIALECTS[fleet.dialect]}: best persisted while keeping up: **{best:,.0f} "
            f"reports/s**, {behind_text} (highest at any rate: {peak:,.0f}/s); {ceiling_text}"
            f"server RSS {fleet.rss_before:,.0f} MiB before connecting them, "
            f"**{fleet.rss_idle:,.0f} MiB with them connected idle** ({per_device:,.0f} KiB "
            f"per device; connected in {fleet.connect_seconds:.0f} s), {peak_rss:,.0f} MiB at "
            "most while reporting"
        )
    if {"gizwits", "tencent"} <= figures.fleets.keys():
        best_g = best_kept_up(figures.fleets["gizwits"].steps)
        best_t = best_kept_up(figures.fleets["tencent"].steps)
        lines.append(
            f"- data template / Gizwits, best kept up: **{best_t / best_g if best_g else 0:.0%}**"
        )
    lines += [f"- {note}" for note in figures.notes]
    options = "" if args.dialect == "gizwits" else f" --dialect {args.dialect}"
    options += " --postgres" if args.postgres else ""
    options += " --skip-ceiling" if args.skip_ceiling else ""
    options += " --all-rates" if args.all_rates else ""
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.ingest --devices {figures.devices} --rates "
        f"{args.rates} --ceiling-rates {args.ceiling_rates}{options} --write`",
    ]
    return "\n".join(lines)


def mark(step: Step) -> str:
    return "" if kept_up(step) else " †"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument(
        "--rates",
        default="2000,3000,4000,5000,6000,7000,8000,10000,12000",
        help="offered reports/s for the server, comma-separated, ascending",
    )
    parser.add_argument(
        "--ceiling-rates",
        default="5000,10000,20000,30000,40000,50000",
        help="offered messages/s for Mosquitto, comma-separated, ascending",
    )
    parser.add_argument(
        "--all-rates", action="store_true", help="go on after a rate was not kept up with"
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--dialect",
        choices=["gizwits", "tencent", "both"],
        default="gizwits",
        help="the devices' protocol: Gizwits, data template (Tencent) or both in one run",
    )
    add_run_options(
        parser, ceiling_skips="measure persisted only", quiet_before="before each measured window"
    )
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    ceiling_rates = [int(rate) for rate in args.ceiling_rates.split(",")]
    dialects = list(DIALECTS) if args.dialect == "both" else [args.dialect]
    raise_open_files(args.devices * len(dialects) + OPEN_FILES_MARGIN)
    with throwaway_database(args.postgres, args.database_url) as database_url:
        backend = "postgres" if database_url else "sqlite"
        figures = Figures(
            backend="PostgreSQL 15" if database_url else "SQLite (WAL)",
            devices=args.devices,
            load_average=load_average(),
        )
        if not args.skip_ceiling:
            measure_ceiling(figures, ceiling_rates, args)
        measure_persisted(figures, rates, dialects, args, database_url)
    report = render(figures, args)
    print(report)
    if args.write:
        write_section("ingest", backend, report)


if __name__ == "__main__":
    main()
