"""What every benchmark in ``bench/`` needs around the code it measures: the server under test
and its database, the helper processes that load it, CPU and memory readings from ``/proc``,
and the sections of ``BENCHMARKS.md``.

* Helper processes (load generators, ceiling brokers) are driven in JSON lines: `Child` on the
  driver's side, `serve_commands` on the helper's.
* `bench_server` runs a real ``iotcloud serve`` (through ``tests.server``) set up for
  measuring: no rate limits, production mode, warnings only. `throwaway_database` starts a
  throwaway PostgreSQL when asked.
* `bench_account` and `register_and_bind` make an app user with bound devices the way an app
  and its devices would (HTTP sign-up, ``POST /dev/devices``, ``POST /app/bindings``).
* `import_template` and `create_thing_devices` make a data-template (Tencent) product and its
  devices with the operator CLI (``product import``, ``device import``); `bind_devices` binds
  any device by did + passcode.
* The machine is shared with other jobs: `machine_busy_seconds` against the CPU of our own
  processes tells what the others used, and `wait_for_quiet` waits for them to stop.
* Under load: `edge_counters` reads what the server shed (``GET /admin/v1/stats``),
  `StatusSampler` times ``GET /status`` from a thread while devices load the server, and
  `raise_open_files` lifts the open-file limit the server and the generators inherit (one file
  descriptor per device connection).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import os
import resource
import secrets
import shutil
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.pg import PostgresServer
from tests.server import RunningServer, make_server

ROOT = Path(__file__).resolve().parents[1]
DATAPOINTS = ROOT / "tests" / "fixtures" / "datapoints" / "pet_house.json"
TEMPLATE = ROOT / "tests" / "fixtures" / "templates" / "light.json"
"""The data template the benchmarks' data-template (Tencent) devices speak."""
BENCHMARKS = ROOT / "BENCHMARKS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSCODE = "BENCHPASSX"
BIND_BATCH = 100
QUIET_SHARE = 0.25
"""Other processes may use this much of a core before a measurement starts."""


# -- helper processes ---------------------------------------------------------------------------


class Child:
    """A helper process spoken to in JSON lines: one command written, one JSON line read back.

    A reply with an ``error`` key raises `RuntimeError`, as does the process ending."""

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
            raise RuntimeError(f"{self.process.args!r} exited with {self.process.wait()}")
        reply = dict(json.loads(line))
        if "error" in reply:
            raise RuntimeError(f"{self.process.args!r}: {reply['error']}")
        return reply

    def send(self, **command: Any) -> None:
        """Write one command without waiting for its answer (`read` it later): several
        helpers then work at once."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def call(self, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.read()

    def close(self) -> None:
        """End its input (it exits at end of input) and wait; kill it after 20 s."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


Handler = Callable[[dict[str, Any]], Any]


async def serve_commands(handlers: Mapping[str, Handler], close: Callable[[], None]) -> None:
    """The helper's side of `Child`: read JSON-line commands ``{"cmd": name, ...}`` from stdin
    and answer each with one JSON line from ``handlers[name](command)`` (awaited when it is a
    coroutine). An unknown command or an exception is answered ``{"error": ...}``; the loop
    ends at end of input or on ``{"cmd": "close"}``, calling ``close`` either way."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        name = command["cmd"]
        if name == "close":
            close()
            print(json.dumps({"closed": True}), flush=True)
            return
        handler = handlers.get(name)
        try:
            if handler is None:
                reply = {"error": f"unknown command {name!r}"}
            else:
                reply = handler(command)
                if inspect.isawaitable(reply):
                    reply = await reply
        except Exception as exc:  # report it to the driver instead of dying silently
            reply = {"error": repr(exc)}
        print(json.dumps(reply), flush=True)
    close()


# -- CPU and memory -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children...), from ``/proc``: a
    broker or database server whose work runs in child processes (PostgreSQL's backends)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def cpu_seconds_of(pids: Iterable[int]) -> float:
    """User + system CPU of several processes; one that has ended counts 0."""
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            total += cpu_seconds(pid)
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (every process), from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """User + system CPU of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(pid: int) -> float:
    """The highest RSS the process has had (``VmHWM``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-file limit (``RLIMIT_NOFILE``) towards ``wanted`` and return
    the soft limit it now has. Processes started afterwards inherit it (the server, load
    generators, Mosquitto). Without ``CAP_SYS_RESOURCE`` it stops at the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files_limit(pid: int) -> int:
    """The soft open-file limit of a running process, from ``/proc/<pid>/limits``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            value = line.split()[3]
            return 1 << 62 if value == "unlimited" else int(value)
    return 0


