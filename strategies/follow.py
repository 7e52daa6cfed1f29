"""Follow: trade every signal as given, sized by the risk to its stop loss.

Size = equity x `risk_fraction` / |entry - stop loss|, so hitting the stop loses about
`risk_fraction` of equity; then capped by `max_notional_usdt` and rounded down to the lot size.
A signal with an `entry` becomes a Limit order there, otherwise a Market order sized at the
last price. The first `take_profit` target and the stop loss ride on the order. A `close`
signal flattens the position with a reduce-only Market order.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from bot.messages import Side, Signal, SignalAction
from strategies.base import MarketView, Strategy, StrategyOutput, StrategyParams

__all__ = ["Follow"]


class Follow(Strategy):
    """Follow each signal, risking a fixed fraction of equity between entry and stop loss."""

    class Params(StrategyParams):
        risk_fraction: Decimal = Field(
            Decimal("0.01"), gt=0, le=Decimal("0.1"), description="equity lost if the stop hits"
        )
        max_notional_usdt: Decimal = Field(
            Decimal(1000), gt=0, description="cap on qty x price of one order"
        )

    params: Params

    def on_signal(self, signal: Signal, market: MarketView) -> StrategyOutput:
        if signal.action is SignalAction.CLOSE:
            return self._close(signal, market)
        assert signal.side is not None  # Signal guarantees a side for `open`
        if signal.stop_loss is None:
            return self.decline("signal has no stop_loss: follow sizes by the risk to the stop")
        reference = signal.entry or market.last_price
        risk_per_unit = (reference - signal.stop_loss) * (1 if signal.side is Side.BUY else -1)
        if risk_per_unit <= 0:
            return self.decline(
                f"stop_loss {signal.stop_loss} is on the wrong side of {reference} "
                f"for a {signal.side.value.lower()}"
            )
        qty = min(
            market.equity_usdt * self.params.risk_fraction / risk_per_unit,
            self.params.max_notional_usdt / reference,
            market.instrument.max_order_qty,
        )
        qty = market.instrument.round_qty(qty)
        if qty < market.instrument.min_order_qty:
            return self.decline(
                f"size {qty} is below the minimum order qty {market.instrument.min_order_qty} "
                f"(equity {market.equity_usdt} USDT, risk {self.params.risk_fraction})"
            )
        price = None if signal.entry is None else market.instrument.round_price(signal.entry)
        return [
            self.intent(
                signal,
                market,
                side=signal.side,
                qty=qty,
                price=price,
                stop_loss=signal.stop_loss,
                take_profit=self._first_target(signal, reference),
            )
        ]

    def _close(self, signal: Signal, market: MarketView) -> StrategyOutput:
        position = market.position_qty or Decimal(0)
        if position == 0:
            return self.decline(f"no open {signal.symbol} position to close")
        side = Side.SELL if position > 0 else Side.BUY
        return [self.intent(signal, market, side=side, qty=abs(position), reduce_only=True)]

    @staticmethod
    def _first_target(signal: Signal, reference: Decimal) -> Decimal | None:
        """The nearest take-profit target that is on the profitable side of the entry."""
        direction = 1 if signal.side is Side.BUY else -1
        targets = [tp for tp in signal.take_profit if (tp - reference) * direction > 0]
        return min(targets, key=lambda tp: abs(tp - reference)) if targets else None
