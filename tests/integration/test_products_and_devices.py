"""Products and devices through a real ``iotcloud serve``: the CLI, the operator API, the
GAgent provisioning endpoints (spoken byte for byte as the firmware speaks them) and
``GET /app/datapoint``."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import unique
from tests.server import ADMIN_TOKEN, RunningServer, serving

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datapoints"
FORM = "application/x-www-form-urlencoded"


# -- helpers ---------------------------------------------------------------------------------------


def definition(name: str = "pet_house.json", **top: Any) -> dict[str, Any]:
    """A fixture datapoint JSON with a fresh product_key (the session's server is shared)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    if "product_key" in data:
        data["product_key"] = uuid.uuid4().hex
    data.update(top)
    return data


def write(tmp_path: Path, data: Any, name: str = "product.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    return path


def import_product(server: RunningServer, data: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    out = server.cli("product", "import", str(write(tmp_path, data)), "--json").stdout
    return dict(json.loads(out))


def listed_keys(server: RunningServer) -> set[str]:
    return {p["product_key"] for p in json.loads(server.cli("product", "list", "--json").stdout)}


def new_mac() -> str:
    return uuid.uuid4().hex[:12]


def admin(server: RunningServer, token: str = ADMIN_TOKEN) -> httpx.Client:
    return server.client(Authorization=f"Bearer {token}")


def gizwits_error(response: httpx.Response, status: int, code: int) -> str:
    """Assert the Gizwits error shape; return the detail message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}
    assert body["error_code"] == code, body
    return str(body["detail_message"])


class RawResponse:
    """An HTTP response as GAgent sees it: the raw bytes of one recv loop."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        # GAgent's Http_Response_Code: the three digits after "HTTP/1.1 "
        self.status = int(raw[9:12])
        self.headers = head.decode("latin-1").lower()


def gagent(server: RunningServer, request: bytes) -> RawResponse:
    """Send ``request`` exactly as given and read the whole response (Content-Length framed)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    return RawResponse(data)


def gagent_register(
    server: RunningServer, product_key: str, mac: str, passcode: str
) -> RawResponse:
    """``Http_POST`` of GAgent 04020006, byte for byte (note ``Host:`` without a space)."""
    body = f"passcode={passcode}&mac={mac}&product_key={product_key}".encode()
    return gagent(
        server,
        b"POST /dev/devices HTTP/1.1\r\nHost:api.gizwits.com\r\nContent-Length:%d\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s" % (len(body), body),
    )


def gagent_provision(server: RunningServer, did: str) -> RawResponse:
    """``Http_GET`` of GAgent: provisioning, also re-issued to sync the clock."""
    return gagent(
        server,
        b"GET /dev/devices/%s HTTP/1.1\r\nHost:api.gizwits.com\r\nCache-Control: no-cache\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" % did.encode(),
    )


def gagent_delete(server: RunningServer, did: str, passcode: str) -> RawResponse:
    """``Http_Delete`` of GAgent: give up an old did after a reset."""
    body = f"did={did}&passcode={passcode}".encode()
    return gagent(
        server,
        b"DELETE /dev/devices HTTP/1.1\r\nHost:api.gizwits.com\r\nContent-Length:%d\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s" % (len(body), body),
    )


def gagent_did(response: RawResponse) -> str:
    """``Http_Response_DID``: strstr(body, "did=") and the 22 characters after it."""
    at = response.raw.find(b"did=")
    assert at >= 0, response.raw
    return response.raw[at + 4 : at + 4 + 22].decode()


def gagent_endpoint(response: RawResponse) -> tuple[str, int, int]:
    """``Http_getdomain_port`` and ``GAgent_Get_Gserver_Time``: ``host=`` up to ``&``, ``port=``
    up to a mandatory ``&``, ``server_ts=`` up to ``&`` or ``\\r``."""
    text = response.body.decode()
    host = text[text.index("host=") + 5 :].split("&", 1)
    assert len(host) == 2, "host must be followed by &"
    port_start = text.index("port=") + 5
    port_end = text.index("&", port_start)  # GAgent fails without the & after the port
    ts = re.search(r"server_ts=(\d+)[&\r]", text)
    assert ts, text
    return host[0], int(text[port_start:port_end]), int(ts.group(1))


def show_device(server: RunningServer, did: str) -> dict[str, Any]:
    with admin(server) as client:
        response = client.get(f"/admin/v1/devices/{did}")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def product(server: RunningServer) -> dict[str, str]:
    """A fresh standard product on the session's server: ``{"product_key", "product_secret"}``
    (imported through the operator API, which is quicker than a CLI process)."""
    with admin(server) as client:
        response = client.post("/admin/v1/products", json=definition())
    assert response.status_code == 201, response.text
    return dict(response.json())


# -- product import (CLI) and GET /app/datapoint ---------------------------------------------------


def test_import_keeps_the_product_key_and_datapoint_serves_the_file(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    data = definition()
    made = import_product(server, data, tmp_path)
    assert made["product_key"] == data["product_key"]
    assert re.fullmatch(r"[0-9a-f]{32}", made["product_secret"])

    with server.client(app["appid"]) as client:
        served = client.get("/app/datapoint", params={"product_key": made["product_key"]})
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    assert served.json() == data

    assert made["product_key"] in listed_keys(server)
    shown = json.loads(server.cli("product", "show", made["product_key"], "--json").stdout)
    assert shown["product_secret"] == made["product_secret"]
    assert shown["protocol_type"] == "standard"
    assert [a["name"] for a in shown["attrs"]][:3] == ["LED_OnOff", "LED_Color", "LED_R"]
    human = server.cli("product", "show", made["product_key"]).stdout
    assert "Motor_Speed" in human
    assert made["product_secret"] in human
    assert made["product_key"] in server.cli("product", "list").stdout


def test_a_var_len_file_without_product_key_gets_one_and_keeps_the_given_secret(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    data = definition("var_len_speaker.json")
    assert "product_key" not in data
    secret = uuid.uuid4().hex
    path = write(tmp_path, data)
    out = server.cli("product", "import", str(path), "--product-secret", secret, "--json").stdout
    made = json.loads(out)
    assert made["product_secret"] == secret
    assert re.fullmatch(r"[0-9a-f]{32}", made["product_key"])
    with server.client(app["appid"]) as client:
        served = client.get("/app/datapoint", params={"product_key": made["product_key"]}).json()
    assert served == {**data, "product_key": made["product_key"]}
    shown = json.loads(server.cli("product", "show", made["product_key"], "--json").stdout)
    assert shown["protocol_type"] == "var_len"


def _unknown_data_type(attrs: list[dict[str, Any]]) -> str:
    attrs[2]["data_type"] = "float"
    return "LED_R"


def _overlapping_positions(attrs: list[dict[str, Any]]) -> str:
    attrs[3]["position"]["byte_offset"] = 1  # LED_G onto LED_R's byte
    return "LED_G"


def _enum_too_narrow(attrs: list[dict[str, Any]]) -> str:
    attrs[1]["position"]["len"] = 1  # four colours in one bit
    return "LED_Color"


def _uint_spec_out_of_range(attrs: list[dict[str, Any]]) -> str:
    attrs[5]["uint_spec"]["max"] = 300  # uint8
    return "Motor_Speed"


@pytest.mark.parametrize(
    "spoil",
    [_unknown_data_type, _overlapping_positions, _enum_too_narrow, _uint_spec_out_of_range],
    ids=["unknown-data-type", "overlapping-positions", "enum-too-narrow", "uint-spec-range"],
)
def test_invalid_files_are_refused_naming_the_attr_and_nothing_is_stored(
    server: RunningServer, tmp_path: Path, spoil: Callable[[list[dict[str, Any]]], str]
) -> None:
    data = definition()
    attr = spoil(data["entities"][0]["attrs"])
    result = server.cli("product", "import", str(write(tmp_path, data)), "--json", check=False)
    assert result.returncode != 0
    assert f"attr '{attr}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert data["product_key"] not in listed_keys(server)
    # the operator API says the same, in the Gizwits error shape
    with admin(server) as client:
        detail = gizwits_error(client.post("/admin/v1/products", json=data), 400, 9015)
    assert f"attr '{attr}'" in detail
    assert data["product_key"] not in listed_keys(server)


def test_files_that_are_not_json_are_refused(server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": ')
    result = server.cli("product", "import", str(path), check=False)
    assert result.returncode != 0
    assert "not a JSON file" in result.stderr
    listed = write(tmp_path, [definition()], "list.json")
    result = server.cli("product", "import", str(listed), check=False)
    assert "JSON object" in result.stderr


def test_reimport_is_refused_then_replace_swaps_the_data_points(
    server: RunningServer, app: dict[str, str], tmp_path: Path
) -> None:
    data = definition()
    made = import_product(server, data, tmp_path)
    changed = json.loads(json.dumps(data))
    changed["name"] = "Pet House v2"
    del changed["entities"][0]["attrs"][-1]
    path = write(tmp_path, changed, "v2.json")

    refused = server.cli("product", "import", str(path), check=False)
    assert refused.returncode != 0
    assert "already exists" in refused.stderr
    assert "--replace" in refused.stderr
    with server.client(app["appid"]) as client:
        params = {"product_key": made["product_key"]}
        assert client.get("/app/datapoint", params=params).json() == data

        out = server.cli("product", "import", str(path), "--replace", "--json").stdout
        assert json.loads(out) == made  # same key, same secret
        assert client.get("/app/datapoint", params=params).json() == changed


def test_datapoint_needs_an_app_id_and_a_known_product(
    server: RunningServer, app: dict[str, str], product: dict[str, str]
) -> None:
    params = {"product_key": product["product_key"]}
    with server.client() as anonymous:
        gizwits_error(anonymous.get("/app/datapoint", params=params), 400, 9003)
    with server.client("no-such-app") as stranger:
        gizwits_error(stranger.get("/app/datapoint", params=params), 400, 9003)
    with server.client(app["appid"]) as client:
        detail = gizwits_error(client.get("/app/datapoint"), 400, 9015)
        assert "product_key" in detail
        unknown = {"product_key": uuid.uuid4().hex}
        gizwits_error(client.get("/app/datapoint", params=unknown), 400, 9002)


# -- GAgent provisioning (/dev/devices) ------------------------------------------------------------


def test_gagent_registers_provisions_and_parses_the_answers(
    server: RunningServer, product: dict[str, str]
) -> None:
    mac = new_mac()
    registered = gagent_register(server, product["product_key"], mac, "JHHOOIWJBA")
    assert registered.status == 201
    assert registered.body.startswith(b"did=")
    did = gagent_did(registered)
    assert re.fullmatch(r"[A-Za-z0-9]{22}", did)
    assert registered.body == f"did={did}".encode()

    provisioned = gagent_provision(server, did)
    assert provisioned.status == 200
    host, port, server_ts = gagent_endpoint(provisioned)
    assert host == "127.0.0.1"
    assert port == int(server.env["IOTCLOUD_MQTT_PORT"])
    assert abs(server_ts - time.time()) < 60
    assert re.fullmatch(rb"host=127\.0\.0\.1&port=\d+&server_ts=\d+&", provisioned.body)

    shown = show_device(server, did)
    assert (shown["mac"], shown["passcode"], shown["is_disabled"]) == (mac, "JHHOOIWJBA", False)
    assert shown["product_key"] == product["product_key"]


def test_registering_the_same_mac_again_keeps_the_did_with_the_new_passcode(
    server: RunningServer, product: dict[str, str]
) -> None:
    mac = new_mac()
    did = gagent_did(gagent_register(server, product["product_key"], mac, "AAAAAAAAAA"))
    spelled = ":".join(mac[i : i + 2] for i in range(0, 12, 2)).upper()
    with server.client() as client:
        again = client.post(
            "/dev/devices",
            data={"passcode": "BBBBBBBBBB", "mac": spelled, "product_key": product["product_key"]},
        )
    assert again.status_code == 201
    assert again.text == f"did={did}"
    assert show_device(server, did)["passcode"] == "BBBBBBBBBB"
    # a JSON body is understood as well
    with server.client() as client:
        as_json = {"passcode": "CCCCCCCCCC", "mac": mac, "product_key": product["product_key"]}
        assert client.post("/dev/devices", json=as_json).text == f"did={did}"
    assert show_device(server, did)["passcode"] == "CCCCCCCCCC"
    # a reset device deleting its old identity with the old passcode does not lose its did
    assert gagent_delete(server, did, "BBBBBBBBBB").status == 400
    assert gagent_provision(server, did).status == 200


def test_registration_errors_use_the_gizwits_table(
    server: RunningServer, product: dict[str, str]
) -> None:
    key = product["product_key"]
    with server.client() as client:

        def register(**form: str) -> httpx.Response:
            return client.post("/dev/devices", data=form)

        gizwits_error(
            register(passcode="AAAAAAAAAA", mac=new_mac(), product_key=unique()), 400, 9002
        )
        unknown = uuid.uuid4().hex
        gizwits_error(
            register(passcode="AAAAAAAAAA", mac=new_mac(), product_key=unknown), 400, 9002
        )
        detail = gizwits_error(
            register(passcode="AAAAAAAAAA", mac="xyz", product_key=key), 400, 9015
        )
        assert detail.startswith("mac:")
        detail = gizwits_error(register(passcode="a b", mac=new_mac(), product_key=key), 400, 9015)
        assert detail.startswith("passcode:")
        detail = gizwits_error(register(mac=new_mac(), product_key=key), 400, 9015)
        assert detail == "passcode: is required"
        detail = gizwits_error(register(passcode="AAAAAAAAAA", mac=new_mac()), 400, 9015)
        assert detail == "product_key: is required"
        gizwits_error(client.get(f"/dev/devices/{'x' * 22}"), 404, 9014)


def test_delete_needs_the_passcode_and_a_disabled_device_is_refused(
    server: RunningServer, product: dict[str, str]
) -> None:
    mac = new_mac()
    did = gagent_did(gagent_register(server, product["product_key"], mac, "RIGHTRIGHT"))

    wrong = gagent_delete(server, did, "WRONGWRONG")
    assert wrong.status == 400
    assert json.loads(wrong.body)["error_code"] == 9016
    assert show_device(server, did)["is_disabled"] is False
    assert gagent_provision(server, did).status == 200

    unknown = gagent_delete(server, "y" * 22, "RIGHTRIGHT")
    assert (unknown.status, json.loads(unknown.body)["error_code"]) == (404, 9014)

    assert gagent_delete(server, did, "RIGHTRIGHT").status == 200
    refused = gagent_provision(server, did)
    assert refused.status == 400
    assert json.loads(refused.body)["error_code"] == 9023
    # registering again does not lift the disable; an operator does
    again = gagent_register(server, product["product_key"], mac, "OTHEROTHER")
    assert (again.status, json.loads(again.body)["error_code"]) == (400, 9023)
    with admin(server) as client:
        enabled = client.put(f"/admin/v1/devices/{did}", json={"is_disabled": False})
    assert enabled.json()["is_disabled"] is False
    assert gagent_provision(server, did).status == 200


def test_delete_needs_its_fields(server: RunningServer) -> None:
    with server.client() as client:

        def delete(body: bytes) -> httpx.Response:
            return client.request(
                "DELETE", "/dev/devices", content=body, headers={"Content-Type": FORM}
            )

        assert gizwits_error(delete(b"did=abc&"), 400, 9015) == "passcode: is required"
        assert gizwits_error(delete(b""), 400, 9015) == "did: is required"
        gizwits_error(delete(b"did=abc&passcode=x"), 404, 9014)


# -- devices (CLI) ---------------------------------------------------------------------------------


def test_device_create_show_disable_and_enable(
    server: RunningServer, product: dict[str, str]
) -> None:
    key = product["product_key"]
    out = server.cli(
        "device", "create", "--product-key", key, "--mac", "AA-BB-CC-00-11-22", "--json"
    )
    made = json.loads(out.stdout)
    assert set(made) == {"did", "passcode", "mac"}
    assert re.fullmatch(r"[A-Za-z0-9]{22}", made["did"])
    assert re.fullmatch(r"[A-Z]{10}", made["passcode"])
    assert made["mac"] == "aabbcc001122"
    # the same MAC is the same device
    again = server.cli("device", "create", "--product-key", key, "--mac", "aabbcc001122", "--json")
    assert json.loads(again.stdout) == made

    shown = json.loads(server.cli("device", "show", made["did"], "--json").stdout)
    assert shown["passcode"] == made["passcode"]
    assert shown["is_online"] is False
    assert "aabbcc001122" in server.cli("device", "show", made["did"]).stdout

    disabled = json.loads(server.cli("device", "disable", made["did"], "--json").stdout)
    assert disabled["is_disabled"] is True
    assert gagent_provision(server, made["did"]).status == 400
    server.cli("device", "enable", made["did"])
    assert gagent_provision(server, made["did"]).status == 200


def test_device_commands_report_errors_without_tracebacks(
    server: RunningServer, product: dict[str, str]
) -> None:
    bad_mac = server.cli(
        "device", "create", "--product-key", product["product_key"], "--mac", "nope", check=False
    )
    assert bad_mac.returncode != 0
    assert "mac:" in bad_mac.stderr
    unknown = server.cli(
        "device", "create", "--product-key", uuid.uuid4().hex, "--mac", new_mac(), check=False
    )
    assert unknown.returncode != 0
    assert "unknown product_key" in unknown.stderr
    for command in ("show", "disable", "enable"):
        missing = server.cli("device", command, "z" * 22, check=False)
        assert missing.returncode != 0
        assert "no device" in missing.stderr
        assert "Traceback" not in missing.stderr
    missing_product = server.cli("product", "show", uuid.uuid4().hex, check=False)
    assert missing_product.returncode != 0
    assert "unknown product_key" in missing_product.stderr


def test_csv_import_stores_good_rows_and_reports_bad_lines(
    server: RunningServer, product: dict[str, str], tmp_path: Path
) -> None:
    key = product["product_key"]
    with admin(server) as client:
        first = {"product_key": key, "mac": "c0ffee000001"}
        existing = client.post("/admin/v1/devices", json=first).json()
    csv_path = tmp_path / "devices.csv"
    csv_path.write_text(
        "product_key,mac,passcode\n"
        f"{key},c0:ff:ee:00:00:02,\n"  # 2 good
        f"{key},c0ffee000003,OWNCODE\n"  # 3 good, own passcode
        f"{key},c0ffee000001,\n"  # 4 exists
        f"{key},not-a-mac,\n"  # 5 bad mac
        f"{uuid.uuid4().hex},c0ffee000004,\n"  # 6 unknown product
        f"{key},c0ffee000005\n"  # 7 missing a field
        + "".join(f"{key},c0ffee1000{i:02x},\n" for i in range(30))  # 8-37 good
    )
    result = server.cli("device", "import", str(csv_path), "--json", check=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["created"], report["existing"]) == (32, 1)
    assert [(f["line"], f["error"].split(":")[0]) for f in report["failed"]] == [
        (5, "mac"),
        (6, "product_key"),
        (7, "expected 3 fields, got 2"),
    ]
    with admin(server) as client:
        made = client.post("/admin/v1/devices", json={"product_key": key, "mac": "c0ffee000003"})
        assert made.status_code == 200  # stored by the import
        assert made.json()["passcode"] == "OWNCODE"
        kept = client.post("/admin/v1/devices", json={"product_key": key, "mac": "c0ffee000001"})
        assert kept.json() == existing

    # importing the same file again creates nothing; the human summary names the bad lines
    human = server.cli("device", "import", str(csv_path), check=False)
    assert human.returncode == 1
    assert "created 0, already existing 33, failed 3" in human.stdout
    assert f"{csv_path}:5: mac:" in human.stderr

    clean = tmp_path / "clean.csv"
    clean.write_text(f"mac,product_key\n{new_mac()},{key}\n")
    assert json.loads(server.cli("device", "import", str(clean), "--json").stdout) == {
        "created": 1,
        "existing": 0,
        "failed": [],
    }
    headerless = tmp_path / "headerless.csv"
    headerless.write_text(f"{key},{new_mac()}\n")
    refused = server.cli("device", "import", str(headerless), check=False)
    assert refused.returncode != 0
    assert "header" in refused.stderr


# -- operator API ----------------------------------------------------------------------------------


def test_operator_api_refuses_missing_and_wrong_tokens(server: RunningServer) -> None:
    with server.client() as client:
        missing = client.get("/admin/v1/products")
        assert "Bearer" in gizwits_error(missing, 401, 9004)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        basic = client.get("/admin/v1/products", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        gizwits_error(basic, 401, 9004)
    with admin(server, ADMIN_TOKEN + "x") as client:
        assert "wrong" in gizwits_error(client.get("/admin/v1/products"), 401, 9004)
        gizwits_error(client.post("/admin/v1/devices", json={}), 401, 9004)


def test_operator_api_is_off_without_an_admin_token(tmp_path: Path) -> None:
    with serving(tmp_path, None, admin_token="") as bare, admin(bare) as client:
        detail = gizwits_error(client.get("/admin/v1/products"), 403, 9004)
        assert "IOTCLOUD_ADMIN_TOKEN" in detail
        gizwits_error(client.post("/admin/v1/products", json=definition()), 403, 9004)


def test_operator_api_imports_lists_and_shows_products(
    server: RunningServer, app: dict[str, str]
) -> None:
    data = definition()
    secret = uuid.uuid4().hex
    with admin(server) as client:
        made = client.post("/admin/v1/products", json=data, params={"product_secret": secret})
        assert made.status_code == 201
        assert made.json() == {"product_key": data["product_key"], "product_secret": secret}

        again = client.post("/admin/v1/products", json=data)
        assert "already exists" in gizwits_error(again, 400, 9015)
        data["name"] = "Renamed"
        replaced = client.post("/admin/v1/products", json=data, params={"replace": "true"})
        assert replaced.status_code == 200
        assert replaced.json()["product_secret"] == secret
        gizwits_error(
            client.post("/admin/v1/products", json=data, params={"replace": "maybe"}), 400, 9015
        )
        gizwits_error(client.post("/admin/v1/products", content=b"{nope"), 400, 9015)

        listed = client.get("/admin/v1/products").json()
        entry = next(p for p in listed if p["product_key"] == data["product_key"])
        assert entry["name"] == "Renamed"
        assert set(entry) == {
            "product_key",
            "name",
            "protocol_type",
            "registration",
            "created_at",
            "updated_at",
        }
        assert entry["registration"] == "open"
        shown = client.get(f"/admin/v1/products/{data['product_key']}").json()
        assert shown["product_secret"] == secret
        assert len(shown["attrs"]) == 15
        gizwits_error(client.get(f"/admin/v1/products/{uuid.uuid4().hex}"), 400, 9002)
    with server.client(app["appid"]) as client:
        served = client.get("/app/datapoint", params={"product_key": data["product_key"]})
        assert served.json() == data


def test_operator_api_creates_shows_and_disables_devices(
    server: RunningServer, product: dict[str, str]
) -> None:
    key = product["product_key"]
    with admin(server) as client:
        made = client.post(
            "/admin/v1/devices", json={"product_key": key, "mac": "0A:0B:0C:0D:0E:0F"}
        )
        assert made.status_code == 201
        creds = made.json()
        assert set(creds) == {"did", "passcode", "mac"}
        assert creds["mac"] == "0a0b0c0d0e0f"
        same = client.post("/admin/v1/devices", json={"product_key": key, "mac": "0a0b0c0d0e0f"})
        assert (same.status_code, same.json()) == (200, creds)

        detail = gizwits_error(
            client.post("/admin/v1/devices", json={"product_key": key, "mac": "0a0b"}), 400, 9015
        )
        assert detail.startswith("mac:")
        gizwits_error(client.post("/admin/v1/devices", json={"mac": new_mac()}), 400, 9015)
        unknown = {"product_key": uuid.uuid4().hex, "mac": new_mac()}
        gizwits_error(client.post("/admin/v1/devices", json=unknown), 400, 9002)

        shown = client.get(f"/admin/v1/devices/{creds['did']}").json()
        assert shown["product_key"] == key
        assert shown["passcode"] == creds["passcode"]
        assert shown["is_disabled"] is False
        assert shown["last_online_at"] is None

        off = client.put(f"/admin/v1/devices/{creds['did']}", json={"is_disabled": True})
        assert off.json()["is_disabled"] is True
        assert json.loads(gagent_provision(server, creds["did"]).body)["error_code"] == 9023
        on = client.put(f"/admin/v1/devices/{creds['did']}", json={"is_disabled": False})
        assert on.json()["is_disabled"] is False
        assert gagent_provision(server, creds["did"]).status == 200

        bad = client.put(f"/admin/v1/devices/{creds['did']}", json={"is_disabled": "yes"})
        assert gizwits_error(bad, 400, 9015).startswith("is_disabled")
        gizwits_error(client.get(f"/admin/v1/devices/{'q' * 22}"), 404, 9014)
        gizwits_error(
            client.put(f"/admin/v1/devices/{'q' * 22}", json={"is_disabled": True}), 404, 9014
        )
