"""The reconciliation loop's schedule: each key at its own phase (kept after a pass that
overran), and the exit scan slowed only while the key's account stream stays up, no more
orders have been placed than the scan reads, and the last scan was complete."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from bot.execution.config import ExecutionConfig
from bot.execution.reconcile import ORDERS_BETWEEN_SCANS, Reconciler, next_slot
from bot.logs import logger
from bot.venue.errors import RetryableError


class _Executor:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.passes: dict[str, list[float]] = {}
        self.placed = 0

    async def reconcile(self, key_name: str) -> int:
        self.passes.setdefault(key_name, []).append(self._clock())
        return 0

    def orders_placed(self, key_name: str) -> int:
        return self.placed


class _Keeper:
    def __init__(self) -> None:
        self.scans = 0
        self.fill_catch_ups = 0

    async def catch_up_fills(self, venue: object) -> None:
        self.fill_catch_ups += 1

    async def catch_up_closed_pnl(self, venue: object) -> None:
        self.scans += 1  # every exit scan is followed by the closed-PnL catch-up

    def closed_pnl_due(self, key_name: str) -> bool:
        return False  # no position closes here: closed PnL comes with the scans only

    async def check_books(self, venue: object) -> None:
        """The books agree with the venue here."""

    def tell_closed_again(self, key_name: str) -> None:
        """No position closes here."""


class _Account:
    """One key's stream: `connection` is the live connection's number, None while down."""

    def __init__(self) -> None:
        self.keeper = _Keeper()
        self.connection: int | None = 1

    def live(self, key_name: str) -> bool:
        return self.connection is not None

    def live_connection(self, key_name: str) -> int | None:
        return self.connection


class _Journal:
    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return method(*args)

    def protected_symbols(self, key_name: str) -> list[str]:
        return ["BTCUSDT"]

    def record_exits(self, exit_orders: Sequence[object]) -> list[bool]:
        return [False for _ in exit_orders]

    def waiting_exits(self) -> list[object]:
        return []


class _Venue:
    def __init__(self) -> None:
        self.failing = False
        self.asked: list[tuple[str, ...]] = []  # the waiting exits each scan asked for by id

    async def exit_orders(self, symbol: str, waiting: Collection[str] = ()) -> list[object]:
        self.asked.append(tuple(waiting))
        if self.failing:
            raise RetryableError("HTTP 503", retry_after_s=0.0)
        return []


def _reconciler(
    keys: list[str],
    config: ExecutionConfig,
    account: _Account,
    executor: _Executor,
    venue: _Venue | None = None,
) -> Reconciler:
    return Reconciler(
        cast(Any, executor),
        cast(Any, _Journal()),
        {key: cast(Any, venue or _Venue()) for key in keys},
        config,
        cast(Any, account),
    )


@asynccontextmanager
async def _running(reconciler: Reconciler, *keys: str) -> AsyncIterator[None]:
    """The reconciliation loops of `keys`, cancelled on leaving."""
    tasks = [asyncio.create_task(reconciler.run(key)) for key in keys]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _JournalFullExecutor(_Executor):
    async def reconcile(self, key_name: str) -> int:
        raise sqlite3.OperationalError("database or disk is full")


def test_a_pass_the_journals_full_disk_fails_is_one_line_not_a_traceback() -> None:
    # On a full disk each pass (every second) logged a whole traceback.
    config = ExecutionConfig(reconcile_interval_s=0.02)
    errors: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reconciler = _reconciler(["k"], config, _Account(), _JournalFullExecutor(loop.time))
        async with _running(reconciler, "k"):
            await asyncio.sleep(0.1)

    handler = logger.add(errors.append, format="{message}|{exception}", level="ERROR")
    try:
        asyncio.run(scenario())
    finally:
        logger.remove(handler)

    assert errors
    assert set(errors) == {
        "reconciliation pass for key k failed: the journal cannot be written (database or "
        "disk is full)|\n"
    }


@given(
    slot=st.floats(0, 1e6),
    late=st.floats(0, 1e4),
    interval=st.floats(0.01, 60),
)
def test_the_next_slot_keeps_the_phase_and_is_never_past(
    slot: float, late: float, interval: float
) -> None:
    now = slot + late

    following = next_slot(slot, now, interval)

    assert following > now - 1e-6 * max(1.0, now)  # never in the past
    assert following <= now + interval * (1 + 1e-6) + 1e-6  # nor a slot too far
    steps = (following - slot) / interval
    assert abs(steps - round(steps)) < 1e-6 * max(1.0, steps)  # on the key's own timetable


def test_keys_held_up_together_do_not_stay_in_step() -> None:
    # Four keys a quarter of a second apart, all held up by the same wait (a full IP window)
    # until 10.0: each goes on at its own next slot, not all together.
    slots = [1.0, 1.25, 1.5, 1.75]

    after = [next_slot(slot, 10.0, 1.0) for slot in slots]

    assert after == [11.0, 10.25, 10.5, 10.75]


def test_each_key_passes_at_its_own_phase_of_the_interval() -> None:
    keys = ["k0", "k1", "k2", "k3"]
    config = ExecutionConfig(reconcile_interval_s=1.0)

    async def scenario() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        executor = _Executor(loop.time)
        reconciler = _reconciler(keys, config, _Account(), executor)
        started = loop.time()
        async with _running(reconciler, *keys):
            await asyncio.sleep(1.9)
        return {key: [at - started for at in times] for key, times in executor.passes.items()}

    passes = asyncio.run(scenario())

    firsts = [passes[key][0] for key in keys]
    assert firsts == sorted(firsts)  # k0 first, k3 last: a quarter of the interval apart
    assert firsts[0] >= 1.0
    assert firsts[-1] - firsts[0] >= 0.3  # 0.75 s apart by phase; never all at once


#: Passes every 20 ms, exit scans every 50 ms, and every minute while the stream stays up.
_QUICK_PASSES_SLOW_LIVE_SCANS = ExecutionConfig(
    reconcile_interval_s=0.02, exit_scan_interval_s=0.05, exit_scan_live_interval_s=60
)


def test_the_exit_scan_slows_while_the_stream_stays_up_and_not_after_it_reconnects() -> None:
    config = _QUICK_PASSES_SLOW_LIVE_SCANS
    account = _Account()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        reconciler = _reconciler(["k"], config, account, _Executor(loop.time))
        async with _running(reconciler, "k"):
            seen = []
            await asyncio.sleep(0.5)  # live all along: the first scan only
            seen.append(account.keeper.scans)
            account.connection = 2  # dropped and reconnected: what the gap hid is scanned for
            await asyncio.sleep(0.5)
            seen.append(account.keeper.scans)
            account.connection = None  # down: every exit_scan_interval_s
            await asyncio.sleep(0.5)
            seen.append(account.keeper.scans)
        return seen

    live, reconnected, down = asyncio.run(scenario())

    assert live == 1
    assert reconnected == 2
    assert down >= reconnected + 3  # 0.5 s at one scan per 0.05 s (or per pass, if slower)
    assert account.keeper.fill_catch_ups > 0  # while down, fills come by REST


def test_a_key_placing_many_orders_is_scanned_before_they_push_exits_out_of_reach() -> None:
    config = _QUICK_PASSES_SLOW_LIVE_SCANS
    account = _Account()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        executor = _Executor(loop.time)
        reconciler = _reconciler(["k"], config, account, executor)
        async with _running(reconciler, "k"):
            seen = []
            await asyncio.sleep(0.2)
            seen.append(account.keeper.scans)
            executor.placed = ORDERS_BETWEEN_SCANS - 1  # the scan still reaches back far enough
            await asyncio.sleep(0.2)
            seen.append(account.keeper.scans)
            executor.placed = ORDERS_BETWEEN_SCANS
            await asyncio.sleep(0.2)
            seen.append(account.keeper.scans)
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2]


def test_waiting_exits_are_asked_for_by_id_only_in_scans_no_live_stream_covered() -> None:
    # Every scan asked for each waiting exit the latest orders missed, one or two requests
    # each: at 100 orders a second, with a stop resting all along, a scan every 25 orders
    # took the orders' request budget (signal -> order p50 3 ms -> 33 ms in bench.intake).
    config = _QUICK_PASSES_SLOW_LIVE_SCANS
    account, venue = _Account(), _Venue()

    class Waiting(_Journal):
        def waiting_exits(self) -> list[object]:
            return [SimpleNamespace(key_name="k", symbol="BTCUSDT", order_id="sl-1")]

    async def scenario() -> list[tuple[str, ...]]:
        loop = asyncio.get_running_loop()
        executor = _Executor(loop.time)
        reconciler = Reconciler(
            cast(Any, executor),
            cast(Any, Waiting()),
            {"k": cast(Any, venue)},
            config,
            cast(Any, account),
        )
        async with _running(reconciler, "k"):
            await asyncio.sleep(0.2)  # the first scan
            executor.placed = ORDERS_BETWEEN_SCANS  # a scan for the orders, the stream up
            await asyncio.sleep(0.2)
            account.connection = 2  # reconnected
            executor.placed = 2 * ORDERS_BETWEEN_SCANS
            await asyncio.sleep(0.2)
        return venue.asked

    assert asyncio.run(scenario()) == [("sl-1",), (), ("sl-1",)]


def test_a_scan_that_could_not_read_a_symbol_is_tried_again_at_the_short_interval() -> None:
    config = ExecutionConfig(
        reconcile_interval_s=0.02, exit_scan_interval_s=0.3, exit_scan_live_interval_s=60
    )
    account, venue = _Account(), _Venue()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        reconciler = _reconciler(["k"], config, account, _Executor(loop.time), venue)
        venue.failing = True
        async with _running(reconciler, "k"):
            seen = []
            await asyncio.sleep(0.15)
            seen.append(account.keeper.scans)  # the first, incomplete
            venue.failing = False
            await asyncio.sleep(0.5)
            seen.append(account.keeper.scans)  # again 0.3 s after it, complete this time
            await asyncio.sleep(0.5)
            seen.append(account.keeper.scans)  # then the live interval holds
        return seen

    first, again, after = asyncio.run(scenario())

    assert first == 1
    assert again == 2
    assert after == again


def test_a_live_interval_shorter_than_the_scan_interval_does_not_speed_the_scan_up() -> None:
    config = ExecutionConfig(
        reconcile_interval_s=0.02, exit_scan_interval_s=0.3, exit_scan_live_interval_s=0.01
    )
    account = _Account()

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        reconciler = _reconciler(["k"], config, account, _Executor(loop.time))
        async with _running(reconciler, "k"):
            await asyncio.sleep(0.45)
        return account.keeper.scans

    assert asyncio.run(scenario()) == 2  # at the first pass and 0.3 s later