def wait_for_quiet(pids: Iterable[int], limit: float, *, sample: float = 2.0) -> float:
    """Wait (at most ``limit`` seconds) until processes other than ``pids`` use under a quarter
    of a core over ``sample`` seconds; return what they used in the last sample (cores).

    These machines are shared: another job's test suite takes the cores the server needs. The
    measured window also records what other processes used, so a reader can judge.
    """
    pids = list(pids)
    deadline = time.monotonic() + limit

    def reading() -> tuple[float, float]:
        ours = sum(cpu_seconds(pid) for pid in pids) + own_cpu_seconds()
        return machine_busy_seconds() - ours, time.monotonic()

    while True:
        before, started = reading()
        time.sleep(sample)
        after, ended = reading()
        other = max(0.0, (after - before) / (ended - started))
        if other < QUIET_SHARE or ended > deadline:
            return other
        print(f"  waiting for other processes to go quiet ({other:.0%} of a core)", file=sys.stderr)


def percentile(ordered: list[float], share: float) -> float:
    """The ``share`` quantile of an ascending list (nearest rank below; 0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- the server under test ----------------------------------------------------------------------


def add_run_options(
    parser: argparse.ArgumentParser, *, ceiling_skips: str, quiet_before: str
) -> None:
    """The options every server benchmark shares: the database, the ceiling, waiting for a
    quiet machine and writing BENCHMARKS.md."""
    parser.add_argument("--database-url", default=None, help="an existing, empty database")
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL and use it"
    )
    parser.add_argument("--skip-ceiling", action="store_true", help=ceiling_skips)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help=f"seconds to wait, {quiet_before}, for other processes to go quiet",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")


@contextmanager
def throwaway_database(postgres: bool, database_url: str | None) -> Iterator[str | None]:
    """``database_url`` as given, or with ``postgres`` a database on a throwaway PostgreSQL
    started here and removed on exit; None means the server's own SQLite file."""
    if not postgres:
        yield database_url
        return
    server = PostgresServer()
    server.start()
    try:
        yield server.create_database("bench")
    finally:
        server.stop()


@contextmanager
def bench_server(
    database_url: str | None, *, notes: list[str] | None = None, **settings: Any
) -> Iterator[RunningServer]:
    """A started ``iotcloud serve`` in a fresh data directory: no rate limits, production
    mode, log level WARNING, plus ``settings`` (``IOTCLOUD_*`` without the prefix). Stopped
    and its data directory removed on exit; a traceback in its log is printed and noted in
    ``notes``."""
    data_dir = Path(tempfile.mkdtemp(prefix="iotcloud-bench-"))
    options: dict[str, Any] = {
        "rate_limit_per_address": 0,
        "rate_limit_per_app": 0,
        "log_level": "WARNING",
        **settings,
    }
    server = make_server(data_dir, database_url, **options)
    server.env["IOTCLOUD_ENV"] = "production"
    server.env.pop("IOTCLOUD_DEV_CAPTCHA_CODE")
    try:
        server.start()
        yield server
    finally:
        if server.process is not None:
            server.stop()
        log = server.log()
        if "Traceback" in log:
            if notes is not None:
                notes.append("the server logged a traceback; see its log")
            print(log[-5000:], file=sys.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)


def pid_of(server: RunningServer) -> int:
    assert server.process is not None
    return server.process.pid


def database_query(server: RunningServer, database_url: str | None) -> Any:
    """A function running one SQL query on the server's database, returning all rows."""
    if database_url is None:
        path = server.data_dir / "iotcloud.db"
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

        def query_sqlite(sql: str) -> list[tuple[Any, ...]]:
            return reader.execute(sql).fetchall()

        return query_sqlite
    import asyncpg  # type: ignore[import-untyped]

    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect(dsn))

    def query_postgres(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in loop.run_until_complete(connection.fetch(sql))]

    return query_postgres


