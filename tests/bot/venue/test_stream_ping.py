"""The streams' keep-alive ping on a socket the venue closed under it."""

from __future__ import annotations

import errno

import pytest
import websocket

from bot.venue.stream import SupervisedSocket


class _BrokenConnection:
    """A websocket-client app whose socket the venue closed: a send fails as `error` says."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.sock = self  # pybit asks `ws.sock.connected`
        self.connected = True

    def send(self, data: str) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        websocket.WebSocketConnectionClosedException("socket is already closed."),
    ],
    ids=["broken pipe", "reset", "closed"],
)
def test_a_ping_on_a_socket_closed_under_it_ends_quietly(error: Exception) -> None:
    # Reproduced by stopping the bot (SIGSTOP) past the venue's timeout: after SIGCONT the
    # ping's timer thread raised BrokenPipeError, logged as an uncaught CRITICAL with its
    # traceback, for a drop the stream's supervisor reconnects from anyway.
    socket = SupervisedSocket.__new__(SupervisedSocket)  # not connected: only its ping
    socket.exited = False
    socket.ws = _BrokenConnection(error)
    socket.ws_name = "test"
    socket.custom_ping_message = '{"op": "ping"}'

    socket._send_custom_ping()  # no exception escapes to the timer's thread
