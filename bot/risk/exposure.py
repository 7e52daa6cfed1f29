"""Exposure with orders in flight: what the gate counts so two quick signals cannot both pass
a limit only one fits under.

Positions come from the account projection (each strategy's own book). Every approved order
is reserved here from its approval until it is terminal (a fill then shows in the book), and
counted in the worst case: buys and sells in flight may each fill without the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = ["ExposureLedger", "Reservation"]

ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Reservation:
    """An approved order not yet terminal: signed quantity (buy > 0)."""

    strategy: str
    symbol: str
    signed_qty: Decimal


class ExposureLedger:
    """Positions (from the projection) plus orders in flight, per strategy and symbol."""

    def __init__(self, position_of: Callable[[str, str], Decimal]) -> None:
        """`position_of(strategy, symbol)`: the strategy's own signed position."""
        self._position_of = position_of
        self._in_flight: dict[str, Reservation] = {}
        # (strategy, symbol) -> (buys in flight, sells in flight): kept up to date, so a
        # decision costs no scan of every order in flight.
        self._sides: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}

    def reserve(self, order_link_id: str, reservation: Reservation) -> None:
        self.release(order_link_id)  # the same order reserved again replaces itself
        self._in_flight[order_link_id] = reservation
        self._add(reservation, 1)

    def release(self, order_link_id: str) -> None:
        """The order is terminal: its fills are in the book now, or it never filled."""
        reservation = self._in_flight.pop(order_link_id, None)
        if reservation is not None:
            self._add(reservation, -1)

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
