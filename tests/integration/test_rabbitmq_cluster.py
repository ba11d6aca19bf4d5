"""The throwaway two-node RabbitMQ cluster (``tests/rabbitmq.py``) does what the scale-out suite
relies on: devices authenticated by an HTTP auth backend (here a stdlib test double allowing
``dev1``/``pw`` only, standing in for iotcloud's ``/broker/rabbitmq/...`` endpoints), MQTT
messages routed across nodes, one client-id registry for the whole cluster, and the
administrator's management API."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import aio_pika
import aiomqtt
import pytest

from tests.rabbitmq import RabbitCluster, amqp_speaks, rabbitmq_installed

pytestmark = pytest.mark.skipif(
    not rabbitmq_installed() and not os.environ.get("IOTCLOUD_TEST_REQUIRE_RABBITMQ"),
    reason="RabbitMQ is not installed (/usr/lib/rabbitmq/bin); bin/test installs it",
)

DEVICE, PASSWORD = "dev1", "pw"


class AuthBackendDouble:
    """RabbitMQ's HTTP auth backend contract on loopback (GET, plain-text ``allow``/``deny``):
    ``DEVICE``/``PASSWORD`` is let in and allowed everything, anyone else is denied. Every
    request is kept as ``(kind, query)`` with ``kind`` one of user, vhost, resource, topic."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                kind = url.path.rsplit("/", 1)[-1]
                query = dict(parse_qsl(url.query, keep_blank_values=True))
                double.requests.append((kind, query))
                allowed = query.get("username") == DEVICE and (
                    kind != "user" or query.get("password") == PASSWORD
                )
                body = b"allow" if allowed else b"deny"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/broker/rabbitmq"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, kind: str) -> list[dict[str, str]]:
        return [query for seen_kind, query in self.requests if seen_kind == kind]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def auth() -> Iterator[AuthBackendDouble]:
    double = AuthBackendDouble()
    try:
        yield double
    finally:
        double.close()


@pytest.fixture(scope="module")
def cluster(auth: AuthBackendDouble) -> Iterator[RabbitCluster]:
    with RabbitCluster(auth.base) as running:
        yield running


def device(
    cluster: RabbitCluster,
    node: int,
    client_id: str,
    username: str = DEVICE,
    password: str = PASSWORD,
) -> aiomqtt.Client:
    """An MQTT 3.1.1 client on ``node``, logging in as the device unless told otherwise."""
    return aiomqtt.Client(
        "127.0.0.1",
        cluster.mqtt_port(node),
        identifier=client_id,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )


def test_the_cluster_has_both_nodes_and_only_the_administrator(cluster: RabbitCluster) -> None:
    nodes = cluster.management_get("/nodes?columns=name,running", node=1)
    assert sorted((n["name"], n["running"]) for n in nodes) == [
        (name, True) for name in sorted(cluster.node_names)
    ]
    users = cluster.management_get("/users")
    assert [(u["name"], u["tags"]) for u in users] == [(cluster.user, ["administrator"])]
    assert all(amqp_speaks(cluster.nodes[i].amqp_port) for i in range(2))


