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
from iotcloud.api.openapi.declare import OPERATOR_ERRORS, declare

STATS = {
    "type": "object",
    "description": "Counters since the process started (they only grow) and queue lengths now",
    "properties": {
        "broker": {"type": "object"},
        "gateway": {"type": "object"},
        "ingest": {
            "type": "object",
            "properties": {"reports": {"type": "object"}, "presence": {"type": "object"}},
            "required": ["reports", "presence"],
        },
        "gc": {"type": "object"},
    },
    "required": ["broker", "gateway", "ingest", "gc"],
}

AnyRequest = Request[Any, Any, Any]


@declare(
    "The device edge's counters",
    tag="operator",
    security=("operator",),
    responses={200: STATS},
    errors=OPERATOR_ERRORS,
)
@get("/stats")
async def edge_stats(request: AnyRequest) -> Response[bytes]:
    return json_response(request.app.state.services.edge_stats())


ROUTES = [edge_stats]
