"""The device gateway: MQTT broker adapters, the device topic ACL and device presence.

`broker` defines the adapter interface every broker implements (`BrokerAdapter`), what the gateway
supplies to it (`Authenticator`, `BrokerEvents`) and the topic ACL; `embedded` is the broker that
runs inside the server process (amqtt).
"""
