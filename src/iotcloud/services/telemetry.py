"""Reading device state: the latest values a device reported."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotcloud.errors import DeviceNotFound
from iotcloud.storage.database import Database
from iotcloud.storage.devices import DeviceRepository
from iotcloud.storage.telemetry import TelemetryRepository


@dataclass(frozen=True)
class LatestState:
    did: str
    updated_at: datetime | None
    attrs: dict[str, Any]


class TelemetryService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def latest(self, did: str) -> LatestState:
        """The merged latest values of ``did`` (empty before its first report); 9014 if unknown."""
        async with self.db.session() as session:
            device = await DeviceRepository(session).by_did(did)
            if device is None:
                raise DeviceNotFound(f"no device with did {did}")
            row = await TelemetryRepository(session).latest(device.id)
        if row is None:
            return LatestState(did=did, updated_at=None, attrs={})
        return LatestState(did=did, updated_at=row.updated_at, attrs=dict(row.attrs))
