"""Turning a domain rule's complaint into the client-facing form error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from iotcloud.domain.accounts import FieldInvalid
from iotcloud.errors import FormInvalid

T = TypeVar("T")


def checked(check: Callable[..., T], *args: Any) -> T:
    """``check(*args)``, with ``FieldInvalid`` raised as ``FormInvalid`` (9015) naming the
    field."""
    try:
        return check(*args)
    except FieldInvalid as exc:
        raise FormInvalid(str(exc)) from exc
