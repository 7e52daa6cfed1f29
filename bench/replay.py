"""Replay speed: signals per second through `bot replay`, as a user runs it.

A history is generated (seeded): `--signals` signals over 30 days on BTCUSDT, ETHUSDT and
SOLUSDT, each with its price points: the market just before it, a move that touches neither
level, then one through its take profit or its stop loss, so every signal is an order, a fill
and an exit fill, and nothing stays open to slow the next. It is replayed by
`python -m bot replay FILE --json` in a subprocess (one `follow` strategy, the risk limits kept
out of the way), and measured from the report: the time the records took (start-up apart),
signals per second, and so the time 1,000 signals with their price points take (measured when
`--signals` is at least 1,000, else projected from the rate). Target: under 30 s on this
2-core machine. The process's own wall time, start-up included, is reported beside it.

Correctness (exit 1 on a miss): every signal approved and filled, every trade closed.
Run: `make bench-replay` or `python -m bench.replay [--signals N] [--seed S] [--json-out F]`;
the short form for CI is `--signals 100`. Exit 2: the benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from bench.common import (
    UNLIMITED_RISK,
    Check,
    finish,
    machine,
    run_started_at,
    say_error,
    this_tree,
)

__all__ = ["history_lines", "main", "run"]

TARGET_S: Final = 30.0  # for 1,000 signals with their price points
TARGET_SIGNALS: Final = 1000
START: Final = datetime(2026, 10, 1, tzinfo=UTC)
DAYS: Final = 30
#: (symbol, starting price, price step): the simulator's default instruments.
SYMBOLS: Final = (
    ("BTCUSDT", Decimal(97000), Decimal("0.1")),
    ("ETHUSDT", Decimal(3400), Decimal("0.01")),
    ("SOLUSDT", Decimal(180), Decimal("0.01")),
)
_STOP_PCT: Final = Decimal(2)
_TARGET_PCT: Final = Decimal(3)
_TIMEOUT_S: Final = 900

_CONFIG: Final = """
environment = "sim"
state_dir = "{state}"
[risk]
symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
{limits}max_signal_age_s = 60
[keys.bench]
environment = "sim"
[strategies.follow]
plugin = "follow"
key = "bench"
[strategies.follow.params]
risk_fraction = 0.01
max_notional_usdt = 500
"""


class BenchError(Exception):
    """The benchmark could not run (not a finding about the replay)."""


def history_lines(signals: int, seed: int) -> list[str]:
    """`signals` trades as JSON lines, in time order: per signal the price just before it,
    the signal (market, stop loss and take profit), a move between the two, then the exit."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    prices = {symbol: price for symbol, price, _ in SYMBOLS}
    spacing = timedelta(days=DAYS) / signals
    lines: list[str] = []
    for index in range(signals):
        symbol, _, step = SYMBOLS[index % len(SYMBOLS)]
        at = START + spacing * index
        price = prices[symbol]
        side = rng.choice((1, -1))
        won = rng.random() < 0.55
        stop = _round(price * (1 - side * _STOP_PCT / 100), step)
        target = _round(price * (1 + side * _TARGET_PCT / 100), step)
        middle = _round(price * (1 + side * Decimal(rng.uniform(-1, 1)) / 100), step)
        exit_price = _round((target if won else stop) * (1 + side * Decimal("0.001")), step)
        if not won:
            exit_price = _round(stop * (1 - side * Decimal("0.001")), step)
        body = {
            "id": f"bench-{index}",
            "symbol": symbol,
            "side": "buy" if side > 0 else "sell",
            "stop_loss": str(stop),
            "take_profit": str(target),
            "ts": _iso(at),
        }
        lines += [
            _price_line(at - spacing / 10, symbol, price),
            json.dumps(body),
            _price_line(at + spacing / 4, symbol, middle),
            _price_line(at + spacing / 2, symbol, exit_price),
        ]
        prices[symbol] = exit_price
    return lines


