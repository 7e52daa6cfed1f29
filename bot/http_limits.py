"""The limits uvicorn's HTTP protocol lacks, for a port anyone on the network may reach.

uvicorn (httptools) times out a connection only once it has answered a request: one that sends
nothing, or sends its request line and headers a byte at a time, stays open for good, and the
headers it buffers have no size limit. Enough such connections exhaust the process's file
descriptors (and with them the journal, the secrets and the venue's sockets) or its memory,
before any authentication can refuse them. `guarded_protocol` adds, per connection:

- a request's head (request line and headers) must arrive within `head_timeout_s` of the
  connection, of the previous answer, or of its own first byte: else `408` and the
  connection is closed (so at most twice `head_timeout_s` in all);
- the head must fit in `MAX_HEAD_BYTES` and `MAX_HEAD_FIELDS`: else `431`, closed;
- an answer given without reading the whole body (the app's 408, 413) closes the connection,
  which would otherwise stay open for a body no one reads;
- past `max_connections` open HTTP connections (those upgraded to WebSocket are not counted),
  the one that has waited longest for its client (a request's head: idle, or sending it
  slowly; or the rest of a body) is closed to make room for a new one, or, when every one is
  busy with a request it has whole, the new one is closed at once (either counted in
  `bot_http_connections_refused_total`): so a flood cannot take the descriptors the bot
  needs, nor, by holding idle connections or unfinished bodies, keep a real sender or a
  liveness probe out;

and answers a malformed request with the bot's JSON error body instead of uvicorn's text.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Callable
from typing import Any, Final

from loguru import logger
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bot import metrics

__all__ = ["MAX_HEAD_BYTES", "MAX_HEAD_FIELDS", "guarded_protocol", "raise_descriptor_limit"]

#: nginx's default room for a request's head is 32 KiB (4 x 8k); a signal's is a few hundred
#: bytes.
MAX_HEAD_BYTES: Final = 64 * 1024
#: Header fields a head may have (nginx, Apache: 100): many tiny ones cost far more memory
#: in the parser's and the app's structures than their bytes.
MAX_HEAD_FIELDS: Final = 100
#: After a refusal, what a client still sends is read and dropped for this long (or this
#: much) before the close, as nginx's lingering close: closing on unread bytes would reset
#: the connection, and the client would lose the answer that says what was wrong.
_LINGER_S: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024
#: Descriptors kept for everything but client connections: the journal, the venues' sockets
#: and streams, the secrets read on rotation, the MQTT client, logs.
_RESERVED_DESCRIPTORS: Final = 256
_DESCRIPTOR_CEILING: Final = 65536


def raise_descriptor_limit(max_connections: int, beside: int = 0) -> int:
    """Raise this process's soft limit on open files to its hard limit (as nginx and most
    servers do), and return how many client connections fit beside what the bot itself
    holds and `beside` other descriptors (the in-process simulator's connections):
    `max_connections`, or fewer (with a warning) when the limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = _DESCRIPTOR_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError):  # a container may forbid it: live with the soft one
            pass
    room = (ceiling if soft == resource.RLIM_INFINITY else soft) - _RESERVED_DESCRIPTORS - beside
    if room < max_connections:
        logger.warning(
            "the limit on open files ({soft}) leaves room for {room} HTTP connections, fewer "
            "than http.max_connections ({wanted}); raise it (ulimit -n, LimitNOFILE=)",
            soft=soft,
            room=max(room, 1),
            wanted=max_connections,
        )
    return max(1, min(max_connections, room))


