"""The OpenAPI document built from the app's route table and its handlers' declarations: every
``api``-role route is in it, it is valid OpenAPI 3.1, each Tencent Action is listed with its
parameters, and a handler can only parse with the shapes it declares."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar, Request, Response, get, post
from litestar.testing import TestClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from iotcloud.api.errors import EXCEPTION_HANDLERS
from iotcloud.api.openapi.declare import declare, declared_body, operation_of
from iotcloud.api.openapi.document import UndeclaredRoute, build_document, documented_handlers
from iotcloud.api.tencent import appapi, tokenapi
from iotcloud.api.tencent.params import (
    APPAPI_PARAMS,
    TOKENAPI_PARAMS,
    DeclaredParams,
    TokenCommon,
    UndeclaredParam,
)
from iotcloud.app import create_app
from iotcloud.config import Settings

ADMIN_TOKEN = "unit-admin-token-must-not-leak-0123"


@pytest.fixture(scope="module")
def app() -> Iterator[Litestar]:
    with tempfile.TemporaryDirectory(prefix="iotcloud-openapi-") as data_dir:
        settings = Settings.load(
            {
                "IOTCLOUD_DATA_DIR": data_dir,
                "IOTCLOUD_ENV": "development",
                "IOTCLOUD_ADMIN_TOKEN": ADMIN_TOKEN,
            }
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield create_app(settings)


@pytest.fixture(scope="module")
def document(app: Litestar) -> dict[str, Any]:
    return build_document(app)


def test_every_http_route_of_the_api_role_is_documented(
    app: Litestar, document: dict[str, Any]
) -> None:
    served = {(path, method) for path, method, _ in documented_handlers(app)}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented
    for expected in [
        ("/app/login", "post"),
        ("/app/devices/{did}", "get"),
        ("/dev/devices", "post"),
        ("/api/exploreropen/tokenapi", "post"),
        ("/api/exploreropen/appapi", "post"),
        ("/admin/v1/products", "post"),
        ("/broker/emqx/authn", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert expected in documented, expected


def test_every_documented_handler_declares_its_operation(app: Litestar) -> None:
    undeclared = [
        f"{method.upper()} {path}"
        for path, method, handler in documented_handlers(app)
        if operation_of(handler) is None
    ]
    assert not undeclared


def test_websocket_console_and_the_docs_themselves_are_left_out(
    document: dict[str, Any],
) -> None:
    paths = set(document["paths"])
    assert not any(path.startswith(("/ws", "/console", "/docs", "/openapi")) for path in paths)
    description = document["info"]["description"]
    assert "/ws/app/v1" in description
    assert "/console" in description


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert not errors
    # every reference resolves
    text = json.dumps(document)
    schemas = document["components"]["schemas"]
    for name in {ref.split("/")[-1] for ref in _refs(document)}:
        assert name in schemas, name
    assert "#/$defs" not in text


def test_each_tencent_action_is_a_variant_with_its_parameters(document: dict[str, Any]) -> None:
    for path, actions, params in [
        ("/api/exploreropen/tokenapi", tokenapi.ACTIONS, TOKENAPI_PARAMS),
        ("/api/exploreropen/appapi", appapi.ACTIONS, APPAPI_PARAMS),
    ]:
        assert set(params) == set(actions)
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        schema = body["schema"]
        assert schema["discriminator"]["propertyName"] == "Action"
        assert set(schema["discriminator"]["mapping"]) == set(actions)
        assert len(schema["oneOf"]) == len(actions)
        for action, ref in schema["discriminator"]["mapping"].items():
            variant = document["components"]["schemas"][ref.split("/")[-1]]
            assert variant["properties"]["Action"] == {"const": action}
            assert "Action" in variant["required"]
            own = set(params[action].__struct_fields__)
            assert own <= set(variant["properties"])
    token = document["components"]["schemas"]["tokenapi.AppControlDeviceData"]
    assert {"AccessToken", "ProductId", "DeviceName", "Data"} <= set(token["required"])
    signed = document["components"]["schemas"]["appapi.AppGetToken"]
    assert {"AppKey", "Timestamp", "Nonce", "Signature"} <= set(signed["required"])


def test_each_dialect_documents_its_error_shape(document: dict[str, Any]) -> None:
    login = document["paths"]["/app/login"]["post"]["responses"]
    assert set(login) >= {"200", "400", "413", "429"}
    ref = login["400"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/GizwitsError")
    assert "Retry-After" in login["429"]["headers"]
    gizwits = document["components"]["schemas"]["GizwitsError"]
    assert set(gizwits["required"]) == {"error_code", "error_message", "detail_message"}

    tencent = document["paths"]["/api/exploreropen/tokenapi"]["post"]["responses"]
    answer = tencent["200"]["content"]["application/json"]["schema"]["oneOf"]
    assert {"$ref": "#/components/schemas/TencentErrorEnvelope"} in answer
    envelope = document["components"]["schemas"]["TencentErrorEnvelope"]
    assert envelope["properties"]["Response"]["required"] == ["Error", "RequestId"]

    operator = document["paths"]["/admin/v1/products"]["get"]
    assert operator["security"] == [{"operator": []}]
    assert set(operator["responses"]) >= {"200", "401", "403"}
    schemes = document["components"]["securitySchemes"]
    assert schemes["app"]["name"] == "X-Gizwits-Application-Id"
    assert schemes["user"]["name"] == "X-Gizwits-User-token"
    assert schemes["operator"] == {**schemes["operator"], "type": "http", "scheme": "bearer"}


def test_no_secret_and_no_example_value_is_in_the_document(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    assert ADMIN_TOKEN not in text
    examples = list(_values_of(document, {"example", "examples", "default"}))
    secretive = [
        value
        for value in examples
        if isinstance(value, str) and len(value) >= 16 and value.isalnum()
    ]
    assert not secretive


def test_a_route_without_a_declaration_stops_the_document() -> None:
    @get("/undeclared")
    async def undeclared() -> Response[bytes]:
        return Response(b"{}")

    with pytest.raises(UndeclaredRoute, match="/undeclared"):
        build_document(Litestar(route_handlers=[undeclared], openapi_config=None))


class Declared(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class Other(msgspec.Struct):
    name: str


@declare("Echo", tag="t", body=Declared, responses={200: Declared})
@post("/echo", status_code=200)
async def echo(request: Request[Any, Any, Any]) -> Response[bytes]:
    form = await declared_body(request, Declared)
    return Response(msgspec.json.encode(form))


@declare("Wrong", tag="t", body=Declared, responses={200: Declared})
@post("/wrong", status_code=200)
async def wrong(request: Request[Any, Any, Any]) -> Response[bytes]:
    form = await declared_body(request, Other)  # not what the route declares
    return Response(msgspec.json.encode(form))


def test_a_handler_parses_with_its_declared_struct_only() -> None:
    app = Litestar(
        route_handlers=[echo, wrong], exception_handlers=EXCEPTION_HANDLERS, openapi_config=None
    )
    with TestClient(app) as client:
        assert client.post("/echo", json={"name": "a"}).json() == {"name": "a"}
        refused = client.post("/echo", json={"name": 1})
        assert refused.status_code == 400
        assert refused.json()["detail_message"] == "name: expected str, got int"
        assert client.post("/wrong", json={"name": "a"}).status_code == 500
    body = build_document(app)["paths"]["/echo"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Declared"
    }


def test_an_action_reads_only_declared_parameters() -> None:
    params = DeclaredParams(
        {"Action": "AppGetDeviceData", "ProductId": "p", "Platform": "android"},
        TOKENAPI_PARAMS["AppGetDeviceData"],
        TokenCommon,
    )
    assert params.get("ProductId") == "p"
    assert params.get("DeviceName") is None
    assert params.get("AccessToken") is None
    assert set(params) == {"Action", "ProductId", "Platform"}
    with pytest.raises(UndeclaredParam, match="Platform"):
        params.get("Platform")


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _values_of(node: Any, keys: set[str]) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and not isinstance(value, dict):
                yield value
            yield from _values_of(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _values_of(item, keys)
