"""Memories that stay bounded however long the bot runs: an ordered dict kept in the order
its keys were last put in, forgetting the oldest past a limit; and which keys were noted
lately.

An `OrderedDict`, not a dict: a dict whose oldest entry is deleted again and again keeps the
deleted slots at its front until it is resized, so finding its oldest entry scans them (about
10 us a call at 10,000 entries here, on every fill and order of a long run, against 0.8)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Recently", "remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memory: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """Put `key` in `memory` with `value` as its newest entry (moved to the end if it was
    there); past `limit` entries, the oldest is forgotten."""
    memory[key] = value
    memory.move_to_end(key)
    if len(memory) > limit:
        memory.popitem(last=False)


class Recently:
    """Which keys were noted within the last `window_s`; at most `limit` are kept, the least
    recently noted going first (a key forgotten early is only noted again the sooner)."""

    def __init__(
        self, window_s: float, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._limit = limit
        self._clock = clock
        self._noted: OrderedDict[str, float] = OrderedDict()

    def first_in_a_while(self, key: str) -> bool:
        """True (and noted) if `key` was not noted within `window_s`."""
        now = self._clock()
        noted = self._noted.get(key)
        if noted is not None and now - noted < self._window_s:
            remember(self._noted, key, noted, self._limit)
            return False
        remember(self._noted, key, now, self._limit)
        return True

    def forget(self, key: str) -> bool:
        """Forget `key`, so that it is first in a while again at once; whether it was noted."""
        return self._noted.pop(key, None) is not None
