"""Reading device CSV files for ``iotcloud device import``: headers and line numbers."""

from __future__ import annotations

import pytest

from iotcloud.errors import FormInvalid
from iotcloud.services.devices import read_device_csv

KEY = "de9e8d18d9394cce9081b25a531e552b"


@pytest.mark.parametrize(
    "lines",
    [[], ["\n", " , \n"], ["mac\n"], ["product_key,mac,colour\n"], ["product_key,mac,mac\n"]],
    ids=["empty", "blank", "missing-column", "unknown-column", "repeated-column"],
)
def test_headers_are_checked(lines: list[str]) -> None:
    with pytest.raises(FormInvalid, match="header"):
        read_device_csv(lines)


def test_columns_may_come_in_any_order_and_case_and_passcode_is_optional() -> None:
    rows, failures = read_device_csv(
        ["MAC, Product_Key ,passcode\n", f"aa:bb:cc:dd:ee:ff , {KEY},\n", f"x,{KEY},CODE\n"]
    )
    assert not failures
    assert [(r.line, r.product_key, r.mac, r.passcode) for r in rows] == [
        (2, KEY, "aa:bb:cc:dd:ee:ff", None),
        (3, KEY, "x", "CODE"),
    ]


def test_line_numbers_follow_the_file_through_blank_lines_and_quoted_newlines() -> None:
    rows, failures = read_device_csv(
        [
            "\n",
            "product_key,mac\n",
            "\n",
            f'{KEY},"aabb\n',
            'ccddeeff"\n',
            f"{KEY},aabbccddee01,extra\n",
            f"{KEY}\n",
            f"{KEY},aabbccddee02\n",
        ]
    )
    assert [(r.line, r.mac) for r in rows] == [(4, "aabb\nccddeeff"), (8, "aabbccddee02")]
    assert [(f.line, f.error) for f in failures] == [
        (6, "expected 2 fields, got 3"),
        (7, "expected 2 fields, got 1"),
    ]
