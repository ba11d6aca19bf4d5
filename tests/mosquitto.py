"""A throwaway Mosquitto broker (from the Debian packages) set up the way iotcloud needs it: the
dynamic-security plugin with an account for the gateway, connection log lines on ``$SYS``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.pg import free_port

GATEWAY_USER = "iotcloud-gateway"
GATEWAY_ACLS = [
    ("publishClientSend", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$CONTROL/dynamic-security/#"),
    ("subscribePattern", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$SYS/broker/log/#"),
    ("subscribePattern", "$SYS/broker/log/#"),
    ("publishClientReceive", "dev2app/#"),
    ("subscribePattern", "dev2app/#"),
    ("publishClientSend", "app2dev/#"),
    ("publishClientSend", "ser2cli_res/#"),
    ("publishClientSend", "ser2cli_noti/#"),
    ("publishClientReceive", "$thing/up/#"),
    ("subscribePattern", "$thing/up/#"),
    ("publishClientSend", "$thing/down/#"),
    ("publishClientSend", "iotcloud/bus"),
    ("publishClientReceive", "iotcloud/bus"),
    ("subscribePattern", "iotcloud/bus"),
]


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise RuntimeError(
            "mosquitto not found; run the test command (bin/test), which installs it with apt-get"
        )
    return found


def start_mosquitto(directory: Path, port: int, lines: list[str]) -> subprocess.Popen[bytes]:
    """Start mosquitto on loopback ``port`` with ``lines`` of configuration (beside a listener,
    no persistence, and errors and warnings logged to ``directory/mosquitto.log``); returns once
    it accepts connections."""
    config = directory / "mosquitto.conf"
    log_file = directory / "mosquitto.log"
    common = [
        f"listener {port} 127.0.0.1",
        "persistence false",
        "user root" if os.geteuid() == 0 else "",
        f"log_dest file {log_file}",
        "log_type error",
        "log_type warning",
    ]
    config.write_text("\n".join([*common, *lines, ""]))
    process = subprocess.Popen(
        [_mosquitto(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited early:\n{_read(log_file)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    stop_mosquitto(process)
    raise RuntimeError(f"mosquitto did not listen:\n{_read(log_file)}")


def stop_mosquitto(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def dynsec_password(password: str, salt: bytes, iterations: int = 101) -> dict[str, object]:
    """A password entry as the dynamic-security plugin stores it (PBKDF2-SHA512)."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


class MosquittoServer:
    """mosquitto on a free loopback port with a fresh dynamic-security configuration."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="iotcloud-mosquitto-"))
        self.password = base64.b32encode(os.urandom(10)).decode()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What ``IOTCLOUD_MQTT_URL`` is set to for the gateway."""
        return f"mqtt://{GATEWAY_USER}:{self.password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        dynsec = self.dir / "dynamic-security.json"
        dynsec.write_text(
            json.dumps(
                {
                    "clients": [
                        {
                            "username": GATEWAY_USER,
                            "roles": [{"rolename": "iotcloud-gateway"}],
                            **dynsec_password(self.password, os.urandom(12)),
                        }
                    ],
                    "roles": [
                        {
                            "rolename": "iotcloud-gateway",
                            "acls": [
                                {"acltype": kind, "topic": topic, "allow": True}
                                for kind, topic in GATEWAY_ACLS
                            ],
                        }
                    ],
                    "defaultACLAccess": {
                        "publishClientSend": False,
                        "publishClientReceive": True,
                        "subscribe": False,
                        "unsubscribe": True,
                    },
                }
            )
        )
        plugin = next(
            Path(p)
            for p in (
                "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                "/usr/lib/mosquitto_dynamic_security.so",
            )
            if Path(p).exists()
        )
        self.process = start_mosquitto(
            self.dir,
            self.port,
            [
                "allow_anonymous false",
                f"plugin {plugin}",
                f"plugin_opt_config_file {dynsec}",
                "log_dest topic",
                "log_type notice",
                "log_type information",
                "connection_messages true",
            ],
        )

    def log(self) -> str:
        return _read(self.dir / "mosquitto.log")

    def stop(self) -> None:
        stop_mosquitto(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
