"""The requests external brokers send to iotcloud's broker-auth endpoints, written down in one
place from the brokers' sources, so they can be compared with what a real broker sends.

**RabbitMQ 3.10** (``rabbitmq_auth_backend_http`` behind ``auth_backends.1 = internal``,
``auth_backends.2 = http``, ``auth_http.http_method = get``), asked by the MQTT plugin, which
talks to the broker core through an internal AMQP 0-9-1 connection and channel:

* ``user``: ``rabbit_auth_backend_http:user_login_authentication/2`` sends ``username`` and
  the login's auth props, in order ``password``, ``vhost`` (``rabbit_direct:auth_fun/3``) and
  ``client_id`` (``rabbit_mqtt_connection_info:additional_authn_params/4``, from the
  ``variable_map`` the MQTT processor puts in its adapter info). It is asked **twice** per
  CONNECT: ``rabbit_access_control:check_user_login/2`` authenticates, then authorizes, and
  the HTTP backend's ``user_login_authorization/2`` asks ``user`` again.
* ``vhost``: ``username``, ``vhost``, ``ip`` (the device's address), ``tags`` (empty: we answer
  a bare ``allow``), then the connection's ``variable_map`` flattened: ``client_id``.
* ``resource``: ``username``, ``vhost``, ``resource`` (``queue`` / ``exchange``), ``name``,
  ``permission``, ``tags``, ``client_id`` (the channel's authz context). A SUBSCRIBE at QoS q
  asks, for ``mqtt-subscription-{clientid}qos{q}``: ``configure`` (queue.declare), ``read``
  (basic.consume), ``write`` (queue.bind), then ``read`` on exchange ``amq.topic``; a PUBLISH
  asks ``write`` on ``amq.topic`` (basic.publish). A clean-session CONNECT whose QoS 1 queue
  is left over asks ``configure`` on it (queue.delete).
* ``topic``: ``username``, ``vhost``, ``resource=topic``, ``name=amq.topic``, ``permission``,
  ``tags``, ``routing_key``, ``variable_map.client_id``, ``variable_map.username``,
  ``variable_map.vhost``. A PUBLISH asks ``write`` twice (the MQTT processor's own check, then
  the channel's on basic.publish), a SUBSCRIBE ``read`` with the binding key (queue.bind).

Both the processor and each channel keep the last 12 answers, and drop them whenever the
process hibernates (after a short idle time), so an idle device asks again on its next
message. Values are escaped with ``rabbit_http_util:quote_plus`` (``quote_plus`` here: the
same safe set ``A-Za-z0-9_.-~``, space as ``+``).

**EMQX 5**: HTTP authentication ``POST`` with the body template
``{"username": "${username}", "password": "${password}", "clientid": "${clientid}"}``, HTTP
authorization ``POST`` with ``{"username": "${username}", "clientid": "${clientid}",
"topic": "${topic}", "action": "${action}"}`` (JSON, ``Content-Type: application/json``).
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import quote_plus, urlencode

RABBITMQ = "/broker/rabbitmq"
EMQX = "/broker/emqx"
EXCHANGE = "amq.topic"


class Question(NamedTuple):
    """One GET a broker sends: ``path`` and its query string, exactly as the broker writes it."""

    path: str
    query: str

    @property
    def url(self) -> str:
        return f"{self.path}?{self.query}"


def _query(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, quote_via=quote_plus)


def routing_key(topic: str) -> str:
    """RabbitMQ's ``mqtt2amqp``: ``/`` -> ``.``, ``+`` -> ``*`` (written here independently of
    the server's code)."""
    return topic.replace("/", ".").replace("+", "*")


def rabbitmq_user(username: str, password: str, client_id: str, vhost: str = "/") -> Question:
    return Question(
        f"{RABBITMQ}/user",
        _query(
            [
                ("username", username),
                ("password", password),
                ("vhost", vhost),
                ("client_id", client_id),
            ]
        ),
    )


def rabbitmq_vhost(
    username: str, client_id: str, vhost: str = "/", ip: str = "127.0.0.1"
) -> Question:
    return Question(
        f"{RABBITMQ}/vhost",
        _query(
            [
                ("username", username),
                ("vhost", vhost),
                ("ip", ip),
                ("tags", ""),
                ("client_id", client_id),
            ]
        ),
    )


def rabbitmq_resource(
    username: str, client_id: str, resource: str, name: str, permission: str, vhost: str = "/"
) -> Question:
    return Question(
        f"{RABBITMQ}/resource",
        _query(
            [
                ("username", username),
                ("vhost", vhost),
                ("resource", resource),
                ("name", name),
                ("permission", permission),
                ("tags", ""),
                ("client_id", client_id),
            ]
        ),
    )


def rabbitmq_topic(
    username: str,
    client_id: str,
    permission: str,
    key: str,
    vhost: str = "/",
    exchange: str = EXCHANGE,
) -> Question:
    """A ``topic`` question about routing key ``key`` (use `routing_key` for an MQTT topic)."""
    return Question(
        f"{RABBITMQ}/topic",
        _query(
            [
                ("username", username),
                ("vhost", vhost),
                ("resource", "topic"),
                ("name", exchange),
                ("permission", permission),
                ("tags", ""),
                ("routing_key", key),
                ("variable_map.client_id", client_id),
                ("variable_map.username", username),
                ("variable_map.vhost", vhost),
            ]
        ),
    )


def subscription_queue(client_id: str, qos: int) -> str:
    return f"mqtt-subscription-{client_id}qos{qos}"


def rabbitmq_connect(username: str, password: str, client_id: str) -> list[Question]:
    """What a clean-session CONNECT asks: ``user`` twice, then ``vhost``."""
    user = rabbitmq_user(username, password, client_id)
    return [user, user, rabbitmq_vhost(username, client_id)]


def rabbitmq_subscribe(
    username: str, client_id: str, topic_filter: str, qos: int
) -> list[Question]:
    """What one SUBSCRIBE to ``topic_filter`` asks (a fresh channel: nothing cached)."""
    queue = subscription_queue(client_id, min(qos, 1))
    return [
        rabbitmq_resource(username, client_id, "queue", queue, "configure"),
        rabbitmq_resource(username, client_id, "queue", queue, "read"),
        rabbitmq_resource(username, client_id, "queue", queue, "write"),
        rabbitmq_resource(username, client_id, "exchange", EXCHANGE, "read"),
        rabbitmq_topic(username, client_id, "read", routing_key(topic_filter)),
    ]


def rabbitmq_publish(username: str, client_id: str, topic: str) -> list[Question]:
    """What one PUBLISH to ``topic`` asks (nothing cached)."""
    key = routing_key(topic)
    return [
        rabbitmq_topic(username, client_id, "write", key),
        rabbitmq_resource(username, client_id, "exchange", EXCHANGE, "write"),
        rabbitmq_topic(username, client_id, "write", key),
    ]


def emqx_authn(username: str, password: str, client_id: str) -> tuple[str, dict[str, Any]]:
    return f"{EMQX}/authn", {"username": username, "password": password, "clientid": client_id}


def emqx_authz(
    username: str, client_id: str, topic: str, action: str
) -> tuple[str, dict[str, Any]]:
    return f"{EMQX}/authz", {
        "username": username,
        "clientid": client_id,
        "topic": topic,
        "action": action,
    }
