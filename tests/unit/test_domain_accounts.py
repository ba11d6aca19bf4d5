from __future__ import annotations

import pytest

from iotcloud.domain import accounts as rules


@pytest.mark.parametrize("name", ["bob", "Bob_1", "a", "x" * 64, "名字"])
def test_valid_usernames(name: str) -> None:
    assert rules.check_username(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "1 to 64"),
        ("x" * 65, "1 to 64"),
        ("a b", "white space"),
        ("a@b", "'@'"),
        ("13800138000", "phone"),
        ("+4915112345", "phone"),
    ],
)
def test_usernames_that_could_be_mistaken_at_login_are_refused(name: str, reason: str) -> None:
    with pytest.raises(rules.FieldInvalid, match=reason) as err:
        rules.check_username(name)
    assert err.value.field == "username"


def test_login_identity_kinds_do_not_overlap() -> None:
    assert rules.login_identity_kind("Bob@Example.com") == "email"
    assert rules.login_identity_kind("+8613800138000") == "phone"
    assert rules.login_identity_kind("bob") == "username"


def test_email_is_lower_cased_and_checked() -> None:
    assert rules.check_email("Bob@Example.COM") == "bob@example.com"
    for bad in ("bob", "bob@", "@x.org", "a b@x.org", "a@x", "x" * 250 + "@x.org"):
        with pytest.raises(rules.FieldInvalid):
            rules.check_email(bad)


@pytest.mark.parametrize("value", ["2000-02-29", "02-29", "12-31", "1990-01-01"])
def test_birthdays_that_exist(value: str) -> None:
    assert rules.check_birthday(value) == value


@pytest.mark.parametrize("value", ["2023-02-29", "02-30", "13-01", "1990/01/01", "1-1"])
def test_birthdays_that_do_not_exist(value: str) -> None:
    with pytest.raises(rules.FieldInvalid, match="birthday"):
        rules.check_birthday(value)


def test_password_length_bounds() -> None:
    assert rules.check_password("123456", 6) == "123456"
    with pytest.raises(rules.FieldInvalid, match="6 to 128"):
        rules.check_password("12345", 6)
    with pytest.raises(rules.FieldInvalid, match="new_pwd"):
        rules.check_password("x" * 129, 6, "new_pwd")


def test_mask_hides_the_middle() -> None:
    assert rules.mask("18812345678") == "18*******78"
    assert rules.mask("ab") == "**"
    assert rules.mask(None) is None


def test_domain_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, iotcloud.domain.accounts, iotcloud.domain.clock;"
        "bad = [m for m in ('litestar','sqlalchemy','amqtt','paho','aiomqtt','httpx')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
