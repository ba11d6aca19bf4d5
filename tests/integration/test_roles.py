"""Processes by role on one database and one external broker: an ``api,scheduler`` process and
a ``gateway`` process. The gateway stores what devices send (once: the API process does not);
the API process serves apps, reads what the gateway stored, and still sends commands; every
process answers ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from iotcloud.codecs import P0Codec
from iotcloud.storage.database import Database
from iotcloud.storage.models import DeviceHistoryRow, DeviceRow
from tests.accounts import bind, sign_up
from tests.conftest import new_database_url
from tests.devices import MqttDevice, Product, eventually, import_product, register, until_online
from tests.mosquitto import MosquittoServer
from tests.prometheus import sample
from tests.server import IOTCLOUD, RunningServer, server_env, serving


@pytest.fixture(scope="module")
def processes(
    request: pytest.FixtureRequest, mosquitto: MosquittoServer
) -> Iterator[tuple[RunningServer, RunningServer]]:
    base = Path(tempfile.mkdtemp(prefix="iotcloud-roles-"))
    url = new_database_url(request.getfixturevalue("postgres"), "postgres", base)
    broker = {"mqtt_url": mosquitto.url, "mqtt_port": mosquitto.port, "mqtt_sync_seconds": 1}
    limits = {"rate_limit_per_address": 0, "rate_limit_per_app": 0}
    with (
        serving(base / "api", url, role="api,scheduler", **broker, **limits) as api,
        serving(base / "gateway", url, role="gateway", log_format="json", **broker) as gateway,
    ):
        yield api, gateway


@pytest.fixture(scope="module")
def pet_house(
    processes: tuple[RunningServer, RunningServer], tmp_path_factory: pytest.TempPathFactory
) -> Product:
    return import_product(processes[0], tmp_path_factory.mktemp("products"), "pet_house.json")


def test_a_process_without_the_api_role_serves_only_health_readiness_and_metrics(
    processes: tuple[RunningServer, RunningServer],
) -> None:
    _, gateway = processes
    with gateway.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").json()["status"] == "ready"
        assert http.get("/metrics").status_code == 200
        for path in ("/status", "/app/users", "/admin/v1/stats"):
            assert http.get(path).status_code == 404, path


def test_the_gateway_logs_json_lines(processes: tuple[RunningServer, RunningServer]) -> None:
    _, gateway = processes
    lines = [line for line in gateway.log().splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("roles: gateway" in entry["message"] for entry in entries)
    assert {"time", "level", "logger", "message", "process"} <= set(entries[0])


async def test_reports_are_stored_once_by_the_gateway_and_commands_go_out_from_the_api(
    processes: tuple[RunningServer, RunningServer], pet_house: Product
) -> None:
    api, gateway = processes
    user = sign_up(api, api.create_app("Roles")["appid"])
    did, _ = register(api, pet_house)
    await bind(api, user, did)
    codec = P0Codec(pet_house.definition)
    async with (
        httpx.AsyncClient(base_url=api.base_url, timeout=30) as http,
        MqttDevice.on_server(api, did) as device,
    ):
        await until_online(http, user, did)  # presence the gateway stored, read by the API
        state = {"LED_OnOff": True, "LED_Color": "Pink", "LED_R": 1, "LED_G": 2, "LED_B": 3}
        for red in (10, 11, 12):
            await device.report(
                codec, {**state, "LED_R": red, "Motor_Speed": 0, "Temperature": 20, "Humidity": 5}
            )

        async def latest_red() -> bool:
            reply = await http.get(f"/app/devdata/{did}/latest", headers=user.headers())
            return bool(reply.json()["attr"].get("LED_R") == 12)

        await eventually(latest_red)

        # the API process, which does not consume device traffic, sends a command
        reply = await http.post(
            f"/app/control/{did}", headers=user.headers(), json={"raw": [1, 2, 3]}
        )
        assert reply.status_code == 200, reply.text
        topic, payload = await device.next_message()
        assert topic == f"app2dev/{did}/cloud"
        assert payload == bytes.fromhex("0000000306000090010203")

    async with Database(api.database_url) as db, db.session() as session:
        device_id = (
            await session.execute(select(DeviceRow.id).where(DeviceRow.did == did))
        ).scalar_one()
        stored = (
            await session.execute(
                select(func.count())
                .select_from(DeviceHistoryRow)
                .where(DeviceHistoryRow.device_id == device_id)
            )
        ).scalar_one()
    assert stored == 3  # once each, though both processes received every report

    with api.client() as http_api, gateway.client() as http_gateway:
        assert (sample(http_api.get("/metrics").text, "iotcloud_device_reports_total") or 0) == 0
        assert (
            sample(http_gateway.get("/metrics").text, "iotcloud_device_reports_total") or 0
        ) >= 3


def test_only_some_roles_without_an_external_broker_is_refused(tmp_path: Path) -> None:
    env = server_env(tmp_path, None)
    done = subprocess.run(
        [*IOTCLOUD, "serve", "--role", "api"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "IOTCLOUD_ROLE api" in done.stderr
    assert "needs an external broker" in done.stderr
    unknown = subprocess.run(
        [*IOTCLOUD, "serve", "--role", "api", "--role", "cron"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode != 0
    assert "IOTCLOUD_ROLE must be one or more of api, gateway, scheduler" in unknown.stderr
