"""Listening sockets for the bot's HTTP servers (webhooks, simulator), and loopback kept
off proxies."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import MutableMapping
from typing import Final

__all__ = [
    "DEFAULT_SIM_PORT",
    "LOOPBACK_NAMES",
    "beyond_loopback",
    "cannot_listen",
    "http_url",
    "loopback_off_proxies",
    "tcp_listener",
]

#: Where `bot sim` listens unless told otherwise.
DEFAULT_SIM_PORT: Final = 8090

#: This machine's loopback as `no_proxy` entries: requests and websocket-client match the
#: bare names, urllib an IPv6 address only in brackets.
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1", "[::1]")


def loopback_off_proxies(environ: MutableMapping[str, str] = os.environ) -> None:
    """Add the loopback names to `no_proxy`, keeping what it (or `NO_PROXY`) holds.

    An HTTP(S)_PROXY set to reach Bybit would otherwise carry the bot's own loopback
    traffic too (requests, urllib and websocket-client all send 127.0.0.1 through it): the
    in-process simulator and its streams (`bot run` in `sim` could not start), and `bot
    signal send`, `bot halt` and `bot resume` to the local bot, whose signed commands a proxy
    elsewhere cannot deliver (its own loopback is not this one) and one here would see.
    Every client reads the lower-case name first, so that one is set."""
    given = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    entries = [entry.strip() for entry in given.split(",") if entry.strip()]
    missing = [name for name in LOOPBACK_NAMES if name not in entries]
    if missing:
        environ["no_proxy"] = ",".join([*entries, *missing])


def beyond_loopback(sock: socket.socket) -> bool:
    """Whether the bound `sock` listens for more than this machine (0.0.0.0, an address of
    the network): its address as bound, so that a name is judged by what it resolved to."""
    return not ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def http_url(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 address in brackets (`http://[::1]:8080`)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def tcp_listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn's `serve(sockets=[...])`; raises OSError if it cannot bind.

    The proto must say IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
    only then, and without it an answer written in two parts waits ~40 ms for a delayed ACK
    (measured: 44 ms against 2.2 ms p50 on loopback).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def cannot_listen(
    host: str, port: int, exc: OSError, *, who: str, host_option: str, port_option: str
) -> str:
    """One line saying why `tcp_listener(host, port)` failed and what to change: `who` may be
    holding the port already, `host_option` and `port_option` name the settings to change."""
    if exc.errno == errno.EADDRINUSE:
        hint = f"is {who} already running there? Choose another port with {port_option}"
    elif isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        hint = f"{host} is not an address of this machine; choose one with {host_option}"
    elif exc.errno == errno.EACCES:
        hint = f"port {port} needs privileges; choose one above 1023 with {port_option}"
    else:
        hint = f"choose another address or port ({host_option}, {port_option})"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}"
