"""The WebSocket transport under uvicorn: its own protocol (websockets' sans-I/O state machine)
with the limits of ``/ws/app/v1`` and no traceback per hostile frame.

- A message larger than `SOCKET_MAX_BYTES` is not read: the state machine fails the connection
  with close code 1009 (message too big). Messages up to that size reach the app, which answers
  those above its own limit (``MESSAGE_MAX_BYTES``) with a 9015 and keeps the connection, so the
  bytes a client makes the server hold per connection stay bounded.
- A text message that is not UTF-8 fails the connection with 1007, as RFC 6455 §8.1 requires and
  uvicorn does, but uvicorn also logs a traceback for it: one cheap frame per connection would
  fill the log. Here it is one debug line.
"""

from __future__ import annotations

import logging
from typing import Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from iotcloud.api.gizwits.ws import MESSAGE_MAX_BYTES

__all__ = ["SOCKET_MAX_BYTES", "WebSocketTransport"]

log = logging.getLogger(__name__)

SOCKET_MAX_BYTES: Final = 2 * MESSAGE_MAX_BYTES
"""The largest WebSocket message read (uvicorn's ``ws_max_size``; its default is 16 MiB)."""

INVALID_UTF8: Final = 1007


class WebSocketTransport(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, closing on a text message that is not UTF-8 (1007) without
    logging a traceback. Pass it with ``ws_max_size=SOCKET_MAX_BYTES``."""

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if not data.isascii():
                try:
                    data.decode()
                except UnicodeDecodeError as exc:
                    log.debug("websocket client %s: text is not UTF-8 (%s)", self.client, exc)
                    self.frames = []
                    self.conn.send_close(INVALID_UTF8, "text message is not UTF-8")
                    self.handle_parser_exception()
                    return
        super().send_receive_event_to_app()
