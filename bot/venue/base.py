"""The venue seam: what the executor and market data need from an exchange.

`Venue` is implemented by `bot.venue.bybit.BybitVenue` for every environment (the simulator
included: it is reached through pybit exactly like Bybit). Test fakes implement the same
Protocol. Methods raise the classified errors of `bot.venue.errors`, nothing else.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from bot.messages import ExitOrder, Instrument, OrderEvent, OrderRequest

__all__ = ["Venue"]


class Venue(Protocol):
    """An exchange account reached with one API key.

    Required: `place_order`, `get_order`, `exit_orders`, `last_price`, `instrument`,
    `equity_usdt`, `position_qty`, `close`.
    """

    name: str

    async def place_order(self, request: OrderRequest) -> OrderEvent:
        """Send one order; returns its acknowledgement (status New, with the venue's id)."""
        ...

    async def get_order(self, order_link_id: str, symbol: str) -> OrderEvent | None:
        """The venue's view of an order, or None if it holds no such order."""
        ...

    async def exit_orders(self, symbol: str) -> list[ExitOrder]:
        """The venue's recent stop-loss / take-profit executions on `symbol`, newest first."""
        ...

    async def last_price(self, symbol: str) -> Decimal: ...

    async def instrument(self, symbol: str) -> Instrument: ...

    async def equity_usdt(self) -> Decimal: ...

    async def position_qty(self, symbol: str) -> Decimal:
        """Signed position size: positive long, negative short, zero flat."""
        ...

    def close(self) -> None: ...
