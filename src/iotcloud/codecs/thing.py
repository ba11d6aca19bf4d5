"""The ``$thing`` topics and JSON message shapes of data-template (Tencent) devices.

Pure codec of `shared/spec/tencent.md` §2.2-2.3: which topic a device message came on, what
the message asks (`ThingMessage`), and the cloud's messages and replies. Values inside
``params`` are checked against the product's data template elsewhere (`codecs.template`); this
module checks only the envelope.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from iotcloud.codecs.errors import CodecError
from iotcloud.codecs.jsonlimits import JsonMalformed, JsonRejected, decode_json

THING_KINDS: Final = ("property", "event", "action", "service")
"""The topic kinds a data-template device uses (``$thing/{up,down}/{kind}/{PID}/{NAME}``)."""

Direction = Literal["up", "down"]

REPLY_OK: Final = 0
BAD_REQUEST: Final = 400
"""The code of a reply to a message whose envelope or values are wrong (with a reason)."""
UNKNOWN_METHOD: Final = 404
"""The code of a reply to a method the topic does not know (where the topic has a reply)."""
SERVER_ERROR: Final = 500


class ThingMessageError(CodecError):
    """A ``$thing`` message is not a JSON object of the expected shape."""


@dataclass(frozen=True, slots=True)
class ThingTopic:
    direction: Direction
    kind: str
    product_id: str
    device_name: str


def thing_topic(direction: Direction, kind: str, product_id: str, device_name: str) -> str:
    return f"$thing/{direction}/{kind}/{product_id}/{device_name}"


def parse_thing_topic(topic: str) -> ThingTopic | None:
    """The parts of a ``$thing/{up|down}/{kind}/{PID}/{NAME}`` topic, None for anything else
    (including wildcards and extra levels)."""
    levels = topic.split("/")
    if len(levels) != 5 or levels[0] != "$thing" or levels[2] not in THING_KINDS:
        return None
    direction = levels[1]
    if direction not in ("up", "down") or not levels[3] or not levels[4]:
        return None
    if any(c in "+#\0" for c in levels[3] + levels[4]):
        return None
    return ThingTopic(direction, levels[2], levels[3], levels[4])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ThingMessage:
    """A device message: ``method`` ("" when absent: a ``control_reply`` may omit it),
    ``client_token`` ("" when absent) and the whole decoded object in ``body``."""

    method: str
    client_token: str
    body: dict[str, Any]

    def params(self) -> dict[str, Any]:
        """The ``params`` object; raises `ThingMessageError` when missing or not an object."""
        params = self.body.get("params")
        if not isinstance(params, dict):
            raise ThingMessageError("params: must be a JSON object")
        return params

    def code(self) -> int:
        """The reply's ``code`` (an integer; a missing code reads as 0, any other type fails)."""
        code = self.body.get("code", REPLY_OK)
        if isinstance(code, bool) or not isinstance(code, int):
            raise ThingMessageError("code: must be an integer")
        return code

    def status(self) -> str:
        """The reply's ``status`` text, without the NUL padding some SDKs send."""
        status = self.body.get("status", "")
        return str(status).strip("\0").strip() if status is not None else ""


def decode_message(payload: bytes) -> ThingMessage:
    """Decode a device's JSON message; raises `ThingMessageError` naming the problem (not JSON,
    nested deeper than `decode_json` allows, not an object of the expected shape)."""
    try:
        body = decode_json(payload)
    except JsonMalformed:
        # the standard parser has the last word (NaN, Infinity) and its error messages; the
        # depth is checked already, so it cannot recurse too deeply either
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ThingMessageError(f"not JSON: {exc}") from exc
    except JsonRejected as exc:
        raise ThingMessageError(str(exc)) from exc
    if not isinstance(body, dict):
        raise ThingMessageError("not a JSON object")
    method = body.get("method", "")
    if not isinstance(method, str):
        raise ThingMessageError("method: must be a string")
    token = body.get("clientToken", "")
    if isinstance(token, bool) or not isinstance(token, str | int):
        raise ThingMessageError("clientToken: must be a string")
    return ThingMessage(method, str(token), body)


def encode(message: dict[str, Any]) -> bytes:
    """A cloud message as compact UTF-8 JSON."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def reply(method: str, client_token: str, code: int, status: str, **extra: Any) -> bytes:
    """A ``*_reply`` to a device message (``status`` "success" by convention for code 0)."""
    return encode(
        {"method": method, "clientToken": client_token, "code": code, "status": status, **extra}
    )


def control(client_token: str, params: dict[str, Any], timestamp: int) -> bytes:
    """The cloud's ``control`` of properties, on ``$thing/down/property``."""
    return encode(
        {"method": "control", "clientToken": client_token, "timestamp": timestamp, "params": params}
    )


def action(client_token: str, action_id: str, params: dict[str, Any], timestamp: int) -> bytes:
    """The cloud's ``action`` call, on ``$thing/down/action``."""
    return encode(
        {
            "method": "action",
            "clientToken": client_token,
            "actionId": action_id,
            "timestamp": timestamp,
            "params": params,
        }
    )
