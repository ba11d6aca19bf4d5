"""Who the client is: the socket peer, or what a trusted proxy forwarded (X-Forwarded-For,
RFC 7239 Forwarded), falling back to the peer on anything malformed."""

from __future__ import annotations

from typing import Any

import pytest

from iotcloud.api.client_address import (
    TrustedProxies,
    client_address,
    forwarded_elements,
    parse_node,
)
from iotcloud.config import ConfigError, Settings

PROXY = "10.0.0.5"
TRUSTED = TrustedProxies.parse("10.0.0.0/24, 2001:db8:1::/48, 192.0.2.254")


def scope(peer: str | None = PROXY, **headers: str | list[str]) -> dict[str, Any]:
    pairs = []
    for name, value in headers.items():
        for one in value if isinstance(value, list) else [value]:
            pairs.append((name.replace("_", "-").lower().encode(), one.encode("latin-1")))
    return {
        "type": "http",
        "client": None if peer is None else (peer, 51234),
        "headers": pairs,
    }


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_sends() -> None:
    request = scope("203.0.113.9", x_forwarded_for="198.51.100.1", forwarded="for=198.51.100.2")
    assert client_address(request, TrustedProxies()) == "203.0.113.9"
    assert client_address(request, TrustedProxies.parse("")) == "203.0.113.9"


def test_an_untrusted_peer_is_the_client_even_with_a_list_configured() -> None:
    request = scope("203.0.113.9", x_forwarded_for="198.51.100.1")
    assert client_address(request, TRUSTED) == "203.0.113.9"


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("198.51.100.1, 10.0.0.7", "198.51.100.1"),  # a second trusted proxy is skipped
        ("6.6.6.6, 198.51.100.1", "198.51.100.1"),  # what the client wrote itself is ignored
        ("garbage!!, 198.51.100.1", "198.51.100.1"),  # ... even when it is garbage
        ("198.51.100.1:4711", "198.51.100.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:DB8::1]:4711", "2001:db8::1"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("10.0.0.9, 10.0.0.7", "10.0.0.9"),  # every hop trusted: the request began at the first
        ("unknown", "unknown"),
        ("", PROXY),  # an empty header names nobody
    ],
)
def test_x_forwarded_for_from_a_trusted_proxy(header: str, client: str) -> None:
    assert client_address(scope(x_forwarded_for=header), TRUSTED) == client


def test_x_forwarded_for_lines_are_read_as_one_list_in_order() -> None:
    request = scope(x_forwarded_for=["6.6.6.6", "198.51.100.1, 10.0.0.7"])
    assert client_address(request, TRUSTED) == "198.51.100.1"


@pytest.mark.parametrize(
    "header",
    ["not-an-address", "198.51.100.1, 999.1.1.1", "198.51.100.1:port", "[2001:db8::1", "1.2.3"],
)
def test_malformed_x_forwarded_for_falls_back_to_the_peer(header: str) -> None:
    assert client_address(scope(x_forwarded_for=header), TRUSTED) == PROXY


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("for=198.51.100.1", "198.51.100.1"),
        ("For=198.51.100.1;proto=https;by=10.0.0.5", "198.51.100.1"),
        ('for="[2001:db8::1]:4711"', "2001:db8::1"),
        ('for="[2001:db8::1]"', "2001:db8::1"),
        ('for="198.51.100.1:4711"', "198.51.100.1"),
        ("for=198.51.100.1, for=10.0.0.7", "198.51.100.1"),
        ('for=6.6.6.6, for="[2001:db8:1::9]", for=198.51.100.1', "198.51.100.1"),
        ("for=198.51.100.1 , , for=10.0.0.7", "198.51.100.1"),  # empty list elements
        ("for=_hidden", "_hidden"),  # obfuscated: the proxy's name for its client
        ('for="_hidden:_port"', "_hidden"),
        ("for=unknown", "unknown"),
        ("for=UNKNOWN", "unknown"),
        ("proto=https;by=10.0.0.5", "unknown"),  # an element that names no client
        ('for=198.51.100.1;host="a;b,c"', "198.51.100.1"),  # separators inside quotes
    ],
)
def test_forwarded_from_a_trusted_proxy(header: str, client: str) -> None:
    assert client_address(scope(forwarded=header), TRUSTED) == client


