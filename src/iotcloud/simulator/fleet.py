"""Many virtual devices in one event loop, for load and demos."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from iotcloud.codecs import CodecError, ProductDefinition, parse_product_definition
from iotcloud.simulator.device import SimulatorError, VirtualDevice, describe_reply

log = logging.getLogger(__name__)

_HEX6 = re.compile(r"[0-9a-f]{6}")
# CONNACK codes no retry can fix (3.1.1 codes, and paho's MQTT 5 spellings of 4 and 5)
_PERMANENT_REFUSALS = {1: "unacceptable protocol", 2: "identifier rejected", 4: "bad passcode"}
_PERMANENT_REFUSALS |= {5: "not authorized", 134: "bad passcode", 135: "not authorized"}


def normalise_mac_prefix(prefix: str) -> str:
    """``02:a0:c0``, ``02-A0-C0`` or ``02a0c0`` -> ``02a0c0``; raises ``ValueError`` otherwise."""
    cleaned = prefix.replace(":", "").replace("-", "").lower()
    if not _HEX6.fullmatch(cleaned):
        raise ValueError(f"MAC prefix must be 3 bytes (6 hex digits), not {prefix!r}")
    return cleaned


def device_mac(prefix: str, index: int) -> str:
    """The MAC of device ``index`` (0-based): the 3-byte prefix, then the index as 3 bytes."""
    if not 0 <= index < 1 << 24:
        raise ValueError(f"device index {index} does not fit in 3 bytes")
    return f"{normalise_mac_prefix(prefix)}{index:06x}"


def load_datapoints(path: Path, product_key: str) -> ProductDefinition:
    """A product definition from a Gizwits datapoint JSON file.

    Raises `SimulatorError` when the file cannot be read or parsed, or names another product.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SimulatorError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise SimulatorError(f"{path}: must hold a JSON object")
    named = str(data.get("product_key") or "").lower()
    if named and named != product_key.lower():
        raise SimulatorError(f"{path} describes product {named}, not {product_key}")
    try:
        return parse_product_definition(data)
    except CodecError as exc:
        raise SimulatorError(f"{path}: {exc}") from exc


async def fetch_datapoints(http_url: str, appid: str, product_key: str) -> ProductDefinition:
    """The product's data points from ``GET /app/datapoint`` (needs any valid appid).

    Raises `SimulatorError` when the server is unreachable or refuses (unknown product 9002,
    unknown appid 9003).
    """
    async with httpx.AsyncClient(base_url=http_url, timeout=30) as http:
        try:
            reply = await http.get(
                "/app/datapoint",
                params={"product_key": product_key},
                headers={"X-Gizwits-Application-Id": appid},
            )
        except httpx.HTTPError as exc:
            why = str(exc) or type(exc).__name__
            raise SimulatorError(f"cannot reach {http_url}: {why}") from exc
    if reply.status_code != 200:
        raise SimulatorError(
            f"data points of product {product_key} refused: {describe_reply(reply)}"
        )
    try:
        return parse_product_definition(reply.json())
    except (ValueError, CodecError) as exc:
        raise SimulatorError(f"data points of product {product_key}: {exc}") from exc


@dataclass(frozen=True)
class FleetConfig:
    http_url: str
    product_key: str
    product: ProductDefinition
    devices: int
    mac_prefix: str = "02a0c0"  # locally administered, so it never collides with real hardware
    protocol: str = "3.1"
    report_interval: float = 0.0
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    connect_concurrency: int = 64
    connect_attempts: int = 4
    """Tries of a device's first connection before the fleet gives up (later: retried forever)."""
    seed: int = 1


