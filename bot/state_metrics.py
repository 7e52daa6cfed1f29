"""Metrics of the bot's state, computed when Prometheus scrapes: decisions and orders (from
the journal), positions, PnL, exposure and equity (from the account projection and the risk
gate), trading states, and the journal's size.

A signal may name any strategy, and its decline is journaled under that name: in the metrics,
every strategy the configuration does not have is counted as `UNCONFIGURED`, so a sender
cannot grow a series per name it makes up.

Counting at the source on every event would miss what arrives by other paths (an order
filled on the stream, a restart); reading the state at scrape time cannot. The journal's
counts come from one query, run by `refresh()` just before a scrape (`/metrics` awaits it) on
a connection and a thread of its own, so signals are journaled meanwhile; scrapes that come
together share one query. Everything else is in memory and read as it is.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.account import Account
from bot.coalesce import Coalesced
from bot.files import file_size
from bot.journal import Journal, Tallies, journal_files
from bot.market import MarketData
from bot.pipeline import NO_STRATEGY
from bot.risk.gate import RiskGate
from bot.risk.states import BOT_SCOPE, TradingState

__all__ = ["UNCONFIGURED", "StateCollector"]

#: The label of every strategy the journal names and the configuration does not have.
UNCONFIGURED: Final = "(unconfigured)"


class StateCollector(Collector):
    """Register it on `bot.metrics.REGISTRY` for the life of a service."""

    def __init__(
        self,
        journal: Journal,
        account: Account,
        gate: RiskGate,
        market: MarketData,
        key_of: Mapping[str, str],
    ) -> None:
        """`key_of` maps each configured strategy to its key."""
        self._journal = journal
        self._account = account
        self._gate = gate
        self._market = market
        self._key_of = key_of
        self._tallies = Tallies()
        self._count = Coalesced(partial(asyncio.to_thread, journal.tallies))

    async def refresh(self) -> None:
        """Read the journal's counts for the next `collect`; a scrape that comes while they
        are being read waits for that read instead of starting another."""
        self._tallies = await self._count()

    def collect(self) -> Iterator[Metric]:
        yield from self._journal_counts()
        yield from self._books()
        yield from self._risk()
        yield self._journal_size()

    def _journal_counts(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "bot_decisions",
            "Verdicts on signals and intents by strategy, outcome (approved, rejected, "
            "declined, failed) and rule",
            labels=["strategy", "outcome", "rule"],
        )
        for labels, count in self._by_label(self._tallies.decisions):
            decisions.add_metric(list(labels), count)
        orders = GaugeMetricFamily(
            "bot_orders",
            "Orders by strategy, current status and the venue's last retCode",
            labels=["strategy", "status", "ret_code"],
        )
        for labels, count in self._by_label(self._tallies.orders):
            orders.add_metric(list(labels), count)
        yield decisions
        yield orders

    def _by_label(
        self, rows: Iterable[tuple[str, str, str, int]]
    ) -> Iterator[tuple[tuple[str, str, str], int]]:
        """The journal's counts summed by their labels, strategies not configured as one."""
        summed: Counter[tuple[str, str, str]] = Counter()
        for strategy, first, second, count in rows:
            known = strategy in self._key_of or strategy == NO_STRATEGY
            summed[(strategy if known else UNCONFIGURED, first, second)] += count
        yield from summed.items()

    def _books(self) -> Iterator[Metric]:
        """Each strategy's own books (its fills), and each key's equity."""
        projection = self._account.projection
        position = GaugeMetricFamily(
            "bot_position_qty",
            "The strategy's own signed position (its fills, not the key's)",
            labels=["key", "strategy", "symbol"],
        )
        realized = GaugeMetricFamily(
            "bot_realized_pnl_usdt",
            "Realized PnL before fees, since the bot began",
            labels=["strategy"],
        )
        fees = GaugeMetricFamily(
            "bot_fees_usdt", "Fees paid, since the bot began", labels=["strategy"]
        )
        unrealized = GaugeMetricFamily(
            "bot_unrealized_pnl_usdt",
            "Unrealized PnL at the venue's mark price",
            labels=["strategy"],
        )
        totals: dict[str, list[float]] = {}
        for book in projection.books():
            position.add_metric([book.key_name, book.strategy, book.symbol], float(book.size))
            mark = projection.mark_price(book.key_name, book.symbol) or book.entry_price
            total = totals.setdefault(book.strategy, [0.0, 0.0, 0.0])
            total[0] += float(book.realized_pnl)
            total[1] += float(book.fees)
            total[2] += float(book.unrealized_pnl(mark))
        for strategy, (pnl, paid, open_pnl) in totals.items():
            realized.add_metric([strategy], pnl)
            fees.add_metric([strategy], paid)
            unrealized.add_metric([strategy], open_pnl)
        equity = GaugeMetricFamily(
            "bot_equity_usdt", "The key's equity, as last reported", labels=["key"]
        )
        for key in projection.key_names():
            wallet = projection.wallet(key)
            if wallet is not None:
                equity.add_metric([key], float(wallet.equity_usdt))
        yield from (position, realized, fees, unrealized, equity)

    def _risk(self) -> Iterator[Metric]:
        exposure = GaugeMetricFamily(
            "bot_exposure_usdt",
            "Worst-case notional with every order in flight filled, at the last known prices",
            labels=["strategy"],
        )
        prices = self._market.known_prices()
        for strategy in self._key_of:
            value = self._gate.ledger.strategy_exposure(strategy, prices)
            exposure.add_metric([strategy], float(value))
        state = GaugeMetricFamily(
            "bot_trading_state",
            "1 for the scope's current trading state (the bot, or one strategy)",
            labels=["scope", "state"],
        )
        for scope in (BOT_SCOPE, *self._key_of):
            current = self._gate.state_of(scope).state
            for each in TradingState:
                state.add_metric([scope, each.value], 1.0 if each is current else 0.0)
        yield exposure
        yield state

    def _journal_size(self) -> Metric:
        size = GaugeMetricFamily(
            "bot_journal_bytes", "The journal's size on disk, with its WAL and shared memory"
        )
        size.add_metric(
            [], float(sum(file_size(path) for path in journal_files(self._journal.path)))
        )
        return size
