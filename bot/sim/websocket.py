"""A small RFC 6455 server protocol for uvicorn, so the simulator serves WebSocket streams
without a WebSocket library (uvicorn's own need `websockets` or `wsproto`).

uvicorn's HTTP protocol hands an upgrade request to this class (`uvicorn.Config(ws=...)`),
which does the handshake, frames and unframes messages, answers pings, and runs the ASGI app
with a `websocket` scope. Beyond the ASGI messages (`websocket.accept`, `websocket.send`,
`websocket.close`) it understands `{"type": "sim.websocket.abort"}`, offered through the scope
extension of that name: the TCP connection is cut without a close frame, as when a real
exchange's connection breaks (the client sees a lost connection, not a clean close).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import struct
from typing import Any, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.server import ServerState

__all__ = ["ABORT_EXTENSION", "SimWebSocketProtocol"]

#: Scope extension and message type that abort a connection without a close frame.
ABORT_EXTENSION = "sim.websocket.abort"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER_BYTES = 16 * 1024
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_TOO_BIG = 1009
_CLOSE_SERVICE_RESTART = 1012
#: Open WebSocket connections the simulator serves at once; past it a new one is answered
#: 429 before its handshake. Each holds a descriptor of the process (in `sim` mode, the
#: bot's); the HTTP connections' own limit (bot/http_limits.py) does not count them.
MAX_CONNECTIONS = 1000
#: After a close for a protocol error (a message too big, say), what the client still sends
#: is read and dropped for this long (or this much) before the TCP close: closing on unread
#: bytes resets the connection, and the client lost the close frame that says why.
_LINGER_S = 2.0
_LINGER_BYTES = 1024 * 1024
_LOGGER = "uvicorn.error"


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def _close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:120]


class SimWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection: handshake, framing, and the ASGI app's session."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        self._app: Any = config.loaded_app
        self._loop = _loop or asyncio.get_event_loop()
        self._logger = logging.getLogger(_LOGGER)
        self._connections: set[Any] = cast(set[Any], server_state.connections)
        self._tasks = server_state.tasks
        self._app_state = app_state
        self._max_size = config.ws_max_size
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._handshake_done = False
        self._accepted = False
        self._closed = False
        self._close_sent = False
        self._key = b""
        self._message_opcode: int | None = None
        self._message = bytearray()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        #: Bytes dropped since a close for a protocol error (None: not lingering).
        self._dropped: int | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        open_now = sum(isinstance(c, SimWebSocketProtocol) for c in self._connections)
        if open_now >= MAX_CONNECTIONS:
            self._reject(429, b"Too Many Requests")
            self._closed = True  # what the client sends is not read: no handshake, no frames
            return
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._connections.discard(self)
        self._closed = True
        self._writable.set()
        self._queue.put_nowait({"type": "websocket.disconnect", "code": 1006})

    def pause_writing(self) -> None:
        # Nor read what the client sends meanwhile: each of its pings is answered with a
        # pong, and a client that never reads would otherwise grow the buffer without bound.
        self._writable.clear()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None:
            self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self._abort()
            return
        self._buffer += data
        try:
            if not self._handshake_done:
                self._read_handshake()
            else:
                self._read_frames()
        except Exception:
            # Whatever a client sends must not take the server down: cut this connection.
            self._logger.exception("bad WebSocket input; connection aborted")
            self._abort()

    def shutdown(self) -> None:
        """uvicorn's server shutdown: close with 1012 (service restart)."""
        if self._accepted and not self._close_sent:
            self._write(_frame(_OP_CLOSE, _close_payload(_CLOSE_SERVICE_RESTART)))
            self._close_sent = True
        self._queue.put_nowait({"type": "websocket.disconnect", "code": _CLOSE_SERVICE_RESTART})
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ handshake

    def _read_handshake(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEADER_BYTES:
                self._reject(431, b"Request Header Fields Too Large")
            return
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        self._handshake_done = True
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers: list[tuple[bytes, bytes]] = []
        values: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append(
                (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
            )
            values[name.strip().lower()] = value.strip()
        key = values.get("sec-websocket-key", "")
        if (
            len(parts) != 3
            or parts[0] != "GET"
            or values.get("upgrade", "").lower() != "websocket"
            or values.get("sec-websocket-version") != "13"
            or not key
        ):
            self._reject(400, b"Bad Request")
            return
        self._key = key.encode("latin-1")
        target = parts[1]
        raw_path, _, query = target.partition("?")
        transport = self._transport
        assert transport is not None
        server = transport.get_extra_info("sockname")
        client = transport.get_extra_info("peername")
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": tuple(server[:2]) if isinstance(server, tuple) else None,
            "client": tuple(client[:2]) if isinstance(client, tuple) else None,
            "root_path": self._config.root_path,
            "path": self._config.root_path + unquote(raw_path),
            "raw_path": raw_path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": headers,
            "subprotocols": [],
            "state": self._app_state.copy(),
            "extensions": {ABORT_EXTENSION: {}},
        }
        self._queue.put_nowait({"type": "websocket.connect"})
        task = self._loop.create_task(self._run_app(scope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._buffer:
            self._read_frames()

    def _reject(self, status: int, reason: bytes) -> None:
        self._handshake_done = True
        self._write(
            b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % (status, reason)
        )
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ frames in

    def _read_frames(self) -> None:
        while not self._closed:
            buffer = self._buffer
            if len(buffer) < 2:
                return
            first, second = buffer[0], buffer[1]
            fin, opcode, masked, length = first & 0x80, first & 0x0F, second & 0x80, second & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = struct.unpack_from("!Q", buffer, 2)[0]
                offset = 10
            if not masked or first & 0x70:
                self._fail(_CLOSE_PROTOCOL_ERROR, "client frames must be masked, no extensions")
                return
            if length > self._max_size:
                self._fail(_CLOSE_TOO_BIG, "message too big")
                return
            if len(buffer) < offset + 4 + length:
                return
            mask = bytes(buffer[offset : offset + 4])
            start = offset + 4
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if length:
                key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
                payload = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
            self._on_frame(bool(fin), opcode, payload)

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            self._write(_frame(_OP_PONG, payload))
        elif opcode == _OP_PONG:
            return
        elif opcode == _OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self._close_sent:
                self._write(_frame(_OP_CLOSE, payload[:2]))
                self._close_sent = True
            self._queue.put_nowait({"type": "websocket.disconnect", "code": code})
            if self._transport is not None:
                self._transport.close()
        elif opcode in (_OP_TEXT, _OP_BINARY, _OP_CONTINUATION):
            if opcode != _OP_CONTINUATION:
                if self._message_opcode is not None:
                    self._fail(_CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                    return
                self._message_opcode = opcode
            elif self._message_opcode is None:
                self._fail(_CLOSE_PROTOCOL_ERROR, "continuation without a message")
                return
            self._message += payload
            if len(self._message) > self._max_size:
                self._fail(_CLOSE_TOO_BIG, "message too big")
                return
            if fin:
                data, kind = bytes(self._message), self._message_opcode
                self._message.clear()
                self._message_opcode = None
                if kind == _OP_TEXT:
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        self._fail(1007, "text is not UTF-8")
                        return
                    self._queue.put_nowait({"type": "websocket.receive", "text": text})
                else:
                    self._queue.put_nowait({"type": "websocket.receive", "bytes": data})
        else:
            self._fail(_CLOSE_PROTOCOL_ERROR, "unknown opcode")

    def _fail(self, code: int, reason: str) -> None:
        """Close for a protocol error: the close frame, then `_LINGER_S` of reading and
        dropping what the client still sends (the rest of a message too big, its own close
        frame) before the TCP close."""
        if not self._close_sent:
            self._write(_frame(_OP_CLOSE, _close_payload(code, reason)))
            self._close_sent = True
        self._queue.put_nowait({"type": "websocket.disconnect", "code": code})
        self._closed = True  # no more frames are read
        self._buffer.clear()
        self._message.clear()
        if self._transport is not None and self._dropped is None:
            self._dropped = 0
            self._linger_timer = self._loop.call_later(_LINGER_S, self._transport.close)

    # ------------------------------------------------------------------ the ASGI session

    async def _run_app(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self._receive, self._send)
        except Exception:
            self._logger.exception("Exception in the simulator's WebSocket application")
            self._abort()
            return
        if not self._accepted:
            self._reject(403, b"Forbidden")
        elif self._transport is not None and not self._closed:
            if not self._close_sent:
                self._write(_frame(_OP_CLOSE, _close_payload(1000)))
                self._close_sent = True
            self._transport.close()

    async def _receive(self) -> dict[str, Any]:
        return await self._queue.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == ABORT_EXTENSION:
            self._abort()
            return
        if self._closed or self._close_sent:
            return
        if kind == "websocket.accept":
            if not self._accepted:
                accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())  # noqa: S324
                self._write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                self._accepted = True
        elif kind == "websocket.send":
            if not self._accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            await self._writable.wait()
            text = message.get("text")
            if text is not None:
                self._write(_frame(_OP_TEXT, str(text).encode()))
            else:
                self._write(_frame(_OP_BINARY, bytes(message.get("bytes") or b"")))
        elif kind == "websocket.close":
            if not self._accepted:
                self._reject(403, b"Forbidden")
                self._closed = True
                return
            code = int(message.get("code") or 1000)
            self._write(_frame(_OP_CLOSE, _close_payload(code, str(message.get("reason") or ""))))
            self._close_sent = True
            if self._transport is not None:
                self._transport.close()
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    def _abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(RuntimeError):
                self._transport.write(data)
