"""The order lifecycle: its states and the only transitions allowed between them.

    Pending ──► Submitting ──► New ──► PartiallyFilled ──► Filled
       │  │         │  ▲        │            │
       │  │         ▼  │        └────────────┴──────────► Cancelled
       │  └─────► Unknown ─────► (any venue state)          Rejected
       └──────────────────────────────────────────────────► Rejected (never sent)

- Pending: journaled, never sent. Only a Pending order may be declined without asking the venue.
- Submitting: about to be sent, or sent without an answer yet. The order may exist at the venue:
  after a crash it is looked up by orderLinkId before anything else.
- Unknown: the venue's answer was lost (timeout, 5xx, 10016...). Resolved by a look-up to one of
  the venue's states; resent (same orderLinkId) only when a look-up shows no such order.
- New, PartiallyFilled: at the venue and open. Filled, Cancelled, Rejected: terminal.

Transitions only move forward; `check_transition` is the one rule the journal applies to every
event, and refusing a backward move is how a stale answer (a look-up overtaken by a fill, a
retry's late answer) can never rewind what the journal knows. A report under one of our
orderLinkIds that `not_ours` shows to be of another order is not applied at all.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from bot.messages import OrderEvent, OrderRequest, OrderStatus, OrderType, Side

__all__ = [
    "MAY_EXIST_AT_VENUE",
    "OPEN_AT_VENUE",
    "TransitionRefused",
    "check_transition",
    "close_shortfall",
    "closed_or_turned",
    "differences",
    "not_ours",
    "trimmed",
    "unlike_request",
]

#: States in which the venue may hold the order although the journal cannot prove it.
MAY_EXIST_AT_VENUE: Final = frozenset({OrderStatus.SUBMITTING, OrderStatus.UNKNOWN})
#: States the venue reported as open: followed until they are terminal.
OPEN_AT_VENUE: Final = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED})

_TERMINAL: Final = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})
_VENUE_STATES: Final = OPEN_AT_VENUE | _TERMINAL

_ALLOWED: Final[dict[OrderStatus, frozenset[OrderStatus]]] = {
    # Pending -> Unknown: one a crash may have let leave (its Submitting unwritten), given up
    # unsent after the restart (the bot halted): the venue may hold it, so it is looked up.
    OrderStatus.PENDING: frozenset(
        {OrderStatus.SUBMITTING, OrderStatus.UNKNOWN, OrderStatus.REJECTED}
    )
    | _VENUE_STATES,
    # Submitting -> Submitting is the next attempt of a resend.
    OrderStatus.SUBMITTING: frozenset({OrderStatus.SUBMITTING, OrderStatus.UNKNOWN})
    | _VENUE_STATES,
    OrderStatus.UNKNOWN: frozenset({OrderStatus.SUBMITTING, OrderStatus.UNKNOWN}) | _VENUE_STATES,
    OrderStatus.NEW: frozenset({OrderStatus.PARTIALLY_FILLED}) | _TERMINAL,
    OrderStatus.PARTIALLY_FILLED: frozenset({OrderStatus.PARTIALLY_FILLED}) | _TERMINAL,
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
}


class TransitionRefused(ValueError):
    """An event would move an order backwards; the journal keeps what it knows."""


def check_transition(
    current: OrderStatus,
    new: OrderStatus,
    *,
    filled_before: Decimal = Decimal(0),
    filled_after: Decimal = Decimal(0),
) -> None:
    """Raise `TransitionRefused` unless `current -> new` moves the order forward.

    A repeated PartiallyFilled is forward only if more has filled; the filled quantity never
    shrinks, whatever the states.
    """
    if new not in _ALLOWED[current]:
        raise TransitionRefused(f"{current} -> {new} would move the order backwards")
    if filled_after < filled_before:
        raise TransitionRefused(
            f"filled quantity would shrink from {filled_before} to {filled_after}"
        )
    if current is new is OrderStatus.PARTIALLY_FILLED and filled_after == filled_before:
        raise TransitionRefused("PartiallyFilled again with nothing more filled")


def trimmed(event: OrderEvent, qty: Decimal) -> bool:
    """Whether a reduce-only order of `qty` ended filled for less: the venue trimmed it to
    the room other reduce-only orders left (what it was meant to close stays open)."""
    return event.status is OrderStatus.FILLED and event.filled_qty < qty


def closed_or_turned(before: Decimal, after: Decimal) -> bool:
    """Whether the position `before` (signed) is gone at `after`: it was held, and is now
    flat or on the other side. A reduce-only order made for it has nothing left to reduce."""
    return before != 0 and (after == 0 or (after > 0) != (before > 0))


def close_shortfall(event: OrderEvent, qty: Decimal) -> str | None:
    """Why a close at market of `qty` (its latest `event`) did not close what it was sent
    for, in words; None if it did, or may have (its end not known yet)."""
    if event.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED):
        return f"it ended {event.status.value}: {event.reason}"
    if trimmed(event, qty):
        return (
            f"the venue filled {event.filled_qty} of {qty}: other reduce-only orders took the "
            "room, or the key's position is smaller than the books"
        )
    return None


def not_ours(event: OrderEvent, request: OrderRequest, order_id: str | None) -> str | None:
    """What shows that a venue report under `request`'s orderLinkId is of another order (a
    client of the same key used that id for an order of its own): a symbol, side, type or
    reduce-only flag (none of which an amendment changes) other than the request's, or an
    orderId other than `order_id`, the one the venue gave ours (None: not known yet). None if
    nothing does (a report of ours, or one that says too little to tell)."""
    return differences(
        ("symbol", event.symbol, request.symbol),
        ("side", event.side, request.side),
        ("type", event.order_type, request.order_type),
        ("reduceOnly", event.venue_reduce_only, request.reduce_only),
        ("orderId", event.order_id, order_id),
    )


def unlike_request(event: OrderEvent, request: OrderRequest) -> str | None:
    """What a venue report under `request`'s orderLinkId shows of the terms a client can
    amend other than the request's, where it says them: a quantity (a reduce-only order's may
    also be trimmed to the position, never grown), a limit price (the venue may also move it
    in to its price band, towards the market, never away), the stop loss or the take profit.
    Asked before the venue has given ours an orderId: an order of our symbol, side, type and
    reduce-only flag with other terms is ours amended by another client, or another client's
    own; None if nothing differs (ours, or an exact copy, which trades as ours would)."""
    qty, price, said = event.venue_qty, event.venue_price, []
    if qty is not None and (qty > request.qty if request.reduce_only else qty != request.qty):
        said.append(f"qty {qty}, not {request.qty}")
    limit = request.price if request.order_type is OrderType.LIMIT else None
    if price is not None and limit is not None and _worse(price, limit, request.side):
        said.append(f"price {price}, not {limit}")
    zero = Decimal(0)
    levels = differences(
        ("stopLoss", event.venue_stop_loss, request.stop_loss or zero),
        ("takeProfit", event.venue_take_profit, request.take_profit or zero),
    )
    return "; ".join([*said, levels] if levels else said) or None


def _worse(price: Decimal, limit: Decimal, side: Side) -> bool:
    """Whether `price` lies beyond `limit` away from the market (a buy's above, a sell's
    below): a limit the venue's price band moved lies towards the market, never away."""
    return price > limit if side is Side.BUY else price < limit


def differences(*fields: tuple[str, object, object]) -> str | None:
    """`(name, theirs, ours)` that differ where both are known, in words; None if none do."""
    said = [
        f"{name} {theirs}, not {ours}"
        for name, theirs, ours in fields
        if theirs is not None and ours is not None and theirs != ours
    ]
    return "; ".join(said) or None
