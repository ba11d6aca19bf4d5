"""The seeded fuzz corpus: how many cases, from which seed, and the mutations they are made of.

``IOTCLOUD_FUZZ_SEED`` (an integer, `DEFAULT_SEED` when unset) seeds one `random.Random` per
module, so a run is repeated case for case (the ids the server hands out aside).
``IOTCLOUD_FUZZ_CASES`` is the number of cases in all (`DEFAULT_CASES` when unset), shared
between HTTP, the WebSocket, device MQTT and the MQTT transport's bytes by `SHARES`.

`Mutator` makes hostile values out of well-formed ones: wrong types, huge and negative numbers,
odd Unicode, NULs, long strings, nesting far deeper than any parser should follow, truncated
and trailing-garbage JSON, form bodies, bytes that are not UTF-8.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

DEFAULT_SEED: Final = 1_100_011
DEFAULT_CASES: Final = 6_500
SHARES: Final = {"http": 0.5, "ws": 0.21, "mqtt": 0.125, "mqtt-transport": 0.165}
DEEP_LEVELS: Final = (65, 200, 1_000, 5_000, 50_000)
_MARK: Final = "\u0001deep\u0001"


@dataclass(frozen=True)
class FuzzPlan:
    seed: int
    cases: int

    @classmethod
    def from_env(cls) -> FuzzPlan:
        seed = os.environ.get("IOTCLOUD_FUZZ_SEED", "")
        cases = os.environ.get("IOTCLOUD_FUZZ_CASES", "")
        return cls(int(seed) if seed else DEFAULT_SEED, int(cases) if cases else DEFAULT_CASES)

    def rng(self, kind: str) -> random.Random:
        return random.Random(f"{self.seed}/{kind}")

    def count(self, kind: str) -> int:
        return max(1, round(self.cases * SHARES[kind]))

    def reproduce(self) -> str:
        """The environment that repeats this run."""
        return f"IOTCLOUD_FUZZ_SEED={self.seed} IOTCLOUD_FUZZ_CASES={self.cases}"


def report(plan: FuzzPlan, kind: str, cases: int, failures: list[str], limit: int = 25) -> str:
    """The failure message of a fuzz test: the seed first, then the first ``limit`` failures."""
    shown = "\n".join(failures[:limit])
    more = f"\n... and {len(failures) - limit} more" if len(failures) > limit else ""
    return (
        f"{len(failures)} of {cases} {kind} fuzz cases failed; repeat with {plan.reproduce()}\n"
        f"{shown}{more}"
    )


def log_problems(log: str) -> list[str]:
    """What a server log tells of crashes and unexpected exceptions: its ERROR and CRITICAL
    records (with the line after, which names an exception asyncio reports), and tracebacks
    logged without one."""
    lines = log.splitlines()
    found = []
    for at, line in enumerate(lines):
        if " ERROR " in line or " CRITICAL " in line or "RecursionError" in line:
            after = lines[at + 1] if at + 1 < len(lines) else ""
            found.append(line + (f" | {after[:300]}" if after.startswith("future:") else ""))
        elif line.startswith("Traceback") and not any(
            " ERROR " in before for before in lines[max(0, at - 3) : at]
        ):
            found.append(line)
    return found


def log_flood(lines: list[str], cases: int, per_case: int = 8) -> str | None:
    """A problem when a corpus of ``cases`` made the server log more than ``per_case`` lines a
    case on average (a cheap way for a client to fill the disk), naming the commonest lines."""
    if len(lines) <= per_case * cases:
        return None
    shapes = Counter(re.sub(r"\d+", "N", line[24:])[:120] for line in lines)
    common = "; ".join(f"{n} x {shape!r}" for shape, n in shapes.most_common(3))
    return f"server log: {len(lines)} lines for {cases} cases: {common}"


STRINGS: Final[tuple[str, ...]] = (
    "",
    " ",
    "0",
    "-1",
    "null",
    "true",
    "NaN",
    "1e999",
    "0x10",
    " 12 ",
    "ü",
    "中文名字",
    "😀" * 8,
    "\u202eevil",
    "\x00",
    "a\x00b",
    "\x7f\x1b[2J",
    "\ud800",
    "%00",
    "%s%n%x",
    "{0}{1}",
    "../../../../etc/passwd",
    "' OR '1'='1' --",
    "<script>alert(1)</script>",
    "\\",
    '"',
    "a/b/#/+",
    "$SYS/broker",
    "A" * 300,
    "é" * 2_000,
)
NUMBERS: Final[tuple[int | float, ...]] = (
    0,
    -1,
    1,
    255,
    256,
    65_535,
    65_536,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    -(10**30),
    1.5,
    -0.0,
    1e308,
    5e-324,
)


class Mutator:
    """Hostile values and encodings, drawn from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- values ---------------------------------------------------------------------------------

    def text(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7:
            return rng.choice(STRINGS)
        if roll < 0.85:
            return "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 40)))
        if roll < 0.95:
            return "".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 20)))
        return "x" * rng.choice((1_024, 8_192, 70_000))

    def scalar(self) -> Any:
        roll = self.rng.random()
        if roll < 0.45:
            return self.text()
        if roll < 0.8:
            return self.rng.choice(NUMBERS)
        return self.rng.choice((True, False, None, [], {}))

    def value(self, depth: int = 0) -> Any:
        roll = self.rng.random()
        if depth >= 3 or roll < 0.6:
            return self.scalar()
        if roll < 0.8:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def key(self) -> str:
        return self.rng.choice(("a", "did", "attrs", "data", "cmd", "x" * 200, "", "é", "0"))

    def deep_text(self, levels: int | None = None) -> str:
        """JSON nested ``levels`` deep (a depth from `DEEP_LEVELS` when None)."""
        levels = levels or self.rng.choice(DEEP_LEVELS)
        if self.rng.random() < 0.5:
            return "[" * levels + "]" * levels
        return '{"a":' * levels + "1" + "}" * levels

    # -- JSON documents -------------------------------------------------------------------------

    def mutate(self, document: Any) -> Any:
        """``document`` (JSON-shaped) with one to three changes: a value replaced by a hostile
        one, a field removed or added, a container turned into something else."""
        result = copy.deepcopy(document)
        for _ in range(self.rng.randint(1, 3)):
            result = self._mutate_once(result)
        return result

    def _mutate_once(self, document: Any) -> Any:
        containers = list(_containers(document))
        if not containers or self.rng.random() < 0.08:
            return self.value()
        parent = self.rng.choice(containers)
        roll = self.rng.random()
        if isinstance(parent, dict):
            if parent and roll < 0.55:
                parent[self.rng.choice(list(parent))] = self.value()
            elif parent and roll < 0.75:
                del parent[self.rng.choice(list(parent))]
            else:
                parent[self.key()] = self.value()
        elif parent and roll < 0.6:
            parent[self.rng.randrange(len(parent))] = self.value()
        elif parent and roll < 0.75:
            del parent[self.rng.randrange(len(parent))]
        else:
            parent.append(self.value())
        return document

    def json_text(self, document: Any) -> str:
        """``document`` as JSON text, sometimes with one value replaced by deep nesting."""
        if self.rng.random() < 0.12:
            return self.deep_inside(document)
        return json.dumps(document)

    def deep_inside(self, document: Any) -> str:
        """``document`` as JSON text with one of its values nested far too deep (or the whole
        document, when it has no place for one)."""
        document = copy.deepcopy(document)
        containers = list(_containers(document))
        if not containers:
            return self.deep_text()
        parent = self.rng.choice(containers)
        if isinstance(parent, dict):
            parent[self.rng.choice([*parent, "deep"])] = _MARK
        else:
            parent.append(_MARK)
        return json.dumps(document).replace(json.dumps(_MARK), self.deep_text(), 1)

    def body(self, document: Any) -> tuple[bytes, str | None]:
        """A request body made from ``document`` and the Content-Type to send it with (None:
        no Content-Type)."""
        rng = self.rng
        roll = rng.random()
        text = self.json_text(self.mutate(document) if rng.random() < 0.8 else document)
        json_type = rng.choice(
            (
                "application/json",
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                FORM_TYPE,
                "multipart/form-data; boundary=xyz",
                "application/xml",
                "a/b/c; =;;",
                None,
            )
        )
        if roll < 0.55:
            return text.encode("utf-8", "surrogatepass"), json_type
        if roll < 0.62:
            return text[: rng.randrange(max(1, len(text)))].encode(errors="replace"), json_type
        if roll < 0.67:
            return (text + rng.choice(("}", "]", ",", "garbage", "\x00"))).encode(), json_type
        if roll < 0.75:
            return self.form(document).encode(), rng.choice((FORM_TYPE, "application/json"))
        if roll < 0.8:
            return rng.randbytes(rng.randint(0, 300)), json_type
        if roll < 0.84:
            return b"\xef\xbb\xbf" + text.encode(), json_type
        if roll < 0.87:
            return text.encode("utf-16"), json_type
        if roll < 0.9:
            return b"", json_type
        if roll < 0.93:
            return rng.choice((b"null", b"[]", b"1", b'"x"', b"NaN", b"-Infinity")), json_type
        if roll < 0.96:
            return self.deep_text().encode(), json_type
        if roll < 0.98:
            return _duplicate_keys(text).encode(), json_type
        return json.dumps({"x": "y" * rng.choice((200_000, 300_000))}).encode(), json_type

    def form(self, document: Any) -> str:
        """``document``'s top-level fields form-encoded, values mutated now and then."""
        fields = document if isinstance(document, dict) else {"data": document}
        pairs = []
        for name, value in fields.items():
            if self.rng.random() < 0.3:
                value = self.scalar()
            pairs.append((name, value if isinstance(value, str) else json.dumps(value)))
        if self.rng.random() < 0.3:
            pairs.append((self.key(), self.text()))
        return urlencode(pairs, encoding="utf-8", errors="surrogatepass")

    def header_value(self) -> str | bytes:
        """A hostile header value that an HTTP client can still send (no control characters,
        no surrounding white space); non-ASCII as its UTF-8 bytes."""
        value = "".join(c for c in self.text() if _sendable(c)).strip() or "x"
        if value.isascii():
            return value[:8_000]
        return value.encode()[:8_000]


def _sendable(c: str) -> bool:
    code = ord(c)
    return c == "\t" or 0x20 <= code < 0x7F or (code >= 0x80 and not 0xD800 <= code < 0xE000)


FORM_TYPE: Final = "application/x-www-form-urlencoded"


def _containers(document: Any) -> list[Any]:
    """Every dict and list in ``document``, itself included, outermost first."""
    found: list[Any] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def _duplicate_keys(text: str) -> str:
    """An object text with its first member repeated with another value."""
    if text.startswith("{") and ":" in text:
        return '{"a": 1, "a": [2], ' + text[1:]
    return text
