"""Scheduler firing: how late, and how fast, ``iotcloud serve`` fires 10,000 schedules due in one
minute, beside the embedded broker's own acknowledged-command round trip measured in the same
run.

Starts a real ``iotcloud serve`` (SQLite by default, ``--postgres`` for a throwaway PostgreSQL,
or ``--database-url``), creates an app, a user and a pet_house product, registers ``--devices``
devices over ``POST /dev/devices``, binds them to the user (``POST /app/bindings``) and connects
each from `bench.scheduler_devices`: lean MQTT devices that answer every 0x0093 at once with a
0x0094 of the same SN and note when each command arrived.

Then, for each of ``--patterns``, ``--schedules`` one-shot Gizwits schedules (each one task
writing ``LED_R``/``LED_G`` on one device, round-robin over the devices; the two values number
the schedule, so the device side knows which command it got) are seeded directly in the
database from this process, due in the first whole minute at least ``--lead`` seconds ahead:

* ``burst``: every schedule due at HH:MM:00, as Gizwits' minute-precision ``time`` makes them;
* ``spread``: evenly over the 60 seconds of the minute (HH:MM:SS; the engine takes seconds,
  the Gizwits API does not), ``schedules / 60`` due each second.

One schedule per device is made through `SchedulerService.create` (the service's validation and
encoding check, its row exactly as the API would store it); the others are copies of those rows
with their own id, name, values and time, inserted in bulk, so seeding takes seconds. The
server's engine is not told: it finds them on its own (it looks every
``IOTCLOUD_SCHEDULER_MAX_SLEEP_SECONDS``) and sleeps until they are due.

Measured per run, from the database once every run has finished (``schedule_runs``):

* started: the first attempt's ``at`` minus the scheduled instant (0 for an occurrence the
  engine claimed ahead and started at its instant; how late the claim came otherwise);
* delivered: when the device got the 0x0093 (its wall clock, same machine) minus the instant;
* acknowledged: ``finished_at`` (the run recorded ``succeed`` after the 0x0094) minus the
  instant;
* statuses, runs per schedule (duplicates, lost), commands per schedule at the devices;
* throughput: runs finished per second from the first attempt to the last finish; the server's
  CPU, the devices' CPU and every other process's CPU over that window;
* the servers' garbage collections from the due instant until every run finished, each
  collection's pause read through ``gc.callbacks`` by a probe (`Probe`: a ``sitecustomize``
  module on the servers' ``PYTHONPATH``); ``--gc-untuned`` undoes the servers' tuning
  (`iotcloud.runtime.tune_gc`) for comparison;
* the servers' RSS before seeding, at most, and ``--settle`` seconds after the last run.
  ``--memory`` also prints their memory by kind (pymalloc's arenas and live bytes) before and
  after each pattern and what glibc's ``malloc_trim`` gives back; ``--tracemalloc FRAMES``
  prints what their heap gained over a pattern (traced from just before seeding);
  ``--rounds N`` runs the patterns N times on the same servers.

The ceiling (`bench.ceiling_broker`, Mosquitto's own pass-through, started by the bench): the
same number of 0x0093 commands due at once, published by one MQTT client round-robin to the
same number of devices, at most ``--concurrency`` awaiting their 0x0094 (the engine's own limit,
``IOTCLOUD_SCHEDULER_CONCURRENCY``): what the broker and the devices alone allow.

``--engines N`` runs N servers on one PostgreSQL database, all firing; an embedded broker cannot
share its devices with another process, so they use one throwaway Mosquitto (each with its own
gateway client id), and the ceiling is Mosquitto's round trip to the same devices. The devices
tell which server sent a command by its SN (each gateway numbers its commands from a random
start). ``--mosquitto`` puts a single server on Mosquitto too.

Usage: ``uv run --frozen python -m bench.scheduler [--schedules 10000] [--devices 200]
[--patterns burst,spread] [--postgres [--engines 2 | --mosquitto]] [--prepare SECONDS]
[--gc-untuned] [--memory] [--tracemalloc FRAMES] [--rounds N] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, insert, select
from tests.mosquitto import GATEWAY_USER, MosquittoServer
from tests.server import RunningServer

from bench.ceiling_broker import PassThroughMosquitto
from bench.harness import (
    DATAPOINTS,
    Child,
    add_run_options,
    bench_account,
    bench_server,
    cpu_seconds,
    database_query,
    import_product,
    load_average,
    machine_busy_seconds,
    percentile,
    pid_of,
    raise_open_files,
    register_and_bind,
    rss_mib,
    throwaway_database,
    wait_for_quiet,
    wait_online,
    write_section,
)
from iotcloud.codecs import P0Codec, load_product_definition
from iotcloud.config import Settings
from iotcloud.domain.clock import SystemClock
from iotcloud.domain.schedules import parse_gizwits_scheduler
from iotcloud.gateway.service import DeviceGateway
from iotcloud.scheduler.engine import CLAIM_BATCH, EngineConfig, SchedulerEngine
from iotcloud.services.bindings import BindingService
from iotcloud.services.control import ControlService
from iotcloud.services.products import ProductService
from iotcloud.services.scheduler import SchedulerService, ScheduleSpec, Task
from iotcloud.services.telemetry import TelemetryService
from iotcloud.storage.database import Database
from iotcloud.storage.models import AppRow, ScheduleRow, ScheduleRunRow, UserRow

INSERT_CHUNK = 1000
PATTERNS = ("burst", "spread")
POLL_SECONDS = 0.5
COUNT_RUNS = {  # runs by status, of the schedules named "{pattern} {n}"
    "burst": "SELECT r.status, count(*) FROM schedule_runs r JOIN schedules s "
    "ON s.id = r.schedule_id WHERE s.name LIKE 'burst %' GROUP BY r.status",
    "spread": "SELECT r.status, count(*) FROM schedule_runs r JOIN schedules s "
    "ON s.id = r.schedule_id WHERE s.name LIKE 'spread %' GROUP BY r.status",
}
VALUES_PER_BYTE = 255  # LED_R and LED_G take 0-254: schedule n writes (n // 255, n % 255)


@dataclass(frozen=True)
class Owner:
    """The schedules' owner, as `SchedulerService` takes a user."""

    app_id: int
    user_id: int


