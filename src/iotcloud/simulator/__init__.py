"""Virtual devices speaking the Gizwits device protocol, for tests, demos and benchmarks."""

from iotcloud.simulator.device import DeviceStats, VirtualDevice, random_status
from iotcloud.simulator.fleet import Fleet, FleetConfig

__all__ = ["DeviceStats", "Fleet", "FleetConfig", "VirtualDevice", "random_status"]
