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
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.pg import PostgresServer
from tests.server import RunningServer, make_server

ROOT = Path(__file__).resolve().parents[1]
DATAPOINTS = ROOT / "tests" / "fixtures" / "datapoints" / "pet_house.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Child:
    """A helper process spoken to in JSON lines (`bench.mqtt_load`, `bench.ceiling_broker`)."""

    def __init__(self, module: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args} exited with {self.process.wait()}")
        reply = dict(json.loads(line))
        if "error" in reply:
            raise RuntimeError(f"{self.process.args}: {reply['error']}")
        return reply

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (all processes)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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


def wait_for_quiet(generator: Child, server_pid: int, limit: float) -> None:
    """Wait (at most ``limit`` seconds) until other processes use under 25% of a core.

    These machines are shared: another job's test suite takes the cores the server needs.
    The measured window also records what other processes used, so a reader can judge.
    """
    deadline = time.monotonic() + limit

    def sample() -> tuple[float, float]:
        ours = generator.call(cmd="stats")["cpu"] + cpu_seconds(server_pid)
        return machine_busy_seconds() - ours, time.monotonic()

    while True:
        before, started = sample()
        time.sleep(2)
        after, ended = sample()
        other = (after - before) / (ended - started)
        if other < 0.25 or ended > deadline:
            return
        print(f"  waiting for other processes to go quiet ({other:.0%} of a core)", file=sys.stderr)


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
        wait_for_quiet(generator, server_pid, args.quiet_wait)
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


def database_query(server: RunningServer, database_url: str | None) -> Any:
    """A function running one SQL query on the server's database, returning all rows."""
    if database_url is None:
        path = server.data_dir / "iotcloud.db"
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

        def query_sqlite(sql: str) -> list[tuple[Any, ...]]:
            return reader.execute(sql).fetchall()

        return query_sqlite
    import asyncpg

    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect(dsn))

    def query_postgres(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in loop.run_until_complete(connection.fetch(sql))]

    return query_postgres


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
    data_dir = Path(tempfile.mkdtemp(prefix="iotcloud-bench-"))
    server = make_server(
        data_dir,
        database_url,
        rate_limit_per_address=0,
        rate_limit_per_app=0,
        log_level="WARNING",
    )
    server.env["IOTCLOUD_ENV"] = "production"
    server.env.pop("IOTCLOUD_DEV_CAPTCHA_CODE")
    server.start()
    generator: Child | None = None
    try:
        assert server.process is not None
        pid = server.process.pid
        product = json.loads(server.cli("product", "import", str(DATAPOINTS), "--json").stdout)
        query = database_query(server, database_url)
        devices = create_devices(server, query, product["product_key"], args.devices)
        time.sleep(2)
        figures.rss_before = rss_mib(pid)
        generator = Child("bench.mqtt_load")
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
        if generator is not None:
            generator.close()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


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


def write_section(backend: str, report: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin = f"<!-- bench:ingest:{backend}:begin -->"
    end = f"<!-- bench:ingest:{backend}:end -->"
    block = f"{begin}\n{report}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument(
        "--rates", default="1000,2000,3000,4000", help="offered reports/s, comma-separated"
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--database-url", default=None, help="an existing, empty database")
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL and use it"
    )
    parser.add_argument("--skip-ceiling", action="store_true", help="measure persisted only")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait, before each measured window, for other processes to go quiet",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    postgres = None
    database_url = args.database_url
    if args.postgres:
        postgres = PostgresServer()
        postgres.start()
        database_url = postgres.create_database("bench")
    backend = "postgres" if database_url else "sqlite"
    figures = Figures(backend=backend, devices=args.devices)
    try:
        if not args.skip_ceiling:
            measure_ceiling(figures, rates, args)
        measure_persisted(figures, rates, args, database_url)
    finally:
        if postgres is not None:
            postgres.stop()
    report = render(figures, args)
    print(report)
    if args.write:
        write_section(backend, report)


if __name__ == "__main__":
    main()
