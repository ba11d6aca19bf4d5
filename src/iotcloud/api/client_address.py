"""The client's address behind trusted proxies: one rule for throttling, logging and address checks.

A request's socket peer is the client unless the peer is one of ``IOTCLOUD_TRUSTED_PROXIES``
(addresses or CIDR networks; empty by default, so no header is believed). From a trusted peer,
the proxies' own record of the hops is read, walking from the right (the hop nearest to us) and
skipping every hop that is itself a trusted proxy; the first one that is not is the client:

* ``X-Forwarded-For`` (what nginx, HAProxy, Envoy and cloud load balancers append) when present,
  else ``Forwarded`` (RFC 7239, its ``for=`` parameter). Only one header is read: a proxy that
  writes ``Forwarded`` must drop an ``X-Forwarded-For`` sent by the client, or the client could
  choose its address (see ``docs/decisions.md``).
* Entries left of the client are the client's own words and are never parsed: garbage there
  changes nothing. An entry the walk has to read that is malformed (or a ``Forwarded`` field
  line that does not parse) makes the whole answer fall back to the socket peer, never an error.
* RFC 7239's ``unknown`` and obfuscated identifiers (``_hidden``) are answers too: the proxy
  says who its client was without an address, so the result is that identifier (``unknown``
  lower-cased, an obfuscated one as given). Code that checks addresses must treat a result that
  is not an IP address as matching no network; a rate limit keys on it like on an address.
* When every hop is a trusted proxy the request began at one of them: the left-most is the answer.

Addresses come out in one canonical text form (``ipaddress``'s, an IPv4-mapped IPv6 address as
its IPv4 address), so one client is one bucket however a proxy spells it. uvicorn's own
``X-Forwarded-For`` handling is switched off (``proxy_headers=False``) so that this is the only
rule that applies.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Node = IPAddress | str
"""One hop: an address, or ``unknown`` / an obfuscated identifier."""

UNKNOWN = "unknown"
_FORWARDED = b"forwarded"
_X_FORWARDED_FOR = b"x-forwarded-for"
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+\Z")
_PORT = re.compile(r"(?:[0-9]{1,5}|_[A-Za-z0-9._-]+)\Z")
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose forwarding headers are believed: addresses and networks (an address
    is a one-address network). Empty trusts nobody."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """From ``IOTCLOUD_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks
        (``10.0.0.0/8``, ``2001:db8::/32``). Raises ``ValueError`` naming a bad entry, also a
        network with host bits set (``10.0.0.1/8``: probably a typo)."""
        networks = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network ({exc})") from exc
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, str):
            parsed = _address(address)
            if parsed is None:
                return False
            address = parsed
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return _trusts(self.networks, address)


@functools.lru_cache(maxsize=16)
def trusted_proxies(setting: str) -> TrustedProxies:
    """`TrustedProxies.parse` of ``IOTCLOUD_TRUSTED_PROXIES``, parsed once per value: code
    that has the settings calls ``client_address(scope, trusted_proxies(settings.
    trusted_proxies))`` on every request."""
    return TrustedProxies.parse(setting)


def client_address(scope: Any, trusted: TrustedProxies) -> str:
    """The address of the client that made the request of this ASGI ``scope`` (HTTP or
    WebSocket), by the rule of this module. Never raises: a malformed forwarding header falls
    back to the socket peer; a scope without a peer (a Unix socket) answers ``unknown``."""
    client = scope.get("client")
    if not client:
        return UNKNOWN
    peer_text = str(client[0])
    peer = _address(peer_text)
    if peer is None:
        return peer_text
    if not trusted or not _trusts(trusted.networks, peer):
        return str(peer)
    headers: Sequence[tuple[bytes, bytes]] = scope.get("headers") or ()
    forwarded_for = [value for name, value in headers if name == _X_FORWARDED_FOR]
    if forwarded_for:
        hops = _x_forwarded_for_hops(forwarded_for)
    else:
        forwarded = [value for name, value in headers if name == _FORWARDED]
        if not forwarded:
            return str(peer)
        hops = _forwarded_hops(forwarded)
    nearest = peer
    try:
        for node in hops:
            if isinstance(node, str):
                return node
            if not _trusts(trusted.networks, node):
                return str(node)
            nearest = node
    except ValueError:
        return str(peer)
    return str(nearest)


def parse_node(value: str) -> Node:
    """One RFC 7239 node (``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]:4711``, ``unknown``,
    ``_hidden:_port``) without its quotes. Raises ``ValueError`` if it is none of them."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"unclosed bracket in {value!r}")
        inner, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and _PORT.match(rest[1:])):
            raise ValueError(f"bad port in {value!r}")
        return _canonical(ipaddress.IPv6Address(inner))
    name, colon, port = value.partition(":")
    if colon and not _PORT.match(port):
        raise ValueError(f"bad port in {value!r}")
    if name.lower() == UNKNOWN:
        return UNKNOWN
    if _OBFUSCATED.match(name):
        return name
    return _canonical(ipaddress.IPv4Address(name))


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """The elements of one ``Forwarded`` field value (RFC 7239 section 4), left to right, each
    as its parameters (names lower-cased, quoted values unquoted). Empty list elements are
    skipped. Raises ``ValueError`` on a syntax error or a parameter given twice in an element."""
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    i, n = 0, len(value)
    while True:
        i = _skip_space(value, i)
        if i < n and value[i] not in ",;":
            start = i
            while i < n and value[i] in _TCHAR:
                i += 1
            name = value[start:i].lower()
            if not name or i >= n or value[i] != "=":
                raise ValueError(f"expected name=value at {start} in {value!r}")
            i += 1
            if i < n and value[i] == '"':
                parameter, i = _quoted_string(value, i)
            else:
                start = i
                while i < n and value[i] in _TCHAR:
                    i += 1
                parameter = value[start:i]
                if not parameter:
                    raise ValueError(f"empty value for {name!r} in {value!r}")
            if name in pairs:
                raise ValueError(f"{name!r} given twice in one element of {value!r}")
            pairs[name] = parameter
            i = _skip_space(value, i)
        if i >= n:
            break
        separator = value[i]
        i += 1
        if separator == ",":
            if pairs:
                elements.append(pairs)
            pairs = {}
        elif separator != ";":
            raise ValueError(f"unexpected {separator!r} in {value!r}")
    if pairs:
        elements.append(pairs)
    return elements


