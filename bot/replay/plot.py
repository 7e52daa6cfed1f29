"""`bot replay --plot FILE`: each symbol's price with the signals on it, and each strategy's
equity, on one time axis.

matplotlib is an optional extra (`pip install -e '.[plot]'` in the checkout): the bot never
needs it, so it is imported only here. `check_target` says how to install it when it is
missing, and what is wrong with a path it could not write to, before a replay starts, not
after it ran.
"""

from __future__ import annotations

import importlib
import os
from bisect import bisect_right
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from bot.messages import Side, SignalAction
from bot.replay.history import History
from bot.replay.report import ReplayReport

__all__ = ["PlotUnavailable", "check_target", "draw", "pyplot"]

INSTALL_HINT: Final = (
    ".venv/bin/pip install -e '.[plot]' in the bot's checkout (or pip install matplotlib)"
)
_MARKERS: Final = {Side.BUY: ("^", "tab:green"), Side.SELL: ("v", "tab:red")}


class PlotUnavailable(Exception):
    """No chart can be written: matplotlib is not installed, or the path will not take one;
    the message says what to do."""


def pyplot() -> ModuleType:
    """matplotlib's pyplot on a file-only backend, or PlotUnavailable."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(
            f"--plot needs matplotlib, an optional extra: {INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    return importlib.import_module("matplotlib.pyplot")


def check_target(path: Path) -> None:
    """PlotUnavailable unless a chart can be written to `path`: matplotlib installed, a format
    it writes named by the suffix, and a directory there to write in."""
    plt = pyplot()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    suffix = path.suffix.lower().removeprefix(".")
    if suffix not in formats:
        named = ", ".join(f".{name}" for name in ("png", "svg", "pdf") if name in formats)
        raise PlotUnavailable(
            f"--plot {path}: {'.' + suffix if suffix else 'no suffix'} is not an image format "
            f"matplotlib writes; end the name with {named} or another of "
            f"{', '.join(sorted(formats))}"
        )
    if path.exists() and not path.is_file():  # a directory, a device (/dev/full)
        raise PlotUnavailable(f"--plot {path}: is not a regular file; name a file to write")
    folder = path.parent
    if not folder.is_dir():
        raise PlotUnavailable(f"--plot {path}: there is no directory {folder}; create it first")
    if not os.access(folder, os.W_OK):
        raise PlotUnavailable(f"--plot {path}: cannot write in {folder}; choose another path")


def draw(
    report: ReplayReport, history: History, start_prices: dict[str, Decimal], path: Path
) -> None:
    """Write the chart to `path` (its suffix picks the format: .png, .svg, .pdf)."""
    plt = pyplot()
    symbols = [symbol for symbol in history.symbols() if symbol in start_prices]  # listed
    figure, axes = plt.subplots(
        len(symbols) + 1, 1, sharex=True, figsize=(11, 2.6 * (len(symbols) + 1)), squeeze=False
    )
    for row, symbol in enumerate(symbols):
        _price_panel(axes[row][0], symbol, history, report, start_prices.get(symbol))
    _equity_panel(axes[-1][0], report)
    figure.suptitle(
        f"replay of {history.path.name}: {history.start:%Y-%m-%d} to {history.end:%Y-%m-%d}"
    )
    figure.autofmt_xdate()
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:  # the disk full, the place gone or read-only since the check
        raise PlotUnavailable(f"--plot {path}: cannot write the chart ({exc.strerror})") from None
    finally:
        plt.close(figure)


def _price_panel(
    ax: Any,  # matplotlib's Axes: the extra is optional, so not named in types
    symbol: str,
    history: History,
    report: ReplayReport,
    start: Decimal | None,
) -> None:
    """The symbol's price as the venue had it (a step at each price point), each signal on it:
    filled markers for signals that got an order, hollow for the others."""
    times, prices = _price_steps(history, symbol, start)
    if times:
        ax.step(times, prices, where="post", color="tab:blue", linewidth=1, label=symbol)
    for record in history.signals:
        signal = record.signal
        if signal.symbol != symbol or not times:
            continue
        at = signal.entry or prices[max(bisect_right(times, signal.ts) - 1, 0)]
        if signal.action is SignalAction.CLOSE or signal.side is None:
            marker, colour = "x", "black"
        else:
            marker, colour = _MARKERS[signal.side]
        traded = (signal.source, signal.id) in report.traded
        # A filled marker for a signal that got an order, a hollow one (or a faint cross)
        # for one that did not.
        if marker == "x":
            style = {"color": colour, "alpha": 1.0 if traded else 0.35}
        else:
            style = {"color": colour if traded else "none", "edgecolors": colour}
        ax.scatter([signal.ts], [float(at)], marker=marker, s=60, zorder=3, **style)
    ax.set_ylabel(f"{symbol} (USDT)")
    ax.grid(alpha=0.3)


def _equity_panel(ax: Any, report: ReplayReport) -> None:
    for strategy in report.strategies:
        if strategy.equity:
            times = [ts for ts, _ in strategy.equity]
            ax.step(
                times, [float(v) for _, v in strategy.equity], where="post", label=strategy.strategy
            )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("equity change (USDT)")
    ax.grid(alpha=0.3)
    if any(strategy.equity for strategy in report.strategies):
        ax.legend(loc="upper left", fontsize="small")


def _price_steps(
    history: History, symbol: str, start: Decimal | None
) -> tuple[list[datetime], list[float]]:
    times: list[datetime] = []
    prices: list[float] = []
    if start is not None:
        times.append(history.start)
        prices.append(float(start))
    for point in history.price_points:
        if symbol in point.prices:
            times.append(point.ts)
            prices.append(float(point.prices[symbol]))
    return times, prices
