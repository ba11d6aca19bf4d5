"""The external-broker adapter against a real Mosquitto 2 with the dynamic-security plugin.

The session's Mosquitto is shared by every test, so each test registers devices with fresh dids in
an in-memory directory. The adapter's own reconciliation on start removes the devices earlier tests
left in the broker, and the fixture removes this test's devices when it ends. Devices are real
aiomqtt (paho) clients, or raw sockets where a device must go silent or vanish without DISCONNECT.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from iotcloud.gateway.broker import (
    AclAction,
    DeviceCredential,
    DevicePrincipal,
    DisconnectReason,
)
from iotcloud.gateway.external import (
    UNKNOWN_PEER,
    BrokerTarget,
    BrokerUnavailable,
    ExternalBroker,
    sync_commands,
)
from tests.conftest import unique
from tests.contract.gateway.test_embedded_broker import RawDevice, connect_packet
from tests.mosquitto import MosquittoServer
from tests.pg import free_port

PK = "6f3074fe43894547a4f1314bd7e3ae0b"
OTHER_PK = "0123456789abcdef0123456789abcdef"
PROTOCOLS = [
    pytest.param(aiomqtt.ProtocolVersion.V31, id="mqtt3.1"),
    pytest.param(aiomqtt.ProtocolVersion.V311, id="mqtt3.1.1"),
]
WAIT = 5.0
KEEPALIVE_WAIT = 15.0
"""Mosquitto checks keep-alives in its main loop, a few seconds after 1.5 x keep-alive."""


def new_passcode() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


class Directory:
    """`DeviceDirectory` over a dict the test changes; lists devices in pages of two."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceCredential] = {}
        self.things: dict[str, DevicePrincipal] = {}
        """Data-template devices by client id ``{PID}{NAME}``."""
        self.full_listings = 0
        self._listed = asyncio.Event()

    def add(self, product_key: str = PK) -> DeviceCredential:
        credential = DeviceCredential(unique("d"), product_key, new_passcode(), enabled=True)
        self.devices[credential.did] = credential
        return credential

    def change(self, did: str, **changes: Any) -> DeviceCredential:
        self.devices[did] = replace(self.devices[did], **changes)
        return self.devices[did]

    async def principal_of(self, did: str) -> DevicePrincipal | None:
        credential = self.devices.get(did)
        if credential is None or not credential.enabled:
            return None
        return DevicePrincipal(credential.did, credential.product_key)

    async def principal_of_client(self, client_id: str) -> DevicePrincipal | None:
        return self.things.get(client_id) or await self.principal_of(client_id)

    async def credentials(
        self, dids: Sequence[str] | None = None
    ) -> AsyncIterator[list[DeviceCredential]]:
        chosen = [c for c in self.devices.values() if dids is None or c.did in dids]
        for start in range(0, len(chosen), 2):
            yield chosen[start : start + 2]
        if dids is None:
            self.full_listings += 1
            self._listed.set()

    async def listed(self) -> None:
        """Wait until the registry was listed in full once (a reconciliation ran)."""
        async with asyncio.timeout(WAIT):
            await self._listed.wait()


