"""``/admin/v1/products``: import datapoint definitions or data templates, list and show
products."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, get, post, route

from iotcloud.api.admin.views import (
    ProductCredentialsShape,
    ProductShape,
    product_credentials_view,
    product_view,
)
from iotcloud.api.gizwits.wire import json_object, json_response
from iotcloud.api.openapi.declare import OPERATOR_ERRORS, Decorator, declare
from iotcloud.errors import FormInvalid
from iotcloud.services.registry import Services

AnyRequest = Request[Any, Any, Any]

MAX_DEFINITION_BYTES = 4 * 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


Registration = Literal["open", "signed", "preprovisioned"]
Flag = Annotated[str, msgspec.Meta(description="true or false (1/0, yes/no, on/off)")]


class ImportQuery(msgspec.Struct):
    product_secret: str | None = None
    replace: Flag = ""
    registration: Registration | None = None


class RegistrationForm(msgspec.Struct, forbid_unknown_fields=True):
    registration: Registration


DEFINITION: Final = {
    "type": "object",
    "description": "A Gizwits datapoint JSON, or a Tencent data template (``profile.ProductId``)",
}


def _declare(summary: str, **kwargs: Any) -> Decorator:
    return declare(
        summary, tag="operator", security=("operator",), errors=OPERATOR_ERRORS, **kwargs
    )


def services(request: AnyRequest) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def flag(request: AnyRequest, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise FormInvalid(f"{name}: must be true or false")


@_declare(
    "Import a product definition",
    query=ImportQuery,
    body=DEFINITION,
    responses={201: ProductCredentialsShape, 200: ProductCredentialsShape},
)
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


@_declare(
    "Change a product's registration policy", body=RegistrationForm, responses={200: ProductShape}
)
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


@_declare("List products", responses={200: list[ProductShape]})
@get("/products")
async def list_products(request: AnyRequest) -> Response[bytes]:
    """``[{"product_key", "name", "protocol_type", "created_at", "updated_at"}]``."""
    products = await services(request).products.list()
    return json_response([product_view(product) for product in products])


@_declare("A product with its data points", responses={200: ProductShape})
@get("/products/{product_key:str}")
async def show_product(request: AnyRequest, product_key: str) -> Response[bytes]:
    """The product with its secret and data points (9002 when unknown)."""
    svc = services(request).products
    product = await svc.get(product_key)
    if product.is_data_template:
        return json_response(product_view(product, template=await svc.template(product_key)))
    return json_response(product_view(product, await svc.definition(product.product_key)))


ROUTES = [import_product, update_product, list_products, show_product]
