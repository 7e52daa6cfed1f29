"""What each scope uses of its limits now, from the journal: the numbers of `bot risk status`.

The same sources the gate reads: each strategy's own book (its fills), the orders not yet
terminal (counted in the worst case, as in flight), today's orders and today's realized PnL
net of fees. Positions are priced at the venue's last reported mark price, orders in flight
at their limit price when the symbol has no mark yet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bot.account import AccountProjection, StrategyBook
from bot.journal import Journal, OrderRecord
from bot.risk.counts import utc_day_start
from bot.risk.exposure import ExposureLedger, reserve_unfinished
from bot.risk.states import BOT_SCOPE

__all__ = ["ScopeUsage", "restored_ledger", "usage"]


@dataclass(frozen=True)
class ScopeUsage:
    """One scope's use of its limits (the bot's: every strategy together)."""

    exposure_usdt: Decimal  # worst case, with orders in flight
    open_orders: int
    orders_today: int
    pnl_today_usdt: Decimal  # realized, net of fees
    last_loss_at: datetime | None = None  # the latest close at a loss (the bot's: any)


def restored_ledger(
    journal: Journal,
    projection: AccountProjection,
    key_of: Mapping[str, str],
    unfinished: Sequence[OrderRecord],
) -> ExposureLedger:
    """The exposure ledger over the projection's books (each strategy's on its key, `key_of`,
    and what it still holds on another key the bot follows: one it was moved from), with the
    journal's `unfinished` orders reserved again, less what its fills hold of each."""
    followed = set(key_of.values())

    def counted_books(strategy: str) -> list[StrategyBook]:
        return [book for book in projection.open_books_of(strategy) if book.key_name in followed]

    def held_elsewhere(strategy: str, symbol: str) -> Decimal:
        own = key_of.get(strategy, "")
        return sum(
            (
                abs(book.size)
                for book in counted_books(strategy)
                if book.symbol == symbol and book.key_name != own
            ),
            Decimal(0),
        )

    ledger = ExposureLedger(
        lambda strategy, symbol: projection.strategy_size(
            key_of.get(strategy, ""), strategy, symbol
        ),
        lambda strategy: [book.symbol for book in counted_books(strategy)],
        held_elsewhere,
    )
    booked = journal.booked_qty_of([record.request.order_link_id for record in unfinished])
    reserve_unfinished(ledger, unfinished, booked)
    return ledger


def usage(journal: Journal, key_of: Mapping[str, str], now: datetime) -> dict[str, ScopeUsage]:
    """Each strategy's usage (`key_of` maps it to its key), and the bot's under BOT_SCOPE."""
    projection = AccountProjection.from_journal(journal)
    records = journal.unfinished_orders()
    ledger = restored_ledger(journal, projection, key_of, records)
    prices: dict[str, Decimal] = {}
    for record in records:  # the weakest price first: a mark replaces it below
        if record.request.price is not None:
            prices[record.request.symbol] = record.request.price
    for book in projection.books():
        mark = projection.mark_price(book.key_name, book.symbol)
        if mark is not None:
            prices[book.symbol] = mark
        elif book.size and book.symbol not in prices:
            prices[book.symbol] = book.entry_price
    today = Counter(strategy for strategy, _ in journal.order_times_since(utc_day_start(now)))
    scopes = {
        strategy: ScopeUsage(
            exposure_usdt=ledger.strategy_exposure(strategy, prices),
            open_orders=ledger.open_orders(strategy),
            orders_today=today[strategy],
            pnl_today_usdt=projection.pnl_today(strategy, now),
            last_loss_at=projection.last_loss_at(strategy),
        )
        for strategy in key_of
    }
    scopes[BOT_SCOPE] = ScopeUsage(
        exposure_usdt=sum((scope.exposure_usdt for scope in scopes.values()), Decimal(0)),
        open_orders=sum(scope.open_orders for scope in scopes.values()),
        orders_today=sum(scope.orders_today for scope in scopes.values()),
        pnl_today_usdt=projection.pnl_today(None, now),
        last_loss_at=max(
            (scope.last_loss_at for scope in scopes.values() if scope.last_loss_at is not None),
            default=None,
        ),
    )
    return scopes