class Recorder:
    """`BrokerEvents` that records every callback as ``(kind, did, detail...)``."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()

    def _add(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        self._changed.set()

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        self._add(("connect", principal.did, client_id, keepalive, peer))

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        self._add(("disconnect", principal.did, reason))

    async def on_publish(self, principal: DevicePrincipal, topic: str, payload: bytes) -> None:
        self._add(("publish", principal.did, topic, payload))

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        self._add(("denied", principal.did, action, topic))

    def of(self, kind: str, did: str | None = None) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind and (did is None or e[1] == did)]

    async def until(
        self, kind: str, did: str | None = None, count: int = 1
    ) -> list[tuple[Any, ...]]:
        """Wait until at least ``count`` events of ``kind`` (for ``did``) were recorded."""
        while len(found := self.of(kind, did)) < count:
            self._changed.clear()
            await self._changed.wait()
        return found

    async def wait_for(
        self, kind: str, did: str | None = None, count: int = 1
    ) -> list[tuple[Any, ...]]:
        """`until`, within the usual wait."""
        async with asyncio.timeout(WAIT):
            return await self.until(kind, did, count)


@dataclass
class Harness:
    broker: ExternalBroker
    directory: Directory
    events: Recorder
    port: int

    def device(
        self,
        credential: DeviceCredential,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
        *,
        password: str | None = None,
        **options: Any,
    ) -> aiomqtt.Client:
        """A device client signing in as Gizwits devices do: client id = username = did."""
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=credential.did,
            username=credential.did,
            password=credential.passcode if password is None else password,
            protocol=protocol,
            **options,
        )

    async def refusal(
        self,
        credential: DeviceCredential,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
        *,
        password: str | None = None,
    ) -> int:
        """Connect and expect a refusal; the MQTT 3.1/3.1.1 CONNACK code."""
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with self.device(credential, protocol, password=password):
                pass
        return connack_code(refused.value)

    @asynccontextmanager
    async def raw_device(
        self, credential: DeviceCredential, *, keepalive: int = 60
    ) -> AsyncIterator[tuple[RawDevice, bytes, str]]:
        """A raw-socket device: yields it, its CONNACK bytes and its ``host:port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        host, port = writer.get_extra_info("sockname")[:2]
        raw = RawDevice(reader, writer)
        try:
            packet = connect_packet(
                credential.did, credential.did, credential.passcode, keepalive=keepalive
            )
            await raw.send(packet)
            async with asyncio.timeout(WAIT):
                connack = await reader.readexactly(4)
            yield raw, connack, f"{host}:{port}"
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()


def connack_code(error: aiomqtt.MqttCodeError) -> int:
    """The MQTT 3.1/3.1.1 CONNACK code (paho reports 4 and 5 as MQTT 5 reason codes 134, 135)."""
    value = error.rc.value if isinstance(error.rc, ReasonCode) else error.rc
    assert value is not None, error
    return {134: 4, 135: 5}.get(value, value)


async def suback_code(client: aiomqtt.Client, topic_filter: str) -> int:
    """The SUBACK return code for one filter: the granted QoS, or 0x80 for a failure."""
    (code,) = await client.subscribe(topic_filter)
    return code.value if isinstance(code, ReasonCode) else code


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(client.messages))


def new_adapter(
    mosquitto: MosquittoServer,
    directory: Directory,
    events: Recorder,
    client_id: str | None = None,
    **options: Any,
) -> ExternalBroker:
    target = BrokerTarget.parse(mosquitto.url)
    if client_id is not None:
        target = replace(target, client_id=client_id)
    options = {"sync_interval": 3600.0, "request_timeout": WAIT, **options}
    return ExternalBroker(target, directory, events, **options)


@pytest.fixture
async def gateway(mosquitto: MosquittoServer) -> AsyncIterator[Harness]:
    """A started adapter whose start-up reconciliation has listed the (empty) directory; it may
    still be deleting leftovers, which the next `reconcile` waits for. No periodic one follows."""
    directory, events = Directory(), Recorder()
    async with new_adapter(mosquitto, directory, events) as broker:
        await directory.listed()
        yield Harness(broker, directory, events, mosquitto.port)
        directory.devices.clear()
        await broker.reconcile()


