"""Broker authentication over HTTP: how quickly a real ``iotcloud serve`` answers what RabbitMQ's
HTTP auth backend and EMQX ask, beside ``GET /status`` (no I/O: the HTTP stack's own ceiling)
on the same server, in one run.

Starts ``iotcloud serve`` (SQLite by default, ``--postgres`` for a throwaway PostgreSQL, or
``--database-url``), imports pet_house and registers ``--devices`` devices over
``POST /dev/devices``. Then, per question, asked round-robin over the devices with the exact
parameters RabbitMQ 3.10 sends (`tests.broker_requests`):

* ``GET /status``: the ceiling;
* ``user``: ``GET /broker/rabbitmq/user`` with the device's did and passcode (after the first
  round every answer comes from memory, as when RabbitMQ asks twice per CONNECT and a fleet
  reconnects);
* ``topic allow``: ``GET /broker/rabbitmq/topic``, ``write`` on ``dev2app.{did}`` (what every
  PUBLISH a channel has not cached asks);
* ``topic deny``: ``read`` on ``dev2app.#`` (a device trying to listen to every other);
* ``authz``: ``POST /broker/emqx/authz``, ``publish`` on ``dev2app/{did}``;
* ``user, no cache``: the same ``user`` question on a second server started with
  ``IOTCLOUD_BROKER_AUTH_CACHE_SECONDS=0``: every answer reads the registry (a device lookup
  and the passcode check), what the memory saves.

Each question runs twice: one connection, one request at a time (the latency of an answer on an
idle server), then ``--concurrency`` keep-alive connections, each sending its next request as
the answer arrives (the most the server answers per second, and the latency then). Each run:
``--warmup`` seconds, then ``--window`` seconds measured. The client is plain asyncio with
pre-built requests, in this process; the server is another process.

Usage: ``uv run --frozen python -m bench.broker_auth [--devices 200] [--concurrency 16]
[--window 5] [--postgres] [--write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from tests import broker_requests as broker

from bench.harness import (
    PASSCODE,
    bench_server,
    import_product,
    load_average,
    percentile,
    pid_of,
    rss_mib,
    throwaway_database,
    write_section,
)

SECTION = """## Broker authentication over HTTP

