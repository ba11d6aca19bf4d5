"""Remote control end to end: ``POST /app/control/{did}`` to the frame at the device, beside
Mosquitto's MQTT pass-through of the same frame and the HTTP stack's hello-world, in one run.

Starts a real ``iotcloud serve`` (SQLite by default, ``--postgres`` for a throwaway PostgreSQL,
or ``--database-url``), creates an app, a user and a pet_house product, registers ``--devices``
devices over ``POST /dev/devices``, binds them to the user with ``POST /app/bindings`` and
connects each as an MQTT subscriber to ``app2dev/{did}/#``. The app and the devices live in one
load process (`bench.control_load`: raw asyncio sockets, pre-built requests and packets), apart
from the server, so a command's latency is measured on one clock: from the moment it is released
(written at once on an idle keep-alive connection of the pool) to the moment its frame, found by
the sequence number in its P0, reaches the device.

Three paths, each at the fixed ``--rates`` (open loop: commands released on a timer, round-robin
over the devices, whatever the answers) and closed loop (``--concurrency`` in flight, the next
one sent as one completes: the maximum sustained throughput):

* MQTT ceiling: a throwaway Mosquitto (`bench.ceiling_broker`) with the same device
  connections and one more client publishing on ``app2dev/{did}/bench``; a command is one QoS 0
  PUBLISH of the same 0x0090 frame, routed by the broker to the device: what a C broker does
  with a command on this machine. (The server's transport routes nothing between clients; its
  own closed loop is `bench.control_broker`.)
* HTTP ceiling: ``GET /status`` on the real server (no I/O), with the same client.
* control: ``POST /app/control/{did}`` with ``{"raw": [...]}`` on the real server: app and token
  check, binding check, publish through the embedded broker, frame log write (batched).
* Tencent control: ``POST /api/exploreropen/tokenapi`` ``AppControlDeviceData`` to as many
  data-template devices (the light template, created with ``iotcloud device import`` and bound
  to the same user by did + passcode), ``Data`` setting the ``name`` property to the sequence
  number: token check, device lookup by ProductId + DeviceName, binding check, ``Data`` checked
  against the template, ``control`` published on ``$thing/down/property/{PID}/{NAME}``. Each
  device answers with a ``control_reply``, which the server reads too. Latency runs to the
  ``control`` at the device. ``--dialect`` picks which control paths run (default both).

Each step: ``--warmup`` seconds, ``--window`` seconds measured, then up to ``--drain`` seconds
for the stragglers (a command not delivered by then is lost). Before each step the load process
waits (up to ``--quiet-wait`` seconds) for other processes on this shared machine to go quiet;
what they used during the window is reported.

Usage: ``uv run --frozen python -m bench.control [--devices 50] [--rates 500,1000,1500,2000]
[--dialect gizwits|tencent|both] [--postgres] [--write]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.ceiling_broker import PassThroughMosquitto
from bench.harness import (
    TEMPLATE,
    Child,
    add_run_options,
    bench_account,
    bench_server,
    bind_devices,
    create_thing_devices,
    database_query,
    import_product,
    import_template,
    load_average,
    pid_of,
    register_and_bind,
    throwaway_database,
    wait_online,
    write_section,
)


@dataclass
class Figures:
    backend: str
    devices: int
    load_average: str = ""
    mosquitto: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_steps(
    load: Child, kind: str, server_pid: int, args: argparse.Namespace, figures: Figures
) -> None:
    rates = [int(rate) for rate in args.rates.split(",")] + [0]
    for rate in rates:
        step = load.call(
            cmd="step",
            kind=kind,
            rate=rate,
            concurrency=args.concurrency,
            warmup=args.warmup,
            window=args.window,
            drain=args.drain,
            server_pid=server_pid,
            quiet_wait=args.quiet_wait,
        )
        figures.steps.append(step)
        load_text = f"{rate}/s" if rate else f"closed, {args.concurrency} in flight"
        print(
            f"  {kind:>7} {load_text:>22}: sent {step['sent']:,.0f}/s, done "
            f"{step['completed']:,.0f}/s, errors {step['errors']}, lost {step['lost']}, "
            f"p50 {step['p50']:.1f} p99 {step['p99']:.1f} max {step['max']:.1f} ms, "
            f"server CPU {step['server_cpu']:.0%}, generator {step['generator_cpu']:.0%}, "
            f"other {step['other_cpu']:.0%}"
            + (f", reasons {step['reasons']}" if step["reasons"] else ""),
            file=sys.stderr,
        )


def fake_dids(count: int) -> list[list[str]]:
    return [[f"bench{index:017d}", "x"] for index in range(count)]


def measure_ceiling(figures: Figures, args: argparse.Namespace) -> None:
    print("MQTT ceiling: Mosquitto", file=sys.stderr)
    with PassThroughMosquitto() as mosquitto:
        figures.mosquitto = mosquitto.version
        load = Child("bench.control_load")
        try:
            port = mosquitto.port
            load.call(cmd="devices", host="127.0.0.1", port=port, devices=fake_dids(args.devices))
            load.call(cmd="publisher", host="127.0.0.1", port=port, client_id="bench-publisher")
            run_steps(load, "mqtt", mosquitto.pid, args, figures)
        finally:
            load.close()


def measure_server(figures: Figures, args: argparse.Namespace, database_url: str | None) -> None:
    print(f"iotcloud serve, {figures.backend}", file=sys.stderr)
    gizwits = args.dialect in ("gizwits", "both")
    tencent = args.dialect in ("tencent", "both")
    with bench_server(database_url, notes=figures.notes) as server:
        pid = pid_of(server)
        port = int(server.env["IOTCLOUD_MQTT_PORT"])
        load = Child("bench.control_load")
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                account = bench_account(server, http)
                if gizwits:
                    devices = register_and_bind(
                        http, import_product(server), args.devices, account.headers
                    )
                    load.call(cmd="devices", host="127.0.0.1", port=port, devices=devices)
                if tencent:
                    query = database_query(server, database_url)
                    things = create_thing_devices(
                        server, query, import_template(server), args.devices
                    )
                    bind_devices(http, [thing[3] for thing in things], account.headers)
                    load.call(
                        cmd="devices",
                        host="127.0.0.1",
                        port=port,
                        devices=things,
                        dialect="tencent",
                        template=str(TEMPLATE),
                    )
                wait_online(http, account.headers, args.devices * (gizwits + tencent))
            load.call(
                cmd="http",
                host="127.0.0.1",
                port=server.http_port,
                pool=args.pool,
                appid=account.appid,
                token=account.token,
            )
            run_steps(load, "status", pid, args, figures)
            if gizwits:
                run_steps(load, "control", pid, args, figures)
            if tencent:
                run_steps(load, "tencent", pid, args, figures)
        finally:
            load.close()


P99_RATE = 1000
P99_TARGET = 20.0
P99_BEFORE = {"sqlite": "318.5 ms (2026-12-02)", "postgres": "154.9 ms (2026-11-22)"}
"""``POST /app/control`` p99 at 1,000 commands/s with the embedded amqtt broker."""

PATHS = {
    "mqtt": "MQTT PUBLISH → device (Mosquitto ceiling)",
    "status": "GET /status (HTTP ceiling)",
    "control": "POST /app/control → device",
    "tencent": "tokenapi AppControlDeviceData → data-template device",
}


def kept_up(step: dict[str, Any]) -> bool:
    """Delivered what was sent (within 2%), no errors, nothing lost, nothing shed."""
    return (
        step["completed"] >= 0.98 * step["sent"]
        and not step["errors"]
        and not step["lost"]
        and not step["shed"]
    )


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        "| path | load | sent/s | done/s | HTTP errors | lost | p50 ms | p90 ms | p99 ms "
        "| max ms | server CPU | generator CPU | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in figures.steps:
        kind = step["kind"]
        load = (
            f"{step['offered']:,.0f}/s"
            if step["offered"]
            else f"closed, {step['concurrency']} in flight"
        )
        errors = "-" if kind == "mqtt" else f"{step['errors']:,}"
        if step["shed"]:
            errors += f" (+{step['shed']:,} not sent)"
        lost = "-" if kind == "status" else f"{step['lost']:,}"
        if step["reasons"]:
            errors += " (" + ", ".join(f"{n:,} {why}" for why, n in step["reasons"].items()) + ")"
        mark = "" if kept_up(step) or not step["offered"] else " †"
        rows.append(
            f"| {PATHS[kind]} | {load} | {step['sent']:,.0f} | {step['completed']:,.0f}{mark} "
            f"| {errors} | {lost} | {step['p50']:.1f} | {step['p90']:.1f} | {step['p99']:.1f} "
            f"| {step['max']:.1f} | {step['server_cpu']:.0%} | {step['generator_cpu']:.0%} "
            f"| {step['other_cpu']:.0%} |"
        )

    def best(kind: str) -> tuple[float, float]:
        """(closed-loop throughput, highest open-loop rate kept up with)."""
        closed = max(
            (s["completed"] for s in figures.steps if s["kind"] == kind and not s["offered"]),
            default=0.0,
        )
        kept = max(
            (
                s["offered"]
                for s in figures.steps
                if s["kind"] == kind and s["offered"] and kept_up(s)
            ),
            default=0.0,
        )
        return closed, kept

    mqtt_closed, _ = best("mqtt")
    status_closed, _ = best("status")
    at_1000 = next(
        (s for s in figures.steps if s["kind"] == "control" and s["offered"] == P99_RATE), None
    )
    targets = []
    if at_1000 is not None:
        before = P99_BEFORE["postgres" if "PostgreSQL" in figures.backend else "sqlite"]
        met = "met" if at_1000["p99"] <= P99_TARGET else "**missed**"
        targets = [
            "| target | this run | before the device transport | |",
            "|---|---:|---:|---|",
            f"| `POST /app/control` → device, p99 at {P99_RATE:,} commands/s "
            f"| **{at_1000['p99']:.1f} ms** (p50 {at_1000['p50']:.1f}, HTTP answer p99 "
            f"{at_1000['http_p99']:.1f}) | {before} | ≤ {P99_TARGET:g} ms: {met} |",
            "",
        ]
    lines = [
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
        f"{figures.load_average} at the start): one `iotcloud serve` process ({figures.backend}, "
        f"uvloop, embedded device transport), one load process (`bench.control_load`: "
        f"{figures.devices} "
        "MQTT 3.1 device connections per device protocol, Gizwits ones subscribed to "
        "`app2dev/{did}/#`, data-template ones to `$thing/down/property/{PID}/{NAME}` and "
        f"answering each `control` with a `control_reply`; a pool of {args.pool} "
        "keep-alive HTTP/1.1 connections) and, for the MQTT ceiling, a throwaway "
        f"{figures.mosquitto or 'Mosquitto'} instead of the server; all on the same machine, "
        "sharing its cores. Each row: "
        f"{args.warmup:g} s warm-up, {args.window:g} s measured, up to {args.drain:g} s drain. "
        "Latency: command released → frame (or `control` message) at the device "
        "(`GET /status`: → answer). Server CPU is Mosquitto's on the MQTT rows; other "
        "CPU is every other process on the machine during the window (in cores).",
        "",
        *targets,
        *rows,
        "",
        "† fell behind: fewer done than sent, or errors, lost or shed commands.",
        "",
    ]
    for kind, name in (("control", "control"), ("tencent", "AppControlDeviceData")):
        closed, kept = best(kind)
        if not any(s["kind"] == kind for s in figures.steps):
            continue
        of_mqtt = closed / mqtt_closed if mqtt_closed else 0.0
        of_status = closed / status_closed if status_closed else 0.0
        lines.append(
            f"- {name}, sustained (closed loop, {args.concurrency} in flight): "
            f"**{closed:,.0f} commands/s** delivered (target ≥ 1,500) — "
            f"{of_mqtt:.0%} of Mosquitto's {mqtt_closed:,.0f} messages/s, {of_status:.0%} "
            f"of `GET /status`'s {status_closed:,.0f} requests/s; highest fixed rate kept up "
            f"with: {kept:,.0f}/s"
        )
        at_500 = next((s for s in figures.steps if s["kind"] == kind and s["offered"] == 500), None)
        if at_500 is not None:
            lines.append(
                f"- {name} at 500 commands/s: p50 {at_500['p50']:.1f} ms, **p99 "
                f"{at_500['p99']:.1f} ms** (target ≤ 50 ms), HTTP answer p99 "
                f"{at_500['http_p99']:.1f} ms"
            )
    gizwits_closed, gizwits_kept = best("control")
    tencent_closed, tencent_kept = best("tencent")
    if gizwits_closed and tencent_closed:
        ratio = tencent_closed / gizwits_closed
        verdict = "met" if ratio >= 0.8 and tencent_kept >= 0.8 * gizwits_kept else "missed"
        lines.append(
            f"- AppControlDeviceData / `POST /app/control`: **{ratio:.0%}** closed loop, "
            f"highest fixed rate kept up with {tencent_kept:,.0f}/s vs {gizwits_kept:,.0f}/s "
            f"(target: within 20 %: {verdict})"
        )
    lines += [f"- {note}" for note in figures.notes]
    dialect = "" if args.dialect == "both" else f" --dialect {args.dialect}"
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.control --devices {figures.devices} --rates "
        f"{args.rates}{dialect}{' --postgres' if args.postgres else ''} --write`",
    ]
    return "\n".join(lines)


SECTION = """## Control: app command to device frame

