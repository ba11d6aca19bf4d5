"""TLS against a real ``iotcloud serve`` holding a certificate from a throwaway CA: HTTPS and WSS
on the HTTPS port (the same app as plain HTTP), Gizwits and Tencent data-template devices over
MQTT over TLS, the TLS ports handed out in ``DeviceItem``, clients that do not trust the CA or do
not speak TLS turned away without harming the server, and TLS settings that cannot work refused
at start-up.

SQLite only: nothing here differs per database.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from websockets.asyncio.client import connect

from iotcloud.codecs import P0Codec
from iotcloud.codecs.frame import CMD_CONTROL
from tests.accounts import APP_ID, USER_TOKEN, User, bind, sign_up
from tests.devices import PASSCODE, MqttDevice, Product, eventually, import_product, mqtt_port
from tests.pg import free_port
from tests.server import IOTCLOUD, RunningServer, server_env, serving
from tests.thing_devices import ThingDevice, create_thing_device, import_thing_product
from tests.tls import ThrowawayCA

WAIT = 10.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_server(
    ca: ThrowawayCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server with TLS on; it must stop with status 0 and no traceback in its log."""
    with serving(
        tmp_path_factory.mktemp("tls-server"),
        None,
        tls_cert=ca.chain,
        tls_key=ca.key,
        https_port=free_port(),
        mqtts_port=free_port(),
        rate_limit_per_address=0,
        rate_limit_per_app=0,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def appid(tls_server: RunningServer) -> str:
    return tls_server.create_app("TLS")["appid"]


@pytest.fixture(scope="module")
def pet_house(tls_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(tls_server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture
async def https(tls_server: RunningServer, ca: ThrowawayCA) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTPS client trusting the throwaway CA only."""
    async with https_client(tls_server, ca) as client:
        yield client


def https_port(server: RunningServer) -> int:
    return int(server.env["IOTCLOUD_HTTPS_PORT"])


def mqtts_port(server: RunningServer) -> int:
    return int(server.env["IOTCLOUD_MQTTS_PORT"])


def https_client(
    server: RunningServer, ca: ThrowawayCA, host: str = "127.0.0.1"
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"https://{host}:{https_port(server)}", verify=ca.client_context(), timeout=30
    )


def wss_url(server: RunningServer) -> str:
    return f"wss://localhost:{https_port(server)}/ws/app/v1"


async def register_over_https(https: httpx.AsyncClient, product: Product) -> str:
    """Register a device as GAgent does, over HTTPS; its did."""
    mac = "02" + uuid.uuid4().hex[:10]
    reply = await https.post(
        "/dev/devices",
        content=f"passcode={PASSCODE}&mac={mac}&product_key={product.product_key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 201, reply.text
    return reply.text.split("did=", 1)[1][:22]


def no_connack(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes ``sock`` (b"" when it resets it)."""
    sock.settimeout(WAIT)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


# -- HTTPS and WSS ---------------------------------------------------------------------------------


async def test_https_is_verified_against_the_ca_and_serves_the_same_app_as_http(
    tls_server: RunningServer, ca: ThrowawayCA, appid: str
) -> None:
    for host in ("127.0.0.1", "localhost"):
        async with https_client(tls_server, ca, host) as client:
            reply = await client.get("/status")
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"]["version"]
    async with https_client(tls_server, ca) as client:
        signed_up = await client.post(
            "/app/users",
            json={"username": "u" + uuid.uuid4().hex[:12], "password": "pw-123456"},
            headers={APP_ID: appid},
        )
    assert signed_up.status_code == 201, signed_up.text
    # the plain port serves the same application: the token made over HTTPS works there
    with tls_server.client(appid) as plain:
        profile = plain.get("/app/users", headers={USER_TOKEN: signed_up.json()["token"]})
    assert profile.status_code == 200, profile.text
    assert profile.json()["uid"] == signed_up.json()["uid"]


async def test_a_gizwits_device_over_tls_reports_to_an_app_on_wss_and_takes_its_command(
    tls_server: RunningServer,
    ca: ThrowawayCA,
    appid: str,
    pet_house: Product,
    https: httpx.AsyncClient,
) -> None:
    codec = P0Codec(pet_house.definition)
    user = sign_up(tls_server, appid)
    did = await register_over_https(https, pet_house)
    provisioned = await https.get(f"/dev/devices/{did}")
    assert provisioned.status_code == 200, provisioned.text
    assert "host=127.0.0.1&" in provisioned.text
    bound = await https.post(
        "/app/bindings",
        json={"devices": [{"did": did, "passcode": PASSCODE}]},
        headers=user.headers(),
    )
    assert bound.json() == {"success": [did], "failed": []}, bound.text

    # the device item names the TLS ports next to the plain ones
    item = (await https.get(f"/app/devices/{did}", headers=user.headers())).json()
    assert (item["host"], item["port"], item["port_s"], item["ws_port"], item["wss_port"]) == (
        "127.0.0.1",
        mqtt_port(tls_server),
        mqtts_port(tls_server),
        tls_server.http_port,
        https_port(tls_server),
    )

    device = MqttDevice(
        mqtts_port(tls_server),
        did,
        PASSCODE,
        protocol=aiomqtt.ProtocolVersion.V31,
        tls=ca.client_context(),
    )
    async with (
        connect(wss_url(tls_server), ssl=ca.client_context(), proxy=None, open_timeout=WAIT) as ws,
        device,
    ):
        await ws.send(json.dumps({"cmd": "login_req", "data": login_data(user)}))
        assert json.loads(await ws.recv()) == {"cmd": "login_res", "data": {"success": True}}

        async def online() -> bool:
            reply = await https.get(f"/app/devices/{did}", headers=user.headers())
            return bool(reply.json()["is_online"])

        await eventually(online)
        await device.report(codec, {"LED_OnOff": False, "LED_Color": "Pink", "LED_R": 10})
        while True:
            pushed = json.loads(await ws.recv())
            if pushed["cmd"] == "s2c_noti":
                break
        assert pushed["data"]["did"] == did
        assert (pushed["data"]["attrs"]["LED_R"], pushed["data"]["attrs"]["LED_Color"]) == (
            10,
            "Pink",
        )

        reply = await https.post(
            f"/app/control/{did}", json={"attrs": {"LED_OnOff": True}}, headers=user.headers()
        )
        assert reply.status_code == 200, reply.text
        topic, frame = await device.next_frame()
    assert topic == f"app2dev/{did}/cloud"
    assert frame.cmd == CMD_CONTROL
    assert codec.decode(frame.payload).values == {"LED_OnOff": True}


def login_data(user: User) -> dict[str, Any]:
    return {
        "appid": user.appid,
        "uid": user.uid,
        "token": user.token,
        "p0_type": "attrs_v4",
        "heartbeat_interval": 180,
    }


async def test_a_tencent_device_over_tls_reports_and_takes_a_control(
    tls_server: RunningServer, ca: ThrowawayCA, appid: str, https: httpx.AsyncClient
) -> None:
    product_id = await import_thing_product(tls_server)
    identity = await create_thing_device(tls_server, product_id)
    user = sign_up(tls_server, appid)
    await bind(tls_server, user, identity.did)
    names = {"ProductId": identity.product_id, "DeviceName": identity.name}

    async def tokenapi(action: str, **params: Any) -> dict[str, Any]:
        body = {
            "Action": action,
            "RequestId": "r-" + uuid.uuid4().hex[:8],
            "AccessToken": user.token,
        }
        reply = await https.post("/api/exploreropen/tokenapi", json={**body, **params})
        assert reply.status_code == 200, reply.text
        response: dict[str, Any] = reply.json()["Response"]
        assert "Error" not in response, response
        return response

    async with ThingDevice(mqtts_port(tls_server), identity, tls=ca.client_context()) as thing:
        report = await thing.report({"brightness": 42, "power_switch": 0})
        assert (report["method"], report["code"]) == ("report_reply", 0)

        async def online() -> bool:
            response = await tokenapi(
                "AppGetDeviceStatuses", DeviceIds=[f"{identity.product_id}/{identity.name}"]
            )
            return bool(response["DeviceStatuses"][0]["Online"])

        await eventually(online)
        data = json.loads((await tokenapi("AppGetDeviceData", **names))["Data"])
        assert data["brightness"]["Value"] == 42
        await tokenapi("AppControlDeviceData", **names, Data='{"power_switch": 1}')
        topic, control = await thing.next_message()
    assert topic == f"$thing/down/property/{identity.product_id}/{identity.name}"
    assert (control["method"], control["params"]) == ("control", {"power_switch": 1})


# -- who is turned away ----------------------------------------------------------------------------


async def test_clients_that_do_not_trust_the_ca_are_refused(
    tls_server: RunningServer, ca: ThrowawayCA, pet_house: Product, https: httpx.AsyncClient
) -> None:
    stranger = ssl.create_default_context()  # the system's CAs, not the throwaway one
    async with httpx.AsyncClient(verify=stranger, timeout=WAIT) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"https://127.0.0.1:{https_port(tls_server)}/status")
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(wss_url(tls_server), ssl=stranger, proxy=None, open_timeout=WAIT):
            pass
    did = await register_over_https(https, pet_house)
    with pytest.raises(aiomqtt.MqttError):
        async with MqttDevice(mqtts_port(tls_server), did, PASSCODE, tls=stranger):
            pass
    # the device itself, trusting the CA, is let in
    async with MqttDevice(mqtts_port(tls_server), did, PASSCODE, tls=ca.client_context()):
        pass


async def test_plain_clients_on_the_tls_ports_are_closed_and_the_server_carries_on(
    tls_server: RunningServer, ca: ThrowawayCA, pet_house: Product, https: httpx.AsyncClient
) -> None:
    did = await register_over_https(https, pet_house)
    # CONNECT (MQTT 3.1.1, clean session, keep-alive 60) with client id = user name = did
    fields = b"".join(len(text).to_bytes(2, "big") + text for text in (did.encode(),) * 2)
    fields += len(PASSCODE).to_bytes(2, "big") + PASSCODE.encode()
    body = b"\x00\x04MQTT\x04\xc2\x00\x3c" + fields
    connect_packet = bytes((0x10, len(body))) + body
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", mqtts_port(tls_server)), timeout=WAIT) as sock:
            sock.sendall(connect_packet)
            assert not no_connack(sock).startswith(b"\x20")
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(timeout=WAIT) as plain:
            await plain.get(f"http://127.0.0.1:{https_port(tls_server)}/status")

    # the same device over TLS, and both kinds of HTTP, are served as before
    async with MqttDevice(mqtts_port(tls_server), did, PASSCODE, tls=ca.client_context()):
        pass
    assert (await https.get("/status")).status_code == 200
    with tls_server.client() as plain:
        assert plain.get("/status").status_code == 200


# -- settings that cannot work -----------------------------------------------------------------


def serve_once(tmp_path: Path, **settings: Any) -> subprocess.CompletedProcess[str]:
    """Run ``iotcloud serve`` with ``settings``, expecting it to refuse to start."""
    env = server_env(tmp_path, None, **settings)
    return subprocess.run(
        [*IOTCLOUD, "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tls_cert": "chain"}, "IOTCLOUD_TLS_CERT is set but IOTCLOUD_TLS_KEY is not"),
        ({"tls_cert": "missing", "tls_key": "key"}, "IOTCLOUD_TLS_CERT: {missing} is not a file"),
    ],
    ids=["cert-only", "missing-file"],
)
def test_tls_settings_that_cannot_work_stop_the_server_at_start_up(
    ca: ThrowawayCA, tmp_path: Path, files: dict[str, str], message: str
) -> None:
    paths = {"chain": ca.chain, "key": ca.key, "missing": tmp_path / "missing.pem"}
    result = serve_once(tmp_path, **{name: paths[which] for name, which in files.items()})
    assert result.returncode != 0, result.stderr
    assert message.format(**paths) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_an_https_port_in_use_stops_the_server_at_start_up(ca: ThrowawayCA, tmp_path: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:  # noqa: S104 - where the server listens
        port = taken.getsockname()[1]
        result = serve_once(tmp_path, tls_cert=ca.chain, tls_key=ca.key, https_port=port)
    assert result.returncode != 0, result.stderr
    assert f"IOTCLOUD_HTTPS_PORT: cannot listen on 0.0.0.0:{port}" in result.stderr, result.stderr
    assert not (tmp_path / "iotcloud.db").exists()  # refused before anything started
