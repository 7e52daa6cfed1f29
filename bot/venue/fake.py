"""A small in-memory venue beside the seam it fakes, for fast, deterministic tests.

`FakeVenue` implements `Venue` like Bybit in the ways the executor depends on: it refuses a
second order with a known orderLinkId (110072), it can accept an order and lose the answer,
it can hide a new order from look-ups for a while, and it can answer with any classified
error. Faults are scripted, one per call, with `script(...)`; everything else succeeds.
Market orders fill at once at `price`; limit orders fill when `move_price` crosses them.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from bot.messages import (
    ClosedPnl,
    Execution,
    ExitOrder,
    Instrument,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionUpdate,
    Side,
    WalletUpdate,
    utc_now,
)
from bot.venue.errors import (
    AmbiguousError,
    DuplicateOrderError,
    HeldError,
    KeyFatalError,
    OrderRejectedError,
    RetryableError,
    VenueError,
)

__all__ = ["FakeVenue", "Outcome"]

#: What one `place_order` call does:
#: ok - accepted and answered; lost - accepted, the answer is lost (ambiguous);
#: unsent - not accepted, no answer (ambiguous); rate_limited - 10006; clock_drift - 10002;
#: rejected - 110007; fatal - 10003; crash - accepted, then the caller dies (a BaseException,
#: like kill -9).
Outcome = Literal[
    "ok", "lost", "unsent", "rate_limited", "clock_drift", "rejected", "fatal", "crash"
]

_INSTRUMENT: Final = Instrument(
    symbol="BTCUSDT",
    qty_step=Decimal("0.001"),
    min_order_qty=Decimal("0.001"),
    max_order_qty=Decimal(100),
    tick_size=Decimal("0.1"),
    min_notional_usdt=Decimal(5),
)


class Crash(BaseException):
    """The process died mid-call: nothing after this point runs or is journaled."""


@dataclass
class _Order:
    request: OrderRequest
    order_id: str
    status: OrderStatus
    filled: Decimal = Decimal(0)
    hidden_lookups: int = 0
    #: The limit price another client amended the order to (None: not amended).
    amended_price: Decimal | None = None

    def event(self, price: Decimal) -> OrderEvent:
        return OrderEvent(
            order_link_id=self.request.order_link_id,
            status=self.status,
            order_id=self.order_id,
            filled_qty=self.filled,
            avg_price=price if self.filled else None,
            order_type=self.request.order_type,
            venue_price=self.amended_price,
        )


class FakeVenue:
    """One account of a scripted exchange; `creates` counts accepted orders per orderLinkId."""

    def __init__(self, name: str = "fake", price: Decimal = Decimal(97000)) -> None:
        self.name = name
        self.price = price
        self.orders: dict[str, _Order] = {}
        self.creates: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.hide_new_orders_for = 0  # look-ups that miss a new order (visibility lag)
        self.exits: list[ExitOrder] = []  # stop-loss / take-profit orders the venue created
        self.fills: list[Execution] = []  # every execution, oldest first
        self.hedged: set[str] = set()  # symbols the account trades in hedge mode
        self.leverage: dict[str, Decimal] = {}  # symbol -> leverage set
        # of a symbol whose leverage was never set (None: the venue does not say)
        self.default_leverage: Decimal | None = Decimal(10)
        #: what the next set_leverage calls raise, in order (after applying it, if `applied`)
        self.leverage_failures: deque[tuple[VenueError, bool]] = deque()
        #: what the next set_trading_stop calls raise, in order (nothing applied)
        self.stop_failures: deque[VenueError] = deque()
        #: symbol -> the levels set_trading_stop set (zero cancels one)
        self.stop_losses: dict[str, Decimal] = {}
        self.take_profits: dict[str, Decimal] = {}
        self._script: deque[Outcome] = deque()
        self._ids = itertools.count(1)

    def script(self, *outcomes: Outcome) -> None:
        """Queue what the next `place_order` calls do, in order."""
        self._script.extend(outcomes)

    def move_price(self, price: Decimal) -> None:
        """Set the price and fill every open limit order it crosses."""
        self.price = price
        for order in self.orders.values():
            limit = order.request.price
            if order.status is not OrderStatus.NEW or limit is None:
                continue
            buy = order.request.side is Side.BUY
            if (price <= limit) if buy else (price >= limit):
                self._fill(order, limit)

    # the Venue protocol ----------------------------------------------------------------------

    @property
    def clock_offset_ms(self) -> int:
        return 0  # one process, one clock

    async def place_order(
        self, request: OrderRequest, hold: Callable[[], str | None] | None = None
    ) -> OrderEvent:
        held = None if hold is None else hold()
        if held is not None:
            raise HeldError(held, operation="place_order")
        self.calls["place_order"] += 1
        outcome = self._script.popleft() if self._script else "ok"
        if outcome == "unsent":
            raise AmbiguousError("connection reset before the venue read it")
        if outcome == "rate_limited":
            raise RetryableError("Too many visits!", retry_after_s=0.0, ret_code=10006)
        if outcome == "clock_drift":
            raise RetryableError("invalid request, timestamp", retry_after_s=0.0, ret_code=10002)
        if outcome == "rejected":
            raise OrderRejectedError("ab not enough for new order", ret_code=110007)
        if outcome == "fatal":
            raise KeyFatalError("API key is invalid.", ret_code=10003)
        if request.order_link_id in self.orders:
            raise DuplicateOrderError("OrderLinkedID is duplicate", ret_code=110072)
        order = self._accept(request)
        if outcome == "lost":
            raise AmbiguousError("ReadTimeout: no complete answer")
        if outcome == "crash":
            raise Crash(request.order_link_id)
        return OrderEvent(
            order_link_id=request.order_link_id, status=OrderStatus.NEW, order_id=order.order_id
        )

    async def cancel_order(self, order_link_id: str, symbol: str) -> bool:
        self.calls["cancel_order"] += 1
        order = self.orders.get(order_link_id)
        if order is None or order.status not in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED):
            return False
        order.status = OrderStatus.CANCELLED
        return True

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        self.calls["set_leverage"] += 1
        if not self.leverage_failures:
            self.leverage[symbol] = leverage
            return
        error, applied = self.leverage_failures.popleft()
        if applied:  # the venue did it, but its answer was lost
            self.leverage[symbol] = leverage
        raise error

    async def symbol_leverage(self, symbol: str) -> Decimal | None:
        self.calls["symbol_leverage"] += 1
        return self.leverage.get(symbol, self.default_leverage)

    async def set_trading_stop(
        self, symbol: str, *, stop_loss: Decimal | None, take_profit: Decimal | None
    ) -> None:
        self.calls["set_trading_stop"] += 1
        if self.stop_failures:
            raise self.stop_failures.popleft()
        for levels, level in ((self.stop_losses, stop_loss), (self.take_profits, take_profit)):
            if level is None:
                continue
            if level:
                levels[symbol] = level
            else:
                levels.pop(symbol, None)

    async def get_order(self, order_link_id: str, symbol: str) -> OrderEvent | None:
        self.calls["get_order"] += 1
        order = self.orders.get(order_link_id)
        if order is None:
            return None
        if order.hidden_lookups > 0:
            order.hidden_lookups -= 1
            return None
        return order.event(self.price)

    async def exit_orders(self, symbol: str, waiting: Collection[str] = ()) -> list[ExitOrder]:
        return [order for order in reversed(self.exits) if order.symbol == symbol]

    async def last_price(self, symbol: str) -> Decimal:
        return self.price

    async def instrument(self, symbol: str) -> Instrument:
        return _INSTRUMENT.model_copy(update={"symbol": symbol})

    async def open_orders(self) -> list[OrderEvent]:
        return [
            order.event(self.price)
            for order in self.orders.values()
            if order.status in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)
        ]

    async def positions(self) -> list[PositionUpdate]:
        sizes: dict[str, Decimal] = {}
        for fill in self.fills:
            sizes[fill.symbol] = sizes.get(fill.symbol, Decimal(0)) + fill.signed_qty
        return [
            PositionUpdate(
                key_name=self.name,
                symbol=symbol,
                size=size,
                entry_price=self.price,
                mark_price=self.price,
                unrealized_pnl=Decimal(0),
                cum_realized_pnl=Decimal(0),
                leverage=Decimal(10),
                ts=utc_now(),
            )
            for symbol, size in sizes.items()
        ]

    async def executions_since(self, since: datetime | None) -> list[Execution]:
        return [fill for fill in self.fills if since is None or fill.ts >= since]

    async def closed_pnl_since(self, since: datetime | None) -> list[ClosedPnl]:
        return []

    async def wallet(self) -> WalletUpdate:
        return WalletUpdate(
            key_name=self.name,
            equity_usdt=Decimal(10000),
            available_usdt=Decimal(10000),
            wallet_balance_usdt=Decimal(10000),
            ts=utc_now(),
        )

    async def hedge_mode_symbols(self, symbols: Sequence[str]) -> list[str]:
        return [symbol for symbol in symbols if symbol in self.hedged]

    def close(self) -> None:
        return None

    def _accept(self, request: OrderRequest) -> _Order:
        self.creates[request.order_link_id] += 1
        order = _Order(
            request=request,
            order_id=f"fake-{next(self._ids)}",
            status=OrderStatus.NEW,
            hidden_lookups=self.hide_new_orders_for,
        )
        self.orders[request.order_link_id] = order
        if request.order_type is OrderType.MARKET:
            self._fill(order, self.price)
        return order

    def _fill(self, order: _Order, price: Decimal) -> None:
        order.filled, order.status = order.request.qty, OrderStatus.FILLED
        request = order.request
        self.fills.append(
            Execution(
                exec_id=f"{order.order_id}-fill",
                key_name=self.name,
                order_id=order.order_id,
                order_link_id=request.order_link_id,
                symbol=request.symbol,
                side=request.side,
                qty=request.qty,
                price=price,
                fee=request.qty * price * Decimal("0.00055"),
                ts=utc_now(),
            )
        )
