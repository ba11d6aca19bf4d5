"""``/admin/v1/stats``: the device edge's counters, for operators and load tests.

Connections, messages in and out, ACL refusals, reports shed at the edge under overload, reads
paused for backpressure, the ingest queues (submitted, written, dropped, backlog) and the
garbage collector's pauses per generation. Counters run since the process started and only
grow; read them twice and subtract for a rate.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from iotcloud.api.gizwits.wire import json_response

AnyRequest = Request[Any, Any, Any]


@get("/stats")
async def edge_stats(request: AnyRequest) -> Response[bytes]:
    return json_response(request.app.state.services.edge_stats())


ROUTES = [edge_stats]
