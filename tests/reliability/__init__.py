"""The reliability suite: an authorization matrix generated from the route table, a seeded fuzz
corpus over every HTTP route, the app WebSocket and device MQTT, byte-level fuzzing of the MQTT
device transport from many connections at once, and kill -9 under load and right after QoS 1
PUBACKs.

Every module runs against real ``iotcloud serve`` processes. The fuzz modules read
``IOTCLOUD_FUZZ_SEED`` (the corpus) and ``IOTCLOUD_FUZZ_CASES`` (how many cases in all, shared
between HTTP, WebSocket, MQTT and the transport's bytes); a failure names the seed that
reproduces it.
"""