@dataclass
class Ceiling:
    label: str = "broker alone"
    count: int = 0
    completed: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    broker_cpu: float = 0.0
    generator_cpu: float = 0.0
    other_cpu: float = 0.0


@dataclass
class Round:
    """One pattern's schedules and what became of them."""

    pattern: str
    schedules: int
    due: datetime
    seed_seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    lost: int = 0
    fired: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    acknowledged: list[float] = field(default_factory=list)
    device_duplicates: int = 0
    device_missing: int = 0
    misrouted: int = 0
    span: float = 0.0
    done_after: float = 0.0
    server_cpu: float = 0.0
    generator_cpu: float = 0.0
    other_cpu: float = 0.0
    other_before: float = 0.0
    rss_idle: float = 0.0
    """The servers' RSS before the pattern's schedules were seeded."""
    rss_before: float = 0.0
    rss_max: float = 0.0
    rss_after: float = 0.0
    """The servers' RSS ``--settle`` seconds after the last run finished."""
    timed_out: bool = False
    per_engine: list[int] = field(default_factory=list)
    gc: list[tuple[int, float]] = field(default_factory=list)
    """(generation, pause in seconds) of the servers' collections from due until done."""

    @property
    def finished(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "running")

    @property
    def rate(self) -> float:
        return self.finished / self.span if self.span else 0.0


@dataclass
class Figures:
    backend: str
    schedules: int
    devices: int
    concurrency: int
    engines: int = 1
    broker: str = "embedded broker"
    load_average: str = ""
    ceiling: Ceiling | None = None
    rounds: list[Round] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def due_of(pattern: str, first: datetime, index: int) -> datetime:
    return first + timedelta(seconds=index % 60) if pattern == "spread" else first


