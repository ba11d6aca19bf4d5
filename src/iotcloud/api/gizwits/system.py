"""``GET /status``: liveness and version, with no I/O (also the benchmarks' ceiling)."""

from __future__ import annotations

import msgspec
from litestar import Response, get

from iotcloud import __version__
from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import declare


class Version(msgspec.Struct):
    version: str


class Status(msgspec.Struct):
    status: Version


@declare("The server's version", tag="gizwits", responses={200: Status})
@get("/status")
async def status() -> Response[bytes]:
    return json_response({"status": {"version": __version__}})


ROUTES = [status]
