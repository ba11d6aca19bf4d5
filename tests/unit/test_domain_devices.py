"""Device and product identity rules: shapes GAgent firmware and the Gizwits tools rely on."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from iotcloud.domain import devices as rules
from iotcloud.domain.accounts import FieldInvalid


def test_generated_dids_are_22_letters_or_digits_and_do_not_repeat() -> None:
    dids = {rules.new_did() for _ in range(2000)}
    assert len(dids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9]{22}", did) for did in dids)
    # all three character classes show up: the alphabet is the full 62 characters
    joined = "".join(dids)
    assert re.search(r"[a-z]", joined)
    assert re.search(r"[A-Z]", joined)
    assert re.search(r"[0-9]", joined)


def test_generated_passcodes_are_10_upper_case_letters() -> None:
    codes = {rules.new_passcode() for _ in range(500)}
    assert len(codes) == 500
    assert all(re.fullmatch(r"[A-Z]{10}", code) for code in codes)
    assert all(rules.check_passcode(code) == code for code in codes)


def test_generated_product_keys_and_secrets_are_32_lower_case_hex() -> None:
    for value in (rules.new_product_key(), rules.new_product_secret()):
        assert re.fullmatch(r"[0-9a-f]{32}", value)
    assert rules.new_product_key() != rules.new_product_key()


@pytest.mark.parametrize(
    "given",
    [
        "accf2350d446",
        "ACCF2350D446",
        "ac:cf:23:50:d4:46",
        "AC:CF:23:50:D4:46",
        "ac-cf-23-50-d4-46",
        "AC-CF-23-50-d4-46",
        " accf2350d446 ",
    ],
)
def test_mac_spellings_normalise_to_12_lower_case_hex(given: str) -> None:
    assert rules.check_mac(given) == "accf2350d446"


@pytest.mark.parametrize(
    "given",
    [
        "",
        "accf2350d44",  # 11 digits
        "accf2350d4466",  # 13 digits
        "accf2350d44g",  # not hex
        "ac:cf-23:50:d4:46",  # mixed separators
        "ac:cf:23:50:d4",  # five pairs
        "a:cc:f2:35:0d:44:6",  # misplaced separators
        "ac.cf.23.50.d4.46",
        "1122334455667788",  # EUI-64, not a Wi-Fi MAC
    ],
)
def test_bad_macs_are_refused_naming_the_field(given: str) -> None:
    with pytest.raises(FieldInvalid, match=r"^mac: "):
        rules.check_mac(given)


@pytest.mark.parametrize("given", ["JHHOOIWJBA", "gokit", "123456", "A", "x" * 32])
def test_device_chosen_passcodes_are_kept_as_given(given: str) -> None:
    assert rules.check_passcode(given) == given


@pytest.mark.parametrize("given", ["", "x" * 33, "has space", "tab\there", "é"])
def test_bad_passcodes_are_refused(given: str) -> None:
    with pytest.raises(FieldInvalid, match=r"^passcode: "):
        rules.check_passcode(given)


def test_product_keys_are_lower_cased_and_must_be_32_hex() -> None:
    assert rules.check_product_key("DE9E8D18D9394CCE9081B25A531E552B") == (
        "de9e8d18d9394cce9081b25a531e552b"
    )
    for bad in ("", "de9e8d18", "de9e8d18d9394cce9081b25a531e552bx", "z" * 32):
        with pytest.raises(FieldInvalid, match=r"^product_key: "):
            rules.check_product_key(bad)
    with pytest.raises(FieldInvalid, match=r"^product_secret: "):
        rules.check_product_secret("not-a-secret")


def test_dids_are_checked_case_sensitively() -> None:
    assert rules.check_did("gKufzxZwYeyd3Skbsb6mza") == "gKufzxZwYeyd3Skbsb6mza"
    for bad in ("gKufzxZwYeyd3Skbsb6mz", "gKufzxZwYeyd3Skbsb6mza1", "gKufzxZwYeyd3Skbsb6mz-"):
        with pytest.raises(FieldInvalid, match=r"^did: "):
            rules.check_did(bad)


PROBE = """
import json, sys
before = set(sys.modules)
import iotcloud.domain.devices
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_device_rules_import_only_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    top_level = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert top_level - sys.stdlib_module_names <= {"iotcloud"}
