"""Data-template (Tencent) products and devices through a real ``iotcloud serve``: the CLI, the
operator API, ``GET /app/datapoint`` and the refusal of GAgent self-registration.

On the SQLite server only: the services behind them are the contract tests' (both backends)."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.errors import assert_error
from tests.server import RunningServer
from tests.thing_devices import import_thing_product, new_product_id, template_doc

FIXTURES = Path(__file__).parents[1] / "fixtures"
pytestmark = pytest.mark.backend("sqlite")


def gizwits_definition() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "datapoints" / "pet_house.json").read_text())
    data["product_key"] = secrets.token_hex(16)
    return data


def write(tmp_path: Path, data: Any, name: str = "template.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    return path


def gizwits_error(response: httpx.Response, status: int, code: int) -> str:
    """``response`` is the Gizwits error ``code`` with HTTP ``status``: its detail message."""
    assert_error(response, code, status)
    return str(response.json()["detail_message"])


@pytest.fixture
async def pid(server: RunningServer) -> str:
    """A fresh data-template product imported through the operator API."""
    return await import_thing_product(server)


@pytest.fixture
def gizwits_key(server: RunningServer) -> str:
    data = gizwits_definition()
    with server.operator() as client:
        assert client.post("/admin/v1/products", json=data).status_code == 201
    return str(data["product_key"])


# -- products ---------------------------------------------------------------------------------


def test_cli_imports_a_template_keyed_by_its_product_id(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    data = template_doc()
    product_id = data["profile"]["ProductId"]
    out = server.cli("product", "import", str(write(tmp_path, data)), "--json").stdout
    made = json.loads(out)
    assert set(made) == {"product_key", "product_secret"}
    assert made["product_key"] == product_id

    with server.client(app["appid"]) as client:
        served = client.get("/app/datapoint", params={"product_key": product_id})
    assert served.status_code == 200
    assert served.json() == data

    listed = json.loads(server.cli("product", "list", "--json").stdout)
    assert {"product_key": product_id, "protocol_type": "data_template"}.items() <= next(
        p for p in listed if p["product_key"] == product_id
    ).items()
    shown = json.loads(server.cli("product", "show", product_id, "--json").stdout)
    assert shown["product_secret"] == made["product_secret"]
    assert [(p["id"], p["type"], p["mode"]) for p in shown["properties"]][:3] == [
        ("power_switch", "bool", "rw"),
        ("brightness", "int", "rw"),
        ("color", "enum", "rw"),
    ]
    assert [e["id"] for e in shown["events"]] == ["status_report", "low_voltage"]
    assert [a["id"] for a in shown["actions"]] == ["blink"]
    human = server.cli("product", "show", product_id).stdout
    assert "temperature" in human
    assert "low_voltage" in human

    again = server.cli("product", "import", str(write(tmp_path, data)), check=False)
    assert again.returncode != 0
    assert "already exists" in again.stderr


def test_cli_refuses_an_invalid_template_naming_the_json_path(
    server: RunningServer, tmp_path: Path
) -> None:
    data = template_doc()
    data["properties"][4]["define"]["start"] = "500"
    result = server.cli("product", "import", str(write(tmp_path, data)), check=False)
    assert result.returncode != 0
    assert "properties[4].define.start" in result.stderr
    assert "Traceback" not in result.stderr
    listed = json.loads(server.cli("product", "list", "--json").stdout)
    assert data["profile"]["ProductId"] not in {p["product_key"] for p in listed}


def test_operator_api_imports_and_shows_templates(server: RunningServer) -> None:
    data = template_doc()
    product_id = data["profile"]["ProductId"]
    with server.operator() as client:
        made = client.post("/admin/v1/products", json=data)
        assert made.status_code == 201, made.text
        assert made.json()["product_key"] == product_id
        shown = client.get(f"/admin/v1/products/{product_id}").json()
        assert shown["protocol_type"] == "data_template"
        assert shown["product_secret"] == made.json()["product_secret"]
        replaced = client.post("/admin/v1/products", params={"replace": "true"}, json=data)
        assert replaced.status_code == 200
        assert replaced.json() == made.json()
        bad = template_doc()
        bad["profile"]["ProductId"] = "lower12345"
        detail = gizwits_error(client.post("/admin/v1/products", json=bad), 400, 9015)
        assert detail.startswith("profile.ProductId: ")
        gizwits_error(client.get(f"/admin/v1/products/{product_id.lower()}"), 400, 9002)


# -- devices ----------------------------------------------------------------------------------


def test_cli_creates_named_devices(server: RunningServer, pid: str) -> None:
    out = server.cli("device", "create", "--product-key", pid, "--name", "lamp-01", "--json")
    made = json.loads(out.stdout)
    assert set(made) == {"did", "device_name", "psk"}
    assert made["device_name"] == "lamp-01"
    assert len(base64.b64decode(made["psk"], validate=True)) == 16
    again = server.cli("device", "create", "--product-key", pid, "--name", "lamp-01", "--json")
    assert json.loads(again.stdout) == made

    shown = json.loads(server.cli("device", "show", made["did"], "--json").stdout)
    assert (shown["name"], shown["mac"], shown["psk"], shown["product_key"]) == (
        "lamp-01",
        "",
        made["psk"],
        pid,
    )
    assert len(shown["passcode"]) == 10
    assert made["psk"] in server.cli("device", "show", made["did"]).stdout


def test_cli_device_create_refuses_the_wrong_identity(
    server: RunningServer, pid: str, gizwits_key: str
) -> None:
    for options, said in [
        (["--product-key", pid, "--mac", "aabbccddeeff"], "data-template product"),
        (["--product-key", gizwits_key, "--name", "lamp"], "Gizwits product"),
        (["--product-key", pid], "exactly one of --mac"),
        (["--product-key", pid, "--name", "no spaces"], "name:"),
    ]:
        result = server.cli("device", "create", *options, check=False)
        assert result.returncode != 0, options
        assert said in result.stderr, (options, result.stderr)
        assert "Traceback" not in result.stderr


def test_cli_imports_named_devices_from_csv(
    server: RunningServer, pid: str, tmp_path: Path
) -> None:
    psk = base64.b64encode(bytes(range(16))).decode()
    csv_path = tmp_path / "devices.csv"
    csv_path.write_text(
        "product_key,name,psk\n"
        f"{pid},lamp-01,\n"  # 2 good
        f"{pid},lamp-02,{psk}\n"  # 3 good, own psk
        f"{pid},bad name,\n"  # 4 bad name
        f"{pid},lamp-03\n"  # 5 missing a field
    )
    result = server.cli("device", "import", str(csv_path), "--json", check=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["created"], report["existing"]) == (2, 0)
    assert [(f["line"], f["error"].split(":")[0]) for f in report["failed"]] == [
        (4, "name"),
        (5, "expected 3 fields, got 2"),
    ]
    made = server.cli("device", "create", "--product-key", pid, "--name", "lamp-02", "--json")
    assert json.loads(made.stdout)["psk"] == psk


def test_operator_api_creates_named_devices_and_refuses_mixed_forms(
    server: RunningServer, pid: str, gizwits_key: str
) -> None:
    with server.operator() as client:
        made = client.post("/admin/v1/devices", json={"product_key": pid, "name": "lamp-9"})
        assert made.status_code == 201, made.text
        assert set(made.json()) == {"did", "device_name", "psk"}
        again = client.post("/admin/v1/devices", json={"product_key": pid, "name": "lamp-9"})
        assert (again.status_code, again.json()) == (200, made.json())
        shown = client.get(f"/admin/v1/devices/{made.json()['did']}").json()
        assert (shown["name"], shown["psk"]) == ("lamp-9", made.json()["psk"])

        refusals = [
            ({"product_key": pid, "name": "a", "mac": "aabbccddeeff"}, "mac: "),
            ({"product_key": pid}, "mac: "),
            ({"product_key": pid, "mac": "aabbccddeeff"}, "mac: "),
            ({"product_key": gizwits_key, "name": "lamp"}, "name: "),
            ({"product_key": gizwits_key, "mac": "aabbccddeeff", "psk": "x"}, "psk: "),
            ({"product_key": pid, "name": "lamp 9"}, "name: "),
            ({"product_key": pid, "name": "lamp-10", "psk": "!!"}, "psk: "),
        ]
        for body, prefix in refusals:
            detail = gizwits_error(client.post("/admin/v1/devices", json=body), 400, 9015)
            assert detail.startswith(prefix), (body, detail)
        unknown = client.post(
            "/admin/v1/devices", json={"product_key": new_product_id(), "name": "x"}
        )
        gizwits_error(unknown, 400, 9002)


def test_gagent_self_registration_refuses_a_template_product(
    server: RunningServer, pid: str
) -> None:
    with server.client() as client:
        response = client.post(
            "/dev/devices",
            data={"product_key": pid, "mac": "aabbccddeeff", "passcode": "123456"},
        )
    detail = gizwits_error(response, 400, 9015)
    assert detail.startswith("product_key: ")
