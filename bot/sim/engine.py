"""The simulator's matching clock: a heap of due events, run by a thread or by hand.

Bybit acknowledges an order before its matching engine has seen it; fills, price walks and
delayed visibility therefore happen later, on this clock. The scheduler shares the exchange's
one lock (its condition variable is built on it), so an event runs with the books locked,
exactly like a request does. Tests without a server drive it by hand with `advance(ms)`;
`SimServer` and `run_forever` start its thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Scheduler"]

Action = Callable[[], None]
_JOIN_TIMEOUT_S = 5.0


@dataclass(order=True, slots=True)
class _Event:
    due_ms: int
    seq: int
    action: Action = field(compare=False)
    #: A standing wake-up (a settlement clock), always on the heap: not work the engine
    #: has left to do, so neither `pending` nor `run_due` counts it.
    background: bool = field(default=False, compare=False)


class Scheduler:
    """Due events on a monotonic millisecond clock that `advance()` can move ahead.

    Every method except `start`/`stop` must be called with the shared lock held.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._condition = threading.Condition(lock)
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._offset_ms = 0
        self._background = 0  # background events on the heap
        #: Due time of the event being run: what it schedules counts from then, so a chain
        #: of events keeps its spacing however late (or far ahead under advance) it runs.
        self._running_due_ms: int | None = None
        self._users = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ lock held

    def now_ms(self) -> int:
        """The engine clock: monotonic ms, plus whatever `advance()` added."""
        return time.monotonic_ns() // 1_000_000 + self._offset_ms

    def schedule(self, delay_ms: int, action: Action) -> None:
        """Run action (with the lock held) delay_ms after now, or after the due time of the
        event that schedules it."""
        base = self._running_due_ms if self._running_due_ms is not None else self.now_ms()
        self.schedule_at(base + max(delay_ms, 0), action)

    def schedule_at(self, due_ms: int, action: Action, *, background: bool = False) -> None:
        """Run action once the engine clock reaches due_ms; `background`: a standing
        wake-up, not counted as work left (`pending`) nor as work done (`run_due`)."""
        heapq.heappush(self._heap, _Event(due_ms, next(self._seq), action, background))
        self._background += background
        self._condition.notify_all()

    def run_due(self) -> int:
        """Run every event due by now, in due order (ties in scheduling order); count them
        (but for background ones).

        An event may schedule more; those run too if already due.
        """
        ran = 0
        while self._heap and self._heap[0].due_ms <= self.now_ms():
            event = heapq.heappop(self._heap)
            self._background -= event.background
            self._running_due_ms = event.due_ms
            try:
                event.action()
            finally:
                self._running_due_ms = None
            ran += not event.background
        return ran

    def advance(self, ms: int) -> int:
        """Move the engine clock ms ahead and run what became due; for tests without a thread."""
        if ms < 0:
            raise ValueError("the engine clock only moves forward")
        self._offset_ms += ms
        return self.run_due()

    @property
    def pending(self) -> int:
        """Events waiting to run, but for background ones."""
        return len(self._heap) - self._background

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Start the engine thread, or count one more user of the running one."""
        with self._condition:
            self._users += 1
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="sim-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Release one user; the last one stops and joins the thread. Idempotent at zero."""
        with self._condition:
            if self._users == 0:
                return
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            self._stopping = True
            self._condition.notify_all()
            thread, self._thread = self._thread, None
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("the simulator engine did not stop")

    @property
    def running(self) -> bool:
        """Whether the engine thread is running."""
        return self._thread is not None

    def _loop(self) -> None:
        with self._condition:
            while not self._stopping:
                self._run_guarded()
                if self._heap:
                    wait_s = max(self._heap[0].due_ms - self.now_ms(), 0) / 1000
                    self._condition.wait(wait_s)
                else:
                    self._condition.wait()

    def _run_guarded(self) -> None:
        # An event that raises must not kill the clock for every later order; it is kept
        # for inspection and the rest still run.
        try:
            self.run_due()
        except Exception as exc:
            self._failure = exc

    @property
    def failure(self) -> BaseException | None:
        """The last exception an event raised on the engine thread, if any."""
        return self._failure
