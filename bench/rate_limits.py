"""Rate limits: what a request pays for its buckets, per process and shared through PostgreSQL.

Starts a throwaway PostgreSQL 15 (or uses ``--database-url``) and a real ``iotcloud serve`` on
it, signs up one user, then drives ``GET /app/users`` (a token check served from the token
cache: no database read of its own) with wrk, restarting the server with each configuration of
the limits, beside ``GET /status`` (no I/O, not throttled: the ceiling) in the same run:

* limits off (``IOTCLOUD_RATE_LIMIT_PER_*=0``): the request without any bucket;
* hot keys: one app and one client address, 10,000 requests/s allowed each, per process
  (``IOTCLOUD_RATE_LIMIT_SHARED=off``) and shared (``on``: leases of 1,000 tokens);
* many client addresses: wrk names a random one of ``--addresses`` (and ten times as many) in
  ``X-Forwarded-For`` on every request, the server trusting loopback as its proxy
  (``IOTCLOUD_TRUSTED_PROXIES``), at the default 100 requests/s per address: leases of 10
  tokens, and each address sends far fewer, so most leases are taken for a request or two.
  This is the expensive case for the shared buckets: about one statement per address and
  lease lifetime (2 s), or per request when addresses repeat less often than that.

Each row reports the server's CPU per request, PostgreSQL's (every process of the throwaway
server), and the bucket statements the database ran (inserts + updates of
``rate_limit_buckets`` from ``pg_stat_user_tables``). No request may be refused: the limits are
set above what one client sends.

Usage: ``uv run --frozen python -m bench.rate_limits [--duration 10] [--connections 32]
[--addresses 1000] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tests.pg import PostgresServer
from tests.server import RunningServer

from bench.accounts import ensure_wrk
from bench.harness import (
    bench_account,
    bench_server,
    cpu_seconds,
    database_query,
    load_average,
    machine_busy_seconds,
    own_cpu_seconds,
    pid_of,
    wait_for_quiet,
    write_section,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")

SECTION = """## Rate limits: per process and shared

