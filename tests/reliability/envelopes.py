"""What an answer of each dialect must look like, success or failure.

- Under ``/api/exploreropen``: always ``{"Response": {..., "RequestId"}}`` (the server's default
  envelope), a failure with ``"Error": {"Code", "Message"}``.
- Everything else answers failures in the Gizwits shape, exactly ``{"error_code",
  "error_message", "detail_message"}``, and successes as JSON, except the device routes
  (``/dev/...``: form text or hex), the captcha image, the password-reset page (HTML, which also
  answers its own refusals as HTML), the broker-auth endpoints (RabbitMQ's ``allow``/``deny``
  as plain text, EMQX's ``{"result"}``; a caller not allowed gets a bare 403), ``/metrics``
  (Prometheus text), the interactive docs (``/docs``: HTML and its assets) and the web console
  (``/console``: pages and their assets, refusals as pages).
- A 204 has no body, in either dialect (``DELETE /app/logout``, ``OPTIONS``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

TENCENT_PREFIX = "/api/exploreropen"
RESET_PREFIX = "/account/reset/"
RABBITMQ_PREFIX = "/broker/rabbitmq/"
EMQX_PREFIX = "/broker/emqx/"


def is_tencent(path: str) -> bool:
    return path == TENCENT_PREFIX or path.startswith(TENCENT_PREFIX + "/")


def envelope_problem(status: int, content_type: str, body: bytes, path: str) -> str | None:
    """Why an answer with ``status`` to a request for ``path`` is outside its dialect's
    envelope, or None when it is inside (a 5xx is always a problem)."""
    if status >= 500:
        return f"HTTP {status}"
    if status == 204:  # no content, in any dialect (a preflight OPTIONS, a logout)
        return None if not body else "a 204 with a body"
    if is_tencent(path):
        return _tencent_problem(status, content_type, body)
    if status >= 400 and path.startswith(("/console", "/docs")):
        if "json" not in content_type:
            return None  # the console and the docs answer their pages' refusals as pages
        value, problem = _json(content_type, body)  # the console's data routes: {"error", ...}
        if problem is None and isinstance(value, dict) and value.get("error"):
            return None
        return _gizwits_error_problem(content_type, body)  # what no console route answered
    if status >= 400 and path.startswith(RESET_PREFIX) and content_type.startswith("text/html"):
        return None
    if status == 403 and path.startswith((RABBITMQ_PREFIX, EMQX_PREFIX)):
        return None if not body else "a broker-auth refusal with a body"
    if status >= 400:
        return _gizwits_error_problem(content_type, body)
    return _success_problem(status, content_type, body, path)


def _json(content_type: str, body: bytes) -> tuple[Any, str | None]:
    if not content_type.startswith("application/json"):
        return None, f"Content-Type {content_type!r}, not JSON"
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, f"not JSON ({exc})"


def _gizwits_error_problem(content_type: str, body: bytes) -> str | None:
    value, problem = _json(content_type, body)
    if problem is not None:
        return problem
    if not isinstance(value, dict) or set(value) != {
        "error_code",
        "error_message",
        "detail_message",
    }:
        return "not the Gizwits error shape"
    if not isinstance(value["error_code"], int) or isinstance(value["error_code"], bool):
        return "error_code is not an integer"
    if not isinstance(value["error_message"], str):
        return "error_message is not a string"
    if value["detail_message"] is not None and not isinstance(value["detail_message"], str):
        return "detail_message is not a string"
    return None


def _tencent_problem(status: int, content_type: str, body: bytes) -> str | None:
    value, problem = _json(content_type, body)
    if problem is not None:
        return problem
    if not isinstance(value, dict) or set(value) != {"Response"}:
        return "not the Tencent envelope {Response}"
    response = value["Response"]
    if not isinstance(response, dict) or not isinstance(response.get("RequestId"), str):
        return "Response has no RequestId"
    error = response.get("Error")
    if error is None:
        return None if status == 200 else f"HTTP {status} without an Error"
    if set(response) != {"Error", "RequestId"}:
        return "an Error beside other fields"
    if not isinstance(error, dict) or set(error) != {"Code", "Message"}:
        return "Error is not {Code, Message}"
    if not all(isinstance(error[name], str) for name in ("Code", "Message")):
        return "Error.Code or Error.Message is not a string"
    if error["Code"] == "InternalError":
        return "InternalError"
    return None


def _success_problem(status: int, content_type: str, body: bytes, path: str) -> str | None:
    if path.startswith("/dev/"):
        if content_type.startswith(("text/plain", "application/json")):
            return None
        return f"Content-Type {content_type!r} on a device route"
    if path.startswith("/app/verify/captcha/"):
        return None if content_type.startswith("image/png") else "a captcha that is not a PNG"
    if path.startswith(RESET_PREFIX):
        return None if content_type.startswith("text/html") else "a reset page that is not HTML"
    if path.rstrip("/") == "/docs" or path.startswith(("/docs/assets/", "/console")):
        return None if not content_type.startswith("application/json") else "docs as JSON"
    if path.startswith(RABBITMQ_PREFIX):
        if not content_type.startswith("text/plain"):
            return f"Content-Type {content_type!r} on a RabbitMQ auth-backend route"
        return None if body in (b"allow", b"deny") else f"{body[:40]!r}, not allow or deny"
    if unquote(path).rstrip("/") == "/metrics":  # the router ignores a trailing slash
        return None if content_type.startswith("text/plain") else "metrics that are not text"
    value, problem = _json(content_type, body)
    answered = isinstance(value, dict) and value.get("result") in ("allow", "deny", "ignore")
    if problem is None and path.startswith(EMQX_PREFIX) and not answered:
        return "an EMQX answer without result allow, deny or ignore"
    return problem
