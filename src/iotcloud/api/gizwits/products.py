"""``GET /app/datapoint``: a product's datapoint definition, as it was imported.

For a data-template (Tencent) product the answer is its data template, as imported: Gizwits
apps see that product's devices with Tencent property ids, and the template is the only true
description of them (no datapoint JSON is synthesised, which would invent byte positions).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from iotcloud.api.gizwits.accounts import current_app, services
from iotcloud.api.openapi.declare import APP_ERRORS, declare, declared_query

AnyRequest = Request[Any, Any, Any]


class DatapointQuery(msgspec.Struct):
    product_key: str


DEFINITION = {
    "type": "object",
    "description": "The product's datapoint JSON (or data template) exactly as imported",
}


@declare(
    "A product's datapoint definition",
    tag="gizwits products",
    security=("app",),
    query=DatapointQuery,
    responses={200: DEFINITION},
    errors=APP_ERRORS,
)
@get("/app/datapoint")
async def datapoint(request: AnyRequest) -> Response[bytes]:
    """Needs only ``X-Gizwits-Application-Id`` (9003). Unknown product_key: 9002."""
    await current_app(request)
    query = declared_query(request, DatapointQuery)
    text = await services(request).products.definition_json(query.product_key)
    return Response(content=text.encode(), media_type="application/json")


ROUTES = [datapoint]
