"""Context snapshots for strategies: last price, equity, balances, their own positions and
open orders.

The position is the strategy's own, from the account projection (its fills, not the key's
whole position). The last price comes from the public ticker stream while it is live
(`bot.venue.prices`), and equity from the account stream while it is live: no signal waits on
the venue for them. Otherwise both come from the venue, cached for `venue.market_cache_s`, so
a burst of signals costs one venue round trip, not one per signal; sizing from a price a
second old is fine, and the risk gate re-checks the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal

from bot.account import Account
from bot.journal import Journal, OrderRecord
from bot.logs import logger
from bot.messages import Instrument, utc_now
from bot.venue.base import Venue
from bot.venue.prices import PriceStream
from strategies.base import OpenOrder, Position, StrategyContext, StrategyParams

__all__ = ["MarketData"]


class MarketData:
    """Builds `StrategyContext`s from the venues, reusing recent prices and equity."""

    def __init__(
        self,
        venues: Mapping[str, Venue],
        account: Account,
        journal: Journal,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        price_streams: Mapping[str, PriceStream] | None = None,
    ) -> None:
        """`price_streams` maps a key name to the price stream of its environment."""
        self._venues = venues
        self._price_streams = price_streams or {}
        self._account = account
        self._journal = journal
        self._max_age_s = max_age_s
        self._clock = clock
        self._prices: dict[str, tuple[float, Decimal]] = {}
        self._equity: dict[str, tuple[float, Decimal]] = {}

    async def context(
        self,
        key_name: str,
        strategy: str,
        params: StrategyParams,
        symbol: str,
        *,
        orders_today: int = 0,
    ) -> StrategyContext:
        """A snapshot for one strategy (trading with `key_name`) and one symbol;
        `orders_today` is the risk gate's count of the strategy's orders today."""
        self._take_streamed_price(key_name, symbol)
        if self._account.live(key_name) and self.price_age_s(symbol) <= self._max_age_s:
            # All at hand (streamed, cached): awaited in turn, which costs far less than a
            # task for each.
            instrument = await self._venues[key_name].instrument(symbol)
            price = self._prices[symbol][1]
            equity = await self._equity_of(key_name)
            books = await self._account.open_books(key_name, strategy)
        else:  # something comes from the venue: its round trips go together
            (instrument, price), equity, books = await asyncio.gather(
                self._quote(key_name, symbol),
                self._equity_of(key_name),
                self._account.open_books(key_name, strategy),
            )
        # Once what the stream reported of them is written: an order the last signal filled
        # is not shown as open.
        open_orders = await self._journal.open_orders_written(key_name, strategy, symbol)
        wallet = self._account.projection.wallet(key_name)
        balances = (
            {
                "equity": wallet.equity_usdt,
                "available": wallet.available_usdt,
                "wallet_balance": wallet.wallet_balance_usdt,
            }
            if wallet is not None
            else {"equity": equity}
        )
        return StrategyContext(
            strategy=strategy,
            params=params,
            symbol=symbol,
            instrument=instrument,
            last_price=price,
            equity_usdt=equity,
            now=utc_now(),
            balances=balances,
            positions={book.symbol: Position(book.size, book.entry_price) for book in books},
            open_orders=tuple(_open_order(record) for record in open_orders),
            orders_today=orders_today,
        )

    async def quote(self, key_name: str, symbol: str) -> tuple[Instrument, Decimal]:
        """The instrument's rules and its current price, through `key_name`'s venue."""
        self._take_streamed_price(key_name, symbol)
        return await self._quote(key_name, symbol)

    async def _quote(self, key_name: str, symbol: str) -> tuple[Instrument, Decimal]:
        venue = self._venues[key_name]
        instrument, price = await asyncio.gather(
            venue.instrument(symbol), self._price(venue, symbol)
        )
        return instrument, price

    async def fresh_price(self, key_name: str, symbol: str) -> Decimal:
        """The venue's price right now (no cache), kept as the latest known."""
        price = await self._venues[key_name].last_price(symbol)
        self._prices[symbol] = (self._clock(), price)
        return price

    async def current_prices(self, key_name: str, symbols: Iterable[str]) -> dict[str, Decimal]:
        """The current price of each of `symbols`: streamed, cached or fetched through
        `key_name`'s venue when older than `max_age_s`. A symbol whose price cannot be had
        now is left out (said as a warning)."""
        prices: dict[str, Decimal] = {}
        stale = []
        for symbol in symbols:
            self._take_streamed_price(key_name, symbol)
            if self.price_age_s(symbol) <= self._max_age_s:
                prices[symbol] = self._prices[symbol][1]
            else:
                stale.append(symbol)
        venue = self._venues[key_name]
        fetched = await asyncio.gather(
            *(self._price(venue, symbol) for symbol in stale), return_exceptions=True
        )
        for symbol, result in zip(stale, fetched, strict=True):
            if isinstance(result, BaseException):
                logger.bind(notify="venue_error").warning(
                    "no current price of {symbol}, where exposure is held: opening orders are "
                    "refused until there is one ({error})",
                    symbol=symbol,
                    error=result,
                )
            else:
                prices[symbol] = result
        return prices

    def known_prices(self) -> dict[str, Decimal]:
        """The last price fetched for each symbol, however old (for the exposure gauges of
        /metrics; the risk gate asks for `current_prices`)."""
        return {symbol: price for symbol, (_, price) in self._prices.items()}

    def price_age_s(self, symbol: str) -> float:
        """How old the last price of `symbol` is (infinite if none was ever fetched)."""
        entry = self._prices.get(symbol)
        return float("inf") if entry is None else self._clock() - entry[0]

    async def _price(self, venue: Venue, symbol: str) -> Decimal:
        return await self._cached(self._prices, symbol, lambda: venue.last_price(symbol))

    def _take_streamed_price(self, key_name: str, symbol: str) -> None:
        """Keep the price stream's price of `symbol`, with its age, as the latest known if
        the stream has a fresh one; ask the stream to follow `symbol` if it does not yet."""
        stream = self._price_streams.get(key_name)
        if stream is None:
            return
        stream.watch((symbol,))
        streamed = stream.price(symbol, self._max_age_s)
        if streamed is not None:
            price, age_s = streamed
            self._prices[symbol] = (self._clock() - age_s, price)

    async def _equity_of(self, key_name: str) -> Decimal:
        streamed = self._account.equity_usdt(key_name)
        if streamed is not None:
            return streamed
        venue = self._venues[key_name]

        async def fetch() -> Decimal:
            return (await venue.wallet()).equity_usdt

        return await self._cached(self._equity, key_name, fetch)

    async def _cached(
        self,
        cache: dict[str, tuple[float, Decimal]],
        key: str,
        fetch: Callable[[], Awaitable[Decimal]],
    ) -> Decimal:
        """`cache[key]` if younger than max_age_s, else a fresh `fetch()` stored there."""
        entry = cache.get(key)
        if entry is not None and self._clock() - entry[0] <= self._max_age_s:
            return entry[1]
        value = await fetch()
        cache[key] = (self._clock(), value)
        return value


def _open_order(record: OrderRecord) -> OpenOrder:
    request = record.request
    return OpenOrder(
        order_link_id=request.order_link_id,
        signal_id=request.signal_id,
        leg=request.leg,
        symbol=request.symbol,
        side=request.side,
        order_type=request.order_type,
        qty=request.qty,
        filled_qty=record.filled_qty,
        price=request.price,
        reduce_only=request.reduce_only,
        status=record.status.value,
    )
