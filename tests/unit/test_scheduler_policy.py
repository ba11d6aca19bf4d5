"""The scheduler's pure rules: catching up after downtime, and attempts, retries and outcomes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from iotcloud.domain.schedules import Daily, Once, Recurrence, Weekly, occurrences_between
from iotcloud.scheduler.policy import (
    Attempt,
    Task,
    catch_up,
    catch_up_ahead,
    interrupted_attempt,
    merged_detail,
    outcome,
    tasks_to_send,
)

DAILY_7 = Recurrence(Daily(), time(7, 0))
GRACE = timedelta(minutes=15)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_an_occurrence_due_now_fires_and_the_next_one_is_kept() -> None:
    plan = catch_up(DAILY_7, utc(2026, 3, 2, 7), utc(2026, 3, 2, 7, 0, 0, 400_000), grace=GRACE)
    assert plan.fire == utc(2026, 3, 2, 7)
    assert plan.missed == ()
    assert plan.next_due == utc(2026, 3, 3, 7)


def test_after_downtime_the_latest_occurrence_within_grace_fires_and_older_ones_are_missed() -> (
    None
):
    plan = catch_up(DAILY_7, utc(2026, 3, 2, 7), utc(2026, 3, 5, 7, 14), grace=GRACE)
    assert plan.fire == utc(2026, 3, 5, 7)
    assert plan.missed == (utc(2026, 3, 2, 7), utc(2026, 3, 3, 7), utc(2026, 3, 4, 7))
    assert plan.next_due == utc(2026, 3, 6, 7)


def test_an_occurrence_older_than_grace_is_missed_too() -> None:
    plan = catch_up(DAILY_7, utc(2026, 3, 2, 7), utc(2026, 3, 3, 7, 16), grace=GRACE)
    assert plan.fire is None
    assert plan.missed == (utc(2026, 3, 2, 7), utc(2026, 3, 3, 7))
    assert plan.next_due == utc(2026, 3, 4, 7)


def test_grace_zero_fires_only_what_is_exactly_on_time() -> None:
    on_time = catch_up(DAILY_7, utc(2026, 3, 2, 7), utc(2026, 3, 2, 7), grace=timedelta(0))
    late = catch_up(DAILY_7, utc(2026, 3, 2, 7), utc(2026, 3, 2, 7, 0, 1), grace=timedelta(0))
    assert (on_time.fire, late.fire) == (utc(2026, 3, 2, 7), None)


def test_looking_ahead_an_occurrence_within_the_window_fires_at_its_own_instant() -> None:
    now, horizon = utc(2026, 3, 2, 6, 59, 52), utc(2026, 3, 2, 7, 0, 2)
    plan = catch_up_ahead(DAILY_7, utc(2026, 3, 2, 7), now, horizon, grace=GRACE)
    assert (plan.fire, plan.missed, plan.next_due) == (
        utc(2026, 3, 2, 7),
        (),
        utc(2026, 3, 3, 7),
    )
    with pytest.raises(ValueError, match="horizon"):
        catch_up_ahead(DAILY_7, utc(2026, 3, 2, 7), now, utc(2026, 3, 2, 6, 59, 59), grace=GRACE)


def test_looking_ahead_keeps_the_catch_up_rules_for_what_is_due_by_now() -> None:
    # down since Monday: Thursday 07:00 is 14 min late and fires now, not ahead
    now = utc(2026, 3, 5, 7, 14)
    plan = catch_up_ahead(
        DAILY_7, utc(2026, 3, 2, 7), now, now + timedelta(seconds=10), grace=GRACE
    )
    assert plan == catch_up(DAILY_7, utc(2026, 3, 2, 7), now, grace=GRACE)
    # everything due by now is beyond grace: missed, and the next occurrence, within the
    # window, fires at its instant
    early = Recurrence(Daily(), time(7, 16))
    now = utc(2026, 3, 3, 7, 15, 55)
    plan = catch_up_ahead(
        early, utc(2026, 3, 2, 7, 16), now, utc(2026, 3, 3, 7, 16, 5), grace=GRACE
    )
    assert plan.missed == (utc(2026, 3, 2, 7, 16),)
    assert (plan.fire, plan.next_due) == (utc(2026, 3, 3, 7, 16), utc(2026, 3, 4, 7, 16))
    # the window ends before the next occurrence: nothing fires
    plan = catch_up_ahead(early, utc(2026, 3, 2, 7, 16), now, now, grace=GRACE)
    assert (plan.fire, plan.next_due) == (None, utc(2026, 3, 3, 7, 16))


def test_more_occurrences_than_the_limit_are_handled_over_several_claims_none_dropped() -> None:
    first, now = utc(2026, 1, 1, 7), utc(2026, 1, 30, 7, 5)
    everything = [first, *occurrences_between(DAILY_7, first, now)]
    handled: list[datetime] = []
    fired: list[datetime] = []
    due: datetime | None = first
    claims = 0
    while due is not None and due <= now:
        plan = catch_up(DAILY_7, due, now, grace=GRACE, limit=7)
        claims += 1
        handled += plan.missed
        if plan.fire:
            fired.append(plan.fire)
            handled.append(plan.fire)
        due = plan.next_due
    assert sorted(handled) == everything  # each exactly once, in order
    assert fired == [utc(2026, 1, 30, 7)]
    assert claims == 5  # 30 occurrences, 7 a claim
    assert due == utc(2026, 1, 31, 7)


def test_a_one_shot_has_no_next_occurrence_after_it_fired() -> None:
    once = Recurrence(Once(date(2026, 3, 2)), time(8, 30))
    plan = catch_up(once, utc(2026, 3, 2, 8, 30), utc(2026, 3, 2, 8, 30), grace=GRACE)
    assert (plan.fire, plan.missed, plan.next_due) == (utc(2026, 3, 2, 8, 30), (), None)


def test_catch_up_keeps_local_wall_time_across_dst() -> None:
    berlin = Recurrence(Weekly(frozenset(range(7))), time(2, 30), "Europe/Berlin")
    # down from Friday night to Monday 00:31 UTC: Saturday and Sunday (the gap day) are missed
    plan = catch_up(berlin, utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 0, 31), grace=GRACE)
    assert plan.missed == (utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30))
    assert plan.fire == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    assert plan.next_due == utc(2026, 3, 31, 0, 30)


def test_catch_up_refuses_a_first_due_in_the_future() -> None:
    with pytest.raises(ValueError, match="nothing is due"):
        catch_up(DAILY_7, utc(2026, 3, 2, 7), utc(2026, 3, 2, 6), grace=GRACE)


A = Task("did-a", "pk", attrs={"LED_OnOff": True})
B = Task("did-b", "pk", raw=b"\x01\x02")
C = Task("did-c", "pk", attrs={"LED_R": 3})


def test_retry_failed_resends_only_what_did_not_reach_its_device() -> None:
    detail = {"did-a": True, "did-b": False, "did-c": False}
    assert tasks_to_send([A, B, C], "failed", {}) == [A, B, C]
    assert tasks_to_send([A, B, C], "failed", detail) == [B, C]
    assert tasks_to_send([A, B, C], "all", detail) == [A, B, C]


def test_a_run_succeeds_only_when_every_task_got_through() -> None:
    first = merged_detail({}, {"did-a": True, "did-b": False})
    assert outcome([A, B], first, attempts=1, retry_count=2) == "retry"
    second = merged_detail(first, {"did-b": True})
    assert second == {"did-a": True, "did-b": True}
    assert outcome([A, B], second, attempts=2, retry_count=2) == "succeed"


def test_with_retry_all_the_last_attempt_decides() -> None:
    # attempt 1: a ok, b failed; attempt 2 (all): a failed, b ok -> still not all at once
    detail = merged_detail({"did-a": True, "did-b": False}, {"did-a": False, "did-b": True})
    assert outcome([A, B], detail, attempts=2, retry_count=1) == "failed"


def test_the_retry_budget_is_one_plus_retry_count_attempts() -> None:
    failing = {"did-a": False}
    assert outcome([A], failing, attempts=1, retry_count=0) == "failed"
    assert outcome([A], failing, attempts=60, retry_count=60) == "retry"
    assert outcome([A], failing, attempts=61, retry_count=60) == "failed"


def test_an_interrupted_attempt_counts_its_dids_as_failed() -> None:
    started = Attempt(utc(2026, 3, 2, 7), None)
    done = interrupted_attempt(started, [A, B], "failed", {"did-a": True})
    assert done == Attempt(utc(2026, 3, 2, 7), {"did-b": False}, interrupted=True)
    assert interrupted_attempt(started, [A, B], "all", {"did-a": True}).detail == {
        "did-a": False,
        "did-b": False,
    }


def test_tasks_and_attempts_survive_json() -> None:
    for task in (A, B):
        assert Task.from_json(task.to_json()) == task
    assert B.to_json()["raw"] == "0102"
    attempt = Attempt(utc(2026, 3, 2, 7, 0, 0, 250_000), {"did-a": True}, interrupted=True)
    assert Attempt.from_json(attempt.to_json()) == attempt
    assert Attempt.from_json(Attempt(utc(2026, 3, 2, 7), None).to_json()).detail is None