# -- credentials ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_reconciled_devices_connect_with_their_passcode(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    a, b = gateway.directory.add(), gateway.directory.add(OTHER_PK)
    disabled = gateway.directory.change(gateway.directory.add().did, enabled=False)
    assert await gateway.broker.reconcile() == 4  # createRole + createClient for a and b
    assert await gateway.broker.reconcile() == 0
    events = gateway.events
    async with gateway.device(a, protocol, keepalive=120), gateway.device(b, protocol):
        (connect,) = await events.wait_for("connect", a.did)
        assert connect[2:4] == (a.did, 120)
        assert connect[4].startswith("127.0.0.1:")
        await events.wait_for("connect", b.did)
        assert gateway.broker.connected_dids() == {a.did, b.did}
    assert await gateway.refusal(disabled, protocol) == 5
    disconnects = await events.wait_for("disconnect", count=2)
    assert sorted(e[1:] for e in disconnects) == sorted(
        [(a.did, DisconnectReason.CLEAN), (b.did, DisconnectReason.CLEAN)]
    )
    assert gateway.broker.connected_dids() == set()
    assert gateway.broker.stats.connects == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_passcode_is_refused(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    assert await gateway.refusal(a, protocol, password=new_passcode()) == 5
    stranger = DeviceCredential(unique("d"), PK, new_passcode(), enabled=True)
    assert await gateway.refusal(stranger, protocol) == 5
    async with gateway.device(a, protocol):
        # Mosquitto logs in order: the refusals were read before this connection
        await gateway.events.wait_for("connect", a.did)
    assert gateway.broker.stats.auth_failures == 2
    assert [e[1] for e in gateway.events.of("connect")] == [a.did]


async def test_stale_client_of_a_vanished_device_is_deleted(gateway: Harness) -> None:
    kept, gone = gateway.directory.add(), gateway.directory.add()
    assert await gateway.broker.reconcile() == 4
    async with gateway.device(gone):
        await gateway.events.wait_for("connect", gone.did)
    del gateway.directory.devices[gone.did]
    assert await gateway.broker.reconcile() == 2  # deleteClient + deleteRole
    assert await gateway.refusal(gone) == 5
    async with gateway.device(kept):
        await gateway.events.wait_for("connect", kept.did)
    assert await gateway.broker.reconcile() == 0


# -- publishing and subscribing ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_device_publish_reaches_the_gateway_only_on_its_own_topics(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    a, b = gateway.directory.add(), gateway.directory.add()
    await gateway.broker.reconcile()
    async with gateway.device(a, protocol) as device, gateway.device(b) as victim:
        await victim.subscribe(f"app2dev/{b.did}/#")
        await device.publish(f"dev2app/{a.did}", b"\x00\x00\x00\x03\x03\x00\x00\x91")
        await device.publish(f"dev2app/{a.did}/app-client-7", b"reply")
        for forged in (f"dev2app/{b.did}", f"dev2app/{b.did}/x", f"app2dev/{b.did}/evil"):
            await device.publish(forged, b"forged")
        await device.publish(f"dev2app/{a.did}", b"still here")
        published = await gateway.events.wait_for("publish", a.did, count=3)
        assert published == [
            ("publish", a.did, f"dev2app/{a.did}", b"\x00\x00\x00\x03\x03\x00\x00\x91"),
            ("publish", a.did, f"dev2app/{a.did}/app-client-7", b"reply"),
            ("publish", a.did, f"dev2app/{a.did}", b"still here"),
        ]
        assert gateway.events.of("publish", b.did) == []
        await gateway.broker.publish(f"app2dev/{b.did}/cloud", b"marker")
        message = await next_message(victim)
        assert (message.topic.value, message.payload) == (f"app2dev/{b.did}/cloud", b"marker")
        assert gateway.events.of("disconnect") == []
        assert gateway.broker.stats.messages_in == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscriptions_beyond_the_device_get_nothing(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    """MQTT 3.1.1 devices see SUBACK 0x80; MQTT 3.1 has no failure code, Mosquitto grants QoS 0
    but does not subscribe. Either way nothing of another device arrives."""
    a, b = gateway.directory.add(), gateway.directory.add(OTHER_PK)
    await gateway.broker.reconcile()
    allowed = [f"ser2cli_noti/{PK}", f"ser2cli_res/{a.did}", f"app2dev/{a.did}/#"]
    refused = [
        "#",
        f"app2dev/{b.did}/#",
        "app2dev/+/#",
        f"ser2cli_res/{b.did}",
        f"ser2cli_noti/{OTHER_PK}",
        f"dev2app/{b.did}",
        "$SYS/#",
    ]
    refusal_code = 0x80 if protocol == aiomqtt.ProtocolVersion.V311 else 0
    async with gateway.device(a, protocol) as device:
        for topic_filter in allowed:
            assert await suback_code(device, topic_filter) == 0, topic_filter
        for topic_filter in refused:
            assert await suback_code(device, topic_filter) == refusal_code, topic_filter
        for topic in (f"app2dev/{b.did}/cloud", f"ser2cli_noti/{OTHER_PK}", f"app2dev/{a.did}"):
            await gateway.broker.publish(topic, topic.encode())
        message = await next_message(device)
        assert (message.topic.value, message.payload) == (
            f"app2dev/{a.did}",
            f"app2dev/{a.did}".encode(),
        )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_gateway_publish_reaches_the_subscribed_device(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    async with gateway.device(a, protocol) as device:
        await device.subscribe(f"app2dev/{a.did}/#")
        await device.subscribe(f"ser2cli_noti/{PK}")
        await gateway.broker.publish(f"app2dev/{a.did}/x", b"\x00\x00\x00\x03\x05\x00\x00\x90")
        message = await next_message(device)
        assert (message.topic.value, message.payload) == (
            f"app2dev/{a.did}/x",
            b"\x00\x00\x00\x03\x05\x00\x00\x90",
        )
        await gateway.broker.publish(f"ser2cli_noti/{PK}", b"notice", qos=1)
        assert (await next_message(device)).payload == b"notice"
        assert gateway.broker.stats.messages_out == 2
        for topic, qos in (("app2dev/+/x", 0), ("$SYS/x", 0), (f"app2dev/{a.did}/x", 3)):
            with pytest.raises(ValueError, match=r"topic|QoS"):
                await gateway.broker.publish(topic, b"x", qos=qos)
        assert gateway.broker.stats.messages_out == 2


# -- presence ---------------------------------------------------------------------------------


async def test_dropped_connection_is_lost(gateway: Harness) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    async with gateway.raw_device(a, keepalive=30) as (_, connack, peer):
        assert connack == b"\x20\x02\x00\x00"
        (connect,) = await gateway.events.wait_for("connect", a.did)
        assert connect == ("connect", a.did, a.did, 30, peer)
        assert gateway.broker.connected_dids() == {a.did}
    (disconnect,) = await gateway.events.wait_for("disconnect", a.did)
    assert disconnect[2] == DisconnectReason.LOST
    assert gateway.broker.connected_dids() == set()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_second_connection_with_the_same_id_takes_over(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    events = gateway.events
    async with gateway.raw_device(a) as (first, _, _):
        await events.wait_for("connect", a.did)
        async with gateway.device(a, protocol) as second:
            assert await first.closed_by_broker()
            (taken_over,) = await events.wait_for("disconnect", a.did)
            assert taken_over[2] == DisconnectReason.TAKEOVER
            await events.wait_for("connect", a.did, count=2)
            assert gateway.broker.connected_dids() == {a.did}
            await second.subscribe(f"app2dev/{a.did}/#")
            await gateway.broker.publish(f"app2dev/{a.did}/cloud", b"to the new one")
            assert (await next_message(second)).payload == b"to the new one"
    disconnects = await events.wait_for("disconnect", a.did, count=2)
    assert [e[2] for e in disconnects] == [DisconnectReason.TAKEOVER, DisconnectReason.CLEAN]
    kinds = [e[0] for e in events.events if e[0] in ("connect", "disconnect")]
    assert kinds == ["connect", "disconnect", "connect", "disconnect"]


async def test_silent_device_times_out(gateway: Harness) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    async with gateway.raw_device(a, keepalive=1) as (raw, connack, _):
        assert connack == b"\x20\x02\x00\x00"
        (connect,) = await gateway.events.wait_for("connect", a.did)
        assert connect[3] == 1
        async with asyncio.timeout(KEEPALIVE_WAIT):
            (disconnect,) = await gateway.events.until("disconnect", a.did)
        assert disconnect[2] == DisconnectReason.KEEPALIVE_TIMEOUT
        assert await raw.closed_by_broker()
    assert gateway.broker.connected_dids() == set()


async def test_disconnect_device_closes_its_connection_and_it_may_return(
    gateway: Harness,
) -> None:
    a, idle = gateway.directory.add(), gateway.directory.add()
    await gateway.broker.reconcile()
    events = gateway.events
    async with gateway.raw_device(a) as (raw, _, _):
        await events.wait_for("connect", a.did)
        assert await gateway.broker.disconnect_device(a.did) is True
        assert gateway.broker.connected_dids() == set()
        assert await raw.closed_by_broker()
    assert await gateway.broker.disconnect_device(idle.did) is False
    async with gateway.device(a) as device:
        await events.wait_for("connect", a.did, count=2)
        await device.subscribe(f"app2dev/{a.did}/#")
        await gateway.broker.publish(f"app2dev/{a.did}/cloud", b"welcome back")
        assert (await next_message(device)).payload == b"welcome back"
    disconnects = await events.wait_for("disconnect", a.did, count=2)
    assert [e[2] for e in disconnects] == [DisconnectReason.KICKED, DisconnectReason.CLEAN]


async def test_device_connected_before_the_gateway_is_recognised_by_its_message(
    gateway: Harness, mosquitto: MosquittoServer
) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    async with gateway.device(a) as device:
        await gateway.events.wait_for("connect", a.did)
        late = Recorder()
        # a second gateway client (its own client id), one that keeps no credentials
        adapter = new_adapter(
            mosquitto, gateway.directory, late, client_id=unique("late-"), credentials="none"
        )
        async with adapter:
            assert adapter.connected_dids() == set()
            await device.publish(f"dev2app/{a.did}", b"first words")
            await device.publish(f"dev2app/{a.did}", b"second words")
            await late.wait_for("publish", a.did, count=2)
            assert late.events == [
                ("connect", a.did, a.did, 0, UNKNOWN_PEER),
                ("publish", a.did, f"dev2app/{a.did}", b"first words"),
                ("publish", a.did, f"dev2app/{a.did}", b"second words"),
            ]
            assert adapter.connected_dids() == {a.did}
            assert adapter.stats.connects == 1
        assert late.of("disconnect") == [("disconnect", a.did, DisconnectReason.SHUTDOWN)]


# -- registry changes -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_changed_passcode_applies_at_once(
    gateway: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    old = a.passcode
    changed = gateway.directory.change(a.did, passcode=new_passcode())
    await gateway.broker.devices_changed([changed])
    assert await gateway.refusal(changed, protocol, password=old) == 5
    async with gateway.device(changed, protocol):
        await gateway.events.wait_for("connect", a.did)
    assert await gateway.broker.reconcile() == 0


async def test_disabled_device_loses_its_session_and_cannot_return(gateway: Harness) -> None:
    a, witness = gateway.directory.add(), gateway.directory.add()
    await gateway.broker.reconcile()
    events = gateway.events
    async with gateway.raw_device(a) as (raw, _, _):
        await events.wait_for("connect", a.did)
        await gateway.broker.devices_changed([gateway.directory.change(a.did, enabled=False)])
        assert gateway.broker.connected_dids() == set()
        assert await raw.closed_by_broker()
    assert await gateway.refusal(a) == 5
    async with gateway.device(witness):
        # Mosquitto logs in order: the kick and the refusal were read before this connection
        await events.wait_for("connect", witness.did)
    assert events.of("disconnect", a.did) == [("disconnect", a.did, DisconnectReason.KICKED)]
    assert len(events.of("connect", a.did)) == 1
    assert gateway.broker.stats.auth_failures == 1
    enabled = gateway.directory.change(a.did, enabled=True)
    await gateway.broker.devices_changed([enabled])
    async with gateway.device(enabled):
        await events.wait_for("connect", a.did, count=2)
    assert await gateway.broker.reconcile() == 0


# -- the gateway's own connection and counters ------------------------------------------------


async def test_counters(gateway: Harness) -> None:
    a = gateway.directory.add()
    await gateway.broker.reconcile()
    assert await gateway.refusal(a, password=new_passcode()) == 5
    async with gateway.device(a) as device:
        await device.subscribe(f"app2dev/{a.did}/#")
        for payload in (b"one", b"two"):
            await device.publish(f"dev2app/{a.did}", payload)
        await gateway.events.wait_for("publish", a.did, count=2)
        await gateway.broker.publish(f"app2dev/{a.did}/cloud", b"three")
        assert (await next_message(device)).payload == b"three"
    await gateway.events.wait_for("disconnect", a.did)
    stats = gateway.broker.stats
    assert (stats.connects, stats.messages_in, stats.messages_out, stats.auth_failures) == (
        1,
        2,
        1,
        1,
    )
    assert (stats.denied_publish, stats.denied_subscribe) == (0, 0)  # Mosquitto does not tell


@pytest.mark.parametrize("reachable", [False, True], ids=["nothing-listening", "wrong-password"])
async def test_unreachable_broker_fails_to_start_within_the_connect_timeout(
    mosquitto: MosquittoServer, reachable: bool
) -> None:
    port = mosquitto.port if reachable else free_port()
    url = f"mqtt://iotcloud-gateway:not-the-password@127.0.0.1:{port}"
    adapter = ExternalBroker(BrokerTarget.parse(url), Directory(), Recorder(), connect_timeout=0.5)
    async with asyncio.timeout(WAIT):
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}") as failed:
            await adapter.__aenter__()
    assert "not-the-password" not in str(failed.value)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "external-broker"]


# -- data-template (Tencent) devices ----------------------------------------------------------


async def test_a_thing_device_admitted_by_the_operator_is_heard_and_reached(
    mosquitto: MosquittoServer,
) -> None:
    """With ``credentials="none"`` the operator's own authentication admits data-template
    devices (played here by a dynamic-security client the test makes); the adapter hears their
    ``$thing/up`` messages as the device and publishes on their ``$thing/down`` topics."""
    directory, events = Directory(), Recorder()
    product_id, name = "ABCDE12345", unique("lamp")
    principal = DevicePrincipal(unique("d"), product_id, device_name=name, thing=True)
    client_id = product_id + name
    directory.things[client_id] = principal
    username, password = f"{client_id};12010126;abcde;0", new_passcode()
    acls = [
        {"acltype": "publishClientSend", "topic": f"$thing/up/property/{product_id}/{name}"},
        {"acltype": "subscribePattern", "topic": f"$thing/down/property/{product_id}/{name}"},
        {"acltype": "publishClientReceive", "topic": f"$thing/down/property/{product_id}/{name}"},
    ]
    async with new_adapter(mosquitto, directory, events) as admin:
        await directory.listed()
        await admin._control(
            [
                {
                    "command": "createRole",
                    "rolename": "op-" + name,
                    "acls": [{**acl, "allow": True} for acl in acls],
                },
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "roles": [{"rolename": "op-" + name}],
                },
            ]
        )
    try:
        adapter = new_adapter(
            mosquitto, directory, events, client_id=unique("late-"), credentials="none"
        )
        async with (
            adapter,
            aiomqtt.Client(
                "127.0.0.1",
                mosquitto.port,
                identifier=client_id,
                username=username,
                password=password,
            ) as device,
        ):
            (connect,) = await events.wait_for("connect", principal.did)
            assert connect[2] == client_id
            assert adapter.connected_dids() == {principal.did}
            await device.subscribe(f"$thing/down/property/{product_id}/{name}")
            report = b'{"method":"report","clientToken":"1","params":{}}'
            await device.publish(f"$thing/up/property/{product_id}/{name}", report, qos=1)
            (published,) = await events.wait_for("publish", principal.did)
            assert published[2:] == (f"$thing/up/property/{product_id}/{name}", report)
            await adapter.publish(f"$thing/down/property/{product_id}/{name}", b'{"code":0}')
            message = await next_message(device)
            assert bytes(message.payload) == b'{"code":0}'  # type: ignore[arg-type]
    finally:
        async with new_adapter(mosquitto, directory, events, client_id=unique("c-")) as cleanup:
            await cleanup._control(
                [
                    {"command": "deleteClient", "username": username},
                    {"command": "deleteRole", "rolename": "op-" + name},
                ]
            )


def test_thing_devices_are_never_written_to_dynamic_security() -> None:
    thing = DeviceCredential(unique("d"), "ABCDE12345", new_passcode(), enabled=True, thing=True)
    assert sync_commands(thing, None) == []
    assert sync_commands(thing, {"username": thing.did}) == [
        {"command": "deleteClient", "username": thing.did}
    ]