def _forwarded_hops(lines: Iterable[bytes]) -> Iterator[Node]:
    """The ``for=`` nodes of every ``Forwarded`` line, right to left. A line is parsed only
    when the walk reaches it; an element without ``for`` is a hop the proxy did not name."""
    for line in reversed(list(lines)):
        for element in reversed(forwarded_elements(line.decode("latin-1"))):
            node = element.get("for")
            yield UNKNOWN if node is None else parse_node(node)


def _x_forwarded_for_hops(lines: Iterable[bytes]) -> Iterator[Node]:
    """The entries of every ``X-Forwarded-For`` line, right to left, each parsed only when the
    walk reaches it. Entries may carry a port (``192.0.2.1:80``, ``[2001:db8::1]:80``); a bare
    IPv6 address is accepted too, as proxies write it; empty entries are skipped."""
    for line in reversed(list(lines)):
        for raw in reversed(line.decode("latin-1").split(",")):
            entry = raw.strip()
            if not entry:
                continue
            if entry.count(":") > 1 and not entry.startswith("["):
                yield _canonical(ipaddress.IPv6Address(entry))
            else:
                yield parse_node(entry)


def _quoted_string(value: str, i: int) -> tuple[str, int]:
    """The unquoted text of the quoted-string starting at ``value[i]`` and the index after it."""
    out: list[str] = []
    i += 1
    while i < len(value):
        char = value[i]
        if char == '"':
            return "".join(out), i + 1
        if char == "\\":
            i += 1
            if i >= len(value):
                break
            char = value[i]
        elif (char < " " and char != "\t") or char == "\x7f":
            raise ValueError(f"control character in {value!r}")
        out.append(char)
        i += 1
    raise ValueError(f"unterminated quoted string in {value!r}")


def _skip_space(value: str, i: int) -> int:
    while i < len(value) and value[i] in " \t":
        i += 1
    return i


@functools.lru_cache(maxsize=65_536)
def _address(text: str) -> IPAddress | None:
    """``text`` as a canonical address (IPv4-mapped IPv6 as IPv4), None if it is not one."""
    try:
        return _canonical(ipaddress.ip_address(text))
    except ValueError:
        return None


def _canonical(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusts(networks: tuple[IPNetwork, ...], address: IPAddress) -> bool:
    return any(address in network for network in networks)
