"""``/broker/...``: iotcloud as the HTTP authentication backend of an external MQTT broker, so
that devices on a RabbitMQ or EMQX cluster are admitted, and kept to their own topics, by the
same rules as on the embedded transport (`iotcloud.services.broker_auth`).

**RabbitMQ** (``rabbitmq_auth_backend_http``, as RabbitMQ 3.10's MQTT plugin asks it; with
``auth_backends.1 = internal`` first, so iotcloud's own administrator never reaches us).
``GET`` with the parameters in the query string, or ``POST`` with them as an
``application/x-www-form-urlencoded`` body (``auth_http.http_method = post``, which keeps
passcodes out of URLs). Every answer is HTTP 200 ``text/plain``, ``allow`` or ``deny``:

* ``/broker/rabbitmq/user``: ``username``, ``password``, ``vhost``, ``client_id`` (the MQTT
  client id; required: it must be the device's own). ``allow`` (no tags) when the device is
  admitted.
* ``/broker/rabbitmq/vhost``: ``username``, ``vhost``, ``ip``, ``tags``, ``client_id``:
  ``allow`` for an enabled device on ``IOTCLOUD_RABBITMQ_VHOST``.
* ``/broker/rabbitmq/resource``: ``username``, ``vhost``, ``resource``, ``name``,
  ``permission``, ``tags``, ``client_id``: the device's own ``mqtt-subscription-{clientid}qos0``
  / ``qos1`` queues (any permission) and ``amq.topic`` (``write``, ``read``; never
  ``configure``).
* ``/broker/rabbitmq/topic``: ``username``, ``vhost``, ``resource=topic``, ``name=amq.topic``,
  ``permission`` (``write``: PUBLISH, ``read``: SUBSCRIBE), ``tags``, ``routing_key`` (the MQTT
  topic with ``.`` for ``/`` and ``*`` for ``+``), ``variable_map.client_id``,
  ``variable_map.username``, ``variable_map.vhost``.

A ``client_id`` or ``variable_map.*`` value, when sent, must match the device; other extra
parameters are ignored (newer RabbitMQ versions add some). A parameter missing or sent twice,
an unknown device or anything malformed is ``deny``, never an error status.

**EMQX 5** (HTTP authentication and HTTP authorization, ``POST`` with a JSON body, or a form
when the source's ``Content-Type`` header says so). Answers are HTTP 200
``application/json``:

* ``/broker/emqx/authn``: ``{"username", "password", "clientid"}`` (the body template must
  carry ``"clientid": "${clientid}"``) -> ``{"result": "allow"|"deny"|"ignore",
  "is_superuser": false}``.
* ``/broker/emqx/authz``: ``{"username", "clientid", "topic", "action": "publish"|"subscribe"}``
  -> ``{"result": "allow"|"deny"|"ignore"}``.

``ignore`` is answered for a user name that cannot name a device (not a did, not a
data-template user name), so that EMQX asks its next authenticator or authorization source
(where iotcloud's own account lives); every device-shaped name gets ``allow`` or ``deny``, so
no later source can let a device through. A request iotcloud cannot answer (the registry is
down) is ``deny``: EMQX treats an error status as ``ignore``, which its ``no_match = allow``
default would turn into an allow.

**Who may ask.** Only socket peers in ``IOTCLOUD_BROKER_AUTH_FROM`` (the broker connects
directly; forwarding headers are not read): anyone else gets 403 with an empty body.

Every answer is counted in ``iotcloud_broker_auth_requests_total{kind,result}``: ``kind`` one
of ``user``, ``vhost``, ``resource``, ``topic``, ``authn``, ``authz``; ``result`` ``allow``,
``deny``, ``ignore`` (EMQX), ``forbidden`` (a caller not allowed) or ``error`` (answered
``deny`` because the registry could not be read).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import msgspec
from litestar import Request, Response, post, route
from litestar.enums import HttpMethod

from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import Decorator, declare
from iotcloud.gateway.broker import DevicePrincipal
from iotcloud.services.broker_auth import (
    BrokerAuthService,
    device_shaped,
    emqx_allowed,
    rabbitmq_resource_allowed,
    rabbitmq_topic_allowed,
)
from iotcloud.services.registry import Services

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]
Params = Mapping[str, str]

ALLOW: Final = "allow"
DENY: Final = "deny"
IGNORE: Final = "ignore"
FORBIDDEN: Final = "forbidden"
ERROR: Final = "error"
MAX_FIELDS: Final = 32
"""Most parameters a question may carry (RabbitMQ sends at most ten)."""
_FORM: Final = "application/x-www-form-urlencoded"
_METHODS: Final = [HttpMethod.GET, HttpMethod.POST]


class RabbitQuestion(msgspec.Struct):
    """What ``rabbitmq_auth_backend_http`` asks (which fields depends on the path; a missing
    one is answered ``deny``)."""

    username: str | None = None
    password: str | None = None
    vhost: str | None = None
    client_id: str | None = None
    ip: str | None = None
    tags: str | None = None
    resource: str | None = None
    name: str | None = None
    permission: str | None = None
    routing_key: str | None = None


class EmqxQuestion(msgspec.Struct):
    """What EMQX's HTTP authentication (``password``) or authorization (``topic``,
    ``action``) asks; malformed is answered ``deny``."""

    username: str
    password: str | None = None
    clientid: str | None = None
    topic: str | None = None
    action: str | None = None


class EmqxAnswer(msgspec.Struct, omit_defaults=True):
    result: Literal["allow", "deny", "ignore"]
    is_superuser: bool | None = None


_VERDICT: Final = {"type": "string", "enum": [ALLOW, DENY]}
_REFUSED: Final = {"type": "string", "maxLength": 0, "description": "peer not allowed to ask"}


def _declare_rabbitmq(what: str) -> Decorator:
    return declare(
        f"RabbitMQ asks whether a {what} is allowed",
        tag="broker auth",
        query=RabbitQuestion,
        body=RabbitQuestion,
        body_required=False,
        body_media=_FORM,
        responses={200: _VERDICT, 403: _REFUSED},
        response_media={200: "text/plain", 403: "text/plain"},
        dialect="plain",
    )


def _declare_emqx(what: str) -> Decorator:
    return declare(
        f"EMQX asks whether {what}",
        tag="broker auth",
        body=EmqxQuestion,
        responses={200: EmqxAnswer, 403: _REFUSED},
        response_media={403: "text/plain"},
        errors=(413,),
        dialect="plain",
    )


class _Malformed(Exception):
    """The question cannot be read: answered ``deny``."""


# -- RabbitMQ -------------------------------------------------------------------------------------


@_declare_rabbitmq("device (user)")
@route("/broker/rabbitmq/user", http_method=_METHODS, status_code=200)
async def rabbitmq_user(request: AnyRequest) -> Response[bytes]:
    return await _rabbitmq(request, "user", _user)


@_declare_rabbitmq("virtual host")
@route("/broker/rabbitmq/vhost", http_method=_METHODS, status_code=200)
async def rabbitmq_vhost(request: AnyRequest) -> Response[bytes]:
    return await _rabbitmq(request, "vhost", _vhost)


@_declare_rabbitmq("queue or exchange")
@route("/broker/rabbitmq/resource", http_method=_METHODS, status_code=200)
async def rabbitmq_resource(request: AnyRequest) -> Response[bytes]:
    return await _rabbitmq(request, "resource", _resource)


@_declare_rabbitmq("topic")
@route("/broker/rabbitmq/topic", http_method=_METHODS, status_code=200)
async def rabbitmq_topic(request: AnyRequest) -> Response[bytes]:
    return await _rabbitmq(request, "topic", _topic)


Decision = Callable[[Services, Params], Awaitable[bool]]


async def _rabbitmq(request: AnyRequest, kind: str, decide: Decision) -> Response[bytes]:
    services: Services = request.app.state.services
    if not _peer_allowed(request, services.broker_auth):
        return _forbidden(services, kind)
    try:
        params = await _rabbitmq_params(request)
        allowed = await decide(services, params)
    except _Malformed as why:
        log.debug("broker auth %s: malformed question (%s)", kind, why)
        allowed = False
    except Exception:  # the registry is down: refuse, counted apart (logged by the service)
        _count(services, kind, ERROR)
        return _plain(DENY)
    result = ALLOW if allowed else DENY
    _count(services, kind, result)
    return _plain(result)


async def _user(services: Services, params: Params) -> bool:
    username, password, client_id = (
        _required(params, name) for name in ("username", "password", "client_id")
    )
    _same_vhost(services, params.get("vhost", services.settings.rabbitmq_vhost))
    admitted = await services.broker_auth.admit(username, password, client_id)
    if not isinstance(admitted, DevicePrincipal):
        log.debug("broker auth: user %s refused (%s)", username, admitted.name)
        return False
    return True


async def _vhost(services: Services, params: Params) -> bool:
    _same_vhost(services, _required(params, "vhost"))
    return await _device(services, params) is not None


async def _resource(services: Services, params: Params) -> bool:
    _same_vhost(services, _required(params, "vhost"))
    resource, name, permission = (
        _required(params, field) for field in ("resource", "name", "permission")
    )
    device = await _device(services, params)
    return device is not None and rabbitmq_resource_allowed(device, resource, name, permission)


async def _topic(services: Services, params: Params) -> bool:
    vhost = _required(params, "vhost")
    _same_vhost(services, vhost)
    exchange, permission, key = (
        _required(params, field) for field in ("name", "permission", "routing_key")
    )
    if _required(params, "resource") != "topic":
        return False
    device = await _device(services, params, client_id_field="variable_map.client_id")
    if device is None:
        return False
    username = params["username"]
    if (
        params.get("variable_map.username", username) != username
        or params.get("variable_map.vhost", vhost) != vhost
    ):
        return False
    allowed = rabbitmq_topic_allowed(device, exchange, permission, key)
    if not allowed:
        log.debug("broker auth: %s may not %s %s", device.did, permission, key)
    return allowed


async def _device(
    services: Services, params: Params, *, client_id_field: str = "client_id"
) -> DevicePrincipal | None:
    """The enabled device the question is about; None when there is none, or when the client
    id sent with the question is not the device's."""
    device = await services.broker_auth.device(_required(params, "username"))
    if device is None:
        return None
    client_id = params.get(client_id_field)
    return device if client_id is None or client_id == device.client_id else None


