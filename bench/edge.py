"""What the HTTP edge's protections cost: TLS, the request-head limits and the JSON depth check,
each beside a hello-world ceiling measured in the same run against the same server.

Starts one real ``iotcloud serve`` (SQLite, rate limits off) holding a certificate from a
throwaway CA (`tests.tls.ThrowawayCA`), so it serves plain HTTP and HTTPS from the same app,
creates an app, then drives these requests with wrk (installed from Debian's packages if
missing), one after the other:

* ``GET /status`` over plain HTTP: no I/O, the ceiling of this stack on this machine right now
  (measured first, and again last to show how much the machine drifted during the run);
* ``GET /status`` over HTTPS on keep-alive connections: the cost of TLS records (the handshake
  happens once per connection, so it is not in these figures);
* ``GET /status`` with ``--header-fields`` extra header fields of 1 KiB each: a large head, still
  under the 64 KiB head limit, carried through the parser, the head counting and the app;
* ``POST /app/login`` with a small JSON object lacking ``password``: the ordinary JSON path
  (app lookup, decode, form check), refused 9015 before any password hashing;
* the same route with 1,000 ``[`` and 1,000 ``]`` (2,000 bytes): refused 9015 "nested deeper
  than 64 levels" by the depth check, before the parser sees it;
* the same route with a JSON array of arrays nested 60 deep, repeated up to the app's body
  limit (256 KiB, ~130,000 arrays): within the depth limit but refused 9015 "more than 10000
  arrays and objects" by the container cap, counted in C before any parse;
* the same route with the largest document the cap lets through: an array of 9,999 empty
  arrays (10,000 containers, ~20 KB), parsed (with the collector paused) and then refused 9015
  "must be a JSON object": the most a body of containers can cost.

Each request is sent once first and its answer (status, error code, detail) checked; wrk then
counts answers with a status of 400 or above and socket errors, so a row whose answers changed
class during the run shows it. Before each row the script waits (up to ``--quiet-wait`` seconds)
for other processes on this shared machine to go quiet, and reports what they used during the
row, with the server's CPU per request; after it, until the server has worked off what it
received. The depth check is also timed in this process, without HTTP around it: `json_depth`
and msgspec's decode of the two bracket bodies, the decode with the garbage collector running
(as in the server) and paused.

Usage: ``uv run --frozen python -m bench.edge [--duration 10] [--connections 32]
[--header-fields 40] [--quiet-wait 30] [--write]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import msgspec
from tests.pg import free_port
from tests.server import RunningServer
from tests.tls import ThrowawayCA

from bench.accounts import ensure_wrk
from bench.harness import (
    bench_server,
    cpu_seconds,
    load_average,
    machine_busy_seconds,
    own_cpu_seconds,
    pid_of,
    wait_for_quiet,
    write_section,
)
from iotcloud.app import MAX_BODY_BYTES
from iotcloud.codecs.jsonlimits import MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, json_depth

FIELD_BYTES = 1024
"""Bytes of each extra header field on the wire (name, ": ", value, CRLF)."""
DEEP_BRACKETS = 1000
HEAVY_DEPTH = 60
"""How deep each element of the bracket-heavy body nests (the array around them adds one)."""

SECTION = f"""## Edge: limits and TLS