def attrs_of(index: int) -> dict[str, int]:
    return {"LED_R": index // VALUES_PER_BYTE, "LED_G": index % VALUES_PER_BYTE}


def sqlalchemy_url(server: RunningServer, database_url: str | None) -> str:
    if database_url:
        return database_url
    return f"sqlite+aiosqlite:///{(server.data_dir / 'iotcloud.db').resolve()}"


# -- the servers' garbage collector and heap ----------------------------------------------------

PROBE_SITECUSTOMIZE = """
import gc, json, os, sys, threading, time

if "iotcloud.cli" in sys.orig_argv and os.environ.get("BENCH_SCHEDULER_PROBE"):
    _dir = os.environ["BENCH_SCHEDULER_PROBE"]
    _pid = os.getpid()
    if os.environ.get("BENCH_SCHEDULER_GC_UNTUNED"):  # today's collector, for comparison
        gc.freeze = lambda: None
        gc.set_threshold = lambda *args: None
    elif os.environ.get("BENCH_SCHEDULER_GC_THRESHOLDS"):  # other thresholds, for comparison
        _wanted = [int(x) for x in os.environ["BENCH_SCHEDULER_GC_THRESHOLDS"].split(",")]
        _set_threshold = gc.set_threshold
        gc.set_threshold = lambda *args: _set_threshold(*_wanted)
    _pauses = []
    _started = [0.0]

    def _collected(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            _pauses.append((time.time(), info["generation"], time.perf_counter() - _started[0]))

    gc.callbacks.append(_collected)
    _trace = int(os.environ.get("BENCH_SCHEDULER_TRACEMALLOC") or 0)
    if _trace:
        import tracemalloc  # started by the "before" request: what is allocated after it

    def _memory(trim):
        # RSS by kind of mapping, pymalloc's use of its arenas, and (trim) what glibc's
        # malloc_trim gives back
        import ctypes

        kinds = {}
        size = 0
        name = ""
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    size = (end - start) // 2**20
                    name = fields[5] if len(fields) > 5 else ""
                elif fields[0] == "Rss:":
                    if name.startswith("/"):
                        kind = "files"
                    elif name:
                        kind = name
                    elif size == 1:
                        kind = "anon 1 MiB (pymalloc arenas)"
                    elif 60 <= size <= 64:
                        kind = "anon 64 MiB (glibc thread arenas)"
                    else:
                        kind = "anon other"
                    kinds[kind] = kinds.get(kind, 0) + int(fields[1]) / 1024
        found = sorted(kinds.items())
        lines = ["RSS MiB by mapping: " + ", ".join(f"{k} {v:.1f}" for k, v in found)]
        saved = os.dup(2)
        path = os.path.join(_dir, f"mallocstats-{_pid}.txt")
        with open(path, "w") as out:
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
        if not trim:
            os.close(saved)
        with open(path) as stats:
            lines += [
                " ".join(line.split())
                for line in stats
                if line.startswith(("# arenas allocated current", "# bytes in"))
            ]
        if trim:
            found = gc.collect()
            with open(path, "w") as out:
                os.dup2(out.fileno(), 2)
                try:
                    sys._debugmallocstats()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
            with open(path) as stats:
                lines += [
                    f"after a full collection ({found} objects): " + " ".join(line.split())
                    for line in stats
                    if line.startswith(("# arenas allocated current", "# bytes in"))
                ]
            with open(f"/proc/{_pid}/statm") as statm:
                before = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open(f"/proc/{_pid}/statm") as statm:
                after = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            lines.append(f"malloc_trim: RSS {before:.1f} -> {after:.1f} MiB")
        return "\\n".join(lines)

    def _watch():
        written, snapshots = 0, {}
        while True:
            time.sleep(0.5)
            new = _pauses[written:]
            written += len(new)
            if new:
                with open(os.path.join(_dir, f"gc-{_pid}.jsonl"), "a") as out:
                    out.writelines(json.dumps(item) + "\\n" for item in new)
            for name in sorted(os.listdir(_dir)):
                if name.startswith(f"memory-{_pid}-") and name.endswith(".request"):
                    os.remove(os.path.join(_dir, name))
                    label = name[len(f"memory-{_pid}-") : -len(".request")]
                    with open(os.path.join(_dir, f"memory-{_pid}-{label}.txt"), "w") as out:
                        out.write(_memory(label.startswith("trim")))
            if not _trace:
                continue
            prefix = f"snapshot-{_pid}-"
            for name in sorted(os.listdir(_dir)):
                if not (name.startswith(prefix) and name.endswith(".request")):
                    continue
                label = name[len(prefix) : -len(".request")]
                os.remove(os.path.join(_dir, name))
                if not tracemalloc.is_tracing():
                    tracemalloc.start(_trace)
                gc.collect()
                snapshot = snapshots[label] = tracemalloc.take_snapshot()
                lines = [f"traced now {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB"]
                if label != "before" and "before" in snapshots:
                    by_caller = {}
                    for stat in snapshot.compare_to(snapshots["before"], "traceback"):
                        ours = [f for f in stat.traceback if "/iotcloud/" in f.filename]
                        where = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "(other)"
                        by_caller[where] = by_caller.get(where, 0) + stat.size_diff
                    lines.append("grown, by the innermost iotcloud frame that allocated it:")
                    for where, size in sorted(by_caller.items(), key=lambda i: -i[1])[:12]:
                        lines.append(f"  {size / 2**20:+.2f} MiB {where}")
                    for stat in snapshot.compare_to(snapshots["before"], "traceback")[:6]:
                        lines.append(f"{stat.size_diff / 2**20:+.2f} MiB {stat.count_diff:+d}")
                        lines += ["    " + line for line in stat.traceback.format()]
                with open(os.path.join(_dir, f"snapshot-{_pid}-{label}.txt"), "w") as out:
                    out.write("\\n".join(lines))

    threading.Thread(target=_watch, daemon=True, name="bench-probe").start()
"""


class Probe:
    """What the servers' garbage collector does (every collection's pause, through
    ``gc.callbacks``) and, with ``--tracemalloc``, what their heap gained over a pattern
    (allocations traced from just before it, still alive after it and a full collection): a
    ``sitecustomize`` module on the servers' ``PYTHONPATH`` (this process's environment is
    the servers'), active in ``iotcloud.cli`` processes only."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-scheduler-probe-"))
        self.requests = 0
        (self.dir / "sitecustomize.py").write_text(PROBE_SITECUSTOMIZE)
        os.environ["BENCH_SCHEDULER_PROBE"] = str(self.dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.dir), os.environ.get("PYTHONPATH")])
        )
        if args.gc_untuned:
            os.environ["BENCH_SCHEDULER_GC_UNTUNED"] = "1"
        if args.gc_thresholds:
            os.environ["BENCH_SCHEDULER_GC_THRESHOLDS"] = args.gc_thresholds
        if args.tracemalloc:
            os.environ["BENCH_SCHEDULER_TRACEMALLOC"] = str(args.tracemalloc)

    def pauses(self, pids: list[int], start: float, end: float) -> list[tuple[int, float]]:
        """(generation, seconds) of every collection of ``pids`` between the wall-clock
        instants ``start`` and ``end``."""
        found = []
        for pid in pids:
            path = self.dir / f"gc-{pid}.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                at, generation, paused = json.loads(line)
                if start <= at <= end:
                    found.append((int(generation), float(paused)))
        return found

    def snapshot(self, pids: list[int], label: str, wait: float = 60.0) -> list[str]:
        """Ask each server for a tracemalloc snapshot (after a full collection); the report
        of what grew since the ``before`` one."""
        if label != "before":
            self.requests += 1
            label = f"{label}-{self.requests}"  # each request its own answer
        answers = self._ask(pids, "snapshot", label, wait, pause=0.2)
        return [each if each is not None else "(no snapshot)" for each in answers]

    def memory(self, pids: list[int], label: str, wait: float = 30.0) -> list[str]:
        """Each server's RSS by kind of mapping and pymalloc's arena use; a ``label``
        starting with ``trim`` also has it return its allocator's free memory (glibc
        ``malloc_trim``) and says what that gave back."""
        self.requests += 1
        label = f"{label}-{self.requests}"  # each request its own answer
        reports: list[str] = []
        for each in self._ask(pids, "memory", label, wait, pause=0.1):
            reports += each.splitlines() if each is not None else ["(no answer)"]
        return reports

    def _ask(
        self, pids: list[int], kind: str, label: str, wait: float, pause: float
    ) -> list[str | None]:
        """Touch each server's ``{kind}-{pid}-{label}.request`` and collect its answer file
        (None for a server that did not answer within ``wait`` seconds)."""
        for pid in pids:
            (self.dir / f"{kind}-{pid}-{label}.request").touch()
        answers: list[str | None] = []
        deadline = time.monotonic() + wait
        for pid in pids:
            path = self.dir / f"{kind}-{pid}-{label}.txt"
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(pause)  # the answer is written whole before it is read
            answers.append(path.read_text() if path.exists() else None)
            path.unlink(missing_ok=True)
        return answers

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def gc_summary(pauses: list[tuple[int, float]]) -> str:
    """Collections per generation with their total and longest pause."""
    parts = []
    for generation in range(3):
        each = [paused for gen, paused in pauses if gen == generation]
        if each:
            parts.append(
                f"gen{generation} {len(each):,} ({sum(each) * 1000:,.0f} ms, longest "
                f"{max(each) * 1000:.1f} ms)"
            )
    return ", ".join(parts) or "none"


# -- seeding and reading back -------------------------------------------------------------------


async def seed(
    url: str,
    appid: str,
    username: str,
    product_key: str,
    dids: list[str],
    pattern: str,
    count: int,
    first: datetime,
) -> None:
    """Store ``count`` one-shot schedules named ``"{pattern} {n}"`` due from ``first`` (see the
    module docstring): one per device through `SchedulerService.create`, the rest copied from
    those rows in bulk."""
    clock = SystemClock()
    async with Database(url) as db:
        async with db.session() as session:
            found = (
                await session.execute(
                    select(UserRow.id, UserRow.app_id)
                    .join(AppRow, AppRow.id == UserRow.app_id)
                    .where(AppRow.appid == appid, UserRow.username == username)
                )
            ).one()
        owner = Owner(app_id=found.app_id, user_id=found.id)
        bindings = BindingService(db, clock)
        # not entered: nothing is connected or written; codec_of reads the product from the DB
        gateway = DeviceGateway(db, clock)
        control = ControlService(
            bindings,
            TelemetryService(db, clock, Settings(env="development")),
            gateway,
            ProductService(db, clock),
        )
        # never run: `create` only wakes it
        service = SchedulerService(
            db, clock, bindings, control, SchedulerEngine(db, clock, control)
        )
        gizwits = parse_gizwits_scheduler(
            date=first.date().isoformat(), time=first.strftime("%H:%M"), repeat="none"
        )

        def spec(index: int) -> ScheduleSpec:
            due = due_of(pattern, first, index)
            return ScheduleSpec(
                dialect="gizwits",
                timing=replace(gizwits, at=wall_time(due.hour, due.minute, due.second)),
                tasks=[Task(dids[index % len(dids)], product_key, attrs=attrs_of(index))],
                name=f"{pattern} {index}",
            )

        made = min(count, len(dids))
        for start in range(0, made, 50):
            await asyncio.gather(
                *(service.create(owner, spec(n)) for n in range(start, min(made, start + 50)))
            )
        async with db.session() as session:
            templates = {
                int(row.name.split()[1]): row
                for row in await session.scalars(
                    select(ScheduleRow).where(ScheduleRow.name.like(f"{pattern} %"))
                )
            }
        columns = [column.key for column in ScheduleRow.__table__.columns if column.key != "id"]
        rows: list[dict[str, Any]] = []
        for index in range(made, count):
            template = templates[index % made]
            due = due_of(pattern, first, index)
            values = {key: getattr(template, key) for key in columns}
            values.update(
                public_id=secrets.token_hex(16),
                name=f"{pattern} {index}",
                tasks=[Task(dids[index % len(dids)], product_key, attrs=attrs_of(index)).to_json()],
                at_time=wall_time(due.hour, due.minute, due.second),
                next_due_at=due,
            )
            rows.append(values)
        for start in range(0, len(rows), INSERT_CHUNK):
            async with db.session() as session:
                await session.execute(insert(ScheduleRow), rows[start : start + INSERT_CHUNK])


@dataclass
class RunRecord:
    index: int
    scheduled_at: datetime
    status: str
    first_attempt: datetime | None
    finished_at: datetime | None


async def forget(url: str, pattern: str) -> None:
    """Delete the pattern's schedules and their runs (before the pattern runs again)."""
    async with Database(url) as db, db.session() as session:
        await session.execute(delete(ScheduleRow).where(ScheduleRow.name.like(f"{pattern} %")))


