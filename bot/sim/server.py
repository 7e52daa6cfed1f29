"""Serving a `SimExchange` over HTTP: in a background thread (tests, `sim` mode) or in the
foreground (`bot sim --port N`).

uvicorn writes each answer through an asyncio transport with TCP_NODELAY, so a pybit round
trip costs about a millisecond on loopback instead of the ~44 ms Nagle/delayed-ACK stall of a
server that writes headers and body separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn

from bot.http_limits import guarded_protocol
from bot.net import DEFAULT_SIM_PORT, tcp_listener
from bot.sim.app import create_app
from bot.sim.exchange import SimExchange
from bot.sim.stream import MAX_REQUEST_BYTES
from bot.sim.websocket import SimWebSocketProtocol

__all__ = ["DEFAULT_SIM_PORT", "SimServer", "run_forever"]

_POLL_S = 0.005
_GRACEFUL_SHUTDOWN_S = 2
#: How long an idle keep-alive connection stays open (uvicorn's default is 5 s). A client
#: that polls every 5 s (a common loop: request, sleep(5)) sends its next request just as a
#: 5 s timer closes the connection, and reads "Connection reset by peer": ccxt raised
#: NetworkError on about 3 % of such requests, pybit fails the same way; for an order
#: create the outcome is then unknown. 75 s (nginx's default) outlasts common polling
#: intervals and aiohttp's own 15 s client-side idle limit.
KEEP_ALIVE_S = 75
#: The simulator's port gets the bot's own HTTP limits (bot/http_limits.py): without them a
#: client that opens connections and sends nothing, or trickles its headers, held each one for
#: good, and headers of any size were buffered. The in-process simulator shares the bot's
#: descriptors: enough idle connections to it left the bot none, and its webhook reset every
#: connection ("Too many open files"). Past this many connections the one idle longest makes
#: room for a new one.
MAX_CONNECTIONS = 512
#: A request's head must arrive within this of the connection or of the previous answer:
#: longer than KEEP_ALIVE_S, so that an idle keep-alive connection is closed silently by
#: uvicorn first, never answered 408 just as its client sends the next request.
HEAD_TIMEOUT_S = KEEP_ALIVE_S + 5
#: The longest WebSocket message taken (else close 1009): the longest command a stream
#: reads. uvicorn's 16 MiB default let each connection hold a 16 MiB frame in memory (1000
#: connections: 16 GB), and unmasking one stalled every other client for ~0.4 s.
WS_MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES


def _protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with the limits above; its refusals are not the bot's port's
    (`bot_http_connections_refused_total` counts the webhook server's only)."""
    return guarded_protocol(MAX_CONNECTIONS, HEAD_TIMEOUT_S, count_refusal=lambda: None)


class SimServer:
    """The simulator on a loopback port, served by uvicorn from a daemon thread.

    `start()` returns once the port accepts connections; `port=0` picks a free port, which
    `port` and `url` then report. The exchange's engine thread (fills, walks) runs from
    `start()` to `stop()`. Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(self, exchange: SimExchange, host: str = "127.0.0.1", port: int = 0) -> None:
        self.exchange = exchange
        self._host = host
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when port 0 was asked); only valid once started."""
        if self._port is None:
            raise RuntimeError("SimServer has not been started")
        return self._port

    @property
    def ws_url(self) -> str:
        """Base URL of the WebSocket streams: add `/v5/private` or `/v5/public/linear`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL to give pybit as `session.endpoint`."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Self:
        """Bind, serve from a daemon thread, and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("SimServer is already started")
        try:
            sock = tcp_listener(self._host, self._requested_port)
        except OSError as exc:
            raise RuntimeError(
                f"cannot bind the simulator to {self._host}:{self._requested_port}: {exc}"
            ) from exc
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        self.exchange.start_engine()
        # log_config=None leaves the host process's logging configuration alone.
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self.exchange),
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
                ws=SimWebSocketProtocol,
                ws_max_size=WS_MAX_MESSAGE_BYTES,
                http=_protocol(),
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
                timeout_keep_alive=KEEP_ALIVE_S,
            )
        )
        thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"sim-server-{self._port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive():
                self._release()
                raise RuntimeError(
                    f"the simulator server stopped during start-up: {self._failure!r}"
                ) from self._failure
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the simulator server did not start within {timeout_s} s")
            time.sleep(_POLL_S)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and the engine: wait timeout_s for a graceful stop, then force open
        connections closed.

        Idempotent; raises RuntimeError if the server thread is still alive after that.
        """
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout_s)
        self._release()
        if thread.is_alive():
            raise RuntimeError(f"the simulator server did not stop within {2 * timeout_s} s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # start() reports it from the caller's thread
            self._failure = exc

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self.exchange.stop_engine()
        self._socket = None
        self._server = None
        self._thread = None


def run_forever(
    exchange: SimExchange,
    host: str = "127.0.0.1",
    port: int = DEFAULT_SIM_PORT,
    *,
    sock: socket.socket | None = None,
) -> None:
    """Serve the exchange, and run its engine, in the foreground until SIGINT/SIGTERM
    (`bot sim --port N`), on `sock` if given (bound by the caller, who can then say why a
    port cannot be had), else on one bound to host:port here (OSError if it cannot be)."""
    sock = sock or tcp_listener(host, port)
    config = uvicorn.Config(
        create_app(exchange),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        lifespan="off",
        ws=SimWebSocketProtocol,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        http=_protocol(),
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    # uvicorn shuts down cleanly, then re-raises the SIGINT it caught; Ctrl-C is how the
    # standalone simulator is meant to stop, so that is a normal return here.
    exchange.start_engine()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        exchange.stop_engine()
        sock.close()
