"""Untrusted JSON within limits: depth and size refused by name, everything else decoded as
msgspec decodes it, never a RecursionError."""

from __future__ import annotations

import gc
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotcloud.codecs.jsonlimits import (
    MAX_JSON_DEPTH,
    JsonMalformed,
    JsonRejected,
    JsonTooDeep,
    JsonTooLarge,
    JsonTooMany,
    decode_json,
    json_depth,
)

# strings full of what a naive bracket counter would trip on
TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\/ab\n\t\u00e9\u4e2d\U0001f600'), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TRICKY_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY_TEXT, inner, max_size=4),
    max_leaves=30,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def nested(depth: int, kind: str = "array") -> bytes:
    """``depth`` levels of arrays (``[[1]]``) or objects (``{"a":{"a":1}}``) around a number."""
    if kind == "array":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def encodings(value: Any) -> list[bytes | str]:
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    pretty = json.dumps(value, ensure_ascii=True, indent=2)
    return [compact.encode(), compact, pretty.encode(), pretty]


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_a_document_within_the_limit_decodes_as_msgspec_decodes_it(value: Any) -> None:
    depth = depth_of(value)
    for document in encodings(value):
        assert json_depth(document) == depth
        assert decode_json(document, max_depth=depth) == msgspec.json.decode(document)


@settings(max_examples=300, deadline=None)
@given(VALUES.filter(lambda value: depth_of(value) > 0))
def test_one_level_more_than_the_limit_is_refused(value: Any) -> None:
    depth = depth_of(value)
    for document in encodings(value):
        with pytest.raises(JsonTooDeep, match=f"^nested deeper than {depth - 1} levels$"):
            decode_json(document, max_depth=depth - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(TRICKY_TEXT, min_size=1, max_size=40))
def test_brackets_inside_strings_do_not_count(texts: list[str]) -> None:
    document = json.dumps(["[[[[{{{{" + text + "]]]]}}}}" for text in texts]).encode()

    assert json_depth(document) == 1
    assert decode_json(document, max_depth=1) == json.loads(document)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_input_decodes_or_is_rejected_by_name(data: bytes | str) -> None:
    try:
        expected: Any = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeEncodeError):
        expected = JsonMalformed
    try:
        outcome: Any = decode_json(data, max_depth=3)
    except JsonTooDeep:
        assert json_depth(data) > 3
        return
    except JsonMalformed:
        outcome = JsonMalformed
    assert outcome == expected


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("text", [False, True])
def test_the_default_limit_is_64_levels(kind: str, text: bool) -> None:
    at_limit, beyond = nested(MAX_JSON_DEPTH, kind), nested(MAX_JSON_DEPTH + 1, kind)
    if text:
        assert decode_json(at_limit.decode()) == msgspec.json.decode(at_limit)
        with pytest.raises(JsonTooDeep, match=r"^nested deeper than 64 levels$"):
            decode_json(beyond.decode())
    else:
        assert decode_json(at_limit) == msgspec.json.decode(at_limit)
        with pytest.raises(JsonTooDeep, match=r"^nested deeper than 64 levels$"):
            decode_json(beyond)


@pytest.mark.parametrize(
    "document",
    [
        b"[" * 1000,
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"[" * 1000 + b"]" * 1000,
        b'["' + b"[" * 70 + b'"' + b"[" * 70,  # brackets after a string do count
        b"[" * 70 + b'"' + b"[" * 10_000,  # an unterminated string hides nothing
    ],
)
def test_deep_documents_are_refused_without_recursing(document: bytes) -> None:
    with pytest.raises(JsonTooDeep):
        decode_json(document)
    with pytest.raises(JsonTooDeep):
        decode_json(document.decode())


def test_escaped_quotes_do_not_end_a_string() -> None:
    document = b'["\\"' + b"[" * 100 + b'\\\\", "\\\\\\"' + b"{" * 100 + b'"]'

    assert json_depth(document) == 1
    assert decode_json(document) == ['"' + "[" * 100 + "\\", '\\"' + "{" * 100]


def test_a_long_shallow_document_is_decoded() -> None:
    document = json.dumps([{"a": [1, {"b": "x[y"}]}] * 3_000).encode()  # 9,001 containers

    assert decode_json(document) == json.loads(document)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "Input data was truncated"),
        (b"[1,", "Input data was truncated"),
        (b"{'a': 1}", "object keys must be strings"),
        (b"\xff", "invalid character"),
        ("[1]x", "trailing characters"),
    ],
)
def test_malformed_json_is_named_with_the_parsers_reason(data: bytes | str, reason: str) -> None:
    with pytest.raises(JsonMalformed, match=r"^malformed JSON \(.*\)$") as caught:
        decode_json(data)
    assert reason.lower() in str(caught.value).lower()


def test_text_with_a_lone_surrogate_is_malformed_not_a_crash() -> None:
    with pytest.raises(JsonMalformed, match="not valid Unicode"):
        decode_json('"\ud800"')


def test_size_is_counted_in_utf8_bytes() -> None:
    assert decode_json('"\u00e9\u00e9\u00e9\u00e9"', max_bytes=10) == "\u00e9\u00e9\u00e9\u00e9"
    with pytest.raises(JsonTooLarge, match=r"^larger than 9 bytes$"):
        decode_json('"\u00e9\u00e9\u00e9\u00e9"', max_bytes=9)
    with pytest.raises(JsonTooLarge, match=r"^larger than 3 bytes$"):
        decode_json(b"[1, 2]", max_bytes=3)


def test_every_refusal_is_a_value_error_of_one_class() -> None:
    for cls in (JsonMalformed, JsonTooDeep, JsonTooLarge):
        assert issubclass(cls, JsonRejected)
    assert issubclass(JsonRejected, ValueError)


def test_scalars_have_depth_zero_and_stray_closers_do_not_go_negative() -> None:
    assert json_depth(b"123") == 0
    assert json_depth(b'"[["') == 0
    assert json_depth(b"]]]") == 0
    assert json_depth("[{}]") == 2


def test_more_containers_than_the_limit_are_refused_and_brackets_in_strings_do_not_count() -> None:
    shallow = "[" + ",".join(["[]"] * 10_000) + "]"  # 10,001 arrays, two levels deep
    with pytest.raises(JsonTooMany, match="more than 10000 arrays and objects"):
        decode_json(shallow)
    assert len(decode_json(shallow, max_containers=10_001)) == 10_000
    quoted = json.dumps(["[" * 20_000, "{" * 20_000])  # text, not containers
    assert decode_json(quoted.encode()) == ["[" * 20_000, "{" * 20_000]


def test_the_collector_is_paused_only_while_a_large_document_is_decoded() -> None:
    assert gc.isenabled()
    assert len(decode_json("[" + ",".join(["{}"] * 5_000) + "]")) == 5_000
    assert gc.isenabled()
    with pytest.raises(JsonMalformed):
        decode_json("[" + ",".join(["{}"] * 5_000))  # unterminated: refused by the parser
    assert gc.isenabled()
