"""``GET /openapi.json`` (the document, built once per process from the app's routes) and
``GET /docs`` (Swagger UI pointed at it, its files served from the ``swagger-ui-py`` package
under ``/docs/assets/``: no CDN, works offline)."""

from __future__ import annotations

import importlib.resources
from typing import Any, Final

import msgspec
from litestar import Request, Response, get
from litestar.exceptions import NotFoundException

from iotcloud.api.openapi.document import build_document

__all__ = ["ROUTES"]

AnyRequest = Request[Any, Any, Any]

#: the Swagger UI files the page loads, and their media types
ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_CACHE: Final = {"Cache-Control": "public, max-age=86400"}
_STATE_KEY: Final = "openapi_document"

PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>iotcloud API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="stylesheet" href="/docs/assets/index.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""

INIT: Final = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
    validatorUrl: null
  });
};
"""


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: AnyRequest) -> Response[bytes]:
    """The OpenAPI 3.1 document (built on the first request; the routes do not change)."""
    body = request.app.state.get(_STATE_KEY)
    if body is None:
        body = msgspec.json.encode(build_document(request.app))
        request.app.state[_STATE_KEY] = body
    return Response(body, media_type="application/json")


@get("/docs", include_in_schema=False)
async def docs_page() -> Response[str]:
    return Response(PAGE, media_type="text/html")


@get("/docs/assets/{name:str}", include_in_schema=False)
async def docs_asset(name: str) -> Response[bytes]:
    """One of Swagger UI's files (`ASSETS`), or the page's initializer ``init.js``."""
    if name == "init.js":
        return Response(INIT.encode(), media_type="text/javascript", headers=_CACHE)
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundException(f"no such asset: {name}")
    data = (importlib.resources.files("swagger_ui") / "static" / name).read_bytes()
    return Response(data, media_type=media_type, headers=_CACHE)


ROUTES: Final = [openapi_json, docs_page, docs_asset]
