"""Running strategy code in isolation: off the event loop, within a time budget.

A strategy is someone else's code. Each one gets its own worker thread, so a slow call never
delays a webhook answer or another strategy, and a time budget: a call that overruns is
abandoned (its result, whenever it comes, is dropped) and counts as a failure, as does one
that raises (anything: a plug-in's `sys.exit()` fails its call, it does not stop the bot).

The budget is the CPU time the call's thread spends on it: what the strategy's own code
costs. A pause of the whole process (another thread holding the interpreter lock, a host
that stops the machine for half a second) takes wall time from every call in flight without
being the strategy's doing, and a trivial call failed by one would
lose its signal. A call that waits instead of computing (a sleep, a network read, a lock) is
given its budget plus `WAIT_ALLOWANCE_S` of wall time, then overruns too. Where the
platform has no per-thread CPU clock, the budget is wall time.
The traceback goes to the log; the caller journals the failure. After
`max_failures` failures in a row the strategy is reported failing, so the caller can halt
it, and the count starts again; one good call resets it too.

A strategy's calls take turns: the pipeline may call it from several lanes at once (one per
key and symbol), and each call waits for the one before it. A thread cannot be killed: while
an overrunning call is still running, the strategy's next calls fail at once ("still
running") instead of queueing behind it. The threads are daemons: a call that never returns
does not keep the process from exiting once the bot has stopped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.logs import logger
from bot.messages import one_line

__all__ = ["WAIT_ALLOWANCE_S", "Failed", "StrategyRunner", "plugin_error_said"]

T = TypeVar("T")

#: Wall time a call may take past its budget, waiting rather than computing.
WAIT_ALLOWANCE_S = 1.0
#: The shortest wait between two looks at a call's CPU time.
_LOOK_AGAIN_S = 0.005


@dataclass(frozen=True)
class Failed:
    """A strategy call that raised or overran; `reason` is one line for the journal."""

    reason: str
    #: this failure is the `max_failures`-th in a row: the strategy should be halted now
    halt: bool = False


class _DaemonWorker:
    """One daemon thread running the calls submitted to it, in order. (A ThreadPoolExecutor's
    threads are joined when the interpreter exits: one stuck in a strategy's endless loop
    would keep a stopped bot's process alive for ever.)"""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        #: The running call's future and the thread's CPU time when it began (None: none).
        self._running: tuple[Future[Any], float] | None = None
        thread = threading.Thread(target=self._run, name=name, daemon=True)
        thread.start()  # returns once the thread runs: its ident is known
        self._cpu_clock = _cpu_clock_of(thread)

    def cpu_s(self, future: Future[Any]) -> float | None:
        """CPU seconds the call of `future` has spent so far (0 before it began: never
        another call's, ended or not); None where the platform has no per-thread CPU clock."""
        running = self._running
        if self._cpu_clock is None:
            return None
        if running is None or running[0] is not future:
            return 0.0
        try:
            return max(0.0, time.clock_gettime(self._cpu_clock) - running[1])
        except OSError:  # the thread has ended (closed)
            return None

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """`call()` on the thread, after those submitted before it; cancelled once closed."""
        future: Future[T] = Future()
        if self._closed:
            future.cancel()
        else:
            self._calls.put((future, call))
        return future

    def shutdown(self) -> None:
        """Cancel what has not started; the thread ends after the call it is running."""
        self._closed = True
        self._calls.put(None)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            self._running = (future, time.thread_time())
            try:
                result = call()
            except BaseException as exc:  # the plug-in's SystemExit included
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                self._running = None
        while True:  # closed: what is still queued never runs
            try:
                left = self._calls.get_nowait()
            except queue.Empty:
                return
            if left is not None:
                left[0].cancel()


def _cpu_clock_of(thread: threading.Thread) -> int | None:
    """The CPU-time clock of `thread`, readable from any thread; None where there is none."""
    try:
        return time.pthread_getcpuclockid(thread.ident or 0)
    except (AttributeError, OSError):  # not on every platform
        return None


@dataclass
class _Lane:
    pool: _DaemonWorker
    budget_s: float
    max_failures: int
    failures: int = 0
    running: Future[Any] | None = None
    #: held while one of the strategy's calls runs within its budget: the next waits for it
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)


