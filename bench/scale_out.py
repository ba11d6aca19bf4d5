"""Scale-out on a RabbitMQ cluster: device reports persisted by two ``gateway`` processes and
``POST /app/control`` through two ``api`` processes, on a throwaway two-node RabbitMQ cluster
(``IOTCLOUD_MQTT_BROKER=rabbitmq``) and a throwaway PostgreSQL, each beside RabbitMQ's own
MQTT pass-through measured on the same cluster in the same run.

The stack (`tests.rabbitmq.RabbitCluster`, `tests.pg.PostgresServer`, ``iotcloud serve``
through `bench.harness.bench_server`), all on this machine and sharing its cores: two broker
nodes; per node one ``api`` process (the node's HTTP auth backend, as the deployment guide sets
it up) and one ``gateway`` process, each connected to its node over MQTT, AMQP and the
management API. Devices are spread over both nodes, half on each.

* **Ingest ceiling**, measured first, before any iotcloud process runs: ``--devices``
  connections of `bench.mqtt_load` (half on each node, signed in as the cluster's administrator,
  so no HTTP auth is involved) publishing the same 0x0091 pet_house report as QoS 0 on
  ``dev2app/{id}``, one raw subscriber (another `bench.mqtt_load` process, on node 0) on
  ``dev2app/#`` counting what came through: RabbitMQ's MQTT pass-through of these reports.
* **Ingest, persisted**: as many real devices (``iotcloud device import``), connected from one
  `bench.mqtt_load` process, half to each node, with their own did and passcode (checked by the
  api processes), publishing at each of ``--rates``; rows/s committed to ``device_history``
  (with ``device_latest`` and ``device_events`` in the same transaction), counted in the
  database while it runs. Reports reach the gateways through the durable queue
  ``iotcloud.device-messages`` (competing consumers, acknowledged after commit); every
  iotcloud process also hears them over its own MQTT subscription (``dev2app/#``), which is
  how RabbitMQ mode works. The queue's depth at the end of each window comes from the
  management API. A rate is kept up with as in `bench.ingest` (sent what was offered, stored
  within 5 % of it, less than a second's worth behind at the end).
* **Embedded comparison** (``--embedded-rates``, after the cluster is stopped): one
  ``iotcloud serve`` in embedded mode on a fresh database of the same PostgreSQL, the same
  generator and device count (`bench.ingest.measure_persisted`).
* **Control ceiling**, before any iotcloud process runs: `bench.control_load`'s devices (half
  on each node, as the administrator) subscribed to ``app2dev/{id}/#``, one MQTT publisher on
  node 0 publishing the same 0x0090 frame as QoS 0 on ``app2dev/{id}/bench``: RabbitMQ's
  pass-through of a command, half of them crossing to the other node.
* **Control**: ``--control-devices`` registered and bound devices (half on each node, their own
  accounts), a pool of keep-alive HTTP/1.1 connections spread over both ``api`` processes and
  requests released round-robin over them; ``GET /status`` (the HTTP ceiling, no I/O) and
  ``POST /app/control/{did}`` with ``{"raw": [8 bytes]}`` at each of ``--control-rates`` and
  closed loop (``--concurrency`` in flight); latency from the release of a command to its
  frame at the device, on one clock (`bench.control_load`).

CPU is read from ``/proc`` for each part of the stack apart (both gateways, both api
processes, each RabbitMQ node, PostgreSQL with its backends, the load processes); "other" is
every other process on the machine. Each step waits (up to ``--quiet-wait`` s) for other
processes to go quiet first.

Usage: ``uv run --frozen python -m bench.scale_out [--devices 1000] [--rates 1000,2000,...]
[--ceiling-rates 2000,5000,...] [--embedded-rates 3000,...] [--control-rates 500,1000]
[--parts ingest,control] [--write]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from tests.pg import PostgresServer, free_port
from tests.rabbitmq import RabbitCluster
from tests.scale_out import broker_settings
from tests.server import RunningServer

from bench import ingest
from bench.harness import (
    DATAPOINTS,
    Child,
    bench_account,
    bench_server,
    cpu_seconds_of,
    database_query,
    descendants,
    import_product,
    load_average,
    machine_busy_seconds,
    pid_of,
    raise_open_files,
    register_and_bind,
    rss_mib,
    wait_for_quiet,
    wait_online,
    write_section,
)

HEADING = "Scale-out on a RabbitMQ cluster"
INTRO = f"""## {HEADING}

