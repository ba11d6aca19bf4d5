"""How ``AppGetUser`` splits a stored phone into ``CountryCode`` and ``PhoneNumber``."""

from __future__ import annotations

import pytest

from iotcloud.api.tencent.users import split_phone


@pytest.mark.parametrize(
    ("stored", "parts"),
    [
        (None, ("", "")),
        ("", ("", "")),
        ("13800138000", ("86", "13800138000")),  # bare: Chinese, as Gizwits apps register it
        ("+8613800138000", ("86", "13800138000")),
        ("+14155550100", ("1", "4155550100")),
        ("+79161234567", ("7", "9161234567")),
        ("+447700900123", ("44", "7700900123")),
        ("+33612345678", ("33", "612345678")),
        ("+35312345678", ("353", "12345678")),
        ("+85291234567", ("852", "91234567")),
        ("+886912345678", ("886", "912345678")),
        ("+9715012345678", ("971", "5012345678")),
    ],
)
def test_a_phone_splits_after_its_country_code(stored: str | None, parts: tuple[str, str]) -> None:
    assert split_phone(stored) == parts
