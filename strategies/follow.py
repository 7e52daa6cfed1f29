"""Follow: trade every signal as given, sized by the risk to its stop loss.

Size = equity x `risk_fraction` / |entry - stop loss|, so hitting the stop loses about
`risk_fraction` of equity; then capped by `max_notional_usdt` and rounded down to the lot size.
A signal with an `entry` becomes a Limit order there, otherwise a Market order sized at the
last price. The first `take_profit` target and the stop loss ride on the order, at the
signal's leverage hint capped to `max_leverage` (the risk gate caps it again to its own
limit). A market signal against the strategy's own open position flips it: the one entry
order also carries that position's size, so the venue closes it and opens the new one, whose
stop and target replace the old ones (a limit one, or one while the strategy's orders in the
symbol are unfinished, is declined: see `_flip_problem`). A `close` signal flattens the
strategy's own position with a reduce-only Market order.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pydantic import Field

from bot.execution.rounding import round_to_step
from bot.messages import Instrument, OrderType, Side, Signal, SignalAction
from strategies.base import OpenOrder, Strategy, StrategyContext, StrategyOutput, StrategyParams

__all__ = [
    "Follow",
    "capped_leverage",
    "limit_price",
    "profitable_targets",
    "risk_sized_qty",
    "tick_rounded",
]


class Follow(Strategy):
    """Follow each signal, risking a fixed fraction of equity between entry and stop loss."""

    class Params(StrategyParams):
        risk_fraction: Decimal = Field(
            Decimal("0.01"), gt=0, le=Decimal("0.1"), description="equity lost if the stop hits"
        )
        max_notional_usdt: Decimal = Field(
            Decimal(1000),
            gt=0,
            description="cap on qty x price of what one order opens (a flip closes more)",
        )
        max_leverage: Decimal = Field(
            Decimal(3), ge=1, le=100, description="cap on the signal's leverage hint"
        )

    params: Params

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        if signal.action is SignalAction.CLOSE:
            return self._close(signal, context)
        price = limit_price(signal, context)
        if isinstance(price, str):
            return self.decline(price)
        target = self._first_target(signal, price or context.last_price, context)
        return self.enter_or_flip(
            signal, context, price=price, take_profit=target, unfinished=context.open_orders
        )

    def enter_or_flip(
        self,
        signal: Signal,
        context: StrategyContext,
        *,
        price: Decimal | None,
        take_profit: Decimal | None,
        unfinished: Sequence[OpenOrder],
    ) -> StrategyOutput:
        """`enter`, flipping the strategy's position when the signal goes against it (the
        entry also closes it), or why it cannot flip now (`_flip_problem`: `unfinished` are
        the strategy's orders in the symbol that could change the position meanwhile)."""
        held = context.position_qty
        if held == 0 or (held > 0) == (signal.side is Side.BUY):
            return self.enter(signal, context, price=price, take_profit=take_profit)
        refused = _flip_problem(signal, context, price, unfinished)
        if refused:
            return self.decline(refused)
        return self.enter(signal, context, price=price, take_profit=take_profit, closing=abs(held))

    def enter(
        self,
        signal: Signal,
        context: StrategyContext,
        *,
        price: Decimal | None,
        take_profit: Decimal | None,
        closing: Decimal | int = 0,
    ) -> StrategyOutput:
        """The entry order (leg 0) for an `open` signal: a Limit at `price` (its entry on the
        tick, from `limit_price`) or a Market order, risk-sized between that price (or the last
        price) and its stop loss, with the stop and `take_profit` riding on it; or why none
        can be placed. `closing`: the strategy's opposite position the same order closes
        first (a flip, one order: the venue turns the position and sets the new stop on it)."""
        assert signal.side is not None  # Signal guarantees a side for `open`
        if signal.stop_loss is None:
            return self.decline(
                f"signal has no stop_loss: {type(self).__name__} sizes by the risk to the stop"
            )
        reference = price or context.last_price
        qty = risk_sized_qty(
            signal.side,
            reference,
            signal.stop_loss,
            context,
            self.params.risk_fraction,
            self.params.max_notional_usdt,
        )
        if isinstance(qty, str):
            return self.decline(qty)
        if closing:
            largest = context.instrument.max_qty(
                OrderType.MARKET if price is None else OrderType.LIMIT
            )
            if qty + closing > largest:
                return self.decline(
                    f"flipping the {closing} {signal.symbol} position into a {qty} one takes "
                    f"one order of {qty + closing}, above the max order qty {largest}: close "
                    "it first with a close signal"
                )
            qty += closing
        return [
            self.intent(
                signal,
                context,
                side=signal.side,
                qty=qty,
                price=price,
                stop_loss=signal.stop_loss,
                take_profit=take_profit,
                leverage=capped_leverage(signal, self.params.max_leverage),
            )
        ]

    def _close(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        position = context.position_qty
        if position == 0:
            return self.decline(f"no open {signal.symbol} position to close")
        side = Side.SELL if position > 0 else Side.BUY
        return [self.intent(signal, context, side=side, qty=abs(position), reduce_only=True)]

    @staticmethod
    def _first_target(
        signal: Signal, reference: Decimal, context: StrategyContext
    ) -> Decimal | None:
        """The nearest take-profit target, on the tick, that is on the profitable side of
        `reference` (the entry as sent, or the last price)."""
        targets = profitable_targets(signal, reference, context.instrument)
        return targets[0] if targets else None


def _flip_problem(
    signal: Signal,
    context: StrategyContext,
    price: Decimal | None,
    unfinished: Sequence[OpenOrder],
) -> str:
    """Why `signal` cannot flip the strategy's opposite position now, or "" if it can. A flip
    is one order of both sizes, sized from the position as booked: a Limit one left resting
    after the position closed otherwise (its stop, a close) would open both sizes, and one
    sent while `unfinished` orders (those of the strategy's open orders in the symbol that
    could change the position meanwhile) are unfinished would count a position they are
    changing."""
    held = f"{context.position_qty.normalize():f} {signal.symbol} position"
    if price is not None:
        return (
            f"a limit entry cannot flip the {held}: left resting it could open more than the "
            "signal asks; close it first with a close signal, or send a market entry"
        )
    if unfinished:
        return (
            f"the {held} cannot be flipped while {len(unfinished)} of the strategy's "
            "orders in it are unfinished: send the signal again once they are done"
        )
    return ""


def risk_sized_qty(
    side: Side,
    reference: Decimal,
    stop_loss: Decimal,
    context: StrategyContext,
    risk_fraction: Decimal,
    max_notional_usdt: Decimal,
) -> Decimal | str:
    """The quantity that loses `risk_fraction` of equity if the stop hits, from `reference`,
    capped by `max_notional_usdt` and the instrument and rounded down to its lot size; or why
    no order can be sized (for a decline)."""
    risk_per_unit = (reference - stop_loss) * (1 if side is Side.BUY else -1)
    if risk_per_unit <= 0:
        return (
            f"stop_loss {stop_loss} is on the wrong side of {reference} for a {side.value.lower()}"
        )
    instrument = context.instrument
    qty = min(
        context.equity_usdt * risk_fraction / risk_per_unit,
        max_notional_usdt / reference,
        instrument.max_order_qty,
    )
    qty = instrument.round_qty(qty)
    if qty < instrument.min_order_qty:
        return (
            f"size {qty} is below the minimum order qty {instrument.min_order_qty} "
            f"(equity {context.equity_usdt} USDT, risk {risk_fraction})"
        )
    return qty


def capped_leverage(signal: Signal, cap: Decimal) -> Decimal | None:
    """The signal's leverage hint, never above `cap` (None: the venue's leverage as it is)."""
    return None if signal.leverage is None else min(signal.leverage, cap)


def tick_rounded(price: Decimal, side: Side, instrument: Instrument) -> Decimal:
    """`price` on the instrument's tick, rounded as the bot rounds a `side` entry's limit and
    take profit: down for a buy, up for a sell. An entry never costs more than asked and a
    target is never moved out of reach (the risk gate's rounding then changes nothing)."""
    return round_to_step(price, instrument.tick_size, up=side is Side.SELL)


def limit_price(signal: Signal, context: StrategyContext) -> Decimal | str | None:
    """The signal's entry on the instrument's tick (None: no entry, a Market order), or why it
    cannot be one (an entry under one tick rounds to no price)."""
    if signal.entry is None:
        return None
    assert signal.side is not None  # Signal guarantees a side for `open`
    price = tick_rounded(signal.entry, signal.side, context.instrument)
    if price <= 0:
        return f"entry {signal.entry} rounds to no price on the tick {context.instrument.tick_size}"
    return price


def profitable_targets(signal: Signal, reference: Decimal, instrument: Instrument) -> list[Decimal]:
    """The signal's take-profit targets on the tick (`tick_rounded`) that are on the
    profitable side of `reference`, nearest first, each once."""
    assert signal.side is not None  # Signal guarantees a side for `open`
    direction = 1 if signal.side is Side.BUY else -1
    rounded = {tick_rounded(tp, signal.side, instrument) for tp in signal.take_profit}
    return sorted(
        (tp for tp in rounded if tp > 0 and (tp - reference) * direction > 0),
        key=lambda tp: abs(tp - reference),
    )
