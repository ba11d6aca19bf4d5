"""Measure the embedded broker's memory per idle device connection, and its routing rate.

Usage: uv run python broker_rss.py N [N ...]

For each N: a fresh broker runs in a child process (so client memory is not counted); the parent
opens N raw-socket devices speaking MQTT 3.1 like GAgent (CONNECT MQIsdp/3, keep-alive 120,
three SUBSCRIBEs), waits for every SUBACK, lets things settle, and reads the child's VmRSS from
/proc. Then it asks the broker (SIGUSR1) to publish K messages to one device and times their
arrival, and times a device publishing K messages to dev2app (routed through amqtt's broadcast).
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time

K = 2000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _s(v: str) -> bytes:
    b = v.encode()
    return struct.pack("!H", len(b)) + b


def _pkt(first: int, body: bytes) -> bytes:
    n, enc = len(body), bytearray()
    while True:
        d, n = n % 128, n // 128
        enc.append(d | (0x80 if n else 0))
        if not n:
            return bytes((first, *enc)) + body


def did_of(i: int) -> str:
    return f"d{i:021d}"


async def serve(port: int) -> None:
    from iotcloud.gateway.broker import DevicePrincipal
    from iotcloud.gateway.embedded import EmbeddedBroker

    class Auth:
        async def authenticate(self, client_id, username, password):
            return DevicePrincipal(client_id, "p" * 32)

    class Events:
        published = 0

        async def on_connect(self, *a):
            pass

        async def on_disconnect(self, *a):
            pass

        async def on_publish(self, *a):
            Events.published += 1
            if Events.published % K == 0:
                print("received", Events.published, flush=True)

        async def on_denied(self, *a):
            pass

    async with EmbeddedBroker("127.0.0.1", port, Auth(), Events(), max_connections=20000) as b:
        loop = asyncio.get_running_loop()
        go = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, go.set)
        print("ready", flush=True)
        while True:
            await go.wait()
            go.clear()
            for _ in range(K):
                await b.publish(
                    f"app2dev/{did_of(0)}/cloud", b"\x00\x00\x00\x03\x05\x00\x00\x90\x01"
                )
            print("published", Events.published, flush=True)


async def device(port: int, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    did = did_of(i)
    vh = _s("MQIsdp") + bytes((3, 0xC2)) + struct.pack("!H", 120)
    w.write(_pkt(0x10, vh + _s(did) + _s(did) + _s("ABCDEFGHIJ")))
    for pid, t in enumerate(
        (f"ser2cli_noti/{'p' * 32}", f"ser2cli_res/{did}", f"app2dev/{did}/#"), 1
    ):
        w.write(_pkt(0x82, struct.pack("!H", pid) + _s(t) + b"\0"))
    await w.drain()
    got = await r.readexactly(4 + 5 * 3)
    assert got[3] == 0 and got[4:].count(b"\x90\x03") == 3, got
    return r, w


async def measure(n: int) -> None:
    port = 20000 + os.getpid() % 10000
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    await asyncio.sleep(1)
    base = rss_mb(proc.pid)
    conns = []
    t0 = time.perf_counter()
    batch_times = []
    for start in range(0, n, 500):
        tb = time.perf_counter()
        conns += await asyncio.gather(*(device(port, i) for i in range(start, min(n, start + 500))))
        batch_times.append(time.perf_counter() - tb)
    connect_s = time.perf_counter() - t0
    await asyncio.sleep(2)
    cpu0 = cpu_s(proc.pid)
    await asyncio.sleep(10)
    idle_cpu = (cpu_s(proc.pid) - cpu0) / 10
    rss = rss_mb(proc.pid)
    # routing: broker -> one device
    r0, w0 = conns[0]
    t1 = time.perf_counter()
    proc.send_signal(signal.SIGUSR1)
    for _ in range(K):
        first = await r0.readexactly(2)
        await r0.readexactly(first[1])
    route_s = time.perf_counter() - t1
    proc.stdout.readline()
    # device -> broker (dev2app, nobody subscribed)
    r1, w1 = conns[-1]
    did = did_of(n - 1)
    t2 = time.perf_counter()
    for _ in range(K):
        w1.write(_pkt(0x30, _s(f"dev2app/{did}") + b"\x00\x00\x00\x03\x03\x00\x00\x91"))
    await w1.drain()
    # wait until the gateway heard them all (on_publish)
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.startswith("received"), line
    inbound_s = time.perf_counter() - t2
    rss_after = rss_mb(proc.pid)
    print(
        f"N={n:5d}: broker RSS {base:6.1f} MB idle -> {rss:6.1f} MB with N devices "
        f"({(rss - base) * 1024 / n:5.1f} KiB/device, {rss - base:6.1f} MB total); "
        f"idle CPU {idle_cpu * 100:.1f}%; connect+3 SUB: {connect_s:5.1f}s (last 500: {batch_times[-1]:.2f}s); "
        f"broker->device {K / route_s:6.0f} msg/s; device->gateway (on_publish) "
        f"{K / inbound_s:6.0f} msg/s; RSS after traffic {rss_after:6.1f} MB",
        flush=True,
    )
    for _, w in conns:
        w.close()
    proc.terminate()
    proc.wait()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        for n in map(int, sys.argv[1:]):
            asyncio.run(measure(n))
