"""The calendar clock every stage reads: the wall clock, or a replay's virtual clock.

What judges or stamps time by the calendar (a signal's age, orders per UTC day, the loss of
the day, every journal and message timestamp, the simulator's exchange clock) reads `now()` or
`now_ms()`, through `bot.messages.utc_now` for the bot. By default that is the wall clock,
read exactly as before (`datetime.now(UTC)`, `time.time_ns()`), so a real run cannot tell the
seam is there. `bot replay` installs a `VirtualClock` that jumps to each record's time, so a
month of signals runs in seconds and still crosses its UTC days.

Durations (timeouts, rate windows, backoff, cache ages) keep `time.monotonic`: a replay
compresses the calendar, never a wait. Request signatures (pybit's `X-BAPI-TIMESTAMP`, the
webhook's `X-Signature`) stay on the wall clock too: they prove freshness to a server, and the
simulator checks them against the same wall clock (`SimExchange.signing_clock_ms`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "VirtualClock", "WallClock", "installed", "now", "now_ms"]


class Clock(Protocol):
    """A source of the current time (timezone-aware UTC), never moving backwards."""

    def now(self) -> datetime:
        """The current time, aware and in UTC."""
        ...

    def now_ms(self) -> int:
        """The current time in epoch milliseconds."""
        ...


class WallClock:
    """The machine's clock: what every run uses unless a replay installs another."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class VirtualClock:
    """A calendar that starts at `start`, runs at the wall clock's pace, and jumps forward
    with `advance_to`: between two records of a history, time passes as it would live (a fill
    comes milliseconds after its order), while the hours between records take no time."""

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._base = start.astimezone(UTC)
        self._since_ns = time.monotonic_ns()

    def now(self) -> datetime:
        with self._lock:
            base, since_ns = self._base, self._since_ns
        return base + timedelta(microseconds=(time.monotonic_ns() - since_ns) // 1000)

    def now_ms(self) -> int:
        return (self.now() - _EPOCH) // _MILLISECOND

    def advance_to(self, moment: datetime) -> None:
        """Jump to `moment` if it is ahead; an earlier one changes nothing (time only moves
        forward: the journal and the risk gate's day and minute counts rely on it)."""
        with self._lock:
            elapsed = timedelta(microseconds=(time.monotonic_ns() - self._since_ns) // 1000)
            if moment.astimezone(UTC) > self._base + elapsed:
                self._base, self._since_ns = moment.astimezone(UTC), time.monotonic_ns()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_WALL = WallClock()
_current: Clock = _WALL


def now() -> datetime:
    """The current calendar time, aware and in UTC (`bot.messages.utc_now` is this)."""
    return _current.now()


def now_ms() -> int:
    """The current calendar time in epoch milliseconds (the simulator's exchange clock)."""
    return _current.now_ms()


@contextmanager
def installed(clock: Clock) -> Iterator[Clock]:
    """Make `clock` the process's calendar until the block ends (then the wall clock again).

    Process-wide on purpose: the bot, its simulator and their threads must share one "now".
    One replay at a time; nesting is refused rather than silently mixing two calendars.
    """
    global _current
    if _current is not _WALL:
        raise RuntimeError("another clock is already installed")
    _current = clock
    try:
        yield clock
    finally:
        _current = _WALL
