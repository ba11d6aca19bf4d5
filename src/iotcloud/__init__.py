"""iotcloud: a self-hostable IoT device cloud speaking the Gizwits and Tencent IoT Explorer APIs."""

__version__ = "0.1.0"
