"""StrategyRunner: strategy code on its own thread, within its budget, failures counted."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import pytest

from bot.logs import logger
from bot.runner import Failed, StrategyRunner, _DaemonWorker

T = TypeVar("T")


def run(work: Callable[[StrategyRunner], Awaitable[T]], **options: float) -> T:
    """`work(runner)` on a fresh event loop, the runner's threads stopped afterwards."""
    runner = StrategyRunner(**options)  # type: ignore[arg-type]

    async def main() -> T:
        return await work(runner)

    try:
        return asyncio.run(main())
    finally:
        runner.close()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line (with its traceback, if any) while the test runs."""
    lines: list[str] = []
    handler = logger.add(lines.append, level="DEBUG", format="{message}\n{exception}")
    yield lines
    logger.remove(handler)


def boom() -> int:
    raise ZeroDivisionError("plug-in bug")


def test_the_calls_result_is_returned_from_a_thread_of_the_strategys_own() -> None:
    def where() -> str:
        return threading.current_thread().name

    async def work(runner: StrategyRunner) -> tuple[object, object]:
        return await runner.call("alpha", "on_signal", where), await runner.call(
            "beta", "on_signal", where
        )

    alpha, beta = run(work)

    assert isinstance(alpha, str) and isinstance(beta, str)
    assert alpha.startswith("strategy-alpha")
    assert beta.startswith("strategy-beta")
    assert threading.current_thread().name not in (alpha, beta)


def test_a_call_that_raises_fails_with_the_reason_and_its_traceback_is_logged(
    logged: list[str],
) -> None:
    async def work(runner: StrategyRunner) -> object:
        return await runner.call("alpha", "on_fill", boom)

    failed = run(work)

    assert failed == Failed("on_fill raised ZeroDivisionError: plug-in bug", halt=False)
    text = "\n".join(logged)
    assert "strategy alpha: on_fill raised" in text
    assert "Traceback" in text
    assert 'raise ZeroDivisionError("plug-in bug")' in text  # the plug-in's own line


def test_a_plug_in_raising_timeout_error_within_its_budget_raised_it_and_did_not_overrun() -> None:
    def times_out() -> None:
        raise TimeoutError("its own time-out")

    async def work(runner: StrategyRunner) -> object:
        return await runner.call("alpha", "on_signal", times_out)

    assert run(work, budget_s=5.0) == Failed("on_signal raised TimeoutError: its own time-out")


def interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("exit_call", [lambda: sys.exit(3), interrupt], ids=["exit", "interrupt"])
def test_a_plug_in_exiting_fails_its_call_and_does_not_stop_the_bot(
    exit_call: Callable[[], None],
) -> None:
    async def work(runner: StrategyRunner) -> tuple[object, object]:
        failed = await runner.call("alpha", "on_signal", exit_call)
        return failed, await runner.call("alpha", "on_signal", lambda: "still here")

    failed, after = run(work)

    assert isinstance(failed, Failed)
    assert failed.reason.startswith("on_signal raised ")
    assert after == "still here"


def test_a_call_past_its_budget_fails_and_its_late_result_is_dropped() -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "late"

    async def work(runner: StrategyRunner) -> tuple[object, object]:
        overrun = await runner.call("alpha", "on_signal", slow)
        release.set()
        await asyncio.to_thread(_wait_idle, runner, "alpha")
        return overrun, await runner.call("alpha", "on_signal", lambda: "next")

    overrun, after = run(work, budget_s=0.05)

    # Waiting, not computing: given its budget and WAIT_ALLOWANCE_S (1 s) of wall time.
    assert overrun == Failed(
        "on_signal overran its time budget of 50 ms (still waiting after 1.05 s)"
    )
    assert after == "next"


def computing(stop: threading.Event, for_s: float = 5.0) -> Callable[[], str]:
    """A call that computes (CPU on its own thread) until `stop` is set, for at most `for_s`."""

    def work() -> str:
        until = time.monotonic() + for_s
        while not stop.is_set() and time.monotonic() < until:
            pass
        return "computed"

    return work


def test_a_call_computing_past_its_budget_overruns_on_its_cpu_time() -> None:
    stop = threading.Event()

    async def work(runner: StrategyRunner) -> object:
        try:
            return await runner.call("alpha", "on_signal", computing(stop))
        finally:
            stop.set()

    assert run(work, budget_s=0.05) == Failed("on_signal overran its time budget of 50 ms")


def test_a_calls_cpu_time_is_never_read_from_another_call() -> None:
    """Judged by the CPU time of whatever call ran, the next call of a strategy whose
    abandoned call had just ended (its thread not yet past its bookkeeping) was failed at
    once, with the abandoned call's time."""
    worker = _DaemonWorker("strategy-cpu")
    stop = threading.Event()
    try:
        running = worker.submit(computing(stop))
        queued: Future[str] = worker.submit(lambda: "next")
        assert wait_until(lambda: (worker.cpu_s(running) or 0) > 0.01)
        assert worker.cpu_s(queued) == 0.0  # not begun: nothing spent, whatever runs
    finally:
        stop.set()
        worker.shutdown()
    assert queued.result(timeout=5) == "next"


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether `condition` held within `timeout_s` (a bound, not a timing)."""
    until = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > until:
            return False
        time.sleep(0.005)
    return True


def test_a_call_that_waits_past_its_budget_but_not_its_allowance_is_not_an_overrun() -> None:
    """The budget is the strategy's own CPU time: a call that took 300 ms of wall time while
    its thread computed for a fraction of a millisecond (the whole process paused by a full
    garbage collection, another thread holding the interpreter lock, a host that stopped the
    machine; or a short wait of its own) is not the strategy's overrun, and its signal must
    not be lost to it."""

    def held_up() -> str:
        time.sleep(0.3)
        return "done"

    async def work(runner: StrategyRunner) -> object:
        return await runner.call("alpha", "on_signal", held_up)

    assert run(work, budget_s=0.05) == "done"


def _wait_idle(runner: StrategyRunner, strategy: str) -> None:
    """Until the strategy's thread has finished what it was running (a bound, not a timing)."""
    lane = runner._lane(strategy)
    assert lane.running is not None
    lane.running.result(timeout=5)


