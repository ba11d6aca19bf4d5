"""Gizwits error replies as a client sees them (the table is ``iotcloud.errors``)."""

from __future__ import annotations

import httpx


def assert_error(reply: httpx.Response, code: int, status: int, detail: str | None = None) -> None:
    """``reply`` is the Gizwits error ``code`` with HTTP ``status``, in exactly the Gizwits body
    shape; its ``detail_message`` contains ``detail`` when one is given."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error_code", "error_message", "detail_message"}, body
    assert body["error_code"] == code, body
    if detail is not None:
        assert detail in (body["detail_message"] or ""), body