async def read_runs(url: str, pattern: str) -> tuple[list[RunRecord], int]:
    """The runs of the pattern's schedules, and how many of its schedules there are."""
    async with Database(url) as db, db.session() as session:
        rows = await session.execute(
            select(
                ScheduleRow.name,
                ScheduleRunRow.scheduled_at,
                ScheduleRunRow.status,
                ScheduleRunRow.attempts,
                ScheduleRunRow.finished_at,
            )
            .join(ScheduleRow, ScheduleRow.id == ScheduleRunRow.schedule_id)
            .where(ScheduleRow.name.like(f"{pattern} %"))
        )
        records = [
            RunRecord(
                index=int(name.split()[1]),
                scheduled_at=scheduled_at,
                status=status,
                first_attempt=datetime.fromisoformat(attempts[0]["at"]) if attempts else None,
                finished_at=finished_at,
            )
            for name, scheduled_at, status, attempts, finished_at in rows.all()
        ]
        schedules = len(
            (
                await session.scalars(
                    select(ScheduleRow.id).where(ScheduleRow.name.like(f"{pattern} %"))
                )
            ).all()
        )
    return records, schedules


# -- measuring ----------------------------------------------------------------------------------


def measure_ceiling(figures: Figures, args: argparse.Namespace) -> None:
    """Mosquitto's own pass-through (`bench.ceiling_broker`) with as many devices: one client
    publishing the 0x0093s, the devices answering each with a 0x0094."""
    print("ceiling: Mosquitto pass-through, 0x0093 -> device -> 0x0094", file=sys.stderr)
    raise_open_files(args.devices * 2 + 1024)
    with PassThroughMosquitto() as broker:
        devices = Child("bench.scheduler_devices")
        try:
            fake = [[f"bench{index:017d}", "x"] for index in range(args.devices)]
            devices.call(cmd="devices", host="127.0.0.1", port=broker.port, devices=fake)
            devices.call(cmd="cloud", host="127.0.0.1", port=broker.port, client_id="bench-cloud")
            figures.ceiling = run_ceiling(devices, [broker.pid], "Mosquitto pass-through", args)
        finally:
            devices.close()


