"""Orders per strategy: in the last minute (rolling) and in the current UTC day.

Every approval counts, reduce-only ones too (they are orders the venue sees); the gate only
refuses opening orders past a count. Seeded at start-up from the journal's orders, so a
restart does not reset a strategy's day.
"""

from __future__ import annotations

from collections import deque
from datetime import date, datetime, timedelta
from typing import Final

__all__ = ["OrderCounts", "counting_since", "utc_day_start"]

_MINUTE: Final = timedelta(minutes=1)


def utc_day_start(now: datetime) -> datetime:
    """Midnight (UTC) that began `now`'s day."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def counting_since(now: datetime) -> datetime:
    """The oldest approval that still counts at `now`: from the UTC day's start, or from a
    minute ago when that is earlier (just after midnight). What a restart re-counts."""
    return min(utc_day_start(now), now - _MINUTE)


class OrderCounts:
    """Approval times per strategy, enough of them to answer both counts."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[datetime]] = {}
        self._days: dict[str, tuple[date, int]] = {}

    def count(self, strategy: str, at: datetime) -> None:
        """One more order of `strategy`, approved at `at`."""
        self._recent.setdefault(strategy, deque()).append(at)
        self.last_minute(strategy, at)  # what fell out of the minute goes now: a strategy
        # that only reduces is never asked for its counts
        day, n = self._days.get(strategy, (at.date(), 0))
        if at.date() > day:
            day, n = at.date(), 0
        if at.date() == day:
            self._days[strategy] = (day, n + 1)

    def uncount(self, strategy: str, at: datetime) -> None:
        """Take back one order of `strategy` counted at `at`: its approval came to nothing
        (the journal could not write it, so it was never sent)."""
        recent = self._recent.get(strategy)
        if recent is not None and at in recent:
            recent.remove(at)
        day, n = self._days.get(strategy, (at.date(), 0))
        if day == at.date() and n > 0:
            self._days[strategy] = (day, n - 1)

    def last_minute(self, strategy: str, now: datetime) -> int:
        recent = self._recent.get(strategy)
        if recent is None:
            return 0
        while recent and now - recent[0] >= _MINUTE:
            recent.popleft()
        return len(recent)

    def today(self, strategy: str, now: datetime) -> int:
        day, n = self._days.get(strategy, (now.date(), 0))
        return n if day == now.date() else 0
