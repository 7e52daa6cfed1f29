"""The replay's report, read from what the bot left: its journal and its account books.

Per strategy: the signals routed to it, what it declined, its intents, the risk gate's
approvals and rejections per rule, orders and fills, fees, realized PnL (before fees, as the
books keep it) and unrealized PnL at the venue's last price, closed trades and the share won
(a trade runs from flat to flat; won when its PnL net of fees is positive), and the largest
fall of its equity curve from a previous high (the curve is realized PnL minus fees plus
unrealized PnL, from zero at the start, after every fill and every price point).

The books are the bot's own: `AccountProjection` applying the journal's fills in order, as the
bot rebuilds them at start-up; the history's price points mark the open positions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from bot.account import UNATTRIBUTED, AccountProjection, StrategyBook
from bot.journal import DecisionRow, Journal, TraceRow
from bot.messages import Execution, OrderStatus
from bot.replay.history import History, PricePoint
from bot.replay.runner import Answer, ReplayRun

__all__ = ["ReplayReport", "StrategyReport", "build_report"]

ZERO: Final = Decimal(0)
#: The journal's rule for a strategy's own decline (not a risk rejection).
_DECLINED: Final = "strategy"
_FILLED: Final = frozenset({OrderStatus.FILLED.value})
_OPEN: Final = frozenset(status.value for status in OrderStatus if not status.is_terminal)

BookKey = tuple[str, str, str]  # (key name, strategy, symbol)
EquityCurve = list[tuple[datetime, Decimal]]


@dataclass
class StrategyReport:
    """One strategy's replay."""

    strategy: str
    signals: int = 0
    #: Signals the gate refused before the strategy saw them (a symbol not allowed), by rule.
    screened: Counter[str] = field(default_factory=Counter)
    declined: int = 0
    intents: int = 0
    approved: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # intents refused, by rule
    orders: int = 0
    filled_orders: int = 0
    open_orders: int = 0
    fills: int = 0
    fees_usdt: Decimal = ZERO
    realized_pnl_usdt: Decimal = ZERO
    unrealized_pnl_usdt: Decimal = ZERO
    trades: list[Decimal] = field(default_factory=list)  # each closed trade's net PnL
    max_drawdown_usdt: Decimal = ZERO
    equity: EquityCurve = field(default_factory=list)

    @property
    def net_pnl_usdt(self) -> Decimal:
        return self.realized_pnl_usdt - self.fees_usdt + self.unrealized_pnl_usdt

    @property
    def wins(self) -> int:
        return sum(1 for result in self.trades if result > 0)

    @property
    def win_rate(self) -> float | None:
        """Closed trades won, as a fraction; None before any trade closed."""
        return self.wins / len(self.trades) if self.trades else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "signals": self.signals,
            "screened": dict(sorted(self.screened.items())),
            "declined": self.declined,
            "intents": self.intents,
            "approved": self.approved,
            "rejected": dict(sorted(self.rejected.items())),
            "orders": self.orders,
            "filled_orders": self.filled_orders,
            "open_orders": self.open_orders,
            "fills": self.fills,
            "fees_usdt": self.fees_usdt,
            "realized_pnl_usdt": self.realized_pnl_usdt,
            "unrealized_pnl_usdt": self.unrealized_pnl_usdt,
            "net_pnl_usdt": self.net_pnl_usdt,
            "trades": len(self.trades),
            "wins": self.wins,
            "win_rate": self.win_rate,
            "max_drawdown_usdt": self.max_drawdown_usdt,
            "equity": self.equity,
        }