def run_ceiling(
    devices: Child, broker_pids: list[int], label: str, args: argparse.Namespace
) -> Ceiling:
    """``--schedules`` acknowledged commands due at once from the devices process's cloud
    connection (see `bench.scheduler_devices`); CPU of ``broker_pids``."""
    wait_for_quiet([*broker_pids, devices.pid], args.quiet_wait)
    b0, g0, m0, t0 = (
        sum(cpu_seconds(pid) for pid in broker_pids),
        cpu_seconds(devices.pid),
        machine_busy_seconds(),
        time.monotonic(),
    )
    made = devices.call(
        cmd="ceiling",
        count=args.schedules,
        concurrency=args.concurrency,
        datapoints=str(DATAPOINTS),
    )
    elapsed = time.monotonic() - t0
    broker_cpu = (sum(cpu_seconds(pid) for pid in broker_pids) - b0) / elapsed
    generator_cpu = (cpu_seconds(devices.pid) - g0) / elapsed
    ceiling = Ceiling(
        label=label,
        count=made["count"],
        completed=made["completed"],
        seconds=made["seconds"],
        rate=made["rate"],
        p50=made["p50"],
        p90=made["p90"],
        p99=made["p99"],
        max=made["max"],
        broker_cpu=broker_cpu,
        generator_cpu=generator_cpu,
        other_cpu=max(0.0, (machine_busy_seconds() - m0) / elapsed - broker_cpu - generator_cpu),
    )
    devices.call(cmd="records")  # the ceiling's commands are not the schedules'
    print(
        f"  {label}: {made['completed']:,} of {made['count']:,} acknowledged in "
        f"{made['seconds']:.2f} s ({made['rate']:,.0f}/s); done after p50 {made['p50']:.2f} p99 "
        f"{made['p99']:.2f} max {made['max']:.2f} s; broker CPU {broker_cpu:.0%}, devices "
        f"{generator_cpu:.0%}, other {ceiling.other_cpu:.0%}",
        file=sys.stderr,
    )
    return ceiling


def minute_from(instant: datetime) -> datetime:
    """The first whole minute at or after ``instant``."""
    floor = instant.replace(second=0, microsecond=0)
    return floor if floor == instant else floor + timedelta(minutes=1)


def run_pattern(
    pattern: str,
    pids: list[int],
    url: str,
    query: Any,
    devices: Child,
    setup: dict[str, Any],
    args: argparse.Namespace,
    probe: Probe,
) -> Round:
    """Seed the pattern's schedules, wait until they are due, follow them until every run has
    finished (or ``--timeout``), then read what happened. ``pids``: the servers."""
    other_before = wait_for_quiet([*pids, devices.pid], args.quiet_wait)
    rss_idle = sum(rss_mib(pid) for pid in pids)
    if args.memory:
        for line in probe.memory(pids, f"idle-{pattern}"):
            print(f"      idle: {line}", file=sys.stderr)
    if args.tracemalloc:
        probe.snapshot(pids, "before")
    first = minute_from(datetime.now(UTC) + timedelta(seconds=args.lead))
    started = time.monotonic()
    asyncio.run(
        seed(
            url,
            setup["appid"],
            setup["username"],
            setup["product_key"],
            setup["dids"],
            pattern,
            args.schedules,
            first,
        )
    )
    result = Round(pattern, args.schedules, first, seed_seconds=time.monotonic() - started)
    result.other_before = other_before
    result.rss_idle = rss_idle
    last_due = due_of(pattern, first, 59 if pattern == "spread" else 0)
    print(
        f"  {pattern}: {args.schedules:,} schedules seeded in {result.seed_seconds:.1f} s, due "
        f"{first:%H:%M:%S}{'-' + format(last_due, '%H:%M:%S') if last_due != first else ''} UTC",
        file=sys.stderr,
    )
    devices.call(cmd="records")  # forget anything before
    time.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds() - 1.0))
    result.rss_before = sum(rss_mib(pid) for pid in pids)
    wall_start = time.time()
    s0, g0, m0, t0 = (
        sum(cpu_seconds(pid) for pid in pids),
        cpu_seconds(devices.pid),
        machine_busy_seconds(),
        time.monotonic(),
    )
    deadline = last_due + timedelta(seconds=args.timeout)
    count_sql = COUNT_RUNS[pattern]
    rss_max = result.rss_before
    progress = 0.0
    while True:
        time.sleep(POLL_SECONDS)
        rss_max = max(rss_max, sum(rss_mib(pid) for pid in pids))
        counts = dict(query(count_sql))
        finished = sum(int(n) for status, n in counts.items() if status != "running")
        if finished >= args.schedules:
            break
        if datetime.now(UTC) > deadline:
            result.timed_out = True
            break
        if time.monotonic() - progress > 10:
            progress = time.monotonic()
            print(f"    {datetime.now(UTC):%H:%M:%S} runs: {counts}", file=sys.stderr)
    elapsed = time.monotonic() - t0
    result.gc = probe.pauses(pids, wall_start, time.time())
    result.server_cpu = (sum(cpu_seconds(pid) for pid in pids) - s0) / elapsed
    result.generator_cpu = (cpu_seconds(devices.pid) - g0) / elapsed
    result.other_cpu = max(
        0.0, (machine_busy_seconds() - m0) / elapsed - result.server_cpu - result.generator_cpu
    )
    result.rss_max = rss_max
    records, schedules = asyncio.run(read_runs(url, pattern))
    arrivals = devices.call(cmd="records")["records"]
    account(result, records, schedules, arrivals, setup["dids"], len(pids))
    print(
        f"    done: {dict(result.statuses)}; started p99 {percentile(result.fired, 0.99):.2f} s, "
        f"delivered p50 {percentile(result.delivered, 0.5):.2f} p99 "
        f"{percentile(result.delivered, 0.99):.2f} s, acknowledged p50 "
        f"{percentile(result.acknowledged, 0.5):.2f} p99 "
        f"{percentile(result.acknowledged, 0.99):.2f} "
        f"max {max(result.acknowledged, default=0):.2f} s; {result.rate:,.0f} runs/s; "
        f"server CPU {result.server_cpu:.0%}, devices {result.generator_cpu:.0%}, other "
        f"{result.other_cpu:.0%}; gc {gc_summary(result.gc)}",
        file=sys.stderr,
    )
    time.sleep(args.settle)
    result.rss_after = sum(rss_mib(pid) for pid in pids)
    print(
        f"    RSS MiB {result.rss_idle:,.0f} idle, {result.rss_before:,.0f} just before due, "
        f"{result.rss_max:,.0f} at most, {result.rss_after:,.0f} {args.settle:g} s after",
        file=sys.stderr,
    )
    if args.tracemalloc:
        for report in probe.snapshot(pids, f"after-{pattern}"):
            print(report, file=sys.stderr)
    if args.memory:
        for line in probe.memory(pids, f"trim-{pattern}"):
            print(f"      after: {line}", file=sys.stderr)
    return result


