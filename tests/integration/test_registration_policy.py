"""Registration policies against a real ``iotcloud serve``: a device cannot be taken over by
someone who knows only its product key and MAC.

* ``open``: registering a known MAC with a new passcode is a new ownership — the device keeps
  its did, every binding ends (bound WebSocket sessions hear ``s2c_binding_changed``), and the
  new owner sees history and the frame log only from then on.
* ``signed``: only the AES-encrypted registration and provision; the plain calls are refused
  with 9047/9048 and written to the device's frame log.
* ``preprovisioned``: only devices an operator created, with their own passcode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest

from iotcloud.domain.registration import decrypt, encrypt
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.telemetry import FrameEvent, StateChange, TelemetryRepository
from tests.accounts import User, sign_up
from tests.devices import mqtt_port
from tests.integration.test_websocket import app_socket
from tests.server import ADMIN_TOKEN, RunningServer, serving

pytestmark = pytest.mark.backend("sqlite")  # storage rules: tests/contract/test_registration.py

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datapoints"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- helpers ---------------------------------------------------------------------------------------


def new_product(
    server: RunningServer, tmp_path: Path, registration: str | None = None, *, cli: bool = False
) -> tuple[str, str]:
    """Import the pet house fixture under a fresh key, with the CLI or the operator API:
    ``(product_key, product_secret)``."""
    data = json.loads((FIXTURES / "pet_house.json").read_text())
    data["product_key"] = uuid.uuid4().hex
    if cli:
        path = tmp_path / f"{data['product_key']}.json"
        path.write_text(json.dumps(data))
        options = ["--registration", registration] if registration else []
        made = json.loads(server.cli("product", "import", str(path), "--json", *options).stdout)
    else:
        params = {"registration": registration} if registration else {}
        with server.operator() as admin:
            reply = admin.post("/admin/v1/products", json=data, params=params)
        assert reply.status_code == 201, reply.text
        made = reply.json()
    return made["product_key"], made["product_secret"]


def new_mac() -> str:
    return "02" + uuid.uuid4().hex[:10]


def registration(product_key: str, mac: str, passcode: str) -> str:
    """The form body of ``POST /dev/devices``, as GAgent sends it."""
    return f"passcode={passcode}&mac={mac}&product_key={product_key}"


def register(http: httpx.Client, product_key: str, mac: str, passcode: str) -> httpx.Response:
    return http.post("/dev/devices", content=registration(product_key, mac, passcode), headers=FORM)


def register_encrypted(
    http: httpx.Client, product_key: str, secret: str, text: str
) -> httpx.Response:
    return http.post(
        f"/dev/{product_key}/device", content=f"data={encrypt(secret, text)}", headers=FORM
    )


def did_of(reply: httpx.Response) -> str:
    assert reply.status_code == 201, reply.text
    return reply.text.split("did=", 1)[1][:22]


def bind(http: httpx.Client, user: User, did: str, passcode: str) -> httpx.Response:
    return http.post(
        "/app/bindings",
        json={"devices": [{"did": did, "passcode": passcode}]},
        headers=user.headers(),
    )


def bound_dids(http: httpx.Client, user: User) -> set[str]:
    reply = http.get("/app/bindings", headers=user.headers())
    assert reply.status_code == 200, reply.text
    return {device["did"] for device in reply.json()["devices"]}


def error(reply: httpx.Response, status: int, code: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["error_code"] == code, body
    detail: str = body["detail_message"]
    return detail


async def seed_past(server: RunningServer, did: str, at: datetime) -> None:
    """A report and an online event of ``did`` at ``at``, written where the server reads them."""
    async with Database(server.database_url) as db, db.session() as session:
        device = await DeviceRepository(session).by_did(did)
        assert device is not None
        repo = TelemetryRepository(session)
        await repo.apply_states([StateChange(device.id, at, {"Temperature": 21})], history=True)
        await repo.log_frames([FrameEvent(device.id, at, "dev_online", detail="10.0.0.9:4000")])


def window(hours: float = 3) -> dict[str, int]:
    now = int(time.time()) + 1  # seconds: the latest entry lies within this one
    return {"start_time": now - int(hours * 3600), "end_time": now}


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=15) as client:
        yield client


# -- open -----------------------------------------------------------------------------------------


def test_a_reboot_with_the_same_passcode_keeps_the_did_and_the_bindings(
    server: RunningServer, app: dict[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path)
    mac = new_mac()
    did = did_of(register(http, product_key, mac, "OWNERPASS1"))
    owner = sign_up(server, app["appid"])
    assert bind(http, owner, did, "OWNERPASS1").json()["success"] == [did]

    assert did_of(register(http, product_key, mac, "OWNERPASS1")) == did
    assert bound_dids(http, owner) == {did}


async def register_heard(
    server: RunningServer, user: User, product_key: str, mac: str, passcode: str
) -> str:
    """Register ``mac`` with ``passcode`` while ``user`` holds a WebSocket: the did, once the
    socket has heard its binding end."""
    async with (
        app_socket(server, user) as socket,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        reply = await http.post(
            "/dev/devices",
            content=registration(product_key, mac, passcode),
            headers=FORM,
        )
        did = did_of(reply)
        told = await socket.until(lambda m: m["cmd"] == "s2c_binding_changed")
        assert told["data"] == {"did": did, "bind": False}
    return did


def test_a_new_passcode_for_a_known_mac_ends_every_binding_and_hides_the_past(
    server: RunningServer, app: dict[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path)
    mac = new_mac()
    did = did_of(register(http, product_key, mac, "OWNERPASS1"))
    owner, guest = sign_up(server, app["appid"]), sign_up(server, app["appid"])
    for user in (owner, guest):
        assert bind(http, user, did, "OWNERPASS1").json()["success"] == [did]
    asyncio.run(seed_past(server, did, datetime.now(UTC) - timedelta(hours=1)))
    history = http.get(f"/app/devdata/{did}", headers=owner.headers()).json()
    assert history["meta"]["total"] == 1  # the owner sees the past before any takeover

    # someone who read the MAC off the label registers it with a passcode of their own
    attacker = sign_up(server, app["appid"])
    assert asyncio.run(register_heard(server, owner, product_key, mac, "ATTACKER01")) == did

    for user in (owner, guest):
        assert bound_dids(http, user) == set()
        error(http.get(f"/app/devices/{did}", headers=user.headers()), 401, 9017)
    # the old passcode no longer binds; the new one does, and shows nothing of the past
    assert bind(http, owner, did, "OWNERPASS1").json()["failed"] == [did]
    assert bind(http, attacker, did, "ATTACKER01").json()["success"] == [did]
    history = http.get(f"/app/devdata/{did}", headers=attacker.headers()).json()
    assert history["meta"]["total"] == 0
    assert history["objects"] == []
    frames = http.get(
        f"/app/devices/{did}/raw_data",
        params={"type": "online", **window()},
        headers=attacker.headers(),
    ).json()
    assert frames["objects"] == []
    ms = int(time.time() * 1000)
    aggregated = http.get(
        f"/app/devdata/{did}/agg_data",
        params={
            "start_ts": ms - 3 * 3600_000,
            "end_ts": ms,
            "attrs": "Temperature",
            "aggregator": "max",
            "unit": "hours",
        },
        headers=attacker.headers(),
    )
    assert aggregated.status_code == 200, aggregated.text
    assert aggregated.json()["data"] == []

    # the real device reboots and registers with its own passcode: the taker's binding ends
    assert did_of(register(http, product_key, mac, "OWNERPASS1")) == did
    assert bound_dids(http, attacker) == set()


def test_a_device_can_still_give_up_its_did_with_its_passcode(
    server: RunningServer, http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path)
    did = did_of(register(http, product_key, new_mac(), "OWNERPASS1"))
    wrong = http.request("DELETE", "/dev/devices", content=f"did={did}&passcode=NOPE", headers=FORM)
    error(wrong, 400, 9016)
    right = http.request(
        "DELETE", "/dev/devices", content=f"did={did}&passcode=OWNERPASS1", headers=FORM
    )
    assert right.status_code == 200, right.text


# -- signed ---------------------------------------------------------------------------------------


def test_a_signed_product_takes_only_the_encrypted_registration_and_provision(
    server: RunningServer, app: dict[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    product_key, secret = new_product(server, tmp_path, "signed", cli=True)
    mac = new_mac()
    detail = error(register(http, product_key, mac, "PLAINPASS1"), 403, 9047)
    assert f"/dev/{product_key}/device" in detail

    reply = register_encrypted(
        http, product_key, secret, f"mac={mac}&passcode=SIGNED0001&type=normal"
    )
    assert reply.status_code == 201, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    answer = decrypt(secret, reply.text)
    assert answer.startswith("did=")
    did = answer.removeprefix("did=")
    assert len(did) == 22
    # registering again, encrypted, with the same passcode: the same did
    again = register_encrypted(http, product_key, secret, f"mac={mac}&passcode=SIGNED0001")
    assert decrypt(secret, again.text) == f"did={did}"

    provision = http.get(f"/dev/{product_key}/device", params={"did": encrypt(secret, did)})
    assert provision.status_code == 200, provision.text
    where = decrypt(secret, provision.text)
    assert where.startswith("host=")
    assert "&port=" in where
    assert "&server_ts=" in where
    by_prefix = http.get(
        f"/dev/{product_key}/device", params={"did": encrypt(secret, f"did={did}")}
    )
    assert decrypt(secret, by_prefix.text).startswith("host=")

    error(http.get(f"/dev/devices/{did}"), 403, 9048)
    plain_delete = http.request(
        "DELETE", "/dev/devices", content=f"did={did}&passcode=SIGNED0001", headers=FORM
    )
    error(plain_delete, 403, 9047)

    # the refusals are in the device's frame log, with the caller's address
    owner = sign_up(server, app["appid"])
    assert bind(http, owner, did, "SIGNED0001").json()["success"] == [did]
    frames = http.get(
        f"/app/devices/{did}/raw_data",
        params={"type": "online", **window()},
        headers=owner.headers(),
    ).json()
    refused = [o for o in frames["objects"] if o["type"] == "dev_refused"]
    assert {o["reason"] for o in refused} >= {"plain provision", "plain delete"}
    assert {o["ip"] for o in refused} == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ("zz", "hex"),
        ("00" * 15, "16-byte"),
        ("00" * 16, "product secret"),  # decrypts to garbage: the padding is wrong
        ("ab" * 2000, "longer than"),
    ],
)
def test_an_encrypted_registration_that_is_not_one_is_a_form_error(
    server: RunningServer, http: httpx.Client, tmp_path: Path, data: str, names: str
) -> None:
    product_key, _ = new_product(server, tmp_path, "signed")
    reply = http.post(f"/dev/{product_key}/device", content=f"data={data}", headers=FORM)
    detail = error(reply, 400, 9015)
    assert detail.startswith("data:")
    assert names in detail


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("passcode=SIGNED0001", "data.mac"),
        ("mac=020000000001", "data.passcode"),
        ("mac=nope&passcode=SIGNED0001", "data.mac"),
        ("mac=020000000001&passcode=SIGNED0001&type=gateway", "data.type"),
        ("mac=020000000001&passcode=SIGNED0001&extra=1ff", "data.extra"),
    ],
)
def test_an_encrypted_registration_names_its_bad_field(
    server: RunningServer, http: httpx.Client, tmp_path: Path, text: str, field: str
) -> None:
    product_key, secret = new_product(server, tmp_path, "signed")
    detail = error(register_encrypted(http, product_key, secret, text), 400, 9015)
    assert detail.startswith(f"{field}:"), detail


def test_a_registration_encrypted_with_another_products_secret_is_refused(
    server: RunningServer, http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path, "signed")
    _, other_secret = new_product(server, tmp_path)
    text = f"mac={new_mac()}&passcode=SIGNED0001"
    detail = error(register_encrypted(http, product_key, other_secret, text), 400, 9015)
    assert "product secret" in detail
    unknown = register_encrypted(http, uuid.uuid4().hex, other_secret, text)
    error(unknown, 400, 9002)


def test_an_encrypted_provision_of_another_products_device_is_not_found(
    server: RunningServer, http: httpx.Client, tmp_path: Path
) -> None:
    product_key, secret = new_product(server, tmp_path, "signed")
    other_key, _ = new_product(server, tmp_path)
    stranger = did_of(register(http, other_key, new_mac(), "OTHERPASS1"))
    reply = http.get(f"/dev/{product_key}/device", params={"did": encrypt(secret, stranger)})
    error(reply, 404, 9014)
    error(http.get(f"/dev/{product_key}/device"), 400, 9015)


# -- preprovisioned -------------------------------------------------------------------------------


def test_a_preprovisioned_product_registers_only_its_operators_devices_with_their_passcode(
    server: RunningServer, http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path)
    early_mac = new_mac()
    early = did_of(register(http, product_key, early_mac, "SELFMADE01"))  # while still open
    made = json.loads(
        server.cli(
            "device", "create", "--product-key", product_key, "--mac", new_mac(), "--json"
        ).stdout
    )
    updated = json.loads(
        server.cli(
            "product", "update", product_key, "--registration", "preprovisioned", "--json"
        ).stdout
    )
    assert updated["registration"] == "preprovisioned"

    assert "has none with mac" in error(
        register(http, product_key, new_mac(), "ANYPASS001"), 404, 9014
    )
    error(register(http, product_key, early_mac, "SELFMADE01"), 404, 9014)  # not the operator's
    wrong = error(register(http, product_key, made["mac"], "SWAPPED001"), 400, 9016)
    assert "cannot be changed" in wrong
    assert did_of(register(http, product_key, made["mac"], made["passcode"])) == made["did"]
    # the refused swap changed nothing: the provisioned passcode still gives the same did
    assert did_of(register(http, product_key, made["mac"], made["passcode"])) == made["did"]
    assert early != made["did"]


def test_the_operator_api_and_cli_change_the_policy_and_refuse_bad_values(
    server: RunningServer, http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path, cli=True)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    patched = http.patch(
        f"/admin/v1/products/{product_key}", json={"registration": "signed"}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["registration"] == "signed"
    listed = {p["product_key"]: p for p in http.get("/admin/v1/products", headers=admin).json()}
    assert listed[product_key]["registration"] == "signed"
    error(register(http, product_key, new_mac(), "PLAINPASS1"), 403, 9047)

    for body, field in (
        ({"registration": "closed"}, "registration"),
        ({}, "registration"),
        ({"registration": "open", "name": "x"}, "name"),
    ):
        reply = http.patch(f"/admin/v1/products/{product_key}", json=body, headers=admin)
        assert error(reply, 400, 9015).startswith(f"{field}:")
    error(
        http.patch(
            f"/admin/v1/products/{uuid.uuid4().hex}", json={"registration": "open"}, headers=admin
        ),
        400,
        9002,
    )
    unauthorised = http.patch(f"/admin/v1/products/{product_key}", json={"registration": "open"})
    assert unauthorised.status_code == 401

    refused = server.cli("product", "update", product_key, "--registration", "closed", check=False)
    assert refused.returncode != 0
    assert "registration" in refused.stderr
    data = json.loads((FIXTURES / "pet_house.json").read_text())
    replaced = http.post(
        "/admin/v1/products",
        json={**data, "product_key": product_key},
        params={"replace": "true"},
        headers=admin,
    )
    assert replaced.status_code == 200, replaced.text
    shown = http.get(f"/admin/v1/products/{product_key}", headers=admin).json()
    assert shown["registration"] == "signed"  # a replaced product keeps its policy


# -- devdata latest behind a binding ---------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server where ``/app/devdata/{did}/latest`` needs a bound user's token."""
    with serving(tmp_path_factory.mktemp("strict"), None, devdata_require_binding=True) as running:
        yield running


