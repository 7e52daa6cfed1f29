"""Memories that stay bounded however long the bot runs: a dict kept in the order its keys
were last put in, forgetting the oldest past a limit; and which keys were noted lately."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Recently", "remember"]

K = TypeVar("K")
V = TypeVar("V")


def remember(memory: dict[K, V], key: K, value: V, limit: int) -> None:
    """Put `key` in `memory` with `value` as its newest entry (moved to the end if it was
    there); past `limit` entries, the oldest is forgotten."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > limit:
        del memory[next(iter(memory))]


class Recently:
    """Which keys were noted within the last `window_s`; at most `limit` are kept, the least
    recently noted going first (a key forgotten early is only noted again the sooner)."""

    def __init__(
        self, window_s: float, limit: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._limit = limit
        self._clock = clock
        self._noted: dict[str, float] = {}

    def first_in_a_while(self, key: str) -> bool:
        """True (and noted) if `key` was not noted within `window_s`."""
        now = self._clock()
        noted = self._noted.get(key)
        if noted is not None and now - noted < self._window_s:
            remember(self._noted, key, noted, self._limit)
            return False
        remember(self._noted, key, now, self._limit)
        return True
