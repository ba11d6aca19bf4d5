from __future__ import annotations

import pytest

from iotcloud import errors
from iotcloud.api.gizwits.wire import describe_validation_error
from iotcloud.api.throttle import TokenBuckets
from iotcloud.errors import GIZWITS_ERRORS, IotCloudError


def test_the_seed_error_table_is_complete() -> None:
    # the seed's table, plus the encrypted-registration refusals of the device API
    assert set(GIZWITS_ERRORS) == set(range(9001, 9046)) | {9047, 9048, 9999}
    assert GIZWITS_ERRORS[9047].status == GIZWITS_ERRORS[9048].status == 403
    assert GIZWITS_ERRORS[9014].status == 404
    assert GIZWITS_ERRORS[9017].status == 401
    assert GIZWITS_ERRORS[9041] == (429, "request was throttled")
    assert GIZWITS_ERRORS[9008].status == 500
    assert GIZWITS_ERRORS[9039].status == 403


def test_every_error_class_has_a_code_from_the_table() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, IotCloudError)
    ]
    assert len(classes) > 20
    for cls in classes:
        assert cls.code in GIZWITS_ERRORS, cls


def test_error_carries_status_message_and_detail() -> None:
    err = errors.FormInvalid("username: is required")
    assert (err.code, err.http_status, err.message) == (9015, 400, "form invalid!")
    assert err.detail == "username: is required"


@pytest.mark.parametrize(
    ("msgspec_message", "expected"),
    [
        ("Object missing required field `password`", "password: is required"),
        ("Object contains unknown field `foo`", "foo: unknown field"),
        ("Expected `str`, got `int` - at `$.password`", "password: expected str, got int"),
        ("Object missing required field `token` - at `$.authData`", "authData.token: is required"),
        ("Expected `object`, got `str` - at `$.authData`", "authData: expected object, got str"),
    ],
)
def test_validation_errors_name_the_field(msgspec_message: str, expected: str) -> None:
    assert describe_validation_error(msgspec_message) == expected


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_refills() -> None:
    clock = FakeTime()
    buckets = TokenBuckets(rate=2, burst_seconds=2, clock=clock)
    assert [buckets.take("a") for _ in range(4)] == [0, 0, 0, 0]
    wait = buckets.take("a")
    assert 0 < wait <= 0.5
    assert buckets.take("b") == 0  # other keys are independent
    clock.now += 0.5
    assert buckets.take("a") == 0


def test_token_bucket_forgets_least_recent_keys() -> None:
    buckets = TokenBuckets(rate=1, burst_seconds=1, max_keys=3, clock=FakeTime())
    for key in "abcd":
        buckets.take(key)
    assert buckets.take("a") == 0  # "a" was evicted, so it starts with a full bucket
    assert buckets.take("d") > 0


def test_zero_rate_disables_the_limit() -> None:
    buckets = TokenBuckets(rate=0, burst_seconds=1, clock=FakeTime())
    assert all(buckets.take("a") == 0 for _ in range(1000))