def guarded_protocol(
    max_connections: int,
    head_timeout_s: float,
    count_refusal: Callable[[], object] = metrics.HTTP_CONNECTIONS_REFUSED.inc,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits (pass it as `uvicorn.Config(http=...)`);
    `count_refusal` counts each connection closed for room (by default in the bot's
    `bot_http_connections_refused_total`: another server of the process, the in-process
    simulator, counts its own elsewhere)."""

    class GuardedProtocol(_Guarded):
        _max_connections = max_connections
        _head_timeout_s = head_timeout_s
        _count_refusal = staticmethod(count_refusal)

    return GuardedProtocol


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limits."""


class _Guarded(HttpToolsProtocol):
    _max_connections: int
    _head_timeout_s: float
    _count_refusal: Callable[[], object]
    _head_timer: asyncio.TimerHandle | None = None
    #: When (the loop's time) the head being awaited was first awaited (None: not awaiting).
    _awaiting_since: float | None = None
    #: When the request whose body is being read began to be awaited (None: no body awaited).
    _body_since: float | None = None
    #: The head being read: bytes as received, bytes as parsed (line and fields), fields.
    _head_bytes = 0
    _parsed_bytes = 0
    _fields = 0
    _refused = False
    _too_large = False
    #: A refusal waiting for the answer in progress on this connection (pipelining).
    _pending: tuple[int, str, str] | None = None
    #: Bytes dropped since a refusal was sent (None: not lingering).
    _dropped: int | None = None
    _linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self._http_connections() >= self._max_connections and not self._close_the_idlest():
            self._refused = True
            self._count_refusal()
            transport.abort()  # never counted, never read: its descriptor is freed at once
            return
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._head_done()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:  # answered and closing: what comes now is dropped
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.transport.abort()
            return
        # Counted only when a head was already being read as the bytes came: a chunk that
        # also holds the end of the previous request's body is counted by the parser's
        # callbacks instead. Bounds what the parser buffers of a head never completed.
        counting = self._head_timer is not None
        super().data_received(data)
        if counting and self._head_timer is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head_size()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_head()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._count_head(len(name) + len(value) + 4)
        if self._body_since is not None:
            # A trailer (a field after a chunked body), never merged into the headers (RFC
            # 9110 6.5.1): the server would add it to the request's headers, where it would
            # stand for one, a signature or a content coding the sender's proxy never saw.
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        began = self._awaiting_since
        self._head_done()
        super().on_headers_complete()
        # Until the body is whole the connection waits for its client, as for a head.
        self._body_since = began if began is not None else self.loop.time()

    def on_message_complete(self) -> None:
        self._body_since = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._pending is not None:
            self._answer_and_close(*self._pending)
        elif self.cycle.more_body:  # answered without reading the whole body (408, 413)
            self.transport.close()  # else the rest would keep the connection open, unread
        elif self._head_timer is None and not self.pipeline:
            # Idle until the next head: uvicorn's keep-alive timer stops at any byte, even a
            # blank line, so the next head is held to its time from now.
            self._await_head()

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn warns twice per request (and advises installing a WebSocket library): a
        # client asking this port for WebSocket or h2c is answered as plain HTTP, and anyone
        # could fill the log with it.
        self.logger.debug("upgrade request answered as plain HTTP")

    def send_400_response(self, msg: str) -> None:
        self._head_done()
        if self._too_large:  # raised from a callback: the parser reports it as an error
            self._refuse_head_size()
            return
        self._answer_and_close(400, "bad request", f"{msg.rstrip('.')}: not valid HTTP/1.1")

    # ------------------------------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEAD_BYTES or self._fields > MAX_HEAD_FIELDS:
            self._too_large = True
            raise _HeadTooLarge

    def _refuse_head_size(self) -> None:
        self._head_done()
        self._answer_and_close(
            431,
            "request header fields too large",
            f"the request line and headers exceed {MAX_HEAD_BYTES // 1024} KiB or "
            f"{MAX_HEAD_FIELDS} fields",
        )

    def _http_connections(self) -> int:
        """The open HTTP connections: not those upgraded to WebSocket (the server's WebSocket
        protocol, if it has one, bounds its own), which would otherwise fill the room and
        refuse every new HTTP connection while taking no turn at being closed for room."""
        return sum(isinstance(connection, _Guarded) for connection in self.connections)

    def _waiting_since(self) -> float | None:
        """Since when this connection has waited for its client: for a request's head, or for
        the rest of a body no answer was started for (None: not waiting for the client)."""
        if self._awaiting_since is not None:
            return self._awaiting_since
        cycle = self.cycle
        if self._body_since is not None and cycle is not None and not cycle.response_started:
            return self._body_since
        return None

    def _close_the_idlest(self) -> bool:
        """Close the open connection that has waited longest for its client (a request's
        head, or the rest of a body), if one does, to make room for a new one (counted as a
        refusal). A body counts: else connections that send a head and then hold back its
        body (until `body_timeout_s`), from a few addresses (each under its rate limit),
        would keep every new connection out, a real signal's too."""
        waiting = [
            (since, connection)
            for connection in self.connections
            if isinstance(connection, _Guarded)
            and not connection.transport.is_closing()
            and (since := connection._waiting_since()) is not None
        ]
        if not waiting:
            return False
        _, idlest = min(waiting, key=lambda pair: pair[0])
        idlest._head_done()
        idlest._body_since = None
        idlest.transport.close()
        self._count_refusal()
        return True

    def _await_head(self) -> None:
        self._head_done()
        self._head_bytes = self._parsed_bytes = self._fields = 0
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_too_slow)
        self._awaiting_since = self.loop.time()

    def _head_done(self) -> None:
        self._awaiting_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._awaiting_since = None
        if not self.transport.is_closing():
            self._answer_and_close(
                408,
                "request timeout",
                f"the request line and headers did not arrive within {self._head_timeout_s:g} s",
            )

    def _answer_and_close(self, status: int, error: str, detail: str) -> None:
        """Answer and close; behind an earlier request's answer still being produced
        (pipelining), once it is sent (reading stops meanwhile). A request whose own body was
        still arriving is answered at once, as uvicorn answers it."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            self._pending = (status, error, detail)
            self.transport.pause_reading()
            return
        body = json.dumps({"error": error, "detail": detail}).encode()
        head: list[Any] = [f"HTTP/1.1 {status} {error.title()}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self._linger()

    def _linger(self) -> None:
        """Close after the answer: no more to send (FIN), then read and drop what the client
        still sends for `_LINGER_S` at most, so that its unread bytes cannot reset the
        connection before it read the answer."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._dropped = 0
        self.transport.resume_reading()
        self._linger_timer = self.loop.call_later(_LINGER_S, self.transport.close)
