"""Limits on an HTTP request head, enforced in the connection before the app sees the request.

uvicorn's httptools protocol reads a request head of any size: a 16 MiB header line is
buffered whole and the request answered. `LimitedHttpToolsProtocol` is that protocol with three
limits, each answered once, in the dialect's error shape, and the connection then closed:

- the request target (URL) longer than ``http_max_url_bytes`` -> 414;
- the head (request line and header fields) larger than ``http_max_head_bytes`` -> 431;
- more than ``http_max_headers`` header fields -> 431.

The parser (httptools) hands over the URL in fragments as they arrive, but buffers a header
field until it is complete, so a single endless header never reaches a callback. Two counts
therefore run per message: what the callbacks delivered (exact, checked on every URL fragment
and header), and the raw bytes received while the head is incomplete (checked after every read,
which bounds what the parser buffers to the limit plus one read).

A client sends its whole request before it reads the answer; closing at once, with its bytes
unread, would make the kernel reset the connection and the client would see a reset instead
of the answer. So after a refusal the connection ends its sending side after the answer, reads
and drops what still arrives, without parsing it, and closes when the client does, or after
`LINGER_SECONDS` at the latest.

Malformed HTTP (uvicorn's text/plain 400) is answered in the same JSON shape.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from iotcloud.api.gizwits.wire import error_body
from iotcloud.api.tencent.errors import PATH_PREFIX as TENCENT_PREFIX
from iotcloud.api.tencent.wire import Envelope, new_request_id
from iotcloud.api.tencent.wire import error_body as tencent_error_body
from iotcloud.config import Settings
from iotcloud.errors import FormInvalid

__all__ = ["LINGER_SECONDS", "HeadLimits", "LimitedHttpToolsProtocol", "http_protocol_class"]

log = logging.getLogger(__name__)

LINGER_SECONDS: Final = 2.0
"""How long a refused connection keeps reading (and dropping) the rest of the request."""
# bytes of a header field beyond its name and value: ": " and CRLF
_FIELD_OVERHEAD: Final = 4
# bytes of the request line beyond its target: the longest method, spaces, version and CRLF
_REQUEST_LINE_OVERHEAD: Final = len(b"OPTIONS  HTTP/1.1\r\n")


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The limits of one request head (all positive)."""

    max_url_bytes: int = 8 * 1024
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(
            settings.http_max_url_bytes, settings.http_max_head_bytes, settings.http_max_headers
        )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head over a limit."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_URL_START: Final = 64


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol refusing request heads over `limits` (see the module).

    Subclass it with other class attributes, as `http_protocol_class` does, to change the
    limits or the Tencent envelope; uvicorn builds one instance per connection.
    """

    limits: ClassVar[HeadLimits] = HeadLimits()
    tencent_envelope: ClassVar[str] = "response"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_pending = True  # the next bytes belong to a request head
        self._head_received = 0  # raw bytes received while the head was pending
        self._head_parsed = 0  # bytes of the head the callbacks delivered
        self._url_bytes = 0
        self._url_start = b""  # enough of the URL to tell the dialect of a refused request
        self._fields = 0
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; drop the rest of the request unread
        self._unset_keepalive_if_required()
        if self._head_pending:
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__ or exc  # what a callback raised, else the parser's error
            if isinstance(cause, _Refused):
                self._refuse(cause.status, cause.detail)
            else:
                self._refuse(400, f"request: not valid HTTP/1.1 ({cause})")
            return
        if self._head_pending and self._head_received > self.limits.max_head_bytes:
            self._refuse(431, self._head_too_large())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True
        self._head_parsed = _REQUEST_LINE_OVERHEAD
        self._url_bytes = 0
        self._url_start = b""
        self._fields = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if len(self._url_start) < _URL_START:
            self._url_start = (self._url_start + url)[:_URL_START]
        if self._url_bytes > self.limits.max_url_bytes:
            raise _Refused(414, f"request line: URL longer than {self.limits.max_url_bytes} bytes")
        self._head_parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_headers:
            raise _Refused(431, f"request head: more than {self.limits.max_headers} header fields")
        self._head_parsed += len(name) + len(value) + _FIELD_OVERHEAD
        if self._head_parsed > self.limits.max_head_bytes:
            raise _Refused(431, self._head_too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_received = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_pending = True
        super().on_message_complete()

    # -- refusing -----------------------------------------------------------------------------

    def _head_too_large(self) -> str:
        return f"request head: larger than {self.limits.max_head_bytes} bytes"

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with ``detail`` in the dialect's error shape, read and drop what
        else arrives for `LINGER_SECONDS`, then close."""
        self._refused = True
        # debug, like the access log (off): a client must not fill the log with refusals
        log.debug("%s: refused a request: %s (%d)", self._peer(), detail, status)
        body = self._error_body(detail)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ",
            str(len(body)).encode("ascii"),
            b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        if self.transport.can_write_eof():  # not over TLS
            self.transport.write_eof()  # the client reads the answer to its end at once
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _error_body(self, detail: str) -> bytes:
        path = self._url_start.split(b"?", 1)[0]
        if path == TENCENT_PREFIX.encode() or path.startswith(TENCENT_PREFIX.encode() + b"/"):
            envelope: Envelope = "sdk" if self.tencent_envelope == "sdk" else "response"
            code = "InvalidParameterValue"
            content = tencent_error_body(new_request_id(), code, detail, envelope)
        else:
            content = error_body(FormInvalid(detail))
        return msgspec.json.encode(content)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


def http_protocol_class(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``uvicorn.Config(http=...)``) for every listener of
    a server with ``settings``."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "limits": HeadLimits.from_settings(settings),
            "tencent_envelope": settings.tencent_envelope,
            "__module__": __name__,
        },
    )