`uv run --frozen python -m bench.edge --duration 10 --write`: one `iotcloud serve` with TLS on
(a throwaway CA's certificate) and rate limits off, driven by wrk over plain HTTP and HTTPS. The
ceiling is `GET /status` over plain HTTP, which does no I/O. The refused rows are answered
400 / 9015 as a client would see them; the head limit is 64 KiB and the depth limit
{MAX_JSON_DEPTH} levels.
"""

LUA = """
wrk.method = "{method}"
{body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {{"requests":%d,"duration_us":%d,"socket_errors":%d,"status_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Case:
    """One request, sent over and over, and the answer it must get."""

    name: str
    url: str
    method: str = "GET"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    detail: str | None = None
    """What ``detail_message`` must contain (refused requests only)."""
    connections: int | None = None
    """wrk's connections when not ``--connections``."""


@dataclass
class Row:
    name: str
    answer: str
    expect_refused: bool
    requests: int
    seconds: float
    socket_errors: int
    status_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu: float
    other_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def unexpected(self) -> int:
        """Answers of the wrong class (2xx for a refused request, 400+ otherwise) and socket
        errors."""
        wrong = self.requests - self.status_errors if self.expect_refused else self.status_errors
        return wrong + self.socket_errors


@dataclass
class Figures:
    load_start: str
    load_end: str = ""
    head_bytes: int = 0
    rows: list[Row] = field(default_factory=list)
    scans: list[str] = field(default_factory=list)


def deep_body() -> bytes:
    return b"[" * DEEP_BRACKETS + b"]" * DEEP_BRACKETS


def heavy_body() -> bytes:
    """An array of arrays nested `HEAVY_DEPTH` deep, as many as fit in the app's body limit."""
    element = b"[" * HEAVY_DEPTH + b"]" * HEAVY_DEPTH
    count = (MAX_BODY_BYTES - 1) // (len(element) + 1)
    return b"[" + b",".join([element] * count) + b"]"


def capped_body() -> bytes:
    """The most containers the cap lets through: an array of empty arrays."""
    return b"[" + b",".join([b"[]"] * (MAX_JSON_CONTAINERS - 1)) + b"]"


def padding_headers(count: int) -> dict[str, str]:
    """``count`` header fields of `FIELD_BYTES` bytes each on the wire."""
    fields = {}
    for index in range(count):
        name = f"X-Pad-{index:03d}"
        fields[name] = "p" * (FIELD_BYTES - len(name) - len(": \r\n"))
    return fields


def cases(server: RunningServer, appid: str, header_fields: int) -> list[Case]:
    plain = server.base_url
    secure = f"https://127.0.0.1:{server.env['IOTCLOUD_HTTPS_PORT']}"
    app = {"X-Gizwits-Application-Id": appid, "Content-Type": "application/json"}
    heavy = heavy_body()
    return [
        Case("GET /status, HTTP (ceiling)", plain + "/status"),
        Case("GET /status, HTTPS (keep-alive)", secure + "/status"),
        Case(
            f"GET /status, HTTP, {header_fields} extra 1 KiB header fields",
            plain + "/status",
            headers=padding_headers(header_fields),
        ),
        Case(
            "POST /app/login, small JSON (no password)",
            plain + "/app/login",
            method="POST",
            body=json.dumps({"username": "bench"}).encode(),
            headers=app,
            detail="password",
            status=400,
        ),
        Case(
            f"POST /app/login, {DEEP_BRACKETS:,} `[` then `]` ({len(deep_body()):,} bytes)",
            plain + "/app/login",
            method="POST",
            body=deep_body(),
            headers=app,
            detail=f"nested deeper than {MAX_JSON_DEPTH} levels",
            status=400,
        ),
        Case(
            f"POST /app/login, {len(heavy) / 1024:.0f} KiB of arrays nested {HEAVY_DEPTH + 1} deep",
            plain + "/app/login",
            method="POST",
            body=heavy,
            headers=app,
            detail=f"more than {MAX_JSON_CONTAINERS} arrays and objects",
            status=400,
        ),
        Case(
            f"POST /app/login, {MAX_JSON_CONTAINERS:,} arrays ({len(capped_body()) / 1024:.0f} "
            "KiB, the most the cap lets through)",
            plain + "/app/login",
            method="POST",
            body=capped_body(),
            headers=app,
            detail="must be a JSON object",
            status=400,
        ),
        Case("GET /status, HTTP (ceiling, again last)", plain + "/status"),
    ]


def check_answer(case: Case, ca: ThrowawayCA) -> str:
    """Send ``case`` once; return its answer (``200``, or ``400 9015: detail``). Raises
    `RuntimeError` when it is not the expected one."""
    with httpx.Client(verify=ca.client_context(), timeout=30) as client:
        reply = client.request(case.method, case.url, content=case.body, headers=case.headers)
    if reply.status_code != case.status:
        raise RuntimeError(f"{case.name}: answered {reply.status_code} {reply.text[:300]}")
    if case.detail is None:
        return str(reply.status_code)
    error = reply.json()
    if case.detail not in error.get("detail_message", ""):
        raise RuntimeError(f"{case.name}: answered {reply.text[:300]}")
    return f"{reply.status_code} {error['error_code']}: {error['detail_message']}"


def lua_script(case: Case, work: Path) -> Path:
    """The wrk script sending ``case``; the body is read from a file, whatever its bytes."""
    body = "wrk.body = nil"
    if case.body is not None:
        body_path = work / "body"
        body_path.write_bytes(case.body)
        body = (
            f'local file = assert(io.open("{body_path}", "rb"))\n'
            "wrk.body = file:read('*a')\nfile:close()"
        )
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in case.headers.items())
    script = work / "case.lua"
    script.write_text(LUA.format(method=case.method, body=body, headers=headers))
    return script


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(
    wrk: str, case: Case, answer: str, server_pid: int, *, duration: int, connections: int
) -> Row:
    """Drive ``case`` with wrk for ``duration`` seconds (on ``case.connections`` or
    ``connections``); the server's and other processes' CPU over the same window."""
    work = Path(tempfile.mkdtemp(prefix="iotcloud-bench-wrk-"))
    try:
        return _run_wrk(wrk, case, answer, server_pid, duration, connections, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_wrk(
    wrk: str,
    case: Case,
    answer: str,
    server_pid: int,
    duration: int,
    connections: int,
    work: Path,
) -> Row:
    script = lua_script(case, work)
    started = time.monotonic()
    busy, server, children, own = (
        machine_busy_seconds(),
        cpu_seconds(server_pid),
        children_cpu_seconds(),
        own_cpu_seconds(),
    )
    out = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{case.connections or connections}",
            f"-d{duration}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            case.url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    wall = time.monotonic() - started
    server = cpu_seconds(server_pid) - server
    wrk_cpu = children_cpu_seconds() - children
    busy = machine_busy_seconds() - busy
    own = own_cpu_seconds() - own
    data = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    return Row(
        name=case.name,
        answer=answer,
        expect_refused=case.status >= 400,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        socket_errors=data["socket_errors"],
        status_errors=data["status_errors"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        server_cpu=server,
        other_cpu=max(0.0, busy - server - wrk_cpu - own) / wall,
    )


def best_seconds(call: Callable[[], object], *, collect: bool = False) -> float:
    """The fastest of five timings of ``call`` (seconds per call); ``collect`` keeps the
    garbage collector running, as it does in the server (timeit pauses it by default)."""
    timer = timeit.Timer(call, setup="gc.enable()" if collect else "pass")
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number


def time_scans() -> list[str]:
    """The depth check and the parse of the two bracket bodies, timed in this process."""
    decoder = msgspec.json.Decoder()
    lines = []
    for label, body in (
        (f"{DEEP_BRACKETS:,} `[` then `]`", deep_body()),
        (f"{len(heavy_body()) / 1024:.0f} KiB nested {HEAVY_DEPTH + 1} deep", heavy_body()),
        (f"{MAX_JSON_CONTAINERS:,} arrays", capped_body()),
    ):
        scan = best_seconds(partial(json_depth, body))
        text = f"{label}: `json_depth` {scan * 1e6:,.0f} µs"
        if json_depth(body) <= MAX_JSON_DEPTH:
            paused = best_seconds(partial(decoder.decode, body))
            running = best_seconds(partial(decoder.decode, body), collect=True)
            text += (
                f", msgspec decode {running * 1e6:,.0f} µs with the garbage collector running "
                f"({paused * 1e6:,.0f} µs with it paused)"
            )
        else:
            text += " (refused: never parsed)"
        lines.append(text)
    return lines


def wait_server_idle(server_pid: int, limit: float = 120.0) -> None:
    """Until the server uses under a tenth of a core over half a second: a row whose requests
    outlast wrk's window (wrk stops sending, the server still works off what it received) must
    not spill into the next row."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(server_pid)
        time.sleep(0.5)
        if cpu_seconds(server_pid) - before < 0.05:
            return


def measure(wrk: str, args: argparse.Namespace) -> Figures:
    figures = Figures(load_start=load_average())
    work = Path(tempfile.mkdtemp(prefix="iotcloud-bench-ca-"))
    try:
        ca = ThrowawayCA.create(work)
        with bench_server(
            None,
            tls_cert=ca.chain,
            tls_key=ca.key,
            https_port=free_port(),
            mqtts_port=free_port(),
        ) as server:
            appid = server.create_app("Bench")["appid"]
            server_pid = pid_of(server)
            todo = cases(server, appid, args.header_fields)
            figures.head_bytes = args.header_fields * FIELD_BYTES
            answers = [check_answer(case, ca) for case in todo]
            run_case(wrk, todo[0], "", server_pid, duration=2, connections=args.connections)
            for case, answer in zip(todo, answers, strict=True):
                wait_for_quiet([server_pid], args.quiet_wait)
                row = run_case(
                    wrk,
                    case,
                    answer,
                    server_pid,
                    duration=args.duration,
                    connections=args.connections,
                )
                wait_server_idle(server_pid)
                print(
                    f"{row.name}: {row.rate:,.0f} req/s, other processes {row.other_cpu:.2f} cores",
                    flush=True,
                )
                figures.rows.append(row)
        figures.scans = time_scans()
        figures.load_end = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def render(figures: Figures, args: argparse.Namespace) -> str:
    ceiling = figures.rows[0].rate
    rows = [
        "| request | answer | req/s | % of ceiling | p50 ms | p90 ms | p99 ms | server CPU µs/req "
        "| requests | 400+ answers | socket errors | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in figures.rows:
        rows.append(
            f"| {r.name} | {r.answer} | {r.rate:,.0f} | {100 * r.rate / ceiling:.0f}% "
            f"| {r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p99_ms:.1f} "
            f"| {1e6 * r.server_cpu / max(1, r.requests):,.0f} | {r.requests:,} "
            f"| {r.status_errors:,} | {r.socket_errors:,} | {r.other_cpu:.2f} |"
        )
    plain, login = figures.rows[0], figures.rows[3]

    def cost(row: Row, base: Row) -> str:
        extra = 1e6 * (row.server_cpu / row.requests - base.server_cpu / base.requests)
        return (
            f"{100 * row.rate / base.rate:.0f}% of its req/s, "
            f"{extra:+,.0f} µs of server CPU per request"
        )

    unexpected = sum(r.unexpected for r in figures.rows)
    https, headers, deep, heavy, capped = (figures.rows[i] for i in (1, 2, 4, 5, 6))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Measured {stamp} on {os.cpu_count()} cores ({platform.machine()}, load average "
            f"{figures.load_start} at the start, {figures.load_end} at the end): one "
            "`iotcloud serve` process (SQLite (WAL), uvloop, httptools; HTTP and HTTPS served "
            "by the same event loop; a P-256 certificate), wrk "
            f"-t2 -c{args.connections} -d{args.duration}s on the same machine (client and "
            "server share the cores). Server CPU is the server process's over the row divided "
            "by its requests; other CPU is every other process on the machine during the row, "
            "in cores. 400+ answers: wrk's count of answers with a status of 400 or above (on "
            "a refused row all of them, as expected). Answer: the one checked before the row.",
            "",
            *rows,
            "",
            f"- HTTPS against plain HTTP: {cost(https, plain)}",
            f"- {args.header_fields} extra header fields ({figures.head_bytes // 1024} KiB) "
            f"against none: {cost(headers, plain)}",
            f"- depth check refusing {DEEP_BRACKETS:,} levels against the small JSON: "
            f"{cost(deep, login)}",
            f"- bracket-heavy {heavy.name.split(', ', 1)[1]} against the small JSON: "
            f"{cost(heavy, login)}",
            f"- {capped.name.split(', ', 1)[1]} against the small JSON: {cost(capped, login)}",
            "- in this process, no HTTP: " + "; ".join(figures.scans),
            f"- answers of an unexpected class or socket errors, all rows: {unexpected:,}",
            f"- the ceiling again last: {100 * figures.rows[-1].rate / ceiling:.0f}% of the first",
            "",
            f"Command: `uv run --frozen python -m bench.edge --duration {args.duration} "
            f"--connections {args.connections} --header-fields {args.header_fields} --write`",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per row")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--header-fields", type=int, default=40, help="extra 1 KiB header fields in the big head"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait, before each row, for other processes to go quiet",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if not 0 <= args.header_fields * FIELD_BYTES < 60 * 1024:
        parser.error("--header-fields must keep the head under the 64 KiB limit (at most 59)")
    wrk = ensure_wrk()
    report = render(measure(wrk, args), args)
    print(report)
    if args.write:
        write_section("edge", "sqlite", report, heading="Edge: limits and TLS", intro=SECTION)


if __name__ == "__main__":
    main()
