"""Device report ingestion: reports/s persisted by ``iotcloud serve`` beside the embedded broker's
own pass-through rate, and the server's memory with thousands of connected devices.

One run measures, at each offered rate in ``--rates`` (reports/s, spread evenly over
``--devices`` connections):

* the ceiling: `bench.ceiling_broker` (the same embedded broker, no registry, no storage) with
  the device connections publishing and one subscriber on ``dev2app/#``; PUBLISH packets/s the
  subscriber received;
* persisted: a real ``iotcloud serve`` (SQLite, or PostgreSQL with ``--postgres``) with as many
  registered devices publishing valid reports; rows/s added to ``device_history`` (each report
  also upserts ``device_latest`` and appends to ``device_events`` in the same transaction), read
  from the database while it runs, so only committed reports count. ``--dialect`` picks the
  devices: Gizwits (0x0091 pet_house frames on ``dev2app/{did}``), data-template (Tencent
  ``report`` messages of the light template on ``$thing/up/property/{PID}/{NAME}``, each answered
  by the server with a ``report_reply`` the device receives), or both (the default): then both
  fleets are connected to the same server at once and, at each rate, the Gizwits step runs, then
  the data-template step, so both meet the same machine, database and ceiling;
* memory: the server's RSS with every device connected and idle, and while they report.

The load comes from `bench.mqtt_load`, a separate process writing pre-encoded packets on raw
asyncio sockets; its own CPU use is reported beside the server's. Each step runs ``--warmup``
seconds, then is measured over ``--window`` seconds; between steps the server drains.

Usage: ``uv run python -m bench.ingest [--devices 5000] [--rates 1000,2000,3000,4000]
[--dialect gizwits|tencent|both] [--postgres] [--write]``.
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
    TEMPLATE,
    Child,
    add_run_options,
    bench_server,
    cpu_seconds,
    create_thing_devices,
    database_query,
    import_product,
    import_template,
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
    packet_bytes: int = 0
    ceiling: list[Step] = field(default_factory=list)
    fleets: dict[str, Fleet] = field(default_factory=dict)


def settle(count: Any) -> None:
    """Until ``count()`` stops growing (at most 60 s): the backlog of an overloaded step is
    drained before the next one starts."""
    last, deadline = count(), time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1)
        now = count()
        if now == last:
            return
        last = now


def measure_step(
    generator: Child, server_pid: int, offered: int, count: Any, args: argparse.Namespace
) -> Step:
    """One offered rate; ``count()`` is what is measured (delivered or persisted).

    Before it the machine must be quiet (`wait_for_quiet`), after it the count must settle.
    ``extra["received"]`` is what the generator's connections received per second (the
    ``report_reply`` messages of data-template devices)."""
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
    generated = g1["time"] - g0["time"]
    step = Step(
        offered=offered,
        sent=(g1["sent"] - g0["sent"]) / generated,
        rate=(c1 - c0) / elapsed,
        server_cpu=(s1 - s0) / elapsed,
        generator_cpu=(g1["cpu"] - g0["cpu"]) / generated,
        rss=rss,
        skipped=g1["skipped"] - g0["skipped"],
        extra={"received": (g1["received"] - g0["received"]) / generated},
    )
    step.other_cpu = max(0.0, (m1 - m0) / elapsed - step.server_cpu - step.generator_cpu)
    print(
        f"  {offered:>6}/s offered: sent {step.sent:,.0f}/s, measured {step.rate:,.0f}/s, "
        f"received {step.extra['received']:,.0f}/s, server CPU {step.server_cpu:.0%}, "
        f"generator CPU {step.generator_cpu:.0%}, other processes {step.other_cpu:.0%}, "
        f"RSS {rss:,.0f} MiB",
        file=sys.stderr,
    )
    settle(count)
    return step


def measure_steps(
    generator: Child,
    server_pid: int,
    rates: list[int],
    count: Any,
    args: argparse.Namespace,
) -> list[Step]:
    """`measure_step` at each rate in turn."""
    return [measure_step(generator, server_pid, offered, count, args) for offered in rates]


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


def connect_fleet(
    fleet: Fleet, server: RunningServer, query: Any, args: argparse.Namespace
) -> Child:
    """Create ``args.devices`` devices of the fleet's protocol on ``server`` and connect them
    from a new `bench.mqtt_load` process (returned, idle)."""
    pid = pid_of(server)
    port = int(server.env["IOTCLOUD_MQTT_PORT"])
    if fleet.dialect == "tencent":
        devices = create_thing_devices(server, query, import_template(server), args.devices)
        connect = {"dialect": "tencent", "template": str(TEMPLATE)}
    else:
        devices = create_devices(server, query, import_product(server), args.devices)
        connect = {"dialect": "gizwits", "datapoints": str(DATAPOINTS)}
    time.sleep(2)
    fleet.rss_before = rss_mib(pid)
    generator = Child("bench.mqtt_load")
    made = generator.call(cmd="connect", host="127.0.0.1", port=port, devices=devices, **connect)
    if made["connected"] != args.devices:
        generator.close()
        raise RuntimeError(f"{fleet.dialect}: only {made['connected']} devices connected")
    fleet.connect_seconds = made["seconds"]
    fleet.packet_bytes = made["packet_bytes"]
    time.sleep(5)  # presence written, garbage settled
    fleet.rss_idle = rss_mib(pid)
    print(
        f"  {DIALECTS[fleet.dialect]}: connected {made['connected']} devices in "
        f"{made['seconds']:.0f}s; RSS {fleet.rss_before:,.0f} MiB before, "
        f"{fleet.rss_idle:,.0f} MiB idle",
        file=sys.stderr,
    )
    return generator


def measure_persisted(
    figures: Figures,
    rates: list[int],
    dialects: list[str],
    args: argparse.Namespace,
    database_url: str | None,
) -> None:
    """Every fleet of ``dialects`` connected to one server; at each rate each fleet's step in
    turn (so both meet the same conditions), counting ``device_history`` rows."""
    print(f"persisted: iotcloud serve, {figures.backend}", file=sys.stderr)
    with bench_server(database_url) as server:
        pid = pid_of(server)
        query = database_query(server, database_url)
        generators: dict[str, Child] = {}
        try:
            for dialect in dialects:
                fleet = figures.fleets[dialect] = Fleet(dialect)
                generators[dialect] = connect_fleet(fleet, server, query, args)

            def count() -> int:
                return int(query("SELECT count(*) FROM device_history")[0][0])

            for offered in rates:
                for dialect, generator in generators.items():
                    print(f"  {DIALECTS[dialect]}:", file=sys.stderr)
                    step = measure_step(generator, pid, offered, count, args)
                    figures.fleets[dialect].steps.append(step)
            for dialect, generator in generators.items():
                connected = generator.call(cmd="stats")["connected"]
                if connected != args.devices:
                    print(
                        f"  warning: {args.devices - connected} {dialect} devices lost",
                        file=sys.stderr,
                    )
        finally:
            for generator in generators.values():
                generator.close()


def kept_up(step: Step) -> bool:
    """Whether the measured rate kept pace with what the generator sent (and was not a
    backlog being worked off)."""
    return 0.95 * step.sent <= step.rate <= 1.05 * step.sent


def best_kept_up(steps: list[Step]) -> float:
    """The highest measured rate among the steps that kept up (0 when none did)."""
    return max((step.rate for step in steps if kept_up(step)), default=0.0)


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ceiling = {step.offered: step for step in figures.ceiling}
    fleets = list(figures.fleets.values())
    rows = [
        "| offered reports/s | ceiling: delivered/s | broker CPU | devices | persisted/s "
        "| % of ceiling | server CPU | server CPU µs/report | replies received/s "
        "| generator CPU | other processes CPU | server RSS MiB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    offered_rates = sorted({step.offered for fleet in fleets for step in fleet.steps})
    for offered in offered_rates:
        top = ceiling.get(offered)
        top_behind = "" if top is None or kept_up(top) else " †"
        for fleet in fleets:
            step = next((s for s in fleet.steps if s.offered == offered), None)
            if step is None:
                continue
            share = f"{100 * step.rate / top.rate:.0f}%" if top and top.rate else "-"
            behind = "" if kept_up(step) else " †"
            cost = f"{1e6 * step.server_cpu / step.rate:,.0f}" if step.rate else "-"
            rows.append(
                f"| {offered:,} | {top.rate if top else 0:,.0f}{top_behind} "
                f"| {top.server_cpu if top else 0:.0%} | {DIALECTS[fleet.dialect]} "
                f"| {step.rate:,.0f}{behind} | {share} | {step.server_cpu:.0%} | {cost} "
                f"| {step.extra.get('received', 0):,.0f} | {step.generator_cpu:.0%} "
                f"| {step.other_cpu:.0%} | {step.rss:,.0f} |"
            )
    best_ceiling = best_kept_up(figures.ceiling)
    database = "PostgreSQL 15" if args.postgres or args.database_url else "SQLite (WAL)"
    packets = ", ".join(
        f"{fleet.packet_bytes}-byte "
        + ("pet_house 0x0091 report" if fleet.dialect == "gizwits" else "light `report`")
        for fleet in fleets
    )
    lines = [
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}): one "
        f"`iotcloud serve` process ({database}, uvloop) and one load-generator process per "
        f"device protocol (`bench.mqtt_load`: {figures.devices:,} MQTT 3.1 device connections "
        f"each, QoS 0 PUBLISH of a {packets}) on the same machine, sharing its cores; with "
        "both protocols, both fleets are connected at once and at each rate the Gizwits step "
        "runs, then the data-template step. Each step: "
        f"{args.warmup:g} s warm-up, {args.window:g} s measured. Replies received: the "
        "`report_reply` the server publishes to a data-template device for each report (a "
        "Gizwits report has no reply).",
        "",
        *rows,
        "",
        "† did not keep pace with what the generator sent (fell behind: queued, then shed).",
        "",
    ]
    for fleet in fleets:
        best = best_kept_up(fleet.steps)
        peak = max((step.rate for step in fleet.steps), default=0.0)
        peak_rss = max((step.rss for step in fleet.steps), default=0.0)
        ratio = f"{best / best_ceiling:.0%}" if best_ceiling else "-"
        lines += [
            f"- {DIALECTS[fleet.dialect]}: best persisted while keeping up: **{best:,.0f} "
            f"reports/s** (highest at any rate: {peak:,.0f}/s); broker ceiling "
            f"{best_ceiling:,.0f} messages/s; persisted / ceiling **{ratio}**; server RSS "
            f"{fleet.rss_before:,.0f} MiB before connecting them, **{fleet.rss_idle:,.0f} MiB "
            f"with them connected idle** (connected in {fleet.connect_seconds:.0f} s), "
            f"{peak_rss:,.0f} MiB at most while reporting",
        ]
    if {"gizwits", "tencent"} <= figures.fleets.keys():
        gizwits, tencent = figures.fleets["gizwits"], figures.fleets["tencent"]
        best_g, best_t = best_kept_up(gizwits.steps), best_kept_up(tencent.steps)
        verdict = "met" if best_g and best_t >= 0.8 * best_g else "missed"
        both = [
            (g, t)
            for g in gizwits.steps
            for t in tencent.steps
            if g.offered == t.offered and g.rate and t.rate and kept_up(g) and kept_up(t)
        ]
        cost = ""
        if both:
            cost_g = sum(g.server_cpu / g.rate for g, _ in both) / len(both) * 1e6
            cost_t = sum(t.server_cpu / t.rate for _, t in both) / len(both) * 1e6
            cost = (
                f"; server CPU per report where both kept up: {cost_t:,.0f} µs data template "
                f"vs {cost_g:,.0f} µs Gizwits ({cost_t / cost_g:.2f}×)"
            )
        lines.append(
            f"- data template / Gizwits, best kept up: **{best_t / best_g if best_g else 0:.0%}"
            f"** (target ≥ 80%: {verdict}){cost}"
        )
    dialect = "" if args.dialect == "both" else f" --dialect {args.dialect}"
    lines += [
        "",
        f"Command: `uv run python -m bench.ingest --devices {figures.devices} --rates "
        f"{args.rates}{dialect}{' --postgres' if args.postgres else ''} --write`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument(
        "--rates", default="1000,2000,3000,4000", help="offered reports/s, comma-separated"
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--dialect",
        choices=["gizwits", "tencent", "both"],
        default="both",
        help="the devices' protocol: Gizwits, data template (Tencent) or both in one run",
    )
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
        dialects = list(DIALECTS) if args.dialect == "both" else [args.dialect]
        measure_persisted(figures, rates, dialects, args, database_url)
    report = render(figures, args)
    print(report)
    if args.write:
        write_section("ingest", backend, report)


if __name__ == "__main__":
    main()
