"""Virtual devices speaking the Gizwits device protocol, for tests, demos and benchmarks."""

from iotcloud.simulator.device import DeviceStats, SimulatorError, VirtualDevice, random_status
from iotcloud.simulator.fleet import (
    Fleet,
    FleetConfig,
    device_mac,
    fetch_datapoints,
    load_datapoints,
    normalise_mac_prefix,
)

__all__ = [
    "DeviceStats",
    "Fleet",
    "FleetConfig",
    "SimulatorError",
    "VirtualDevice",
    "device_mac",
    "fetch_datapoints",
    "load_datapoints",
    "normalise_mac_prefix",
    "random_status",
]
