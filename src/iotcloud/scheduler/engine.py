"""The scheduler engine: wakes when the nearest schedule or retry is due, claims it, fires it
through the control service and records every attempt.

One engine runs per ``iotcloud`` process with the scheduler enabled; any number of them may share
a database (see `iotcloud.scheduler.store` for how claims stay exclusive). Rules:

* **Wake-up.** The loop sleeps until the nearest ``next_due_at`` of a schedule or
  ``next_attempt_at`` of a run, at most ``max_sleep`` (to notice what other processes changed),
  and at once when this process creates or changes a schedule (`SchedulerEngine.wake`) or an
  attempt finishes.
* **Firing.** A claimed occurrence becomes a run; each of its tasks is encoded at fire time
  (attrs through `ControlService.encode_attrs`, so the product's current data points and the
  device's latest state apply) and sent as a 0x0093 whose 0x0094 is awaited up to
  ``ack_timeout``. A task succeeds only when the device acknowledged it. It also fails, without
  anything being sent, when the schedule's owner is no longer bound to the device or the device
  is disabled or unknown.
* **Retries** are durable: a failed attempt sets the run's next attempt ``retry_interval``
  later in the database, so retries survive restarts and any engine may make them.
* **Missed occurrences and abandoned runs**: see `iotcloud.scheduler.policy` and
  `ScheduleStore.claim_due`.
* **Capacity.** At most ``concurrency`` attempts are in flight per engine; claims take no more
  than there is room for, so several engines share a burst instead of one hoarding it.
* **Stopping** (`__aexit__`): no new claims; attempts in flight get ``ack_timeout`` plus a few
  seconds to finish and record their result; any still running then are cancelled and, like
  those of a crashed process, handled by the next engine once their lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from iotcloud.domain.clock import Clock
from iotcloud.errors import IotCloudError
from iotcloud.gateway.service import SendResult
from iotcloud.scheduler.policy import Task
from iotcloud.scheduler.store import AttemptResult, ClaimedAttempt, ClaimReport, ScheduleStore
from iotcloud.storage.database import Database

if TYPE_CHECKING:
    from iotcloud.config import Settings
    from iotcloud.services.control import ControlService

log = logging.getLogger(__name__)

CLAIM_BATCH: Final = 100
RESULT_BATCH: Final = 500  # attempt results written per transaction, at most
"""Most schedules (and, separately, runs) one claim transaction takes."""
ERROR_BACKOFF_SECONDS: Final = 2.0
CONTENDED_BACKOFF_SECONDS: Final = 0.05
PURGE_INTERVAL_SECONDS: Final = 3600.0
DRAIN_MARGIN_SECONDS: Final = 5.0


@dataclass(frozen=True)
class EngineConfig:
    """The engine's knobs (``IOTCLOUD_SCHEDULER_*``), all durations in seconds."""

    grace_seconds: float = 900.0
    lease_seconds: float = 60.0
    retry_interval_seconds: float = 60.0
    ack_timeout_seconds: float = 10.0
    max_sleep_seconds: float = 10.0
    concurrency: int = 256
    run_retention_days: int = 90

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            grace_seconds=settings.scheduler_grace_seconds,
            lease_seconds=settings.scheduler_lease_seconds,
            retry_interval_seconds=settings.scheduler_retry_interval_seconds,
            ack_timeout_seconds=settings.scheduler_ack_timeout_seconds,
            max_sleep_seconds=settings.scheduler_max_sleep_seconds,
            concurrency=settings.scheduler_concurrency,
            run_retention_days=settings.scheduler_run_retention_days,
        )

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.grace_seconds)

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)

    @property
    def retry_interval(self) -> timedelta:
        return timedelta(seconds=self.retry_interval_seconds)


@dataclass
class TickReport:
    """What `SchedulerEngine.run_due` did: runs fired (first attempts), retries made (later
    attempts, including resumed ones), runs recorded missed, runs finished without an attempt
    (given up, abandoned past their budget), schedules switched off after their last
    occurrence, and how the attempts ended."""

    fired: int = 0
    retried: int = 0
    missed: int = 0
    given_up: int = 0
    exhausted: int = 0
    succeeded: int = 0
    failed: int = 0
    will_retry: int = 0
    lost: int = 0

    def count_claim(self, report: ClaimReport) -> None:
        for attempt in report.attempts:
            if len(attempt.attempts) == 1:
                self.fired += 1
            else:
                self.retried += 1
        self.missed += report.missed
        self.given_up += report.finished
        self.exhausted += report.exhausted

    def count_result(self, result: AttemptResult) -> None:
        if not result.stored:
            self.lost += 1
        elif result.status == "succeed":
            self.succeeded += 1
        elif result.status == "failed":
            self.failed += 1
        else:
            self.will_retry += 1


