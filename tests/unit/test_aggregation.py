"""Aggregation buckets (UTC; weeks from Monday) and the arithmetic of ``agg_data``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from iotcloud.services.telemetry import (
    Aggregator,
    BucketUnit,
    aggregate_reports,
    bucket_end,
    bucket_start,
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "unit", "start", "end"),
    [
        (utc(2026, 3, 5, 12, 59, 59), BucketUnit.HOURS, utc(2026, 3, 5, 12), utc(2026, 3, 5, 13)),
        (utc(2026, 12, 31, 23, 30), BucketUnit.DAYS, utc(2026, 12, 31), utc(2027, 1, 1)),
        # 2027-01-01 is a Friday: its week began on Monday 2026-12-28
        (utc(2027, 1, 1, 8), BucketUnit.WEEKS, utc(2026, 12, 28), utc(2027, 1, 4)),
        (utc(2026, 3, 2), BucketUnit.WEEKS, utc(2026, 3, 2), utc(2026, 3, 9)),
        (utc(2026, 3, 1, 23, 59), BucketUnit.WEEKS, utc(2026, 2, 23), utc(2026, 3, 2)),
        (utc(2026, 12, 15), BucketUnit.MONTHS, utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2028, 2, 29, 23), BucketUnit.MONTHS, utc(2028, 2, 1), utc(2028, 3, 1)),
    ],
)
def test_buckets(instant: datetime, unit: BucketUnit, start: datetime, end: datetime) -> None:
    assert bucket_start(instant, unit) == start
    assert bucket_end(start, unit) == end


def test_sums_are_exact_and_keep_integers_integral() -> None:
    reports = [
        (utc(2026, 3, 5, 12, 0), (0.1, 1)),
        (utc(2026, 3, 5, 12, 10), (0.2, 2)),
        (utc(2026, 3, 5, 12, 20), (3, None)),
    ]
    [bucket] = aggregate_reports(reports, ["a", "b"], Aggregator.SUM, BucketUnit.HOURS)
    assert bucket.values == {"a": 3.3, "b": 3}
    assert isinstance(bucket.values["b"], int)
    [avg] = aggregate_reports(reports, ["a", "b"], Aggregator.AVG, BucketUnit.HOURS)
    assert avg.values == {"a": 1.1, "b": 1.5}


def test_non_numbers_count_nowhere_and_empty_buckets_are_left_out() -> None:
    reports = [
        (utc(2026, 3, 5, 10), (True, "x")),  # a bool is not a number here
        (utc(2026, 3, 5, 11), (None, None)),
        (utc(2026, 3, 5, 12), (5, None)),
        (utc(2026, 3, 5, 12, 30), (-7, None)),
    ]
    buckets = aggregate_reports(reports, ["a", "b"], Aggregator.MIN, BucketUnit.HOURS)
    assert [(b.start, b.values) for b in buckets] == [(utc(2026, 3, 5, 12), {"a": -7, "b": None})]
    [peak] = aggregate_reports(reports, ["a", "b"], Aggregator.MAX, BucketUnit.DAYS)
    assert peak.values == {"a": 5, "b": None}
