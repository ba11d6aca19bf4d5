"""Decoding untrusted JSON within limits: one place that bounds nesting depth and size.

msgspec (like every recursive-descent parser) recurses once per nesting level, so a body of a
thousand ``[`` costs a kilobyte to send and ends in a ``RecursionError`` inside the parser.
`decode_json` checks the depth before the parser sees the text, and every HTTP body, Tencent
``Data`` parameter, WebSocket message and device JSON payload goes through it, so each of them
answers the same way: a `JsonRejected` whose message names the problem.

The depth check is built to cost nothing on ordinary input: a document with no more opening
brackets than the limit cannot be nested deeper, so it is decoded straight away. Only a document
with many brackets is scanned: strings are cut out first (a bracket inside a string is text,
not nesting), then the depth is the largest running sum of +1 per opening and -1 per closing
bracket, computed by C-level iteration (`bytes.translate`, `itertools.accumulate`).

The number of arrays and objects is bounded too (`MAX_JSON_CONTAINERS`): each costs an
allocation, and a 256 KiB body can hold over a hundred thousand of them, whose decoding (and
the garbage collections it sets off) would hold the event loop for a quarter of a second. It is
counted from the same scan, and the collector is paused while a document with many containers
is decoded (nothing it allocates is garbage until the decode returns).

A valid document is measured exactly. On malformed input the scan may count more than the
parser would reach (an unterminated string is not cut out), never less: up to the first syntax
error the two read the text alike, and the parser stops there. So nothing deeper than the limit
reaches the parser, and nothing the parser would accept within the limit is refused.
"""

from __future__ import annotations

import gc
import re
from itertools import accumulate
from typing import Any, Final

import msgspec

__all__ = [
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_DEPTH",
    "JsonMalformed",
    "JsonRejected",
    "JsonTooDeep",
    "JsonTooLarge",
    "JsonTooMany",
    "decode_json",
    "json_depth",
]

MAX_JSON_DEPTH: Final = 64
"""Arrays and objects nested more deeply than this are refused (``[]`` is one level)."""

MAX_JSON_CONTAINERS: Final = 10_000
"""Documents holding more arrays and objects than this are refused (a product definition with
hundreds of data points holds a few thousand)."""

_GC_PAUSE_CONTAINERS: Final = 1_000
"""From this many containers on, the decode runs with the garbage collector paused."""

_STRING_BYTES: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_STRING_TEXT: Final = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
# after translation an opening bracket is byte 1 and a closing one byte 255 (-1 below)
_TO_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = tuple(1 if b == 1 else -1 for b in range(256))

_decoder: Final = msgspec.json.Decoder()


class JsonRejected(ValueError):
    """Untrusted JSON that is not decoded; the message names the problem (without a field name,
    for the caller to prefix: ``"body: nested deeper than 64 levels"``)."""


class JsonMalformed(JsonRejected):
    """Not JSON at all (``malformed JSON (...)`` with the parser's reason)."""


class JsonTooDeep(JsonRejected):
    """Arrays or objects nested more deeply than the limit."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"nested deeper than {max_depth} levels")
        self.max_depth = max_depth


class JsonTooMany(JsonRejected):
    """More arrays and objects than the limit."""

    def __init__(self, max_containers: int) -> None:
        super().__init__(f"more than {max_containers} arrays and objects")
        self.max_containers = max_containers


class JsonTooLarge(JsonRejected):
    """More bytes than the limit."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


def decode_json(
    data: bytes | str,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int | None = None,
    max_containers: int = MAX_JSON_CONTAINERS,
) -> Any:
    """``data`` (UTF-8 bytes or text) decoded into Python objects by msgspec.

    Raises `JsonTooLarge` when ``data`` is longer than ``max_bytes`` (UTF-8 bytes), `JsonTooDeep`
    when it nests arrays/objects more than ``max_depth`` levels, `JsonTooMany` when it holds more
    than ``max_containers`` arrays and objects, `JsonMalformed` when it is not JSON (including
    text that cannot be UTF-8: lone surrogates). Never raises `RecursionError` for ``max_depth``
    up to a few hundred.
    """
    if max_bytes is not None and _size(data) > max_bytes:
        raise JsonTooLarge(max_bytes)
    openers = _openers(data)
    pause = False
    if openers > max_depth or openers > max_containers:
        steps = _steps(data)
        containers = steps.count(1)  # counted in C
        if containers > max_containers:
            # the depth is named if it shows within the first containers' worth of brackets;
            # walking all of a huge document's brackets is the cost being refused
            if _depth(steps[: 2 * max_containers]) > max_depth:
                raise JsonTooDeep(max_depth)
            raise JsonTooMany(max_containers)
        if _depth(steps) > max_depth:
            raise JsonTooDeep(max_depth)
        pause = containers >= _GC_PAUSE_CONTAINERS and gc.isenabled()
    elif openers >= _GC_PAUSE_CONTAINERS:
        pause = gc.isenabled()
    if pause:
        gc.disable()
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise JsonMalformed(f"malformed JSON ({exc})") from exc
    except UnicodeEncodeError as exc:
        raise JsonMalformed("malformed JSON (text that is not valid Unicode)") from exc
    finally:
        if pause:
            gc.enable()


def json_depth(data: bytes | str) -> int:
    """How deeply ``data`` nests arrays and objects (0 for a scalar, 1 for ``[]``), brackets
    inside strings not counted. For malformed input, at least the depth a parser reaches
    before it fails."""
    return _depth(_steps(data))


def _steps(data: bytes | str) -> bytes:
    """The brackets of ``data`` outside strings, in order: byte 1 for an opening one, 255 for
    a closing one."""
    if isinstance(data, str):
        stripped = _STRING_TEXT.sub("", data)
        # only the brackets matter; they are ASCII, so other characters can become anything
        raw = stripped.encode("ascii", "replace")
    else:
        raw = _STRING_BYTES.sub(b"", data)
    return raw.translate(_TO_STEPS, _NOT_BRACKETS)


def _depth(steps: bytes) -> int:
    return max(accumulate(map(_STEP.__getitem__, steps), initial=0))


def _openers(data: bytes | str) -> int:
    """Opening brackets anywhere, strings included: a bound on the depth, counted in C."""
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def _size(data: bytes | str) -> int:
    """Length in UTF-8 bytes (a lone surrogate counted as the three bytes it would take)."""
    if not isinstance(data, str) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))
