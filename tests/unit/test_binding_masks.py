"""Personal data shown to the other users of a device is masked (``GET /app/{did}/bindings``)."""

from __future__ import annotations

import pytest

from iotcloud.services.bindings import mask_email, mask_phone, mask_username


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (None, None),
        ("22222222", "2****2"),  # the Gizwits example
        ("alice", "a****e"),
        ("bob", "b****b"),
        ("ab", "****"),
        ("a", "****"),
        ("a-very-long-user-name", "a****e"),  # four stars whatever the length
    ],
)
def test_usernames_keep_their_first_and_last_character(value: str | None, masked: str) -> None:
    assert mask_username(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (None, None),
        ("13812345678", "138****5678"),
        ("+8613812345678", "+86****5678"),
        ("12345678", "123****5678"),
        ("1234567", "1****7"),
        ("12", "****"),
    ],
)
def test_phones_keep_a_prefix_and_the_last_four_digits(value: str | None, masked: str) -> None:
    assert mask_phone(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (None, None),
        ("bob@example.com", "b****b@example.com"),
        ("jo@example.com", "****@example.com"),
        ("first.last@mail.example.org", "f****t@mail.example.org"),
        ("odd@name@example.com", "o****e@example.com"),
    ],
)
def test_emails_keep_their_domain(value: str | None, masked: str) -> None:
    assert mask_email(value) == masked
