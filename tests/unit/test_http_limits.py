"""The HTTP protocol's head limits, driven byte by byte: what the parser is fed before a
refusal, what the client is answered, and that requests within the limits are served."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from iotcloud.api.http_limits import HeadLimits, LimitedHttpToolsProtocol, http_protocol_class
from iotcloud.config import Settings

CHUNK = 64 * 1024


class Transport(asyncio.Transport):
    """The socket side of one connection: keeps what the server writes."""

    def __init__(self, *, tls: bool = False) -> None:
        super().__init__()
        self.written = bytearray()
        self.eof_written = False
        self.closed = False
        self.tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}
        return info.get(name, default)

    def write(self, data: Any) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return not self.tls

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class CountingParser:
    """The protocol's parser, counting the bytes it is fed."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({"headers": len(scope["headers"]), "path": scope["path"]}).encode()
    length = str(len(body)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
    )
    await send({"type": "http.response.body", "body": body})


def connect(
    limits: HeadLimits, *, tls: bool = False, envelope: str = "response"
) -> tuple[LimitedHttpToolsProtocol, Transport, CountingParser]:
    cls: type[LimitedHttpToolsProtocol] = type(
        "Limited", (LimitedHttpToolsProtocol,), {"limits": limits, "tencent_envelope": envelope}
    )
    config = uvicorn.Config(hello, http=cls, lifespan="off", log_config=None)
    config.load()
    protocol = cls(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = Transport(tls=tls)
    protocol.connection_made(transport)
    parser = CountingParser(protocol.parser)
    protocol.parser = parser  # type: ignore[assignment]
    return protocol, transport, parser


def answer(transport: Transport) -> tuple[int, dict[str, Any]]:
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


async def served(transport: Transport, count: int = 1) -> None:
    for _ in range(100):
        if bytes(transport.written).count(b"HTTP/1.1 200") >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(bytes(transport.written))


async def test_an_endless_header_line_is_refused_after_the_limit_and_one_read() -> None:
    protocol, transport, parser = connect(HeadLimits())
    protocol.data_received(b"GET /app/users HTTP/1.1\r\nHost: x\r\nX-Big: ")
    reads = 0
    while not transport.written:
        protocol.data_received(b"a" * CHUNK)
        reads += 1
        assert reads < 1000, "never refused"
    assert parser.fed <= 64 * 1024 + CHUNK
    status, body = answer(transport)
    assert status == 431
    assert body == {
        "error_code": 9015,
        "error_message": "form invalid!",
        "detail_message": "request head: larger than 65536 bytes",
    }
    assert b"connection: close" in transport.written
    assert transport.eof_written  # the client reads the answer to its end
    fed = parser.fed
    for _ in range(256):  # the rest of 16 MiB is read and dropped, not parsed
        protocol.data_received(b"a" * CHUNK)
    assert parser.fed == fed
    assert not transport.closed  # until the client closes or the linger time ends


async def test_a_url_arriving_byte_by_byte_is_counted_whole() -> None:
    protocol, transport, _ = connect(HeadLimits(max_url_bytes=100))
    for byte in b"GET /" + b"a" * 99:
        protocol.data_received(bytes([byte]))
    assert not transport.written  # 100 bytes: within the limit
    protocol.data_received(b"a")
    status, body = answer(transport)
    assert status == 414
    assert body["detail_message"] == "request line: URL longer than 100 bytes"


async def test_more_header_fields_than_the_limit_are_refused() -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(10))
    protocol, transport, _ = connect(HeadLimits(max_headers=10))
    protocol.data_received(b"GET /status HTTP/1.1\r\n" + fields + b"\r\n")
    await served(transport)
    assert json.loads(bytes(transport.written).partition(b"\r\n\r\n")[2])["headers"] == 10

    protocol, transport, _ = connect(HeadLimits(max_headers=10))
    protocol.data_received(b"GET /status HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    status, body = answer(transport)
    assert status == 431
    assert body["detail_message"] == "request head: more than 10 header fields"


async def test_a_head_over_the_limit_in_one_read_is_refused() -> None:
    protocol, transport, _ = connect(HeadLimits(max_head_bytes=1000))
    head = b"GET /status HTTP/1.1\r\n" + b"X-A: " + b"a" * 990 + b"\r\n\r\n"
    protocol.data_received(head)
    status, body = answer(transport)
    assert status == 431
    assert body["detail_message"] == "request head: larger than 1000 bytes"


async def test_heads_within_the_limit_are_served_one_after_another() -> None:
    protocol, transport, _ = connect(HeadLimits(max_head_bytes=1000))
    head = b"GET /status HTTP/1.1\r\nX-A: " + b"a" * 700 + b"\r\n\r\n"
    for count in (1, 2, 3):  # each head counts on its own on a kept-alive connection
        for start in range(0, len(head), 100):
            protocol.data_received(head[start : start + 100])
        await served(transport, count)
    assert b"HTTP/1.1 4" not in transport.written


async def test_a_refusal_under_the_tencent_api_is_in_its_envelope() -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(3))
    for envelope in ("response", "sdk"):
        protocol, transport, _ = connect(HeadLimits(max_headers=2), envelope=envelope)
        protocol.data_received(b"POST /api/exploreropen/appapi HTTP/1.1\r\n" + fields + b"\r\n")
        status, body = answer(transport)
        assert status == 431
        response = body["Response"] if envelope == "response" else body["data"]
        assert response["Error"] == {
            "Code": "InvalidParameterValue",
            "Message": "request head: more than 2 header fields",
        }
        assert response["RequestId"]
        if envelope == "sdk":
            assert body["code"] == 9015


