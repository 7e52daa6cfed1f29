"""The risk gate alone: decisions per second and time per decision, every rule on.

Ten strategies, each with its own tightened limits, an exposure ledger holding orders in
flight for all of them, positions in every book, a daily loss and a cooldown to check; intents
of every kind (opening and closing, market and limit, with stops and leverage) are decided one
after another, each timed with `perf_counter_ns`. Every approval is reserved and counted, and
settles (is released) 50 decisions later, outside the timing, as orders do. The floor,
measured in the same run, is the timing loop itself around a call that does nothing.
Target: p99 under 100 us.

Run: `make bench-gate` or `python -m bench.gate_latency [--decisions N] [--json-out FILE]`.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from bench.common import (
    Spread,
    run_started_at,
    write_results,
)
from bot.messages import OrderIntent, OrderType, Side
from bot.risk.config import RiskConfig, StrategyRiskConfig
from bot.risk.exposure import ExposureLedger, Reservation
from bot.risk.gate import ApprovedOrder, RiskGate

__all__ = ["main", "run"]

SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
PRICES: Final = {"BTCUSDT": Decimal(97000), "ETHUSDT": Decimal(3500), "SOLUSDT": Decimal(180)}
STRATEGIES: Final = tuple(f"strategy{i}" for i in range(10))
TARGET_P99_US: Final = 100.0
_SETTLE_AFTER: Final = 50


def _gate(rng: random.Random) -> RiskGate:
    config = RiskConfig(
        symbols=SYMBOLS,
        denied_symbols=("DOGEUSDT",),
        max_order_notional_usdt=Decimal(5000),
        max_position_notional_usdt=Decimal(20000),
        max_strategy_exposure_usdt=Decimal(50000),
        max_total_exposure_usdt=Decimal(200000),
        max_open_orders=40,
        max_orders_per_minute=100_000,
        max_orders_per_day=1_000_000,
        cooldown_after_loss_s=60,
    )
    overrides = {
        name: StrategyRiskConfig(
            max_order_notional_usdt=Decimal(2000 + 100 * index),
            require_stop_loss=index % 2 == 0,
            sides=("Buy",) if index == 0 else None,
        )
        for index, name in enumerate(STRATEGIES)
    }
    books = {
        (name, symbol): Decimal(rng.randint(-5, 5)) / 1000
        for name in STRATEGIES
        for symbol in SYMBOLS
    }
    ledger = ExposureLedger(lambda strategy, symbol: books.get((strategy, symbol), Decimal(0)))
    for index in range(100):  # orders in flight across every strategy
        ledger.reserve(
            f"inflight-{index}",
            Reservation(
                rng.choice(STRATEGIES), rng.choice(SYMBOLS), Decimal(rng.randint(-3, 3)) / 1000
            ),
        )
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    return RiskGate(
        config,
        overrides,
        ledger,
        pnl_today=lambda strategy: Decimal(-50),
        last_loss_at=lambda strategy: long_ago,
    )


def _intents(rng: random.Random, count: int) -> list[OrderIntent]:
    now = datetime.now(UTC)
    intents = []
    for index in range(count):
        symbol = rng.choice(SYMBOLS)
        price = PRICES[symbol]
        side = rng.choice(list(Side))
        limit = rng.random() < 0.5
        direction = 1 if side is Side.BUY else -1
        intents.append(
            OrderIntent(
                strategy=rng.choice(STRATEGIES),
                signal_source="voiceofchain",
                signal_id=f"bench-{index}",
                symbol=symbol,
                side=side,
                order_type=OrderType.LIMIT if limit else OrderType.MARKET,
                qty=Decimal(rng.randint(1, 30)) / (1000 if symbol == "BTCUSDT" else 10),
                price=price * Decimal("0.99") if limit else None,
                reference_price=price,
                stop_loss=price * (1 - direction * Decimal("0.02")) if rng.random() < 0.8 else None,
                reduce_only=rng.random() < 0.1,
                leverage=Decimal(rng.choice((5, 10, 20))),
                signal_ts=now,
            )
        )
    return intents


def _timed(
    call: Callable[[OrderIntent], object],
    intents: Sequence[OrderIntent],
    after: Callable[[object], None] = lambda verdict: None,
) -> list[int]:
    """Time `call` on each intent; `after` sees each verdict, untimed."""
    samples = []
    for intent in intents:
        started = time.perf_counter_ns()
        verdict = call(intent)
        samples.append(time.perf_counter_ns() - started)
        after(verdict)
    return samples


def _summary(samples: list[int]) -> dict[str, float | int]:
    spread = Spread.of(samples, 1e3)
    assert spread is not None  # every run times at least one decision
    return spread.named("_us")


def run(decisions: int, seed: int = 7) -> dict[str, object]:
    """Time `decisions` gate decisions and the floor; returns the report."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not secrecy
    gate = _gate(rng)
    intents = _intents(rng, decisions)

    def decide(intent: OrderIntent) -> object:
        return gate.decide(intent, price=PRICES[intent.symbol], prices=PRICES)

    def nothing(intent: OrderIntent) -> object:
        return None

    settling: deque[str] = deque()
    approved = 0

    def settle(verdict: object) -> None:
        """Approved orders become terminal 50 decisions later."""
        nonlocal approved
        if isinstance(verdict, ApprovedOrder):
            approved += 1
            settling.append(verdict.order_link_id)
        if len(settling) > _SETTLE_AFTER:
            gate.ledger.release(settling.popleft())

    _timed(decide, intents[: min(1000, decisions)], settle)  # warm up
    floor = _summary(_timed(nothing, intents))
    approved = 0
    started = time.perf_counter()
    gate_samples = _timed(decide, intents, settle)
    elapsed = time.perf_counter() - started
    return {
        "started_at": run_started_at(),
        "decisions": decisions,
        "strategies": len(STRATEGIES),
        "in_flight": 100,
        "floor": floor,
        "gate": _summary(gate_samples),
        "decisions_per_s": round(decisions / elapsed),
        "approved_share": round(approved / decisions, 3),
        "target_p99_us": TARGET_P99_US,
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--json-out", type=Path, default=None)
    arguments = parser.parse_args(argv)
    report = run(arguments.decisions)
    table = Table(title=f"risk gate latency {report['started_at']}, us")
    for column in ("what", "n", "p50", "p99", "max", "p99 < 100 us"):
        table.add_column(column)
    for name in ("floor", "gate"):
        row = report[name]
        assert isinstance(row, dict)
        verdict = ("ok" if row["p99_us"] < TARGET_P99_US else "miss") if name == "gate" else ""
        table.add_row(
            name,
            str(row["n"]),
            f"{row['p50_us']:.1f}",
            f"{row['p99_us']:.1f}",
            f"{row['max_us']:.1f}",
            verdict,
        )
    console = Console()
    console.print(table)
    console.print(
        f"decisions per second: {report['decisions_per_s']}, approved: "
        f"{report['approved_share']:.0%}",
        highlight=False,
    )
    target = write_results(report, "gate-latency", str(report["started_at"]), arguments.json_out)
    console.print(f"results: {target}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
