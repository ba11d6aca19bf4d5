from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from iotcloud.services.bus import ProcessBus


def link(*buses: ProcessBus) -> None:
    """Every bus's announcements reach every bus (itself included, as a broker does)."""

    async def publish(payload: bytes) -> None:
        for bus in buses:
            await bus.received(payload)

    for bus in buses:
        bus.attach(publish)


async def settled(bus: ProcessBus) -> None:
    await bus.close()
    await asyncio.sleep(0)


async def test_announcements_reach_the_others_and_not_the_sender() -> None:
    here, there = ProcessBus(), ProcessBus()
    link(here, there)
    heard: dict[str, list[Mapping[str, Any]]] = {"here": [], "there": []}
    here.on("user_changed", heard["here"].append)
    there.on("user_changed", heard["there"].append)
    here.announce("user_changed", user_id=7)
    await settled(here)
    assert heard["here"] == []
    assert [message["user_id"] for message in heard["there"]] == [7]
    assert here.sent == 1
    assert there.received_count == 1


async def test_async_handlers_are_awaited_and_unknown_kinds_ignored() -> None:
    here, there = ProcessBus(), ProcessBus()
    link(here, there)
    done = asyncio.Event()

    async def handler(message: Mapping[str, Any]) -> None:
        done.set()

    there.on("binding_changed", handler)
    here.announce("something_newer", x=1)
    here.announce("binding_changed", did="d")
    await settled(here)
    assert done.is_set()
    assert there.received_count == 1


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", json.dumps({"kind": "user_changed"}).encode(), b"\xff\xfe"],
)
async def test_unreadable_messages_are_dropped(payload: bytes) -> None:
    bus = ProcessBus()
    heard: list[Mapping[str, Any]] = []
    bus.on("user_changed", heard.append)
    await bus.received(payload)
    assert heard == []


async def test_a_failing_handler_or_transport_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = ProcessBus()

    def broken(message: Mapping[str, Any]) -> None:
        raise KeyError("user_id")

    bus.on("user_changed", broken)
    await bus.received(json.dumps({"origin": "other", "kind": "user_changed"}).encode())
    assert "applying user_changed from another process failed" in caplog.text

    async def down(payload: bytes) -> None:
        raise ConnectionError("broker gone")

    bus.attach(down)
    bus.announce("user_changed", user_id=1)
    await settled(bus)
    assert bus.failed == 1
    assert "could not tell other processes of user_changed" in caplog.text


async def test_a_single_process_announces_nothing() -> None:
    bus = ProcessBus()
    bus.announce("user_changed", user_id=1)  # no transport: no task, no error
    await settled(bus)
    assert bus.sent == 0
