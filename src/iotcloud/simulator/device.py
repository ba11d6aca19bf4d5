"""One virtual device: registers over HTTP like GAgent, connects over MQTT, reports its status
and answers reads and controls the way Gizwits-generated firmware does."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiomqtt
import httpx

from iotcloud.codecs import (
    Action,
    AttrType,
    CodecError,
    DataType,
    Frame,
    P0Codec,
    ProductDefinition,
    decode_frame,
    encode_frame,
)
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL, CMD_CONTROL_SN, CMD_REPORT

log = logging.getLogger(__name__)


class SimulatorError(RuntimeError):
    """The cloud refused or could not be reached; the message says what and where."""


def describe_reply(reply: httpx.Response) -> str:
    """``<status> <error_message> (<detail_message>)`` of a Gizwits error answer, else its text."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error_code" in body:
        detail = body.get("detail_message") or ""
        text = f"{body['error_code']} {body.get('error_message', '')}".strip()
        return f"HTTP {reply.status_code}: {text}" + (f" ({detail})" if detail else "")
    return f"HTTP {reply.status_code}: {reply.text[:200]}"


_READS = {Action.READ, Action.VAR_READ}
_CONTROLS = {Action.CONTROL, Action.VAR_CONTROL}


def random_status(product: ProductDefinition, rng: random.Random) -> dict[str, Any]:
    """A plausible full status in display form (every attr set)."""
    values: dict[str, Any] = {}
    for attr in product.attrs:
        if attr.data_type is DataType.BOOL:
            values[attr.name] = rng.random() < 0.5
        elif attr.data_type is DataType.ENUM:
            values[attr.name] = rng.choice(attr.enum_labels)
        elif attr.data_type is DataType.BINARY:
            values[attr.name] = bytes(rng.getrandbits(8) for _ in range(attr.length))
        else:
            assert attr.uint_spec is not None
            spec = attr.uint_spec
            values[attr.name] = spec.to_display(rng.randint(int(spec.min), int(spec.max)))
    return values


@dataclass
class DeviceStats:
    reports: int = 0
    controls: int = 0
    reads: int = 0
    errors: int = 0
    reconnects: int = 0
    connected: bool = False
    last_control: dict[str, Any] = field(default_factory=dict)