def test_latest_values_can_be_made_to_require_a_bound_users_token(
    strict: RunningServer, tmp_path: Path
) -> None:
    app = strict.create_app("Strict")
    product_key, _ = new_product(strict, tmp_path)
    with httpx.Client(base_url=strict.base_url, timeout=15) as http:
        did = did_of(register(http, product_key, new_mac(), "OWNERPASS1"))
        owner, stranger = sign_up(strict, app["appid"]), sign_up(strict, app["appid"])
        assert bind(http, owner, did, "OWNERPASS1").json()["success"] == [did]
        path = f"/app/devdata/{did}/latest"
        error(http.get(path, headers={"X-Gizwits-Application-Id": app["appid"]}), 400, 9004)
        error(
            http.get(path, headers={**owner.headers(), "X-Gizwits-User-token": "x" * 32}), 400, 9004
        )
        error(http.get(path, headers=stranger.headers()), 401, 9017)
        error(http.get(f"/app/devdata/{'x' * 22}/latest", headers=owner.headers()), 404, 9014)
        reply = http.get(path, headers=owner.headers())
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"did": did, "updated_at": 0, "attr": {}}


def test_latest_values_need_only_an_appid_by_default(
    server: RunningServer, app: dict[str, str], http: httpx.Client, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path)
    did = did_of(register(http, product_key, new_mac(), "OWNERPASS1"))
    reply = http.get(
        f"/app/devdata/{did}/latest", headers={"X-Gizwits-Application-Id": app["appid"]}
    )
    assert reply.status_code == 200, reply.text


