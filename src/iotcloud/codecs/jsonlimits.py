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

A valid document is measured exactly. On malformed input the scan may count more than the
parser would reach (an unterminated string is not cut out), never less: up to the first syntax
error the two read the text alike, and the parser stops there. So nothing deeper than the limit
reaches the parser, and nothing the parser would accept within the limit is refused.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, Final

import msgspec

__all__ = [
    "MAX_JSON_DEPTH",
    "JsonMalformed",
    "JsonRejected",
    "JsonTooDeep",
    "JsonTooLarge",
    "decode_json",
    "json_depth",
]

MAX_JSON_DEPTH: Final = 64
"""Arrays and objects nested more deeply than this are refused (``[]`` is one level)."""

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


class JsonTooLarge(JsonRejected):
    """More bytes than the limit."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


def decode_json(
    data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, max_bytes: int | None = None
) -> Any:
    """``data`` (UTF-8 bytes or text) decoded into Python objects by msgspec.

    Raises `JsonTooLarge` when ``data`` is longer than ``max_bytes`` (UTF-8 bytes), `JsonTooDeep`
    when it nests arrays/objects more than ``max_depth`` levels, `JsonMalformed` when it is not
    JSON (including text that cannot be UTF-8: lone surrogates). Never raises `RecursionError`
    for ``max_depth`` up to a few hundred.
    """
    if max_bytes is not None and _size(data) > max_bytes:
        raise JsonTooLarge(max_bytes)
    if _openers(data) > max_depth and json_depth(data) > max_depth:
        raise JsonTooDeep(max_depth)
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise JsonMalformed(f"malformed JSON ({exc})") from exc
    except UnicodeEncodeError as exc:
        raise JsonMalformed("malformed JSON (text that is not valid Unicode)") from exc


def json_depth(data: bytes | str) -> int:
    """How deeply ``data`` nests arrays and objects (0 for a scalar, 1 for ``[]``), brackets
    inside strings not counted. For malformed input, at least the depth a parser reaches
    before it fails."""
    if isinstance(data, str):
        stripped = _STRING_TEXT.sub("", data)
        # only the brackets matter; they are ASCII, so other characters can become anything
        raw = stripped.encode("ascii", "replace")
    else:
        raw = _STRING_BYTES.sub(b"", data)
    steps = raw.translate(_TO_STEPS, _NOT_BRACKETS)
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
