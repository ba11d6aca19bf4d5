"""Operator authentication: ``Authorization: Bearer <IOTCLOUD_ADMIN_TOKEN>``."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from iotcloud.errors import OperatorAuthFailed
from iotcloud.services.registry import Services


def require_operator(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admit the caller only with the configured admin token (compared in constant time).

    No token configured: 403, every call. Missing or wrong token: 401.
    """
    services: Services = connection.app.state.services
    expected = services.settings.admin_token
    if not expected:
        raise OperatorAuthFailed(
            "the operator API is disabled; set IOTCLOUD_ADMIN_TOKEN on the server to enable it",
            disabled=True,
        )
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OperatorAuthFailed("Authorization: send 'Bearer <IOTCLOUD_ADMIN_TOKEN>'")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise OperatorAuthFailed("Authorization: wrong admin token")
