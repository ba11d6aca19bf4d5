from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from iotcloud.errors import DeviceNotBound
from iotcloud.gateway.service import SendResult
from iotcloud.services.bindings import BindingChange
from iotcloud.services.control import ControlService, UsableCache


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_passed_check_lives_for_the_ttl() -> None:
    clock = Ticker()
    cache = UsableCache(5, clock=clock)
    cache.put(1, "did-a", cache.epoch)
    assert cache.passed(1, "did-a")
    assert not cache.passed(2, "did-a")
    clock.now = 3.7  # entries live 75-100% of the ttl
    assert cache.passed(1, "did-a")
    clock.now = 5
    assert not cache.passed(1, "did-a")


def test_unbinding_drops_that_user_and_device_only() -> None:
    cache = UsableCache(5, clock=Ticker())
    for user, did in ((1, "a"), (1, "b"), (2, "a")):
        cache.put(user, did, cache.epoch)
    cache.drop_binding(1, "a")
    assert (cache.passed(1, "a"), cache.passed(1, "b"), cache.passed(2, "a")) == (
        False,
        True,
        True,
    )


def test_a_device_change_drops_every_user_of_it() -> None:
    cache = UsableCache(5, clock=Ticker())
    for user, did in ((1, "a"), (2, "a"), (1, "b")):
        cache.put(user, did, cache.epoch)
    cache.drop_devices(["a"])
    assert (cache.passed(1, "a"), cache.passed(2, "a"), cache.passed(1, "b")) == (
        False,
        False,
        True,
    )
    cache.drop_devices(None)
    assert not cache.passed(1, "b")


def test_a_check_that_raced_a_change_is_not_stored() -> None:
    cache = UsableCache(5, clock=Ticker())
    epoch = cache.epoch  # a request starts reading the binding from the database ...
    cache.drop_binding(1, "a")  # ... while the user unbinds
    cache.put(1, "a", epoch)
    assert not cache.passed(1, "a")


def test_ttl_zero_keeps_nothing() -> None:
    cache = UsableCache(0, clock=Ticker())
    cache.put(1, "a", cache.epoch)
    assert not cache.passed(1, "a")


def test_the_oldest_entries_go_first_when_full() -> None:
    cache = UsableCache(5, max_entries=2, clock=Ticker())
    for did in ("a", "b", "c"):
        cache.put(1, did, cache.epoch)
    assert [cache.passed(1, did) for did in ("a", "b", "c")] == [False, True, True]


class SlowBindings:
    """`BindingService.require_bound` that counts its reads and answers when released."""

    def __init__(self, bound: bool) -> None:
        self.bound = bound
        self.reads = 0
        self.release = asyncio.Event()

    async def require_bound(self, user: Any, did: str) -> Any:
        self.reads += 1
        await self.release.wait()
        if not self.bound:
            raise DeviceNotBound(f"device {did} is not bound to this user")
        return SimpleNamespace(is_disabled=False)


class Gateway:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, did: str, payload: bytes, **_: Any) -> SendResult:
        self.sent.append(did)
        return SendResult.DELIVERED

    async def codec_of(self, did: str) -> Any:
        """Every device here is a Gizwits one (it has a P0 codec)."""
        return SimpleNamespace()

    def session_template(self, did: str) -> None:
        """No device here speaks the data template."""
        return None


def control_with(bindings: SlowBindings, ttl: float = 5) -> tuple[ControlService, Gateway]:
    gateway = Gateway()
    service = ControlService(
        cast(Any, bindings),
        cast(Any, None),
        cast(Any, gateway),
        cast(Any, None),  # no product is read: every device here has a P0 codec
        usable_cache_seconds=ttl,
    )
    return service, gateway


USER = SimpleNamespace(app_id=1, user_id=7)


async def test_a_burst_of_commands_to_one_device_costs_one_binding_read() -> None:
    bindings = SlowBindings(bound=True)
    control, gateway = control_with(bindings)
    burst = [asyncio.create_task(control.write_raw(USER, "did-a", [1])) for _ in range(10)]
    await asyncio.sleep(0)
    bindings.release.set()
    await asyncio.gather(*burst)
    await control.write_raw(USER, "did-a", [1])
    assert (bindings.reads, len(gateway.sent)) == (1, 11)


async def test_a_refusal_reaches_every_waiting_command_and_is_not_kept() -> None:
    bindings = SlowBindings(bound=False)
    control, gateway = control_with(bindings)
    burst = [asyncio.create_task(control.write_raw(USER, "did-a", [1])) for _ in range(3)]
    await asyncio.sleep(0)
    bindings.release.set()
    results = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(result, DeviceNotBound) for result in results)
    assert gateway.sent == []
    bindings.bound = True
    await control.write_raw(USER, "did-a", [1])
    assert gateway.sent == ["did-a"]


async def test_an_unbind_is_heard_at_once() -> None:
    bindings = SlowBindings(bound=True)
    bindings.release.set()
    control, _ = control_with(bindings)
    await control.write_raw(USER, "did-a", [1])
    bindings.bound = False
    control.binding_changed(BindingChange(user_id=7, uid="u", app_id=1, did="did-a", bound=False))
    with pytest.raises(DeviceNotBound):
        await control.write_raw(USER, "did-a", [1])
