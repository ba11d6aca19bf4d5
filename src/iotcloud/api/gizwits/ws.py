"""``/ws/app/v1``: the Gizwits real-time WebSocket API (spec §2).

Every message is a UTF-8 JSON object ``{"cmd": ..., "data": ...}`` (in a text frame; a binary
frame holding the same JSON is taken too). A connection logs in (``login_req``), subscribes to
bound devices (``subscribe_req``, or ``auto_subscribe``), writes, reads and sends raw frames to
them (``c2s_write``, ``c2s_read``, ``c2s_raw``, ``c2s_ack``) and hears of them (``s2c_noti``,
``s2c_raw``, ``s2c_ack``, ``s2c_online_status``, ``s2c_binding_changed``). Problems are answered
with ``s2c_invalid_msg {error_code, msg}`` and the connection stays open — a message that is not
JSON, nests deeper than 64 levels or is larger than ``MESSAGE_MAX_BYTES`` is a 9015 naming the
problem — except for 1011 (no heartbeat) and for the end of the login's token (9004 signed out
or password changed, 9006 expired), after which it is closed. Larger frames than
``SOCKET_MAX_BYTES`` are not read at all: the socket closes with 1009, and a text frame that is
not UTF-8 with 1007 (`iotcloud.api.ws_transport`).

Each connection is a `RealtimeSession` of the hub with its own client id: commands go to the
device on ``app2dev/{did}/{client id}``, so the device's replies come back to this connection.
One task reads and handles the client's messages in order; another writes what the session's
bounded queue holds. A client that does not read its messages fills the queue and is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from iotcloud.api.gizwits.wire import convert
from iotcloud.codecs import DataType
from iotcloud.codecs.frame import CMD_ACK_SN, CMD_CONTROL_SN, Frame
from iotcloud.codecs.jsonlimits import JsonRejected, decode_json
from iotcloud.errors import (
    AppIdInvalid,
    FormInvalid,
    IotCloudError,
    ServerError,
    TokenExpired,
    TokenInvalid,
)
from iotcloud.services.bindings import LIST_LIMIT_MAX, AppUser
from iotcloud.services.control import app_frame
from iotcloud.services.realtime import (
    Close,
    DeviceUpdate,
    Dropped,
    LoginEnded,
    OnlineStatus,
    Outgoing,
    RealtimeSession,
    Reply,
)
from iotcloud.services.registry import Services

log = logging.getLogger(__name__)

PATH: Final = "/ws/app/v1"
HEARTBEAT_MAX: Final = 180
#: Silence allowed before the login (seconds, before the slack).
LOGIN_HEARTBEAT: Final = 60
#: A connection is closed (1011) after this many heartbeat intervals without a message.
HEARTBEAT_SLACK: Final = 1.5
#: Incoming messages larger than this are refused (9015); the socket itself reads messages of up
#: to ``SOCKET_MAX_BYTES`` (`iotcloud.api.ws_transport`), so those in between are answered.
MESSAGE_MAX_BYTES: Final = 1 << 20
#: How long a closing connection may take to send what is queued and its close frame.
CLOSE_SECONDS: Final = 5.0

NOT_LOGGED_IN: Final = 1003
M2M_CLOSED: Final = 1009
NO_HEARTBEAT: Final = 1011
#: Close codes: after the login's token ended (policy violation), after a fault of ours.
CLOSE_TOKEN_ENDED: Final = 1008
CLOSE_INTERNAL_ERROR: Final = 1011

_encoder = msgspec.json.Encoder()
#: What a send or receive raises once the client is gone.
_GONE = (WebSocketDisconnect, OSError)

SerialNumber = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]


class _Message(msgspec.Struct):
    """Unknown fields are ignored: clients differ in what they add (``passcode``, ``sn``)."""

    cmd: str


class LoginData(msgspec.Struct):
    appid: str
    uid: str
    token: str
    p0_type: Literal["attrs_v4", "custom"] = "attrs_v4"
    heartbeat_interval: Annotated[int, msgspec.Meta(ge=1, le=HEARTBEAT_MAX)] = HEARTBEAT_MAX
    auto_subscribe: bool = True


class LoginReq(_Message):
    data: LoginData


class SubscribeItem(msgspec.Struct):
    did: str


class SubscribeReq(_Message):
    data: Annotated[list[SubscribeItem], msgspec.Meta(max_length=LIST_LIMIT_MAX)]


class WriteData(msgspec.Struct):
    did: str
    attrs: dict[str, Any]


class WriteReq(_Message):
    data: WriteData
    req_sn: SerialNumber | None = None


class ReadData(msgspec.Struct):
    did: str
    names: list[str] | None = None


class ReadReq(_Message):
    data: ReadData
    req_sn: SerialNumber | None = None


class RawData(msgspec.Struct):
    did: str
    raw: list[Any]


class RawReq(_Message):
    data: RawData


class AckData(msgspec.Struct):
    did: str
    res_sn: SerialNumber | None = None


class AckReq(_Message):
    data: AckData
    res_sn: SerialNumber | None = None


def invalid_msg(code: int, msg: str) -> dict[str, Any]:
    return {"cmd": "s2c_invalid_msg", "data": {"error_code": code, "msg": msg}}


@websocket(PATH)
async def app_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """One app connection, from accept to close."""
    services: Services = socket.app.state.services
    try:
        await socket.accept()
    except _GONE:
        return
    await Connection(socket, services).serve()


class Connection:
    """The two halves of one connection around its hub session (see module docstring)."""

    def __init__(self, socket: WebSocket[Any, Any, Any], services: Services) -> None:
        self.socket = socket
        self.services = services
        self.hub = services.realtime
        self.session: RealtimeSession = self.hub.open()
        self.p0_type = "attrs_v4"
        self.heartbeat: float = LOGIN_HEARTBEAT
        #: the close the reader queued behind its last answer
        self.closing: Close | None = None
        self.close_sent = False
        self.client_gone = False
        self._binary: dict[str, frozenset[str]] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "login_req": self._login,
            "subscribe_req": self._subscribe,
            "c2s_write": self._write_attrs,
            "c2s_read": self._read_status,
            "c2s_raw": self._raw,
            "c2s_ack": self._ack,
            "ping": self._ping,
        }

    @property
    def client_id(self) -> str:
        return self.session.client_id

    async def serve(self) -> None:
        """Read and write until the client leaves, falls silent, is too slow or the hub stops."""
        name = f"ws-{self.client_id}"
        reader = asyncio.create_task(self._read(), name=f"{name}-read")
        writer = asyncio.create_task(self._write(), name=f"{name}-write")
        killed = asyncio.create_task(self.session.killed.wait(), name=f"{name}-killed")
        tasks = (reader, writer, killed)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self.closing is not None and not writer.done() and not killed.done():
                # the reader queued a close behind its last answer: let the writer send both
                with suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_SECONDS):
                        await asyncio.wait((writer, killed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.close(self.session)
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, _GONE):
                self.client_gone = True
            elif isinstance(outcome, Exception):
                log.error("websocket %s failed", self.client_id, exc_info=outcome)
        if not self.close_sent and not self.client_gone:
            await self._close_anyway()
        log.debug("websocket %s closed", self.client_id)

    async def _close_anyway(self) -> None:
        """Close a connection that ends without its close frame sent: the hub dropped it, the
        writer could not get to a queued close, or a half of the connection failed (1011).
        Never waits long on a client that does not read."""
        dropped = self.session.dropped
        stopping = dropped is Dropped.STOPPING
        with suppress(TimeoutError, *_GONE):
            async with asyncio.timeout(CLOSE_SECONDS):
                if dropped is None:
                    close = self.closing or Close(CLOSE_INTERNAL_ERROR, "internal error")
                    await self.socket.close(close.code, close.reason)
                    return
                if stopping:
                    body = invalid_msg(M2M_CLOSED, "M2M socket has closed, please login again!")
                    await self.socket.send_data(_encoder.encode(body).decode())
                await self.socket.close(1001 if stopping else 1008, dropped)

    # -- reading --------------------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.heartbeat * HEARTBEAT_SLACK):
                    event = await self.socket.receive()
            except TimeoutError:
                log.debug("websocket %s: no heartbeat for %.0f s", self.client_id, self.heartbeat)
                self._answer(invalid_msg(NO_HEARTBEAT, "No heartbeat!"))
                self.closing = Close(1000, "no heartbeat")
                self.hub.deliver(self.session, self.closing)
                return
            if event["type"] == "websocket.disconnect":
                self.client_gone = True
                return
            if event["type"] != "websocket.receive":
                continue
            text = event.get("text")
            data: str | bytes = text if text is not None else event.get("bytes") or b""
            await self._handle(data)

    async def _handle(self, data: str | bytes) -> None:
        try:
            message = decode_json(data, max_bytes=MESSAGE_MAX_BYTES)
        except JsonRejected as exc:
            self._invalid(FormInvalid(f"message: {exc}"))
            return
        if not isinstance(message, dict):
            self._invalid(FormInvalid("message: not a JSON object"))
            return
        cmd = message.get("cmd")
        if not isinstance(cmd, str):
            self._invalid(FormInvalid("cmd: is required (a string)"))
            return
        handler = self._handlers.get(cmd)
        if handler is None:
            self._invalid(FormInvalid(f"cmd: unknown command {cmd[:40]!r}"))
            return
        if self.session.user is None and cmd not in ("login_req", "ping"):
            self._answer(invalid_msg(NOT_LOGGED_IN, "Websocket client not login!"))
            return
        try:
            await handler(message)
        except IotCloudError as exc:
            self._invalid(exc)
        except Exception:  # a fault of ours: answer it, keep the connection
            log.exception("websocket %s: %s failed", self.client_id, cmd)
            self._invalid(ServerError("internal error; it has been logged"))

    # -- commands -------------------------------------------------------------------------------

    async def _login(self, message: dict[str, Any]) -> None:
        form = convert(message, LoginReq).data
        try:
            app = await self.services.apps.get(form.appid)
            user = await self.services.accounts.authenticate(app, form.token)
            if user.uid != form.uid:
                raise TokenInvalid("uid: does not match the token")
        except (AppIdInvalid, TokenInvalid, TokenExpired) as exc:
            log.debug("websocket %s: login refused: %r", self.client_id, exc)
            self.hub.logout(self.session)
            self._answer({"cmd": "login_res", "data": {"success": False}})
            return
        try:
            await self.hub.login(
                self.session,
                user,
                auto_subscribe=form.auto_subscribe,
                token_digest=user.token_digest,
                token_expires=user.token_expires,
            )
        except BaseException:
            self.hub.logout(self.session)  # no half-made login: the client may try again
            raise
        self.p0_type = form.p0_type
        self.heartbeat = form.heartbeat_interval
        self._answer({"cmd": "login_res", "data": {"success": True}})

    async def _subscribe(self, message: dict[str, Any]) -> None:
        form = convert(message, SubscribeReq)
        outcomes = await self.hub.subscribe(self.session, [item.did for item in form.data])
        success = [{"did": o.did, "error_code": 0, "msg": "ok"} for o in outcomes if not o.error]
        failed = [
            {"did": o.did, "error_code": o.error.code, "msg": o.error.message}
            for o in outcomes
            if o.error
        ]
        self._answer({"cmd": "subscribe_res", "data": {"success": success, "failed": failed}})
        for outcome in outcomes:
            if outcome.error is not None:
                self._invalid(outcome.error)

    async def _write_attrs(self, message: dict[str, Any]) -> None:
        form = convert(message, WriteReq)
        self._need_attrs("c2s_write")
        user = self._user()
        did = form.data.did
        await self.hub.commanded(
            self.session,
            did,
            lambda: self.services.control.write_attrs(
                user,
                did,
                form.data.attrs,
                client_id=self.client_id,
                sn=form.req_sn,
                byte_arrays=True,
            ),
        )

    async def _read_status(self, message: dict[str, Any]) -> None:
        form = convert(message, ReadReq)
        self._need_attrs("c2s_read")
        user = self._user()
        did = form.data.did
        answers: list[dict[str, Any]] = []

        async def read() -> None:
            latest = await self.services.control.read(
                user, did, form.data.names, client_id=self.client_id, sn=form.req_sn
            )
            if latest is not None:
                answers.append(latest)

        await self.hub.commanded(self.session, did, read)
        for latest in answers:  # a data-template device: answered from its latest values
            body: dict[str, Any] = {"cmd": "s2c_noti"}
            if form.req_sn is not None:
                body["res_sn"] = form.req_sn
            body["data"] = {"did": did, "attrs": latest}
            self._answer(body)

    async def _raw(self, message: dict[str, Any]) -> None:
        form = convert(message, RawReq)
        frame = app_frame(form.data.raw)
        await self._send_frame(form.data.did, frame)

    async def _ack(self, message: dict[str, Any]) -> None:
        form = convert(message, AckReq)
        sn = form.res_sn if form.res_sn is not None else form.data.res_sn
        if sn is None:
            raise FormInvalid("res_sn: is required")
        await self._send_frame(form.data.did, Frame(CMD_ACK_SN, b"", sn=sn))

    async def _ping(self, message: dict[str, Any]) -> None:
        self._answer({"cmd": "pong"})

    async def _send_frame(self, did: str, frame: Frame) -> None:
        user = self._user()
        await self.hub.commanded(
            self.session,
            did,
            lambda: self.services.control.write_frame(user, did, frame, client_id=self.client_id),
        )

    def _user(self) -> AppUser:
        user = self.session.user
        assert user is not None  # _handle lets only login_req and ping through before login
        return user

    def _need_attrs(self, cmd: str) -> None:
        if self.p0_type != "attrs_v4":
            raise FormInvalid(f"cmd: {cmd} needs a login with p0_type attrs_v4 (use c2s_raw)")

    def _answer(self, body: dict[str, Any]) -> None:
        self.hub.deliver(self.session, Reply(body))

    def _invalid(self, error: IotCloudError) -> None:
        self._answer(invalid_msg(error.code, error.detail or error.message))

    # -- writing --------------------------------------------------------------------------------

    async def _write(self) -> None:
        queue = self.session.queue
        try:
            while True:
                item = await queue.get()
                if isinstance(item, LoginEnded):
                    error = item.error
                    told = invalid_msg(error.code, error.detail or error.message)
                    await self.socket.send_data(_encoder.encode(told).decode())
                    item = Close(CLOSE_TOKEN_ENDED, error.message)
                if isinstance(item, Close):
                    await self.socket.close(item.code, item.reason)
                    self.close_sent = True
                    return
                body = await self._render(item)
                if body is not None:
                    await self.socket.send_data(_encoder.encode(body).decode())
        except _GONE:
            self.client_gone = True
            return

    async def _render(self, item: Outgoing) -> dict[str, Any] | None:
        if isinstance(item, Reply):
            return item.body
        if isinstance(item, OnlineStatus):
            return {
                "cmd": "s2c_online_status",
                "data": {
                    "did": item.did,
                    "passcode": item.passcode,
                    "mac": item.mac,
                    "online": item.online,
                },
            }
        if isinstance(item, DeviceUpdate):
            return await self._render_update(item)
        if isinstance(item, Close | LoginEnded):  # handled by the writer
            return None
        return {"cmd": "s2c_binding_changed", "data": {"did": item.did, "bind": item.bound}}

    async def _render_update(self, update: DeviceUpdate) -> dict[str, Any] | None:
        message = update.message
        did = message.did
        if message.action is None:  # a bare 0x0094
            if not update.reply:
                return None
            return {"cmd": "s2c_ack", "res_sn": message.sn, "data": {"did": did}}
        if message.attrs is None or self.p0_type == "custom":
            return {"cmd": "s2c_raw", "data": {"did": did, "raw": list(message.raw)}}
        body: dict[str, Any] = {"cmd": "s2c_noti"}
        if message.cmd == CMD_CONTROL_SN:
            body["req_sn"] = message.sn
        elif update.reply:
            body["res_sn"] = message.sn
        body["data"] = {"did": did, "attrs": await self._wire_attrs(did, message.attrs)}
        return body

    async def _wire_attrs(self, did: str, attrs: dict[str, Any]) -> dict[str, Any]:
        """Binary values as byte arrays (the WebSocket form) instead of hex strings."""
        binary = self._binary.get(did)
        if binary is None:
            codec = await self.hub.gateway.codec_of(did)
            attrs_of = codec.product.attrs if codec is not None else ()
            binary = frozenset(a.name for a in attrs_of if a.data_type is DataType.BINARY)
            self._binary[did] = binary
        if binary.isdisjoint(attrs):
            return attrs
        return {
            name: list(bytes.fromhex(value)) if name in binary and isinstance(value, str) else value
            for name, value in attrs.items()
        }


ROUTES = [app_socket]