def import_product(server: RunningServer) -> str:
    """``iotcloud product import`` of pet_house under a fresh product key; returns the key."""
    data = json.loads(DATAPOINTS.read_text())
    data["product_key"] = uuid.uuid4().hex
    path = server.data_dir / "pet_house.json"
    path.write_text(json.dumps(data))
    made = json.loads(server.cli("product", "import", str(path), "--json").stdout)
    return str(made["product_key"])


@dataclass(frozen=True)
class BenchAccount:
    """An app and a user signed up to it, with what a request needs to act as that user."""

    appid: str
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Gizwits-Application-Id": self.appid, "X-Gizwits-User-token": self.token}


def bench_account(server: RunningServer, http: httpx.Client) -> BenchAccount:
    """``iotcloud app create``, then ``POST /app/users`` for user ``bench``."""
    appid = server.create_app("Bench")["appid"]
    made = http.post(
        "/app/users",
        json={"username": "bench", "password": "benchpass"},
        headers={"X-Gizwits-Application-Id": appid},
    )
    made.raise_for_status()
    return BenchAccount(appid, "bench", made.json()["token"])


def register_and_bind(
    http: httpx.Client, product_key: str, count: int, headers: dict[str, str]
) -> list[list[str]]:
    """``POST /dev/devices`` for each device, then ``POST /app/bindings`` by passcode; returns
    ``[[did, passcode], ...]``."""
    devices = []
    for index in range(count):
        reply = http.post(
            "/dev/devices",
            data={"passcode": PASSCODE, "mac": f"02c0c0{index:06x}", "product_key": product_key},
        )
        if reply.status_code != 201:
            raise RuntimeError(f"registering a device: {reply.status_code} {reply.text}")
        devices.append([reply.text.split("did=", 1)[1][:22], PASSCODE])
    bind_devices(http, [did for did, _ in devices], headers)
    return devices


def bind_devices(http: httpx.Client, dids: list[str], headers: dict[str, str]) -> None:
    """``POST /app/bindings`` of ``dids`` (every one with passcode `PASSCODE`), in batches."""
    for start in range(0, len(dids), BIND_BATCH):
        chunk = dids[start : start + BIND_BATCH]
        reply = http.post(
            "/app/bindings",
            json={"devices": [{"did": did, "passcode": PASSCODE} for did in chunk]},
            headers=headers,
        )
        reply.raise_for_status()
        if reply.json()["failed"]:
            raise RuntimeError(f"binding failed for {reply.json()['failed']}")


def import_template(server: RunningServer) -> str:
    """``iotcloud product import`` of the light data template under a fresh ProductId (ten
    characters ``[A-Z0-9]``); returns it."""
    data = json.loads(TEMPLATE.read_text())
    product_id = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))
    data["profile"]["ProductId"] = product_id
    path = server.data_dir / f"template-{product_id}.json"
    path.write_text(json.dumps(data))
    made = json.loads(server.cli("product", "import", str(path), "--json").stdout)
    if made["product_key"] != product_id:
        raise RuntimeError(f"the template was imported as {made['product_key']!r}")
    return product_id


def create_thing_devices(
    server: RunningServer, query: Any, product_id: str, count: int
) -> list[list[str]]:
    """``iotcloud device import`` of ``count`` data-template devices named ``bench{n}``, each
    with a fresh psk and passcode `PASSCODE`, then their dids read back from the database:
    ``[[product_id, name, psk, did], ...]``."""
    names = [f"bench{index:06d}" for index in range(count)]
    psks = [base64.b64encode(secrets.token_bytes(16)).decode() for _ in names]
    csv = server.data_dir / f"things-{product_id}.csv"
    csv.write_text(
        "product_key,name,psk,passcode\n"
        + "".join(
            f"{product_id},{name},{psk},{PASSCODE}\n" for name, psk in zip(names, psks, strict=True)
        )
    )
    server.cli("device", "import", str(csv), "--json")
    rows = query(
        "SELECT products.product_key, devices.name, devices.did FROM devices "
        "JOIN products ON products.id = devices.product_id"
    )
    dids = {str(name): str(did) for key, name, did in rows if key == product_id}
    if len(dids) != count:
        raise RuntimeError(f"only {len(dids)} of {count} data-template devices were created")
    return [[product_id, name, psk, dids[name]] for name, psk in zip(names, psks, strict=True)]


