"""The Strategy plug-in API.

A strategy is one class with one required method:

    class MyStrategy(Strategy):
        class Params(StrategyParams):          # optional: validated from [strategies.X.params]
            risk_fraction: Decimal = Decimal("0.01")

        def on_signal(self, signal: Signal, market: MarketView) -> Sequence[OrderIntent] | Decline:
            ...

`on_signal` is called once per signal routed to the strategy, with a snapshot of what the bot
knows about the market and the account. It returns the orders it wants (built with
`self.intent(...)`) or a `Decline` with the reason it wants none (built with
`self.decline(...)`). It must not do I/O: everything it needs is in `market`; the bot
journals whatever it returns. Intents then pass the risk gate, which may still reject them.

Optional callbacks have defaults: `wants_position(signal)` says whether `market.position_qty`,
the strategy's own position, is needed (default: for `close` signals only).

`INTERFACE_VERSION` is bumped when this API changes incompatibly; the loader refuses a strategy
written for another version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from bot.messages import (
    Decline,
    Instrument,
    OrderIntent,
    OrderType,
    Side,
    Signal,
    SignalAction,
)

__all__ = ["INTERFACE_VERSION", "MarketView", "Strategy", "StrategyOutput", "StrategyParams"]

INTERFACE_VERSION = 1

StrategyOutput = Sequence[OrderIntent] | Decline


class StrategyParams(BaseModel):
    """Base of a strategy's parameters: frozen, and an unknown parameter is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class MarketView:
    """What a strategy may know when it decides: fetched by the bot just before the call."""

    instrument: Instrument
    last_price: Decimal
    equity_usdt: Decimal
    #: the strategy's own signed position (its fills, not the whole key's), set when
    #: `wants_position` said so
    position_qty: Decimal | None = None


class Strategy(ABC):
    """Base class of every strategy. Subclass it and implement `on_signal`."""

    INTERFACE_VERSION: ClassVar[int] = INTERFACE_VERSION
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, name: str, params: StrategyParams) -> None:
        self.name = name
        self.params = params

    @abstractmethod
    def on_signal(self, signal: Signal, market: MarketView) -> StrategyOutput:
        """The orders this strategy wants for `signal`, or a Decline saying why none."""

    def wants_position(self, signal: Signal) -> bool:
        """Whether `on_signal` needs `market.position_qty` for this signal."""
        return signal.action is SignalAction.CLOSE

    def intent(
        self,
        signal: Signal,
        market: MarketView,
        *,
        side: Side,
        qty: Decimal,
        price: Decimal | None = None,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
        reduce_only: bool = False,
        leg: int = 0,
        leverage: Decimal | None = None,
    ) -> OrderIntent:
        """An intent for `signal`: Limit at `price` if given, else Market at the last price;
        at `leverage` (default: the signal's hint, which the risk gate caps)."""
        return OrderIntent(
            strategy=self.name,
            signal_source=signal.source,
            signal_id=signal.id,
            leg=leg,
            symbol=signal.symbol,
            side=side,
            order_type=OrderType.MARKET if price is None else OrderType.LIMIT,
            qty=qty,
            price=price,
            reference_price=price if price is not None else market.last_price,
            stop_loss=stop_loss,
            take_profit=take_profit,
            reduce_only=reduce_only,
            leverage=leverage if leverage is not None else signal.leverage,
            signal_ts=signal.ts,
        )

    def decline(self, reason: str) -> Decline:
        return Decline(strategy=self.name, reason=reason)
