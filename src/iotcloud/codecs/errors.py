"""Exceptions raised by the Gizwits codecs.

Every error is a `CodecError`, itself a `ValueError`, so callers that translate bad input into a
protocol error can catch one class. Messages always name the problem and, where there is one,
the datapoint (attr) it concerns.
"""

from __future__ import annotations


class CodecError(ValueError):
    """Root of all codec errors: the bytes or values given do not fit the protocol."""


class FrameError(CodecError):
    """A Gizwits frame (`00 00 00 03 | LEN | FLAG | CMD | [SN] | P0`) is malformed.

    Raised for short input, a wrong protocol header, a bad LEN varint, a LEN that does not match
    the number of bytes that follow it, a missing SN on cmd 0x0093/0x0094, or out-of-range fields.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class P0Error(CodecError):
    """A P0 payload is malformed as a whole (empty, truncated, trailing bytes, unknown action)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DatapointError(CodecError):
    """A value does not fit the attr (datapoint) it is meant for.

    Examples: unknown attr name, a write to a read-only attr, a number outside `uint_spec`, an
    unknown enum label or index, binary data of the wrong length.
    """

    def __init__(self, attr_name: str, reason: str) -> None:
        super().__init__(f"attr {attr_name!r}: {reason}")
        self.attr_name = attr_name
        self.reason = reason


class ProductDefinitionError(CodecError):
    """A Gizwits datapoint JSON is invalid; `attr_name` is None for product-level problems."""

    def __init__(self, attr_name: str | None, reason: str) -> None:
        message = reason if attr_name is None else f"attr {attr_name!r}: {reason}"
        super().__init__(message)
        self.attr_name = attr_name
        self.reason = reason
