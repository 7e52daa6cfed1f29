"""Rolling-window request counting, the way Bybit limits requests per key and per IP."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["RateDecision", "RollingWindowLimiter"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one hit, with what Bybit's X-Bapi-Limit* headers report."""

    #: Whether every request asked for was counted.
    allowed: bool
    limit: int
    remaining: int
    #: When the oldest counted request leaves the window, i.e. when one more request fits.
    window_reset_ms: int
    #: How many of the requests asked for were counted (a batch may fit in part).
    granted: int


class RollingWindowLimiter:
    """At most `limit` requests per key in any `window_ms`; refused requests are not counted.

    Not thread-safe: the simulator app calls it from its event loop thread only.
    """

    def __init__(self, limit: int, window_ms: int) -> None:
        if limit < 1 or window_ms < 1:
            raise ValueError("limit and window_ms must be positive")
        self._limit = limit
        self._window_ms = window_ms
        self._hits: dict[Hashable, deque[int]] = {}

    def hit(self, key: Hashable, now_ms: int, count: int = 1) -> RateDecision:
        """Count `count` requests for key at now_ms, as many as fit the window, and say how
        many did (Bybit's batch endpoints consume one per order and fail the rest)."""
        if count < 1:
            raise ValueError("count must be positive")
        hits = self._hits.setdefault(key, deque())
        horizon = now_ms - self._window_ms
        while hits and hits[0] <= horizon:
            hits.popleft()
        granted = max(min(count, self._limit - len(hits)), 0)
        hits.extend([now_ms] * granted)
        oldest = hits[0] if hits else now_ms
        return RateDecision(
            allowed=granted == count,
            limit=self._limit,
            remaining=self._limit - len(hits),
            window_reset_ms=oldest + self._window_ms,
            granted=granted,
        )
