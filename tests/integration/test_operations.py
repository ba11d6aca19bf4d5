"""What an orchestrator and Prometheus ask of a running ``iotcloud serve``: ``/healthz``,
``/readyz`` naming the dependency that is down, and ``/metrics`` counting what happened."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from iotcloud.simulator import VirtualDevice
from tests.devices import Online, eventually, import_product
from tests.mosquitto import MosquittoServer
from tests.pg import PostgresServer
from tests.prometheus import sample
from tests.server import RunningServer, serving

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="iotcloud-operations-"))
    with serving(data_dir, None) as running:
        yield running


def test_healthz_answers_without_touching_anything(server: RunningServer) -> None:
    with server.client() as http:
        reply = http.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


def test_readyz_checks_the_database_and_the_device_transport(server: RunningServer) -> None:
    with server.client() as http:
        reply = http.get("/readyz")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_metrics_count_requests_by_route_template_method_and_status(
    server: RunningServer,
) -> None:
    with server.client() as http:
        before = http.get("/metrics").text
        for _ in range(3):
            assert http.get("/status").status_code == 200
        assert http.get(f"/no/such/{uuid.uuid4().hex}").status_code == 404
        assert http.get(f"/app/devices/{'x' * 22}").status_code in (400, 401)
        reply = http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = reply.text
    ok = {"route": "/status", "method": "GET", "status": "200"}
    assert (sample(text, "iotcloud_http_requests_total", **ok) or 0) - (
        sample(before, "iotcloud_http_requests_total", **ok) or 0
    ) == 3
    # a path no route knows is one label value, not one per path asked for
    assert sample(
        text, "iotcloud_http_requests_total", route="unmatched", method="GET", status="404"
    )
    assert not any("/no/such" in line for line in text.splitlines())
    templated = [line for line in text.splitlines() if 'route="/app/devices/{did' in line]
    assert templated, "the route label is the template, not the path"
    count = sample(
        text, "iotcloud_http_request_duration_seconds_count", route="/status", method="GET"
    )
    assert count is not None
    assert count >= 3
    for name in (
        "iotcloud_devices_connected",
        "iotcloud_device_reports_total",
        "iotcloud_device_reports_shed_total",
        "iotcloud_schedule_lateness_seconds_count",
    ):
        assert sample(text, name) is not None, name
    assert sample(text, "iotcloud_schedule_runs_total", result="succeed") is not None
    assert sample(text, "iotcloud_queue_depth", queue="reports") is not None
    assert sample(text, "iotcloud_cache_requests_total", result="hit") is not None


async def test_metrics_follow_devices_and_their_reports(
    server: RunningServer, tmp_path: Path
) -> None:
    product_key, product = import_product(server, tmp_path, "pet_house.json")
    device = VirtualDevice(product_key, product, "02" + uuid.uuid4().hex[:10], seed=5)
    async with httpx.AsyncClient(base_url=server.base_url) as http:

        async def scrape() -> str:
            return (await http.get("/metrics")).text

        before = await scrape()
        connected = sample(before, "iotcloud_devices_connected") or 0
        reports = sample(before, "iotcloud_device_reports_total") or 0
        async with Online(server, device):
            await device.report()

            async def counted() -> bool:
                text = await scrape()
                return (sample(text, "iotcloud_devices_connected") or 0) == connected + 1 and (
                    sample(text, "iotcloud_device_reports_total") or 0
                ) >= reports + 2  # the report on connecting, and this one

            await eventually(counted)

        async def gone() -> bool:
            return (sample(await scrape(), "iotcloud_devices_connected") or 0) == connected

        await eventually(gone)


async def test_readyz_names_the_broker_and_the_database_when_they_are_down(
    tmp_path: Path,
) -> None:
    """An external broker and a PostgreSQL server of this test's own, stopped one after the
    other under a running server: 503 naming each, and ready again once they are back."""
    postgres = PostgresServer()
    postgres.start()
    broker = MosquittoServer()
    broker.start()
    try:
        url = postgres.create_database("readyz")
        settings = {"mqtt_url": broker.url, "mqtt_port": broker.port, "mqtt_sync_seconds": 1}
        with serving(tmp_path, url, allow_tracebacks=True, **settings) as running:
            async with httpx.AsyncClient(base_url=running.base_url, timeout=10) as http:

                async def readiness() -> httpx.Response:
                    return await http.get("/readyz")

                assert (await readiness()).status_code == 200
                broker.stop()

                async def broker_down() -> httpx.Response | None:
                    reply = await readiness()
                    return reply if reply.status_code == 503 else None

                reply = await eventually(broker_down)
                checks = reply.json()["checks"]
                assert reply.json()["status"] == "unready"
                assert checks["database"] == "ok"
                assert "not connected to the MQTT broker" in checks["broker"]

                postgres.stop_only()

                async def both_down() -> httpx.Response | None:
                    reply = await readiness()
                    return reply if reply.json()["checks"]["database"] != "ok" else None

                reply = await eventually(both_down)
                assert reply.status_code == 503
                assert reply.json()["checks"]["database"].startswith(("unavailable", "no answer"))
                # the process itself is fine
                assert (await http.get("/healthz")).status_code == 200

                postgres.start_again()

                async def database_back() -> bool:
                    return (await readiness()).json()["checks"]["database"] == "ok"

                await eventually(database_back, wait=30)
    finally:
        broker.stop()
        postgres.stop()


def test_the_grafana_dashboard_queries_only_metrics_the_server_exposes(
    server: RunningServer,
) -> None:
    dashboard = json.loads((REPOSITORY / "deploy" / "grafana" / "iotcloud.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\biotcloud_[a-z_]+", target["expr"])
    }
    assert queried
    with server.client() as http:
        text = http.get("/metrics").text
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    exposed = set(families)
    for name, kind in families.items():
        if kind == "histogram":
            exposed |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    assert queried <= exposed, sorted(queried - exposed)