`uv run --frozen python -m bench.scale_out --write`: a throwaway two-node RabbitMQ cluster
(Debian's `rabbitmq-server`, `tests/rabbitmq.py`) and a throwaway PostgreSQL 15, with one `api`
process (the node's HTTP auth backend) and one `gateway` process per broker node
(`IOTCLOUD_MQTT_BROKER=rabbitmq`), all on this two-core machine; devices are spread over both
nodes. Beside each figure, in the same run, RabbitMQ's own MQTT pass-through of the same
messages on the same cluster (measured before any iotcloud process runs, devices signed in as
the cluster's administrator), `GET /status` on the same `api` processes, and for ingest the
embedded mode (`iotcloud serve`, its own device transport) on the same PostgreSQL. Reports
reach the gateways through the durable queue `iotcloud.device-messages` (competing consumers,
each report acknowledged once committed); every iotcloud process also hears every device
message over its own MQTT subscription. The module docstring of `bench/scale_out.py` says what
each row measures.
"""
INGEST_TARGET = 3000
CONTROL_RATE = 500
CONTROL_TARGET = 50.0
QUEUE = "iotcloud.device-messages"


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    cluster: RabbitCluster
    postgres: PostgresServer
    database_url: str
    api_ports: list[int]
    apis: list[RunningServer] = field(default_factory=list)
    gateways: list[RunningServer] = field(default_factory=list)

    def groups(self) -> dict[str, list[int]]:
        """The stack's processes by part, for CPU readings (fresh: PostgreSQL starts backends
        as clients connect)."""
        found: dict[str, list[int]] = {}
        for index, node in enumerate(self.cluster.nodes):
            assert node.process is not None
            found[f"rabbit{index}"] = descendants(node.process.pid)
        found["postgres"] = descendants(postmaster_pid(self.postgres))
        if self.gateways:
            found["gateways"] = [pid_of(server) for server in self.gateways]
        if self.apis:
            found["apis"] = [pid_of(server) for server in self.apis]
        return found

    def queue(self) -> dict[str, Any]:
        """The shared queue's management API entry (empty when it does not exist yet)."""
        try:
            found = self.cluster.management_get(f"/queues/%2F/{urllib.parse.quote(QUEUE)}")
        except (OSError, ValueError):  # not declared yet, or the API did not answer in time
            return {}
        return dict(found)


def postmaster_pid(postgres: PostgresServer) -> int:
    return int((postgres.data / "postmaster.pid").read_text().split("\n", 1)[0])


@contextmanager
def cluster_stack(notes: list[str]) -> Iterator[Stack]:
    """PostgreSQL and the RabbitMQ cluster (no iotcloud process yet: see `start_iotcloud`)."""
    postgres = PostgresServer()
    postgres.start()
    try:
        database_url = postgres.create_database("bench")
        api_ports = [free_port(), free_port()]
        bases = [f"http://127.0.0.1:{port}/broker/rabbitmq" for port in api_ports]
        with RabbitCluster(bases) as cluster:
            print(f"cluster up in {cluster.startup_seconds:.0f} s", file=sys.stderr)
            yield Stack(cluster, postgres, database_url, api_ports)
    finally:
        postgres.stop()


def start_iotcloud(stack: Stack, exits: ExitStack, notes: list[str]) -> None:
    """One ``api`` process per node (on its chosen port: the node's auth backend), then one
    ``gateway`` process per node; stopped when ``exits`` closes."""
    for node, port in enumerate(stack.api_ports):
        stack.apis.append(
            exits.enter_context(
                bench_server(
                    stack.database_url,
                    notes=notes,
                    role="api",
                    http_port=port,
                    **broker_settings(stack.cluster, node),
                )
            )
        )
    for node in range(len(stack.cluster.nodes)):
        stack.gateways.append(
            exits.enter_context(
                bench_server(
                    stack.database_url,
                    notes=notes,
                    role="gateway",
                    **broker_settings(stack.cluster, node),
                )
            )
        )


def halves(items: list[Any]) -> tuple[list[Any], list[Any]]:
    """Every other item: the devices of node 0 and of node 1."""
    return items[0::2], items[1::2]


def all_pids(groups: dict[str, list[int]]) -> list[int]:
    return sorted({pid for pids in groups.values() for pid in pids})


# -- ingest -------------------------------------------------------------------------------------


@dataclass
class IngestStep(ingest.Step):
    cpu: dict[str, float] = field(default_factory=dict)
    queued: int = 0  # in the shared queue at the end of the window
    gateway_rss: float = 0.0


@dataclass
class Figures:
    load_average: str = ""
    devices: int = 0
    control_devices: int = 0
    rabbitmq: str = ""
    startup: float = 0.0
    presence_seconds: float = 0.0
    packet_bytes: int = 0
    ceiling: list[IngestStep] = field(default_factory=list)
    persisted: list[IngestStep] = field(default_factory=list)
    embedded: ingest.Figures | None = None
    control: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def drain_queue(stack: Stack, started: float, limit: float = 300.0) -> float:
    """Wait until the shared queue is empty with nothing unacknowledged (the presence of a
    fleet that just connected is stored); seconds since ``started``."""
    time.sleep(2)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        queue = stack.queue()
        if queue and not queue.get("messages") and not queue.get("messages_unacknowledged"):
            break
        time.sleep(1)
    return time.monotonic() - started


def measure_ingest_step(
    generator: Child,
    offered: int,
    count: Callable[[], int],
    stack: Stack,
    helpers: dict[str, list[int]],
    args: argparse.Namespace,
) -> IngestStep:
    """One offered rate: CPU by part of the stack, what was sent and what ``count()`` saw."""
    groups = {**stack.groups(), **helpers, "generator": [generator.pid]}
    pids = all_pids(groups)
    wait_for_quiet(pids, args.quiet_wait)
    start, counted = generator.call(cmd="stats"), count()
    generator.call(cmd="rate", rate=offered)
    time.sleep(args.warmup)
    groups = {**stack.groups(), **helpers, "generator": [generator.pid]}
    pids = all_pids(groups)
    g0, c0 = generator.call(cmd="stats"), count()
    cpu0 = {name: cpu_seconds_of(group) for name, group in groups.items()}
    t0, m0, ours0 = time.monotonic(), machine_busy_seconds(), cpu_seconds_of(pids)
    time.sleep(args.window)
    g1, c1 = generator.call(cmd="stats"), count()
    elapsed = time.monotonic() - t0
    cpu1 = {name: cpu_seconds_of(group) for name, group in groups.items()}
    m1, ours1 = machine_busy_seconds(), cpu_seconds_of(pids)
    queued = int(stack.queue().get("messages", 0)) if stack.gateways else 0
    generator.call(cmd="rate", rate=0)
    generated = g1["time"] - g0["time"]
    step = IngestStep(
        offered=offered,
        sent=(g1["sent"] - g0["sent"]) / generated,
        rate=(c1 - c0) / elapsed,
        generator_cpu=(g1["cpu"] - g0["cpu"]) / generated,
        skipped=g1["skipped"] - g0["skipped"],
        backlog=(g1["sent"] - start["sent"]) - (c1 - counted),
        cpu={name: (cpu1[name] - cpu0[name]) / elapsed for name in groups},
        queued=queued,
        gateway_rss=max((rss_mib(pid_of(server)) for server in stack.gateways), default=0.0),
    )
    step.other_cpu = max(0.0, (m1 - m0 - (ours1 - ours0)) / elapsed)
    shown = ", ".join(f"{name} {value:.0%}" for name, value in step.cpu.items())
    print(
        f"  {offered:>6}/s offered: sent {step.sent:,.0f}/s (not sent {step.skipped:,}), "
        f"measured {step.rate:,.0f}/s ({step.backlog:,} behind, {queued:,} queued); CPU "
        f"{shown}; other {step.other_cpu:.0%}"
        + ("" if ingest.kept_up(step) else "  (fell behind)"),
        file=sys.stderr,
    )
    ingest.settle(count)
    return step


def measure_ingest_ceiling(stack: Stack, figures: Figures, args: argparse.Namespace) -> None:
    """RabbitMQ's pass-through: administrator-signed devices on both nodes, one subscriber."""
    print("ingest ceiling: RabbitMQ MQTT pass-through", file=sys.stderr)
    cluster = stack.cluster
    generator = Child("bench.mqtt_load")
    subscriber = Child("bench.mqtt_load")
    try:
        devices = [[f"bench{index:017d}", cluster.password] for index in range(args.devices)]
        connected = 0
        for node, share in enumerate(halves(devices)):
            made = generator.call(
                cmd="connect",
                host="127.0.0.1",
                port=cluster.mqtt_port(node),
                devices=share,
                datapoints=str(DATAPOINTS),
                username=cluster.user,
            )
            connected = made["connected"]  # all so far, both nodes
            figures.packet_bytes = made["packet_bytes"]
        if connected != args.devices:
            raise RuntimeError(f"ceiling: only {connected} devices connected")
        subscriber.call(
            cmd="subscribe",
            host="127.0.0.1",
            port=cluster.mqtt_port(0),
            client_id="bench-subscriber",
            username=cluster.user,
            passcode=cluster.password,
            filter="dev2app/#",
        )
        time.sleep(1)

        def delivered() -> int:
            return int(subscriber.call(cmd="stats")["received"])

        for offered in [int(rate) for rate in args.ceiling_rates.split(",")]:
            step = measure_ingest_step(
                generator, offered, delivered, stack, {"subscriber": [subscriber.pid]}, args
            )
            figures.ceiling.append(step)
            if not ingest.kept_up(step):
                break
    finally:
        generator.close()
        subscriber.close()


def measure_ingest_persisted(stack: Stack, figures: Figures, args: argparse.Namespace) -> None:
    print("ingest: two gateway processes", file=sys.stderr)
    api = stack.apis[0]
    query = database_query(api, stack.database_url)
    made = ingest.create_devices(api, query, import_product(api), args.devices)
    generator = Child("bench.mqtt_load")
    try:
        connected = 0
        for node, share in enumerate(halves(made)):
            reply = generator.call(
                cmd="connect",
                host="127.0.0.1",
                port=stack.cluster.mqtt_port(node),
                devices=share,
                datapoints=str(DATAPOINTS),
                concurrency=50,
            )
            print(
                f"  node {node}: {reply['connected'] - connected} devices connected in "
                f"{reply['seconds']:.0f} s",
                file=sys.stderr,
            )
            connected = reply["connected"]  # all so far, both nodes
        connected_at = time.monotonic()
        if connected != args.devices:
            raise RuntimeError(f"only {connected} of {args.devices} devices connected")
        figures.presence_seconds = drain_queue(stack, connected_at)
        print(
            f"  presence of {args.devices} devices stored in {figures.presence_seconds:.0f} s",
            file=sys.stderr,
        )
        count = ingest.history_count(query)
        for offered in [int(rate) for rate in args.rates.split(",")]:
            step = measure_ingest_step(generator, offered, count, stack, {}, args)
            figures.persisted.append(step)
            if not ingest.kept_up(step) and not args.all_rates:
                break
        still = generator.call(cmd="stats")["connected"]
        if still != args.devices:
            figures.notes.append(f"{args.devices - still} devices were disconnected during the run")
    finally:
        generator.close()


def measure_embedded(postgres: PostgresServer, figures: Figures, args: argparse.Namespace) -> None:
    """`bench.ingest`'s persisted measurement: embedded mode on the same PostgreSQL."""
    print("ingest: embedded mode on the same PostgreSQL", file=sys.stderr)
    embedded = ingest.Figures(backend="PostgreSQL 15", devices=args.devices)
    ingest_args = argparse.Namespace(
        devices=args.devices,
        quiet_wait=args.quiet_wait,
        warmup=args.warmup,
        window=args.window,
        all_rates=False,
    )
    rates = [int(rate) for rate in args.embedded_rates.split(",")]
    ingest.measure_persisted(
        embedded, rates, ["gizwits"], ingest_args, postgres.create_database("embedded")
    )
    figures.embedded = embedded
    figures.notes.extend(embedded.notes)


# -- control ------------------------------------------------------------------------------------


def control_steps(
    load: Child,
    kind: str,
    stack: Stack,
    server_pids: list[int],
    args: argparse.Namespace,
    figures: Figures,
) -> None:
    rates = [int(rate) for rate in args.control_rates.split(",")] + [0]
    for rate in rates:
        groups = stack.groups()
        step = load.call(
            cmd="step",
            kind=kind,
            rate=rate,
            concurrency=args.concurrency,
            warmup=args.warmup,
            window=args.window,
            drain=args.drain,
            server_pid=server_pids[0],
            server_pids=server_pids,
            pids=groups,
            quiet_wait=args.quiet_wait,
        )
        figures.control.append(step)
        shown = ", ".join(f"{name} {value:.0%}" for name, value in step["cpu"].items())
        load_text = f"{rate}/s" if rate else f"closed, {args.concurrency} in flight"
        print(
            f"  {kind:>7} {load_text:>22}: sent {step['sent']:,.0f}/s, done "
            f"{step['completed']:,.0f}/s, errors {step['errors']}, lost {step['lost']}, "
            f"p50 {step['p50']:.1f} p99 {step['p99']:.1f} max {step['max']:.1f} ms; CPU "
            f"{shown}, generator {step['generator_cpu']:.0%}, other {step['other_cpu']:.0%}"
            + (f", reasons {step['reasons']}" if step["reasons"] else ""),
            file=sys.stderr,
        )


def measure_control_ceiling(stack: Stack, figures: Figures, args: argparse.Namespace) -> None:
    print("control ceiling: RabbitMQ MQTT pass-through", file=sys.stderr)
    cluster = stack.cluster
    load = Child("bench.control_load")
    try:
        devices = [[f"bench{index:017d}", "x"] for index in range(args.control_devices)]
        for node, share in enumerate(halves(devices)):
            load.call(
                cmd="devices",
                host="127.0.0.1",
                port=cluster.mqtt_port(node),
                devices=share,
                username=cluster.user,
                password=cluster.password,
            )
        load.call(
            cmd="publisher",
            host="127.0.0.1",
            port=cluster.mqtt_port(0),
            client_id="bench-publisher",
            username=cluster.user,
            password=cluster.password,
        )
        groups = stack.groups()
        server_pids = groups["rabbit0"] + groups["rabbit1"]
        control_steps(load, "mqtt", stack, server_pids, args, figures)
    finally:
        load.close()


def measure_control(stack: Stack, figures: Figures, args: argparse.Namespace) -> None:
    print("control: two api processes", file=sys.stderr)
    api = stack.apis[0]
    load = Child("bench.control_load")
    try:
        with httpx.Client(base_url=api.base_url, timeout=30) as http:
            account = bench_account(api, http)
            devices = register_and_bind(
                http, import_product(api), args.control_devices, account.headers
            )
            for node, share in enumerate(halves(devices)):
                load.call(
                    cmd="devices",
                    host="127.0.0.1",
                    port=stack.cluster.mqtt_port(node),
                    devices=share,
                )
            wait_online(http, account.headers, args.control_devices)
        load.call(
            cmd="http",
            host="127.0.0.1",
            port=stack.api_ports[0],
            ports=stack.api_ports,
            pool=args.pool,
            appid=account.appid,
            token=account.token,
        )
        server_pids = [pid_of(server) for server in stack.apis]
        control_steps(load, "status", stack, server_pids, args, figures)
        control_steps(load, "control", stack, server_pids, args, figures)
    finally:
        load.close()


# -- the report ---------------------------------------------------------------------------------


def rabbitmq_version(stack: Stack) -> str:
    try:
        overview = stack.cluster.management_get("/overview")
    except OSError:
        return "RabbitMQ"
    return (
        f"RabbitMQ {overview.get('rabbitmq_version', '?')} "
        f"(Erlang {overview.get('erlang_version', '?')})"
    )


def cpu_cells(cpu: dict[str, float], names: list[str]) -> str:
    """Shares of a core; a group whose processes ended during the window (a database
    backend closed by its pool) can read below zero, shown as 0."""
    return " | ".join(f"{max(0.0, cpu[name]):.0%}" if name in cpu else "-" for name in names)


def mark(step: ingest.Step) -> str:
    return "" if ingest.kept_up(step) else " †"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def header(figures: Figures, args: argparse.Namespace, what: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
        f"{figures.load_average} at the start): {figures.rabbitmq}, two nodes (up in "
        f"{figures.startup:.0f} s), PostgreSQL 15, {what}; all on the same machine, sharing its "
        f"cores. Each step: {args.warmup:g} s warm-up, {args.window:g} s measured. CPU in "
        "cores' share, per part of the stack: `rabbit0`/`rabbit1` the broker nodes, `postgres` "
        "the database with its backends, `gateways`/`apis` both iotcloud processes of a role "
        "together; other: every other process on the machine."
    )


def render_ingest(figures: Figures, args: argparse.Namespace) -> str:
    best = ingest.best_kept_up(list[ingest.Step](figures.persisted))
    ceiling = ingest.best_kept_up(list[ingest.Step](figures.ceiling))
    embedded = (
        ingest.best_kept_up(figures.embedded.fleets["gizwits"].steps)
        if figures.embedded and "gizwits" in figures.embedded.fleets
        else None
    )
    lines = [
        header(
            figures,
            args,
            f"one `api` and one `gateway` process per node, {figures.devices:,} devices "
            "(MQTT 3.1, QoS 0 PUBLISH of a "
            f"{figures.packet_bytes}-byte pet_house 0x0091 report, `bench.mqtt_load`) half on "
            "each node",
        ),
        "",
        "| target | this run | |",
        "|---|---:|---|",
        f"| reports persisted/s, two `gateway` processes, PostgreSQL, devices on both nodes "
        f"| **{best:,.0f}** | ≥ {INGEST_TARGET:,}: {verdict(best >= INGEST_TARGET)} |",
        f"| ceiling: RabbitMQ MQTT pass-through (devices on both nodes → one subscriber), "
        f"messages/s kept up with | {ceiling:,.0f} | |",
    ]
    if embedded is not None:
        lines.append(
            f"| embedded mode (one `iotcloud serve`, same PostgreSQL, same devices and "
            f"generator), reports persisted/s | {embedded:,.0f} | |"
        )
    names = ["rabbit0", "rabbit1", "postgres", "gateways", "apis"]
    lines += [
        "",
        "| path | offered/s | sent/s | delivered or persisted/s | behind at the end "
        "| queued at the end | rabbit0 CPU | rabbit1 CPU | postgres CPU | gateways CPU "
        "| apis CPU | generator CPU | subscriber CPU | other CPU | gateway RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, steps in (
        ("RabbitMQ pass-through (ceiling)", figures.ceiling),
        ("two gateways → PostgreSQL", figures.persisted),
    ):
        for step in steps:
            queued = f"{step.queued:,}" if step.cpu.get("gateways") is not None else "-"
            rss = f"{step.gateway_rss:,.0f}" if step.gateway_rss else "-"
            subscriber = step.cpu.get("subscriber")
            lines.append(
                f"| {path} | {step.offered:,} | {step.sent:,.0f} | {step.rate:,.0f}{mark(step)} "
                f"| {step.backlog:,} | {queued} | {cpu_cells(step.cpu, names)} "
                f"| {step.generator_cpu:.0%} "
                f"| {'-' if subscriber is None else f'{subscriber:.0%}'} | {step.other_cpu:.0%} "
                f"| {rss} |"
            )
    if figures.embedded and "gizwits" in figures.embedded.fleets:
        for emb in figures.embedded.fleets["gizwits"].steps:
            lines.append(
                f"| embedded `iotcloud serve` → PostgreSQL | {emb.offered:,} | {emb.sent:,.0f} "
                f"| {emb.rate:,.0f}{mark(emb)} | {emb.backlog:,} | - | - | - | - "
                f"| {emb.server_cpu:.0%} (the server) | - | {emb.generator_cpu:.0%} | - "
                f"| {emb.other_cpu:.0%} (PostgreSQL included) | {emb.rss:,.0f} |"
            )
    lines += [
        "",
        "† not kept up with: the generator could not send what was offered (TCP pushed back), "
        "the measured rate fell more than 5 % behind what was sent, or over a second's worth "
        "was still to be counted at the end of the window.",
        "",
        f"- two gateways: best persisted while keeping up **{best:,.0f} reports/s**; "
        f"RabbitMQ's pass-through kept up with {ceiling:,.0f} messages/s; persisted / ceiling "
        f"**{best / ceiling if ceiling else 0:.0%}**",
    ]
    lines.append(
        f"- presence: the connection events of the {figures.devices:,} devices (through the "
        "same queue) were all stored, and the queue empty, "
        f"{figures.presence_seconds:.0f} s after the last device connected"
    )
    lines += [f"- {note}" for note in figures.notes]
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.scale_out --parts {args.parts} --devices "
        f"{args.devices} --rates {args.rates} --ceiling-rates {args.ceiling_rates}"
        + (f" --embedded-rates {args.embedded_rates}" if args.embedded_rates else "")
        + (" --all-rates" if args.all_rates else "")
        + " --write`",
    ]
    return "\n".join(lines)


CONTROL_PATHS = {
    "mqtt": "MQTT PUBLISH → device (RabbitMQ ceiling)",
    "status": "GET /status, both api processes (HTTP ceiling)",
    "control": "POST /app/control → device, both api processes",
}


def render_control(figures: Figures, args: argparse.Namespace) -> str:
    at_rate = next(
        (s for s in figures.control if s["kind"] == "control" and s["offered"] == CONTROL_RATE),
        None,
    )
    names = ["rabbit0", "rabbit1", "postgres", "gateways", "apis"]
    lines = [
        header(
            figures,
            args,
            f"one `api` and one `gateway` process per node, one load process "
            f"(`bench.control_load`: {figures.control_devices} MQTT 3.1 devices, half on each "
            f"node, subscribed to `app2dev/{{did}}/#`; a pool of {args.pool} keep-alive HTTP/1.1 "
            "connections spread over both `api` processes, requests released round-robin over "
            "them; for the MQTT ceiling, one publisher on node 0)",
        )
        + " Latency: command released → frame at the device (`GET /status`: → answer).",
        "",
    ]
    if at_rate is not None:
        lines += [
            "| target | this run | |",
            "|---|---:|---|",
            f"| `POST /app/control` → device, p99 at {CONTROL_RATE} commands/s over two `api` "
            f"processes | **{at_rate['p99']:.1f} ms** (p50 {at_rate['p50']:.1f}, HTTP answer "
            f"p99 {at_rate['http_p99']:.1f}) | ≤ {CONTROL_TARGET:g} ms: "
            f"{verdict(at_rate['p99'] <= CONTROL_TARGET)} |",
            "",
        ]
    lines += [
        "| path | load | sent/s | done/s | errors | lost | p50 ms | p90 ms | p99 ms | max ms "
        "| rabbit0 CPU | rabbit1 CPU | postgres CPU | gateways CPU | apis CPU | load CPU "
        "| other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in figures.control:
        load = (
            f"{step['offered']:,.0f}/s"
            if step["offered"]
            else f"closed, {step['concurrency']} in flight"
        )
        errors = "-" if step["kind"] == "mqtt" else f"{step['errors']:,}"
        if step["reasons"]:
            errors += " (" + ", ".join(f"{n:,} {why}" for why, n in step["reasons"].items()) + ")"
        lost = "-" if step["kind"] == "status" else f"{step['lost']:,}"
        lines.append(
            f"| {CONTROL_PATHS[step['kind']]} | {load} | {step['sent']:,.0f} "
            f"| {step['completed']:,.0f} | {errors} | {lost} | {step['p50']:.1f} "
            f"| {step['p90']:.1f} | {step['p99']:.1f} | {step['max']:.1f} "
            f"| {cpu_cells(step['cpu'], names)} | {step['generator_cpu']:.0%} "
            f"| {step['other_cpu']:.0%} |"
        )

    def closed(kind: str) -> float:
        return max(
            (s["completed"] for s in figures.control if s["kind"] == kind and not s["offered"]),
            default=0.0,
        )

    mqtt, status, control = closed("mqtt"), closed("status"), closed("control")
    lines += [
        "",
        f"- control, sustained (closed loop, {args.concurrency} in flight, both api processes): "
        f"**{control:,.0f} commands/s** delivered — "
        f"{control / mqtt if mqtt else 0:.0%} of RabbitMQ's {mqtt:,.0f} messages/s, "
        f"{control / status if status else 0:.0%} of `GET /status`'s {status:,.0f} requests/s",
    ]
    lines += [f"- {note}" for note in figures.notes]
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.scale_out --parts {args.parts} "
        f"--control-devices {args.control_devices} --control-rates {args.control_rates} --write`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ingest,control", help="ingest, control, or both")
    parser.add_argument("--devices", type=int, default=1000, help="ingest: devices")
    parser.add_argument(
        "--rates", default="1000,2000,3000,4000,5000", help="ingest: offered reports/s"
    )
    parser.add_argument(
        "--ceiling-rates",
        default="2000,5000,10000,15000,20000",
        help="ingest ceiling: offered messages/s",
    )
    parser.add_argument(
        "--embedded-rates",
        default="",
        help="embedded mode on the same PostgreSQL, offered reports/s (empty: skipped)",
    )
    parser.add_argument(
        "--all-rates",
        action="store_true",
        help="ingest: go on after a rate was not kept up with",
    )
    parser.add_argument("--control-devices", type=int, default=100)
    parser.add_argument("--control-rates", default="500,1000", help="offered commands/s")
    parser.add_argument("--concurrency", type=int, default=32, help="closed loop: in flight")
    parser.add_argument("--pool", type=int, default=64, help="keep-alive HTTP connections")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=3.0)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    raise_open_files(2 * args.devices + 1000)
    figures = Figures(
        load_average=load_average(),
        devices=args.devices,
        control_devices=args.control_devices,
    )
    with cluster_stack(figures.notes) as stack:
        figures.rabbitmq = rabbitmq_version(stack)
        figures.startup = stack.cluster.startup_seconds
        if "ingest" in parts:
            measure_ingest_ceiling(stack, figures, args)
        if "control" in parts:
            measure_control_ceiling(stack, figures, args)
        with ExitStack() as exits:
            start_iotcloud(stack, exits, figures.notes)
            if "ingest" in parts:
                measure_ingest_persisted(stack, figures, args)
            if "control" in parts:
                measure_control(stack, figures, args)
            for server in stack.apis + stack.gateways:
                if server.process is not None and server.process.poll() is not None:
                    role = server.env["IOTCLOUD_ROLE"]
                    figures.notes.append(f"an iotcloud `{role}` process exited during the run")
        if "ingest" in parts and args.embedded_rates:
            stack.cluster.stop()
            measure_embedded(stack.postgres, figures, args)
    reports = {}
    if "ingest" in parts:
        reports["ingest"] = render_ingest(figures, args)
    if "control" in parts:
        reports["control"] = render_control(figures, args)
    for part, report in reports.items():
        print(report)
        if args.write:
            write_section("scale_out", part, report, heading=HEADING, intro=INTRO)


if __name__ == "__main__":
    main()