def test_a_call_while_the_overrunning_one_still_runs_fails_at_once_without_queueing() -> None:
    release = threading.Event()
    started: list[str] = []

    def slow() -> None:
        started.append("slow")
        release.wait(5)

    def quick() -> str:
        started.append("quick")
        return "quick"

    async def work(runner: StrategyRunner) -> tuple[object, object, float]:
        await runner.call("alpha", "on_signal", slow)
        began = time.monotonic()
        busy = await runner.call("alpha", "on_timer", quick)
        waited = time.monotonic() - began
        release.set()
        return busy, started.copy(), waited

    busy, calls, waited = run(work, budget_s=0.05)

    assert busy == Failed("on_timer not called: its previous call is still running")
    assert calls == ["slow"]  # quick was never queued behind it
    assert waited < 0.05  # it did not wait for the budget: it failed at once


def test_calls_from_two_lanes_at_once_take_turns_instead_of_failing() -> None:
    # The pipeline runs one lane per (key, symbol): a strategy trading BTCUSDT and ETHUSDT is
    # called from both at once. Neither call overran: the second waits its turn.
    def work_for(result: str) -> Callable[[], str]:
        def work() -> str:
            time.sleep(0.05)
            return result

        return work

    async def work(runner: StrategyRunner) -> list[object]:
        return list(
            await asyncio.gather(
                runner.call("alpha", "on_signal", work_for("BTCUSDT")),
                runner.call("alpha", "on_signal", work_for("ETHUSDT")),
            )
        )

    assert run(work, budget_s=1.0) == ["BTCUSDT", "ETHUSDT"]