What a RabbitMQ or EMQX cluster asks iotcloud about devices (`/broker/rabbitmq/*`,
`/broker/emqx/*`), beside `GET /status` on the same server, measured by `bench/broker_auth.py`:
one connection asking one question at a time (latency when idle), then 16 keep-alive
connections asking as fast as answers come (the most per second, and the latency then).
Questions are those RabbitMQ 3.10 sends, round-robin over 200 registered devices; `user, no
cache` is a second server with `IOTCLOUD_BROKER_AUTH_CACHE_SECONDS=0`, reading the registry for
every answer.
"""


@dataclass
class Run:
    """One measured run: answers per second and their latency (ms)."""

    rate: float
    p50: float
    p99: float
    errors: int
    unexpected: int


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight."""

    def __init__(self, answered: Callable[[_Connection, int, bytes], None]) -> None:
        self.answered = answered
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ready.set_result(None)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.answered(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def http_request(method: str, path: str, body: bytes = b"", content_type: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if body:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def measure(
    host: str,
    port: int,
    requests: list[bytes],
    expected: bytes,
    *,
    connections: int,
    warmup: float,
    window: float,
) -> Run:
    """Closed loop over ``connections`` connections, requests taken round-robin; latencies of
    answers that arrive inside the window, after ``warmup`` seconds."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    sent_at: dict[_Connection, float] = {}
    counts = {"errors": 0, "unexpected": 0, "answered": 0}
    index = 0
    start = loop.time() + warmup
    stop = start + window
    finished = loop.create_future()

    def next_request(conn: _Connection) -> None:
        nonlocal index
        if loop.time() >= stop:
            sent_at.pop(conn, None)
            if not sent_at and not finished.done():
                finished.set_result(None)
            return
        request = requests[index % len(requests)]
        index += 1
        sent_at[conn] = time.perf_counter()
        conn.send(request)

    def answered(conn: _Connection, status: int, body: bytes) -> None:
        took = time.perf_counter() - sent_at[conn]
        now = loop.time()
        if start <= now < stop:
            counts["answered"] += 1
            latencies.append(took)
            if status != 200:
                counts["errors"] += 1
            elif expected and expected not in body:
                counts["unexpected"] += 1
        next_request(conn)

    pool = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(answered), host, port)
        await conn.ready
        pool.append(conn)
    for conn in pool:
        next_request(conn)
    try:
        await asyncio.wait_for(finished, warmup + window + 30)
    finally:
        for conn in pool:
            if conn.transport is not None:
                conn.transport.close()
    ordered = sorted(latencies)
    return Run(
        rate=counts["answered"] / window,
        p50=percentile(ordered, 0.50) * 1000,
        p99=percentile(ordered, 0.99) * 1000,
        errors=counts["errors"],
        unexpected=counts["unexpected"],
    )


def register_devices(base_url: str, product_key: str, count: int) -> list[str]:
    dids = []
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for index in range(count):
            reply = http.post(
                "/dev/devices",
                data={
                    "passcode": PASSCODE,
                    "mac": f"02b0a0{index:06x}",
                    "product_key": product_key,
                },
            )
            if reply.status_code != 201:
                raise RuntimeError(f"registering a device: {reply.status_code} {reply.text}")
            dids.append(reply.text.split("did=", 1)[1][:22])
    return dids


def questions(dids: list[str]) -> dict[str, tuple[list[bytes], bytes]]:
    """Each measured question: its pre-built requests, and what each answer must contain."""
    status = [http_request("GET", "/status")]
    user = [http_request("GET", broker.rabbitmq_user(did, PASSCODE, did).url) for did in dids]
    allow = [
        http_request("GET", broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}").url)
        for did in dids
    ]
    deny = [
        http_request("GET", broker.rabbitmq_topic(did, did, "read", "dev2app.#").url)
        for did in dids
    ]
    authz = []
    for did in dids:
        path, body = broker.emqx_authz(did, did, f"dev2app/{did}", "publish")
        authz.append(http_request("POST", path, json.dumps(body).encode(), "application/json"))
    return {
        "GET /status": (status, b"version"),
        "user": (user, b"allow"),
        "topic allow": (allow, b"allow"),
        "topic deny": (deny, b"deny"),
        "authz (EMQX)": (authz, b'"allow"'),
    }


async def run_all(
    host: str, port: int, plan: dict[str, tuple[list[bytes], bytes]], args: argparse.Namespace
) -> dict[str, tuple[Run, Run]]:
    results = {}
    for name, (requests, expected) in plan.items():
        idle = await measure(
            host,
            port,
            requests,
            expected,
            connections=1,
            warmup=args.warmup,
            window=args.window,
        )
        loaded = await measure(
            host,
            port,
            requests,
            expected,
            connections=args.concurrency,
            warmup=args.warmup,
            window=args.window,
        )
        results[name] = (idle, loaded)
        print(
            f"{name:16} idle p50 {idle.p50:.2f} ms p99 {idle.p99:.2f} ms ({idle.rate:,.0f}/s) | "
            f"x{args.concurrency}: {loaded.rate:,.0f}/s p50 {loaded.p50:.2f} ms "
            f"p99 {loaded.p99:.2f} ms errors {idle.errors + loaded.errors} "
            f"unexpected {idle.unexpected + loaded.unexpected}",
            file=sys.stderr,
        )
    return results


def table(results: dict[str, tuple[Run, Run]], concurrency: int) -> str:
    lines = [
        f"| question | idle p50 ms | idle p99 ms | answers/s (x{concurrency}) "
        f"| p50 ms (x{concurrency}) | p99 ms (x{concurrency}) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (idle, loaded) in results.items():
        bad = idle.errors + loaded.errors + idle.unexpected + loaded.unexpected
        lines.append(
            f"| {name} | {idle.p50:.2f} | {idle.p99:.2f} | {loaded.rate:,.0f} "
            f"| {loaded.p50:.2f} | {loaded.p99:.2f} | {bad} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--database-url", default=None, help="an existing, empty database")
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL and use it"
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    backend = "postgres" if args.postgres or args.database_url else "sqlite"
    notes: list[str] = []
    load_start = load_average()
    results: dict[str, tuple[Run, Run]] = {}
    rss: dict[str, float] = {}

    with (
        throwaway_database(args.postgres, args.database_url) as url,
        bench_server(url, notes=notes) as server,
    ):
        dids = register_devices(server.base_url, import_product(server), args.devices)
        plan = questions(dids)
        results.update(asyncio.run(run_all("127.0.0.1", server.http_port, plan, args)))
        rss["cached"] = rss_mib(pid_of(server))
    with (
        throwaway_database(args.postgres, None) as url,
        bench_server(url, notes=notes, broker_auth_cache_seconds=0) as uncached,
    ):
        dids = register_devices(uncached.base_url, import_product(uncached), args.devices)
        plan = {"user, no cache": questions(dids)["user"]}
        results.update(asyncio.run(run_all("127.0.0.1", uncached.http_port, plan, args)))

    when = datetime.now(UTC).strftime("%Y-%m-%d")
    database = "a throwaway PostgreSQL" if backend == "postgres" else "SQLite (WAL)"
    report = "\n".join(
        [
            f"### {database}, {when}",
            "",
            f"`uv run --frozen python -m bench.broker_auth --devices {args.devices} "
            f"--concurrency {args.concurrency} --window {args.window:g}"
            f"{' --postgres' if args.postgres else ''} --write`; {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load average {load_start} at the start, "
            f"{load_average()} at the end; server RSS {rss.get('cached', 0):.0f} MiB.",
            "",
            table(results, args.concurrency),
            "",
            *(f"- {note}" for note in notes),
        ]
    ).rstrip()
    print(report)
    if args.write:
        write_section(
            "broker_auth",
            backend,
            report,
            heading="Broker authentication over HTTP",
            intro=SECTION,
        )


if __name__ == "__main__":
    main()
