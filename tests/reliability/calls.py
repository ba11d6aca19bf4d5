"""How to call every route of the server, and who may.

`ROUTES` has one entry per ``(method, declared path)`` of the route table (`routes.app_routes`)
and `TOKENAPI` one per Action of ``POST /api/exploreropen/tokenapi``: the access the route
needs, and a well-formed request naming what an `Owned` user owns. The authorization matrix
calls each with wrong credentials (and checks that no route is missing here); the HTTP fuzz
corpus starts from the same requests and mutates them.

Access kinds:

- ``user``: a Gizwits app call, ``X-Gizwits-Application-Id`` plus a user token. ``scope``
  ``resource``: the request names the owner's device or schedule, so another user is refused;
  ``self``: it acts on the caller's own account or bindings, so another user is answered about
  their own (never the owner's).
- ``operator``: ``/admin/v1``, ``Authorization: Bearer <IOTCLOUD_ADMIN_TOKEN>``.
- ``console``: ``/console``, a console session cookie (signed in with the operator token).
- ``tencent``: ``tokenapi``, whose body's ``AccessToken`` is a user token; see `TOKENAPI`.
- ``websocket``: ``/ws/app/v1``, whose ``login_req`` carries the token.
- ``public``: needs no user credentials; ``reason`` says why that is right.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode

from tests.reliability.routes import WEBSOCKET, Route, fill_path
from tests.reliability.scene import (
    Owned,
    device_schedule_body,
    new_mac,
    schedule_body,
    timer_params,
)

Access = Literal["user", "operator", "console", "tencent", "websocket", "public"]
Scope = Literal["resource", "self"]
NO_BODY: Final[Any] = object()
FORM: Final = "application/x-www-form-urlencoded"


@dataclass
class HttpCall:
    """One request: ``path`` as declared, its parameters, query, body and extra headers."""

    method: str
    path: str
    path_params: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    json: Any = NO_BODY
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The request path, parameters percent-encoded."""
        return fill_path(
            self.path, {name: quote(value, safe="") for name, value in self.path_params.items()}
        )


@dataclass(frozen=True)
class Target:
    """Whose things a request names (``owner``), and the family the caller passes where a
    Tencent Action wants one (the caller's own, or the owner's when there is no caller)."""

    owner: Owned
    family: str


Build = Callable[[Target], HttpCall]


@dataclass(frozen=True)
class RouteEntry:
    access: Access
    build: Build | None = None
    scope: Scope = "resource"
    reason: str = ""
    ends_session: bool = False
    """Calling it with a valid token ends that token (the matrix uses a fresh one)."""


@dataclass(frozen=True)
class ActionEntry:
    """A tokenapi Action: its own parameters (besides Action, AccessToken and RequestId)."""

    params: Callable[[Target], dict[str, Any]]
    scope: Scope = "resource"
    ends_session: bool = False


def _call(method: str, path: str, **parts: Any) -> HttpCall:
    return HttpCall(method, path, **parts)


_FORM_TYPE: Final = {"Content-Type": FORM}


def _console(method: str, path: str) -> Build:
    """A console call naming the owner's things (a form post for POST)."""

    def build(t: Target) -> HttpCall:
        params = {
            "did": t.owner.did,
            "product_key": t.owner.product_key,
            "schedule_id": t.owner.schedule_id,
            "uid": t.owner.uid,
            "appid": t.owner.appid,
        }
        used = {name: value for name, value in params.items() if "{" + name in path}
        if method == "GET":
            return _call(method, path, path_params=used)
        return _call(method, path, path_params=used, content=b"csrf=x", headers=_FORM_TYPE)

    return build


def _did(method: str, path: str, **parts: Any) -> Build:
    return lambda t: _call(method, path, path_params={"did": t.owner.did}, **parts)


def _schedule(method: str, path: str, **parts: Any) -> Build:
    return lambda t: _call(method, path, path_params={"schedule_id": t.owner.schedule_id}, **parts)


def _device_schedule(method: str, path: str, body: bool = False) -> Build:
    def build(t: Target) -> HttpCall:
        params = {"did": t.owner.did, "schedule_id": t.owner.device_schedule_id}
        payload = device_schedule_body("changed") if body else NO_BODY
        return _call(method, path, path_params=params, json=payload)

    return build


def _now_ms() -> int:
    return int(time.time() * 1000)


