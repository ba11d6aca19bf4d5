"""Broker authentication over HTTP, without a server: RabbitMQ's topic translation and
resources, the decisions, and the memory of answers (with an injected clock and a registry that
counts its lookups)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from datetime import UTC, datetime

import pytest

from iotcloud.config import ConfigError, Settings
from iotcloud.domain.clock import FrozenClock
from iotcloud.gateway.broker import AuthRefusal, DevicePrincipal
from iotcloud.services.broker_auth import (
    BrokerAuthService,
    device_shaped,
    emqx_allowed,
    expected_client_id,
    may_bind,
    may_publish_routing_key,
    mqtt_topic,
    parse_networks,
    rabbitmq_resource_allowed,
    rabbitmq_topic_allowed,
    routing_key,
    subscription_queues,
)
from tests.broker_requests import routing_key as rabbitmq_mqtt2amqp

DID = "AbCdEfGhIjKlMnOpQrSt01"
OTHER = "ZyXwVuTsRqPoNmLkJiHg99"
PK = "0123456789abcdef0123456789abcdef"
OTHER_PK = "fedcba9876543210fedcba9876543210"
PID = "ABCDE12345"
DEVICE = DevicePrincipal(did=DID, product_key=PK)
LAMP = DevicePrincipal(did="T" * 22, product_key=PID, device_name="lamp", thing=True)
DOTTED = DevicePrincipal(did="U" * 22, product_key=PID, device_name="lamp.v2", thing=True)
THING_USER = f"{PID}lamp;12010126;abcde;4102444800"
PASSCODE = "ABCDEFGHIJ"


# -- translation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "key"),
    [
        (f"dev2app/{DID}", f"dev2app.{DID}"),
        (f"app2dev/{DID}/#", f"app2dev.{DID}.#"),
        (f"app2dev/{DID}/+", f"app2dev.{DID}.*"),
        ("+/+/#", "*.*.#"),
        (f"$thing/up/property/{PID}/lamp.v2", f"$thing.up.property.{PID}.lamp.v2"),
        ("cli2ser_req", "cli2ser_req"),
    ],
)
def test_topics_translate_as_rabbitmq_does(topic: str, key: str) -> None:
    assert routing_key(topic) == key == rabbitmq_mqtt2amqp(topic)
    assert mqtt_topic(key) == topic.replace("lamp.v2", "lamp/v2")


def test_subscription_queues_are_named_after_the_client_id() -> None:
    assert subscription_queues(DID) == (
        f"mqtt-subscription-{DID}qos0",
        f"mqtt-subscription-{DID}qos1",
    )


# -- Gizwits devices on RabbitMQ ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        (f"dev2app.{DID}", True),
        (f"dev2app.{DID}.app42", True),
        ("cli2ser_req", True),
        (f"dev2app.{OTHER}", False),
        (f"dev2app.{DID}.a.b", False),  # too deep: dev2app/{did}/{client}/more
        (f"dev2app.{DID}.", False),  # an empty level
        (f"dev2app.{DID}.*", False),
        (f"dev2app.{DID}.#", False),
        ("dev2app.#", False),
        (f"app2dev.{DID}.x", False),  # devices do not talk to themselves
        (f"$thing.up.property.{PID}.lamp", False),
        ("iotcloud.bus", False),  # the processes' own channel
        ("", False),
    ],
)
def test_a_gizwits_device_publishes_only_as_itself(key: str, allowed: bool) -> None:
    assert may_publish_routing_key(DEVICE, key) is allowed
    assert rabbitmq_topic_allowed(DEVICE, "amq.topic", "write", key) is allowed


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        (f"app2dev.{DID}.#", True),
        (f"app2dev.{DID}.*", True),
        (f"app2dev.{DID}", True),
        (f"app2dev.{DID}.app42", True),
        (f"ser2cli_res.{DID}", True),
        (f"ser2cli_noti.{PK}", True),
        ("dev2app.#", False),
        (f"dev2app.{DID}", False),
        ("app2dev.*.#", False),
        (f"app2dev.{OTHER}.#", False),
        ("app2dev.#", False),
        ("#", False),
        (f"*.{DID}", False),
        (f"*.{DID}.#", False),
        (f"ser2cli_res.{DID}.#", False),
        ("ser2cli_res.*", False),
        (f"ser2cli_noti.{OTHER_PK}", False),
        ("ser2cli_noti.#", False),
        ("iotcloud.bus", False),
        ("iotcloud.#", False),
    ],
)
def test_a_gizwits_device_binds_only_its_own_topics(key: str, allowed: bool) -> None:
    assert may_bind(DEVICE, key) is allowed
    assert rabbitmq_topic_allowed(DEVICE, "amq.topic", "read", key) is allowed


def test_topic_questions_on_other_exchanges_or_permissions_are_refused() -> None:
    own = f"dev2app.{DID}"
    assert not rabbitmq_topic_allowed(DEVICE, "amq.fanout", "write", own)
    assert not rabbitmq_topic_allowed(DEVICE, "amq.topic", "configure", own)
    assert not rabbitmq_topic_allowed(DEVICE, "amq.topic", "WRITE", own)


def test_identifiers_that_are_not_single_words_refuse_everything() -> None:
    dotted = DevicePrincipal(did="a.b", product_key=PK)
    assert not may_publish_routing_key(dotted, "dev2app.a.b")
    assert not may_bind(dotted, "app2dev.a.b.#")


# -- data-template devices on RabbitMQ ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["property", "event", "action", "service"])
def test_a_template_device_uses_exactly_its_own_thing_keys(kind: str) -> None:
    assert may_publish_routing_key(LAMP, f"$thing.up.{kind}.{PID}.lamp")
    assert may_bind(LAMP, f"$thing.down.{kind}.{PID}.lamp")
    assert not may_publish_routing_key(LAMP, f"$thing.down.{kind}.{PID}.lamp")
    assert not may_bind(LAMP, f"$thing.up.{kind}.{PID}.lamp")
    assert not may_bind(LAMP, f"$thing.down.{kind}.{PID}.*")
    assert not may_bind(LAMP, f"$thing.down.{kind}.{PID}.#")
    assert not may_publish_routing_key(LAMP, f"$thing.up.{kind}.{PID}.other")


def test_a_device_name_with_a_dot_is_matched_as_a_whole() -> None:
    assert may_publish_routing_key(DOTTED, f"$thing.up.property.{PID}.lamp.v2")
    assert may_bind(DOTTED, f"$thing.down.property.{PID}.lamp.v2")
    # "lamp" and "lamp.v2" of one product cannot reach each other's keys
    assert not may_publish_routing_key(LAMP, f"$thing.up.property.{PID}.lamp.v2")
    assert not may_bind(DOTTED, f"$thing.down.property.{PID}.lamp")
    assert not may_bind(LAMP, f"$thing.down.property.{PID}.lamp.*")


def test_a_template_device_has_no_gizwits_topics() -> None:
    assert not may_publish_routing_key(LAMP, f"dev2app.{LAMP.did}")
    assert not may_bind(LAMP, f"app2dev.{LAMP.did}.#")


# -- resources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("permission", ["configure", "write", "read"])
@pytest.mark.parametrize("qos", [0, 1])
def test_a_device_may_use_its_own_subscription_queues(permission: str, qos: int) -> None:
    assert rabbitmq_resource_allowed(
        DEVICE, "queue", f"mqtt-subscription-{DID}qos{qos}", permission
    )
    assert rabbitmq_resource_allowed(
        LAMP, "queue", f"mqtt-subscription-{PID}lampqos{qos}", permission
    )
    assert not rabbitmq_resource_allowed(
        DEVICE, "queue", f"mqtt-subscription-{OTHER}qos{qos}", permission
    )
    assert not rabbitmq_resource_allowed(DEVICE, "queue", f"mqtt-subscription-{DID}", permission)


def test_amq_topic_is_for_publishing_and_binding_only() -> None:
    assert rabbitmq_resource_allowed(DEVICE, "exchange", "amq.topic", "write")
    assert rabbitmq_resource_allowed(DEVICE, "exchange", "amq.topic", "read")
    assert not rabbitmq_resource_allowed(DEVICE, "exchange", "amq.topic", "configure")
    assert not rabbitmq_resource_allowed(DEVICE, "exchange", "amq.fanout", "write")
    assert not rabbitmq_resource_allowed(DEVICE, "exchange", "", "write")
    assert not rabbitmq_resource_allowed(DEVICE, "topic", "amq.topic", "write")
    assert not rabbitmq_resource_allowed(DEVICE, "queue", f"mqtt-subscription-{DID}qos0", "all")


# -- EMQX -----------------------------------------------------------------------------------------


def test_emqx_decisions_use_the_mqtt_topic() -> None:
    assert emqx_allowed(DEVICE, "publish", f"dev2app/{DID}")
    assert emqx_allowed(DEVICE, "subscribe", f"app2dev/{DID}/#")
    assert not emqx_allowed(DEVICE, "subscribe", "dev2app/#")
    assert not emqx_allowed(DEVICE, "subscribe", f"$share/g/app2dev/{DID}/#")
    assert not emqx_allowed(DEVICE, "publish", f"dev2app.{DID}")
    assert not emqx_allowed(DEVICE, "all", f"dev2app/{DID}")
    assert emqx_allowed(DOTTED, "publish", f"$thing/up/event/{PID}/lamp.v2")
    assert not emqx_allowed(DOTTED, "subscribe", f"$thing/down/event/{PID}/lamp")


def test_user_names_that_can_name_a_device() -> None:
    assert device_shaped(DID)
    assert device_shaped(THING_USER)
    assert not device_shaped("iotcloud")
    assert not device_shaped(DID + "x")
    assert not device_shaped("Ä" * 22)
    assert expected_client_id(DID) == DID
    assert expected_client_id(THING_USER) == f"{PID}lamp"


def test_networks_are_checked() -> None:
    assert parse_networks(" 127.0.0.0/8, ::1 ,") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match=r"10\.0\.0\.1/8"):
        parse_networks("10.0.0.1/8")
    with pytest.raises(ConfigError, match="IOTCLOUD_BROKER_AUTH_FROM"):
        Settings.load({}, broker_auth_from="localhost")
    with pytest.raises(ConfigError, match="IOTCLOUD_BROKER_AUTH_CACHE_SECONDS"):
        Settings.load({}, broker_auth_cache_seconds=-1)
    with pytest.raises(ConfigError, match="IOTCLOUD_RABBITMQ_VHOST"):
        Settings.load({}, rabbitmq_vhost="")


# -- memory ---------------------------------------------------------------------------------------


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Registry:
    """An `Authenticator` and `DeviceDirectory` over a dict, counting what it is asked."""

    def __init__(self) -> None:
        self.devices: dict[str, tuple[DevicePrincipal, str, bool]] = {
            DID: (DEVICE, PASSCODE, True),
            LAMP.client_id: (LAMP, "signed", True),
        }
        self.asked = 0
        self.gate: asyncio.Event | None = None
        self.failing = False

    async def _wait(self) -> None:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise ConnectionError("database down")

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal | AuthRefusal | None:
        found = self.devices.get(client_id)  # read, then answered after the gate
        await self._wait()
        if found is None or found[1] != password:
            return AuthRefusal.BAD_CREDENTIALS
        return found[0] if found[2] else AuthRefusal.NOT_AUTHORIZED

    async def principal_of(self, did: str) -> DevicePrincipal | None:
        raise NotImplementedError

    async def principal_of_client(self, client_id: str) -> DevicePrincipal | None:
        found = self.devices.get(client_id)
        await self._wait()
        return found[0] if found is not None and found[2] else None

    def credentials(self, dids: object = None) -> object:
        raise NotImplementedError


def service(
    registry: Registry, ticker: Ticker, *, ttl: float = 5.0, clock: FrozenClock | None = None
) -> BrokerAuthService:
    return BrokerAuthService(
        registry,  # type: ignore[arg-type]
        registry,  # type: ignore[arg-type]
        clock or FrozenClock(datetime(2099, 12, 31, tzinfo=UTC)),
        cache_seconds=ttl,
        allowed_from=parse_networks("127.0.0.0/8,::1,10.1.0.0/16"),
        monotonic=ticker,
    )


async def test_an_admission_is_reused_for_the_ttl_then_asked_again() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    assert await auth.admit(DID, PASSCODE, DID) == DEVICE
    assert await auth.admit(DID, PASSCODE, DID) == DEVICE
    assert await auth.device(DID) == DEVICE  # learnt from the admission
    assert registry.asked == 1
    ticker.now = 5.0
    assert await auth.admit(DID, PASSCODE, DID) == DEVICE
    assert registry.asked == 2


async def test_another_password_is_another_question() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    assert await auth.admit(DID, PASSCODE, DID) == DEVICE
    assert await auth.admit(DID, "WRONGWRONG", DID) is AuthRefusal.BAD_CREDENTIALS
    assert await auth.admit(DID, "WRONGWRONG", DID) is AuthRefusal.BAD_CREDENTIALS
    assert registry.asked == 2


async def test_a_client_id_that_is_not_the_devices_own_is_refused_unasked() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    assert await auth.admit(DID, PASSCODE, OTHER) is AuthRefusal.BAD_CREDENTIALS
    assert await auth.admit(DID, "", DID) is AuthRefusal.BAD_CREDENTIALS
    assert await auth.admit("guest", "guest", "guest") is AuthRefusal.BAD_CREDENTIALS
    assert await auth.admit(THING_USER, "signed", DID) is AuthRefusal.BAD_CREDENTIALS
    assert registry.asked == 0
    assert await auth.admit(THING_USER, "signed", f"{PID}lamp") == LAMP


async def test_a_change_drops_the_devices_answers_and_every_refusal() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    assert await auth.admit(DID, PASSCODE, DID) == DEVICE
    assert await auth.admit(OTHER, PASSCODE, OTHER) is AuthRefusal.BAD_CREDENTIALS
    assert await auth.admit(THING_USER, "signed", LAMP.client_id) == LAMP
    asked = registry.asked

    registry.devices[DID] = (DEVICE, PASSCODE, False)  # disabled ...
    registry.devices[OTHER] = (DevicePrincipal(OTHER, PK), PASSCODE, True)  # ... and created
    auth.devices_changed([DID])
    assert await auth.admit(DID, PASSCODE, DID) is AuthRefusal.NOT_AUTHORIZED
    assert await auth.device(DID) is None
    assert (await auth.admit(OTHER, PASSCODE, OTHER)) == DevicePrincipal(OTHER, PK)
    assert await auth.admit(THING_USER, "signed", LAMP.client_id) == LAMP  # kept
    assert registry.asked == asked + 3


async def test_a_lookup_that_raced_a_change_is_not_kept() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    registry.gate = asyncio.Event()
    asking = asyncio.create_task(auth.admit(DID, PASSCODE, DID))
    await asyncio.sleep(0.01)
    auth.devices_changed([DID])  # the device is disabled while the lookup is in flight
    registry.devices[DID] = (DEVICE, PASSCODE, False)
    registry.gate.set()
    assert await asking == DEVICE  # the answer read before the change ...
    assert await auth.admit(DID, PASSCODE, DID) is AuthRefusal.NOT_AUTHORIZED  # ... not kept


async def test_questions_asked_together_share_one_lookup() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    registry.gate = asyncio.Event()
    asking = [asyncio.create_task(auth.device(DID)) for _ in range(20)]
    asking += [asyncio.create_task(auth.admit(DID, PASSCODE, DID)) for _ in range(20)]
    await asyncio.sleep(0.01)
    registry.gate.set()
    assert set(await asyncio.gather(*asking)) == {DEVICE}
    assert registry.asked == 2


async def test_no_caching_asks_every_time() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker, ttl=0)
    for _ in range(3):
        assert await auth.admit(DID, PASSCODE, DID) == DEVICE
        assert await auth.device(DID) == DEVICE
    assert registry.asked == 6


async def test_an_expired_template_user_name_is_refused_even_when_remembered() -> None:
    registry, ticker = Registry(), Ticker()
    expiry = 4102444800  # THING_USER's
    clock = FrozenClock(datetime.fromtimestamp(expiry - 1, UTC))
    auth = service(registry, ticker, clock=clock)
    assert await auth.admit(THING_USER, "signed", LAMP.client_id) == LAMP
    clock.advance(2)
    assert await auth.admit(THING_USER, "signed", LAMP.client_id) is AuthRefusal.BAD_CREDENTIALS
    assert registry.asked == 1


async def test_a_user_name_must_have_its_devices_shape() -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    assert await auth.device(THING_USER) == LAMP
    assert await auth.device(LAMP.client_id) is None  # not device-shaped: not even asked
    registry.devices[DID] = (LAMP, "x", True)  # a did that finds a template device
    assert await auth.device(DID) is None
    assert await auth.device("iotcloud-admin") is None


async def test_a_registry_failure_is_raised_not_kept_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, ticker = Registry(), Ticker()
    auth = service(registry, ticker)
    registry.failing = True
    with caplog.at_level(logging.INFO, logger="iotcloud.services.broker_auth"):
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await auth.admit(DID, PASSCODE, DID)
            with pytest.raises(ConnectionError):
                await auth.device(DID)
        registry.failing = False
        assert await auth.admit(DID, PASSCODE, DID) == DEVICE
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "broker authentication cannot read the device registry",
        "broker authentication reads the device registry again",
    ]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.200.3", True),
        ("10.2.0.1", False),
        ("192.168.1.10", False),
        ("::ffff:192.168.1.10", False),
        ("fe80::1%eth0", False),
        ("localhost", False),
        ("", False),
        (None, False),
    ],
)
def test_only_the_configured_networks_may_ask(host: str | None, allowed: bool) -> None:
    auth = service(Registry(), Ticker())
    assert auth.peer_allowed(host) is allowed
    assert auth.peer_allowed(host) is allowed  # remembered


def test_the_answers_memory_is_counted() -> None:
    auth = service(Registry(), Ticker())
    (family,) = list(auth.metrics())
    assert family.name == "iotcloud_broker_auth_cache_requests"
    assert {tuple(sample.labels.values()) for sample in family.samples} == {
        ("admission", "hit"),
        ("admission", "miss"),
        ("device", "hit"),
        ("device", "miss"),
    }
