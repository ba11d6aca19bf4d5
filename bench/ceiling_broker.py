"""The device paths' ceiling: Mosquitto's own pass-through, started by the benchmark.

A C broker (Debian's ``mosquitto``) routing MQTT between clients is the closest thing to what
this machine can do for a device message: the benchmarks drive it with the same raw-socket
clients they point at ``iotcloud serve`` and put its figure beside the server's, measured in
the same run. (The embedded transport in ``iotcloud serve`` routes nothing between clients: it
hands each device message to the gateway and writes commands to the device's connection.)

`PassThroughMosquitto` runs one throwaway instance on a free loopback port with a generated
configuration: anonymous clients, no ACL, no persistence, no connection cap, errors and
warnings logged to a file in its own directory. It inherits this process's open-file limit, so
raise that (`bench.harness.raise_open_files`) before starting it with thousands of clients.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.mosquitto import start_mosquitto, stop_mosquitto
from tests.pg import free_port

MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_path() -> str:
    found = shutil.which("mosquitto") or MOSQUITTO
    if not Path(found).exists():
        raise RuntimeError("mosquitto not found: apt-get install mosquitto (Debian's package)")
    return found


def mosquitto_version() -> str:
    """``mosquitto version X.Y.Z`` as the binary prints it."""
    shown = subprocess.run(
        [mosquitto_path(), "-h"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (shown.stdout or shown.stderr).splitlines()
    return first[0].strip() if first else "mosquitto"


class PassThroughMosquitto:
    """A started Mosquitto any client may connect to, publish and subscribe on; a context
    manager (stopped and its directory removed on exit)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-bench-mosquitto-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.version = mosquitto_version()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> PassThroughMosquitto:
        self.process = start_mosquitto(
            self.dir,
            self.port,
            ["allow_anonymous true", "max_connections -1", "connection_messages false"],
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop_mosquitto(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
