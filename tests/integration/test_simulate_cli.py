"""``iotcloud simulate``: virtual devices register, come online and report to a real server, and
failures end with a clear message instead of a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.accounts import bind, sign_up
from tests.devices import FIXTURES, import_product
from tests.pg import free_port
from tests.server import IOTCLOUD, RunningServer


def mac_prefix() -> str:
    """A fresh locally administered 3-byte prefix, so tests on the shared server never collide."""
    return "02" + uuid.uuid4().hex[:4]


def simulate(server: RunningServer, *args: str, timeout: float = 90) -> Any:
    return subprocess.run(
        [*IOTCLOUD, "simulate", "--url", server.base_url, *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=server.data_dir,
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return dict(json.loads(result.stdout))


def latest(server: RunningServer, appid: str, did: str) -> dict[str, Any]:
    with server.client(appid) as client:
        reply = client.get(f"/app/devdata/{did}/latest")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def wait_for(probe: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_devices_register_come_online_and_their_reports_are_readable(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    prefix = mac_prefix()
    run = simulate(
        server,
        *("--product-key", product_key, "--devices", "3", "--appid", app["appid"]),
        *("--mac-prefix", prefix, "--report-interval", "0.3", "--duration", "4", "--json"),
    )
    summary = summary_of(run)
    assert summary["status"] == "finished"
    assert summary["devices_registered"] == 3
    assert summary["devices_connected"] == 3
    assert summary["reports_sent"] >= 3 * 3  # one on connect, then every ~0.3 s
    assert summary["errors"] == 0
    devices = summary["devices"]
    assert [d["mac"] for d in devices] == [f"{prefix}{i:06x}" for i in range(3)]
    names = {attr.name for attr in product.attrs}
    for device in devices:
        state = latest(server, app["appid"], device["did"])
        assert state["updated_at"] > 0, state
        assert set(state["attr"]) == names
        shown = json.loads(server.cli("device", "show", device["did"], "--json").stdout)
        assert shown["mac"] == device["mac"]
        assert shown["last_online_at"]


def test_a_rerun_reuses_the_dids_and_reads_data_points_from_a_file(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    product_key, _ = import_product(server, tmp_path, "var_len_speaker.json")
    datapoints = tmp_path / f"{product_key}.json"  # written by import_product
    prefix = mac_prefix()
    common = ("--product-key", product_key, "--devices", "2", "--mac-prefix", prefix, "--json")
    from_file = ("--datapoints", str(datapoints))
    first = summary_of(simulate(server, *common, *from_file, "--duration", "1"))
    second = summary_of(
        simulate(
            server,
            *common,
            *("--datapoints", str(datapoints), "--protocol", "3.1.1", "--duration", "1"),
        )
    )
    assert second["devices"] == first["devices"]
    assert len({d["did"] for d in first["devices"]}) == 2
    assert second["devices_connected"] == 2
    for device in second["devices"]:
        assert latest(server, app["appid"], device["did"])["updated_at"] > 0


def start_simulation(
    server: RunningServer, product_key: str, appid: str, *args: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(*IOTCLOUD, "simulate", "--url", server.base_url, "--product-key", product_key),
            *("--appid", appid, "--json", *args),
        ],
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_connected(process: subprocess.Popen[str], count: int) -> None:
    """Read the command's progress lines until every device connected once."""
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if f"connected {count} devices" in line:
            return
    raise AssertionError("".join(lines))


def stop(process: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM, as a service manager would: a clean exit 0 with the JSON summary."""
    try:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return dict(json.loads(out))


def test_sigterm_stops_cleanly_with_a_summary(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    product_key, _ = import_product(server, tmp_path, "pet_house.json")
    process = start_simulation(
        server, product_key, app["appid"], "--devices", "2", "--mac-prefix", mac_prefix()
    )
    try:
        wait_until_connected(process, 2)
    finally:
        summary = stop(process)
    assert summary["status"] == "stopped"
    assert summary["devices_connected"] == 2
    assert summary["reports_sent"] >= 2
    did = summary["devices"][0]["did"]
    wait_for(lambda: latest(server, app["appid"], did)["updated_at"])
    shown = wait_for(
        lambda: (
            body
            if not (body := json.loads(server.cli("device", "show", did, "--json").stdout))[
                "is_online"
            ]
            else None
        )
    )
    assert shown["last_offline_at"]


async def test_simulated_devices_answer_controls(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    product_key, _ = import_product(server, tmp_path, "pet_house.json")
    prefix = mac_prefix()
    process = start_simulation(
        server, product_key, app["appid"], "--devices", "1", "--mac-prefix", prefix
    )
    try:
        wait_until_connected(process, 1)
        # the same MAC is the same device: this answers the simulated device's did
        made = server.cli(
            "device", "create", "--product-key", product_key, "--mac", f"{prefix}000000", "--json"
        )
        did = json.loads(made.stdout)["did"]
        before = wait_for(lambda: latest(server, app["appid"], did)["attr"])
        wanted = next(c for c in ("Yellow", "Purple", "Pink") if c != before["LED_Color"])
        user = sign_up(server, app["appid"])
        await bind(server, user, did)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            reply = await http.post(
                f"/app/control/{did}", headers=user.headers(), json={"attrs": {"LED_Color": wanted}}
            )
        assert reply.status_code == 200, reply.text
        # the device applies the control and reports its new status, which the server stores
        wait_for(lambda: latest(server, app["appid"], did)["attr"]["LED_Color"] == wanted)
    finally:
        summary = stop(process)
    assert summary["controls_answered"] == 1
    assert summary["devices"] == [{"mac": f"{prefix}000000", "did": did}]


def test_an_unknown_product_key_is_a_clear_error(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    unknown = uuid.uuid4().hex
    by_api = simulate(server, "--product-key", unknown, "--devices", "1", "--appid", app["appid"])
    assert by_api.returncode == 1
    assert "9002" in by_api.stderr
    assert unknown in by_api.stderr
    assert "Traceback" not in by_api.stderr

    data = json.loads((FIXTURES / "pet_house.json").read_text())
    data["product_key"] = unknown
    datapoints = tmp_path / "unknown.json"
    datapoints.write_text(json.dumps(data))
    by_file = simulate(
        server, "--product-key", unknown, "--devices", "2", "--datapoints", str(datapoints)
    )
    assert by_file.returncode == 1
    assert "registration" in by_file.stderr
    assert "9002" in by_file.stderr
    assert "Traceback" not in by_file.stderr


def test_an_unreachable_server_is_a_clear_error(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [
            *(*IOTCLOUD, "simulate", "--url", nowhere, "--product-key", uuid.uuid4().hex),
            *("--devices", "1", "--appid", "any"),
        ],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"cannot reach {nowhere}" in result.stderr
    assert "Traceback" not in result.stderr

    product_key, _ = import_product(server, tmp_path, "pet_house.json")
    no_broker = simulate(
        server,
        *("--product-key", product_key, "--devices", "1", "--appid", app["appid"]),
        *("--mac-prefix", mac_prefix(), "--mqtt-port", str(free_port())),
    )
    assert no_broker.returncode == 1
    assert "cannot connect to the MQTT broker" in no_broker.stderr
    assert "Traceback" not in no_broker.stderr


def test_data_points_need_a_file_or_an_appid(server: RunningServer) -> None:
    result = simulate(server, "--product-key", uuid.uuid4().hex, "--devices", "1")
    assert result.returncode == 2
    assert "--appid" in result.stderr
    assert "Traceback" not in result.stderr
    with httpx.Client(base_url=server.base_url) as client:  # the server is unaffected
        assert client.get("/status").status_code == 200
