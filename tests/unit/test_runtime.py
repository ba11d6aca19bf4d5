"""The serving process's garbage-collector settings (`iotcloud.runtime`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from iotcloud.runtime import (
    GEN0_THRESHOLD,
    GEN1_THRESHOLD,
    GEN2_THRESHOLD,
    GcPauses,
    pauses,
    tune_gc,
)


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The test process's collector as it was, whatever a test changes."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        pauses.uninstall()


def test_tuning_freezes_what_start_up_made_and_sets_the_serving_thresholds(
    restored_gc: None,
) -> None:
    built_at_start_up = [{"n": n} for n in range(1000)]
    assert gc.get_freeze_count() == 0
    measured = tune_gc()
    assert gc.get_freeze_count() > len(built_at_start_up)  # never scanned again
    assert gc.get_threshold() == (GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    assert measured is pauses
    assert measured.installed
    callbacks = len(gc.callbacks)
    tune_gc()
    assert len(gc.callbacks) == callbacks  # installed once


def test_every_collection_is_counted_with_its_pause_per_generation() -> None:
    measured = GcPauses()
    measured.install()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        measured.uninstall()
    gc.collect(2)  # not counted once uninstalled
    snapshot = measured.snapshot()
    assert snapshot["gen0"]["collections"] >= 1
    assert snapshot["gen2"]["collections"] == 2
    assert snapshot["gen2"]["seconds"] > 0
    assert 0 < snapshot["gen2"]["longest_ms"] <= snapshot["gen2"]["seconds"] * 1000