@dataclass(frozen=True)
class ReplayReport:
    """The whole replay: what was sent, how fast, and each strategy's outcome."""

    history: Path
    start: datetime
    end: datetime
    signals: int
    price_points: int
    answers: Sequence[Answer]
    startup_s: float
    elapsed_s: float
    strategies: Sequence[StrategyReport]
    #: (source, id) of every signal that got at least one approved order (for the plot)
    traded: frozenset[tuple[str, str]]
    #: What the keys' accounts paid in funding, net (USDT; negative: received): the venue
    #: settles it per position every 8 hours, so it is in no strategy's PnL.
    funding_paid_usdt: Decimal = ZERO

    @property
    def duplicates(self) -> int:
        return sum(1 for answer in self.answers if answer.status == 200)

    @property
    def refused(self) -> list[Answer]:
        """Signals the webhook did not take (neither 202 nor 200)."""
        return [answer for answer in self.answers if answer.status not in (200, 202)]

    @property
    def signals_per_s(self) -> float:
        return self.signals / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def rejections(self) -> dict[str, int]:
        """Every risk rejection, by rule, over all strategies."""
        total: Counter[str] = Counter()
        for strategy in self.strategies:
            total.update(strategy.screened)
            total.update(strategy.rejected)
        return dict(sorted(total.items()))

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (Decimals and datetimes left for the encoder)."""
        return {
            "history": str(self.history),
            "from": self.start,
            "to": self.end,
            "signals": self.signals,
            "price_points": self.price_points,
            "accepted": sum(1 for answer in self.answers if answer.status == 202),
            "duplicates": self.duplicates,
            "refused": [
                {"line": a.line, "id": a.signal_id, "status": a.status, "detail": a.detail}
                for a in self.refused
            ],
            "startup_s": round(self.startup_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "signals_per_s": round(self.signals_per_s, 1),
            "rejections": self.rejections(),
            "strategies": [strategy.as_dict() for strategy in self.strategies],
            "funding_paid_usdt": self.funding_paid_usdt,
        }


def build_report(history: History, run: ReplayRun, configured: Iterable[str]) -> ReplayReport:
    """The report of a finished replay of `history` (strategies `configured` come first)."""
    journal = Journal(run.journal_path, read_only=True)
    try:
        signal_count = journal.counts()["signals"]
        orders = [
            row
            for row in journal.trace(max(signal_count, 1))
            if row.decision == "approved" and row.order_link_id
        ]
        fills = list(journal.executions())
        decisions = journal.decisions()
    finally:
        journal.close()
    reports: dict[str, StrategyReport] = {}

    def of(strategy: str) -> StrategyReport:
        return reports.setdefault(strategy, StrategyReport(strategy))

    for name in configured:
        of(name)
    traded = _tally_decisions(decisions, of)
    _tally_orders(orders, of)
    books = _Books(run.start_prices)
    books.replay(fills, history.price_points)
    for name in books.strategies():
        books.summarize(name, of(name))
    return ReplayReport(
        history=history.path,
        start=history.start,
        end=history.end,
        signals=len(history.signals),
        price_points=len(history.price_points),
        answers=run.answers,
        startup_s=run.startup_s,
        elapsed_s=run.elapsed_s,
        strategies=list(reports.values()),
        traded=traded,
        funding_paid_usdt=run.funding_paid_usdt,
    )


def _tally_decisions(
    decisions: Iterable[DecisionRow], of: Callable[[str], StrategyReport]
) -> frozenset[tuple[str, str]]:
    """Count each strategy's signals, those refused before it (per rule), its declines,
    intents, approvals and rejections per rule; returns the signals that got an approval."""
    signals: dict[str, set[tuple[str, str]]] = {}
    traded: set[tuple[str, str]] = set()
    for decision in decisions:
        report = of(decision.strategy)
        signal = (decision.source, decision.signal_id)
        signals.setdefault(decision.strategy, set()).add(signal)
        report.intents += decision.leg is not None
        if decision.approved:
            report.approved += 1
            traded.add(signal)
        elif decision.rule == _DECLINED:
            report.declined += 1
        elif decision.leg is None:  # refused before the strategy: no intent
            report.screened[decision.rule or "?"] += 1
        else:
            report.rejected[decision.rule or "?"] += 1
    for strategy, seen in signals.items():
        of(strategy).signals = len(seen)
    return frozenset(traded)


def _tally_orders(orders: Iterable[TraceRow], of: Callable[[str], StrategyReport]) -> None:
    """Count each strategy's orders, those filled and those still open."""
    for row in orders:
        report = of(row.strategy or "")
        report.orders += 1
        report.filled_orders += row.status in _FILLED
        report.open_orders += row.status in _OPEN


