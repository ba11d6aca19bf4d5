"""The web console over HTTP against a real ``iotcloud serve``: signing in and out, sessions that
expire, CSRF and Origin refusals, every route refused without a session, forms' messages,
upload limits, secrets shown only where they are made, and commands that reach a real MQTT
device."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from iotcloud.codecs import P0Codec
from iotcloud.storage.database import Database
from iotcloud.storage.models import ConsoleSessionRow
from tests.accounts import bind, sign_up
from tests.devices import FIXTURES, MqttDevice, Product, eventually, import_product, register
from tests.pg import free_port
from tests.server import ADMIN_TOKEN, RunningServer, serving
from tests.thing_devices import template_doc
from tests.tls import ThrowawayCA

COOKIE = "iotcloud_console"
CSRF = re.compile(r'data-csrf="([0-9a-f]{64})"')


def error_of(html: str, name: str) -> str:
    """The text of ``<p class="error" id="error-NAME">`` ("" when empty or absent)."""
    found = re.search(rf'<p class="error" id="error-{re.escape(name)}">([^<]*)</p>', html)
    return found.group(1) if found else ""


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page carries its session's CSRF token"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> str:
    """Sign ``client`` in; returns the CSRF token of its new session."""
    reply = await client.post("/console/login", data={"token": token})
    assert reply.status_code == 303, reply.text
    assert reply.headers["location"] == "/console"
    page = await client.get("/console")
    assert page.status_code == 200
    return csrf_of(page.text)


@pytest.fixture
async def console(server: RunningServer) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client signed in to the console, and its CSRF token."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client, await sign_in(client)


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


async def set_sessions(server: RunningServer, **values: Any) -> None:
    async with Database(server.database_url) as db, db.session() as session:
        await session.execute(update(ConsoleSessionRow).values(**values))


async def session_count(server: RunningServer) -> int:
    async with Database(server.database_url) as db, db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(ConsoleSessionRow)) or 0)


# -- signing in ----------------------------------------------------------------------------------


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_the_operator_token_signs_in_with_a_strict_http_only_cookie(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        login = await client.get("/console/login")
        assert login.status_code == 200
        assert '<form id="login"' in login.text
        assert 'name="token"' in login.text

        reply = await client.post("/console/login", data={"token": ADMIN_TOKEN})
        assert reply.status_code == 303
        cookie = reply.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/console" in cookie
        assert "Secure" not in cookie  # served over plain HTTP here
        assert ADMIN_TOKEN not in cookie
        assert ADMIN_TOKEN not in reply.headers["location"]

        overview = await client.get("/console")
        assert overview.status_code == 200
        for name in ("overview", "products", "devices", "apps", "users", "schedules"):
            assert f'id="nav-{name}"' in overview.text
        assert 'id="logout"' in overview.text
        assert ADMIN_TOKEN not in overview.text
        assert overview.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in overview.headers["content-security-policy"]
        # a signed-in browser asking for the sign-in page goes to the overview
        assert (await client.get("/console/login")).status_code == 303


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_a_wrong_or_missing_token_is_refused_next_to_the_field(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        wrong = await client.post("/console/login", data={"token": "not-the-token"})
        assert wrong.status_code == 401
        assert "wrong operator token" in error_of(wrong.text, "token")
        assert "not-the-token" not in wrong.text
        assert "set-cookie" not in wrong.headers

        empty = await client.post("/console/login", data={"token": "  "})
        assert empty.status_code == 400
        assert error_of(empty.text, "token")

        assert (await client.get("/console")).headers["location"] == "/console/login"


async def test_a_session_ends_when_it_expires_or_idles(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        await sign_in(client)
        await set_sessions(server, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        page = await client.get("/console/devices")
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login"
        data = await client.get("/console/devices/0000/state")
        assert data.status_code == 401

        await sign_in(client)
        await set_sessions(server, last_seen_at=datetime.now(UTC) - timedelta(hours=1))
        assert (await client.get("/console")).status_code == 303


async def test_sign_out_deletes_the_session_and_the_old_cookie_stops_working(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        csrf = await sign_in(client)
        before = await session_count(server)
        stolen = client.cookies[COOKIE]
        reply = await client.post("/console/logout", data={"csrf": csrf})
        assert reply.status_code == 303
        assert reply.headers["location"] == "/console/login"
        assert await session_count(server) == before - 1
        assert (await client.get("/console")).status_code == 303
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=30, cookies={COOKIE: stolen}
    ) as replay:
        assert (await replay.get("/console")).status_code == 303


async def test_over_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    ca = ThrowawayCA.create(tmp_path / "ca")
    port = free_port()
    with serving(
        tmp_path / "server", None, tls_cert=ca.chain, tls_key=ca.key, https_port=port
    ) as running:
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=ca.client_context(), timeout=30
        ) as client:
            reply = await client.post("/console/login", data={"token": ADMIN_TOKEN})
            assert reply.status_code == 303
            assert "Secure" in reply.headers["set-cookie"]
            assert (await client.get("/console")).status_code == 200
        assert "console sign-in" in running.log()


async def test_wrong_tokens_are_limited_per_address(tmp_path: Path) -> None:
    with serving(tmp_path, None) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            statuses = [
                (await client.post("/console/login", data={"token": f"guess-{n}"})).status_code
                for n in range(12)
            ]
            assert statuses[:10] == [401] * 10
            assert statuses[10:] == [429, 429]
            # while limited, not even the right token is checked
            limited = await client.post("/console/login", data={"token": ADMIN_TOKEN})
            assert limited.status_code == 429
            assert "try again" in error_of(limited.text, "form")
            assert "set-cookie" not in limited.headers


async def test_without_an_operator_token_the_console_is_closed(tmp_path: Path) -> None:
    with serving(tmp_path, None, admin_token="") as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            login = await client.get("/console/login")
            assert login.status_code == 403
            assert "IOTCLOUD_ADMIN_TOKEN" in login.text
            refused = await client.post("/console/login", data={"token": ""})
            assert refused.status_code == 403
            assert (await client.get("/console")).status_code == 403
            assert (await client.get("/console/devices/x/state")).status_code == 403


# -- every route needs a session -----------------------------------------------------------------

PAGES = [
    ("GET", "/console"),
    ("GET", "/console/products"),
    ("GET", "/console/products/0123456789abcdef0123456789abcdef"),
    ("GET", "/console/devices"),
    ("GET", "/console/devices/abcdefghijklmnopqrstuv"),
    ("GET", "/console/apps"),
    ("GET", "/console/users"),
    ("GET", "/console/users/someone"),
    ("GET", "/console/schedules"),
    ("GET", "/console/schedules/someschedule"),
    ("POST", "/console/logout"),
    ("POST", "/console/products"),
    ("POST", "/console/devices"),
    ("POST", "/console/devices/import"),
    ("POST", "/console/devices/abcdefghijklmnopqrstuv/command"),
    ("POST", "/console/devices/abcdefghijklmnopqrstuv/disable"),
    ("POST", "/console/devices/abcdefghijklmnopqrstuv/enable"),
    ("POST", "/console/apps"),
    ("POST", "/console/apps/someapp/rotate"),
    ("POST", "/console/users/someone/disable"),
    ("POST", "/console/users/someone/enable"),
    ("POST", "/console/users/someone/sign-out"),
]
DATA = [
    ("GET", "/console/devices/abcdefghijklmnopqrstuv/state"),
    ("POST", "/console/devices/import.json"),
]


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(("method", "path"), PAGES)
async def test_pages_send_a_browser_without_a_session_to_sign_in(
    server: RunningServer, method: str, path: str
) -> None:
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=30, cookies={COOKIE: "forged-session"}
    ) as client:
        reply = await client.request(method, path, data={"csrf": "x"})
        assert reply.status_code == 303, reply.text
        assert reply.headers["location"] == "/console/login"


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(("method", "path"), DATA)
async def test_data_routes_answer_401_without_a_session(
    server: RunningServer, method: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        reply = await client.request(method, path, json={})
        assert reply.status_code == 401
        assert reply.json()["error"]


# -- CSRF and Origin -----------------------------------------------------------------------------


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_state_changing_requests_need_the_sessions_csrf_token(
    server: RunningServer, console: tuple[httpx.AsyncClient, str]
) -> None:
    client, csrf = console
    name = "csrf-" + uuid.uuid4().hex[:6]
    missing = await client.post("/console/apps", data={"name": name})
    assert missing.status_code == 403
    assert "CSRF" in error_of(missing.text, "form")
    wrong = await client.post("/console/apps", data={"name": name, "csrf": "0" * 64})
    assert wrong.status_code == 403
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as other:
        others = await sign_in(other)
    assert others != csrf
    crossed = await client.post("/console/apps", data={"name": name, "csrf": others})
    assert crossed.status_code == 403
    chunk = await client.post(
        "/console/devices/import.json", json={"product_key": "x" * 32, "lines": []}
    )
    assert chunk.status_code == 403
    assert name not in (await client.get("/console/apps")).text  # nothing was created

    foreign = await client.post(
        "/console/apps",
        data={"name": name, "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    assert "Origin" in error_of(foreign.text, "form")
    same = await client.post(
        "/console/apps", data={"name": name, "csrf": csrf}, headers={"Origin": server.base_url}
    )
    assert same.status_code == 201


# -- products ------------------------------------------------------------------------------------


def _definition(product_key: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "pet_house.json").read_text())
    data["product_key"] = product_key or uuid.uuid4().hex
    return data


async def test_a_product_import_shows_its_secret_once_and_its_data_points(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, csrf = console
    data = _definition()
    key = data["product_key"]
    reply = await client.post(
        "/console/products",
        data={"csrf": csrf},
        files={"file": ("pet.json", json.dumps(data).encode(), "application/json")},
    )
    assert reply.status_code == 201, reply.text
    secret = re.search(r'id="product-secret">([0-9a-f]{32})<', reply.text)
    assert secret, reply.text
    assert key in reply.text

    page = await client.get(f"/console/products/{key}")
    assert page.status_code == 200
    for name in ("LED_OnOff", "LED_Color", "LED_R", "Motor_Speed", "Temperature"):
        assert name in page.text
    for label in ("Customize", "Yellow", "Purple", "Pink"):
        assert label in page.text
    assert "0 … 254" in page.text  # LED_R's range
    assert secret.group(1) not in page.text
    listing = await client.get("/console/products")
    assert key in listing.text
    assert secret.group(1) not in listing.text
    overview = await client.get("/console")
    assert key in overview.text
    assert secret.group(1) not in overview.text

    again = await client.post(
        "/console/products",
        data={"csrf": csrf},
        files={"file": ("pet.json", json.dumps(data).encode(), "application/json")},
    )
    assert again.status_code == 400
    assert key in error_of(again.text, "file")


async def test_a_data_template_is_imported_by_upload(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, csrf = console
    doc = template_doc()
    product_id = doc["profile"]["ProductId"]
    reply = await client.post(
        "/console/products",
        data={"csrf": csrf},
        files={"file": ("light.json", json.dumps(doc).encode(), "application/json")},
    )
    assert reply.status_code == 201, reply.text
    page = await client.get(f"/console/products/{product_id}")
    for text in ("power_switch", "brightness", "Red", "Green", "Blue", "%"):
        assert text in page.text

    created = await client.post(
        "/console/devices",
        data={"csrf": csrf, "product_key": product_id, "name": "lamp_" + uuid.uuid4().hex[:6]},
    )
    assert created.status_code == 201, created.text
    psk = re.search(r'id="device-psk">([^<]+)<', created.text)
    did = re.search(r'id="device-did">([^<]+)<', created.text)
    assert psk
    assert did
    device = await client.get(f"/console/devices/{did.group(1)}")
    assert psk.group(1) not in device.text
    assert 'name="power_switch"' in device.text  # the command form takes its properties


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not JSON\n", "is not JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is not JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'{"name": "no data points"}', ""),
    ],
)
async def test_a_product_upload_that_is_not_a_definition_is_refused_with_a_message(
    console: tuple[httpx.AsyncClient, str], content: bytes, message: str
) -> None:
    client, csrf = console
    reply = await client.post(
        "/console/products",
        data={"csrf": csrf},
        files={"file": ("upload.bin", content, "application/octet-stream")},
    )
    assert reply.status_code == 400
    error = error_of(reply.text, "file")
    assert error.startswith("file:") or error
    assert message in error


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_a_product_upload_over_the_limit_is_refused(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, csrf = console
    big = b'{"pad": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}'
    reply = await client.post(
        "/console/products",
        data={"csrf": csrf},
        files={"file": ("big.json", big, "application/json")},
    )
    assert reply.status_code == 413
    assert "larger than 4 MiB" in reply.text


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_a_product_upload_without_a_file_is_refused(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, csrf = console
    reply = await client.post(
        "/console/products", data={"csrf": csrf}, files={"other": ("x", b"1", "text/plain")}
    )
    assert reply.status_code == 400
    assert error_of(reply.text, "file")


async def test_an_unknown_product_page_is_a_page_not_a_crash(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, _ = console
    reply = await client.get("/console/products/0123456789abcdef0123456789abcdef")
    assert 400 <= reply.status_code < 500
    assert error_of(reply.text, "form")


# -- devices -------------------------------------------------------------------------------------


async def test_a_created_device_shows_its_passcode_only_on_the_result_page(
    console: tuple[httpx.AsyncClient, str], pet_house: Product
) -> None:
    client, csrf = console
    mac = "02" + uuid.uuid4().hex[:10]
    reply = await client.post(
        "/console/devices", data={"csrf": csrf, "product_key": pet_house.product_key, "mac": mac}
    )
    assert reply.status_code == 201, reply.text
    did = re.search(r'id="device-did">([^<]+)<', reply.text)
    passcode = re.search(r'id="device-passcode">([^<]+)<', reply.text)
    assert did
    assert passcode
    for path in (
        f"/console/devices?q={mac}",
        f"/console/devices?q={did.group(1)}",
        f"/console/devices?product_key={pet_house.product_key}",
        f"/console/devices/{did.group(1)}",
    ):
        page = await client.get(path)
        assert page.status_code == 200
        assert did.group(1) in page.text
        assert passcode.group(1) not in page.text, path
    colons = ":".join(mac[i : i + 2] for i in range(0, 12, 2))
    assert did.group(1) in (await client.get(f"/console/devices?q={colons}")).text
    none = await client.get("/console/devices?q=no-such-device-anywhere")
    assert did.group(1) not in none.text

    # the same MAC again: the existing device, no passcode shown
    again = await client.post(
        "/console/devices", data={"csrf": csrf, "product_key": pet_house.product_key, "mac": mac}
    )
    assert again.status_code == 200
    assert passcode.group(1) not in again.text


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"product_key": "", "mac": "02aabbccddee"}, "product_key"),
        ({"product_key": "nope", "mac": "02aabbccddee"}, "product_key"),
        ({"product_key": "0123456789abcdef0123456789abcdef", "mac": "02aabbccddee"}, "product_key"),
        ({"mac": "not-a-mac"}, "mac"),
        ({"mac": ""}, "mac"),
        ({"mac": "02aabbccddee", "passcode": "x" * 40}, "passcode"),
    ],
)
async def test_the_device_form_shows_the_apis_message_next_to_the_field(
    console: tuple[httpx.AsyncClient, str],
    pet_house: Product,
    form: dict[str, str],
    field: str,
) -> None:
    client, csrf = console
    body = {"product_key": pet_house.product_key, **form, "csrf": csrf}
    reply = await client.post("/console/devices", data=body)
    assert reply.status_code == 400, reply.text
    assert error_of(reply.text, field), reply.text


async def test_a_csv_import_creates_devices_and_reports_bad_lines(
    console: tuple[httpx.AsyncClient, str], pet_house: Product
) -> None:
    client, csrf = console
    macs = ["02" + uuid.uuid4().hex[:10] for _ in range(3)]
    csv = "mac\n" + "\n".join(macs) + "\nnot-a-mac\n\n"
    reply = await client.post(
        "/console/devices/import",
        data={"csrf": csrf, "product_key": pet_house.product_key},
        files={"file": ("devices.csv", csv.encode(), "text/csv")},
    )
    assert reply.status_code == 200, reply.text
    result = reply.text.split('id="import-result"', 1)[1].split("</div>", 1)[0]
    assert "3 created" in result
    assert "line 5" in result
    for mac in macs:
        assert mac in (await client.get(f"/console/devices?q={mac}")).text

    # the script's path: chunks of lines as JSON, with the CSRF header
    more = ["02" + uuid.uuid4().hex[:10] for _ in range(2)]
    chunk = await client.post(
        "/console/devices/import.json",
        json={
            "product_key": pet_house.product_key,
            "lines": [*more, macs[0], "zz"],
            "first_line": 7,
        },
        headers={"X-CSRF-Token": csrf},
    )
    assert chunk.status_code == 200, chunk.text
    body = chunk.json()
    assert body["created"] == 2
    assert body["existing"] == 1
    assert [failure["line"] for failure in body["failed"]] == [10]


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(
    ("content", "product", "field"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", True, "file"),
        (b"\xff\xfe\xfa", True, "file"),
        (b"02aabbccddee\n", False, "product_key"),
    ],
)
async def test_a_csv_upload_that_is_not_text_is_refused(
    console: tuple[httpx.AsyncClient, str],
    pet_house: Product,
    content: bytes,
    product: bool,
    field: str,
) -> None:
    client, csrf = console
    reply = await client.post(
        "/console/devices/import",
        data={"csrf": csrf, "product_key": pet_house.product_key if product else ""},
        files={"file": ("devices.csv", content, "text/csv")},
    )
    assert reply.status_code == 400
    if field == "file":
        assert "not a CSV" in error_of(reply.text, "file")
    else:
        assert "product_key" in reply.text.split('id="import-result"', 1)[1]


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_a_csv_upload_over_the_limit_is_refused(
    console: tuple[httpx.AsyncClient, str], pet_house: Product
) -> None:
    client, csrf = console
    big = b"02aabbccddee\n" * (4 * 1024 * 1024 // 13 + 10)
    reply = await client.post(
        "/console/devices/import",
        data={"csrf": csrf, "product_key": pet_house.product_key},
        files={"file": ("devices.csv", big, "text/csv")},
    )
    assert reply.status_code == 413
    assert "larger than 4 MiB" in reply.text


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"product_key": "0123456789abcdef0123456789abcdef", "lines": ["02aabbccddee"]},
            "product_key",
        ),
        ({"product_key": "x", "lines": "02aabbccddee"}, "lines"),
        ({"product_key": "x", "lines": ["a"] * 1001}, "lines"),
        ({"product_key": "x", "lines": [], "first_line": 0}, "first_line"),
        ({"lines": []}, "lines"),
    ],
)
async def test_a_bad_import_chunk_is_refused_naming_the_field(
    console: tuple[httpx.AsyncClient, str], body: dict[str, Any], field: str
) -> None:
    client, csrf = console
    reply = await client.post(
        "/console/devices/import.json", json=body, headers={"X-CSRF-Token": csrf}
    )
    assert reply.status_code == 400
    assert reply.json()["field"] == field


async def test_the_device_page_follows_a_real_device_and_sends_it_commands(
    server: RunningServer, console: tuple[httpx.AsyncClient, str], pet_house: Product
) -> None:
    client, csrf = console
    did, _ = register(server, pet_house)
    page = await client.get(f"/console/devices/{did}")
    assert page.status_code == 200
    assert '<span id="online-state" class="badge offline">offline</span>' in page.text
    assert '<form id="command"' in page.text
    assert 'name="LED_R"' in page.text
    assert 'max="254"' in page.text
    assert 'name="Temperature"' not in page.text  # read-only: no field
    assert '<svg class="chart" data-dp="Temperature"' in page.text
    assert '<table id="frames">' in page.text

    offline = await client.post(
        f"/console/devices/{did}/command",
        data={"csrf": csrf, "LED_R": "10"},
        headers={"Accept": "application/json"},
    )
    assert offline.status_code == 409
    assert "offline" in offline.json()["errors"]["form"]

    codec = P0Codec(pet_house.definition)
    async with MqttDevice.on_server(server, did) as device:

        async def online() -> dict[str, Any] | None:
            state: dict[str, Any] = (await client.get(f"/console/devices/{did}/state")).json()
            return state if state["online"] else None

        await eventually(online)
        await device.report(codec, {"LED_R": 5, "Temperature": 21, "Humidity": 40})

        async def reported() -> dict[str, Any] | None:
            state: dict[str, Any] = (await client.get(f"/console/devices/{did}/state")).json()
            return state if state["values"].get("Temperature") == 21 else None

        state = await eventually(reported)
        assert any(frame["kind"] == "dev2app" for frame in state["frames"])

        refused = await client.post(
            f"/console/devices/{did}/command",
            data={"csrf": csrf, "LED_R": "300"},
            headers={"Accept": "application/json"},
        )
        assert refused.status_code == 400
        assert "LED_R" in refused.json()["errors"]["LED_R"]
        not_a_number = await client.post(
            f"/console/devices/{did}/command", data={"csrf": csrf, "LED_R": "abc"}
        )
        assert not_a_number.status_code == 400
        assert "not a number" in error_of(not_a_number.text, "LED_R")
        bad_label = await client.post(
            f"/console/devices/{did}/command",
            data={"csrf": csrf, "LED_Color": "Violet"},
            headers={"Accept": "application/json"},
        )
        assert "LED_Color" in bad_label.json()["errors"]

        sent = await client.post(
            f"/console/devices/{did}/command",
            data={"csrf": csrf, "LED_R": "77", "LED_Color": "Purple"},
        )
        assert sent.status_code == 200, sent.text
        assert "Command sent" in sent.text
        topic, frame = await device.next_frame()
        assert topic == f"app2dev/{did}/cloud"
        decoded = codec.decode(frame.payload)
        assert decoded.values["LED_R"] == 77
        assert decoded.values["LED_Color"] == "Purple"

        # disabled: refused, and the page says so
        disabled = await client.post(f"/console/devices/{did}/disable", data={"csrf": csrf})
        assert disabled.status_code == 303
        after = await client.get(disabled.headers["location"])
        assert 'class="notice"' in after.text
        assert 'id="disabled-state"' in after.text
        refused_disabled = await client.post(
            f"/console/devices/{did}/command",
            data={"csrf": csrf, "LED_R": "1"},
            headers={"Accept": "application/json"},
        )
        assert refused_disabled.status_code == 409
        enabled = await client.post(f"/console/devices/{did}/enable", data={"csrf": csrf})
        assert enabled.status_code == 303
        assert 'id="disabled-state"' not in (await client.get(f"/console/devices/{did}")).text

    chart = await client.get(f"/console/devices/{did}?range=1h")
    assert re.search(
        r'data-dp="Temperature"[^>]*>\s*<rect[^>]*></rect>\s*<polyline points="[0-9., ]+"',
        chart.text,
    )
    assert (await client.get(f"/console/devices/{did}?range=bogus")).status_code == 200


async def test_an_unknown_device_is_a_404_page_and_a_404_json(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, _csrf = console
    page = await client.get("/console/devices/abcdefghijklmnopqrstuv")
    assert page.status_code == 404
    assert error_of(page.text, "form")
    data = await client.get("/console/devices/abcdefghijklmnopqrstuv/state")
    assert data.status_code == 404
    assert data.json()["error"]


# -- apps ----------------------------------------------------------------------------------------


async def test_app_secrets_are_shown_only_when_created_or_rotated(
    console: tuple[httpx.AsyncClient, str],
) -> None:
    client, csrf = console
    name = "console-" + uuid.uuid4().hex[:6]
    created = await client.post("/console/apps", data={"csrf": csrf, "name": name})
    assert created.status_code == 201
    secret = re.search(r'id="appsecret">([^<]+)<', created.text)
    appid = re.search(r'id="appid">([^<]+)<', created.text)
    assert secret
    assert appid
    listing = await client.get("/console/apps")
    assert appid.group(1) in listing.text
    assert secret.group(1) not in listing.text

    rotated = await client.post(f"/console/apps/{appid.group(1)}/rotate", data={"csrf": csrf})
    assert rotated.status_code == 200
    new = re.search(r'id="appsecret">([^<]+)<', rotated.text)
    assert new
    assert new.group(1) != secret.group(1)
    assert new.group(1) not in (await client.get("/console/apps")).text

    empty = await client.post("/console/apps", data={"csrf": csrf, "name": " "})
    assert empty.status_code == 400
    assert error_of(empty.text, "name").startswith("name:")
    long = await client.post("/console/apps", data={"csrf": csrf, "name": "x" * 200})
    assert long.status_code == 400
    assert error_of(long.text, "name")
    unknown = await client.post("/console/apps/no-such-app/rotate", data={"csrf": csrf})
    assert unknown.status_code == 404


# -- users and schedules -------------------------------------------------------------------------


async def test_a_user_is_found_shown_with_devices_and_signed_out_everywhere(
    server: RunningServer,
    app: dict[str, str],
    console: tuple[httpx.AsyncClient, str],
    pet_house: Product,
) -> None:
    client, csrf = console
    user = sign_up(server, app["appid"])
    did, _ = register(server, pet_house)
    await bind(server, user, did)
    listing = await client.get(f"/console/users?q={user.uid}")
    assert listing.status_code == 200
    assert f'href="/console/users/{user.uid}"' in listing.text
    page = await client.get(f"/console/users/{user.uid}")
    assert did in page.text
    assert 'id="sign-out-everywhere"' in page.text

    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as app_client:
        assert (await app_client.get("/app/bindings", headers=user.headers())).status_code == 200
        out = await client.post(f"/console/users/{user.uid}/sign-out", data={"csrf": csrf})
        assert out.status_code == 303
        assert 'class="notice"' in (await client.get(out.headers["location"])).text

        async def refused() -> bool:
            reply = await app_client.get("/app/bindings", headers=user.headers())
            return reply.status_code != 200

        assert await eventually(refused)

    assert (await client.get("/console/users/no-such-user")).status_code == 404
    long = await client.get("/console/users", params={"q": "x" * 1000})
    assert long.status_code == 400
    assert error_of(long.text, "q")


async def test_the_schedules_pages_answer(console: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = console
    page = await client.get("/console/schedules")
    assert page.status_code == 200
    assert '<table id="runs">' in page.text
    assert (await client.get("/console/schedules/no-such-schedule")).status_code == 404


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
async def test_static_assets_ship_in_the_package(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        css = await client.get("/console/static/console.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        js = await client.get("/console/static/console.js")
        assert js.status_code == 200
        assert "import-progress" in js.text
        assert (await client.get("/console/static/../app.py")).status_code == 404
        assert (await client.get("/console/static/nothing.js")).status_code == 404


@pytest.mark.backend("sqlite")  # the HTTP edge; the data it reads is tested on both
@pytest.mark.parametrize(
    "path",
    [
        "/console/devices?q=%00",
        "/console/devices?q=%25_%5C&page=abc&product_key=zz",
        "/console/devices?product_key=%00",
        "/console/users?q=%00",
        "/console/devices/%00",
        "/console/products/%00",
        "/console/schedules/%00",
        "/console/users/%00",
    ],
)
async def test_odd_input_gets_a_page_not_a_crash(
    console: tuple[httpx.AsyncClient, str], path: str
) -> None:
    client, _ = console
    reply = await client.get(path)
    assert reply.status_code in (200, 400, 404), reply.text
    assert reply.headers["content-type"].startswith("text/html")


async def test_nul_characters_in_forms_and_uploads_are_refused(
    console: tuple[httpx.AsyncClient, str], pet_house: Product
) -> None:
    client, csrf = console
    app = await client.post("/console/apps", data={"csrf": csrf, "name": "a\x00b"})
    assert app.status_code == 400
    assert "NUL" in error_of(app.text, "form")
    data = _definition()
    data["name"] = "pet\x00house"
    product = await client.post(
        "/console/products",
        data={"csrf": csrf},
        files={"file": ("pet.json", json.dumps(data).encode(), "application/json")},
    )
    assert product.status_code == 400
    assert "NUL" in error_of(product.text, "file")
    chunk = await client.post(
        "/console/devices/import.json",
        json={"product_key": pet_house.product_key, "lines": ["a\x00"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert chunk.status_code == 400
    assert chunk.json()["field"] == "lines"
    chunk = await client.post(
        "/console/devices/import.json",
        json={"product_key": "\x00", "lines": []},
        headers={"X-CSRF-Token": csrf},
    )
    assert chunk.json()["field"] == "product_key"
