"""The device gateway: MQTT broker adapters, the device topic ACL and device presence.

`broker` defines the adapter interface every broker implements (`BrokerAdapter`), what the gateway
supplies to it (`Authenticator`, `BrokerEvents`) and the topic ACL; `embedded` is the MQTT device
transport that runs inside the server process; `external` adapts an external broker.
"""
