"""Uncaught exceptions are logged at most once a minute per distinct error, none uncounted."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from iotcloud.api.errors import CrashLog, where


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def raised(kind: type[Exception], place: int) -> Exception:
    """An exception of ``kind`` raised at one of two places (two distinct lines)."""
    try:
        if place == 0:
            raise kind("at the first place")
        raise kind("at the second place")
    except Exception as exc:
        return exc


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What is logged to ``test.crashes``."""
    logger = logging.getLogger("test.crashes")
    handler = Records()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_the_same_error_is_logged_once_a_minute_with_the_count_left_out(
    records: list[logging.LogRecord],
) -> None:
    clock = FakeTime()
    crashes = CrashLog(logging.getLogger("test.crashes"), clock=clock)

    assert crashes.report("POST /app/users", raised(RecursionError, 0))
    for _ in range(500):
        clock.now += 0.1
        assert not crashes.report("POST /app/users", raised(RecursionError, 0))
    assert len(records) == 1
    first = records[0]
    assert first.exc_info is not None  # the traceback, the first time
    assert first.getMessage().startswith("POST /app/users crashed: RecursionError at ")
    assert first.getMessage().endswith(where(raised(RecursionError, 0)))
    assert "\n" not in first.getMessage()

    clock.now = 1060.0  # 60 s after the first record
    assert crashes.report("POST /app/login", raised(RecursionError, 0))
    assert len(records) == 2
    assert records[1].getMessage().endswith("(500 more since it was last logged)")
    assert records[1].exc_info is not None


def test_distinct_errors_are_logged_each_on_their_own(records: list[logging.LogRecord]) -> None:
    crashes = CrashLog(logging.getLogger("test.crashes"), clock=FakeTime())

    assert crashes.report("a", raised(RecursionError, 0))
    assert crashes.report("a", raised(RecursionError, 1))  # same type, another line
    assert crashes.report("a", raised(KeyError, 0))  # same line, another type
    assert not crashes.report("b", raised(KeyError, 0))  # the route does not matter
    assert len(records) == 3


def test_memory_is_bounded_by_the_least_recently_seen(records: list[logging.LogRecord]) -> None:
    crashes = CrashLog(logging.getLogger("test.crashes"), max_errors=2, clock=FakeTime())
    kinds = [RecursionError, KeyError, TypeError]
    for kind in kinds:
        assert crashes.report("a", raised(kind, 0))
    assert crashes.report("a", raised(RecursionError, 0))  # forgotten: logged again
    assert not crashes.report("a", raised(TypeError, 0))  # remembered
    assert len(records) == 4


def test_where_names_the_innermost_frame() -> None:
    def inner() -> None:
        raise ValueError("deep")

    with pytest.raises(ValueError, match="deep") as caught:
        inner()
    assert where(caught.value) == f"test_crash_log.py:{inner.__code__.co_firstlineno + 1}"
    assert where(ValueError("never raised")) == "?"