AGG_QUERY: Final = {"attrs": "LED_R", "aggregator": "avg", "unit": "days", "start_ts": 0}


def _agg(method: str) -> Build:
    path = "/app/devdata/{did:str}/agg_data"
    return lambda t: _call(
        method,
        path,
        path_params={"did": t.owner.did},
        query={**AGG_QUERY, "end_ts": _now_ms()},
    )


def _bind_mac(t: Target) -> HttpCall:
    # unsigned: with the product's signature any user of the app may bind a device by its MAC
    # (the app holds the product secret; the first binder owns it, later ones are guests)
    return _call(
        "POST", "/app/bind_mac", json={"product_key": t.owner.product_key, "mac": t.owner.mac}
    )


def _form(method: str, path: str, text: str, **parts: Any) -> HttpCall:
    return _call(method, path, content=text.encode(), headers={"Content-Type": FORM}, **parts)


def _broker_question(method: str, kind: str) -> Build:
    """A RabbitMQ auth-backend question naming the owner's device, with a wrong password."""

    def build(t: Target) -> HttpCall:
        did = t.owner.did
        params = {
            "user": {"username": did, "password": "wrong-passcode", "vhost": "/", "client_id": did},
            "vhost": {"username": did, "vhost": "/", "ip": "127.0.0.1", "tags": ""},
            "resource": {
                "username": did,
                "vhost": "/",
                "resource": "queue",
                "name": f"mqtt-subscription-{did}qos1",
                "permission": "configure",
                "tags": "",
            },
            "topic": {
                "username": did,
                "vhost": "/",
                "resource": "topic",
                "name": "amq.topic",
                "permission": "read",
                "routing_key": f"app2dev.{did}.#",
                "tags": "",
            },
        }[kind]
        path = f"/broker/rabbitmq/{kind}"
        if method == "GET":
            return _call("GET", path, query=params)
        return _form("POST", path, urlencode(params))

    return build


def _emqx_question(kind: str) -> Build:
    """An EMQX authentication or authorization request naming the owner's device."""

    def build(t: Target) -> HttpCall:
        did = t.owner.did
        body: dict[str, Any] = {"username": did, "clientid": did}
        if kind == "authn":
            body["password"] = "wrong-passcode"
        else:
            body.update(topic=f"app2dev/{did}/cloud", action="subscribe")
        return _call("POST", f"/broker/emqx/{kind}", json=body)

    return build


