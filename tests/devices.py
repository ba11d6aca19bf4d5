"""Products and devices for tests: import a product, register a device, bring it online as a
virtual device (``Online``) or as a bare MQTT client that shows the exact frames the cloud sends
(``MqttDevice``), and wait for the server to catch up (``eventually``, ``until_online``)."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiomqtt
import httpx

from iotcloud.codecs import (
    Frame,
    P0Codec,
    ProductDefinition,
    decode_frame,
    encode_frame,
    parse_product_definition,
)
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL_SN, CMD_REPORT
from iotcloud.gateway.service import DeviceGateway, GatewayEvent, PresenceEvent
from iotcloud.services.registry import Services
from iotcloud.simulator import VirtualDevice
from tests.accounts import User
from tests.server import RunningServer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datapoints"
#: The passcode ``register`` gives every device.
PASSCODE = "ABCDEFGHIJ"
T = TypeVar("T")


class Product(NamedTuple):
    """An imported product (a tuple, so ``product_key, definition = ...`` works too)."""

    product_key: str
    definition: ProductDefinition


def import_product(server: RunningServer, tmp_path: Path, name: str) -> Product:
    """Import the fixture ``name`` with ``iotcloud product import`` under a fresh product_key."""
    data = json.loads((FIXTURES / name).read_text())
    data["product_key"] = uuid.uuid4().hex
    path = tmp_path / f"{data['product_key']}.json"
    path.write_text(json.dumps(data))
    made = json.loads(server.cli("product", "import", str(path), "--json").stdout)
    assert made["product_key"] == data["product_key"]
    return Product(made["product_key"], parse_product_definition(data))


def register(server: RunningServer, product: Product) -> tuple[str, str]:
    """A device registered as GAgent does (``POST /dev/devices``) with ``PASSCODE`` and a fresh
    MAC, never connected: ``(did, mac)``."""
    mac = "02" + uuid.uuid4().hex[:10]
    with httpx.Client(base_url=server.base_url) as http:
        reply = http.post(
            "/dev/devices",
            content=f"passcode={PASSCODE}&mac={mac}&product_key={product.product_key}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert reply.status_code == 201, reply.text
    return reply.text.split("did=", 1)[1][:22], mac


def mqtt_port(server: RunningServer) -> int:
    """The port devices connect to (the embedded broker's or Mosquitto's)."""
    return int(server.env["IOTCLOUD_MQTT_PORT"])


async def eventually(probe: Callable[[], Awaitable[T | None]], wait: float = 15.0) -> T:
    """Poll ``probe`` until it returns something truthy (reports and state are stored in
    batches); fails after ``wait`` seconds."""
    async with asyncio.timeout(wait):
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(0.05)


async def until_online(http: httpx.AsyncClient, user: User, did: str) -> None:
    """Wait (15 s at most) until the server counts the device online: ``user``'s device item
    says so."""
    async with asyncio.timeout(15):
        while True:
            reply = await http.get(f"/app/devices/{did}", headers=user.headers())
            if reply.status_code == 200 and reply.json()["is_online"]:
                return
            await asyncio.sleep(0.05)


async def connect_seen(
    gateway: DeviceGateway | None, did: str, connect: Callable[[], Awaitable[None]]
) -> None:
    """Run ``connect``; with an in-process ``gateway``, return only once it has seen device
    ``did`` online (10 s at most)."""
    if gateway is None:
        await connect()
        return
    online = asyncio.Event()

    def seen(event: GatewayEvent) -> None:
        if isinstance(event, PresenceEvent) and event.did == did and event.online:
            online.set()

    gateway.add_listener(seen)
    try:
        await connect()
        async with asyncio.timeout(10):
            await online.wait()
    finally:
        gateway.remove_listener(seen)


class Online:
    """A registered virtual device with a running MQTT session."""

    def __init__(self, server: RunningServer, device: VirtualDevice) -> None:
        self.server = server
        self.device = device
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> VirtualDevice:
        async with httpx.AsyncClient(base_url=self.server.base_url) as http:
            await self.device.register(http)
        self.task = asyncio.create_task(
            self.device.run(host="127.0.0.1", port=mqtt_port(self.server))
        )
        ready = asyncio.create_task(self.device.ready.wait())
        done, _ = await asyncio.wait({self.task, ready}, timeout=15, return_when="FIRST_COMPLETED")
        ready.cancel()
        if self.task in done:
            self.task.result()  # raises the connection error
        assert self.device.ready.is_set(), "device did not connect"
        return self.device

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        async with asyncio.timeout(15):
            await asyncio.gather(self.task, return_exceptions=True)


class MqttDevice:
    """A device as a bare MQTT client, subscribed to ``app2dev/{did}/#``.

    Every message it receives is kept: ``next_message`` / ``next_frame`` take them in order
    (waiting 10 s at most), ``unread`` holds those not taken yet, ``frames`` is every frame
    received so far. With ``answer`` set (it may change while connected) it acknowledges each
    0x0093 with a 0x0094 on the asking client's reply topic. With ``gateway`` given, entering
    returns only once that in-process gateway has seen the session online (10 s at most). With
    ``tls`` (a client context) it connects over TLS.
    """

    def __init__(
        self,
        port: int,
        did: str,
        passcode: str,
        *,
        protocol: aiomqtt.ProtocolVersion | None = None,
        answer: bool = False,
        gateway: DeviceGateway | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.did = did
        self.passcode = passcode
        self.protocol = protocol
        self.answer = answer
        self.gateway = gateway
        self.tls = tls
        self.client: aiomqtt.Client | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.unread: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def on_server(cls, server: RunningServer, did: str) -> MqttDevice:
        """A device ``register`` made, on ``server``'s broker, speaking MQTT 3.1 as GAgent."""
        return cls(mqtt_port(server), did, PASSCODE, protocol=aiomqtt.ProtocolVersion.V31)

    @classmethod
    def on_services(
        cls, services: Services, did: str, passcode: str, *, answer: bool = False
    ) -> MqttDevice:
        """A device on the broker of in-process ``services``; entering waits for their gateway."""
        return cls(
            services.settings.mqtt_port,
            did,
            passcode,
            answer=answer,
            gateway=services.control.gateway,
        )

    @property
    def frames(self) -> list[Frame]:
        """Every frame received so far, in order."""
        return [decode_frame(payload) for _, payload in self.messages]

    async def __aenter__(self) -> MqttDevice:
        await connect_seen(self.gateway, self.did, self._connect)
        return self

    async def _connect(self) -> None:
        self.client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.did,
            username=self.did,
            password=self.passcode,
            protocol=self.protocol,
            tls_context=self.tls,
        )
        await self.client.__aenter__()
        await self.client.subscribe(f"app2dev/{self.did}/#")
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        assert self.client is not None
        async for message in self.client.messages:
            topic, payload = str(message.topic), bytes(message.payload)
            self.messages.append((topic, payload))
            await self.unread.put((topic, payload))
            if self.answer:
                frame = decode_frame(payload)
                if frame.cmd == CMD_CONTROL_SN:
                    client_id = topic.split("/", 2)[2]
                    reply = Frame(CMD_ACK_SN, b"", sn=frame.sn)
                    await self.publish(f"dev2app/{self.did}/{client_id}", reply)

    async def next_message(self) -> tuple[str, bytes]:
        """The next message not taken yet: ``(topic, payload)``."""
        async with asyncio.timeout(10):
            return await self.unread.get()

    async def next_frame(self) -> tuple[str, Frame]:
        """The next message not taken yet, decoded: ``(topic, frame)``."""
        topic, payload = await self.next_message()
        return topic, decode_frame(payload)

    async def publish(self, topic: str, frame: Frame) -> None:
        """Send ``frame`` on ``topic``."""
        assert self.client is not None
        await self.client.publish(topic, encode_frame(frame))

    async def report(self, codec: P0Codec, values: dict[str, Any]) -> None:
        """Report ``values`` (0x0091 on ``dev2app/{did}``)."""
        await self.publish(f"dev2app/{self.did}", Frame(CMD_REPORT, codec.encode_status(values)))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        assert self.client is not None
        await self.client.__aexit__(None, None, None)