def _same_vhost(services: Services, vhost: str) -> None:
    if vhost != services.settings.rabbitmq_vhost:
        raise _Malformed(f"vhost {vhost!r} is not IOTCLOUD_RABBITMQ_VHOST")


async def _rabbitmq_params(request: AnyRequest) -> Params:
    """The question's parameters: the query string of a GET, the form body of a POST."""
    if request.method == HttpMethod.POST:
        raw = await request.body()
    else:
        raw = request.scope["query_string"]
    try:
        return _form(raw.decode())
    except UnicodeDecodeError as exc:
        raise _Malformed("not UTF-8") from exc


def _form(text: str) -> Params:
    """``a=1&b=2`` as a mapping; raises `_Malformed` for a parameter sent twice, bad escapes,
    or more than `MAX_FIELDS` parameters."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except ValueError as exc:  # UnicodeDecodeError included
        raise _Malformed(str(exc)) from exc
    params = dict(pairs)
    if len(params) != len(pairs):
        raise _Malformed("a parameter is sent twice")
    return params


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None:
        raise _Malformed(f"{name} is missing")
    return value


def _plain(result: str) -> Response[bytes]:
    return Response(result.encode(), status_code=200, media_type="text/plain")


# -- EMQX -----------------------------------------------------------------------------------------


EmqxDecision = Callable[[Services, Mapping[str, Any], str], Awaitable[str]]


async def _emqx_answer(
    request: AnyRequest, kind: str, decide: EmqxDecision, **extra: Any
) -> Response[bytes]:
    """One EMQX question: the caller checked, ``ignore`` for a user name that cannot be a
    device, else ``decide(services, body, username)``; malformed is ``deny``, a registry
    failure ``deny`` counted as ``error``. ``extra`` fields go into every answer."""
    services: Services = request.app.state.services
    if not _peer_allowed(request, services.broker_auth):
        return _forbidden(services, kind)
    try:
        body = await _emqx_body(request)
        username = _text(body, "username")
        result = await decide(services, body, username) if device_shaped(username) else IGNORE
    except _Malformed as why:
        log.debug("broker auth %s: malformed question (%s)", kind, why)
        result = DENY
    except Exception:  # the registry is down: refuse, counted apart (logged by the service)
        _count(services, kind, ERROR)
        return json_response({"result": DENY, **extra})
    _count(services, kind, result)
    return json_response({"result": result, **extra})


async def _authn(services: Services, body: Mapping[str, Any], username: str) -> str:
    password, client_id = _text(body, "password"), _text(body, "clientid")
    admitted = await services.broker_auth.admit(username, password, client_id)
    return ALLOW if isinstance(admitted, DevicePrincipal) else DENY


async def _authz(services: Services, body: Mapping[str, Any], username: str) -> str:
    topic, action = _text(body, "topic"), _text(body, "action")
    client_id = body.get("clientid")
    device = await services.broker_auth.device(username)
    allowed = (
        device is not None
        and (client_id is None or client_id == device.client_id)
        and emqx_allowed(device, action, topic)
    )
    return ALLOW if allowed else DENY


@_declare_emqx("a device may connect")
@post("/broker/emqx/authn", status_code=200)
async def emqx_authn(request: AnyRequest) -> Response[bytes]:
    return await _emqx_answer(request, "authn", _authn, is_superuser=False)


@_declare_emqx("a device may publish or subscribe")
@post("/broker/emqx/authz", status_code=200)
async def emqx_authz(request: AnyRequest) -> Response[bytes]:
    return await _emqx_answer(request, "authz", _authz)


async def _emqx_body(request: AnyRequest) -> Mapping[str, Any]:
    """The JSON object (or, with a form ``Content-Type``, the form) EMQX posted."""
    raw = await request.body()
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == _FORM:
        try:
            return _form(raw.decode())
        except UnicodeDecodeError as exc:
            raise _Malformed("not UTF-8") from exc
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _Malformed(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _Malformed("not a JSON object")
    return body


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _Malformed(f"{name} is missing or not a string")
    return value


# -- both -----------------------------------------------------------------------------------------


def _peer_allowed(request: AnyRequest, auth: BrokerAuthService) -> bool:
    client = request.scope.get("client")
    return auth.peer_allowed(client[0] if client else None)


def _forbidden(services: Services, kind: str) -> Response[bytes]:
    _count(services, kind, FORBIDDEN)
    return Response(b"", status_code=403, media_type="text/plain")


def _count(services: Services, kind: str, result: str) -> None:
    services.metrics.broker_auth.labels(kind, result).inc()


ROUTES = [
    rabbitmq_user,
    rabbitmq_vhost,
    rabbitmq_resource,
    rabbitmq_topic,
    emqx_authn,
    emqx_authz,
]
