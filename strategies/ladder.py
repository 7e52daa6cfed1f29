"""Take-profit ladder: enter once, take profit in steps across the signal's targets.

Leg 0 enters (Market, or Limit at the signal's `entry`) with the signal's stop loss, sized
like `follow` (equity x `risk_fraction` lost if the stop hits, capped by `max_notional_usdt`).
Once the entry is completely filled (`on_fill`), the filled quantity is split across the
profitable `take_profit` targets (less what targets of earlier ladders still resting there
cover: together they may not exceed the position): legs 1..n, each a reduce-only Limit order
at its target with its own orderLinkId (split by `weights`, equal by default; a share below
the minimum order qty joins the next leg). When the first target's leg is filled, the stop
moves to break-even: the strategy's own entry price. If the price is already back past the
entry by then (the venue refuses a stop the price has crossed), the position is closed at
market instead (leg 11), as that stop would have done. When the stop closes the position
first, the bot cancels the legs still resting (as it does every reduce-only order of a
closed position).

An opposite signal flips the ladder's position as `follow` flips one: one Market entry of
the position's size and the new one, carrying the new stop; the old targets go (the bot
cancels a turned position's reduce-only orders) and the new ones come when it has filled. A
limit one is declined, and so is one while the strategy has other unfinished orders in the
symbol (an entry not yet filled). A target that fills in the instant the flip is on its way
leaves the new position that much larger, as the old stop firing then would.

The stop is Bybit's position-level stop: it covers the key's whole position in the symbol, so
give a ladder a key of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pydantic import Field, field_validator

from bot.messages import Instrument, Side, Signal, SignalAction
from strategies.base import (
    Fill,
    OpenOrder,
    StrategyContext,
    StrategyOutput,
)
from strategies.follow import Follow, limit_price, profitable_targets

__all__ = ["TakeProfitLadder", "split"]

ENTRY_LEG = 0
FIRST_TARGET_LEG = 1
MAX_TARGETS = 10
#: The close at market of a break-even stop the price had already crossed.
BREAK_EVEN_CLOSE_LEG = FIRST_TARGET_LEG + MAX_TARGETS


class TakeProfitLadder(Follow):
    """Enter with a stop, then scale out across the targets; break-even after the first."""

    class Params(Follow.Params):
        weights: tuple[Decimal, ...] = Field(
            (),
            description="share of the position per target, nearest first (default: equal); "
            "scaled to sum to 1; targets beyond the weights given get no leg",
            max_length=MAX_TARGETS,
        )
        break_even_after_first: bool = Field(
            True, description="move the stop to the entry price once the first target fills"
        )

        @field_validator("weights")
        @classmethod
        def _positive_weights(cls, weights: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
            if any(weight <= 0 for weight in weights):
                raise ValueError("weights must all be positive")
            return weights

    params: Params

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        if signal.action is SignalAction.CLOSE:
            return self.decline("a ladder closes through its targets and stop, not on signals")
        price = limit_price(signal, context)
        if isinstance(price, str):
            return self.decline(price)
        reference = price or context.last_price
        if not _targets(signal, reference, context.instrument):
            return self.decline(
                f"no take_profit target on the profitable side of {reference}: nothing to ladder"
            )
        # The targets come as legs once the entry is filled.
        return self.enter_or_flip(
            signal,
            context,
            price=price,
            take_profit=None,
            unfinished=_changing_besides_exits(context),
        )

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        if signal.side is None:
            return None  # not a ladder's entry (a close signal's order)
        long = signal.side is Side.BUY
        if fill.leg == ENTRY_LEG and fill.order_done:
            position = context.positions.get(signal.symbol)
            held = position.qty if position is not None else Decimal(0)
            if held == 0 or (held > 0) != long:
                return None  # the stop (or a manual close) came first: nothing to take profit on
            # What this entry opened: one that only closed (or cut) an earlier position in
            # the other direction opened nothing, whatever later signals opened since.
            after = fill.position_after if fill.position_after is not None else held
            opened = abs(after) if after != 0 and (after > 0) == long else Decimal(0)
            # Targets of earlier ladders still resting cover part of the position already:
            # the venue refuses reduce-only orders beyond it (110017).
            room = abs(held) - _resting_exits(signal, context)
            size = min(fill.order_filled_qty, opened, room)
            if size <= 0:
                return None
            return self._ladder(signal, context, size, fill.price)
        if fill.leg == FIRST_TARGET_LEG and fill.order_done and self.params.break_even_after_first:
            position = context.positions.get(signal.symbol)
            if position is None or position.qty == 0 or (position.qty > 0) != long:
                # The stop (or a manual close) came first, or a flip turned the position:
                # nothing of this ladder's left to protect, and a new position keeps its stop.
                return None
            return [
                self.move_stop(
                    signal,
                    stop_loss=position.entry_price,
                    close_leg_if_crossed=BREAK_EVEN_CLOSE_LEG,
                )
            ]
        return None

    def _ladder(
        self, signal: Signal, context: StrategyContext, filled: Decimal, fill_price: Decimal
    ) -> StrategyOutput:
        """Reduce-only Limit orders at each target for the entry's filled quantity; a target
        is judged against the entry (its limit as sent, or a market entry's fill price), not
        against where the price went while the fill was reported."""
        price = limit_price(signal, context)
        reference = price if isinstance(price, Decimal) else fill_price
        targets = _targets(signal, reference, context.instrument)
        weights = self.params.weights or tuple(Decimal(1) for _ in targets)
        shares = split(filled, weights[: len(targets)], context)
        exit_side = Side.SELL if signal.side is Side.BUY else Side.BUY
        return [
            self.intent(
                signal,
                context,
                side=exit_side,
                qty=qty,
                price=target,
                reduce_only=True,
                leg=FIRST_TARGET_LEG + index,
            )
            for index, (target, qty) in enumerate(zip(targets, shares, strict=False))
            if qty > 0
        ]


def _changing_besides_exits(context: StrategyContext) -> list[OpenOrder]:
    """The strategy's unfinished orders in the symbol but the reduce-only ones that close its
    position (the targets of its ladders): those go with the position when a flip turns it
    (the bot cancels them then), the others could change the position the flip is sized by."""
    exit_side = Side.SELL if context.position_qty > 0 else Side.BUY
    return [
        order
        for order in context.open_orders
        if not (order.reduce_only and order.side is exit_side)
    ]


def _resting_exits(signal: Signal, context: StrategyContext) -> Decimal:
    """What the strategy's unfinished reduce-only orders of other signals, on the side that
    closes `signal`'s position, still have to fill."""
    exit_side = Side.SELL if signal.side is Side.BUY else Side.BUY
    return sum(
        (
            order.qty - order.filled_qty
            for order in context.open_orders
            if order.reduce_only and order.side is exit_side and order.signal_id != signal.id
        ),
        Decimal(0),
    )


def _targets(signal: Signal, reference: Decimal, instrument: Instrument) -> list[Decimal]:
    """The profitable targets on the instrument's tick, nearest first, each once (at most
    MAX_TARGETS); a target that rounds to no price is left out."""
    return profitable_targets(signal, reference, instrument)[:MAX_TARGETS]


def split(total: Decimal, weights: Sequence[Decimal], context: StrategyContext) -> list[Decimal]:
    """`total` split by `weights` on the lot size. Each share is where the running sum of the
    weights puts it, rounded down to the lot, less the shares before it: what rounding takes
    from one share is carried to the next, not all left to the last. A share below the
    minimum order qty is carried to the next one too; the last takes what is left (joining
    the nearest share before it when too small alone), so the shares sum to `total`."""
    instrument = context.instrument
    whole = sum(weights)
    shares: list[Decimal] = []
    running = Decimal(0)
    allocated = Decimal(0)
    for weight in weights[:-1]:
        running += weight
        share = instrument.round_qty(total * running / whole) - allocated
        if share < instrument.min_order_qty:
            share = Decimal(0)
        shares.append(share)
        allocated += share
    last = total - allocated
    if last < instrument.min_order_qty:  # too small alone: it joins the nearest share before it
        kept = [index for index, share in enumerate(shares) if share > 0]
        if kept:
            shares[kept[-1]] += last
            last = Decimal(0)
    return [*shares, last]