def wait_online(http: httpx.Client, headers: dict[str, str], count: int) -> None:
    """Until ``GET /app/bindings`` shows ``count`` of the user's devices online (60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        items = http.get("/app/bindings", params={"limit": 1000}, headers=headers).json()
        if sum(1 for item in items["devices"] if item["is_online"]) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError("the devices did not all come online")


def edge_counters(server: RunningServer) -> dict[str, int] | None:
    """What the server shed under load, from ``GET /admin/v1/stats``: ``shed`` (device
    reports the transport dropped at the edge) and ``dropped`` (reports the ingest queue
    refused), plus ``paused_reads`` and ``connections``; None when the server has no such
    endpoint."""
    try:
        with server.operator() as operator:
            reply = operator.get("/admin/v1/stats", timeout=10)
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    body = reply.json()
    broker = body.get("broker", {})
    reports = body.get("ingest", {}).get("reports", {})
    return {
        "shed": int(broker.get("shed", 0)),
        "dropped": int(reports.get("dropped", 0)),
        "paused_reads": int(broker.get("paused_reads", 0)),
        "connections": int(broker.get("connections", 0)),
    }


def counter_delta(
    before: dict[str, int] | None, after: dict[str, int] | None, name: str
) -> int | None:
    """``after[name] - before[name]``, None when either reading is missing."""
    if before is None or after is None:
        return None
    return after[name] - before[name]


def count_text(value: int | None) -> str:
    """A counter for a table: ``n/a`` when the server could not tell."""
    return "n/a" if value is None else f"{value:,}"


class StatusSampler:
    """``GET /status`` every ``interval`` seconds from a thread of this process, over one
    keep-alive connection, while the ``with`` block runs: how quickly the server answers an
    app while devices load it. A failed or timed-out request counts as an error and as a
    sample of the time it took."""

    def __init__(self, base_url: str, *, interval: float = 0.02, timeout: float = 5.0) -> None:
        self.base_url, self.interval, self.timeout = base_url, interval, timeout
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)

    def __enter__(self) -> StatusSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = http.get("/status").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - started
                self.latencies.append(took)
                if not ok:
                    self.errors += 1
                self._stop.wait(max(0.0, self.interval - took))

    def summary(self) -> dict[str, float]:
        """Samples, errors, and p50/p99/max latency in ms."""
        ordered = sorted(self.latencies)
        return {
            "samples": len(ordered),
            "errors": self.errors,
            "p50": percentile(ordered, 0.50) * 1000,
            "p99": percentile(ordered, 0.99) * 1000,
            "max": (ordered[-1] if ordered else 0.0) * 1000,
        }


# -- BENCHMARKS.md ------------------------------------------------------------------------------


def write_section(
    bench: str, backend: str, report: str, *, heading: str | None = None, intro: str = ""
) -> None:
    """Put ``report`` between ``<!-- bench:{bench}:{backend}:begin -->`` and its ``end``
    marker in BENCHMARKS.md, replacing what was there. Without the markers: at the end of the
    section titled ``heading`` (added at the end of the file with ``intro`` when missing), or
    at the end of the file when no heading is given."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    begin = f"<!-- bench:{bench}:{backend}:begin -->"
    end = f"<!-- bench:{bench}:{backend}:end -->"
    block = f"{begin}\n{report}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif heading is None:
        text = text.rstrip() + "\n\n" + block + "\n"
    else:
        title = f"\n## {heading}"
        if title not in text:
            text = text.rstrip() + "\n\n" + intro
        start = text.index(title)
        following = text.find("\n## ", start + 1)
        if following < 0:
            text = text.rstrip() + "\n\n" + block + "\n"
        else:
            text = text[:following].rstrip() + "\n\n" + block + "\n" + text[following:]
    BENCHMARKS.write_text(text)
