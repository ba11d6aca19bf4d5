"""The ingest benchmark's ceiling: the embedded broker alone, in its own process.

The same `EmbeddedBroker` that ``iotcloud serve`` runs (amqtt behind our admission, framing and
ACL layer, on uvloop), with no registry and no storage: every CONNECT is accepted, ``on_publish``
events are only counted, and one subscriber (client id ``bench-subscriber``) may subscribe to
``dev2app/#`` and so receives every device report. Run as
``python -m bench.ceiling_broker --port P``; prints ``{"port": P}`` once listening, then answers
``stats`` lines on stdin with a JSON line of counters and this process's CPU seconds; exits at
end of input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

from amqtt.contexts import Action

from iotcloud.gateway.broker import AclAction, DevicePrincipal, DisconnectReason
from iotcloud.gateway.embedded import EmbeddedBroker

SUBSCRIBER = "bench-subscriber"


class AcceptEveryone:
    """`Authenticator`: every client id is a device of product ``bench``."""

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> DevicePrincipal:
        return DevicePrincipal(did=client_id, product_key="bench")


class CountingEvents:
    """`BrokerEvents` that only count (no decoding, no storage)."""

    def __init__(self) -> None:
        self.publishes = 0
        self.connects = 0

    async def on_connect(
        self, principal: DevicePrincipal, client_id: str, keepalive: int, peer: str
    ) -> None:
        self.connects += 1

    async def on_disconnect(
        self, principal: DevicePrincipal, client_id: str, reason: DisconnectReason
    ) -> None:
        self.connects -= 1

    async def on_publish(self, principal: DevicePrincipal, topic: str, payload: bytes) -> None:
        self.publishes += 1

    async def on_denied(self, principal: DevicePrincipal, action: AclAction, topic: str) -> None:
        pass


class PassThroughBroker(EmbeddedBroker):
    """The embedded broker, letting the benchmark's subscriber read every device's reports.

    Overrides the private topic check for that one client only; everything else (devices'
    ACL, routing, framing) is the production code path.
    """

    def _check_topic(self, session: Any, topic: str | None, action: Any) -> bool:
        if (
            action == Action.SUBSCRIBE
            and session is not None
            and session.client_id == SUBSCRIBER
            and topic == "dev2app/#"
        ):
            return True
        return super()._check_topic(session, topic, action)


async def serve(port: int) -> None:
    events = CountingEvents()
    async with PassThroughBroker("127.0.0.1", port, AcceptEveryone(), events) as broker:
        print(json.dumps({"port": broker.port}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats = broker.stats
            print(
                json.dumps(
                    {
                        "time": time.monotonic(),
                        "cpu": usage.ru_utime + usage.ru_stime,
                        "messages_in": stats.messages_in,
                        "messages_out": stats.messages_out,
                        "events": events.publishes,
                        "events_dropped": stats.events_dropped,
                        "sessions": events.connects,
                    }
                ),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
