"""Sign-in and profile-read throughput and latency, beside a hello-world ceiling on the same stack.

Starts a real ``iotcloud serve`` (SQLite by default, or ``--database-url``), creates an app and a
user, then drives three endpoints with wrk (installed from Debian's packages if missing) in the
same run:

* ``GET /status`` — no I/O: the ceiling of this server stack on this machine right now;
* ``GET /app/users`` — app lookup + token check + one profile read;
* ``POST /app/login`` — one argon2id verification + one token write.

Usage: ``uv run python -m bench.accounts [--duration 10] [--connections 32] [--postgres]
[--write]``. The profile read is measured twice: with the token cache (default) and without it
(``IOTCLOUD_AUTH_CACHE_SECONDS=0``: one database read per request); sign-in also at 2
connections, its latency without queueing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.pg import PostgresServer
from tests.server import make_server

ROOT = Path(__file__).resolve().parents[1]

LUA = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    failures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or "wrk"


def run_wrk(
    wrk: str,
    name: str,
    url: str,
    *,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str],
    duration: int,
    connections: int,
) -> Result:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = LUA.format(method=method, body=json.dumps(body) if body else "nil", headers=lines)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        out = subprocess.run(
            [
                wrk,
                "-t2",
                f"-c{connections}",
                f"-d{duration}s",
                "--timeout",
                "10s",
                "-s",
                fh.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 60,
        ).stdout
    finally:
        os.unlink(fh.name)
    data = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    return Result(
        name=name,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        failures=data["socket_errors"] + data["non2xx"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="an existing database to use")
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL and use it"
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    wrk = ensure_wrk()
    postgres = None
    if args.postgres:
        postgres = PostgresServer()
        postgres.start()
        args.database_url = postgres.create_database("bench")
    try:
        report = measure(wrk, args)
    finally:
        if postgres is not None:
            postgres.stop()
    print(report)
    if args.write:
        write_section("postgres" if args.database_url else "sqlite", report)


def measure(wrk: str, args: argparse.Namespace) -> str:
    data_dir = Path(tempfile.mkdtemp(prefix="iotcloud-bench-"))
    server = make_server(
        data_dir,
        args.database_url,
        rate_limit_per_address=0,
        rate_limit_per_app=0,
        log_level="WARNING",
    )
    server.env.pop("IOTCLOUD_DEV_CAPTCHA_CODE")
    server.env["IOTCLOUD_ENV"] = "production"
    server.start()
    try:
        appid = server.create_app("Bench")["appid"]
        with server.client(appid) as client:
            made = client.post("/app/users", json={"username": "bench", "password": "benchpass"})
            made.raise_for_status()
            token = made.json()["token"]
        base = server.base_url
        common = {"X-Gizwits-Application-Id": appid}
        warm = max(2, args.duration // 5)
        run_wrk(
            wrk,
            "warm-up",
            base + "/status",
            headers={},
            duration=warm,
            connections=args.connections,
        )
        results = [
            run_wrk(
                wrk,
                "GET /status (ceiling)",
                base + "/status",
                headers={},
                duration=args.duration,
                connections=args.connections,
            ),
            run_wrk(
                wrk,
                "GET /app/users",
                base + "/app/users",
                headers={**common, "X-Gizwits-User-token": token},
                duration=args.duration,
                connections=args.connections,
            ),
            run_wrk(
                wrk,
                "POST /app/login",
                base + "/app/login",
                method="POST",
                body=json.dumps({"username": "bench", "password": "benchpass"}),
                headers=common,
                duration=args.duration,
                connections=args.connections,
            ),
            run_wrk(
                wrk,
                "POST /app/login (2 connections)",
                base + "/app/login",
                method="POST",
                body=json.dumps({"username": "bench", "password": "benchpass"}),
                headers=common,
                duration=args.duration,
                connections=2,
            ),
        ]
        server.stop()
        server.env["IOTCLOUD_AUTH_CACHE_SECONDS"] = "0"
        server.start()
        with server.client(appid) as client:  # the sign-in runs pushed the first token out
            relog = client.post("/app/login", json={"username": "bench", "password": "benchpass"})
            token = relog.raise_for_status().json()["token"]
        results.insert(
            2,
            run_wrk(
                wrk,
                "GET /app/users (token cache off)",
                base + "/app/users",
                headers={**common, "X-Gizwits-User-token": token},
                duration=args.duration,
                connections=args.connections,
            ),
        )
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    backend = "PostgreSQL 15" if args.database_url else "SQLite (WAL)"
    return render(results, backend, args)


def render(results: list[Result], backend: str, args: argparse.Namespace) -> str:
    ceiling = results[0].rate
    rows = [
        "| endpoint | req/s | % of ceiling | p50 ms | p90 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {r.rate:,.0f} | {100 * r.rate / ceiling:.0f}% | {r.p50_ms:.1f} "
            f"| {r.p90_ms:.1f} | {r.p99_ms:.1f} | {r.failures} |"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}), one uvicorn "
            f"process (uvloop, httptools), {backend}, wrk -t2 -c{args.connections} "
            f"-d{args.duration}s on the same machine (client and server share the cores).",
            "",
            *rows,
        ]
    )


def write_section(backend: str, report: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin = f"<!-- bench:accounts:{backend}:begin -->"
    end = f"<!-- bench:accounts:{backend}:end -->"
    block = f"{begin}\n{report}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