`uv run --frozen python -m bench.rate_limits --duration 10 --write`: one `iotcloud serve` on a
throwaway PostgreSQL 15, `GET /app/users` (token from the cache) driven by wrk with each
configuration of the limits, beside `GET /status` in the same run. Server and PostgreSQL CPU
are per request; statements are the bucket upserts the database ran (one per lease).
"""

LUA = """
wrk.method = "GET"
{headers}
local addresses = {addresses}
request = function()
  if addresses > 0 then
    local n = math.random(0, addresses - 1)
    wrk.headers["X-Forwarded-For"] = string.format(
      "10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  return wrk.format()
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Config:
    """One row: the path, the limits the server runs with, how many client addresses wrk
    spreads its requests over (0: none named)."""

    name: str
    path: str = "/app/users"
    shared: str = "off"
    per_address: float = 0
    per_app: float = 0
    addresses: int = 1


@dataclass
class Row:
    config: Config
    requests: int
    seconds: float
    refused: int
    p50_ms: float
    p99_ms: float
    server_cpu: float
    postgres_cpu: float
    bucket_rows: int
    transactions: int
    other_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def configs(addresses: int) -> list[Config]:
    many = addresses * 10
    return [
        Config("GET /status (ceiling)", path="/status"),
        Config("limits off", addresses=addresses),
        Config("per process, hot keys", per_address=10_000, per_app=10_000),
        Config("shared, hot keys", shared="on", per_address=10_000, per_app=10_000),
        Config(f"per process, {addresses:,} addresses", per_address=100, addresses=addresses),
        Config(f"shared, {addresses:,} addresses", "/app/users", "on", 100, 0, addresses),
        Config(f"shared, {many:,} addresses", "/app/users", "on", 100, 0, many),
    ]


def postgres_cpu_seconds(server: PostgresServer) -> float:
    """CPU of the postmaster and every process it started (backends, checkpointer ...)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def database_counters(query: Any) -> tuple[int, int]:
    """Bucket rows written (inserted or updated) and transactions committed in the database
    (every statement of the throttle's autocommit engine is one; the server's other work and
    these two queries add a few)."""
    rows = query(
        "SELECT (SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables "
        "WHERE relname = 'rate_limit_buckets'), "
        "(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())"
    )
    return int(rows[0][0]), int(rows[0][1])


def restart(server: RunningServer, config: Config) -> None:
    server.stop()
    server.env.update(
        IOTCLOUD_RATE_LIMIT_SHARED=config.shared,
        IOTCLOUD_RATE_LIMIT_PER_ADDRESS=str(config.per_address),
        IOTCLOUD_RATE_LIMIT_PER_APP=str(config.per_app),
        IOTCLOUD_TRUSTED_PROXIES="127.0.0.1",
    )
    server.start()


def run_wrk(
    wrk: str, url: str, headers: dict[str, str], addresses: int, duration: int, connections: int
) -> dict[str, Any]:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA.format(headers=lines, addresses=addresses))
    try:
        out = subprocess.run(
            [wrk, "-t2", f"-c{connections}", f"-d{duration}s", "-s", fh.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 60,
        ).stdout
    finally:
        os.unlink(fh.name)
    return dict(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))


def measure(wrk: str, args: argparse.Namespace, postgres: PostgresServer, url: str) -> list[Row]:
    rows: list[Row] = []
    with bench_server(url) as server:
        query = database_query(server, url)
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            account = bench_account(server, http)
        for config in configs(args.addresses):
            restart(server, config)
            server_pid = pid_of(server)
            target = server.base_url + config.path
            headers = account.headers if config.path != "/status" else {}
            run_wrk(wrk, target, headers, config.addresses, 2, args.connections)  # warm-up
            wait_for_quiet([server_pid], args.quiet_wait)
            time.sleep(1.5)  # PostgreSQL's backends flush their statistics within a second
            before = (
                cpu_seconds(server_pid),
                postgres_cpu_seconds(postgres),
                database_counters(query),
                machine_busy_seconds() - own_cpu_seconds(),
            )
            started = time.monotonic()
            data = run_wrk(wrk, target, headers, config.addresses, args.duration, args.connections)
            wall = time.monotonic() - started
            server_cpu = cpu_seconds(server_pid) - before[0]
            postgres_cpu = postgres_cpu_seconds(postgres) - before[1]
            busy = machine_busy_seconds() - own_cpu_seconds() - before[3]
            time.sleep(1.5)
            row = Row(
                config=config,
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                refused=data["non2xx"] + data["socket_errors"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                server_cpu=server_cpu,
                postgres_cpu=postgres_cpu,
                bucket_rows=database_counters(query)[0] - before[2][0],
                transactions=database_counters(query)[1] - before[2][1],
                # what neither the server, PostgreSQL nor wrk (~1 core) used
                other_cpu=max(0.0, busy - server_cpu - postgres_cpu) / wall,
            )
            print(
                f"{config.name}: {row.rate:,.0f} req/s, {row.bucket_rows / row.seconds:,.0f} "
                f"bucket rows/s in {row.transactions / row.seconds:,.0f} transactions/s, "
                f"refused {row.refused}",
                flush=True,
            )
            rows.append(row)
    return rows


def time_in_process() -> list[str]:
    """The throttle's own work per request, timed in this process (best of five runs of
    100,000): the client address, then both limits' takes, per process and shared (a lease
    hit: the shared bucket answers without the database)."""
    from iotcloud.api.client_address import TrustedProxies, client_address
    from iotcloud.api.throttle import RateLimit, SharedBuckets, SharedLimits, TokenBuckets
    from iotcloud.storage.database import Database
    from iotcloud.storage.rate_limits import RateLimitStore

    plain = {"client": ("192.0.2.1", 4711), "headers": []}
    proxied = {"client": ("127.0.0.1", 4711), "headers": [(b"x-forwarded-for", b"10.1.2.3")]}
    trusted = TrustedProxies.parse("127.0.0.1")

    def best(call: Any) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            runs.append((time.perf_counter() - started) / 100_000)
        return min(runs)

    async def measure(limit_of: Any) -> float:
        address, app = limit_of("addr"), limit_of("app")
        await address.take("10.1.2.3")
        await app.take("appid")
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(100_000):
                await address.take("10.1.2.3")
                await app.take("appid")
            runs.append((time.perf_counter() - started) / 100_000)
        return min(runs)

    async def takes() -> tuple[float, float]:
        work = Path(tempfile.mkdtemp(prefix="iotcloud-bench-limits-"))
        url = f"sqlite+aiosqlite:///{work / 'limits.db'}"
        try:
            async with Database(url) as db:
                await db.migrate()
            local = await measure(lambda _kind: RateLimit(TokenBuckets(1e9, 2)))
            shared = SharedLimits(RateLimitStore(url))
            async with shared.running():
                leased = await measure(
                    lambda kind: RateLimit(
                        TokenBuckets(1e9, 2), SharedBuckets(shared, kind, 1e9, 2)
                    )
                )
            return local, leased
        finally:
            shutil.rmtree(work, ignore_errors=True)

    untrusted = best(lambda: [client_address(plain, TrustedProxies()) for _ in range(100_000)])
    forwarded = best(lambda: [client_address(proxied, trusted) for _ in range(100_000)])
    local, leased = asyncio.run(takes())
    return [
        f"client address, no trusted proxies: {untrusted * 1e6:.1f} µs",
        f"client address from a trusted proxy's X-Forwarded-For: {forwarded * 1e6:.1f} µs",
        f"both limits, per process: {local * 1e6:.1f} µs",
        f"both limits, per process then shared (lease hits): {leased * 1e6:.1f} µs",
    ]


def render(rows: list[Row], args: argparse.Namespace, load: str, timings: list[str]) -> str:
    ceiling = rows[0].rate
    off = rows[1]
    lines = [
        "| configuration | req/s | % of ceiling | p50 ms | p99 ms | server µs/req "
        "| PostgreSQL µs/req | bucket rows/s | transactions/s | per 1,000 req | refused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        per = 1e6 / max(1, row.requests)
        lines.append(
            f"| {row.config.name} | {row.rate:,.0f} | {100 * row.rate / ceiling:.0f}% "
            f"| {row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.server_cpu * per:,.0f} "
            f"| {row.postgres_cpu * per:,.1f} | {row.bucket_rows / row.seconds:,.0f} "
            f"| {row.transactions / row.seconds:,.0f} "
            f"| {1000 * row.bucket_rows / max(1, row.requests):,.0f} rows, "
            f"{1000 * row.transactions / max(1, row.requests):,.0f} tx | {row.refused} |"
        )
    base = off.server_cpu / max(1, off.requests)
    added = [
        f"{row.config.name}: {(row.server_cpu / max(1, row.requests) - base) * 1e6:+,.0f} µs "
        f"server, {row.postgres_cpu / max(1, row.requests) * 1e6:,.1f} µs PostgreSQL"
        for row in rows[2:]
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}), one uvicorn "
            f"process, PostgreSQL 15 on the same machine, wrk -t2 -c{args.connections} "
            f"-d{args.duration}s (client, server and database share the cores; load average "
            f"at the start {load}; other processes used at most "
            f"{max(row.other_cpu for row in rows):.2f} cores during a row).",
            "",
            *lines,
            "",
            "Per request beside limits off: " + "; ".join(added) + ".",
            "",
            "The throttle's own work per request, timed in one process (no server, no "
            "database): " + "; ".join(timings) + ".",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--addresses", type=int, default=1000)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="seconds to wait, before each row, for other processes to go quiet",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    wrk = ensure_wrk()
    load = load_average()
    postgres = PostgresServer()
    postgres.start()
    try:
        rows = measure(wrk, args, postgres, postgres.create_database("bench"))
    finally:
        postgres.stop()
        shutil.rmtree(postgres.dir, ignore_errors=True)
    report = render(rows, args, load, time_in_process())
    print(report)
    if args.write:
        write_section(
            "rate_limits", "postgres", report, heading=SECTION.split("\n")[0][3:], intro=SECTION
        )


if __name__ == "__main__":
    main()
