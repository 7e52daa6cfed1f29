"""Exposure with orders in flight: what the gate counts so two quick signals cannot both pass
a limit only one fits under.

Positions come from the account projection (each strategy's own book). Every approved order
is reserved here from its approval until it is terminal (a fill then shows in the book), and
counted in the worst case: buys and sells in flight may each fill without the other, and
the position may close before those against it fill (its stop, a target, another client),
so they count whole on their side. A reduce-only order cannot add exposure: it counts as an
open order, never as exposure.

A side's worst case is valued at the highest of the market price and the limits of that
side's orders in flight, as the gate values the order it decides (the worse of its limit and
the market): a sell limit above the market fills only once the market has reached it, so
the short it may leave is worth at least its limit then, not the price of today.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Final, NamedTuple

from bot.logs import logger
from bot.messages import Execution, OrderEvent, Side

if TYPE_CHECKING:  # the journal imports the risk package: no import cycle at run time
    from bot.journal import OrderRecord

__all__ = ["Exposure", "ExposureLedger", "Reservation", "reserve_unfinished"]

ZERO: Final = Decimal(0)
_NO_SIDES: Final[Mapping[str, tuple[Decimal, Decimal]]] = {}


@dataclass(frozen=True)
class Reservation:
    """An approved order whose fills are not all in its strategy's book yet."""

    strategy: str
    symbol: str
    #: The order's quantity, signed (buy > 0): the venue's once it says another.
    signed_qty: Decimal
    reduce_only: bool = False
    #: How much of it the strategy's book holds already (those fills count there).
    booked: Decimal = ZERO
    #: Once the order is terminal, how much of it filled: only that can still reach the book.
    final_qty: Decimal | None = None
    #: A limit order's price (the venue's once it says another); None for a market order.
    limit: Decimal | None = None

    @property
    def qty(self) -> Decimal:
        """The order's quantity."""
        return abs(self.signed_qty)

    @property
    def settled(self) -> bool:
        """Terminal at the venue: no longer an open order, perhaps with fills to book."""
        return self.final_qty is not None

    @property
    def counted(self) -> Decimal:
        """The signed quantity this order may still add to its strategy's position beyond
        what its book holds (a reduce-only order adds none)."""
        if self.reduce_only:
            return ZERO
        whole = self.final_qty if self.final_qty is not None else self.qty
        left = max(whole - self.booked, ZERO)
        return left if self.signed_qty > 0 else -left


class Exposure(NamedTuple):
    """A strategy's worst-case exposure at given prices (`ExposureLedger.exposure_at`)."""

    notional: Decimal
    #: The symbols where it holds exposure that had no price (left out of `notional`).
    unpriced: list[str]


