"""The server's route table, read from the application the way it is served: every HTTP route
with each of its methods, and the WebSocket routes, plus the Actions of the Tencent endpoints
(one route each, dispatched on the body's ``Action``)."""

from __future__ import annotations

import re
import tempfile
import warnings
from typing import Final

from litestar.routes import HTTPRoute, WebSocketRoute

from iotcloud.api.tencent import appapi, tokenapi
from iotcloud.app import create_app
from iotcloud.config import Settings

WEBSOCKET: Final = "WEBSOCKET"
"""The method a WebSocket route is listed under."""
_IMPLICIT = frozenset({"OPTIONS", "HEAD"})
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")

Route = tuple[str, str]
"""``(method, path)`` with the path as the application declares it (``/app/devices/{did:str}``)."""


def app_routes() -> frozenset[Route]:
    """Every route of the application ``iotcloud serve`` runs (built, never started)."""
    with tempfile.TemporaryDirectory(prefix="iotcloud-routes-") as data_dir:
        settings = Settings.load({"IOTCLOUD_DATA_DIR": data_dir, "IOTCLOUD_ENV": "development"})
        with warnings.catch_warnings():  # the framework's notes on handler style, not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            app = create_app(settings)
    routes: set[Route] = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            routes.add((WEBSOCKET, route.path))
        elif isinstance(route, HTTPRoute):
            routes.update((method, route.path) for method in route.methods - _IMPLICIT)
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")
    return frozenset(routes)


def tokenapi_actions() -> frozenset[str]:
    """The Actions ``POST /api/exploreropen/tokenapi`` dispatches (signed-in users)."""
    return frozenset(tokenapi.ACTIONS)


def appapi_actions() -> frozenset[str]:
    """The Actions ``POST /api/exploreropen/appapi`` dispatches (signed, before sign-in)."""
    return frozenset(appapi.ACTIONS)


def path_params(path: str) -> list[str]:
    """The names of the parameters in a declared path, in order."""
    return _PARAM.findall(path)


def fill_path(path: str, values: dict[str, str]) -> str:
    """The declared ``path`` with each ``{name:type}`` replaced by ``values[name]`` as given
    (the caller quotes them if it wants to)."""
    return _PARAM.sub(lambda match: values[match.group(1)], path)
