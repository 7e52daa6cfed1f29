"""A blocking read run in a thread, once at a time: callers that come while it runs share its
result instead of queueing more of the same work (a scrape or a health probe that many
clients ask for at once must not occupy every thread of the event loop's executor)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Coalesced"]

T = TypeVar("T")


class Coalesced(Generic[T]):
    """`await coalesced()` runs `read()` in a thread, or joins the run under way."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._running is None:
            self._running = asyncio.ensure_future(asyncio.to_thread(self._read))
            self._running.add_done_callback(self._done)
        return await asyncio.shield(self._running)

    def _done(self, running: asyncio.Future[T]) -> None:
        self._running = None
        if not running.cancelled():
            running.exception()  # its callers were told (a cancelled one never asks again)