class ExposureLedger:
    """Positions (from the projection) plus orders in flight, per strategy and symbol."""

    def __init__(
        self,
        position_of: Callable[[str, str], Decimal],
        symbols_of: Callable[[str], Iterable[str]] = lambda strategy: (),
        held_elsewhere: Callable[[str, str], Decimal] = lambda strategy, symbol: ZERO,
    ) -> None:
        """`position_of(strategy, symbol)`: the strategy's own signed position on its key;
        `symbols_of(strategy)`: the symbols where it holds one, on any key counted;
        `held_elsewhere(strategy, symbol)`: the size it holds on other keys (a strategy moved
        to another key leaves its positions on the one before), counted whole on both sides:
        a position on another account neither nets against this one's nor closes with it."""
        self._position_of = position_of
        self._symbols_of = symbols_of
        self._held_elsewhere = held_elsewhere
        self._in_flight: dict[str, Reservation] = {}
        # strategy -> symbol -> (buys in flight, sells in flight), only where either is not
        # zero: kept up to date, so a decision costs no scan of every order in flight, nor of
        # every other strategy's symbols.
        self._sides: dict[str, dict[str, tuple[Decimal, Decimal]]] = {}
        # (strategy, symbol, buying) -> the limits of that side's orders counted, each with
        # how many orders have it: the price its worst case is valued at no less than.
        self._limits: dict[tuple[str, str, bool], Counter[Decimal]] = {}
        self._open: dict[str, int] = {}  # strategy -> orders in flight

    def reserve(self, order_link_id: str, reservation: Reservation) -> None:
        self.release(order_link_id)  # the same order reserved again replaces itself
        if reservation.settled and reservation.counted == 0:
            return  # nothing of it left to count
        self._in_flight[order_link_id] = reservation
        self._add(reservation, 1)

    def release(self, order_link_id: str) -> None:
        """Forget the order: terminal, and every fill of it in the book (or none came)."""
        reservation = self._in_flight.pop(order_link_id, None)
        if reservation is not None:
            self._add(reservation, -1)

    def fill_booked(self, fill: Execution, strategy: str | None = None) -> None:
        """A fill of an order in flight is in its strategy's book now: it counts there from
        this moment, so no longer here (called in the same step as the booking)."""
        reservation = self._in_flight.get(fill.order_link_id)
        if reservation is not None:
            booked = reservation.booked + abs(fill.qty)
            self.reserve(fill.order_link_id, replace(reservation, booked=booked))

    def follow(self, event: OrderEvent) -> None:
        """Keep an order in flight as the venue reports it. Once terminal it counts only
        what filled and its book does not hold yet: the venue reports an order Filled
        before its fills reach the book, and until they do they count here. Resized when
        the venue holds another quantity than the one approved (another client amended it:
        said as a warning), and valued at the limit price the venue holds. A reduce-only
        order, which the venue may trim, adds no exposure either way."""
        reservation = self._in_flight.get(event.order_link_id)
        if reservation is None:
            return
        if event.status.is_terminal:
            self.reserve(event.order_link_id, replace(reservation, final_qty=event.filled_qty))
            return
        if reservation.reduce_only or reservation.settled:
            return  # a reduce-only order, which the venue may trim, adds no exposure
        venue_qty = reservation.qty if event.venue_qty is None else event.venue_qty
        limit = reservation.limit
        if limit is not None and event.venue_price is not None:
            limit = event.venue_price  # said by the executor, when another client made it
        if (venue_qty, limit) == (reservation.qty, reservation.limit):
            return  # as counted
        if venue_qty != reservation.qty:
            logger.bind(notify="foreign").warning(
                "order {order_link_id} of strategy {strategy}: the venue holds {venue_qty} "
                "{symbol}, not the {counted} the risk gate counted (amended by another "
                "client); its exposure counts the venue's quantity from now on",
                order_link_id=event.order_link_id,
                strategy=reservation.strategy,
                venue_qty=venue_qty,
                symbol=reservation.symbol,
                counted=reservation.qty,
            )
        sign = 1 if reservation.signed_qty > 0 else -1
        self.reserve(
            event.order_link_id,
            replace(reservation, signed_qty=sign * venue_qty, limit=limit),
        )

    def open_orders(self, strategy: str) -> int:
        """How many of the strategy's approved orders are not terminal yet."""
        return self._open.get(strategy, 0)

    def worst_position(self, strategy: str, symbol: str) -> Decimal:
        """The largest absolute position the strategy could reach in `symbol` if every order
        in flight on one side filled (`_worst_sides`)."""
        return max(self._worst_sides(strategy, symbol))

    def _worst_sides(self, strategy: str, symbol: str) -> tuple[Decimal, Decimal]:
        """The long and the short (both as sizes) the strategy could reach in `symbol`: its
        position on that side with every order in flight on that side filled. The position
        may close before they fill (its stop, a target, another client): orders against it
        count whole, never netted against it (a flip's one order of both sizes could open
        both), and so does what it holds on other keys (`held_elsewhere`)."""
        position = self._position_of(strategy, symbol)
        elsewhere = self._held_elsewhere(strategy, symbol)
        buys, sells = self._sides.get(strategy, _NO_SIDES).get(symbol, (ZERO, ZERO))
        return (
            max(position, ZERO) + buys + elsewhere,
            -(min(position, ZERO) + sells) + elsewhere,
        )

    def worst_notional(
        self, strategy: str, symbol: str, price: Decimal, adding: Reservation | None = None
    ) -> Decimal:
        """The largest notional the strategy's position in `symbol` could reach if every
        order in flight on one side (and `adding`, if of this symbol) filled (`_worst_sides`):
        each side valued at the highest of `price` (the market's) and that side's limits."""
        long, short = self._worst_sides(strategy, symbol)
        buy_price = self._valued_at(strategy, symbol, True, price)
        sell_price = self._valued_at(strategy, symbol, False, price)
        if adding is not None and adding.symbol == symbol and adding.counted:
            at = max(adding.limit or price, price)
            if adding.counted > 0:
                long, buy_price = long + adding.counted, max(buy_price, at)
            else:
                short, sell_price = short - adding.counted, max(sell_price, at)
        return max(long * buy_price, short * sell_price)

    def _valued_at(self, strategy: str, symbol: str, buying: bool, price: Decimal) -> Decimal:
        limits = self._limits.get((strategy, symbol, buying))
        return max(price, *limits) if limits else price

    def exposure_symbols(self, strategy: str) -> set[str]:
        """The symbols where the strategy holds a position or has orders in flight that may
        add to one: the symbols its exposure must be priced in."""
        symbols = set(self._symbols_of(strategy))
        symbols.update(self._sides.get(strategy, ()))
        return symbols

    def _add(self, reservation: Reservation, sign: int) -> None:
        if not reservation.settled:
            self._open[reservation.strategy] = self.open_orders(reservation.strategy) + sign
        counted = reservation.counted
        if counted == 0:
            return
        sides = self._sides.setdefault(reservation.strategy, {})
        buys, sells = sides.get(reservation.symbol, (ZERO, ZERO))
        if counted > 0:
            buys += sign * counted
        else:
            sells += sign * counted
        if buys or sells:
            sides[reservation.symbol] = (buys, sells)
        else:
            sides.pop(reservation.symbol, None)
        if reservation.limit is not None:
            index = (reservation.strategy, reservation.symbol, counted > 0)
            limits = self._limits.setdefault(index, Counter())
            limits[reservation.limit] += sign
            if not limits[reservation.limit]:
                del limits[reservation.limit]

    def strategy_exposure(
        self,
        strategy: str,
        prices: Mapping[str, Decimal],
        adding: Reservation | None = None,
    ) -> Decimal:
        """The strategy's worst-case notional at `prices` (`exposure_at`), a symbol `prices`
        has no price of left out."""
        return self.exposure_at(strategy, prices, adding).notional

    def exposure_at(
        self,
        strategy: str,
        prices: Mapping[str, Decimal],
        adding: Reservation | None = None,
    ) -> Exposure:
        """The strategy's worst-case notional at `prices` over every symbol where it has
        exposure, with `adding` counted as one more order in flight, and the symbols of its
        exposure that `prices` has no price of (left out of the notional). One pass over its
        symbols: the risk gate asks this of every strategy on every decision."""
        symbols = self.exposure_symbols(strategy)
        if adding is not None:
            symbols.add(adding.symbol)
        notional = ZERO
        unpriced: list[str] = []
        for symbol in symbols:
            price = prices.get(symbol)
            if price is not None:
                notional += self.worst_notional(strategy, symbol, price, adding)
            elif self.worst_position(strategy, symbol):
                unpriced.append(symbol)
        return Exposure(notional, sorted(unpriced))


def reserve_unfinished(
    ledger: ExposureLedger, records: Iterable[OrderRecord], booked: Mapping[str, Decimal]
) -> None:
    """Reserve the journal's unfinished orders: the orders a previous run left in flight
    count until they are terminal and their fills booked, each at the quantity and limit price
    the venue last said it holds (an amendment another client made is not news again after a
    restart), less what `booked` (by orderLinkId) says the books hold of it."""
    for record in records:
        request = record.request
        link_id = request.order_link_id
        ledger.reserve(
            link_id,
            Reservation(
                request.strategy,
                request.symbol,
                record.venue_qty if request.side is Side.BUY else -record.venue_qty,
                request.reduce_only,
                booked=booked.get(link_id, ZERO),
                limit=record.venue_price,
            ),
        )