class VirtualDevice:
    """A device with a MAC, a passcode and a status.

    ``register`` performs GAgent's ``POST /dev/devices`` and ``GET /dev/devices/{did}``;
    ``run`` keeps an MQTT session (3.1 or 3.1.1) until cancelled, reporting every
    ``report_interval`` seconds (0: only on change) and answering controls and reads.
    """

    def __init__(
        self,
        product_key: str,
        product: ProductDefinition,
        mac: str,
        *,
        passcode: str | None = None,
        protocol: str = "3.1",
        keepalive: int = 120,
        seed: int | None = None,
    ) -> None:
        self.product_key = product_key
        self.codec = P0Codec(product)
        self.product = product
        self.mac = mac
        self.passcode = passcode or "".join(
            secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXY") for _ in range(10)
        )
        self.protocol = protocol
        self.keepalive = keepalive
        self.rng = random.Random(seed)
        self.status = random_status(product, self.rng)
        self.did: str | None = None
        self.mqtt_host: str | None = None
        self.mqtt_port: int | None = None
        self.stats = DeviceStats()
        self.ready = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    async def register(self, http: httpx.AsyncClient, *, throttle_wait: float = 60.0) -> str:
        """Register and provision like GAgent; returns the did.

        A throttled answer (429) is retried after its ``Retry-After`` for up to ``throttle_wait``
        seconds in all. Raises `SimulatorError` when the server is unreachable or refuses.
        """
        reply = await self._call(
            http,
            "POST",
            "/dev/devices",
            throttle_wait,
            content=f"passcode={self.passcode}&mac={self.mac}&product_key={self.product_key}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if reply.status_code != 201 or "did=" not in reply.text:
            raise SimulatorError(f"registration of {self.mac} refused: {describe_reply(reply)}")
        self.did = reply.text.split("did=", 1)[1][:22]
        info = await self._call(http, "GET", f"/dev/devices/{self.did}", throttle_wait)
        if info.status_code != 200:
            raise SimulatorError(f"provisioning of {self.did} refused: {describe_reply(info)}")
        fields = parse_qs(info.text.strip())
        try:
            self.mqtt_host = fields["host"][0]
            self.mqtt_port = int(fields["port"][0])
        except (KeyError, IndexError, ValueError) as exc:
            raise SimulatorError(
                f"provisioning of {self.did}: no host/port in {info.text!r}"
            ) from exc
        return self.did

    @staticmethod
    async def _call(
        http: httpx.AsyncClient, method: str, path: str, throttle_wait: float, **kwargs: Any
    ) -> httpx.Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + throttle_wait
        while True:
            try:
                reply = await http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise SimulatorError(
                    f"cannot reach {http.base_url}: {str(exc) or type(exc).__name__}"
                ) from exc
            if reply.status_code != 429:
                return reply
            try:
                wait = float(reply.headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
            if loop.time() + wait > deadline:
                raise SimulatorError(f"{method} {path}: still throttled (429) after retrying")
            await asyncio.sleep(wait * (1 + random.random() / 2))  # jitter: spread retries out

    async def run(
        self, report_interval: float = 0.0, *, host: str | None = None, port: int | None = None
    ) -> None:
        """Connect and serve until cancelled.

        Raises ``aiomqtt.MqttError`` when the connection cannot be made or is lost.
        """
        assert self.did is not None, "register first"
        version = (
            aiomqtt.ProtocolVersion.V31 if self.protocol == "3.1" else aiomqtt.ProtocolVersion.V311
        )
        async with aiomqtt.Client(
            host or self.mqtt_host or "127.0.0.1",
            port or self.mqtt_port or 1883,
            identifier=self.did,
            username=self.did,
            password=self.passcode,
            protocol=version,
            keepalive=self.keepalive,
            clean_session=True,
        ) as client:
            self._client = client
            for topic in (
                f"ser2cli_noti/{self.product_key}",
                f"ser2cli_res/{self.did}",
                f"app2dev/{self.did}/#",
            ):
                await client.subscribe(topic, qos=0)
            self.stats.connected = True
            self.ready.set()
            await self.report()
            try:
                async with asyncio.TaskGroup() as tasks:
                    if report_interval > 0:
                        tasks.create_task(self._report_every(report_interval))
                    tasks.create_task(self._serve(client))
            except ExceptionGroup as group:
                # the connection dropped: raise the MQTT error itself, so callers can retry
                lost = [e for e in group.exceptions if isinstance(e, aiomqtt.MqttError)]
                if not lost:
                    raise
                raise lost[0] from group
            finally:
                self.stats.connected = False
                self.ready.clear()
                self._client = None

    async def report(self, changed: list[str] | None = None) -> None:
        """Publish the status (0x0091 on ``dev2app/{did}``)."""
        payload = self.codec.encode_status(self.status, changed=changed)
        await self._publish(f"dev2app/{self.did}", Frame(CMD_REPORT, payload))
        self.stats.reports += 1

    async def report_random(self) -> None:
        """Change a few read-only values (as sensors do) and report them."""
        fresh = random_status(self.product, self.rng)
        changed = [
            a.name
            for a in self.product.attrs
            if a.type is not AttrType.STATUS_WRITABLE and self.rng.random() < 0.5
        ] or [self.product.attrs[-1].name]
        for name in changed:
            self.status[name] = fresh[name]
        await self.report(changed)

    async def _report_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval * (0.5 + self.rng.random()))
            await self.report_random()

    async def _serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            try:
                await self._handle(topic, bytes(message.payload))
            except CodecError as exc:
                self.stats.errors += 1
                log.warning("device %s: bad frame on %s: %s", self.did, topic, exc)

    async def _handle(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(f"app2dev/{self.did}"):
            return
        client_id = topic.split("/", 2)[2] if topic.count("/") >= 2 else ""
        frame = decode_frame(payload)
        if frame.cmd not in (CMD_CONTROL, CMD_CONTROL_SN):
            return
        message = self.codec.decode(frame.payload)
        if message.action in _CONTROLS:
            self.stats.controls += 1
            self.stats.last_control = dict(message.values)
            self.status.update(message.values)
            reply = self.codec.encode_status(self.status, action=None, changed=list(message.values))
        elif message.action in _READS:
            self.stats.reads += 1
            reply_action = (
                Action.READ_REPLY if message.action is Action.READ else Action.VAR_READ_REPLY
            )
            reply = self.codec.encode_status(
                self.status, action=reply_action, changed=list(message.names) or None
            )
        else:
            return
        if frame.cmd == CMD_CONTROL_SN:
            await self._publish(
                f"dev2app/{self.did}/{client_id}", Frame(CMD_ACK_SN, reply, sn=frame.sn)
            )
        else:
            await self._publish(f"dev2app/{self.did}", Frame(CMD_REPORT, reply))

    async def _publish(self, topic: str, frame: Frame) -> None:
        if self._client is None:
            raise RuntimeError("not connected")
        await self._client.publish(topic, encode_frame(frame), qos=0)