def account(
    result: Round,
    records: list[RunRecord],
    schedules: int,
    arrivals: list[list[Any]],
    dids: list[str],
    engines: int,
) -> None:
    """Fill ``result`` from the runs in the database and the commands the devices got."""
    per_schedule = Counter(record.index for record in records)
    result.duplicates = sum(count - 1 for count in per_schedule.values() if count > 1)
    result.lost = schedules - len(per_schedule)
    result.statuses = Counter(record.status for record in records)
    fired = [(r.first_attempt, r.scheduled_at) for r in records if r.first_attempt is not None]
    done = [
        (r.finished_at, r.scheduled_at)
        for r in records
        if r.finished_at is not None and r.status == "succeed"
    ]
    result.fired = sorted((at - due).total_seconds() for at, due in fired)
    result.acknowledged = sorted((at - due).total_seconds() for at, due in done)
    if fired and done:
        end = max(at for at, _ in done)
        result.span = (end - min(at for at, _ in fired)).total_seconds()
        result.done_after = (end - result.due).total_seconds()
    codec = P0Codec(load_product_definition(DATAPOINTS.read_bytes()))
    seen: Counter[int] = Counter()
    delivered = []
    for did, arrived, _sn, p0 in arrivals:
        values = codec.decode(bytes.fromhex(p0)).values
        index = int(values["LED_R"]) * VALUES_PER_BYTE + int(values["LED_G"])
        seen[index] += 1
        if dids[index % len(dids)] != did:
            result.misrouted += 1
        if seen[index] == 1:
            due = due_of(result.pattern, result.due, index)
            delivered.append(arrived - due.timestamp())
    result.delivered = sorted(delivered)
    result.device_duplicates = sum(count - 1 for count in seen.values())
    result.device_missing = result.schedules - len(seen)
    if engines > 1:
        result.per_engine = per_engine(sorted(sn for _, _, sn, _ in arrivals), engines)


def per_engine(sns: list[int], engines: int) -> list[int]:
    """Commands sent by each server (ascending SN order, zeros for servers that sent none), told
    apart by their SNs: a gateway numbers its commands one after another from a random start,
    so each server's SNs form one run, far (almost surely) from the other server's."""
    found: list[int] = []
    previous: int | None = None
    for sn in sorted(sns):
        if previous is None or sn - previous > len(sns):
            found.append(0)
        found[-1] += 1
        previous = sn
    return found + [0] * (engines - len(found))


def measure_server(
    figures: Figures, args: argparse.Namespace, database_url: str | None, probe: Probe
) -> None:
    """``--engines`` servers on one database (more than one: on one Mosquitto broker, whose own
    round trip is then the ceiling), their devices, then each pattern."""
    print(f"iotcloud serve x{args.engines}, {figures.backend}", file=sys.stderr)
    settings: dict[str, Any] = {"scheduler_concurrency": args.concurrency}
    if args.prepare is not None:
        settings["scheduler_prepare_seconds"] = args.prepare
    if args.ack_timeout is not None:
        settings["scheduler_ack_timeout_seconds"] = args.ack_timeout
    with ExitStack() as stack:
        mosquitto: MosquittoServer | None = None
        if args.mosquitto:
            mosquitto = MosquittoServer()
            mosquitto.start()
            stack.callback(mosquitto.stop)
            settings.update(mqtt_port=mosquitto.port, mqtt_sync_seconds=1)
        # every server is up before any device connects: each learns presence as it happens
        servers = []
        for index in range(args.engines):
            if mosquitto is not None:  # one MQTT session per server
                settings["mqtt_url"] = f"{mosquitto.url}?client_id=iotcloud-gateway-{index}"
            servers.append(
                stack.enter_context(bench_server(database_url, notes=figures.notes, **settings))
            )
        server = servers[0]
        pids = [pid_of(each) for each in servers]
        product_key = import_product(server)
        devices = Child("bench.scheduler_devices")
        stack.callback(devices.close)
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            account_ = bench_account(server, http)
            made = register_and_bind(http, product_key, args.devices, account_.headers)
            if mosquitto is not None:
                time.sleep(2)  # every server has synced the new devices' broker accounts
            devices.call(
                cmd="devices",
                host="127.0.0.1",
                port=int(server.env["IOTCLOUD_MQTT_PORT"]),
                devices=made,
            )
        for each in servers:
            with httpx.Client(base_url=each.base_url, timeout=30) as http:
                wait_online(http, account_.headers, args.devices)
        if mosquitto is not None and not args.skip_ceiling:
            assert mosquitto.process is not None
            devices.call(
                cmd="cloud",
                host="127.0.0.1",
                port=mosquitto.port,
                client_id="bench-cloud",
                username=GATEWAY_USER,
                password=mosquitto.password,
            )
            figures.ceiling = run_ceiling(devices, [mosquitto.process.pid], "Mosquitto alone", args)
        setup = {
            "appid": account_.appid,
            "username": account_.username,
            "product_key": product_key,
            "dids": [did for did, _ in made],
        }
        url = sqlalchemy_url(server, database_url)
        query = database_query(server, database_url)
        for repeat in range(args.rounds):
            for pattern in args.patterns.split(","):
                if repeat:
                    asyncio.run(forget(url, pattern))
                figures.rounds.append(
                    run_pattern(pattern, pids, url, query, devices, setup, args, probe)
                )
        lost = args.devices - devices.call(cmd="stats")["connected"]
        if lost:
            figures.notes.append(f"{lost} device connections were lost during the run")


# -- the report ---------------------------------------------------------------------------------


def seconds(value: float) -> str:
    return f"{value:.2f}"


