"""``/admin/v1/products``: import datapoint definitions or data templates, list and show
products."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post, route

from iotcloud.api.admin.views import product_credentials_view, product_view
from iotcloud.api.gizwits.wire import json_object, json_response
from iotcloud.errors import FormInvalid
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]

MAX_DEFINITION_BYTES = 4 * 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def flag(request: AnyRequest, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise FormInvalid(f"{name}: must be true or false")


@post("/products", request_max_body_size=MAX_DEFINITION_BYTES)
async def import_product(request: AnyRequest) -> Response[bytes]:
    """Body: a Gizwits datapoint JSON or a Tencent data template (keyed by its
    ``profile.ProductId``). Query: ``product_secret``, ``replace``, ``registration``
    (``open``, ``signed`` or ``preprovisioned``).

    201 ``{"product_key", "product_secret"}`` for a new product, 200 when ``replace`` swapped an
    existing one's data points.
    """
    data = await json_object(request)
    secret = request.query_params.get("product_secret")
    creds = await services(request).products.import_definition(
        data,
        product_secret=secret,
        replace=flag(request, "replace"),
        registration=request.query_params.get("registration"),
    )
    return json_response(product_credentials_view(creds), 201 if creds.created else 200)


@route("/products/{product_key:str}", http_method=["PATCH"])
async def update_product(request: AnyRequest, product_key: str) -> Response[bytes]:
    """Body ``{"registration": "open" | "signed" | "preprovisioned"}``: the product as
    ``GET /products`` lists it (9002 when unknown, 9015 naming the field otherwise)."""
    body = await json_object(request)
    unknown = sorted(set(body) - {"registration"})
    if unknown:
        raise FormInvalid(f"{unknown[0]}: unknown field (only registration can be changed)")
    value = body.get("registration")
    if not isinstance(value, str):
        raise FormInvalid("registration: required, one of open, signed, preprovisioned")
    product = await services(request).products.set_registration(product_key, value)
    return json_response(product_view(product))


@get("/products")
async def list_products(request: AnyRequest) -> Response[bytes]:
    """``[{"product_key", "name", "protocol_type", "created_at", "updated_at"}]``."""
    products = await services(request).products.list()
    return json_response([product_view(product) for product in products])


@get("/products/{product_key:str}")
async def show_product(request: AnyRequest, product_key: str) -> Response[bytes]:
    """The product with its secret and data points (9002 when unknown)."""
    svc = services(request).products
    product = await svc.get(product_key)
    if product.is_data_template:
        return json_response(product_view(product, template=await svc.template(product_key)))
    return json_response(product_view(product, await svc.definition(product.product_key)))


ROUTES = [import_product, update_product, list_products, show_product]
