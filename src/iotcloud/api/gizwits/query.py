"""Query-string forms: parameters read strictly into msgspec structs, failures naming them.

A parameter given twice, an unknown parameter, a missing required one, an integer that is not
plain decimal digits, a number out of range and a word outside the allowed set are all refused
with ``FormInvalid`` (9015) whose detail names the parameter. An empty value counts as absent
(``attr=`` is what a form with an empty field sends).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import urlencode

import msgspec
from litestar import Request

from iotcloud.api.gizwits.wire import describe_validation_error
from iotcloud.errors import FormInvalid

T = TypeVar("T")

SKIP_MAX: Final = 2**31 - 1
"""The largest ``skip`` of a page (the databases' offsets are bounded)."""
Skip = Annotated[int, msgspec.Meta(ge=0, le=SKIP_MAX)]

_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_Shape = tuple[str, bool, tuple[str, ...]]
_SHAPES: dict[type[Any], tuple[_Shape, ...]] = {}


def query_form(
    request: Request[Any, Any, Any], form: type[T], body: Mapping[str, Any] | None = None
) -> T:
    """The query string (plus ``body``, the fields of a JSON body, for PUT variants) as
    ``form``. A field may come from one of the two only."""
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise FormInvalid(f"{name.replace(chr(0), '')}: must not contain a NUL character")
        if name in seen:
            raise FormInvalid(f"{name}: given more than once")
        seen.add(name)
        if value.strip():
            params[name] = value.strip()
    for name, raw in (body or {}).items():
        if name in params:
            raise FormInvalid(f"{name}: given in both the query string and the body")
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            params[name] = ",".join(raw)
        elif isinstance(raw, str | int) and not isinstance(raw, bool):
            params[name] = str(raw)
        else:
            raise FormInvalid(f"{name}: must be a string or an integer")
    _check_words(params, form)
    try:
        return msgspec.convert(params, form, strict=False)
    except msgspec.ValidationError as exc:
        raise FormInvalid(describe_validation_error(str(exc))) from exc


def _check_words(params: dict[str, str], form: type[Any]) -> None:
    """Integers must be decimal digits (msgspec alone would take ``1e3``); enum-like words are
    matched case-insensitively and refused with the allowed set named."""
    for name, integral, words in _shapes(form):
        value = params.get(name)
        if value is None:
            continue
        if integral and not _INTEGER.fullmatch(value):
            raise FormInvalid(f"{name}: must be an integer, not {value!r}")
        if words:
            lowered = value.lower()
            if lowered not in words:
                raise FormInvalid(f"{name}: must be one of {', '.join(words)}, not {value!r}")
            params[name] = lowered


def _shapes(form: type[Any]) -> tuple[_Shape, ...]:
    """``(parameter, is an integer, allowed words)`` of each field of ``form``."""
    known = _SHAPES.get(form)
    if known is not None:
        return known
    info = msgspec.inspect.type_info(form)
    assert isinstance(info, msgspec.inspect.StructType)
    shapes = []
    for field in info.fields:
        kinds = (
            field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        )
        integral = any(isinstance(kind, msgspec.inspect.IntType) for kind in kinds)
        words: list[str] = []
        for kind in kinds:
            if isinstance(kind, msgspec.inspect.EnumType):
                words.extend(str(member.value) for member in kind.cls)
            elif isinstance(kind, msgspec.inspect.LiteralType):
                words.extend(str(value) for value in kind.values)
        shapes.append((field.encode_name, integral, tuple(words)))
    _SHAPES[form] = tuple(shapes)
    return _SHAPES[form]


def page_links(
    request: Request[Any, Any, Any], total: int, limit: int, skip: int
) -> tuple[str | None, str | None]:
    """``(previous, next)``: this request's path and query with ``skip`` moved one page back
    and forth, or None where there is no such page."""
    params = {k: v for k, v in request.query_params.items() if k not in ("skip", "limit")}

    def link(at: int) -> str:
        return f"{request.url.path}?{urlencode({**params, 'limit': limit, 'skip': at})}"

    previous = link(max(skip - limit, 0)) if skip > 0 else None
    following = link(skip + limit) if skip + limit < total else None
    return previous, following