def target(figures: Figures) -> tuple[float, str, str] | None:
    """The burst's p99 lateness target for this configuration (seconds, wording) and the same
    bench's figure before the prepare-ahead engine and the device transport, if it sets one."""
    if figures.engines > 1:
        return 1.0, "≤ 1 s with two processes on PostgreSQL and Mosquitto", "27.3 s (365 runs/s)"
    if figures.broker == "embedded device transport" and figures.backend.startswith("SQLite"):
        return 2.0, "≤ 2 s embedded on SQLite", "37.5 s (267 runs/s)"
    return None


def target_text(figures: Figures) -> str:
    found = target(figures)
    return f" (target {found[1]})" if found else ""


def target_table(figures: Figures) -> list[str]:
    """The target's row: this run's burst p99 beside the baseline, met or missed."""
    found = target(figures)
    bursts = [r for r in figures.rounds if r.pattern == "burst"]
    if found is None or not bursts:
        return []
    limit, wording, before = found
    rows = [
        "| target | this run | before | |",
        "|---|---:|---:|---|",
    ]
    for r in bursts:
        p99 = percentile(r.acknowledged, 0.99)
        correct = not (r.duplicates or r.lost or r.device_duplicates or r.device_missing)
        met = p99 <= limit and correct and r.statuses["succeed"] == figures.schedules
        rows.append(
            f"| {figures.schedules:,} schedules due at one HH:MM:00, p99 lateness to "
            f"acknowledgement; duplicates, lost | **{seconds(p99)} s** ({r.rate:,.0f} runs/s); "
            f"{r.duplicates + r.device_duplicates}, {r.lost + r.device_missing} | {before} "
            f"| {wording}, 0 duplicates, 0 lost: {'met' if met else 'MISSED'} |"
        )
    return [*rows, ""]


