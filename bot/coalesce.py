"""Work that many callers ask for at once, done once: callers that come while it runs share
its result instead of queueing more of the same (a scrape or a health probe that many
clients send together must not repeat its reads and renderings in front of every signal)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Coalesced"]

T = TypeVar("T")


class Coalesced(Generic[T]):
    """`await coalesced()` runs `work()`, or joins the run under way. For a blocking read,
    `Coalesced(partial(asyncio.to_thread, read))`."""

    def __init__(self, work: Callable[[], Awaitable[T]]) -> None:
        self._work = work
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._running is None:
            self._running = asyncio.ensure_future(self._work())
            self._running.add_done_callback(self._done)
        return await asyncio.shield(self._running)

    def _done(self, running: asyncio.Future[T]) -> None:
        self._running = None
        if not running.cancelled():
            running.exception()  # its callers were told (a cancelled one never asks again)
