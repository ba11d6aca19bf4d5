"""``/admin/v1``: every route behind the operator guard."""

from __future__ import annotations

from litestar import Router

from iotcloud.api.admin import devices, edge, products
from iotcloud.api.admin.auth import require_operator

ROUTER = Router(
    path="/admin/v1",
    route_handlers=[*products.ROUTES, *devices.ROUTES, *edge.ROUTES],
    guards=[require_operator],
)
