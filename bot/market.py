"""Market snapshots for strategies: last price, equity and (on demand) their own position.

The position is the strategy's own, from the account projection (its fills, not the key's
whole position). Equity comes from the account stream while it is live; otherwise, like the
last price, from the venue, cached for `venue.market_cache_s`, so a burst of signals costs one
venue round trip, not one per signal; sizing from a price a second old is fine, and the risk
gate re-checks the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal

from bot.account import Account
from bot.messages import Instrument
from bot.venue.base import Venue
from strategies.base import MarketView

__all__ = ["MarketData"]


class MarketData:
    """Builds `MarketView`s from the venues, reusing recent prices and equity."""

    def __init__(
        self,
        venues: Mapping[str, Venue],
        account: Account,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._venues = venues
        self._account = account
        self._max_age_s = max_age_s
        self._clock = clock
        self._prices: dict[str, tuple[float, Decimal]] = {}
        self._equity: dict[str, tuple[float, Decimal]] = {}

    async def view(
        self, key_name: str, strategy: str, symbol: str, *, with_position: bool
    ) -> MarketView:
        """A snapshot for one strategy (trading with `key_name`) and one symbol."""
        (instrument, price), equity = await asyncio.gather(
            self.quote(key_name, symbol), self._equity_of(key_name)
        )
        position = (
            await self._account.strategy_position(key_name, strategy, symbol)
            if with_position
            else None
        )
        return MarketView(
            instrument=instrument, last_price=price, equity_usdt=equity, position_qty=position
        )

    async def quote(self, key_name: str, symbol: str) -> tuple[Instrument, Decimal]:
        """The instrument's rules and its current price, through `key_name`'s venue."""
        venue = self._venues[key_name]
        instrument, price = await asyncio.gather(
            venue.instrument(symbol), self._price(venue, symbol)
        )
        return instrument, price

    def known_prices(self) -> dict[str, Decimal]:
        """The last price fetched for each symbol, however old (for exposure elsewhere)."""
        return {symbol: price for symbol, (_, price) in self._prices.items()}

    def price_age_s(self, symbol: str) -> float:
        """How old the last price of `symbol` is (infinite if none was ever fetched)."""
        entry = self._prices.get(symbol)
        return float("inf") if entry is None else self._clock() - entry[0]

    async def _price(self, venue: Venue, symbol: str) -> Decimal:
        return await self._cached(self._prices, symbol, lambda: venue.last_price(symbol))

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
