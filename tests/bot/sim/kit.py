"""Helpers the simulator's tests share: bounded waiting, an idle engine, the admin routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from bot.sim import SimServer

__all__ = ["admin", "eventually", "settle"]

T = TypeVar("T")
_WAIT_S = 5.0


def eventually(read: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Poll read() until done(value) holds (bounded), and return that value."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last seen: {value!r}")
        time.sleep(0.002)


def settle(server: SimServer) -> None:
    """Wait until the exchange's engine has nothing left to do (fills, triggered stops)."""
    eventually(
        lambda: server.exchange.stats()["pending_events"], lambda n: n == 0, "an idle engine"
    )


def admin(server: SimServer, method: str, path: str, body: Any = None) -> requests.Response:
    """A request to the simulator's unauthenticated /sim admin routes."""
    return requests.request(method, server.url + path, json=body, timeout=5)
