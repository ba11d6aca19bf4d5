"""iotcloud scaled out for the tests: a throwaway two-node RabbitMQ cluster, one PostgreSQL
database and two processes of each role, one of each on each broker node.

``api`` process *i* answers broker node *i*'s HTTP auth backend (a local ``api`` process per
node, as ``docs/deploy.md`` sets it up); every process connects to the broker node of its own
index over MQTT, AMQP and the management API. The processes start together once the cluster is
up; on exit each one still running must stop with status 0."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiomqtt

from iotcloud.gateway.rabbitmq import MESSAGES_QUEUE
from tests.devices import PASSCODE, MqttDevice
from tests.pg import free_port
from tests.rabbitmq import RabbitCluster
from tests.server import RunningServer, make_server

ROLES = ("api", "gateway", "scheduler")


@dataclass
class ScaleOut:
    cluster: RabbitCluster
    database_url: str
    apis: list[RunningServer]
    gateways: list[RunningServer]
    schedulers: list[RunningServer]

    @property
    def api(self) -> RunningServer:
        return self.apis[0]

    @property
    def processes(self) -> list[RunningServer]:
        return [*self.apis, *self.gateways, *self.schedulers]

    def server(self, role: str, node: int) -> RunningServer:
        return {"api": self.apis, "gateway": self.gateways, "scheduler": self.schedulers}[role][
            node
        ]


def broker_settings(cluster: RabbitCluster, node: int) -> dict[str, object]:
    """The settings of a process connected to broker node ``node``."""
    return {
        "mqtt_broker": "rabbitmq",
        "mqtt_url": cluster.mqtt_url(node),
        "mqtt_port": cluster.mqtt_port(node),
        "amqp_url": cluster.amqp_url(node),
        "rabbitmq_management_url": cluster.management_url(node),
    }


START_TIMEOUT = 120.0
"""Seconds each process has to answer ``/healthz``: five start at once on a small machine."""


def device_on(stack: ScaleOut, node: int, did: str, *, answer: bool = False) -> MqttDevice:
    """A Gizwits device (MQTT 3.1, the test passcode) connecting to broker node ``node``."""
    return MqttDevice(
        stack.cluster.mqtt_port(node),
        did,
        PASSCODE,
        protocol=aiomqtt.ProtocolVersion.V31,
        answer=answer,
    )


def start_all(servers: list[RunningServer]) -> None:
    """Start ``servers`` at once (each waits for its own ``/healthz``)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        for started in [pool.submit(server.start, START_TIMEOUT) for server in servers]:
            started.result()


@contextmanager
def scale_out(base: Path, database_url: str, **settings: Any) -> Iterator[ScaleOut]:
    """The stack described in the module docstring; ``settings`` apply to every process."""
    api_ports = [free_port(), free_port()]  # known before the cluster starts: it asks them
    auth_bases = [f"http://127.0.0.1:{port}/broker/rabbitmq" for port in api_ports]
    with RabbitCluster(auth_bases) as cluster:

        def process(role: str, node: int, **extra: object) -> RunningServer:
            return make_server(
                base / f"{role}{node}",
                database_url,
                role=role,
                **broker_settings(cluster, node),
                **settings,
                **extra,
            )

        stack = ScaleOut(
            cluster,
            database_url,
            apis=[process("api", node, http_port=api_ports[node]) for node in (0, 1)],
            gateways=[process("gateway", node) for node in (0, 1)],
            schedulers=[process("scheduler", node) for node in (0, 1)],
        )
        # the schema is migrated by the first process; the others find it done
        stack.api.start(START_TIMEOUT)
        try:
            start_all([server for server in stack.processes if server is not stack.api])
            yield stack
        finally:
            failures = []
            for server in stack.processes:
                if server.process is not None and server.process.poll() is None:
                    code = server.stop()
                    if code != 0:
                        failures.append(f"{server.data_dir.name} exited with {code}")
                        failures.append(server.log()[-4000:])
            assert not failures, "\n".join(failures)


def node_processes(stack: ScaleOut, node: int) -> list[RunningServer]:
    """The processes connected to broker node ``node`` (one of each role)."""
    return [stack.apis[node], stack.gateways[node], stack.schedulers[node]]


def queue_node(stack: ScaleOut) -> int:
    """The index of the broker node holding the gateways' queue of device messages (a classic
    queue lives on one node)."""
    queue = stack.cluster.management_get("/queues/%2F/" + quote(MESSAGES_QUEUE, safe=""))
    return stack.cluster.node_names.index(queue["node"])
