"""A throwaway RabbitMQ cluster (Debian's ``rabbitmq-server`` 3.10) for the scale-out suite and
the benchmarks: N nodes (default 2) on loopback, with the plugins iotcloud relies on
(``rabbitmq_mqtt``, ``rabbitmq_auth_backend_http``, ``rabbitmq_event_exchange``,
``rabbitmq_management``).

It runs RabbitMQ's own scripts under ``/usr/lib/rabbitmq/bin`` (not the ``/usr/sbin`` wrappers,
which switch to the ``rabbitmq`` user), as the current user, root included. Everything a node
reads or writes is set explicitly and lives in one temporary directory: node name, ports,
Mnesia and log directories, ``rabbitmq.conf``, ``enabled_plugins``, the pid file, the
``rabbitmq-env.conf`` (an empty one, so ``/etc/rabbitmq`` is never read) and the Erlang cookie
(``HOME/.erlang.cookie``, shared by the nodes and ``rabbitmqctl``). The cluster starts its own
``epmd`` on a port of its own, so nothing touches a system broker or the system's epmd (4369).

Start-up time is RabbitMQ's own: a fresh node spends 5-6 s booting Erlang and the broker, and
then its MQTT plugin waits a random 3-6 s for peers before electing, alone, the Raft cluster that
tracks client ids. Node 0 is started first and awaited; the others then boot (in parallel) and
join it at boot through ``classic_config`` peer discovery, so their MQTT plugins find node 0's
client-id cluster at once and skip the wait. Measured on two cores: 13-17 s for two nodes, where
the ``stop_app`` / ``join_cluster`` / ``start_app`` way (each node booting alone, then three CLI
calls and a second start of the broker on node 1) takes 20-21 s. Starting the nodes all at once
is not an option: a node that joins one still enabling its feature flags fails its boot
(``schema_integrity_check_failed``); joining during node 0's MQTT wait can cost a 5 s retry.
``start`` returns only when every node accepts the administrator over MQTT (CONNACK 0), answers
the AMQP protocol header with ``connection.start``, and lists every node as running in the
management API.

Nodes are numbered from 0; node 0 is the one the others join. The administrator (an internal
user with the ``administrator`` tag and full permissions on ``/``) is created at first boot
through ``default_user``, so the ``guest`` user never exists. Devices are authenticated by the
HTTP auth backend at ``auth_base`` (``{auth_base}/user``, ``/vhost``, ``/resource``, ``/topic``,
GET), after the internal backend has refused them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from base64 import b64encode
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.pg import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
PLUGINS = (
    "rabbitmq_mqtt",
    "rabbitmq_auth_backend_http",
    "rabbitmq_event_exchange",
    "rabbitmq_management",
)
#: How long ``start`` (or ``start_node``) may take before it gives up.
START_TIMEOUT = 120.0


def rabbitmq_installed() -> bool:
    """Whether RabbitMQ's own binaries are there (``bin/test`` installs them)."""
    return (RABBITMQ_BIN / "rabbitmq-server").exists()


def _epmd() -> str:
    found = shutil.which("epmd")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), reverse=True)
    if candidates:
        return str(candidates[0])
    raise RuntimeError("epmd not found (it comes with RabbitMQ's Erlang packages)")


