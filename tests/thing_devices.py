"""Data-template (Tencent) devices for tests: a product made from a data template, devices with
a psk, and `ThingDevice`, a paho (aiomqtt) client speaking Tencent's device scheme.

`ThingDevice` signs in as the stock SDKs do (client id ``{PID}{NAME}``, user name
``{PID}{NAME};{sdkappid};{connid};{expiry}``, password ``hex(HMAC(psk, username));hmacsha1``),
subscribes to its ``$thing/down`` topics (``service`` too, as the SDKs do), sends ``report``,
``get_status``, ``event_post``/``events_post`` and waits for the reply with the same clientToken,
and answers the cloud's ``control`` and ``action`` with configurable codes. Every message it
receives is kept (``received``); the ones that are not a reply to its own requests are queued in
``unread`` as well.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import ssl
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiomqtt
import httpx
from sqlalchemy import select

from iotcloud.domain.devices import new_did
from iotcloud.domain.thing_auth import SignMethod, device_password
from iotcloud.gateway.service import DeviceGateway
from iotcloud.storage.database import Database
from iotcloud.storage.models import DeviceRow, ProductRow
from tests.devices import connect_seen, eventually
from tests.server import ADMIN_TOKEN, RunningServer

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "templates"
LIGHT = TEMPLATES / "light.json"
"""The light template: power_switch (bool), brightness (int 0-100), color (enum), name
(string <= 64), temperature (float, read-only), schedule (struct), last_seen (timestamp); events
status_report (info) and low_voltage (alert); action blink (times, color -> result)."""
SDK_APPID = "12010126"
_DOWN_KINDS = ("property", "event", "action", "service")


class ThingIdentity(NamedTuple):
    """A data-template device as the registry knows it."""

    product_id: str
    name: str
    psk: str
    did: str


def new_product_id() -> str:
    """A fresh ProductId: ten characters ``[A-Z0-9]``, as Tencent issues them."""
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))


def new_psk() -> str:
    """A device key as the registry makes them: base64 of 16 random bytes."""
    return base64.b64encode(secrets.token_bytes(16)).decode()


def template_doc(template: Path = LIGHT, product_id: str | None = None) -> dict[str, Any]:
    """The data template ``template`` under ProductId ``product_id`` (fresh when None)."""
    doc: dict[str, Any] = json.loads(template.read_text())
    doc["profile"]["ProductId"] = product_id or new_product_id()
    return doc


async def add_thing_product(database_url: str, template: Path = LIGHT) -> str:
    """A data-template product from ``template`` under a fresh ProductId; returns it.

    Written as a row on the database at ``database_url``, for in-process services; against a
    running server, ``import_thing_product`` imports it as an operator does."""
    doc = await asyncio.to_thread(template_doc, template)
    product_id = str(doc["profile"]["ProductId"])
    now = datetime.now(UTC)
    async with Database(database_url) as db, db.session() as session:
        session.add(
            ProductRow(
                product_key=product_id,
                product_secret=secrets.token_hex(16),
                name=f"light {product_id}",
                protocol_type="data_template",
                definition=json.dumps(doc),
                created_at=now,
                updated_at=now,
            )
        )
    return product_id


async def add_thing_device(
    database_url: str, product_id: str, name: str | None = None, *, disabled: bool = False
) -> ThingIdentity:
    """A device ``name`` (fresh when None) of data-template product ``product_id``, with a
    fresh psk, written as a row on the database at ``database_url`` (against a running server,
    ``create_thing_device`` registers it as an operator does)."""
    name = name or new_device_name()
    psk = new_psk()
    did = new_did()
    now = datetime.now(UTC)
    async with Database(database_url) as db, db.session() as session:
        product = await session.scalar(
            select(ProductRow.id).where(ProductRow.product_key == product_id)
        )
        assert product is not None, product_id
        session.add(
            DeviceRow(
                did=did,
                product_id=product,
                mac=None,
                name=name,
                passcode=secrets.token_hex(5).upper(),
                psk=psk,
                is_disabled=disabled,
                created_at=now,
                updated_at=now,
            )
        )
    return ThingIdentity(product_id, name, psk, did)


def new_device_name() -> str:
    return "light_device_" + secrets.token_hex(4)


async def import_thing_product(server: RunningServer, template: Path = LIGHT) -> str:
    """Import ``template`` under a fresh ProductId through ``server``'s operator API (``POST
    /admin/v1/products``); returns the ProductId."""
    doc = await asyncio.to_thread(template_doc, template)
    async with operator(server) as http:
        made = await http.post("/admin/v1/products", json=doc)
    assert made.status_code == 201, made.text
    assert made.json()["product_key"] == doc["profile"]["ProductId"]
    return str(doc["profile"]["ProductId"])


async def create_thing_device(
    server: RunningServer, product_id: str, name: str | None = None, *, disabled: bool = False
) -> ThingIdentity:
    """Create device ``name`` (fresh when None) of ``product_id`` through ``server``'s operator
    API (``POST /admin/v1/devices``, then ``PUT`` to disable it when asked)."""
    name = name or new_device_name()
    async with operator(server) as http:
        made = await http.post("/admin/v1/devices", json={"product_key": product_id, "name": name})
        assert made.status_code == 201, made.text
        did = made.json()["did"]
        if disabled:
            changed = await http.put(f"/admin/v1/devices/{did}", json={"is_disabled": True})
            assert changed.status_code == 200, changed.text
    return ThingIdentity(product_id, name, made.json()["psk"], did)


def operator(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    )


def server_database_url(server: RunningServer) -> str:
    """The database URL ``server`` runs on."""
    return server.database_url


class ThingReplyMissing(AssertionError):
    """The cloud did not answer a request in time."""


class ThingDevice:
    """A data-template device over MQTT (see the module docstring).

    ``control_code`` / ``action_code`` are the codes it answers ``control`` / ``action`` with
    (None: it does not answer); ``reply_method`` False sends ``control_reply`` without
    ``method`` (as some SDK versions do); ``action_response`` is the ``response`` of its
    ``action_reply``. With ``gateway`` given (an in-process gateway), entering returns only once
    that gateway has seen the session online. With ``tls`` (a client context) it connects over
    TLS.
    """

    def __init__(
        self,
        port: int,
        identity: ThingIdentity,
        *,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
        sign_method: SignMethod = "hmacsha1",
        expiry: int | None = None,
        psk: str | None = None,
        control_code: int | None = 0,
        reply_method: bool = True,
        action_code: int | None = 0,
        action_response: dict[str, Any] | None = None,
        subscribe: bool = True,
        gateway: DeviceGateway | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.tls = tls
        self.identity = identity
        self.protocol = protocol
        self.sign_method = sign_method
        self.expiry = expiry if expiry is not None else int(datetime.now(UTC).timestamp()) + 3600
        self.psk = psk if psk is not None else identity.psk
        self.control_code = control_code
        self.reply_method = reply_method
        self.action_code = action_code
        self.action_response = action_response if action_response is not None else {}
        self.subscribe = subscribe
        self.gateway = gateway
        self.client: aiomqtt.Client | None = None
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.unread: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.controls: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.granted: list[int] = []
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tokens = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def on_server(
        cls, server: RunningServer, identity: ThingIdentity, **options: Any
    ) -> ThingDevice:
        """The device on ``server``'s MQTT port."""
        return cls(int(server.env["IOTCLOUD_MQTT_PORT"]), identity, **options)

    @property
    def client_id(self) -> str:
        return self.identity.product_id + self.identity.name

    @property
    def username(self) -> str:
        return f"{self.client_id};{SDK_APPID};{secrets.token_hex(3)[:5]};{self.expiry}"

    def topic(self, direction: str, kind: str) -> str:
        return f"$thing/{direction}/{kind}/{self.identity.product_id}/{self.identity.name}"

    # -- connection -------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        username = self.username
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.client_id,
            username=username,
            password=device_password(self.psk, username, self.sign_method),
            protocol=self.protocol,
            keepalive=60,
            tls_context=self.tls,
        )

    async def __aenter__(self) -> ThingDevice:
        await connect_seen(self.gateway, self.identity.did, self._connect)
        return self

    async def _connect(self) -> None:
        self.client = self._client()
        await self.client.__aenter__()
        self._task = asyncio.create_task(self._serve())
        if self.subscribe:
            for kind in _DOWN_KINDS:
                granted = await self.client.subscribe(self.topic("down", kind), qos=1)
                self.granted += [int(getattr(code, "value", code)) for code in granted]

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.client is not None:
            await self.client.__aexit__(None, None, None)

    async def _serve(self) -> None:
        assert self.client is not None
        async for message in self.client.messages:
            topic = str(message.topic)
            try:
                body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            except ValueError:
                body = {"unreadable": bytes(message.payload).hex()}  # type: ignore[arg-type]
            self.received.append((topic, body))
            waiter = self._waiting.pop(str(body.get("clientToken", "")), None)
            if waiter is not None and not waiter.done() and body.get("method") != "control":
                waiter.set_result(body)
                continue
            await self.unread.put((topic, body))
            if body.get("method") == "control":
                self.controls.append(body)
                if self.control_code is not None:
                    answer = {
                        "clientToken": body.get("clientToken"),
                        "code": self.control_code,
                        "status": "ok" if self.control_code == 0 else "refused",
                    }
                    if self.reply_method:
                        answer = {"method": "control_reply", **answer}
                    await self.send("property", answer)
            elif body.get("method") == "action":
                self.actions.append(body)
                if self.action_code is not None:
                    await self.send(
                        "action",
                        {
                            "method": "action_reply",
                            "clientToken": body.get("clientToken"),
                            "code": self.action_code,
                            "status": "ok",
                            "response": self.action_response,
                        },
                    )

    # -- sending ----------------------------------------------------------------------------

    async def send(self, kind: str, body: dict[str, Any] | bytes, qos: int = 0) -> None:
        """Publish ``body`` (JSON-encoded unless bytes) on ``$thing/up/{kind}``."""
        assert self.client is not None
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(self.topic("up", kind), payload, qos=qos)

    async def request(
        self, kind: str, body: dict[str, Any], *, qos: int = 0, wait: float = 10.0
    ) -> dict[str, Any]:
        """Send ``body`` with a fresh clientToken and return the cloud's reply carrying it."""
        token = f"{self.identity.product_id}-{next(self._tokens)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        await self.send(kind, {**body, "clientToken": token}, qos=qos)
        try:
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError as exc:
            raise ThingReplyMissing(f"no reply to {body.get('method')} ({token})") from exc
        finally:
            self._waiting.pop(token, None)

    async def report(self, params: dict[str, Any]) -> dict[str, Any]:
        """``report`` ``params``; returns the ``report_reply``."""
        return await self.request(
            "property",
            {"method": "report", "timestamp": int(datetime.now(UTC).timestamp()), "params": params},
        )

    async def get_status(self) -> dict[str, Any]:
        """``get_status``; returns the ``get_status_reply``."""
        return await self.request(
            "property", {"method": "get_status", "type": "report", "showmeta": 0}
        )

    async def post_event(
        self, event_id: str, params: dict[str, Any], event_type: str = "info", *, qos: int = 1
    ) -> dict[str, Any]:
        """``event_post`` (QoS 1, as the SDKs send it); returns the ``event_reply``."""
        return await self.request(
            "event",
            {
                "method": "event_post",
                "version": "1.0",
                "eventId": event_id,
                "type": event_type,
                "timestamp": int(datetime.now(UTC).timestamp() * 1000),
                "params": params,
            },
            qos=qos,
        )

    async def post_events(self, events: list[dict[str, Any]], *, qos: int = 1) -> dict[str, Any]:
        """``events_post`` with ``events`` (each ``{eventId, type, params}``)."""
        return await self.request(
            "event", {"method": "events_post", "version": "1.0", "events": events}, qos=qos
        )

    async def next_message(self, wait: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The next received message that was not a reply to this device's requests."""
        async with asyncio.timeout(wait):
            return await self.unread.get()


until = eventually
"""Poll a probe until it returns something truthy (state is stored in batches)."""
