"""How the serving process's garbage collector runs: frozen after start-up, with thresholds for a
server's heap, and its pauses measured.

A server keeps a large heap for its whole life - modules, classes and functions, the ORM's
mappers and compiled statements, parsed product codecs - while under load it allocates
short-lived objects very fast: a 10,000-command minute makes futures, frames and rows by the
hundred thousand. CPython's cyclic collector runs whenever container allocations outnumber
deallocations by a threshold, and a collection stops the event loop while it walks its
generation: a full (generation 2) one walks every tracked object, which is tens of milliseconds
with a server's heap, and every command, acknowledgement and request in flight waits it out.
Reference counting, not the collector, frees almost all of those short-lived objects; the
collector only has to find cycles.

`tune_gc` therefore, once the application is built:

* moves everything alive into the permanent generation (`gc.freeze`), which no collection
  scans: what start-up made (most of the heap) lives as long as the process anyway;
* raises the generation-0 threshold from 700 to `GEN0_THRESHOLD` allocations, so a burst's
  objects are mostly freed by reference counting before a collection looks at them and fewer
  of them survive into older generations, and lets older generations be collected less often.

`GcPauses` measures the result through `gc.callbacks` (two clock reads per collection) and logs
a collection that stopped the process for longer than `LONG_PAUSE_SECONDS`.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

GEN0_THRESHOLD: Final = 50_000
"""Container allocations (net of deallocations) between two generation-0 collections."""
GEN1_THRESHOLD: Final = 20
"""Generation-0 collections between two generation-1 collections."""
GEN2_THRESHOLD: Final = 20
"""Generation-1 collections between two full collections (CPython also waits until a quarter
of the long-lived objects are new)."""
LONG_PAUSE_SECONDS: Final = 0.1


@dataclass
class GenerationPauses:
    """Collections of one generation: how many, their total and longest pause in seconds."""

    collections: int = 0
    seconds: float = 0.0
    longest: float = 0.0


@dataclass
class GcPauses:
    """Every collection's pause, per generation, since `install` (see the module docstring)."""

    generations: list[GenerationPauses] = field(
        default_factory=lambda: [GenerationPauses() for _ in range(3)]
    )
    _started: float = 0.0

    @property
    def installed(self) -> bool:
        return self._callback in gc.callbacks

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def snapshot(self) -> dict[str, Any]:
        """``{"gen0": {"collections", "seconds", "longest_ms"}, ...}``: JSON-ready."""
        return {
            f"gen{index}": {
                "collections": each.collections,
                "seconds": round(each.seconds, 6),
                "longest_ms": round(each.longest * 1000, 3),
            }
            for index, each in enumerate(self.generations)
        }

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        paused = time.perf_counter() - self._started
        each = self.generations[info["generation"]]
        each.collections += 1
        each.seconds += paused
        if paused > each.longest:
            each.longest = paused
        if paused > LONG_PAUSE_SECONDS:
            log.warning(
                "garbage collection of generation %d paused the process for %.0f ms "
                "(%d objects collected)",
                info["generation"],
                paused * 1000,
                info.get("collected", 0),
            )


pauses = GcPauses()
"""This process's collections, once `tune_gc` installed the measurement."""


def tune_gc() -> GcPauses:
    """Freeze the heap built so far and set the serving thresholds (see the module
    docstring); returns the process's pause measurement. Call once start-up has built the
    application, before serving. Idempotent."""
    gc.collect()  # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    pauses.install()
    log.debug("froze %d objects; gc thresholds %s", gc.get_freeze_count(), gc.get_threshold())
    return pauses