class RabbitNode:
    """One node's name, ports, directories and process (owned by ``RabbitCluster``)."""

    def __init__(self, cluster_dir: Path, index: int, token: str) -> None:
        self.index = index
        self.name = f"iotcloud-test-{index}-{token}@localhost"
        self.amqp_port = free_port()
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.dist_port = free_port()
        self.dir = cluster_dir / f"node{index}"
        self.mnesia = self.dir / "mnesia"
        self.logs = self.dir / "log"
        self.config = self.dir / "rabbitmq.conf"
        self.output = self.dir / "output.txt"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.logs / f"{self.name}.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RabbitCluster:
    """A throwaway RabbitMQ cluster of ``nodes`` nodes on loopback (see the module docstring).

    Use it as a context manager, or call ``start`` and ``stop``. ``start`` raises
    ``RuntimeError`` (with the nodes' logs) if a node does not come up within ``START_TIMEOUT``
    seconds, after cleaning up what it had started; ``stop`` kills every process the cluster
    started (nodes, their Erlang helpers, epmd) and deletes the directory. ``extra_config``
    lines are appended to every node's ``rabbitmq.conf`` (RabbitMQ refuses to start on a key it
    does not know). ``auth_base`` is the iotcloud ``.../broker/rabbitmq`` URL every node asks,
    or one per node (a local ``api`` process per node, as the deploy guide sets it up).
    """

    def __init__(
        self, auth_base: str | Sequence[str], nodes: int = 2, *, extra_config: Sequence[str] = ()
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if not rabbitmq_installed():
            raise RuntimeError(
                f"RabbitMQ not found under {RABBITMQ_BIN}; run the test command (bin/test), "
                "which installs rabbitmq-server with apt-get"
            )
        bases = [auth_base] * nodes if isinstance(auth_base, str) else list(auth_base)
        if len(bases) != nodes:
            raise ValueError(f"{len(bases)} auth bases for {nodes} nodes")
        self.auth_bases = [base.rstrip("/") for base in bases]
        self.extra_config = list(extra_config)
        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-rabbitmq-"))
        self.home = self.dir / "home"
        self.token = secrets.token_hex(4)
        self.user = "iotcloud-admin"
        self.password = secrets.token_urlsafe(18)
        self.epmd_port = free_port()
        self.nodes = [RabbitNode(self.dir, i, self.token) for i in range(nodes)]
        self._epmd: subprocess.Popen[bytes] | None = None
        #: Seconds the last ``start`` took (for the record; nothing asserts it).
        self.startup_seconds = 0.0

    # -- addresses ---------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def amqp_url(self, node: int = 0) -> str:
        """``amqp://USER:PASS@127.0.0.1:PORT/%2F`` of the administrator on ``node``."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.nodes[node].amqp_port}/%2F"

    def mqtt_port(self, node: int = 0) -> int:
        return self.nodes[node].mqtt_port

    def mqtt_url(self, node: int = 0) -> str:
        """``mqtt://USER:PASS@127.0.0.1:PORT`` of the administrator on ``node``."""
        return f"mqtt://{self.user}:{self.password}@127.0.0.1:{self.nodes[node].mqtt_port}"

    def management_url(self, node: int = 0) -> str:
        """``http://USER:PASS@127.0.0.1:PORT`` of ``node``'s management API (administrator)."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.nodes[node].http_port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every node and return once the cluster is whole and every node serves MQTT,
        AMQP and the management API."""
        began = time.monotonic()
        try:
            self._prepare()
            self._start_epmd()
            deadline = time.monotonic() + START_TIMEOUT
            self._spawn(self.nodes[0])
            self._wait_ready(self.nodes[0], deadline)
            for node in self.nodes[1:]:
                self._spawn(node)
            for node in self.nodes[1:]:
                self._wait_ready(node, deadline)
            self._wait_clustered(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Kill every process the cluster started and delete its directory (idempotent)."""
        try:
            for node in self.nodes:
                self._kill(node)
            if self._epmd is not None:
                _terminate(self._epmd, signal.SIGKILL)
                self._epmd = None
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop_node(self, index: int, *, graceful: bool = True) -> None:
        """Stop one node: ``graceful`` as ``systemctl stop`` would (SIGTERM: clients are
        disconnected, the cluster sees the node leave), else as a crash (SIGKILL)."""
        node = self.nodes[index]
        if node.process is None:
            return
        if graceful:
            _terminate(node.process, signal.SIGTERM, wait=60)
        self._kill(node)

    def start_node(self, index: int) -> None:
        """Start a node stopped by ``stop_node`` again, on its data: it rejoins the cluster.
        (A node stopped before its peers waits for them at boot, as RabbitMQ always does.)"""
        node = self.nodes[index]
        if node.running():
            return
        self._spawn(node)
        deadline = time.monotonic() + START_TIMEOUT
        self._wait_ready(node, deadline)
        self._wait_clustered(deadline)

    # -- diagnostics -------------------------------------------------------------------------

    def log(self, index: int) -> str:
        """``index``'s RabbitMQ log and what its process printed (start-up errors land there)."""
        node = self.nodes[index]
        return f"{_read(node.output)}\n{_read(node.log_file)}"

    def logs(self, tail: int = 80) -> str:
        """The last ``tail`` lines of every node's ``log``, for a failure message."""
        parts = []
        for node in self.nodes:
            lines = self.log(node.index).splitlines()[-tail:]
            parts.append(f"--- {node.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def ctl(self, index: int, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl ARGS`` against node ``index``; its stdout (raises on failure)."""
        node = self.nodes[index]
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self._env(node),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {node.name} failed ({done.returncode}):\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def management_get(self, path: str, node: int = 0) -> Any:
        """GET ``/api{path}`` from ``node``'s management API as the administrator (JSON)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.nodes[node].http_port}/api{path}",
            headers={"Authorization": "Basic " + _basic(self.user, self.password)},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 (loopback)
            return json.loads(reply.read())

    # -- internals ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text(f"[{','.join(PLUGINS)}].\n")
        for node in self.nodes:
            node.dir.mkdir()
            node.config.write_text("\n".join([*self._config(node), *self.extra_config, ""]))

    def _config(self, node: RabbitNode) -> list[str]:
        auth_base = self.auth_bases[node.index]
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}",
            "management.tcp.ip = 127.0.0.1",
            f"management.tcp.port = {node.http_port}",
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            "default_user_tags.administrator = true",
            "default_permissions.configure = .*",
            "default_permissions.read = .*",
            "default_permissions.write = .*",
            "mqtt.allow_anonymous = false",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "auth_backends.1 = internal",
            "auth_backends.2 = http",
            "auth_http.http_method = get",
            f"auth_http.user_path = {auth_base}/user",
            f"auth_http.vhost_path = {auth_base}/vhost",
            f"auth_http.resource_path = {auth_base}/resource",
            f"auth_http.topic_path = {auth_base}/topic",
            "log.file.level = info",
            "log.console = false",
        ]
        if node.index > 0:
            # Join node 0 at first boot (it is up by then); a restart keeps the membership.
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {self.nodes[0].name}",
            ]
        return lines

    def _env(self, node: RabbitNode) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        # The CLI's own distribution listener: any free port, loopback only.
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(node.config),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(node.mnesia),
            RABBITMQ_LOG_BASE=str(node.logs),
            RABBITMQ_PID_FILE=str(node.dir / "rabbitmq.pid"),
            RABBITMQ_MOTD_FILE=str(node.dir / "motd"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback,
            RABBITMQ_CTL_ERL_ARGS=loopback,
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
        )
        return env

    def _start_epmd(self) -> None:
        # Started here, in the foreground, so the cluster owns it; the nodes find it running
        # and start none of their own.
        self._epmd = subprocess.Popen(
            [_epmd(), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._epmd.poll() is not None:
                raise RuntimeError(f"epmd exited early (port {self.epmd_port})")
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("epmd did not listen")

    def _spawn(self, node: RabbitNode) -> None:
        with node.output.open("ab") as output:
            # A session of its own, so that the node's Erlang helpers are killed with it.
            node.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self._env(node),
                cwd=node.dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _kill(self, node: RabbitNode) -> None:
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # already gone, helpers included
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait()
        node.process = None

    def _wait_ready(self, node: RabbitNode, deadline: float) -> None:
        """Until ``node`` accepts the administrator over MQTT and speaks AMQP."""
        mqtt_ok = amqp_ok = False
        last_error = ""
        while time.monotonic() < deadline:
            if not node.running():
                raise RuntimeError(f"{node.name} exited early:\n{self.logs()}")
            try:
                mqtt_ok = mqtt_ok or mqtt_connects(
                    node.mqtt_port, self.user, self.password, f"ready-{node.index}"
                )
                amqp_ok = amqp_ok or amqp_speaks(node.amqp_port)
            except OSError as exc:
                last_error = repr(exc)
            if mqtt_ok and amqp_ok:
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{node.name} not ready within {START_TIMEOUT:.0f} s (MQTT {mqtt_ok}, AMQP "
            f"{amqp_ok}, last error {last_error}):\n{self.logs()}"
        )

    def _wait_clustered(self, deadline: float) -> None:
        """Until every running node's management API lists exactly the running nodes (all of
        them, unless ``stop_node`` stopped some) as running."""
        seen: dict[str, bool] = {}
        while time.monotonic() < deadline:
            running = [node for node in self.nodes if node.running()]
            wanted = {node.name for node in running}
            try:
                whole = True
                for node in running:
                    listed = self.management_get("/nodes?columns=name,running", node.index)
                    seen = {item["name"]: bool(item.get("running")) for item in listed}
                    whole = whole and {name for name, up in seen.items() if up} == wanted
                if whole:
                    return
            except (OSError, ValueError):  # urllib's errors are OSErrors
                pass
            time.sleep(0.1)
        raise RuntimeError(f"cluster not whole (last seen {seen}):\n{self.logs()}")


def mqtt_connects(port: int, username: str, password: str, client_id: str) -> bool:
    """Whether the broker on loopback ``port`` accepts an MQTT 3.1.1 CONNECT (CONNACK 0) with
    these credentials; raises ``OSError`` when it does not answer."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("!H", len(raw)) + raw

    # Variable header: "MQTT", level 4, flags username + password + clean session, keep-alive.
    body = text("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    body += text(client_id) + text(username) + text(password)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
        reply = _read_exactly(sock, 4)
        accepted = reply[0] == 0x20 and reply[3] == 0
        if accepted:
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return accepted


def amqp_speaks(port: int) -> bool:
    """Whether the broker on loopback ``port`` answers the AMQP 0-9-1 protocol header with
    ``connection.start``; raises ``OSError`` when it does not answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        header = _read_exactly(sock, 7)
        frame_type, channel, size = struct.unpack("!BHI", header)
        method = _read_exactly(sock, min(size, 4))
        return frame_type == 1 and channel == 0 and method == b"\x00\x0a\x00\x0a"


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        digit, length = length % 128, length // 128
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed")
        data += chunk
    return data


def _basic(user: str, password: str) -> str:
    return b64encode(f"{user}:{password}".encode()).decode()


def _terminate(process: subprocess.Popen[bytes], sig: int, wait: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
