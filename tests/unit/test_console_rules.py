"""The console's pure rules: the sign-in limit, console CSV lines, command form values, CSRF
tokens and chart geometry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotcloud.api.console.auth import SignInLimiter
from iotcloud.api.console.render import CHART_HEIGHT, chart_svg_points
from iotcloud.services.console import (
    ChartSeries,
    CommandInvalid,
    DataPoint,
    csrf_token,
    device_rows,
    form_value,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_allows_a_few_wrong_tokens_then_refuses_until_it_refills() -> None:
    clock = FakeClock()
    limiter = SignInLimiter(allowed=3, refill_seconds=10.0, clock=clock)
    for _ in range(3):
        assert limiter.wait("1.2.3.4") == 0
        limiter.failed("1.2.3.4")
    assert limiter.wait("1.2.3.4") == pytest.approx(10.0)
    assert limiter.wait("5.6.7.8") == 0  # per address
    clock.now += 10.0
    assert limiter.wait("1.2.3.4") == 0
    limiter.failed("1.2.3.4")
    assert limiter.wait("1.2.3.4") > 0


def test_the_limit_remembers_a_bounded_number_of_addresses() -> None:
    limiter = SignInLimiter(allowed=1, max_keys=2, clock=FakeClock())
    for address in ("a", "b", "c"):
        limiter.failed(address)
    assert limiter.wait("a") == 0  # forgotten first
    assert limiter.wait("c") > 0


def test_console_csv_lines_become_rows_and_failures() -> None:
    lines = ["MAC", "02aabbccddee", "", "02aabbccddef,ABCDEFGHIJ", "a,b,c", " "]
    rows, failures = device_rows("k" * 32, False, lines)
    assert [(row.line, row.mac, row.passcode) for row in rows] == [
        (2, "02aabbccddee", None),
        (4, "02aabbccddef", "ABCDEFGHIJ"),
    ]
    assert [failure.line for failure in failures] == [5]


def test_a_header_is_only_skipped_at_the_start_of_the_file() -> None:
    rows, _ = device_rows("k" * 32, False, ["mac", "02aabbccddee"], first_line=201)
    assert [row.mac for row in rows] == ["mac", "02aabbccddee"]
    named, _ = device_rows("ABCDEFGHIJ", True, ["name", "lamp_1"])
    assert [(row.name, row.mac) for row in named] == [("lamp_1", "")]


BOOL = DataPoint("on", "", "bool", "bool", True)
ENUM = DataPoint("color", "", "enum", "enum", True, labels=("Red", "Blue"))
NUMBER = DataPoint("level", "", "uint8", "number", True, minimum=0, maximum=10, step=1)
TEXT = DataPoint("blob", "", "binary", "text", True, length=2)


@pytest.mark.parametrize(
    ("point", "raw", "value"),
    [
        (BOOL, None, {"on": False}),
        (BOOL, "true", {"on": True}),
        (ENUM, "", {}),
        (ENUM, "Blue", {"color": "Blue"}),
        (NUMBER, " 7 ", {"level": 7}),
        (NUMBER, "2.5", {"level": 2.5}),
        (NUMBER, "", {}),
        (TEXT, "beef", {"blob": "beef"}),
    ],
)
def test_form_values_become_api_values(point: DataPoint, raw: str | None, value: object) -> None:
    assert form_value(point, raw) == value


@pytest.mark.parametrize(
    ("point", "raw"), [(ENUM, "Green"), (NUMBER, "ten"), (NUMBER, "NaN"), (NUMBER, "Infinity")]
)
def test_bad_form_values_are_refused_naming_the_field(point: DataPoint, raw: str) -> None:
    with pytest.raises(CommandInvalid) as refused:
        form_value(point, raw)
    assert refused.value.field == point.name
    assert str(refused.value).startswith(f"{point.name}:")


def test_a_csrf_token_is_tied_to_its_session() -> None:
    assert csrf_token("a") == csrf_token("a")
    assert csrf_token("a") != csrf_token("b")
    assert len(csrf_token("a")) == 64


def test_a_chart_spans_its_box() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=1)
    series = ChartSeries("t", [(start, 1.0), (end, 3.0)])
    drawn = chart_svg_points(series, start, end)
    assert drawn["count"] == 2
    assert (drawn["low"], drawn["high"]) == (1.0, 3.0)
    first, last = drawn["points"].split()
    assert first == f"4.0,{CHART_HEIGHT - 4:.1f}"
    assert last.endswith(",4.0")
    assert chart_svg_points(ChartSeries("t", []), start, end)["points"] == ""
