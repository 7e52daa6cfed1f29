"""The Strategy plug-in API (interface version 2).

A strategy is one class with one required method; everything else has a default:

    class MyStrategy(Strategy):
        class Params(StrategyParams):          # validated from [strategies.X.params]
            risk_fraction: Decimal = Decimal("0.01")

        def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
            if signal.stop_loss is None:
                return self.decline("no stop loss")
            return [self.intent(signal, context, side=signal.side, qty=Decimal("0.01"))]

`on_signal` is called once per signal routed to the strategy. It returns the orders it wants
(`OrderIntent`s, built with `self.intent(...)`) or a `Decline` saying why it wants none
(`self.decline(...)`); an empty list is journaled as the decline "no intents". Every intent
then passes the risk gate, which may still reject it, and is journaled either way.

The `context` is a read-only snapshot taken just before the call: the instrument's rules, the
last price, the key's equity and balances, the strategy's own positions and open orders (its
fills and orders, not the whole key's), its parameters and the time. A strategy must not do
I/O or keep references to bot internals: everything it may know is in the context.

Optional hooks, each called with the same kind of context and able to return more intents
(or None, the default, for nothing):

- `on_start()`: once, before the first signal (load a model, check parameters together);
  raising stops the bot's start-up with the strategy named.
- `on_fill(fill, signal, context)`: one of the strategy's orders was filled (partly or
  fully); `signal` is the signal that order came from, so new legs of that signal can be
  built with `self.intent(signal, ...)` and a stop moved with `self.move_stop(...)`.
- `on_order_rejected(rejection, signal, context)`: one of its orders was refused, by the risk
  gate or by the venue.
- `on_timer(tick, context)`: every `timer_interval_s` seconds for each symbol in
  `timer_symbols` (class attributes; off by default); `tick` is a synthetic signal of source
  `timer` to build intents from.

Isolation: the bot runs every call on the strategy's own worker thread within a time budget
(`[strategies.X] time_budget_ms`, 50 by default: CPU time on that thread; a call that waits
instead has its budget plus 1 s of wall time). A call that raises or overruns is journaled
as failed (the traceback goes to the log); after `max_failures` failures in a row the
strategy is halted (opening orders refused until `bot resume --strategy X`), and the other
strategies keep running.

`INTERFACE_VERSION` is bumped when this API changes incompatibly; the loader refuses a
strategy written for another version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict

from bot.messages import (
    Decline,
    Instrument,
    OrderIntent,
    OrderType,
    Side,
    Signal,
    StopMove,
)

__all__ = [
    "INTERFACE_VERSION",
    "Fill",
    "OpenOrder",
    "OrderRejection",
    "Position",
    "ReadOnlyDict",
    "Strategy",
    "StrategyContext",
    "StrategyOutput",
    "StrategyParams",
]

INTERFACE_VERSION = 2

K = TypeVar("K")
V = TypeVar("V")

#: What a strategy's call returns: orders (and stop moves) to make, or why none.
StrategyOutput = Sequence[OrderIntent | StopMove] | Decline


class StrategyParams(BaseModel):
    """Base of a strategy's parameters: frozen, and an unknown parameter is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Position:
    """The strategy's own position in one symbol: from its fills, not the key's whole one."""

    #: signed: positive long, negative short
    qty: Decimal
    #: average entry price of what is open
    entry_price: Decimal


@dataclass(frozen=True)
class OpenOrder:
    """One of the strategy's orders that is not finished yet (journaled, maybe at the venue)."""

    order_link_id: str
    signal_id: str
    leg: int
    symbol: str
    side: Side
    order_type: OrderType
    qty: Decimal
    filled_qty: Decimal
    price: Decimal | None
    reduce_only: bool
    status: str


@dataclass(frozen=True)
class Fill:
    """A fill of one of the strategy's orders, as booked to the strategy."""

    order_link_id: str
    leg: int
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    #: the order's quantity (as the venue holds it: another client may have amended it) and
    #: how much of it is filled so far, this fill included
    order_qty: Decimal
    order_filled_qty: Decimal
    reduce_only: bool
    ts: datetime
    #: the strategy's own signed position in the symbol once this fill was booked, whatever
    #: fills came after (an entry that only closed an earlier position left 0); None when not
    #: known (a hook journaled by an older version)
    position_after: Decimal | None = None

    @property
    def order_done(self) -> bool:
        """Whether this fill completed the order."""
        return self.order_filled_qty >= self.order_qty


@dataclass(frozen=True)
class OrderRejection:
    """One of the strategy's intents or orders that will not trade: who refused and why."""

    leg: int
    symbol: str
    #: the risk rule (e.g. MAX_ORDER_NOTIONAL), or "VENUE" when the exchange refused the order
    rule: str
    reason: str
    order_link_id: str | None = None