async def test_a_long_url_under_the_tencent_api_is_refused_in_its_envelope() -> None:
    protocol, transport, _ = connect(HeadLimits(max_url_bytes=64))
    protocol.data_received(b"POST /api/exploreropen/tokenapi?x=" + b"a" * 100 + b" HTTP/1.1\r\n")
    status, body = answer(transport)
    assert status == 414
    assert body["Response"]["Error"] == {
        "Code": "InvalidParameterValue",
        "Message": "request line: URL longer than 64 bytes",
    }
    protocol, transport, _ = connect(HeadLimits(max_url_bytes=64))
    protocol.data_received(b"GET /app/users?x=" + b"a" * 100 + b" HTTP/1.1\r\n")
    status, body = answer(transport)
    assert status == 414
    assert body["error_code"] == 9015


async def test_malformed_http_is_answered_in_json() -> None:
    protocol, transport, _ = connect(HeadLimits())
    protocol.data_received(b"BLAH\x01 / HTTP/1.1\r\n\r\n")
    status, body = answer(transport)
    assert status == 400
    assert body["error_code"] == 9015
    assert body["detail_message"].startswith("request: not valid HTTP/1.1 (")


async def test_over_tls_the_answer_is_sent_without_half_closing() -> None:
    protocol, transport, _ = connect(HeadLimits(max_url_bytes=10), tls=True)
    protocol.data_received(b"GET /" + b"a" * 20)
    assert answer(transport)[0] == 414
    assert not transport.eof_written


def test_the_protocol_class_takes_its_limits_from_the_settings() -> None:
    settings = Settings(
        http_max_url_bytes=1, http_max_head_bytes=2, http_max_headers=3, tencent_envelope="sdk"
    )
    cls = http_protocol_class(settings)
    assert issubclass(cls, LimitedHttpToolsProtocol)
    assert cls.limits == HeadLimits(1, 2, 3)
    assert cls.tencent_envelope == "sdk"
    assert LimitedHttpToolsProtocol.limits == HeadLimits()  # the base class is left alone


@pytest.mark.parametrize("name", ["http_max_url_bytes", "http_max_head_bytes", "http_max_headers"])
def test_limits_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=name.upper()):
        Settings.load({}, **{name: 0})
