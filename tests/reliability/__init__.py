"""The reliability suite: an authorization matrix generated from the route table, a seeded fuzz
corpus over every HTTP route, the app WebSocket and device MQTT, and kill -9 under load.

Every module runs against real ``iotcloud serve`` processes. The fuzz modules read
``IOTCLOUD_FUZZ_SEED`` (the corpus) and ``IOTCLOUD_FUZZ_CASES`` (how many cases in all, shared
between HTTP, WebSocket and MQTT); a failure names the seed that reproduces it.
"""