ROUTES: Final[dict[Route, RouteEntry]] = {
    # -- Gizwits app API: user token ------------------------------------------------------------
    ("GET", "/app/users"): RouteEntry("user", lambda t: _call("GET", "/app/users"), "self"),
    ("PUT", "/app/users"): RouteEntry(
        "user", lambda t: _call("PUT", "/app/users", json={"name": "renamed"}), "self"
    ),
    ("DELETE", "/app/logout"): RouteEntry(
        "user", lambda t: _call("DELETE", "/app/logout"), "self", ends_session=True
    ),
    ("GET", "/app/devdata/{did:str}"): RouteEntry("user", _did("GET", "/app/devdata/{did:str}")),
    ("GET", "/app/devdata/{did:str}/agg_data"): RouteEntry("user", _agg("GET")),
    ("PUT", "/app/devdata/{did:str}/agg_data"): RouteEntry("user", _agg("PUT")),
    ("GET", "/app/devices/{did:str}"): RouteEntry("user", _did("GET", "/app/devices/{did:str}")),
    ("GET", "/app/devices"): RouteEntry(
        "user",
        lambda t: _call(
            "GET", "/app/devices", query={"product_key": t.owner.product_key, "mac": t.owner.mac}
        ),
    ),
    ("GET", "/app/devices/{did:str}/raw_data"): RouteEntry(
        "user",
        lambda t: _call(
            "GET",
            "/app/devices/{did:str}/raw_data",
            path_params={"did": t.owner.did},
            query={"type": "cmd", "start_time": 0, "end_time": int(time.time())},
        ),
    ),
    ("POST", "/app/bind_mac"): RouteEntry("user", _bind_mac),
    ("POST", "/app/bindings"): RouteEntry(
        "user",
        # a wrong passcode: the right one binds any user, as it should
        lambda t: _call(
            "POST",
            "/app/bindings",
            json={"devices": [{"did": t.owner.did, "passcode": "WRONGPASS0"}]},
        ),
        "self",
    ),
    ("DELETE", "/app/bindings"): RouteEntry(
        "user",
        lambda t: _call("DELETE", "/app/bindings", json={"devices": [{"did": t.owner.did}]}),
        "self",
    ),
    ("GET", "/app/bindings"): RouteEntry("user", lambda t: _call("GET", "/app/bindings"), "self"),
    ("PUT", "/app/bindings/{did:str}"): RouteEntry(
        "user", _did("PUT", "/app/bindings/{did:str}", json={"remark": "changed"})
    ),
    ("GET", "/app/{did:str}/bindings"): RouteEntry("user", _did("GET", "/app/{did:str}/bindings")),
    ("DELETE", "/app/{did:str}/bindings"): RouteEntry(
        "user",
        lambda t: _call(
            "DELETE",
            "/app/{did:str}/bindings",
            path_params={"did": t.owner.did},
            query={"uid": t.owner.uid},
        ),
    ),
    ("POST", "/app/control/{did:str}"): RouteEntry(
        "user", _did("POST", "/app/control/{did:str}", json={"attrs": {"LED_OnOff": True}})
    ),
    ("GET", "/app/scheduler"): RouteEntry("user", lambda t: _call("GET", "/app/scheduler"), "self"),
    ("POST", "/app/scheduler"): RouteEntry(
        "user",
        lambda t: _call(
            "POST", "/app/scheduler", json=schedule_body(t.owner.did, t.owner.product_key)
        ),
    ),
    ("DELETE", "/app/scheduler/{schedule_id:str}"): RouteEntry(
        "user", _schedule("DELETE", "/app/scheduler/{schedule_id:str}")
    ),
    ("GET", "/app/scheduler/{schedule_id:str}/logs"): RouteEntry(
        "user", _schedule("GET", "/app/scheduler/{schedule_id:str}/logs")
    ),
    ("GET", "/app/scheduler/{schedule_id:str}/runs"): RouteEntry(
        "user", _schedule("GET", "/app/scheduler/{schedule_id:str}/runs")
    ),
    ("GET", "/app/devices/{did:str}/scheduler"): RouteEntry(
        "user", _did("GET", "/app/devices/{did:str}/scheduler")
    ),
    ("POST", "/app/devices/{did:str}/scheduler"): RouteEntry(
        "user",
        _did("POST", "/app/devices/{did:str}/scheduler", json=device_schedule_body("other")),
    ),
    ("PUT", "/app/devices/{did:str}/scheduler/{schedule_id:str}"): RouteEntry(
        "user", _device_schedule("PUT", "/app/devices/{did:str}/scheduler/{schedule_id:str}", True)
    ),
    ("DELETE", "/app/devices/{did:str}/scheduler/{schedule_id:str}"): RouteEntry(
        "user", _device_schedule("DELETE", "/app/devices/{did:str}/scheduler/{schedule_id:str}")
    ),
    # -- the other authenticated surfaces -------------------------------------------------------
    (WEBSOCKET, "/ws/app/v1"): RouteEntry("websocket"),
    ("POST", "/api/exploreropen/tokenapi"): RouteEntry("tencent"),
    ("GET", "/admin/v1/stats"): RouteEntry("operator", lambda t: _call("GET", "/admin/v1/stats")),
    ("GET", "/admin/v1/products"): RouteEntry(
        "operator", lambda t: _call("GET", "/admin/v1/products")
    ),
    ("POST", "/admin/v1/products"): RouteEntry(
        "operator", lambda t: _call("POST", "/admin/v1/products", json={})
    ),
    ("GET", "/admin/v1/products/{product_key:str}"): RouteEntry(
        "operator",
        lambda t: _call(
            "GET",
            "/admin/v1/products/{product_key:str}",
            path_params={"product_key": t.owner.product_key},
        ),
    ),
    ("PATCH", "/admin/v1/products/{product_key:str}"): RouteEntry(
        "operator",
        lambda t: _call(
            "PATCH",
            "/admin/v1/products/{product_key:str}",
            path_params={"product_key": t.owner.product_key},
            json={"registration": "signed"},
        ),
    ),
    ("POST", "/admin/v1/devices"): RouteEntry(
        "operator",
        lambda t: _call(
            "POST",
            "/admin/v1/devices",
            json={"product_key": t.owner.product_key, "mac": t.owner.mac},
        ),
    ),
    ("GET", "/admin/v1/devices/{did:str}"): RouteEntry(
        "operator", _did("GET", "/admin/v1/devices/{did:str}")
    ),
    ("PUT", "/admin/v1/devices/{did:str}"): RouteEntry(
        "operator", _did("PUT", "/admin/v1/devices/{did:str}", json={"is_disabled": True})
    ),
    # -- public ---------------------------------------------------------------------------------
    ("GET", "/status"): RouteEntry(
        "public", lambda t: _call("GET", "/status"), reason="liveness and version"
    ),
    ("GET", "/healthz"): RouteEntry(
        "public", lambda t: _call("GET", "/healthz"), reason="liveness, for orchestrators"
    ),
    ("GET", "/readyz"): RouteEntry(
        "public",
        lambda t: _call("GET", "/readyz"),
        reason="readiness, for load balancers: names a dependency that is down, nothing else",
    ),
    ("GET", "/metrics"): RouteEntry(
        "public",
        lambda t: _call("GET", "/metrics"),
        reason="Prometheus: counts by route template and outcome, never a user's data",
    ),
    **{
        (method, path): RouteEntry("console", _console(method, path))
        for method, path in (
            ("GET", "/console"),
            ("GET", "/console/apps"),
            ("GET", "/console/devices"),
            ("GET", "/console/devices/{did:str}"),
            ("GET", "/console/devices/{did:str}/state"),
            ("GET", "/console/products"),
            ("GET", "/console/products/{product_key:str}"),
            ("GET", "/console/schedules"),
            ("GET", "/console/schedules/{schedule_id:str}"),
            ("GET", "/console/users"),
            ("GET", "/console/users/{uid:str}"),
            ("POST", "/console/apps"),
            ("POST", "/console/apps/{appid:str}/rotate"),
            ("POST", "/console/devices"),
            ("POST", "/console/devices/import"),
            ("POST", "/console/devices/import.json"),
            ("POST", "/console/devices/{did:str}/command"),
            ("POST", "/console/devices/{did:str}/disable"),
            ("POST", "/console/devices/{did:str}/enable"),
            ("POST", "/console/logout"),
            ("POST", "/console/products"),
            ("POST", "/console/users/{uid:str}/disable"),
            ("POST", "/console/users/{uid:str}/enable"),
            ("POST", "/console/users/{uid:str}/sign-out"),
        )
    },
    ("GET", "/console/login"): RouteEntry(
        "public",
        lambda t: _call("GET", "/console/login"),
        reason="the console's sign-in page: a form, no data",
    ),
    ("POST", "/console/login"): RouteEntry(
        "public",
        lambda t: _call("POST", "/console/login", content=b"token=wrong", headers=_FORM_TYPE),
        reason="the console's sign-in: only the operator token opens a session",
    ),
    ("GET", "/console/static/{name:str}"): RouteEntry(
        "public",
        lambda t: _call("GET", "/console/static/console.css"),
        reason="the console's own CSS and JavaScript, from the package",
    ),
    ("GET", "/openapi.json"): RouteEntry(
        "public", lambda t: _call("GET", "/openapi.json"), reason="the API's schema, no data"
    ),
    ("GET", "/docs"): RouteEntry(
        "public", lambda t: _call("GET", "/docs"), reason="the API's interactive docs page"
    ),
    ("GET", "/docs/assets/{name:str}"): RouteEntry(
        "public",
        lambda t: _call("GET", "/docs/assets/swagger-ui.css"),
        reason="Swagger UI's static files, from the package",
    ),
    **{
        (method, f"/broker/rabbitmq/{kind}"): RouteEntry(
            "public",
            _broker_question(method, kind),
            reason="the broker's HTTP auth backend: allow or deny for what was sent, answered "
            "only to IOTCLOUD_BROKER_AUTH_FROM",
        )
        for method in ("GET", "POST")
        for kind in ("user", "vhost", "resource", "topic")
    },
    **{
        ("POST", f"/broker/emqx/{kind}"): RouteEntry(
            "public",
            _emqx_question(kind),
            reason="EMQX's HTTP authentication and authorization: allow, deny or ignore for "
            "what was sent, answered only to IOTCLOUD_BROKER_AUTH_FROM",
        )
        for kind in ("authn", "authz")
    },
    ("POST", "/app/users"): RouteEntry(
        "public",
        lambda t: _call("POST", "/app/users", json={"username": new_mac(), "password": "pw-1234"}),
        reason="sign-up: the App-Id only",
    ),
    ("POST", "/app/login"): RouteEntry(
        "public",
        lambda t: _call(
            "POST", "/app/login", json={"username": t.owner.username, "password": "wrong-pw"}
        ),
        reason="sign-in with a password",
    ),
    ("POST", "/app/request_token"): RouteEntry(
        "public",
        lambda t: _call(
            "POST", "/app/request_token", headers={"X-Gizwits-Application-Auth": "0" * 32}
        ),
        reason="the app's own token, for md5(appid + appsecret)",
    ),
    ("GET", "/app/verify/codes"): RouteEntry(
        "public",
        lambda t: _call("GET", "/app/verify/codes"),
        reason="a captcha before sign-up, behind the app token",
    ),
    ("POST", "/app/verify/codes"): RouteEntry(
        "public",
        lambda t: _call(
            "POST",
            "/app/verify/codes",
            json={"captcha_id": "x", "captcha_code": "x", "phone": "13800000000"},
        ),
        reason="an SMS code before sign-up, behind the app token and a captcha",
    ),
    ("PUT", "/app/verify/codes"): RouteEntry(
        "public",
        lambda t: _call(
            "PUT", "/app/verify/codes", json={"phone": "13800000000", "sms_code": "000000"}
        ),
        reason="checks an SMS code, behind the app token",
    ),
    ("GET", "/app/verify/captcha/{captcha_id:str}"): RouteEntry(
        "public",
        lambda t: _call(
            "GET", "/app/verify/captcha/{captcha_id:str}", path_params={"captcha_id": "nothing"}
        ),
        reason="a captcha image, for an <img> tag that cannot send headers",
    ),
    ("POST", "/app/sms_code"): RouteEntry(
        "public",
        lambda t: _call("POST", "/app/sms_code", json={"phone": "13800000000"}),
        reason="an SMS code before sign-up or reset, behind the app token",
    ),
    ("POST", "/app/reset_password"): RouteEntry(
        "public",
        lambda t: _call("POST", "/app/reset_password", json={"email": "nobody@example.com"}),
        reason="password reset for a user who cannot sign in, by e-mail link or SMS code",
    ),
    ("GET", "/app/datapoint"): RouteEntry(
        "public",
        lambda t: _call("GET", "/app/datapoint", query={"product_key": t.owner.product_key}),
        reason="a product's datapoints, shipped in every app: the App-Id only",
    ),
    ("GET", "/app/devdata/{did:str}/latest"): RouteEntry(
        "public",
        _did("GET", "/app/devdata/{did:str}/latest"),
        reason="the App-Id only by default, as the Open API has it: a device's latest values, "
        "never its credentials or its users",
    ),
    ("POST", "/dev/devices"): RouteEntry(
        "public",
        lambda t: _form(
            "POST",
            "/dev/devices",
            f"passcode=ABCDEFGHIJ&mac={new_mac()}&product_key={t.owner.product_key}",
        ),
        reason="device registration (GAgent): product key, MAC and passcode",
    ),
    ("DELETE", "/dev/devices"): RouteEntry(
        "public",
        lambda t: _form("DELETE", "/dev/devices", f"did={t.owner.did}&passcode=WRONGPASS0"),
        reason="a device disabling itself, with its did and passcode",
    ),
    ("GET", "/dev/devices/{did:str}"): RouteEntry(
        "public",
        _did("GET", "/dev/devices/{did:str}"),
        reason="device provisioning (GAgent): the broker's host and port",
    ),
    ("POST", "/dev/{product_key:str}/device"): RouteEntry(
        "public",
        lambda t: _form(
            "POST",
            "/dev/{product_key:str}/device",
            "data=00112233445566778899aabbccddeeff",
            path_params={"product_key": t.owner.product_key},
        ),
        reason="encrypted device registration, with the product secret",
    ),
    ("GET", "/dev/{product_key:str}/device"): RouteEntry(
        "public",
        lambda t: _call(
            "GET",
            "/dev/{product_key:str}/device",
            path_params={"product_key": t.owner.product_key},
            query={"did": "00112233445566778899aabbccddeeff"},
        ),
        reason="encrypted device provisioning, with the product secret",
    ),
    ("GET", "/account/reset/{token:str}"): RouteEntry(
        "public",
        lambda t: _call("GET", "/account/reset/{token:str}", path_params={"token": "x" * 32}),
        reason="the mailed reset link: the token in the path is the credential",
    ),
    ("POST", "/account/reset/{token:str}"): RouteEntry(
        "public",
        lambda t: _form(
            "POST",
            "/account/reset/{token:str}",
            "new_pwd=pw-654321&confirm=pw-654321",
            path_params={"token": "x" * 32},
        ),
        reason="the mailed reset link: the token in the path is the credential",
    ),
    ("POST", "/api/exploreropen/appapi"): RouteEntry(
        "public",
        lambda t: _call(
            "POST",
            "/api/exploreropen/appapi",
            json={"Action": "AppGetToken", "RequestId": "r", "AppKey": t.owner.appid},
        ),
        reason="Tencent calls before sign-in, signed with the app secret",
    ),
}


