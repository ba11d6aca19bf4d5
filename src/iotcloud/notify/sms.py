"""SMS providers. The default appends JSON lines to ``<data dir>/outbox/sms.jsonl``."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import httpx

from iotcloud.errors import SmsSendFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmsMessage:
    phone: str
    code: str
    purpose: str
    sent_at: str  # ISO 8601 UTC


class SmsSender(Protocol):
    async def send(self, message: SmsMessage) -> None:
        """Deliver ``message`` or raise :class:`SmsSendFailed`."""
        ...


class OutboxSmsSender:
    """Writes each message as one JSON line; needs no outside service."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def send(self, message: SmsMessage) -> None:
        line = json.dumps(asdict(message), ensure_ascii=False) + "\n"
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as exc:
                log.error("cannot write SMS outbox %s: %s", self.path, exc)
                raise SmsSendFailed(f"SMS outbox not writable: {exc.strerror}") from exc

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)


class WebhookSmsSender:
    """POSTs each message as JSON to an operator's HTTP endpoint; any 2xx is success."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.client = client

    async def send(self, message: SmsMessage) -> None:
        try:
            response = await self.client.post(self.url, json=asdict(message), timeout=10.0)
        except httpx.HTTPError as exc:
            log.warning("SMS webhook %s unreachable: %s", self.url, exc)
            raise SmsSendFailed("SMS gateway unreachable") from exc
        if not response.is_success:
            log.warning("SMS webhook %s answered %s", self.url, response.status_code)
            raise SmsSendFailed(f"SMS gateway answered HTTP {response.status_code}")
