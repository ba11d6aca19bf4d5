"""The scheduler's rules as pure functions: what a schedule's tasks are, which due occurrences
fire and which are recorded as missed, and what an attempt's outcome means for its run.

No I/O here: the store and the engine apply these rules, and unit tests check them directly.

Catching up (DESIGN.md "Scheduling semantics"): every occurrence from a schedule's
``next_due_at`` up to now is handled exactly once. The latest of them fires if it is at most
``grace`` old; every other one - and the latest too when it is older than ``grace`` - becomes a
``missed`` run. At most ``limit`` occurrences are handled per claim; when more are due (a daily
schedule after roughly three years of downtime with the default limit of 1,000), the oldest
``limit`` are recorded as missed and the rest are handled by the next claims, so nothing is
dropped, however long the downtime.

Preparing ahead: a claim may look ``ahead`` of now (`catch_up_ahead`), so that an occurrence
due within the next few seconds is claimed, checked and encoded before its instant and sent at
it. What is due by now is handled exactly as `catch_up` says; when that fires nothing, the first
occurrence after now, if it falls within the look-ahead, fires at its own instant.

Attempts and retries (the Gizwits contract): a run succeeds when every task's command reached
its device. After a failed attempt the run is tried again, up to ``retry_count`` more times:
``retry_task`` ``all`` sends every task again, ``failed`` only the tasks not yet delivered. The
run's ``detail`` maps each task's did to whether its latest attempt reached the device; with
``all`` that is the last attempt's result, with ``failed`` the union of the successes. A schedule
has at most one task per device, so a did names its task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from iotcloud.domain.schedules import OCCURRENCES_LIMIT, Recurrence, next_occurrence

__all__ = [
    "RETRY_COUNT_MAX",
    "Attempt",
    "CatchUp",
    "Dialect",
    "RetryTask",
    "RunStatus",
    "Task",
    "catch_up",
    "catch_up_ahead",
    "interrupted_attempt",
    "merged_detail",
    "outcome",
    "tasks_to_send",
]

Dialect = Literal["gizwits", "tencent"]
RetryTask = Literal["all", "failed"]
RunStatus = Literal["running", "succeed", "failed", "missed"]
Outcome = Literal["succeed", "failed", "retry"]

RETRY_COUNT_MAX: Final = 60
DIALECTS: Final = ("gizwits", "tencent")
RETRY_TASKS: Final = ("all", "failed")


@dataclass(frozen=True, slots=True)
class Task:
    """One command of a schedule: write ``attrs`` (display values, checked against the product's
    data points and encoded when the run fires) or send ``raw`` P0 bytes, to device ``did`` of
    product ``product_key``. Exactly one of ``attrs`` and ``raw`` is set (the service checks)."""

    did: str
    product_key: str
    attrs: Mapping[str, Any] | None = None
    raw: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"did": self.did, "product_key": self.product_key}
        if self.attrs is not None:
            data["attrs"] = dict(self.attrs)
        if self.raw is not None:
            data["raw"] = self.raw.hex()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        raw = data.get("raw")
        return cls(
            did=data["did"],
            product_key=data["product_key"],
            attrs=data.get("attrs"),
            raw=None if raw is None else bytes.fromhex(raw),
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a run: when it started and, per did it sent to, whether the command
    reached the device. ``detail`` is None while the attempt is in flight; ``interrupted``
    marks an attempt whose process stopped before it finished (its dids count as failed)."""

    at: datetime
    detail: Mapping[str, bool] | None
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": self.at.astimezone(UTC).isoformat(), "detail": self.detail}
        if self.interrupted:
            data["interrupted"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        detail = data.get("detail")
        return cls(
            at=datetime.fromisoformat(data["at"]),
            detail=None if detail is None else dict(detail),
            interrupted=bool(data.get("interrupted", False)),
        )


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What to do with a schedule's due occurrences: ``fire`` one now (None: none), record
    ``missed`` ones, and keep ``next_due`` as the first occurrence not handled (None: the
    schedule never fires again; it may still be ``<= now`` when more than the limit were due)."""

    fire: datetime | None
    missed: tuple[datetime, ...]
    next_due: datetime | None


def catch_up(
    recurrence: Recurrence,
    first_due: datetime,
    now: datetime,
    *,
    grace: timedelta,
    limit: int = OCCURRENCES_LIMIT,
) -> CatchUp:
    """Handle every occurrence of ``recurrence`` from ``first_due`` (an occurrence, ``<= now``)
    through ``now``: see the module docstring. Raises ``ValueError`` if ``first_due`` is after
    ``now`` or ``limit`` is below 1."""
    if first_due > now:
        raise ValueError("first_due is after now: nothing is due")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    due = [first_due]
    following = next_occurrence(recurrence, first_due)
    while following is not None and following <= now:
        if len(due) == limit:
            return CatchUp(None, tuple(due), following)
        due.append(following)
        following = next_occurrence(recurrence, following)
    latest = due[-1]
    if now - latest <= grace:
        return CatchUp(latest, tuple(due[:-1]), following)
    return CatchUp(None, tuple(due), following)


def catch_up_ahead(
    recurrence: Recurrence,
    first_due: datetime,
    now: datetime,
    horizon: datetime,
    *,
    grace: timedelta,
    limit: int = OCCURRENCES_LIMIT,
) -> CatchUp:
    """`catch_up` for a claim at ``now`` that looks ahead to ``horizon`` (``>= now``): the
    occurrences due by ``now`` as `catch_up` handles them; when none of them fires, the first
    occurrence in ``(now, horizon]`` fires (``fire`` after ``now``: at its own instant). Raises
    ``ValueError`` if ``first_due`` is after ``horizon`` or ``horizon`` before ``now``."""
    if horizon < now:
        raise ValueError("horizon is before now")
    if first_due > horizon:
        raise ValueError("first_due is after the horizon: nothing is due")
    if first_due > now:
        return CatchUp(first_due, (), next_occurrence(recurrence, first_due))
    plan = catch_up(recurrence, first_due, now, grace=grace, limit=limit)
    upcoming = plan.next_due
    if plan.fire is None and upcoming is not None and now < upcoming <= horizon:
        return CatchUp(upcoming, plan.missed, next_occurrence(recurrence, upcoming))
    return plan


def tasks_to_send(
    tasks: Sequence[Task], retry_task: RetryTask, detail: Mapping[str, bool]
) -> list[Task]:
    """The tasks the next attempt sends: all of them for the first attempt and with ``all``;
    with ``failed`` those whose device has not got its command yet."""
    if retry_task == "all":
        return list(tasks)
    return [task for task in tasks if not detail.get(task.did, False)]


def merged_detail(before: Mapping[str, bool], attempt: Mapping[str, bool]) -> dict[str, bool]:
    """The run's detail after an attempt: each did's latest result."""
    return {**before, **attempt}


def outcome(
    tasks: Sequence[Task], detail: Mapping[str, bool], *, attempts: int, retry_count: int
) -> Outcome:
    """After ``attempts`` attempts: ``succeed`` when every task reached its device, ``failed``
    when the ``1 + retry_count`` attempts are used up, else ``retry``."""
    if all(detail.get(task.did, False) for task in tasks):
        return "succeed"
    if attempts >= 1 + retry_count:
        return "failed"
    return "retry"


def interrupted_attempt(
    started: Attempt, tasks: Sequence[Task], retry_task: RetryTask, before: Mapping[str, bool]
) -> Attempt:
    """An in-flight attempt whose process stopped: every did it was sending to counts as not
    reached (whether the command got out is unknown, so it is neither trusted nor re-sent
    beyond the run's retry budget)."""
    sent = tasks_to_send(tasks, retry_task, before)
    return Attempt(started.at, {task.did: False for task in sent}, interrupted=True)