async def test_a_device_on_node_1_receives_what_a_device_on_node_0_publishes(
    cluster: RabbitCluster, auth: AuthBackendDouble
) -> None:
    async with device(cluster, 1, "sub-on-1") as subscriber:
        await subscriber.subscribe([("dev2app/dev1/#", 1), ("ser2cli_noti/+", 0)])
        async with device(cluster, 0, "pub-on-0") as publisher:
            await publisher.publish("dev2app/dev1/state", b"\x00\x00\x00\x03\x04\x00\x00\x91", 1)
        async with asyncio.timeout(10):
            message = await anext(aiter(subscriber.messages))
    assert str(message.topic) == "dev2app/dev1/state"
    assert message.payload == b"\x00\x00\x00\x03\x04\x00\x00\x91"

    # Exactly what the HTTP backend is asked: iotcloud's /broker/rabbitmq endpoints get the same.
    who = {"username": DEVICE, "vhost": "/"}
    assert auth.seen("user") == [
        {**who, "password": PASSWORD, "client_id": "sub-on-1"},
        {**who, "password": PASSWORD, "client_id": "pub-on-0"},
    ]
    assert {**who, "ip": "127.0.0.1", "tags": "", "client_id": "pub-on-0"} in auth.seen("vhost")
    # SUBSCRIBE: the session's queue per QoS (configure, read, write), then amq.topic (read).
    subscriber_asked = [q for q in auth.seen("resource") if q["client_id"] == "sub-on-1"]
    for name in ("mqtt-subscription-sub-on-1qos1", "mqtt-subscription-sub-on-1qos0"):
        for permission in ("configure", "read", "write"):
            assert {
                **who,
                "tags": "",
                "client_id": "sub-on-1",
                "resource": "queue",
                "name": name,
                "permission": permission,
            } in subscriber_asked
    exchange = {**who, "tags": "", "resource": "exchange", "name": "amq.topic"}
    assert {**exchange, "client_id": "sub-on-1", "permission": "read"} in subscriber_asked
    # PUBLISH: amq.topic (write).
    assert {**exchange, "client_id": "pub-on-0", "permission": "write"} in auth.seen("resource")
    # Topics arrive as AMQP routing keys ("/" -> ".", "+" -> "*", "#" stays), the client id only
    # in the variable map.
    topic = {**who, "tags": "", "resource": "topic", "name": "amq.topic"}
    variables = {"variable_map.username": DEVICE, "variable_map.vhost": "/"}
    topics = auth.seen("topic")
    for routing_key in ("dev2app.dev1.#", "ser2cli_noti.*"):
        assert {
            **topic,
            **variables,
            "permission": "read",
            "routing_key": routing_key,
            "variable_map.client_id": "sub-on-1",
        } in topics
    assert {
        **topic,
        **variables,
        "permission": "write",
        "routing_key": "dev2app.dev1.state",
        "variable_map.client_id": "pub-on-0",
    } in topics


@pytest.mark.parametrize(("username", "password"), [(DEVICE, "wrong"), ("someone-else", PASSWORD)])
async def test_a_wrong_password_or_unknown_device_is_refused(
    cluster: RabbitCluster, auth: AuthBackendDouble, username: str, password: str
) -> None:
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with device(cluster, 1, "intruder", username=username, password=password):
            pass
    # CONNACK 4 (paho reports MQTT 3.1.1's return codes under their MQTT 5 names).
    assert str(refused.value.rc) == "Bad user name or password"
    asked = {"username": username, "password": password, "vhost": "/", "client_id": "intruder"}
    assert asked in auth.seen("user")
    assert not [q for q in auth.seen("vhost") if q["client_id"] == "intruder"]


async def test_a_client_id_is_unique_across_the_cluster(cluster: RabbitCluster) -> None:
    """A device that reconnects through the other node takes over its session there."""
    async with device(cluster, 0, "dev1") as first, device(cluster, 1, "dev1"):
        with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
            async with asyncio.timeout(10):
                await anext(aiter(first.messages))


async def test_a_full_reject_publish_queue_withholds_the_mqtt_puback(
    cluster: RabbitCluster,
) -> None:
    """What iotcloud's report queue relies on past its length bound (``x-overflow:
    reject-publish``): the broker does not acknowledge a QoS 1 report it could not queue, so
    the device keeps it, rather than the queue dropping the oldest report."""
    connection = await aio_pika.connect(cluster.amqp_url(0))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            "overflow-probe",
            arguments={"x-max-length": 3, "x-overflow": "reject-publish"},
            auto_delete=False,
        )
        await queue.bind("amq.topic", "overflow.#")
        async with aiomqtt.Client(
            "127.0.0.1",
            cluster.mqtt_port(1),
            identifier=DEVICE,
            username=DEVICE,
            password=PASSWORD,
            protocol=aiomqtt.ProtocolVersion.V311,
        ) as device:
            acknowledged = 0
            for index in range(3):
                await asyncio.wait_for(device.publish("overflow/x", str(index), qos=1), 10)
                acknowledged += 1
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(device.publish("overflow/x", "3", qos=1), 3)
        assert acknowledged == 3
        assert (
            await channel.declare_queue("overflow-probe", passive=True)
        ).declaration_result.message_count == 3
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
