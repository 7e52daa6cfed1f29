"""Exposure with orders in flight: what the gate counts so two quick signals cannot both pass
a limit only one fits under.

Positions come from the account projection (each strategy's own book). Every approved order
is reserved here from its approval until it is terminal (a fill then shows in the book), and
counted in the worst case: buys and sells in flight may each fill without the other. A
reduce-only order cannot add exposure: it counts as an open order, never as exposure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from bot.logs import logger
from bot.messages import OrderEvent, Side

if TYPE_CHECKING:  # the journal imports the risk package: no import cycle at run time
    from bot.journal import OrderRecord

__all__ = ["ExposureLedger", "Reservation", "reserve_unfinished"]

ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Reservation:
    """An approved order not yet terminal: signed quantity (buy > 0)."""

    strategy: str
    symbol: str
    signed_qty: Decimal
    reduce_only: bool = False
    #: The order's quantity, when the reservation is not all of it: what was left to fill of
    #: an order a previous run left in flight, or of one resized to the venue's (`follow`).
    order_qty: Decimal | None = None

    @property
    def qty(self) -> Decimal:
        """The order's quantity."""
        return self.order_qty if self.order_qty is not None else abs(self.signed_qty)


class ExposureLedger:
    """Positions (from the projection) plus orders in flight, per strategy and symbol."""

    def __init__(self, position_of: Callable[[str, str], Decimal]) -> None:
        """`position_of(strategy, symbol)`: the strategy's own signed position."""
        self._position_of = position_of
        self._in_flight: dict[str, Reservation] = {}
        # (strategy, symbol) -> (buys in flight, sells in flight): kept up to date, so a
        # decision costs no scan of every order in flight.
        self._sides: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        self._open: dict[str, int] = {}  # strategy -> orders in flight

    def reserve(self, order_link_id: str, reservation: Reservation) -> None:
        self.release(order_link_id)  # the same order reserved again replaces itself
        self._in_flight[order_link_id] = reservation
        self._add(reservation, 1)

    def release(self, order_link_id: str) -> None:
        """The order is terminal: its fills are in the book now, or it never filled."""
        reservation = self._in_flight.pop(order_link_id, None)
        if reservation is not None:
            self._add(reservation, -1)

    def follow(self, event: OrderEvent) -> None:
        """Keep an order in flight as the venue reports it: released once terminal, resized
        when the venue holds another quantity than the one approved (another client amended
        it: said as a warning). A reduce-only order, which the venue may trim, adds no
        exposure either way."""
        if event.status.is_terminal:
            self.release(event.order_link_id)
            return
        reservation = self._in_flight.get(event.order_link_id)
        venue_qty = event.venue_qty
        if reservation is None or venue_qty is None or reservation.reduce_only:
            return
        if venue_qty == reservation.qty or reservation.signed_qty == 0:
            return  # as counted (or nothing of it left to fill: nothing to resize)
        logger.bind(notify="foreign").warning(
            "order {order_link_id} of strategy {strategy}: the venue holds {venue_qty} "
            "{symbol}, not the {counted} the risk gate counted (amended by another client); "
            "its exposure counts the venue's quantity from now on",
            order_link_id=event.order_link_id,
            strategy=reservation.strategy,
            venue_qty=venue_qty,
            symbol=reservation.symbol,
            counted=reservation.qty,
        )
        sign = 1 if reservation.signed_qty > 0 else -1
        self.reserve(
            event.order_link_id,
            replace(
                reservation, signed_qty=sign * (venue_qty - event.filled_qty), order_qty=venue_qty
            ),
        )

    def open_orders(self, strategy: str) -> int:
        """How many of the strategy's approved orders are not terminal yet."""
        return self._open.get(strategy, 0)

    def worst_position(self, strategy: str, symbol: str, extra: Decimal = ZERO) -> Decimal:
        """The largest absolute position the strategy could reach in `symbol` if every order
        in flight on one side (and `extra`, signed) filled."""
        position = self._position_of(strategy, symbol)
        buys, sells = self._sides.get((strategy, symbol), (ZERO, ZERO))
        if extra > 0:
            buys += extra
        else:
            sells += extra
        return max(abs(position + buys), abs(position + sells))

    def _add(self, reservation: Reservation, sign: int) -> None:
        self._open[reservation.strategy] = self.open_orders(reservation.strategy) + sign
        if reservation.reduce_only:
            return
        index = (reservation.strategy, reservation.symbol)
        buys, sells = self._sides.get(index, (ZERO, ZERO))
        if reservation.signed_qty > 0:
            buys += sign * reservation.signed_qty
        else:
            sells += sign * reservation.signed_qty
        self._sides[index] = (buys, sells)

    def strategy_exposure(
        self,
        strategy: str,
        prices: Mapping[str, Decimal],
        symbols: Iterable[str],
        adding: tuple[str, Decimal] | None = None,
    ) -> Decimal:
        """The strategy's worst-case notional over `symbols` at `prices`, with `adding`
        (symbol, signed qty) counted as one more order in flight."""
        total = ZERO
        for symbol in symbols:
            if symbol not in prices:
                continue
            extra = adding[1] if adding is not None and adding[0] == symbol else ZERO
            total += self.worst_position(strategy, symbol, extra) * prices[symbol]
        return total


def reserve_unfinished(ledger: ExposureLedger, records: Iterable[OrderRecord]) -> None:
    """Reserve the journal's unfinished orders (what is left of each to fill): the orders a
    previous run left in flight count until they are terminal, each at the quantity the venue
    last said it holds (an amendment another client made is not news again after a restart)."""
    for record in records:
        request = record.request
        left = record.venue_qty - record.filled_qty
        ledger.reserve(
            request.order_link_id,
            Reservation(
                request.strategy,
                request.symbol,
                left if request.side is Side.BUY else -left,
                request.reduce_only,
                order_qty=record.venue_qty,
            ),
        )
