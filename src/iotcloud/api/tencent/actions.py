"""What an Action handler of the Tencent API receives and returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from iotcloud.services.accounts import CurrentUser
from iotcloud.services.registry import Services

__all__ = ["Action", "Call"]


@dataclass(frozen=True)
class Call:
    """One authenticated Action call: the caller, and the body's parameters (the common ones
    included; parameters an Action does not know are ignored, since Tencent's apps add their
    own, such as ``Platform``, ``Agent`` and ``lang``)."""

    services: Services
    user: CurrentUser
    params: Mapping[str, Any]


Action = Callable[[Call], Awaitable[Mapping[str, Any]]]
"""An Action handler: the content of ``Response`` on success (``RequestId`` is added by the
endpoint); raises an iotcloud error (rendered through ``wire.TENCENT_CODES``) on failure."""
