"""The HTTP API's OpenAPI 3.1 document and its interactive docs.

`declare` holds the per-route declarations handlers parse with, `document` builds the document
from them, `routes` serves ``/openapi.json`` and ``/docs``.
"""

from iotcloud.api.openapi.routes import ROUTES

__all__ = ["ROUTES"]
