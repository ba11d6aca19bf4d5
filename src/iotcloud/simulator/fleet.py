"""Many virtual devices in one event loop, for load and demos."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from iotcloud.codecs import ProductDefinition
from iotcloud.simulator.device import VirtualDevice

log = logging.getLogger(__name__)


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
    seed: int = 1


class Fleet:
    """Registers ``devices`` virtual devices (MACs ``mac_prefix`` + index) and runs them."""

    def __init__(self, config: FleetConfig) -> None:
        if len(config.mac_prefix) != 6:
            raise ValueError("mac_prefix must be 6 hex digits")
        self.config = config
        rng = random.Random(config.seed)
        self.devices = [
            VirtualDevice(
                config.product_key,
                config.product,
                f"{config.mac_prefix}{index:06x}",
                protocol=config.protocol,
                seed=rng.getrandbits(32),
            )
            for index in range(config.devices)
        ]

    async def register(self, progress: Callable[[int], None] | None = None) -> None:
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        async with httpx.AsyncClient(base_url=self.config.http_url, timeout=30) as http:

            async def one(device: VirtualDevice) -> None:
                async with gate:
                    await device.register(http)
                if progress:
                    progress(1)

            async with asyncio.TaskGroup() as tasks:
                for device in self.devices:
                    tasks.create_task(one(device))

    async def run(self, duration: float | None = None) -> None:
        """Connect every device (at most ``connect_concurrency`` handshakes at a time) and serve
        for ``duration`` seconds (forever when None)."""
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        cfg = self.config

        async def one(device: VirtualDevice) -> None:
            async with gate:
                task = asyncio.current_task()
                assert task is not None
                runner = asyncio.create_task(
                    device.run(cfg.report_interval, host=cfg.mqtt_host, port=cfg.mqtt_port)
                )
                ready = asyncio.create_task(device.ready.wait())
                await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
            await runner

        runners = [asyncio.create_task(one(d), name=f"device-{d.mac}") for d in self.devices]
        try:
            if duration is None:
                await asyncio.gather(*runners)
            else:
                await asyncio.wait(runners, timeout=duration)
        finally:
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)

    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.stats.connected)

    @property
    def reports(self) -> int:
        return sum(d.stats.reports for d in self.devices)