def test_the_halt_flag_comes_with_the_max_failures_th_failure_in_a_row() -> None:
    async def work(runner: StrategyRunner) -> list[bool]:
        runner.add("alpha", budget_s=1.0, max_failures=3)
        flags = []
        for _ in range(7):
            failed = await runner.call("alpha", "on_signal", boom)
            assert isinstance(failed, Failed)
            flags.append(failed.halt)
        return flags

    # The 3rd failure halts the strategy. A person may resume it; if it goes on failing, the
    # next 3 in a row halt it again (a count left at 4, 5, ... would never reach 3 again).
    assert run(work) == [False, False, True, False, False, True, False]


def test_a_good_call_resets_the_count() -> None:
    async def work(runner: StrategyRunner) -> list[object]:
        runner.add("alpha", budget_s=1.0, max_failures=3)
        outcomes = []
        for call in (boom, boom, lambda: "ok", boom, boom, boom):
            outcome = await runner.call("alpha", "on_signal", call)
            outcomes.append(outcome.halt if isinstance(outcome, Failed) else outcome)
        return outcomes

    assert run(work) == [False, False, "ok", False, False, True]


def test_each_strategy_has_its_own_budget_count_and_thread() -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "slow"

    async def work(runner: StrategyRunner) -> list[object]:
        runner.add("patient", budget_s=5.0, max_failures=1)
        runner.add("hasty", budget_s=0.05, max_failures=1)
        patient = asyncio.create_task(runner.call("patient", "on_signal", slow))
        hasty = await runner.call("hasty", "on_signal", lambda: "done while the other runs")
        failed = await runner.call("hasty", "on_signal", boom)
        release.set()
        return [hasty, failed, await patient, runner.max_failures("patient")]

    hasty, failed, patient, limit = run(work)

    assert hasty == "done while the other runs"
    assert failed == Failed("on_signal raised ZeroDivisionError: plug-in bug", halt=True)
    assert (patient, limit) == ("slow", 1)


def test_a_slow_strategy_never_blocks_the_event_loop() -> None:
    def sleepy() -> str:
        time.sleep(0.2)
        return "done"

    async def work(runner: StrategyRunner) -> tuple[object, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        result = await runner.call("alpha", "on_signal", sleepy)
        ticker.cancel()
        return result, ticks

    result, ticks = run(work, budget_s=1.0)

    assert result == "done"
    # A blocked loop would have ticked at most once during the 200 ms call.
    assert ticks >= 5


def test_a_call_that_never_returns_does_not_keep_the_process_alive() -> None:
    """A plug-in stuck for ever (on_start past its budget, a blocked on_signal): the bot
    stops, and its process must exit, not wait for the thread at the interpreter's exit."""
    script = (
        "import asyncio, threading\n"
        "from bot.runner import StrategyRunner\n"
        "runner = StrategyRunner(budget_s=0.1)\n"
        "blocked = lambda: threading.Event().wait()\n"
        "print(asyncio.run(runner.call('stuck', 'on_start', blocked)).reason)\n"
        "runner.close()\n"
    )

    ended = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )

    assert ended.returncode == 0, ended.stderr
    assert "on_start overran its time budget of 100 ms" in ended.stdout


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str exploded")


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (Unprintable(), "on_signal raised Unprintable: (its message could not be made)"),
        (ValueError("boom \udcff\nsecond line"), "on_signal raised ValueError: boom   second line"),
    ],
)
def test_a_plug_ins_exception_is_a_failure_of_one_line_whatever_its_text(
    error: Exception, said: str
) -> None:
    """Its text was made outside any guard: the signal's job died and the signal stayed
    unprocessed for ever (in `bot run`; `bot replay` hung for 30 s)."""

    def raising() -> None:
        raise error

    outcome = run(lambda runner: runner.call("s", "on_signal", raising), budget_s=1.0)

    assert isinstance(outcome, Failed) and outcome.reason == said
