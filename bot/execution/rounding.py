"""Prices and quantities valid by construction: the instrument's rules, applied once.

Every intent passes `conform` before the risk gate sees it, so the gate checks the numbers
that will be sent. Each price is rounded to the tick in the direction that never worsens the
trader's risk: a buy's limit down and a sell's up (never pay more than asked), a stop loss
toward the entry (never lose more than planned), a take profit toward the entry (a target is
never moved out of reach). Quantities round down to the lot size. A stop move rounds the
same way, toward the price (`conform_stop_move`).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from bot.messages import Instrument, OrderIntent, Side, StopMove

__all__ = ["conform", "conform_stop_move", "grid_moves", "round_to_step"]


def round_to_step(value: Decimal, step: Decimal, *, up: bool) -> Decimal:
    """`value` rounded to a multiple of `step`, up or down."""
    units = (value / step).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return units * step


def conform(
    intent: OrderIntent, instrument: Instrument, market_price: Decimal
) -> OrderIntent | str:
    """The intent with every number on the instrument's grid, or why it cannot be sent.

    A market order is valued at `market_price` (the venue's), never at the price the strategy
    says it sized at: the conformed intent's `reference_price` is the limit or that price.
    """
    buy = intent.side is Side.BUY
    tick = instrument.tick_size
    qty = round_to_step(
        min(intent.qty, instrument.max_qty(intent.order_type)), instrument.qty_step, up=False
    )
    if qty < instrument.min_order_qty:
        return (
            f"qty {intent.qty} rounds to {qty}, below the minimum order qty "
            f"{instrument.min_order_qty} of {instrument.symbol}"
        )
    price = None if intent.price is None else round_to_step(intent.price, tick, up=not buy)
    stop_loss = None if intent.stop_loss is None else round_to_step(intent.stop_loss, tick, up=buy)
    take_profit = (
        None if intent.take_profit is None else round_to_step(intent.take_profit, tick, up=not buy)
    )
    if (price is not None and price <= 0) or (stop_loss is not None and stop_loss <= 0):
        return f"a price rounds to zero on the tick size {tick} of {instrument.symbol}"
    if take_profit is not None and take_profit <= 0:
        take_profit = None
    reference = price if price is not None else market_price
    notional = qty * reference
    if not intent.reduce_only and notional < instrument.min_notional_usdt:
        return (
            f"order value {notional:.2f} USDT is below the minimum {instrument.min_notional_usdt}"
            f" USDT of {instrument.symbol}"
        )
    return intent.model_copy(
        update={
            "qty": qty,
            "price": price,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
            "reference_price": reference,
        }
    )


def conform_stop_move(move: StopMove, instrument: Instrument, *, long: bool) -> StopMove | str:
    """The move with its stop loss on the tick, rounded toward the price (up for a long,
    down for a short: never a bigger loss than asked), or why it cannot be sent. A strategy's
    break-even stop is an average entry price, rarely on the tick; Bybit refuses one off it."""
    stop_loss = round_to_step(move.stop_loss, instrument.tick_size, up=long)
    if stop_loss <= 0:
        return f"the stop loss {move.stop_loss} rounds to zero on the tick size of {move.symbol}"
    return move.model_copy(update={"stop_loss": stop_loss})


def grid_moves(intent: OrderIntent, conformed: OrderIntent) -> str:
    """What `conform` moved of `intent`'s numbers, in words ("stop 96999.99 to 97000.0"): a
    rejection of the conformed intent names its numbers, not the ones the strategy sent; ""
    if nothing moved."""
    moved = [
        f"{name} {before.normalize():f} to {'none' if after is None else f'{after:f}'}"
        for name, before, after in (
            ("qty", intent.qty, conformed.qty),
            ("price", intent.price, conformed.price),
            ("stop", intent.stop_loss, conformed.stop_loss),
            ("take profit", intent.take_profit, conformed.take_profit),
        )
        if before is not None and after != before
    ]
    return ", ".join(moved)
