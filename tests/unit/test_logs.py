from __future__ import annotations

import json
import logging

from iotcloud.logs import JsonLogFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("iotcloud.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_json_object_on_one_line() -> None:
    line = JsonLogFormatter().format(record('device %s said "%s"\nthen left', "d1", "hi"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "iotcloud.test"
    assert entry["message"] == 'device d1 said "hi"\nthen left'
    assert entry["time"].endswith("+00:00")
    assert isinstance(entry["process"], int)


def test_exceptions_and_extras_are_kept() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        import sys

        failed = logging.LogRecord(
            "iotcloud.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    failed.__dict__.update(did="d1", opaque=object())
    entry = json.loads(JsonLogFormatter().format(failed))
    assert "ValueError: broken" in entry["exception"]
    assert entry["did"] == "d1"
    assert entry["opaque"].startswith("<object object")