class StrategyRunner:
    """Calls strategy code on the strategy's own thread, within its time budget."""

    def __init__(self, *, budget_s: float = 0.05, max_failures: int = 3) -> None:
        """Defaults for strategies not `add`ed with their own."""
        self._budget_s = budget_s
        self._max_failures = max_failures
        self._lanes: dict[str, _Lane] = {}

    def add(self, strategy: str, *, budget_s: float, max_failures: int) -> None:
        self._lanes[strategy] = _Lane(_DaemonWorker(f"strategy-{strategy}"), budget_s, max_failures)

    def max_failures(self, strategy: str) -> int:
        return self._lane(strategy).max_failures

    def _lane(self, strategy: str) -> _Lane:
        if strategy not in self._lanes:
            self.add(strategy, budget_s=self._budget_s, max_failures=self._max_failures)
        return self._lanes[strategy]

    def close(self) -> None:
        """Stop the threads (a call still running is left to finish on its own)."""
        for lane in self._lanes.values():
            lane.pool.shutdown()

    async def call(
        self, strategy: str, what: str, call: Callable[[], T], *, budget_s: float | None = None
    ) -> T | Failed:
        """`call()` on `strategy`'s thread; its result, or `Failed` saying why not.
        `what` names the call in messages (e.g. "on_signal"); `budget_s` overrides the
        strategy's budget for this call."""
        lane = self._lane(strategy)
        async with lane.turn:
            return await self._call(strategy, lane, what, call, budget_s or lane.budget_s)

    async def _call(
        self, strategy: str, lane: _Lane, what: str, call: Callable[[], T], budget_s: float
    ) -> T | Failed:
        if lane.running is not None and not lane.running.done():  # it overran: abandoned
            return self._failed(
                strategy, lane, f"{what} not called: its previous call is still running"
            )
        future = lane.pool.submit(call)
        lane.running = future
        outcome = asyncio.wrap_future(future)
        try:
            overrun = await self._overran(lane, future, outcome, budget_s)
        except asyncio.CancelledError:
            outcome.cancel()  # the caller is going away: drop the result, whenever it comes
            raise
        if overrun is not None:
            outcome.cancel()  # the thread runs on; its result, whenever it comes, is dropped
            budget_ms = round(budget_s * 1000)
            return self._failed(
                strategy, lane, f"{what} overran its time budget of {budget_ms} ms{overrun}"
            )
        if outcome.cancelled():  # the runner was closed before the call could start
            return self._failed(strategy, lane, f"{what} not called: the runner is closed")
        error = outcome.exception()
        if error is not None:  # the plug-in's own bug (anything it raised): with its traceback
            logger.opt(exception=error).error(
                "strategy {name}: {what} raised", name=strategy, what=what
            )
            return self._failed(strategy, lane, f"{what} raised {plugin_error_said(error)}")
        lane.failures = 0
        return outcome.result()

    @staticmethod
    async def _overran(
        lane: _Lane, future: Future[Any], outcome: asyncio.Future[Any], budget_s: float
    ) -> str | None:
        """Wait for the call; None once it is done within its budget, else how it overran:
        "" past its CPU budget (or its wall-time budget, without a CPU clock), or the wall
        time it waited past its allowance. `wait` never raises what the call raised: a
        TimeoutError of the plug-in's own is not an overrun, and its SystemExit or
        KeyboardInterrupt must not reach the loop."""
        loop = asyncio.get_running_loop()
        allowed_s = budget_s + WAIT_ALLOWANCE_S
        give_up = loop.time() + allowed_s
        wait_s = budget_s
        while True:
            done, _ = await asyncio.wait({outcome}, timeout=wait_s)
            if done:
                return None
            spent = lane.pool.cpu_s(future)
            if spent is None or spent >= budget_s:
                return ""
            left = give_up - loop.time()
            if left <= 0:
                return f" (still waiting after {allowed_s:g} s)"
            wait_s = min(max(budget_s - spent, _LOOK_AGAIN_S), left)

    @staticmethod
    def _failed(strategy: str, lane: _Lane, reason: str) -> Failed:
        lane.failures += 1
        logger.warning(
            "strategy {name} failed ({n} in a row): {reason}",
            name=strategy,
            n=lane.failures,
            reason=reason,
        )
        if lane.failures < lane.max_failures:
            return Failed(reason)
        lane.failures = 0  # counted afresh: after a resume, as many failures halt it again
        return Failed(reason, halt=True)


def plugin_error_said(error: BaseException) -> str:
    """A plug-in's exception as one line: its type and text (which the plug-in's own code
    makes, and which may fail, or hold what no log line can)."""
    try:
        text = str(error)
    except Exception:  # its __str__ raised
        text = "(its message could not be made)"
    return one_line(f"{type(error).__name__}: {text}" if text else type(error).__name__)
