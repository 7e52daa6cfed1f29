"""Building a `StrategyContext` for a strategy's unit tests, as the bot would."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from bot.messages import Instrument, OrderType, Side
from strategies.base import OpenOrder, Position, StrategyContext, StrategyParams

BTC = Instrument(
    symbol="BTCUSDT",
    qty_step=Decimal("0.001"),
    min_order_qty=Decimal("0.001"),
    max_order_qty=Decimal(100),
    tick_size=Decimal("0.1"),
    min_notional_usdt=Decimal(5),
)


def context(
    *,
    strategy: str = "s",
    params: StrategyParams | None = None,
    instrument: Instrument = BTC,
    last_price: Decimal | int = 97000,
    equity_usdt: Decimal | int = 10000,
    position_qty: Decimal | int | str = 0,
    entry_price: Decimal | int | None = None,
    open_orders: tuple[OpenOrder, ...] = (),
    now: datetime | None = None,
) -> StrategyContext:
    """A context for `instrument`'s symbol; `position_qty` is the strategy's own there, opened
    at `entry_price` (default: the last price)."""
    position = Position(Decimal(position_qty), Decimal(entry_price or last_price))
    return StrategyContext(
        strategy=strategy,
        params=params or StrategyParams(),
        symbol=instrument.symbol,
        instrument=instrument,
        last_price=Decimal(last_price),
        equity_usdt=Decimal(equity_usdt),
        now=now or datetime.now(UTC),
        balances={"equity": Decimal(equity_usdt)},
        positions={instrument.symbol: position} if position.qty else {},
        open_orders=open_orders,
    )


def open_order(
    link: str,
    side: Side,
    qty: str,
    *,
    leg: int = 0,
    price: Decimal | int | None = None,
    reduce_only: bool = False,
    filled: str = "0",
) -> OpenOrder:
    """An unfinished BTCUSDT order of the strategy's, of an earlier signal (s0): a Limit at
    `price`, or a Market order; `filled` of its `qty` done."""
    return OpenOrder(
        order_link_id=link,
        signal_id="s0",
        leg=leg,
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET if price is None else OrderType.LIMIT,
        qty=Decimal(qty),
        filled_qty=Decimal(filled),
        price=None if price is None else Decimal(price),
        reduce_only=reduce_only,
        status="PartiallyFilled" if Decimal(filled) else "New",
    )
