"""The AMQP connection to RabbitMQ waits a jittered interval between reconnection attempts, so
that the processes a lost node dropped do not come back in step."""

from __future__ import annotations

from yarl import URL

from iotcloud.gateway.rabbitmq import JitteredConnection


async def test_the_reconnect_interval_is_jittered_around_the_urls() -> None:
    default = JitteredConnection(URL("amqp://user:secret@127.0.0.1:5672/%2F"))
    waits = [default.reconnect_interval for _ in range(200)]
    assert all(2.5 <= wait <= 7.5 for wait in waits)
    assert len(set(waits)) > 100  # not one fixed interval
    given = JitteredConnection(URL("amqp://user:secret@127.0.0.1:5672/%2F?reconnect_interval=2"))
    assert all(1.0 <= given.reconnect_interval <= 3.0 for _ in range(50))
