"""The reconciliation loop's schedule: each key at its own phase, and the exit scan slowed
only while the key's account stream stays up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from bot.execution.config import ExecutionConfig
from bot.execution.reconcile import Reconciler


class _Executor:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.passes: dict[str, list[float]] = {}

    async def reconcile(self, key_name: str) -> int:
        self.passes.setdefault(key_name, []).append(self._clock())
        return 0


class _Keeper:
    def __init__(self) -> None:
        self.scans = 0
        self.fill_catch_ups = 0

    async def catch_up_fills(self, venue: object) -> None:
        self.fill_catch_ups += 1

    async def catch_up_closed_pnl(self, venue: object) -> None:
        self.scans += 1  # every exit scan is followed by the closed-PnL catch-up


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
        return []  # nothing to ask the venue: the scan is counted by its closed-PnL catch-up


def _reconciler(
    keys: list[str], config: ExecutionConfig, account: _Account, executor: _Executor
) -> Reconciler:
    return Reconciler(
        cast(Any, executor),
        cast(Any, _Journal()),
        {key: cast(Any, object()) for key in keys},
        config,
        cast(Any, account),
    )


def test_each_key_passes_at_its_own_phase_of_the_interval() -> None:
    keys = ["k0", "k1", "k2", "k3"]
    config = ExecutionConfig(reconcile_interval_s=0.4)

    async def scenario() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        executor = _Executor(loop.time)
        reconciler = _reconciler(keys, config, _Account(), executor)
        started = loop.time()
        tasks = [asyncio.create_task(reconciler.run(key)) for key in keys]
        await asyncio.sleep(1.3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {key: [at - started for at in times] for key, times in executor.passes.items()}

    passes = asyncio.run(scenario())

    firsts = [passes[key][0] for key in keys]
    assert firsts == sorted(firsts)  # k0 first, k3 last: a quarter of the interval apart
    assert firsts[0] >= 0.4
    assert firsts[-1] - firsts[0] >= 0.2  # 0.3 s apart by phase; never all at once
    for key in keys:  # one pass per interval each, on the key's own grid
        gaps = [b - a for a, b in zip(passes[key], passes[key][1:], strict=False)]
        assert gaps and all(gap >= 0.35 for gap in gaps)


def test_the_exit_scan_slows_while_the_stream_stays_up_and_not_after_it_reconnects() -> None:
    config = ExecutionConfig(
        reconcile_interval_s=0.02, exit_scan_interval_s=0.05, exit_scan_live_interval_s=60
    )
    account = _Account()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        reconciler = _reconciler(["k"], config, account, _Executor(loop.time))
        task = asyncio.create_task(reconciler.run("k"))
        seen = []
        await asyncio.sleep(0.5)  # live all along: the first scan only
        seen.append(account.keeper.scans)
        account.connection = 2  # dropped and reconnected: what the gap hid is scanned for
        await asyncio.sleep(0.5)
        seen.append(account.keeper.scans)
        account.connection = None  # down: every exit_scan_interval_s
        await asyncio.sleep(0.5)
        seen.append(account.keeper.scans)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return seen

    live, reconnected, down = asyncio.run(scenario())

    assert live == 1
    assert reconnected == 2
    assert down >= reconnected + 3  # 0.5 s at one scan per 0.05 s (or per pass, if slower)
    assert account.keeper.fill_catch_ups > 0  # while down, fills come by REST


def test_a_live_interval_shorter_than_the_scan_interval_does_not_speed_the_scan_up() -> None:
    config = ExecutionConfig(
        reconcile_interval_s=0.02, exit_scan_interval_s=0.3, exit_scan_live_interval_s=0.01
    )
    account = _Account()

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        reconciler = _reconciler(["k"], config, account, _Executor(loop.time))
        task = asyncio.create_task(reconciler.run("k"))
        await asyncio.sleep(0.45)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return account.keeper.scans

    assert asyncio.run(scenario()) == 2  # at the first pass and 0.3 s later