def _round(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value() * step


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _price_line(at: datetime, symbol: str, price: Decimal) -> str:
    return json.dumps({"ts": _iso(at), "prices": {symbol: str(price)}})


def run(
    signals: int = TARGET_SIGNALS, seed: int = 7, work_dir: Path | None = None
) -> dict[str, Any]:
    """Generate, replay, measure; returns the report."""
    owned = work_dir is None
    work = work_dir or Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        history = work / "history.jsonl"
        history.write_text("\n".join(history_lines(signals, seed)) + "\n", encoding="utf-8")
        config = work / "bot.toml"
        config.write_text(_CONFIG.format(state=work / "unused", limits=UNLIMITED_RISK))
        began = time.perf_counter()
        finished = subprocess.run(  # noqa: S603 - our own CLI
            [
                sys.executable,
                "-m",
                "bot",
                "replay",
                str(history),
                "--config",
                str(config),
                "--json",
                "--secrets-dir",
                str(work / "no-secrets"),
            ],
            capture_output=True,
            text=True,
            cwd=work,
            env=this_tree(os.environ),
            timeout=_TIMEOUT_S,
            check=False,
        )
        wall_s = time.perf_counter() - began
        if finished.returncode != 0:
            raise BenchError(f"bot replay exited {finished.returncode}: {finished.stderr[-800:]}")
        replay = json.loads(finished.stdout)
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    return _report(signals, seed, wall_s, replay)


def _report(signals: int, seed: int, wall_s: float, replay: dict[str, Any]) -> dict[str, Any]:
    (follow,) = replay["strategies"]
    rate = replay["signals_per_s"]
    measured = signals >= TARGET_SIGNALS
    per_thousand_s = replay["elapsed_s"] * TARGET_SIGNALS / signals
    checks = [
        Check(
            "signals approved",
            f"{follow['approved']}/{signals}",
            "all",
            follow["approved"] == signals,
            True,
        ),
        Check(
            "orders filled",
            f"{follow['filled_orders']}/{signals}",
            "all",
            follow["filled_orders"] == signals,
            True,
        ),
        Check(
            "trades closed",
            f"{follow['trades']}/{signals}",
            "all",
            follow["trades"] == signals,
            True,
        ),
        Check("signals per second replayed", rate, "-", True, False),
        Check(
            f"1,000 signals with price points{'' if measured else ' (projected)'}, s",
            round(per_thousand_s, 2),
            f"< {TARGET_S:g}",
            per_thousand_s < TARGET_S,
            False,
        ),
        Check("process wall time, start-up included, s", round(wall_s, 2), "-", True, False),
    ]
    return {
        "started_at": run_started_at(),
        "machine": machine(),
        "signals": signals,
        "price_points": replay["price_points"],
        "seed": seed,
        "records_s": replay["elapsed_s"],
        "startup_s": replay["startup_s"],
        "wall_s": round(wall_s, 3),
        "signals_per_s": rate,
        "per_1000_signals_s": round(per_thousand_s, 3),
        "per_1000_measured": measured,
        "target_s": TARGET_S,
        "strategy": {k: v for k, v in follow.items() if k != "equity"},
        "checks": [asdict(check) for check in checks],
        "failures": [check.name for check in checks if check.correctness and not check.ok],
    }


def _table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"replay {report['started_at']} ({report['machine']['cpus']} CPUs): "
        f"{report['signals']} signals, {report['price_points']} price points"
    )
    for column in ("check", "value", "target", ""):
        table.add_column(column, overflow="fold")
    for check in report["checks"]:
        mark = "ok" if check["ok"] else ("FAIL" if check["correctness"] else "miss")
        table.add_row(check["name"], str(check["value"]), check["target"], mark)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--signals", type=int, default=TARGET_SIGNALS, help="signals (1000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the history (7)")
    parser.add_argument("--json-out", type=Path, default=None, help="result file")
    arguments = parser.parse_args(argv)
    if arguments.signals < 1:
        parser.error("--signals >= 1")
    console = Console()
    try:
        report = run(arguments.signals, arguments.seed)
    except (BenchError, subprocess.TimeoutExpired, ValueError) as exc:
        say_error(console, "benchmark could not run", exc)
        return 2
    console.print(_table(report))
    return finish(console, report, "replay", arguments.json_out)


if __name__ == "__main__":
    sys.exit(main())
