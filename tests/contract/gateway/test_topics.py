"""The device topic ACL and topic matching, as pure functions (no broker needed).

Matching is checked against `matching_filters`, which enumerates every filter a topic matches:
a second, independent statement of the same MQTT rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotcloud.gateway.broker import (
    DevicePrincipal,
    filter_prefix,
    is_topic_filter,
    is_topic_name,
    may_publish,
    may_subscribe,
    topic_matches,
    topic_prefixes,
)

DID = "gKufzxZwYeyd3Skbsb6mza"
OTHER = "hLvgayAxZfze4Tlctc7nzb"
PK = "6f3074fe43894547a4f1314bd7e3ae0b"
DEVICE = DevicePrincipal(did=DID, product_key=PK)


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        (f"dev2app/{DID}", True),
        (f"dev2app/{DID}/phone-1", True),
        ("cli2ser_req", True),
        (f"dev2app/{DID}/", False),
        (f"dev2app/{DID}/a/b", False),
        (f"dev2app/{OTHER}", False),
        (f"dev2app/{OTHER}/{DID}", False),
        (f"app2dev/{DID}/cloud", False),
        (f"ser2cli_res/{DID}", False),
        (f"ser2cli_noti/{PK}", False),
        ("dev2app", False),
        (f"dev2app/{DID}/+", False),
        ("$SYS/x", False),
        ("", False),
        ("cli2ser_req/x", False),
    ],
)
def test_device_publishes_only_its_own_reports(topic: str, allowed: bool) -> None:
    assert may_publish(DEVICE, topic) is allowed


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        (f"ser2cli_noti/{PK}", True),
        (f"ser2cli_res/{DID}", True),
        (f"app2dev/{DID}/#", True),
        (f"app2dev/{DID}/+", True),
        (f"app2dev/{DID}", True),
        (f"app2dev/{DID}/phone-1", True),
        (f"app2dev/{DID}/+/#", True),
        ("#", False),
        ("+", False),
        ("+/#", False),
        (f"+/{DID}/#", False),
        ("app2dev/#", False),
        ("app2dev/+/#", False),
        (f"app2dev/{OTHER}/#", False),
        (f"app2dev/{DID}#", False),
        (f"app2dev/{DID}/#/x", False),
        (f"ser2cli_res/{OTHER}", False),
        (f"ser2cli_res/{DID}/#", False),
        ("ser2cli_res/+", False),
        ("ser2cli_noti/+", False),
        ("ser2cli_noti/0123456789abcdef0123456789abcdef", False),
        (f"dev2app/{DID}", False),
        ("cli2ser_req", False),
        ("$SYS/#", False),
        ("", False),
    ],
)
def test_device_subscribes_only_to_its_own_topics(topic_filter: str, allowed: bool) -> None:
    assert may_subscribe(DEVICE, topic_filter) is allowed


@pytest.mark.parametrize("did", ["", "a/b", "+", "#"])
def test_a_principal_that_cannot_be_a_topic_level_may_do_nothing(did: str) -> None:
    principal = DevicePrincipal(did=did, product_key=PK)
    assert not may_publish(principal, f"dev2app/{did}")
    assert not may_subscribe(principal, f"app2dev/{did}/#")
    assert not may_subscribe(DevicePrincipal(DID, ""), "ser2cli_noti/")


def matching_filters(topic: str, *, max_levels: int = 8) -> list[str] | None:
    """Every subscription filter that matches ``topic``, or None if it has over ``max_levels``.

    MQTT matching: ``+`` is one level, a final ``#`` any number of levels including none (so
    ``a/#`` matches ``a``), and filters starting with a wildcard do not match ``$`` topics. There
    are 2**L + 2**(L+1) - 1 of them for L levels, hence the limit.
    """
    levels = topic.split("/")
    if len(levels) > max_levels:
        return None
    wildcard_first = not topic.startswith("$")
    found = ["#"] if wildcard_first else []
    prefixes = [levels[0], "+"] if wildcard_first else [levels[0]]
    for level in levels[1:]:
        found += [f"{prefix}/#" for prefix in prefixes]
        prefixes = [
            f"{prefix}/{alternative}" for prefix in prefixes for alternative in (level, "+")
        ]
    return found + prefixes + [f"{prefix}/#" for prefix in prefixes]


_LEVEL = st.sampled_from(["a", "b", ""])
_TOPICS = st.builds(
    lambda first, rest: "/".join([first, *rest]),
    st.sampled_from(["a", "b", "", "$s"]),
    st.lists(_LEVEL, max_size=3),
)
_FILTERS = st.builds(
    lambda first, rest, hash_end: "/".join([first, *rest] + (["#"] if hash_end else [])),
    st.sampled_from(["a", "b", "", "+", "$s"]),
    st.lists(st.sampled_from(["a", "b", "", "+"]), max_size=4),
    st.booleans(),
).filter(bool) | st.just("#")


@given(topic=_TOPICS, topic_filter=_FILTERS)
def test_matching_and_the_subscription_index_agree_with_the_enumeration(
    topic: str, topic_filter: str
) -> None:
    """`topic_matches` (what the transport routes by) agrees with `matching_filters` (every
    filter a topic matches, enumerated), and a matching filter is always found under one of the
    topic's index keys."""
    assert is_topic_filter(topic_filter)
    candidates = matching_filters(topic)
    assert candidates is not None
    matches = topic_matches(topic_filter, topic)
    assert (topic_filter in candidates) is matches
    if matches:
        assert filter_prefix(topic_filter) in topic_prefixes(topic)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("#", "$SYS/monitor", False),
        ("+/monitor", "$SYS/monitor", False),
        ("$SYS/#", "$SYS/monitor", True),
        ("$thing/down/property/P/N", "$thing/down/property/P/N", True),
        ("$thing/down/property/P/N", "$thing/down/property/P/M", False),
    ],
)
def test_topic_matching_follows_the_mqtt_rules(
    topic_filter: str, topic: str, matches: bool
) -> None:
    assert topic_matches(topic_filter, topic) is matches


def test_matching_filters_give_up_on_deep_topics() -> None:
    assert matching_filters("/".join("abcdefgh")) is not None
    assert matching_filters("/".join("abcdefghi")) is None


@pytest.mark.parametrize(
    ("text", "name", "filter_"),
    [
        ("a/b", True, True),
        ("a/+", False, True),
        ("a/#", False, True),
        ("a/#/b", False, False),
        ("a+/b", False, False),
        ("$SYS/x", False, True),
        ("", False, False),
        ("a\0b", False, False),
    ],
)
def test_topic_name_and_filter_validity(text: str, name: bool, filter_: bool) -> None:
    assert is_topic_name(text) is name
    assert is_topic_filter(text) is filter_
