"""The OpenAPI 3.1 document of a running app, built from its route table and the `Operation`
each handler declares (`declare`), with the shapes' schemas from msgspec.

Litestar's own generator describes a handler from its signature; ours take the raw request and
parse it with the declared structs, so the document is built here from the declarations
instead. Routes under ``/console``, handlers with ``include_in_schema=False`` and WebSocket
routes are left out; an ``api``-role route without a declaration is an error, so a new route
cannot slip out of the document unnoticed.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from iotcloud import __version__
from iotcloud.api.openapi.declare import Operation, Shape, operation_of

__all__ = ["EXCLUDED_PREFIXES", "UndeclaredRoute", "build_document", "documented_handlers"]

REF: Final = "#/components/schemas/{name}"
EXCLUDED_PREFIXES: Final = ("/console",)
_PATH_TYPE = re.compile(r"\{(\w+):\w+\}")

DESCRIPTION: Final = """\
The HTTP API of this iotcloud server: the Gizwits-compatible app API (`/app/...`) and device
API (`/dev/...`), the Tencent IoT Explorer app API (`/api/exploreropen/...`, one path per tier;
the body's `Action` selects the operation), the operator API (`/admin/v1/...`), the broker
authentication hooks (`/broker/...`) and the probes (`/healthz`, `/readyz`, `/metrics`).

Errors come in each dialect's own shape: under `/app`, `/dev`, `/admin` and `/broker` the
Gizwits body `{error_code, error_message, detail_message}`; under `/api/exploreropen` the
Tencent envelope `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`, answered with
HTTP 200 as Tencent does (an unknown path, a wrong method and an oversized body keep their
HTTP status).

Not described here: the realtime WebSocket `/ws/app/v1` (Gizwits websocket protocol) and the
operator's web console under `/console` (HTML pages).
"""

GIZWITS_ERROR_TEXT: Final[Mapping[int, str]] = {
    400: "Refused; `error_code` says why (9015 form invalid names the field in `detail_message`)",
    401: "Not allowed: device not bound (9017), or a missing or wrong operator token",
    403: "Forbidden: the operator API is disabled, or the product needs encrypted registration",
    404: "Not found: no such device (9014), schedule (9030) or endpoint",
    405: "Method not allowed on this path",
    413: "Body larger than the route's limit",
    429: "Throttled (9041); `Retry-After` says when to retry",
    503: "The database does not answer; `Retry-After` says when to retry",
}


class UndeclaredRoute(RuntimeError):
    """An ``api``-role HTTP route has no `Operation` declared."""


def documented_handlers(app: Litestar) -> Iterator[tuple[str, str, HTTPRouteHandler]]:
    """``(path, method, handler)`` of every HTTP operation the document describes."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        if route.path.startswith(EXCLUDED_PREFIXES):
            continue
        path = _PATH_TYPE.sub(r"{\1}", route.path)
        for handler in route.route_handlers:
            if handler.include_in_schema is False:
                continue
            for method in sorted(handler.http_methods):
                yield path, method.lower(), handler


def build_document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s HTTP routes; raises `UndeclaredRoute`."""
    declared = []
    for path, method, handler in documented_handlers(app):
        operation = operation_of(handler)
        if operation is None:
            raise UndeclaredRoute(f"{method.upper()} {path} ({handler.handler_name})")
        declared.append((path, method, operation, handler))
    # one pass over every type, so that msgspec names each component once (two structs of the
    # same name in different modules get distinct names)
    builder = _Builder([shape for _, _, op, _ in declared for shape in _types_of(op)])
    for path, method, operation, handler in declared:
        builder.add(path, method, operation, handler)
    return builder.document()


def _types_of(op: Operation) -> Iterator[Any]:
    shapes = [*op.body, *op.responses.values(), op.query, *op.actions.values()]
    for shape in shapes:
        if shape is None or isinstance(shape, Mapping):
            continue
        if isinstance(shape, types.UnionType):
            yield from typing.get_args(shape)
        else:
            yield shape


class _Builder:
    def __init__(self, shapes: list[Any]) -> None:
        self.paths: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        unique = list(dict.fromkeys(shapes))
        schemas, self.components = msgspec.json.schema_components(unique, ref_template=REF)
        self.resolved = dict(zip(unique, schemas, strict=True))

    # -- shapes --------------------------------------------------------------------------

    def schema(self, shape: Shape) -> dict[str, Any]:
        if isinstance(shape, Mapping):
            return dict(shape)
        if isinstance(shape, types.UnionType):  # structs msgspec cannot tell apart untagged
            return {"oneOf": [self.schema(member) for member in typing.get_args(shape)]}
        return dict(self.resolved[shape])

    def component(self, form: type[Any]) -> dict[str, Any]:
        """The component schema of the struct ``form``."""
        name = self.resolved[form]["$ref"].rsplit("/", 1)[1]
        return self.components[name]  # type: ignore[no-any-return]

    # -- operations ----------------------------------------------------------------------

    def add(self, path: str, method: str, op: Operation, handler: HTTPRouteHandler) -> None:
        entry: dict[str, Any] = {
            "operationId": f"{method}_{handler.handler_name}",
            "summary": op.summary,
            "tags": [op.tag],
            "responses": {},
        }
        if op.description:
            entry["description"] = op.description
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", path)
        ]
        if op.query is not None and not (method != "get" and op.query in op.body):
            parameters.extend(self.query_parameters(op.query))
        parameters.extend(
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": text,
                "schema": {"type": "string"},
            }
            for name, text in op.headers.items()
        )
        if parameters:
            entry["parameters"] = parameters
        if op.security:
            entry["security"] = [{name: [] for name in op.security}]
        else:
            entry["security"] = []
        if op.actions:
            entry["requestBody"] = self.tencent_body(handler.handler_name, op)
        elif op.body and method != "get":
            shapes = [self.schema(shape) for shape in op.body]
            body = shapes[0] if len(shapes) == 1 else {"oneOf": shapes}
            entry["requestBody"] = {
                "required": op.body_required,
                "content": {op.body_media: {"schema": body}},
            }
        responses = entry["responses"]
        for status, shape in op.responses.items():
            responses[str(status)] = self.success(status, shape, op)
        errors = [*op.errors]
        if op.body and method != "get" and op.dialect != "tencent":
            errors.append(413)
        for status in errors:
            error = self.error(status, op)
            known = responses.get(str(status))
            if known is not None and "content" in known:  # e.g. an HTML page and a JSON error
                known["content"].update(error["content"])
                known.setdefault("headers", {}).update(error.get("headers", {}))
            else:
                responses[str(status)] = error
        self.paths.setdefault(path, {})[method] = entry

    def query_parameters(self, form: type[msgspec.Struct]) -> list[dict[str, Any]]:
        info = msgspec.inspect.type_info(form)
        assert isinstance(info, msgspec.inspect.StructType)
        component = self.component(form)
        props = component["properties"]
        required = set(component.get("required", ()))
        parameters = []
        for field in info.fields:
            prop = dict(props[field.encode_name])
            parameters.append(
                {
                    "name": field.encode_name,
                    "in": "query",
                    "required": field.encode_name in required,
                    "schema": prop,
                }
            )
        return parameters

    def success(self, status: int, shape: Shape | None, op: Operation) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": _SUCCESS.get(status, "Success")}
        if shape is None:
            return answer
        media = op.response_media.get(status, "application/json")
        schema = self.schema(shape)
        if op.dialect == "tencent":
            schema = {"oneOf": [schema, {"$ref": REF.format(name="TencentErrorEnvelope")}]}
            answer["description"] = (
                "The Action's answer in `Response`, or its failure in `Response.Error` "
                "(HTTP 200, as Tencent answers)"
            )
        answer["content"] = {media: {"schema": schema}}
        return answer

    def error(self, status: int, op: Operation) -> dict[str, Any]:
        name = "TencentErrorEnvelope" if op.dialect == "tencent" else "GizwitsError"
        answer: dict[str, Any] = {
            "description": GIZWITS_ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": REF.format(name=name)}}},
        }
        if status in (429, 503):
            answer["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "string"},
                }
            }
        return answer

    def tencent_body(self, endpoint: str, op: Operation) -> dict[str, Any]:
        """A ``oneOf`` of one schema per Action, told apart by ``Action``."""
        common_form = op.body[0] if op.body else None
        common: dict[str, Any] = {}
        common_required: list[str] = []
        if isinstance(common_form, type):
            common = self.component(common_form)["properties"]
            common_required = self.component(common_form).get("required", [])
        variants = []
        mapping = {}
        for action, form in sorted(op.actions.items()):
            own = self.component(form)
            name = f"{endpoint}.{action}"
            schema = {
                "type": "object",
                "title": action,
                "description": (form.__doc__ or "").strip(),
                "properties": {
                    "Action": {"const": action},
                    **common,
                    **own.get("properties", {}),
                },
                "required": ["Action", *common_required, *own.get("required", [])],
            }
            self.extra[name] = schema
            ref = REF.format(name=name)
            variants.append({"$ref": ref})
            mapping[action] = ref
        return {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": variants,
                        "discriminator": {"propertyName": "Action", "mapping": mapping},
                    }
                }
            },
        }

    # -- the whole -----------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        schemas = {**self.components, **self.extra, **ERROR_SCHEMAS}
        return {
            "openapi": "3.1.0",
            "info": {"title": "iotcloud", "version": __version__, "description": DESCRIPTION},
            "paths": dict(sorted(self.paths.items())),
            "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": SECURITY},
        }


_SUCCESS: Final[Mapping[int, str]] = {
    200: "Success",
    201: "Created",
    204: "Done; no content",
    503: "Not ready; the body names the dependency that is down",
}

SECURITY: Final[dict[str, Any]] = {
    "app": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Gizwits-Application-Id",
        "description": "The app id (`iotcloud app create`)",
    },
    "user": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Gizwits-User-token",
        "description": "A user token from `POST /app/login` or `POST /app/users`",
    },
    "app_token": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Gizwits-Application-Token",
        "description": "An app token from `POST /app/request_token`",
    },
    "app_auth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Gizwits-Application-Auth",
        "description": "MD5 of app id and app secret, for `POST /app/request_token`",
    },
    "operator": {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's IOTCLOUD_ADMIN_TOKEN",
    },
}

ERROR_SCHEMAS: Final[dict[str, Any]] = {
    "GizwitsError": {
        "type": "object",
        "title": "Gizwits error",
        "properties": {
            "error_code": {"type": "integer", "description": "The stable iotcloud code"},
            "error_message": {"type": "string"},
            "detail_message": {
                "type": ["string", "null"],
                "description": "What is wrong, naming the field",
            },
        },
        "required": ["error_code", "error_message", "detail_message"],
    },
    "TencentErrorEnvelope": {
        "type": "object",
        "title": "Tencent error",
        "properties": {
            "Response": {
                "type": "object",
                "properties": {
                    "Error": {
                        "type": "object",
                        "properties": {
                            "Code": {"type": "string"},
                            "Message": {"type": "string"},
                        },
                        "required": ["Code", "Message"],
                    },
                    "RequestId": {"type": "string"},
                },
                "required": ["Error", "RequestId"],
            }
        },
        "required": ["Response"],
    },
}