class ReadOnlyDict(dict[K, V]):
    """A dict a strategy can read, copy and pickle, but not change: the context is the bot's
    snapshot (a write raises TypeError, so the call fails instead of going unnoticed)."""

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            "the context's mappings are read-only: copy one with dict(...) to change it"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[ReadOnlyDict[K, V]], tuple[dict[K, V]]]:
        return type(self), (dict(self),)  # copied and unpickled without a write

    @classmethod
    def fromkeys(cls, keys: Iterable[K], value: V | None = None) -> ReadOnlyDict[K, V | None]:  # type: ignore[override]
        return cls(dict.fromkeys(keys, value))


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may know when it decides; built by the bot just before each call.
    Its mappings are read-only copies, made afresh for every context."""

    strategy: str
    params: StrategyParams
    symbol: str
    instrument: Instrument
    last_price: Decimal
    #: the key's equity in USDT (shared by every strategy on the key)
    equity_usdt: Decimal
    now: datetime
    #: the key's balances in USDT: equity, available, wallet_balance
    balances: Mapping[str, Decimal] = field(default_factory=dict)
    #: the strategy's own open positions by symbol (its fills, not the key's); flat ones left out
    positions: Mapping[str, Position] = field(default_factory=dict)
    #: the strategy's own unfinished orders in this symbol, oldest first (but reduce-only ones
    #: being cancelled because their position closed)
    open_orders: tuple[OpenOrder, ...] = ()
    #: the strategy's orders the risk gate approved today (UTC), every leg counted
    orders_today: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "balances", ReadOnlyDict(self.balances))
        object.__setattr__(self, "positions", ReadOnlyDict(self.positions))

    @property
    def position_qty(self) -> Decimal:
        """The strategy's own signed position in this context's symbol (0 when flat)."""
        position = self.positions.get(self.symbol)
        return position.qty if position is not None else Decimal(0)


class Strategy(ABC):
    """Base class of every strategy. Subclass it and implement `on_signal`."""

    INTERFACE_VERSION: ClassVar[int] = INTERFACE_VERSION
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    #: `on_timer` runs every this many seconds for each of `timer_symbols` (None: never)
    timer_interval_s: ClassVar[float | None] = None
    timer_symbols: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, params: StrategyParams) -> None:
        self.name = name
        self.params = params

    @abstractmethod
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        """The orders this strategy wants for `signal`, or a Decline saying why none."""

    def on_start(self) -> None:  # noqa: B027 - an optional hook: doing nothing is its default
        """Called once before the first signal; raise to stop the bot's start-up."""

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        """One of this strategy's orders (from `signal`) was filled, partly or fully."""
        return None

    def on_order_rejected(
        self, rejection: OrderRejection, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        """One of this strategy's intents or orders (from `signal`) was refused."""
        return None

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        """Every `timer_interval_s` seconds, for each symbol in `timer_symbols`."""
        return None

    # building blocks ----------------------------------------------------------------------

    def intent(
        self,
        signal: Signal,
        context: StrategyContext,
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
        """An order for `signal`: Limit at `price` if given, else Market at the last price; at
        `leverage` (default: the signal's hint, which the risk gate caps). Each order of one
        signal needs its own `leg` (0-99): the leg makes its orderLinkId, so a leg is placed
        once however often it is asked for."""
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
            reference_price=price if price is not None else context.last_price,
            stop_loss=stop_loss,
            take_profit=take_profit,
            reduce_only=reduce_only,
            leverage=leverage if leverage is not None else signal.leverage,
            signal_ts=signal.ts,
        )

    def move_stop(
        self, signal: Signal, *, stop_loss: Decimal, close_leg_if_crossed: int | None = None
    ) -> StopMove:
        """Set the stop loss of the position in `signal`'s symbol (the whole position on the
        strategy's key) to `stop_loss`, e.g. to break-even after a first target fills.

        A stop the price has already crossed cannot be set (it would close the position at
        once). By default the move is then refused, with a warning, and the old stop stays.
        With `close_leg_if_crossed`, the strategy's position is closed at market instead, as
        that leg of `signal` (a leg none of its orders uses), after its resting reduce-only
        orders in the symbol are cancelled: what the stop would have done."""
        return StopMove(
            strategy=self.name,
            signal_source=signal.source,
            signal_id=signal.id,
            symbol=signal.symbol,
            stop_loss=stop_loss,
            close_leg_if_crossed=close_leg_if_crossed,
        )

    def decline(self, reason: str) -> Decline:
        return Decline(strategy=self.name, reason=reason)
