"""The scheduler engine: claims occurrences a few seconds before they are due, checks and encodes
their commands ahead, sends them at the due instant in batches, and records every attempt.

One engine runs per ``iotcloud`` process with the scheduler enabled; any number of them may share
a database (see `iotcloud.scheduler.store` for how claims stay exclusive). Users put timers on
round minutes, so the design is for the worst minute - thousands of occurrences due at one
HH:MM:00 - and everything that can happen before that instant happens before it:

* **Claiming ahead.** The claim loop wakes ``prepare_seconds`` before the nearest due
  occurrence (and at once when this process creates or changes a schedule: `wake`; at most
  ``max_sleep`` apart, to notice what other processes changed) and claims every occurrence due
  within that window, in batches of `CLAIM_BATCH`, under the existing lease: a run claimed
  ahead is leased until its instant plus ``lease`` and is *not started* (no attempt) until the
  engine is about to send it.
* **Preparing.** Each claimed batch is prepared at once (`iotcloud.scheduler.commands`): one
  query reads every device, its binding to the schedule's owner and its latest state; each
  task is checked (unknown, unbound or disabled devices get nothing, as before) and its
  command encoded (attrs through the product's codec over the latest state, or raw bytes).
  The prepared attempts wait in memory, ordered by instant.
* **Firing.** `START_LEAD_SECONDS` before an instant the dispatcher starts that instant's runs
  claimed ahead in one statement (`ScheduleStore.start`): a run whose schedule was deleted
  since is gone and is not sent, and the bindings are read again, so a device unbound or
  disabled since its preparation is not sent to (the task fails, as at fire time). At the
  instant it hands the commands to the gateway in batches of `SEND_BATCH`
  (`DeviceGateway.send_many`: 0x0093 frames with fresh SNs, acknowledgements correlated by
  (did, SN), one timer per batch for ``ack_timeout``), yielding to the event loop between
  batches so acknowledgements are read while the burst goes out. Occurrences claimed when
  already due (late, retries, runs taken over) are prepared and sent at once. A schedule
  edited or switched off after its occurrence was claimed still fires that occurrence, as a
  run in flight always did; deleting it stops it.
* **Recording.** An attempt is finished when each of its commands was acknowledged or timed
  out; results are written with group commit (`_ResultWriter`: whatever finished while a
  write was in progress, and `RESULT_LINGER_SECONDS` after it, goes in the next write, one
  UPDATE per few thousand runs). A task succeeds only when its device acknowledged it.
* **Retries** are durable: a failed attempt sets the run's next attempt ``retry_interval``
  later in the database, so retries survive restarts and any engine may make them. Runs
  (retries, abandoned runs) are claimed when due, not ahead.
* **Missed occurrences, abandoned and never-started runs**: see `iotcloud.scheduler.policy`
  and `ScheduleStore.claim_due`. A process that dies holding runs claimed ahead leaves them
  leased until their instant plus the lease; the next claimer then makes their first attempt
  (nothing was sent for them) or records them missed beyond the grace window. A process that
  dies mid-attempt leaves the attempt interrupted, as before.
* **Capacity and memory.** At most ``concurrency`` attempts are held per engine (prepared,
  or sent and not yet recorded); claims take no more than there is room for, so engines
  share a burst. An attempt is referenced by nothing once recorded (its payloads are
  dropped once sent), and every statement has one shape whatever the batch size (rows travel
  as one JSON parameter), so a burst leaves no objects behind, only the allocator's
  high-water mark, which the next burst reuses.
* **Stopping** (`__aexit__`): no new claims; occurrences prepared and not yet due are released
  (`ScheduleStore.release`: due again at their instant, for any engine); attempts in flight get
  ``ack_timeout`` plus a few seconds to finish and record their result; the rest are handled
  by the next engine once their lease expires. A claim or a preparation under way when the
  loop is cancelled is not lost: the claim finishes (shielded), and what it took is handed to
  the stop path unprepared - released when claimed ahead, else recorded as not sent.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from iotcloud.domain.clock import Clock
from iotcloud.gateway.service import SendResult
from iotcloud.scheduler.commands import CommandBuilder, Prepared
from iotcloud.scheduler.store import AttemptResult, ClaimedAttempt, ClaimReport, ScheduleStore
from iotcloud.storage.database import Database

if TYPE_CHECKING:
    from iotcloud.config import Settings
    from iotcloud.services.control import ControlService

log = logging.getLogger(__name__)

CLAIM_BATCH: Final = 500
"""Most schedules (and, separately, runs) one claim transaction takes."""
RESULT_BATCH: Final = 5000
"""Most attempt results written per transaction."""
RESULT_LINGER_SECONDS: Final = 0.05
"""Between two writes of results, at least this long: while acknowledgements stream in, a
write takes what arrived meanwhile instead of one transaction per handful of results."""
SEND_BATCH: Final = 500
"""Commands handed to the gateway between two yields to the event loop."""
START_LEAD_SECONDS: Final = 0.5
"""How long before their instant runs claimed ahead are started (and checked once more)."""
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
    concurrency: int = 20_000
    run_retention_days: int = 90
    prepare_seconds: float = 10.0

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
            prepare_seconds=settings.scheduler_prepare_seconds,
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

    @property
    def prepare(self) -> timedelta:
        return timedelta(seconds=self.prepare_seconds)


@dataclass
class TickReport:
    """What `SchedulerEngine.run_due` did: runs fired (first attempts), retries made (later
    attempts, including resumed ones), runs recorded missed, runs finished without an attempt
    (given up, abandoned past their budget), schedules switched off after their last
    occurrence, and how the attempts ended (``lost``: not recorded, the run's lease was lost
    - its schedule deleted, say)."""

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

_LOST: Final = AttemptResult(False, "running", {}, None)
"""The result of an attempt not made because its run is gone (deleted with its schedule)."""


class _Firing:
    """One attempt from preparation to its recorded result: the commands still to send, what
    each task got, and (for `run_due`) a future of its result."""

    __slots__ = ("attempt", "commands", "recorded", "sent", "waiting")

    def __init__(self, prepared: Prepared, recorded: asyncio.Future[AttemptResult] | None) -> None:
        self.attempt = prepared.attempt
        self.commands = prepared.commands
        self.sent = prepared.sent
        self.waiting = 0
        self.recorded = recorded


class SchedulerEngine:
    """Fires due schedules (see the module docstring). An async context manager; `run` is its
    loop, to be run as a background task while the engine is entered. `run_due` is the same
    work stepped explicitly (tests, with a frozen clock): it claims what is due at the given
    instant, without looking ahead."""

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
        self.commands = CommandBuilder(self.store, control.products)
        self._wake = asyncio.Event()
        self._queued = asyncio.Event()
        self._queue: list[tuple[datetime, int, _Firing]] = []
        self._order = itertools.count()
        self._held = 0
        self._next_look = 0.0
        """When (monotonic) the claim loop looks at the database next, unless woken."""
        self._starved = False
        """The claim loop waits for room (``concurrency`` attempts held)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._firing: set[asyncio.Task[None]] = set()
        self._cut_claims: set[asyncio.Task[ClaimReport]] = set()
        """Claims whose caller was cancelled (the engine is stopping): they finish, and the
        stop path hands on what they took."""
        self._unprepared: list[_Firing] = []
        """Attempts claimed and not prepared because the engine is stopping: the stop path
        releases those claimed ahead and records the others as not sent."""
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
        """Look at the schedules (and the clock) again now: one was created or changed."""
        self._wake.set()
        self._queued.set()

    @property
    def held(self) -> int:
        """Attempts this engine holds: prepared, or sent and not yet recorded."""
        return self._held

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
            await self._adopt_cut_claims()
            await self._release_queued()
            await self._drain()
        finally:
            await self._results.close()

    async def _adopt_cut_claims(self) -> None:
        """Wait (`DRAIN_MARGIN_SECONDS` at most) for the claims cut short by stopping, and hand
        what they took to the stop path unprepared."""
        claims, self._cut_claims = self._cut_claims, set()
        for claim in claims:
            try:
                async with asyncio.timeout(DRAIN_MARGIN_SECONDS):
                    report = await claim
            except Exception:
                # what it took (if anything) is taken over once its lease expires
                log.exception("scheduler stopping: a claim in progress failed")
                continue
            self.totals.count_claim(report)
            self._hold_unprepared(report.attempts)

    def _hold_unprepared(
        self, attempts: Sequence[ClaimedAttempt], *, awaited: bool = False
    ) -> None:
        """Hold ``attempts`` for the stop path without preparing them: every task not sent."""
        loop = asyncio.get_running_loop()
        for attempt in attempts:
            not_sent = Prepared(attempt, sent={task.did: False for task in attempt.send})
            self._unprepared.append(_Firing(not_sent, loop.create_future() if awaited else None))
        if attempts:
            self._held += len(attempts)
            self._idle.clear()

    async def _release_queued(self) -> None:
        """Hand on what is prepared (or was claimed and could not be) and not yet sent: runs
        claimed ahead are released (due again at their instant, for any engine); attempts
        already due are sent now (one left unprepared is recorded as not sent, as an attempt
        interrupted by a crash would be after its lease)."""
        queued = [firing for _, _, firing in self._queue] + self._unprepared
        self._queue.clear()
        self._unprepared = []
        ahead = [firing for firing in queued if firing.attempt.ahead]
        due = [firing for firing in queued if not firing.attempt.ahead]
        if due:
            self._spawn_fire(due)
        if not ahead:
            return
        try:
            released = await self.store.release([firing.attempt for firing in ahead])
        except Exception:
            log.exception(
                "scheduler could not release %d prepared runs; they fire once their lease expires",
                len(ahead),
            )
        else:
            log.info("scheduler stopping: released %d runs claimed ahead", released)
        for firing in ahead:
            self._settle(firing, None)  # handed on, not lost

    async def _drain(self) -> None:
        if self._held == 0 and not self._firing:
            return
        timeout = self.config.ack_timeout_seconds + DRAIN_MARGIN_SECONDS
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self._firing:
                    await asyncio.gather(*self._firing, return_exceptions=True)
                await self._idle.wait()
        for task in list(self._firing):
            task.cancel()
        if self._held:
            log.warning(
                "scheduler stopped with %d attempts in flight; they are resumed or failed "
                "after their lease expires",
                self._held,
            )

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
            claimed = await self._claim(at, CLAIM_BATCH, timedelta(0))
            report.count_claim(claimed)
            firings = await self._prepare(claimed.attempts, awaited=True)
            recorded = [firing.recorded for firing in firings if firing.recorded is not None]
            await self._fire(firings)
            for result in await asyncio.gather(*recorded):
                report.count_result(result)
            if not (claimed.more or claimed.schedules or claimed.due_runs):
                return report  # a claim that selected nothing: nothing is left at ``at``

    # -- the loops ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fire schedules until cancelled: the claim loop, and the dispatcher that sends what
        it prepared at each instant. Failures (a database outage) are logged once, and the
        recovery once; the loops keep trying."""
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._dispatch(), name="scheduler-dispatch")
            loops.create_task(self._claim_loop(), name="scheduler-claims")

    async def _claim_loop(self) -> None:
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
                self._next_look = time.monotonic() + delay
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._next_look = 0.0

    async def _cycle(self) -> float:
        """Claim and prepare what is due within the preparation window and there is room for;
        return how long to sleep."""
        free = self.config.concurrency - self._held
        self._starved = free <= 0
        if self._starved:
            return self.config.max_sleep_seconds  # a recorded attempt wakes the loop
        now = self.clock.now()
        claimed = await self._claim(now, min(free, CLAIM_BATCH), self.config.prepare)
        self.totals.count_claim(claimed)
        if claimed.attempts:
            self._enqueue(await self._prepare(claimed.attempts))
        if claimed.more:
            return 0.0
        await self._purge_if_due()
        nearest = await self.store.nearest_due(self.config.prepare)
        if nearest is None:
            return self.config.max_sleep_seconds
        delay = (nearest - self.clock.now()).total_seconds()
        if delay <= 0:
            # due but not claimable now: rows another engine holds, or capacity
            return CONTENDED_BACKOFF_SECONDS if claimed.schedules == 0 else 0.0
        return min(delay, self.config.max_sleep_seconds)

    async def _dispatch(self) -> None:
        """Start and send the prepared attempts of each instant when it comes."""
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            at = self._queue[0][0]
            if await self._sleep_until(at - timedelta(seconds=START_LEAD_SECONDS)):
                continue  # woken early: something earlier may have been queued
            # not kept in this frame: a burst's attempts are freed as soon as they are recorded
            # (a local here would hold the last burst until the next one)
            firing = self._spawn_fire(self._take_due(at))
            await asyncio.shield(firing)  # cancelling the loop does not cut a burst in half
            del firing

    def _take_due(self, at: datetime) -> list[_Firing]:
        """Take the queued attempts due at or before ``at``."""
        due: list[_Firing] = []
        while self._queue and self._queue[0][0] <= at:
            due.append(heapq.heappop(self._queue)[2])
        return due

    async def _sleep_until(self, instant: datetime) -> bool:
        """Wait until the clock reaches ``instant``; True when woken before it (`wake`, or
        something queued)."""
        delay = (instant - self.clock.now()).total_seconds()
        if delay <= 0:
            return False
        self._queued.clear()
        with suppress(TimeoutError):
            async with asyncio.timeout(min(delay, self.config.max_sleep_seconds)):
                await self._queued.wait()
        return True

    def _spawn_fire(self, firings: list[_Firing]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._fire(firings), name="scheduler-fire")
        self._firing.add(task)
        task.add_done_callback(self._firing.discard)
        return task

    async def _purge_if_due(self) -> None:
        if self.config.run_retention_days <= 0 or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        cutoff = self.clock.now() - timedelta(days=self.config.run_retention_days)
        removed = await self.store.purge_runs(cutoff)
        if removed:
            log.info("scheduler removed %d runs finished before %s", removed, cutoff.isoformat())

    async def _claim(self, now: datetime, limit: int, ahead: timedelta) -> ClaimReport:
        """`ScheduleStore.claim_due` for this engine. A claim is two transactions: cancelling
        it (the engine stopping) after the first commits would leave its runs leased to nobody
        until the lease expires, so it runs on, shielded, and the stop path takes what it
        claimed (`_adopt_cut_claims`)."""
        claim = asyncio.ensure_future(
            self.store.claim_due(
                now,
                owner=self.owner,
                limit=limit,
                grace=self.config.grace,
                lease=self.config.lease,
                ahead=ahead,
            )
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            self._cut_claims.add(claim)
            raise

    # -- preparing, firing, recording --------------------------------------------------------------

    async def _prepare(
        self, attempts: Sequence[ClaimedAttempt], *, awaited: bool = False
    ) -> list[_Firing]:
        """The claimed ``attempts`` checked and encoded (see `CommandBuilder`), held by this
        engine until recorded (``awaited``: each with a future of its result). When the read
        fails, each of their tasks counts as not sent."""
        if not attempts:
            return []
        self._held += len(attempts)
        self._idle.clear()
        try:
            prepared = await self.commands.prepare(attempts)
        except asyncio.CancelledError:
            # stopping: the claims go to the stop path as not sent, which releases those
            # claimed ahead (rather than leaving them leased until the lease expires)
            self._held -= len(attempts)
            self._hold_unprepared(attempts, awaited=awaited)
            raise
        except Exception:
            log.exception("scheduler could not prepare %d attempts; they fail", len(attempts))
            prepared = [
                Prepared(attempt, sent={task.did: False for task in attempt.send})
                for attempt in attempts
            ]
        loop = asyncio.get_running_loop()
        return [_Firing(ready, loop.create_future() if awaited else None) for ready in prepared]

    def _enqueue(self, firings: list[_Firing]) -> None:
        for firing in firings:
            heapq.heappush(self._queue, (firing.attempt.at, next(self._order), firing))
        self._queued.set()

    async def _fire(self, firings: list[_Firing]) -> None:
        """Start the runs claimed ahead, wait for the instant, then send every command."""
        ahead = [firing for firing in firings if firing.attempt.ahead]
        if ahead:
            firings = [firing for firing in firings if not firing.attempt.ahead]
            firings += await self._start(ahead)
        if not firings:
            return
        instant = max(firing.attempt.at for firing in firings)
        while await self._sleep_until(instant):
            pass
        await self._send(firings)

    async def _start(self, firings: list[_Firing]) -> list[_Firing]:
        """Mark ``firings`` (claimed ahead) started; those whose run is gone are dropped, and
        tasks whose device was unbound or disabled since their preparation are not sent."""
        try:
            started, usable = await self.store.start([firing.attempt for firing in firings])
        except Exception:
            # not started: they stay leased, and whoever claims them after the lease makes
            # their first attempt
            log.exception("scheduler could not start %d runs claimed ahead", len(firings))
            for firing in firings:
                self._settle(firing, None)
            return []
        kept = []
        for firing in firings:
            attempt = firing.attempt
            if attempt.run_id not in started:
                log.info(
                    "schedule %s run at %s: not sent, the run is gone (schedule deleted)",
                    attempt.schedule_id,
                    attempt.scheduled_at.isoformat(),
                )
                self._settle(firing, _LOST)
                continue
            commands = []
            for did, payload in firing.commands:
                if (attempt.user_id, did) in usable:
                    commands.append((did, payload))
                else:
                    firing.sent[did] = False  # unbound or disabled since its preparation
            firing.commands = commands
            kept.append(firing)
        return kept

    async def _send(self, firings: list[_Firing]) -> None:
        """Hand every command of ``firings`` to the gateway, `SEND_BATCH` at a time; each
        attempt is recorded once its commands are answered or timed out."""
        batch: list[tuple[_Firing, str, bytes]] = []
        for firing in firings:
            firing.waiting = len(firing.commands)
            if not firing.commands:
                self._finish(firing)
                continue
            commands, firing.commands = firing.commands, []  # the payloads go with the batch
            for did, payload in commands:
                batch.append((firing, did, payload))
                if len(batch) >= SEND_BATCH:
                    await self._send_batch(batch)
                    batch = []
                    await asyncio.sleep(0)  # let acknowledgements in
        if batch:
            await self._send_batch(batch)

    async def _send_batch(self, batch: list[tuple[_Firing, str, bytes]]) -> None:
        try:
            futures = await self.control.gateway.send_many(
                [(did, payload) for _, did, payload in batch],
                ack_timeout=self.config.ack_timeout_seconds,
            )
        except Exception:
            log.exception("scheduler could not hand %d commands to the gateway", len(batch))
            for firing, did, _ in batch:
                self._answered(firing, did, False)
            return
        for (firing, did, _), future in zip(batch, futures, strict=True):
            future.add_done_callback(self._on_answer(firing, did))

    def _on_answer(self, firing: _Firing, did: str) -> Callable[[asyncio.Future[SendResult]], None]:
        return lambda done: self._answered(firing, did, _delivered(done))

    def _answered(self, firing: _Firing, did: str, delivered: bool) -> None:
        firing.sent[did] = delivered
        if not delivered:
            log.debug("schedule %s: task for %s not delivered", firing.attempt.schedule_id, did)
        firing.waiting -= 1
        if firing.waiting == 0:
            self._finish(firing)

    def _finish(self, firing: _Firing) -> None:
        recorded = self._results.submit(firing.attempt, firing.sent)
        recorded.add_done_callback(lambda done: self._recorded(firing, done))

    def _recorded(self, firing: _Firing, done: asyncio.Future[AttemptResult]) -> None:
        attempt = firing.attempt
        if done.cancelled() or done.exception() is not None:
            # the writer logged it; the lease expires and the run is resumed
            self._settle(firing, None, error=done)
            return
        result = done.result()
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
        self._settle(firing, result)

    def _settle(
        self,
        firing: _Firing,
        result: AttemptResult | None,
        *,
        error: asyncio.Future[AttemptResult] | None = None,
    ) -> None:
        """``firing`` is done with: counted, its future resolved, its room freed."""
        if result is not None:
            self.totals.count_result(result)
        recorded = firing.recorded
        if recorded is not None and not recorded.done():
            failure = None if error is None or error.cancelled() else error.exception()
            if failure is not None:
                recorded.set_exception(failure)
                recorded.exception()  # `run_due` raises it; the loop has logged it
            elif result is not None:
                recorded.set_result(result)
            else:
                recorded.cancel()
        self._held -= 1
        if self._held == 0:
            self._idle.set()
        # the claim loop looks again when it waits for room, or when this attempt's retry is
        # due before its next look (not after every attempt: a burst would spin it)
        if self._starved or (
            result is not None
            and result.next_attempt_at is not None
            and (result.next_attempt_at - self.clock.now()).total_seconds()
            < self._next_look - time.monotonic()
        ):
            self._wake.set()


def _delivered(future: asyncio.Future[SendResult]) -> bool:
    return (
        not future.cancelled()
        and future.exception() is None
        and future.result() is SendResult.DELIVERED
    )


class _ResultWriter:
    """Records attempt results with group commit: a result waits for the write in progress (if
    any), and `RESULT_LINGER_SECONDS` after it, then goes with every other result that arrived
    meanwhile, in one transaction. A lone result is written at once; a burst costs one commit
    per batch instead of one per run (on SQLite, concurrent single-row transactions would queue
    on the one writer; on PostgreSQL each costs a connection check and two round trips)."""

    def __init__(self, store: ScheduleStore, clock: Clock, retry_interval: timedelta) -> None:
        self.store = store
        self.clock = clock
        self.retry_interval = retry_interval
        self._pending: list[
            tuple[ClaimedAttempt, Mapping[str, bool], asyncio.Future[AttemptResult]]
        ] = []
        self._writer: asyncio.Task[None] | None = None
        self._failing = False

    def submit(
        self, attempt: ClaimedAttempt, sent: Mapping[str, bool]
    ) -> asyncio.Future[AttemptResult]:
        """Queue ``attempt``'s result; the future holds how it was recorded, or what the
        database raised."""
        future: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        self._pending.append((attempt, sent, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="scheduler-results")
        return future

    async def record(self, attempt: ClaimedAttempt, sent: Mapping[str, bool]) -> AttemptResult:
        """Record ``attempt``'s result; raises what the database raised when it failed."""
        return await self.submit(attempt, sent)

    async def close(self) -> None:
        """Wait for the results handed in to be written."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write(self) -> None:
        first = True
        while self._pending:
            if not first:
                await asyncio.sleep(RESULT_LINGER_SECONDS)
            first = False
            batch = self._pending[:RESULT_BATCH]
            del self._pending[:RESULT_BATCH]
            try:
                results = await self.store.finish_attempts(
                    [(attempt, sent) for attempt, sent, _ in batch],
                    self.clock.now(),
                    retry_interval=self.retry_interval,
                )
            except Exception as exc:  # each waiting attempt reports it
                if not self._failing:
                    log.exception(
                        "scheduler could not record %d attempts; their leases expire and "
                        "they are resumed",
                        len(batch),
                    )
                    self._failing = True
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._failing:
                log.info("scheduler records attempts again")
                self._failing = False
            for (*_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def _default_owner() -> str:
    """``host:pid:random``: names the process in leases (at most 40 characters)."""
    return f"{socket.gethostname()[:20]}:{os.getpid()}:{secrets.token_hex(3)}"[:40]
