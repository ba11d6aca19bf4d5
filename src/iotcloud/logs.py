"""Log records as JSON lines (``IOTCLOUD_LOG_FORMAT=json``), for log collectors.

One object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message`` (the formatted message), ``process`` (the process id, which tells the processes of
one host apart), and, when the record carries them, ``exception`` (the formatted traceback) and
``stack``. Anything passed as ``extra=`` that is JSON-serialisable is kept under its own name.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in entry or key.startswith("_"):
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                value = repr(value)
            entry[key] = value
        return json.dumps(entry, ensure_ascii=False)