class Fleet:
    """Registers ``devices`` virtual devices (MAC = ``mac_prefix`` + index, so a rerun with the
    same prefix gets the same dids) and runs them.

    A device whose session ends reconnects with jittered exponential back-off (at most 30 s).
    A device that cannot make its *first* connection in ``connect_attempts`` tries, or that is
    refused for its credentials, fails the whole run with `SimulatorError`.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.connected_at_stop = 0
        """How many devices were connected when `run` stopped them."""
        prefix = normalise_mac_prefix(config.mac_prefix)
        rng = random.Random(config.seed)
        self._rng = random.Random(config.seed + 1)
        self.devices = [
            VirtualDevice(
                config.product_key,
                config.product,
                device_mac(prefix, index),
                protocol=config.protocol,
                seed=rng.getrandbits(32),
            )
            for index in range(config.devices)
        ]

    async def register(self, progress: Callable[[int], None] | None = None) -> None:
        """Register every device (``connect_concurrency`` at a time); raises `SimulatorError`
        on the first refusal."""
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        limits = httpx.Limits(max_connections=self.config.connect_concurrency)
        async with httpx.AsyncClient(
            base_url=self.config.http_url, timeout=30, limits=limits
        ) as http:

            async def one(device: VirtualDevice) -> None:
                async with gate:
                    await device.register(http)
                if progress:
                    progress(1)

            await _all_or_first_error([one(device) for device in self.devices])

    async def run(
        self, duration: float | None = None, progress: Callable[[int], None] | None = None
    ) -> None:
        """Connect every device (at most ``connect_concurrency`` handshakes at a time) and serve
        for ``duration`` seconds (until cancelled when None). ``progress(1)`` is called when a
        device is connected for the first time. Raises `SimulatorError` (see the class)."""
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        runner = asyncio.create_task(
            _all_or_first_error([self._keep_connected(d, gate, progress) for d in self.devices])
        )
        try:
            await asyncio.wait({runner}, timeout=duration)
        finally:
            if not runner.done():
                self.connected_at_stop = self.connected
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        if not runner.cancelled():
            runner.result()  # raises the failure that ended the run

    async def _keep_connected(
        self,
        device: VirtualDevice,
        gate: asyncio.Semaphore,
        progress: Callable[[int], None] | None,
    ) -> None:
        cfg = self.config
        ever_connected = False
        failures = 0
        while True:
            async with gate:
                runner = asyncio.create_task(
                    device.run(cfg.report_interval, host=cfg.mqtt_host, port=cfg.mqtt_port)
                )
                ready = asyncio.create_task(device.ready.wait())
                try:
                    await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    runner.cancel()
                    await asyncio.gather(runner, return_exceptions=True)
                    raise
                finally:
                    ready.cancel()
            if device.ready.is_set():
                failures = 0
                if not ever_connected:
                    ever_connected = True
                    if progress:
                        progress(1)
                else:
                    device.stats.reconnects += 1
            try:
                await runner
                return  # run() only returns when the session was closed on purpose
            except aiomqtt.MqttCodeError as exc:
                code = _connack_code(exc.rc)
                if code in _PERMANENT_REFUSALS:
                    raise SimulatorError(
                        f"device {device.did} refused by the broker: {_PERMANENT_REFUSALS[code]}"
                    ) from exc
                reason: BaseException = exc
            except (aiomqtt.MqttError, OSError) as exc:
                reason = exc
            failures += 1
            if not ever_connected and failures >= cfg.connect_attempts:
                where = f"{cfg.mqtt_host or device.mqtt_host}:{cfg.mqtt_port or device.mqtt_port}"
                raise SimulatorError(
                    f"device {device.did} cannot connect to the MQTT broker at {where}: {reason}"
                ) from reason
            if ever_connected and failures == 1:
                log.info("device %s lost its connection (%s); reconnecting", device.did, reason)
            backoff = min(30.0, 0.5 * 2 ** min(failures, 6))
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))

    @property
    def registered(self) -> int:
        return sum(1 for d in self.devices if d.did is not None)

    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.stats.connected)

    @property
    def reports(self) -> int:
        return sum(d.stats.reports for d in self.devices)

    @property
    def controls(self) -> int:
        return sum(d.stats.controls for d in self.devices)

    @property
    def reads(self) -> int:
        return sum(d.stats.reads for d in self.devices)

    @property
    def errors(self) -> int:
        return sum(d.stats.errors for d in self.devices)

    @property
    def reconnects(self) -> int:
        return sum(d.stats.reconnects for d in self.devices)


def _connack_code(rc: object) -> int:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else -1


async def _all_or_first_error(coros: list[Any]) -> None:
    """Run the coroutines as tasks until all finish; on the first failure cancel the rest and
    raise that failure itself (not an ExceptionGroup)."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    try:
        pending: set[asyncio.Task[Any]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