@pytest.mark.parametrize(
    "header",
    [
        "for=2001:db8::1",  # IPv6 must be quoted and bracketed
        'for="2001:db8::1"',  # ... and bracketed
        'for="[2001:db8::1]:port"',
        "for=198.51.100.1;for=198.51.100.2",  # a parameter twice in one element
        'for="198.51.100.1',  # unterminated quote
        "for",
        "for=",
        "=198.51.100.1",
        "for=198.51.100.1 proto=http",
        "for=300.1.1.1",
        "for=-hidden",
        'for="\x01"',
    ],
)
def test_malformed_forwarded_falls_back_to_the_peer(header: str) -> None:
    assert client_address(scope(forwarded=header), TRUSTED) == PROXY


def test_an_unterminated_quote_written_by_the_client_swallows_the_proxy_s_entry() -> None:
    # the client's own field line, then the proxy's: the client's is malformed, but the walk
    # finds the client in the proxy's line before it needs to read the client's
    request = scope(forwarded=['for="6.6.6.6', "for=198.51.100.1"])
    assert client_address(request, TRUSTED) == "198.51.100.1"
    # on one line the quote swallows the rest: nothing can be trusted, so the peer it is
    assert client_address(scope(forwarded='for="6.6.6.6, for=198.51.100.1'), TRUSTED) == PROXY


def test_x_forwarded_for_wins_over_forwarded() -> None:
    request = scope(x_forwarded_for="198.51.100.1", forwarded="for=198.51.100.2")
    assert client_address(request, TRUSTED) == "198.51.100.1"


def test_the_peer_is_written_canonically_and_a_missing_peer_is_unknown() -> None:
    assert client_address(scope("::ffff:203.0.113.9"), TRUSTED) == "203.0.113.9"
    assert client_address(scope("2001:DB8:0::1"), TRUSTED) == "2001:db8::1"
    assert client_address(scope(None), TRUSTED) == "unknown"
    assert client_address(scope("not-an-ip"), TRUSTED) == "not-an-ip"


def test_an_ipv6_proxy_in_a_trusted_network() -> None:
    request = scope("2001:db8:1::5", forwarded='for="[2001:db8:2::1]:80"')
    assert client_address(request, TRUSTED) == "2001:db8:2::1"
    assert client_address(scope("2001:db8:2::5", x_forwarded_for="1.2.3.4"), TRUSTED) == (
        "2001:db8:2::5"
    )


def test_forwarded_elements_parse_quoted_strings_and_escapes() -> None:
    assert forwarded_elements('for=a1, for="x\\"y";Proto=https') == [
        {"for": "a1"},
        {"for": 'x"y', "proto": "https"},
    ]
    assert forwarded_elements(" , ") == []


def test_nodes() -> None:
    assert str(parse_node("192.0.2.1:80")) == "192.0.2.1"
    assert parse_node("_gazonk") == "_gazonk"
    with pytest.raises(ValueError, match="port"):
        parse_node("192.0.2.1:123456")


def test_trusted_proxies_parse_addresses_and_networks() -> None:
    trusted = TrustedProxies.parse("10.0.0.0/8, ::1")
    assert "10.200.0.1" in trusted
    assert "::1" in trusted
    assert "11.0.0.1" not in trusted
    assert "unknown" not in trusted
    assert not TrustedProxies.parse(" , ")
    with pytest.raises(ValueError, match=r"10\.0\.0\.1/8"):
        TrustedProxies.parse("10.0.0.1/8")


@pytest.mark.parametrize("value", ["example.org", "10.0.0.1/8", "10.0.0.0/33", "*"])
def test_settings_refuse_a_malformed_trusted_proxy(value: str) -> None:
    with pytest.raises(ConfigError, match="IOTCLOUD_TRUSTED_PROXIES"):
        Settings.load({"IOTCLOUD_TRUSTED_PROXIES": value})


def test_settings_take_trusted_proxies_and_the_shared_switch() -> None:
    settings = Settings.load(
        {"IOTCLOUD_TRUSTED_PROXIES": "10.0.0.0/8,::1", "IOTCLOUD_RATE_LIMIT_SHARED": "on"}
    )
    assert settings.trusted_proxies == "10.0.0.0/8,::1"
    assert settings.rate_limit_shared == "on"
    with pytest.raises(ConfigError, match="IOTCLOUD_RATE_LIMIT_SHARED"):
        Settings.load({"IOTCLOUD_RATE_LIMIT_SHARED": "sometimes"})
