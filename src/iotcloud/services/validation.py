"""Turning a domain rule's complaint into the client-facing form error."""

from __future__ import annotations

from collections.abc import Callable

from iotcloud.domain.accounts import FieldInvalid
from iotcloud.errors import FormInvalid


def checked(check: Callable[[str], str], value: str) -> str:
    """``check(value)``, with ``FieldInvalid`` raised as ``FormInvalid`` (9015) naming the field."""
    try:
        return check(value)
    except FieldInvalid as exc:
        raise FormInvalid(str(exc)) from exc
