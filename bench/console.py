"""The operator's side over HTTP: how quickly a real ``iotcloud serve`` answers the web console's
pages and its live-value poll, and ``/openapi.json``, beside ``GET /status`` (no I/O: the HTTP
stack's own ceiling) on the same server, in one run.

Starts ``iotcloud serve`` (SQLite by default, ``--postgres`` for a throwaway PostgreSQL) with an
operator token, imports pet_house, registers ``--devices`` devices and signs in to the console
once. Then, per request, one connection at a time (an operator's browser) and ``--concurrency``
keep-alive connections (many open pages), each for ``--window`` seconds after ``--warmup``:

* ``GET /status``: the ceiling;
* ``GET /openapi.json``: the schema (built once per process);
* ``GET /console/devices/{did}/state``: what every open device page asks every 2 s;
* ``GET /console/devices/{did}``: the device page (data points, charts, frame log);
* ``GET /console``: the overview (counts over every product, device, schedule and run).

A redirect to sign-in or any other status than 200 counts as an error.

Usage: ``uv run --frozen python -m bench.console [--devices 200] [--concurrency 16]
[--window 5] [--postgres] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from datetime import UTC, datetime

import httpx

from bench.broker_auth import Run, register_devices, run_all, table
from bench.harness import (
    bench_server,
    import_product,
    load_average,
    throwaway_database,
    write_section,
)

TOKEN = "bench-operator-token-0123456789"  # noqa: S105 - a throwaway server's
SECTION = """## The operator's side: console pages and the OpenAPI schema

`bench/console.py`: the console's pages and live-value poll and `/openapi.json`, beside
`GET /status` on the same server, one connection at a time and with many at once.
"""


def get(path: str, cookie: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nCookie: iotcloud_console={cookie}\r\n\r\n".encode()
    )


def sign_in(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        reply = http.post("/console/login", data={"token": TOKEN})
        cookie = reply.cookies.get("iotcloud_console")
        if reply.status_code != 303 or not cookie:
            raise RuntimeError(f"console sign-in: {reply.status_code} {reply.text[:200]}")
        return cookie


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL and use it"
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    backend = "postgres" if args.postgres else "sqlite"
    notes: list[str] = []
    load_start = load_average()
    results: dict[str, tuple[Run, Run]] = {}
    with (
        throwaway_database(args.postgres, None) as url,
        bench_server(url, notes=notes, admin_token=TOKEN) as server,
    ):
        dids = register_devices(server.base_url, import_product(server), args.devices)
        cookie = sign_in(server.base_url)
        plan = {
            "GET /status": ([get("/status", cookie)], b""),
            "GET /openapi.json": ([get("/openapi.json", cookie)], b'"openapi"'),
            "device state poll": (
                [get(f"/console/devices/{did}/state", cookie) for did in dids],
                b"",
            ),
            "device page": ([get(f"/console/devices/{did}", cookie) for did in dids], b"<svg"),
            "overview page": ([get("/console", cookie)], b"devices online"),
        }
        results.update(asyncio.run(run_all("127.0.0.1", server.http_port, plan, args)))

    when = datetime.now(UTC).strftime("%Y-%m-%d")
    database = "a throwaway PostgreSQL" if backend == "postgres" else "SQLite (WAL)"
    report = "\n".join(
        [
            f"### {database}, {when}",
            "",
            f"`uv run --frozen python -m bench.console --devices {args.devices} "
            f"--concurrency {args.concurrency} --window {args.window:g}"
            f"{' --postgres' if args.postgres else ''} --write`; {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load average {load_start} at the start, "
            f"{load_average()} at the end.",
            "",
            table(results, args.concurrency).replace("| question |", "| request |"),
            "",
            *(f"- {note}" for note in notes),
        ]
    ).rstrip()
    print(report)
    if args.write:
        write_section(
            "console",
            backend,
            report,
            heading="The operator's side: console pages and the OpenAPI schema",
            intro=SECTION,
        )


if __name__ == "__main__":
    main()
