"""Rendering console pages: the Jinja2 environment over the package's templates (autoescaped),
its static assets, and the inline SVG charts of numeric data points."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from litestar import Response

from iotcloud.services.console import ChartSeries

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_TYPES: Final[Mapping[str, str]] = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}


def when_text(instant: datetime | None) -> str:
    """How every console page shows an instant."""
    if instant is None:
        return "—"
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("iotcloud.api.console", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when_text
    env.filters["value"] = _value
    return env


def page(template: str, status_code: int = 200, **context: Any) -> Response[str]:
    """``template`` rendered with ``context`` as an HTML response."""
    html = environment().get_template(template).render(**context)
    return Response(
        html, status_code=status_code, media_type="text/html", headers=dict(SECURITY_HEADERS)
    )


@cache
def static_asset(name: str) -> bytes | None:
    """The bytes of a shipped asset (only the known ones)."""
    if name not in STATIC_TYPES:
        return None
    return (importlib.resources.files("iotcloud.api.console") / "static" / name).read_bytes()


CHART_WIDTH: Final = 600
CHART_HEIGHT: Final = 160
_PAD: Final = 4


def chart_svg_points(series: ChartSeries, start: datetime, end: datetime) -> dict[str, Any]:
    """Where a series' line runs in a ``CHART_WIDTH`` x ``CHART_HEIGHT`` box: ``points`` (the
    SVG polyline attribute), the value range and the number of reports drawn."""
    values = [value for _, value in series.points]
    if not values:
        return {"points": "", "low": None, "high": None, "count": 0}
    low, high = min(values), max(values)
    spread = (high - low) or 1.0
    span = (end - start).total_seconds() or 1.0
    width, height = CHART_WIDTH - 2 * _PAD, CHART_HEIGHT - 2 * _PAD
    coords: list[str] = []
    for at, value in series.points:
        x = _PAD + width * max(0.0, (at - start).total_seconds()) / span
        y = CHART_HEIGHT - _PAD - height * (value - low) / spread
        coords.append(f"{x:.1f},{y:.1f}")
    return {"points": " ".join(coords), "low": low, "high": high, "count": len(values)}
