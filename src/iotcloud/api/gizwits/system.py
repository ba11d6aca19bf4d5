"""``GET /status``: liveness and version, with no I/O (also the benchmarks' ceiling)."""

from __future__ import annotations

from litestar import Response, get

from iotcloud import __version__
from iotcloud.api.gizwits.wire import json_response


@get("/status")
async def status() -> Response[bytes]:
    return json_response({"status": {"version": __version__}})


ROUTES = [status]
