"""What an HTTP route takes and answers, declared once on its handler and used both to parse
the request and to describe it in ``/openapi.json``.

`declare` stores an `Operation` in the route handler's ``opt`` (under `OPT_KEY`); the handler
then reads its body with `declared_body` (or `declared_form` when the body is one of several
shapes told apart by a key) and its query string with `declared_query`. Those helpers refuse a
struct the declaration does not list, so a handler cannot parse with a shape the document does
not show, and the document builder (`document`) reads the same declarations: the schema cannot
drift from the code. A test fails when an ``api``-role route has no declaration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler

from iotcloud.api.gizwits.query import query_form
from iotcloud.api.gizwits.wire import convert, form_fields, json_object, required_field
from iotcloud.errors import FormInvalid

__all__ = [
    "OPT_KEY",
    "Decorator",
    "Dialect",
    "Empty",
    "Operation",
    "Schema",
    "Shape",
    "declare",
    "declared_body",
    "declared_form",
    "declared_query",
    "operation_of",
]

OPT_KEY: Final = "openapi"


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    """``{}``: done, nothing more to say."""


Schema = Mapping[str, Any]
"""A hand-written JSON Schema (for shapes no struct describes, such as a text answer)."""
Shape = type[Any] | Schema
"""A type msgspec can describe (a Struct, ``list[Struct]``, ...) or a hand-written schema."""
Dialect = Literal["gizwits", "tencent", "plain"]
H = TypeVar("H", bound=HTTPRouteHandler)
Decorator = Callable[[HTTPRouteHandler], HTTPRouteHandler]
"""What `declare` returns, for modules that wrap it with their defaults."""
T = TypeVar("T")


@dataclass(frozen=True)
class Operation:
    """One route's contract.

    ``body``: the request body's shapes (one, or alternatives told apart by a key); ``query``:
    the query-string struct; ``responses``: status -> the success body's shape (None: no body);
    ``errors``: the statuses answered with the dialect's error body; ``security``: the names
    of the security schemes that admit a call (all of them together); ``actions``: for a
    Tencent endpoint, Action name -> its parameters struct; ``headers``: optional request
    headers, name -> description.
    """

    summary: str
    tag: str
    responses: Mapping[int, Shape | None]
    body: tuple[Shape, ...] = ()
    body_required: bool = True
    body_media: str = "application/json"
    query: type[msgspec.Struct] | None = None
    errors: tuple[int, ...] = ()
    security: tuple[str, ...] = ()
    dialect: Dialect = "gizwits"
    response_media: Mapping[int, str] = field(default_factory=dict)
    actions: Mapping[str, type[msgspec.Struct]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


def declare(
    summary: str,
    *,
    tag: str,
    responses: Mapping[int, Shape | None],
    body: Shape | tuple[Shape, ...] = (),
    body_required: bool = True,
    body_media: str = "application/json",
    query: type[msgspec.Struct] | None = None,
    errors: tuple[int, ...] = (),
    security: tuple[str, ...] = (),
    dialect: Dialect = "gizwits",
    response_media: Mapping[int, str] | None = None,
    actions: Mapping[str, type[msgspec.Struct]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Callable[[H], H]:
    """Decorate a route handler (above its ``@get``/``@post``) with its `Operation`; the
    handler's docstring becomes the operation's description."""

    def apply(handler: H) -> H:
        bodies = body if isinstance(body, tuple) else (body,)
        if any("{" in path for path in handler.paths):
            handler.guards = [*(handler.guards or ()), refuse_nul_in_path]
        handler.opt[OPT_KEY] = Operation(
            summary=summary,
            tag=tag,
            responses=responses,
            body=bodies,
            body_required=body_required,
            body_media=body_media,
            query=query,
            errors=errors,
            security=security,
            dialect=dialect,
            response_media=response_media or {},
            actions=actions or {},
            headers=headers or {},
            description=inspect.cleandoc(handler.fn.__doc__ or ""),
        )
        return handler

    return apply


def refuse_nul_in_path(connection: ASGIConnection[Any, Any, Any, Any], _: object) -> None:
    """``FormInvalid`` naming a path parameter that holds a NUL character (``%00``): no text
    column stores one (PostgreSQL refuses it), so it is refused before any lookup. Guards every
    declared route with path parameters."""
    for name, value in connection.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise FormInvalid(f"{name}: must not contain a NUL character")


def operation_of(handler: object) -> Operation | None:
    """The declaration of a route handler, or None."""
    opt = getattr(handler, "opt", None) or {}
    found = opt.get(OPT_KEY)
    return found if isinstance(found, Operation) else None


def _declared(request: Request[Any, Any, Any]) -> Operation:
    found = operation_of(request.scope.get("route_handler"))
    if found is None:
        raise LookupError(f"{request.method} {request.url.path}: the route declares no Operation")
    return found


async def declared_body(request: Request[Any, Any, Any], form: type[T]) -> T:
    """The request's JSON body as ``form``, which must be the route's declared body struct;
    ``FormInvalid`` naming the field when the body does not fit."""
    return declared_form(request, await json_object(request), form)


def declared_form(request: Request[Any, Any, Any], data: dict[str, Any], form: type[T]) -> T:
    """``data`` (the decoded body) as ``form``, which must be one of the route's declared body
    shapes; ``FormInvalid`` naming the field when it does not fit."""
    if form not in _declared(request).body:
        raise LookupError(f"{request.url.path}: {form.__name__} is not a declared body")
    return convert(data, form)


def declared_query(
    request: Request[Any, Any, Any], form: type[T], body: Mapping[str, Any] | None = None
) -> T:
    """The query string (plus ``body`` for PUT variants, see `query_form`) as ``form``, which
    must be the route's declared query struct."""
    if _declared(request).query is not form:
        raise LookupError(f"{request.url.path}: {form.__name__} is not the declared query")
    return query_form(request, form, body)


APP_ERRORS: Final = (400, 404, 429, 503)
"""What a Gizwits ``/app`` call can answer besides success: a refusal (400, naming the field
or the problem), an unknown path (404), throttling (429) and a database outage (503)."""
DEVICE_ERRORS: Final = (400, 401, 404, 429, 503)
"""`APP_ERRORS` plus 401 (9017 device not bound), for calls about a user's device."""
OPERATOR_ERRORS: Final = (400, 401, 403, 404, 503)
"""The operator API: a refusal, a missing or wrong token (401), the API disabled (403)."""


async def declared_fields(request: Request[Any, Any, Any], form: type[T]) -> T:
    """A form-encoded body (see `form_fields`) as ``form``, a struct of string fields, which
    must be the route's declared body: each required field is checked in the struct's order
    (``FormInvalid`` naming the first one absent or empty); other fields are ignored, as
    device firmware sends extras."""
    if form not in _declared(request).body:
        raise LookupError(f"{request.url.path}: {form.__name__} is not a declared body")
    fields = await form_fields(request)
    info = msgspec.inspect.type_info(form)
    assert isinstance(info, msgspec.inspect.StructType)
    values = {}
    for member in info.fields:
        if member.required:
            values[member.encode_name] = required_field(fields, member.encode_name)
        elif member.encode_name in fields:
            values[member.encode_name] = fields[member.encode_name]
    return msgspec.convert(values, form)