class _Books:
    """The journal's fills applied in time order to the bot's own books, between the
    history's price points, following each strategy's equity and its trades."""

    def __init__(self, marks: Mapping[str, Decimal]) -> None:
        self._projection = AccountProjection()
        self._marks = dict(marks)
        self._open: dict[BookKey, Decimal] = {}  # net PnL so far of each open trade
        self._trades: dict[str, list[Decimal]] = {}
        self._fills: Counter[str] = Counter()
        self._equity: dict[str, EquityCurve] = {}

    def replay(
        self,
        fills: Iterable[tuple[Execution, Mapping[str, Decimal]]],
        price_points: Iterable[PricePoint],
    ) -> None:
        # A price point and a fill of the same instant: the price first (it caused the fill).
        events: list[tuple[datetime, int, Any]] = [(point.ts, 0, point) for point in price_points]
        events += [(fill[0].ts, 1, fill) for fill in fills]
        for ts, kind, event in sorted(events, key=lambda item: (item[0], item[1])):
            if kind == 0:
                self._marks.update(event.prices)
            else:
                self._apply(*event)
            self._sample(ts)

    def _apply(self, execution: Execution, allocation: Mapping[str, Decimal]) -> None:
        before = self._book_states()
        self._projection.apply_execution(execution, allocation)
        after = self._book_states()
        for strategy in allocation:
            self._fills[strategy] += 1
            key = (execution.key_name, strategy, execution.symbol)
            self._follow_trade(key, before.get(key), after[key])

    def _follow_trade(
        self,
        key: BookKey,
        before: tuple[Decimal, Decimal] | None,
        after: tuple[Decimal, Decimal],
    ) -> None:
        """A trade opens when a book leaves zero and closes when it returns to it (or flips,
        which closes one trade and opens the next)."""
        size_before, net_before = before or (ZERO, ZERO)
        size_after, net_after = after
        result = self._open.pop(key, ZERO) + net_after - net_before
        if size_after != 0 and (size_before == 0 or (size_before > 0) == (size_after > 0)):
            self._open[key] = result
            return
        if size_before != 0:
            self._trades.setdefault(key[1], []).append(result)
        if size_after != 0:  # flipped: the rest is a new trade
            self._open[key] = ZERO

    def _book_states(self) -> dict[BookKey, tuple[Decimal, Decimal]]:
        """Each book's (size, realized PnL net of fees)."""
        return {
            (book.key_name, book.strategy, book.symbol): (
                book.size,
                book.realized_pnl - book.fees,
            )
            for book in self._projection.books()
        }

    def _sample(self, ts: datetime) -> None:
        for strategy in self.strategies():
            self._equity.setdefault(strategy, []).append((ts, self._net(strategy)))

    def _net(self, strategy: str) -> Decimal:
        return sum(
            (
                book.realized_pnl - book.fees + self._unrealized(book)
                for book in self._projection.books()
                if book.strategy == strategy
            ),
            ZERO,
        )

    def _unrealized(self, book: StrategyBook) -> Decimal:
        mark = self._marks.get(book.symbol)
        return book.unrealized_pnl(mark) if mark is not None else ZERO

    def strategies(self) -> list[str]:
        """Strategies with a book (fills), the unattributed book last."""
        names = {book.strategy for book in self._projection.books()}
        return sorted(names - {UNATTRIBUTED}) + ([UNATTRIBUTED] if UNATTRIBUTED in names else [])

    def summarize(self, strategy: str, report: StrategyReport) -> None:
        books = [book for book in self._projection.books() if book.strategy == strategy]
        report.fills = self._fills[strategy]
        report.fees_usdt = sum((book.fees for book in books), ZERO)
        report.realized_pnl_usdt = sum((book.realized_pnl for book in books), ZERO)
        report.unrealized_pnl_usdt = sum((self._unrealized(book) for book in books), ZERO)
        report.trades = self._trades.get(strategy, [])
        report.equity = self._equity.get(strategy, [])
        report.max_drawdown_usdt = _max_drawdown(report.equity)


def _max_drawdown(curve: EquityCurve) -> Decimal:
    """The largest fall from a previous high (the start, at zero, counts as one)."""
    peak, worst = ZERO, ZERO
    for _, equity in curve:
        peak = max(peak, equity)
        worst = max(worst, peak - equity)
    return worst
