"""``/healthz``, ``/readyz`` and ``/metrics``: what an orchestrator and Prometheus ask of every
process, whatever its roles.

* ``GET /healthz``: the process is alive and serving HTTP (no I/O): 200 ``{"status": "ok"}``.
* ``GET /readyz``: its dependencies answer - the database (one ``SELECT 1`` within
  `READY_TIMEOUT_SECONDS`) and the MQTT broker (connected, or the embedded transport listening).
  200 ``{"status": "ready", "checks": {...}}`` or 503 ``{"status": "unready", "checks": {...}}``
  where each check is ``"ok"`` or what is wrong, so the answer names the dependency that is down.
* ``GET /metrics``: the Prometheus text exposition of this process's metrics (`iotcloud.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Literal

import msgspec
from litestar import Request, Response, get

from iotcloud.api.gizwits.wire import json_response
from iotcloud.api.openapi.declare import declare

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]
READY_TIMEOUT_SECONDS: Final = 2.0


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ready", "unready"]
    checks: dict[str, str]
    """``database`` and ``broker``: ``"ok"`` or what is wrong."""


METRICS_TEXT: Final = {"type": "string", "description": "Prometheus text exposition format"}


@declare("The process is alive", tag="probes", responses={200: Health}, dialect="plain")
@get("/healthz")
async def healthz() -> Response[bytes]:
    return json_response({"status": "ok"})


@declare(
    "The database and the broker answer",
    tag="probes",
    responses={200: Readiness, 503: Readiness},
    dialect="plain",
)
@get("/readyz")
async def readyz(request: AnyRequest) -> Response[bytes]:
    services = request.app.state.services
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(services.database.ping(), READY_TIMEOUT_SECONDS)
        checks["database"] = "ok"
    except TimeoutError:
        checks["database"] = f"no answer within {READY_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # whatever the driver raises: the dependency is down
        checks["database"] = f"unavailable: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    checks["broker"] = services.broker_unready() or "ok"
    ready = all(value == "ok" for value in checks.values())
    if checks != request.app.state.get("readiness"):  # logged when it changes, not per probe
        request.app.state.readiness = checks
        if ready:
            log.info("ready: database and broker answer")
        else:
            log.warning("not ready: %s", checks)
    return json_response(
        {"status": "ready" if ready else "unready", "checks": checks}, 200 if ready else 503
    )


@declare(
    "Prometheus metrics of this process",
    tag="probes",
    responses={200: METRICS_TEXT},
    response_media={200: "text/plain"},
    dialect="plain",
)
@get("/metrics")
async def metrics(request: AnyRequest) -> Response[bytes]:
    body, content_type = request.app.state.services.metrics.render()
    return Response(body, media_type=content_type)


ROUTES = [healthz, readyz, metrics]