def _thing(t: Target, **params: Any) -> dict[str, Any]:
    return {"ProductId": t.owner.thing.product_id, "DeviceName": t.owner.thing.name, **params}


def _gizwits(t: Target, **params: Any) -> dict[str, Any]:
    return {"ProductId": t.owner.product_key, "DeviceName": t.owner.mac, **params}


TOKENAPI: Final[dict[str, ActionEntry]] = {
    "AppGetUser": ActionEntry(lambda t: {}, "self"),
    "AppUpdateUser": ActionEntry(lambda t: {"NickName": "nick"}, "self"),
    "AppLogoutUser": ActionEntry(lambda t: {}, "self", ends_session=True),
    "AppUserResetPassword": ActionEntry(
        lambda t: {"Password": "wrong-pw-1", "NewPassword": "new-pw-12345"}, "self"
    ),
    "AppGetUserSetting": ActionEntry(lambda t: {}, "self"),
    "AppUpdateUserSetting": ActionEntry(lambda t: {"Region": "ap-guangzhou"}, "self"),
    "AppGetFamilyList": ActionEntry(lambda t: {}, "self"),
    "AppGetFamilyDeviceList": ActionEntry(lambda t: {"FamilyId": t.owner.family_id}),
    "AppDeleteDeviceInFamily": ActionEntry(lambda t: _gizwits(t, FamilyId=t.family)),
    "AppUpdateDeviceInFamily": ActionEntry(lambda t: _gizwits(t, AliasName="renamed")),
    "AppGetDeviceData": ActionEntry(lambda t: _thing(t)),
    "AppControlDeviceData": ActionEntry(lambda t: _thing(t, Data='{"power_switch": 1}')),
    "AppGetDeviceStatuses": ActionEntry(
        lambda t: {
            "DeviceIds": [
                f"{t.owner.product_key}/{t.owner.mac}",
                f"{t.owner.thing.product_id}/{t.owner.thing.name}",
            ]
        }
    ),
    "AppListEventHistory": ActionEntry(lambda t: _thing(t)),
    "AppSigBindDeviceInFamily": ActionEntry(
        lambda t: _thing(
            t,
            FamilyId=t.family,
            DeviceTimestamp=int(time.time()),
            ConnId="abcde",
            Signature="00" * 20,
        )
    ),
    "AppCallDeviceAction": ActionEntry(
        lambda t: _thing(t, ActionId="blink", InputParams='{"times": 1}')
    ),
    "AppCallDeviceActionSync": ActionEntry(
        lambda t: _thing(t, ActionId="blink", InputParams='{"times": 1}')
    ),
    "AppCreateTimer": ActionEntry(lambda t: timer_params(t.owner.product_key, t.owner.mac)),
    "AppGetTimerList": ActionEntry(lambda t: _gizwits(t)),
    "AppModifyTimer": ActionEntry(
        lambda t: {**timer_params(t.owner.product_key, t.owner.mac), "TimerId": t.owner.timer_id}
    ),
    "AppModifyTimerStatus": ActionEntry(lambda t: _gizwits(t, TimerId=t.owner.timer_id, Status=0)),
    "AppDeleteTimer": ActionEntry(lambda t: _gizwits(t, TimerId=t.owner.timer_id)),
}


def tokenapi_call(action: str, params: dict[str, Any], token: str | None) -> HttpCall:
    """``action`` on tokenapi with ``params``; ``token`` None leaves AccessToken out."""
    body: dict[str, Any] = {"Action": action, "RequestId": f"req-{action}", **params}
    if token is not None:
        body["AccessToken"] = token
    return HttpCall("POST", "/api/exploreropen/tokenapi", json=body)