async def drain(client: aiomqtt.Client) -> None:
    async for _ in client.messages:
        pass


async def test_a_new_owner_disconnects_the_session_signed_in_with_the_old_passcode(
    server: RunningServer, tmp_path: Path
) -> None:
    product_key, _ = new_product(server, tmp_path)
    mac = new_mac()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        reply = await http.post(
            "/dev/devices",
            content=registration(product_key, mac, "OWNERPASS1"),
            headers=FORM,
        )
        did = did_of(reply)
        client = aiomqtt.Client(
            "127.0.0.1", mqtt_port(server), identifier=did, username=did, password="OWNERPASS1"
        )
        await client.__aenter__()
        try:
            await client.subscribe(f"app2dev/{did}/#")
            taken = await http.post(
                "/dev/devices",
                content=registration(product_key, mac, "ATTACKER01"),
                headers=FORM,
            )
            assert did_of(taken) == did
            async with asyncio.timeout(10):
                with pytest.raises(aiomqtt.MqttError):  # the broker closed the old session
                    await drain(client)
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)


def test_once_a_device_of_an_open_product_registered_encrypted_its_plain_calls_are_refused(
    server: RunningServer, http: httpx.Client, tmp_path: Path
) -> None:
    product_key, secret = new_product(server, tmp_path)  # open
    mac = new_mac()
    did = did_of(register(http, product_key, mac, "PLAINPASS1"))  # plain first: still open
    signed = register_encrypted(http, product_key, secret, f"mac={mac}&passcode=PLAINPASS1")
    assert decrypt(secret, signed.text) == f"did={did}"
    error(register(http, product_key, mac, "ATTACKER01"), 403, 9047)
    error(http.get(f"/dev/devices/{did}"), 403, 9048)
    delete = http.request(
        "DELETE", "/dev/devices", content=f"did={did}&passcode=PLAINPASS1", headers=FORM
    )
    error(delete, 403, 9047)
    # a device that never registered encrypted keeps the plain calls
    other = did_of(register(http, product_key, new_mac(), "PLAINPASS2"))
    assert http.get(f"/dev/devices/{other}").status_code == 200