def render(figures: Figures, args: argparse.Namespace) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    n = f"{figures.schedules:,}"
    lateness = [
        "| schedules due | measured from the due instant to | p50 s | p90 s | p99 s | max s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    what = {
        "burst": f"{n} at HH:MM:00",
        "spread": f"{n} over HH:MM:00-59 ({figures.schedules / 60:,.0f}/s)",
    }
    ceiling = figures.ceiling
    if ceiling is not None:
        lateness.append(
            f"| {n} at once (ceiling: {ceiling.label}) | 0x0094 back at the sender "
            f"| {seconds(ceiling.p50)} | {seconds(ceiling.p90)} | {seconds(ceiling.p99)} "
            f"| {seconds(ceiling.max)} |"
        )
    for r in figures.rounds:
        for label, values in (
            ("started (first attempt's instant)", r.fired),
            ("delivered (0x0093 at the device)", r.delivered),
            ("acknowledged (run recorded succeed)", r.acknowledged),
        ):
            lateness.append(
                f"| {what[r.pattern]} | {label} | {seconds(percentile(values, 0.5))} "
                f"| {seconds(percentile(values, 0.9))} | {seconds(percentile(values, 0.99))} "
                f"| {seconds(values[-1] if values else 0.0)} |"
            )
    outcome = [
        "| schedules due | runs | succeed | failed | missed | running | duplicate runs | lost "
        "| commands at devices (dup / missing) | all done after s | runs/s | server CPU "
        "| devices CPU | other CPU | server RSS MiB (idle → max → after) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    if ceiling is not None:
        outcome.append(
            f"| {n} at once (ceiling: {ceiling.label}) | {ceiling.count:,} | {ceiling.completed:,} "
            f"| {ceiling.count - ceiling.completed:,} | - | - | - | - | - "
            f"| {seconds(ceiling.seconds)} | {ceiling.rate:,.0f} | {ceiling.broker_cpu:.0%} "
            f"| {ceiling.generator_cpu:.0%} | {ceiling.other_cpu:.0%} | - |"
        )
    for r in figures.rounds:
        runs = sum(r.statuses.values())
        outcome.append(
            f"| {what[r.pattern]} | {runs:,} | {r.statuses['succeed']:,} "
            f"| {r.statuses['failed']:,} | {r.statuses['missed']:,} | {r.statuses['running']:,} "
            f"| {r.duplicates:,} | {r.lost:,} | {r.device_duplicates:,} / {r.device_missing:,} "
            f"| {seconds(r.done_after)}{' (timed out)' if r.timed_out else ''} | {r.rate:,.0f} "
            f"| {r.server_cpu:.0%} | {r.generator_cpu:.0%} | {r.other_cpu:.0%} "
            f"| {r.rss_idle:,.0f} → {r.rss_max:,.0f} → {r.rss_after:,.0f} |"
        )
    if figures.engines == 1:
        servers = (
            f"one `iotcloud serve` process ({figures.backend}, uvloop, {figures.broker}; "
            f"`IOTCLOUD_SCHEDULER_CONCURRENCY` {figures.concurrency}"
        )
    else:
        servers = (
            f"{figures.engines} `iotcloud serve` processes on one {figures.backend} database and "
            f"one Mosquitto broker, each firing (uvloop; `IOTCLOUD_SCHEDULER_CONCURRENCY` "
            f"{figures.concurrency} each"
        )
    if figures.broker == "Mosquitto":
        ceiling_text = (
            "for the ceiling, Mosquitto passing the same commands from one client to the same "
            "devices, the servers idle"
        )
    else:
        ceiling_text = (
            "for the ceiling, Mosquitto's pass-through (`bench.ceiling_broker`) carrying the same "
            "commands from one client to as many devices"
        )
    lines = [
        f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
        f"{figures.load_average} at the start): {servers}, occurrences claimed "
        f"{args.prepare if args.prepare is not None else EngineConfig.prepare_seconds:g} s "
        f"ahead in batches of {CLAIM_BATCH}"
        f"{', the garbage collector as Python sets it (`--gc-untuned`)' if args.gc_untuned else ''}"
        ", "
        f"ack timeout {args.ack_timeout if args.ack_timeout is not None else 10:g} s) and one "
        f"device process (`bench.scheduler_devices`: {figures.devices} MQTT 3.1 devices "
        "answering each 0x0093 with a 0x0094 at once) on the same machine, sharing its cores; "
        f"{ceiling_text}. Each schedule is a Gizwits one-shot with one task (`attrs`: two data "
        "points) for one device. CPU is over the window from the due instant until every run "
        "finished (in cores; server CPU is the sum of the servers; other CPU: every other "
        "process on the machine).",
        "",
        *target_table(figures),
        *lateness,
        "",
        *outcome,
        "",
    ]
    for r in figures.rounds:
        lines.append(
            f"- {r.pattern}: p99 started {seconds(percentile(r.fired, 0.99))} s, delivered "
            f"{seconds(percentile(r.delivered, 0.99))} s, acknowledged "
            f"**{seconds(percentile(r.acknowledged, 0.99))} s** after the due instant"
            f"{target_text(figures)}; "
            f"{r.rate:,.0f} runs/s"
            + (
                f" ({r.rate / ceiling.rate:.0%} of the ceiling's {ceiling.rate:,.0f}/s)"
                if ceiling is not None and ceiling.rate and r.pattern == "burst"
                else ""
            )
            + (
                "; commands sent by each server: "
                + " / ".join(f"{count:,}" for count in r.per_engine)
                if r.per_engine
                else ""
            )
            + f"; garbage collections until done: {gc_summary(r.gc)}"
            + f"; seeded in {r.seed_seconds:.0f} s; other processes used "
            f"{r.other_before:.0%} of a core just before"
        )
    lines += [f"- {note}" for note in figures.notes]
    lines += [
        "",
        f"Command: `uv run --frozen python -m bench.scheduler --schedules {figures.schedules} "
        f"--devices {figures.devices} --patterns {args.patterns}"
        f"{f' --engines {figures.engines}' if figures.engines > 1 else ''}"
        f"{' --mosquitto' if args.mosquitto and figures.engines == 1 else ''}"
        f"{' --postgres' if args.postgres else ''} --write`",
    ]
    return "\n".join(lines)


SECTION = """## Scheduler: firing throughput and lateness

`uv run --frozen python -m bench.scheduler --write` (SQLite),
`uv run --frozen python -m bench.scheduler --postgres --write` (a throwaway PostgreSQL 15 on the
same machine) and `uv run --frozen python -m bench.scheduler --postgres --engines 2 --write` (two
`iotcloud serve` processes on one PostgreSQL database and one Mosquitto broker).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument(
        "--patterns", default="burst,spread", help=f"comma-separated, of {', '.join(PATTERNS)}"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=20_000,
        help="IOTCLOUD_SCHEDULER_CONCURRENCY, and the ceiling's commands in flight",
    )
    parser.add_argument(
        "--prepare", type=float, default=None, help="IOTCLOUD_SCHEDULER_PREPARE_SECONDS"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after a pattern to read RSS again"
    )
    parser.add_argument(
        "--gc-untuned",
        action="store_true",
        help="undo the servers' gc tuning (no freeze, default thresholds), for comparison",
    )
    parser.add_argument(
        "--gc-thresholds",
        default="",
        metavar="G0,G1,G2",
        help="other gc thresholds for the servers' tuning, for comparison",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the patterns this many times on the same servers (memory after each)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="print the servers' memory by kind before and after each pattern, and what "
        "glibc's malloc_trim gives back after it",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace the servers' allocations and print what each pattern left on the heap",
    )
    parser.add_argument(
        "--ack-timeout", type=float, default=None, help="IOTCLOUD_SCHEDULER_ACK_TIMEOUT_SECONDS"
    )
    parser.add_argument(
        "--lead", type=float, default=60.0, help="seconds at least between seeding and due"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds after the last due to give up"
    )
    parser.add_argument(
        "--engines",
        type=int,
        default=1,
        help="iotcloud serve processes firing (more than one: PostgreSQL and Mosquitto)",
    )
    parser.add_argument(
        "--mosquitto",
        action="store_true",
        help="an external Mosquitto broker instead of the embedded one (implied by --engines)",
    )
    add_run_options(parser, ceiling_skips="measure the server only", quiet_before="before seeding")
    args = parser.parse_args()
    unknown = set(args.patterns.split(",")) - set(PATTERNS)
    if unknown:
        parser.error(f"unknown patterns: {', '.join(sorted(unknown))}")
    if args.schedules > VALUES_PER_BYTE * VALUES_PER_BYTE:
        parser.error(f"at most {VALUES_PER_BYTE**2} schedules (numbered by two data points)")
    if args.engines > 1 and not (args.postgres or args.database_url):
        parser.error("--engines above 1 needs PostgreSQL (--postgres or --database-url)")
    args.mosquitto = args.mosquitto or args.engines > 1
    if args.lead < 10:
        parser.error("--lead must leave time to seed: at least 10 seconds")
    probe = Probe(args)
    with throwaway_database(args.postgres, args.database_url) as database_url, closing(probe):
        figures = Figures(
            backend="PostgreSQL 15" if database_url else "SQLite (WAL)",
            schedules=args.schedules,
            devices=args.devices,
            concurrency=args.concurrency,
            engines=args.engines,
            broker="Mosquitto" if args.mosquitto else "embedded device transport",
            load_average=load_average(),
        )
        if not args.skip_ceiling and not args.mosquitto:
            measure_ceiling(figures, args)
        measure_server(figures, args, database_url, probe)
    report = render(figures, args)
    print(report)
    if args.write:
        backend = "postgres" if database_url else "sqlite"
        if args.engines > 1:
            backend += f"-{args.engines}-engines"
        elif args.mosquitto:
            backend += "-mosquitto"
        write_section(
            "scheduler",
            backend,
            report,
            heading="Scheduler: firing throughput and lateness",
            intro=SECTION,
        )


if __name__ == "__main__":
    main()
