"""``GET /app/datapoint``: a product's datapoint definition, as it was imported.

For a data-template (Tencent) product the answer is its data template, as imported: Gizwits
apps see that product's devices with Tencent property ids, and the template is the only true
description of them (no datapoint JSON is synthesised, which would invent byte positions).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from iotcloud.api.gizwits.accounts import current_app, services
from iotcloud.errors import FormInvalid

AnyRequest = Request[Any, Any, Any]


@get("/app/datapoint")
async def datapoint(request: AnyRequest) -> Response[bytes]:
    """Needs only ``X-Gizwits-Application-Id`` (9003). Unknown product_key: 9002."""
    await current_app(request)
    product_key = request.query_params.get("product_key", "").strip()
    if not product_key:
        raise FormInvalid("product_key: is required")
    text = await services(request).products.definition_json(product_key)
    return Response(content=text.encode(), media_type="application/json")


ROUTES = [datapoint]
