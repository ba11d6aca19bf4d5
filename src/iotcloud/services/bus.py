"""Changes one process makes that every process of a deployment must hear at once.

Each process keeps short-lived caches (checked tokens, passed binding checks, device
principals) and open WebSocket sessions. When one process signs a user out, changes a password
or profile, makes or removes a binding, or disables, enables or re-keys devices, it applies the
change to itself and `announce`s it; the others apply it on receipt, so no process relies on its
cache's time-to-live for coherence (the TTL only bounds what a lost message costs).

The transport is the deployment's MQTT broker (`BUS_TOPIC`, QoS 1, on the gateway's own
connection: devices may neither publish nor subscribe there). A single embedded process has no
transport and no peers: `announce` does nothing. Messages are JSON objects
``{"origin", "kind", ...}``; a process ignores its own (``origin``) and drops, with a warning,
what it cannot read.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from iotcloud.gateway.broker import BUS_TOPIC

log = logging.getLogger(__name__)

Publish = Callable[[bytes], Awaitable[None]]
Handler = Callable[[Mapping[str, Any]], Awaitable[None] | None]


class ProcessBus:
    """This process's end of the bus; `attach` a transport, register handlers with `on`."""

    def __init__(self) -> None:
        self.origin = secrets.token_hex(8)
        self.sent = 0
        self.received_count = 0
        self.failed = 0
        self._publish: Publish | None = None
        self._handlers: dict[str, Handler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._decoder = msgspec.json.Decoder(dict[str, Any])
        self._warned = False

    def attach(self, publish: Publish | None) -> None:
        """The transport (None: a single process, nothing to tell)."""
        self._publish = publish

    def on(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def announce(self, kind: str, **body: Any) -> None:
        """Tell the other processes; returns at once (the message is published in the
        background, a failure logged: the receivers' cache TTL still bounds staleness)."""
        if self._publish is None:
            return
        message = msgspec.json.encode({**body, "origin": self.origin, "kind": kind})
        task = asyncio.get_running_loop().create_task(self._send(kind, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, kind: str, message: bytes) -> None:
        assert self._publish is not None
        try:
            await self._publish(message)
            self.sent += 1
        except Exception as exc:  # the broker is down: other processes catch up by TTL
            self.failed += 1
            log.warning("could not tell other processes of %s: %s", kind, exc)

    async def received(self, payload: bytes) -> None:
        """A message from the transport: applied unless it is this process's own."""
        try:
            message = self._decoder.decode(payload)
            origin, kind = message["origin"], message["kind"]
        except (msgspec.DecodeError, KeyError) as exc:
            if not self._warned:
                log.warning("dropped an unreadable message on %s: %s", BUS_TOPIC, exc)
                self._warned = True
            return
        if origin == self.origin:
            return
        handler = self._handlers.get(kind)
        if handler is None:
            return  # a newer process's kind: nothing to do here
        self.received_count += 1
        try:
            outcome = handler(message)
            if outcome is not None:
                await outcome
        except Exception:
            log.exception("applying %s from another process failed", kind)

    async def close(self) -> None:
        """Wait briefly for announcements still being published."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