`uv run --frozen python -m bench.control --write` (SQLite) and
`uv run --frozen python -m bench.control --postgres --write` (a throwaway PostgreSQL 15 on the
same machine). A command is `POST /app/control/{did}` with `{"raw": [8 bytes]}`, measured until
its 0x0090 frame reaches the device's MQTT connection; beside it, in the same run, a throwaway
Mosquitto passing the same frame from an MQTT publisher to the device (`bench.ceiling_broker`)
and `GET /status` on the same server with the same client. Closed-loop rows
are the maximum sustained throughput; open-loop rows release commands on a timer whatever the
answers, so queueing shows as latency.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument(
        "--rates", default="500,1000,1500,2000", help="offered commands/s, comma-separated"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="closed loop: in flight")
    parser.add_argument("--pool", type=int, default=64, help="keep-alive HTTP connections")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=3.0)
    parser.add_argument(
        "--dialect",
        choices=["gizwits", "tencent", "both"],
        default="both",
        help="control paths: POST /app/control, tokenapi AppControlDeviceData, or both",
    )
    add_run_options(
        parser, ceiling_skips="measure the server only", quiet_before="before each step"
    )
    args = parser.parse_args()
    if args.pool < args.concurrency:
        parser.error("--pool must be at least --concurrency")
    with throwaway_database(args.postgres, args.database_url) as database_url:
        figures = Figures(
            backend="PostgreSQL 15" if database_url else "SQLite (WAL)",
            devices=args.devices,
            load_average=load_average(),
        )
        if not args.skip_ceiling:
            measure_ceiling(figures, args)
        measure_server(figures, args, database_url)
    report = render(figures, args)
    print(report)
    if args.write:
        write_section(
            "control",
            "postgres" if database_url else "sqlite",
            report,
            heading="Control: app command to device frame",
            intro=SECTION,
        )


if __name__ == "__main__":
    main()