AttemptListener = Callable[[ClaimedAttempt, AttemptResult], None]
"""Hears every attempt this engine recorded (metrics, benchmarks); must not block."""


@dataclass(frozen=True)
class _Owner:
    """The schedule's owner as `BindingService` takes a user."""

    app_id: int
    user_id: int


class SchedulerEngine:
    """Fires due schedules (see the module docstring). An async context manager; `run` is its
    loop, to be run as a background task while the engine is entered. `run_due` is the same
    work stepped explicitly (tests, with a frozen clock)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        control: ControlService,
        config: EngineConfig | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        self.store = ScheduleStore(db)
        self.clock = clock
        self.control = control
        self.config = config or EngineConfig()
        self.owner = owner or _default_owner()
        self.totals = TickReport()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._closing = False
        self._next_purge = 0.0
        self._listeners: list[AttemptListener] = []
        self._results = _ResultWriter(self.store, clock, self.config.retry_interval)

    def add_listener(self, listener: AttemptListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: AttemptListener) -> None:
        with suppress(ValueError):
            self._listeners.remove(listener)

    def wake(self) -> None:
        """Look at the schedules again now (one was created or changed)."""
        self._wake.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        try:
            await self._drain()
        finally:
            await self._results.close()

    async def _drain(self) -> None:
        if not self._inflight:
            return
        _, pending = await asyncio.wait(
            set(self._inflight), timeout=self.config.ack_timeout_seconds + DRAIN_MARGIN_SECONDS
        )
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "scheduler stopped with %d attempts in flight; they are resumed or failed "
                "after their lease expires",
                len(pending),
            )
            await asyncio.gather(*pending, return_exceptions=True)

    # -- stepping -------------------------------------------------------------------------------

    async def run_due(self, now: datetime | None = None) -> TickReport:
        """Claim everything due at ``now`` (default: the clock's now) and execute it.

        Returns when a claim finds nothing left and every attempt it started has recorded its
        result. Retries set up by those attempts are due later (``retry_interval``) and are
        made by a later call.
        """
        report = TickReport()
        while True:
            at = now or self.clock.now()
            claimed = await self._claim(at, CLAIM_BATCH)
            report.count_claim(claimed)
            async with asyncio.TaskGroup() as group:
                running = [group.create_task(self._execute(a)) for a in claimed.attempts]
            for done in running:
                report.count_result(done.result())
            if not (claimed.more or claimed.schedules or claimed.due_runs):
                return report  # a claim that selected nothing: nothing is left at ``at``

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Fire schedules until cancelled. Failures (a database outage) are logged once, and
        the recovery once; the loop keeps trying."""
        failing = False
        while not self._closing:
            self._wake.clear()
            try:
                delay = await self._cycle()
            except Exception:
                if not failing:
                    log.exception("scheduler cycle failed; retrying")
                    failing = True
                delay = ERROR_BACKOFF_SECONDS
            else:
                if failing:
                    log.info("scheduler recovered")
                    failing = False
            if delay > 0:
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    async def _cycle(self) -> float:
        """Claim what is due and there is room for; return how long to sleep."""
        free = self.config.concurrency - len(self._inflight)
        if free <= 0:
            return self.config.max_sleep_seconds  # a finishing attempt wakes the loop
        limit = min(free, CLAIM_BATCH)
        claimed = await self._claim(self.clock.now(), limit)
        self.totals.count_claim(claimed)
        for attempt in claimed.attempts:
            task = asyncio.create_task(self._spawned(attempt), name=f"schedule-{attempt.run_id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if claimed.more:
            return 0.0
        await self._purge_if_due()
        nearest = await self.store.nearest_due()
        if nearest is None:
            return self.config.max_sleep_seconds
        delay = (nearest - self.clock.now()).total_seconds()
        if delay <= 0:
            # due but not claimable now: rows another engine holds, or capacity
            return CONTENDED_BACKOFF_SECONDS if claimed.schedules == 0 else 0.0
        return min(delay, self.config.max_sleep_seconds)

    async def _spawned(self, attempt: ClaimedAttempt) -> None:
        try:
            self.totals.count_result(await self._execute(attempt))
        except Exception:
            # recording failed (database down): the lease expires and the run is resumed
            log.exception("schedule %s: could not record an attempt", attempt.schedule_id)
        finally:
            self._wake.set()

    async def _purge_if_due(self) -> None:
        if self.config.run_retention_days <= 0 or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        cutoff = self.clock.now() - timedelta(days=self.config.run_retention_days)
        removed = await self.store.purge_runs(cutoff)
        if removed:
            log.info("scheduler removed %d runs finished before %s", removed, cutoff.isoformat())

    async def _claim(self, now: datetime, limit: int) -> ClaimReport:
        return await self.store.claim_due(
            now,
            owner=self.owner,
            limit=limit,
            grace=self.config.grace,
            lease=self.config.lease,
        )

    # -- execution ------------------------------------------------------------------------------

    async def _execute(self, attempt: ClaimedAttempt) -> AttemptResult:
        """Send the attempt's tasks concurrently and record the result."""
        owner = _Owner(attempt.app_id, attempt.user_id)
        sent: dict[str, bool] = {}
        async with asyncio.TaskGroup() as group:
            for task in attempt.send:
                group.create_task(self._send(owner, attempt, task, sent))
        result = await self._results.record(attempt, sent)
        if not result.stored:
            log.info(
                "schedule %s run at %s: lease lost before the attempt was recorded "
                "(schedule deleted, or the attempt outlived its lease)",
                attempt.schedule_id,
                attempt.scheduled_at.isoformat(),
            )
        elif result.status == "failed":
            log.info(
                "schedule %s run at %s failed after %d attempts: %s",
                attempt.schedule_id,
                attempt.scheduled_at.isoformat(),
                len(attempt.attempts),
                result.detail,
            )
        for listener in list(self._listeners):
            try:
                listener(attempt, result)
            except Exception:
                log.exception("scheduler listener failed")
        return result

    async def _send(
        self, owner: _Owner, attempt: ClaimedAttempt, task: Task, sent: dict[str, bool]
    ) -> None:
        """One task: True in ``sent`` only when the device acknowledged the command."""
        sent[task.did] = False
        try:
            # bound and not disabled; passes are cached and dropped on every binding change
            await self.control.require_usable(owner, task.did)
            if task.attrs is not None:
                payload = await self.control.encode_attrs(task.did, task.attrs)
            else:
                assert task.raw is not None
                payload = task.raw
            result = await self.control.send(
                task.did,
                payload,
                require_ack=True,
                ack_timeout=self.config.ack_timeout_seconds,
            )
        except (IotCloudError, ConnectionError) as exc:
            log.debug("schedule %s: task for %s not sent: %s", attempt.schedule_id, task.did, exc)
            return
        except Exception:
            log.exception("schedule %s: task for %s failed", attempt.schedule_id, task.did)
            return
        sent[task.did] = result is SendResult.DELIVERED
        if result is not SendResult.DELIVERED:
            log.debug("schedule %s: task for %s: %s", attempt.schedule_id, task.did, result)


class _ResultWriter:
    """Records attempt results with group commit: a result waits for the write in progress (if
    any) and then goes with every other result that arrived meanwhile, in one transaction. A
    lone result is written at once; a burst costs one commit per batch instead of one per run
    (on SQLite, concurrent single-row transactions would queue on the one writer)."""

    def __init__(self, store: ScheduleStore, clock: Clock, retry_interval: timedelta) -> None:
        self.store = store
        self.clock = clock
        self.retry_interval = retry_interval
        self._pending: list[
            tuple[ClaimedAttempt, Mapping[str, bool], asyncio.Future[AttemptResult]]
        ] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, attempt: ClaimedAttempt, sent: Mapping[str, bool]) -> AttemptResult:
        """Record ``attempt``'s result; raises what the database raised when it failed."""
        future: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        self._pending.append((attempt, sent, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="scheduler-results")
        return await future

    async def close(self) -> None:
        """Wait for the results handed in to be written."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write(self) -> None:
        while self._pending:
            batch = self._pending[:RESULT_BATCH]
            del self._pending[:RESULT_BATCH]
            try:
                results = await self.store.finish_attempts(
                    [(attempt, sent) for attempt, sent, _ in batch],
                    self.clock.now(),
                    retry_interval=self.retry_interval,
                )
            except Exception as exc:  # each waiting attempt reports it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def _default_owner() -> str:
    """``host:pid:random``: names the process in leases (at most 40 characters)."""
    return f"{socket.gethostname()[:20]}:{os.getpid()}:{secrets.token_hex(3)}"[:40]
