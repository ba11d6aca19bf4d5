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
]


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise RuntimeError(
            "mosquitto not found; run the test command (bin/test), which installs it with apt-get"
        )
    return found


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
        config = self.dir / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous false",
                    "persistence false",
                    "user root" if os.geteuid() == 0 else "",
                    f"plugin {plugin}",
                    f"plugin_opt_config_file {dynsec}",
                    "log_dest topic",
                    f"log_dest file {self.dir / 'mosquitto.log'}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    "",
                ]
            )
        )
        self.process = subprocess.Popen(
            [_mosquitto(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited early:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
