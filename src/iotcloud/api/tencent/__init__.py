"""The Tencent IoT Explorer app API under ``/api/exploreropen``: Action dispatch and the
``Response`` envelope."""

from iotcloud.api.tencent.errors import with_tencent_errors
from iotcloud.api.tencent.tokenapi import ROUTER

__all__ = ["ROUTER", "with_tencent_errors"]
