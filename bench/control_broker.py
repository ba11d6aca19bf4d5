"""The MQTT ceiling of the control and scheduler benchmarks: the embedded broker alone, in its
own process.

The same `EmbeddedBroker` class that ``iotcloud serve`` runs (our admission, framing and ACL
layer in front of amqtt's routing, on uvloop) with no registry, no storage and no HTTP: every
CONNECT is accepted as a device, and one extra client, ``bench-publisher``, may publish to
``app2dev/...`` - the topics the server itself publishes commands on, which no device may. Its
PUBLISHes reach the device connections subscribed to ``app2dev/{did}/#`` through amqtt's routing,
so a command costs one MQTT PUBLISH in and one out, like a control request minus HTTP,
authentication and the binding check. ``bench-publisher`` may also subscribe to ``dev2app/#``,
where the devices' 0x0094 acknowledgements come back (the scheduler's acknowledged commands).

Run as ``python -m bench.control_broker``; prints ``{"port": P}`` once listening and runs until
its standard input ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from amqtt.contexts import Action

from iotcloud.gateway.broker import AclAction, DevicePrincipal, DisconnectReason
from iotcloud.gateway.embedded import EmbeddedBroker

PUBLISHER = "bench-publisher"


class AcceptAll:
    """`Authenticator`: every client id is a device of product ``bench``."""

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal:
        return DevicePrincipal(did=client_id, product_key="bench")


class IgnoreEvents:
    """`BrokerEvents` that do nothing (the server would decode and store device messages)."""

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        pass

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        pass

    async def on_publish(self, principal: DevicePrincipal, topic: str, payload: bytes) -> None:
        pass

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        pass


class CommandPassThroughBroker(EmbeddedBroker):
    """The embedded broker, letting the benchmark's publisher send on ``app2dev/...`` and
    subscribe to ``dev2app/#``.

    Overrides the private topic check for that one client and action only; devices' ACL,
    admission, framing and routing are the production code.
    """

    def _check_topic(self, session: Any, topic: str | None, action: Any) -> bool:
        if (
            action == Action.PUBLISH
            and session is not None
            and session.client_id == PUBLISHER
            and topic is not None
            and topic.startswith("app2dev/")
        ):
            self.stats.messages_in += 1
            return True
        if (
            action == Action.SUBSCRIBE
            and session is not None
            and session.client_id == PUBLISHER
            and topic == "dev2app/#"
        ):
            return True
        return super()._check_topic(session, topic, action)


async def serve() -> None:
    async with CommandPassThroughBroker("127.0.0.1", 0, AcceptAll(), IgnoreEvents()) as broker:
        print(json.dumps({"port": broker.port}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            stats = broker.stats
            print(json.dumps({"in": stats.messages_in, "out": stats.messages_out}), flush=True)


def main() -> None:
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    main()
