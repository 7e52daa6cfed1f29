"""The risk gate as a state machine: signals, fills, cancels, another client's amendments,
price moves, halts and restarts in any order, against a model of the books and of the orders
in flight.

At every decision the machine works out, from its own model, which rules the intent breaks:
the gate must approve exactly when there is none, and otherwise name one of them. Every
approval is also checked against the limits directly (notional at the true price, worst-case
exposure with every order in flight, open orders, order rates, trading states, leverage).
After every step, the gate's ledger, counts and states must agree with the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, Final

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from bot.execution.rounding import conform
from bot.messages import (
    Execution,
    Instrument,
    OrderEvent,
    OrderIntent,
    OrderStatus,
    OrderType,
    Side,
)
from bot.risk.config import RiskConfig, StrategyRiskConfig
from bot.risk.counts import counting_since, utc_day_start
from bot.risk.exposure import ExposureLedger, Reservation
from bot.risk.gate import ApprovedOrder, RiskGate, Verdict
from bot.risk.states import BOT_SCOPE, ScopeState, TradingState
from tests.factories import make_execution, make_intent

ZERO: Final = Decimal(0)
MINUTE: Final = timedelta(minutes=1)
STRATEGIES: Final = ("alpha", "beta")
SYMBOLS: Final = ("BTCUSDT", "ETHUSDT")
SCOPES: Final = (BOT_SCOPE, *STRATEGIES)
#: Runs start between 23:50 and 00:02 UTC: many see a new UTC day begin.
MIDNIGHT: Final = datetime(2026, 11, 25, tzinfo=UTC)
INSTRUMENTS: Final = {
    "BTCUSDT": Instrument(
        symbol="BTCUSDT",
        qty_step=Decimal("0.001"),
        min_order_qty=Decimal("0.001"),
        max_order_qty=Decimal(100),
        tick_size=Decimal("0.1"),
        min_notional_usdt=Decimal(5),
    ),
    "ETHUSDT": Instrument(
        symbol="ETHUSDT",
        qty_step=Decimal("0.01"),
        min_order_qty=Decimal("0.01"),
        max_order_qty=Decimal(1000),
        tick_size=Decimal("0.01"),
        min_notional_usdt=Decimal(5),
    ),
}
#: Market prices move on a grid coarser than the tick, so that a limit exactly
#: `max_limit_distance_pct` (2, 5 or 10 %) from the market is a valid price.
PRICE_GRID: Final = {"BTCUSDT": Decimal(10), "ETHUSDT": Decimal(1)}
LIMIT_DISTANCES: Final = (Decimal(2), Decimal(5), Decimal(10))
_RANK: Final = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


def usdt(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low, high).map(Decimal)


def on_grid(symbol: str, price: Decimal) -> Decimal:
    grid = PRICE_GRID[symbol]
    return max(grid, (price / grid).to_integral_value() * grid)


@st.composite
def risk_configs(draw: st.DrawFn) -> RiskConfig:
    """`[risk]` with small limits, so that runs of a few dozen signals reach them."""
    return RiskConfig(
        symbols=SYMBOLS,
        max_order_notional_usdt=draw(usdt(100, 3000)),
        max_position_notional_usdt=draw(usdt(200, 3000)),
        max_strategy_exposure_usdt=draw(usdt(300, 4000)),
        max_total_exposure_usdt=draw(usdt(400, 6000)),
        max_open_orders=draw(st.integers(3, 12)),
        max_orders_per_minute=draw(st.integers(1, 8)),
        max_orders_per_day=draw(st.integers(2, 15)),
        max_leverage=draw(usdt(1, 20)),
        max_limit_distance_pct=draw(st.sampled_from(LIMIT_DISTANCES)),
        max_signal_age_s=60,
        max_signal_future_s=5,
    )


@st.composite
def strategy_overrides(draw: st.DrawFn) -> StrategyRiskConfig:
    """`[strategies.<name>.risk]`: each value unset, or drawn independently of the global one
    (so tighter or looser: only a tighter one may take effect)."""

    def maybe(values: st.SearchStrategy[object]) -> object:
        return draw(st.none() | values)

    return StrategyRiskConfig(
        sides=draw(st.sampled_from([None] * 8 + [("Buy",), ("Sell",)])),
        denied_symbols=draw(st.sampled_from([None] * 5 + [("ETHUSDT",)])),
        max_order_notional_usdt=maybe(usdt(100, 3000)),
        max_position_notional_usdt=maybe(usdt(200, 3000)),
        max_strategy_exposure_usdt=maybe(usdt(300, 4000)),
        max_open_orders=maybe(st.integers(2, 10)),
        max_orders_per_minute=maybe(st.integers(1, 8)),
        max_orders_per_day=maybe(st.integers(1, 12)),
        max_leverage=maybe(usdt(1, 20)),
        max_limit_distance_pct=maybe(st.sampled_from(LIMIT_DISTANCES)),
    )


@dataclass(frozen=True)
class Limits:
    """The limits one strategy is judged by, worked out here from the two configurations:
    the smaller number, the sides both allow, the symbols either denies."""

    order_notional: Decimal
    position_notional: Decimal
    strategy_exposure: Decimal
    open_orders: int
    per_minute: int
    per_day: int
    leverage: Decimal
    limit_distance_pct: Decimal
    sides: frozenset[str]
    denied: frozenset[str]

    @classmethod
    def of(cls, config: RiskConfig, override: StrategyRiskConfig) -> Limits:
        def stricter(name: str) -> Any:
            own = getattr(override, name)
            return getattr(config, name) if own is None else min(getattr(config, name), own)

        return cls(
            order_notional=stricter("max_order_notional_usdt"),
            position_notional=stricter("max_position_notional_usdt"),
            strategy_exposure=stricter("max_strategy_exposure_usdt"),
            open_orders=stricter("max_open_orders"),
            per_minute=stricter("max_orders_per_minute"),
            per_day=stricter("max_orders_per_day"),
            leverage=stricter("max_leverage"),
            limit_distance_pct=stricter("max_limit_distance_pct"),
            sides=frozenset(config.sides) & frozenset(override.sides or config.sides),
            denied=frozenset(config.denied_symbols) | frozenset(override.denied_symbols or ()),
        )


@dataclass(frozen=True)
class IntentSpec:
    """What a strategy wants for one signal, before it is priced and sized."""

    strategy: str
    symbol: str
    side: Side
    #: a number: the notional at the market price, in % of the strategy's order limit;
    #: "order" or "room": the most whole lots within the order limit, or within every size
    #: limit (the order's and the room the exposure limits leave), at the market price, plus
    #: `extra_lots`
    size: int | str
    extra_lots: int
    #: None: a market order; a number: a limit this many % from the market; "below" or
    #: "above": a limit exactly `max_limit_distance_pct` from it
    limit: Decimal | str | None
    reduce_only: bool
    leverage: Decimal | None


def intent_specs(*, near_limits: bool) -> st.SearchStrategy[IntentSpec]:
    """Any intent; or (`near_limits`) an opening one sized to the lot at a size limit, or a
    lot over it, with a limit price (if any) exactly at the largest distance allowed."""
    return st.builds(
        IntentSpec,
        strategy=st.sampled_from(STRATEGIES),
        symbol=st.sampled_from(SYMBOLS),
        side=st.sampled_from(Side),
        size=st.sampled_from(["order", "room"]) if near_limits else st.integers(1, 130),
        extra_lots=st.integers(0, 1) if near_limits else st.just(0),  # at, or a lot over
        limit=(
            st.sampled_from([None, "below", "above"])
            if near_limits
            else st.none() | st.decimals(Decimal(-4), Decimal(4), places=2)
        ),
        reduce_only=st.just(False) if near_limits else st.integers(0, 7).map(lambda n: n == 0),
        leverage=st.integers(0, 25).map(lambda n: Decimal(n) if n else None),  # 0: none
    )


@dataclass
class Order:
    """An approved order not yet terminal, and what is left of it to fill (signed: buy > 0);
    or one the venue reported filled whose fill, `left`, the books do not hold yet."""

    strategy: str
    symbol: str
    left: Decimal
    reduce_only: bool
    filled: Decimal = ZERO  # how much of it filled, the books hold
    limit: Decimal | None = None  # a limit order's price, as the venue holds it


def _order(intent: OrderIntent) -> Order:
    """The order an approval of `intent` puts in flight."""
    signed = intent.qty if intent.side is Side.BUY else -intent.qty
    return Order(intent.strategy, intent.symbol, signed, intent.reduce_only, limit=intent.price)


def _terminal(link_id: str, status: OrderStatus, filled: Decimal) -> OrderEvent:
    return OrderEvent(order_link_id=link_id, status=status, filled_qty=filled)


def _booked(link_id: str, order: Order, qty: Decimal) -> Execution:
    """A fill of `qty` (signed) of the order, as the account books it."""
    side = Side.BUY if qty > 0 else Side.SELL
    return make_execution(order_link_id=link_id, symbol=order.symbol, side=side, qty=abs(qty))


@dataclass(frozen=True)
class Approval:
    """One approval as the journal keeps it: whose, when, and whether it could open."""

    strategy: str
    at: datetime
    opening: bool


class GateMachine(RuleBasedStateMachine):
    """One bot: a gate over the model's books, driven by random signals and venue events."""

    #: the orderLinkIds of the approved orders not yet terminal
    approved = Bundle("approved")
    #: the orderLinkIds of the orders reported filled whose fill the books do not hold yet
    unbooked = Bundle("unbooked")

    def __init__(self) -> None:
        super().__init__()
        self.clock = [MIDNIGHT]
        self.books = {(strategy, symbol): ZERO for strategy in STRATEGIES for symbol in SYMBOLS}
        self.prices: dict[str, Decimal] = {}
        self.orders: dict[str, Order] = {}  # orderLinkId -> order in flight
        self.unbooked: dict[str, Order] = {}  # orderLinkId -> a fill reported, not booked
        self.approvals: list[Approval] = []  # in time order
        self.states: dict[str, ScopeState] = {}  # the journal's latest state of each scope
        self.signal_ids = itertools.count()

    # --- the model -----------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock[0]

    def position_of(self, strategy: str, symbol: str) -> Decimal:
        """The books, as the account projection gives them to the exposure ledger."""
        return self.books[(strategy, symbol)]

    def new_gate(self) -> RiskGate:
        return RiskGate(
            self.config,
            self.overrides,
            ExposureLedger(self.position_of, self.symbols_of),
            clock=self.now,
        )

    def symbols_of(self, strategy: str) -> list[str]:
        """Where the strategy's books hold a position."""
        return [symbol for (name, symbol), qty in self.books.items() if name == strategy and qty]

    def pending(self) -> list[Order]:
        """What may still reach the books: the orders in flight and the unbooked fills."""
        return [*self.orders.values(), *self.unbooked.values()]

    def held(self) -> list[str]:
        """The scopes HALTED or REDUCING."""
        return [s.scope for s in self.states.values() if s.state is not TradingState.ACTIVE]

    def effective_state(self, strategy: str) -> TradingState:
        """The stricter of the bot's state and the strategy's own."""
        states = (self.states.get(scope) for scope in (BOT_SCOPE, strategy))
        return max(
            (state.state for state in states if state is not None),
            key=_RANK.__getitem__,
            default=TradingState.ACTIVE,
        )

    def in_flight(self, strategy: str) -> int:
        """The strategy's orders not yet terminal, reduce-only ones included."""
        return sum(order.strategy == strategy for order in self.orders.values())

    def worst(self, strategy: str, symbol: str) -> Decimal:
        """The largest |position| the strategy could reach in `symbol` if every opening order
        of it in flight on one side filled in full, after the position closed if they are
        against it (its stop may fire first)."""
        lefts = [
            order.left
            for order in self.pending()
            if (order.strategy, order.symbol) == (strategy, symbol) and not order.reduce_only
        ]
        position = self.books[(strategy, symbol)]
        buys = sum((left for left in lefts if left > 0), ZERO)
        sells = sum((left for left in lefts if left < 0), ZERO)
        return max(max(position, ZERO) + buys, -(min(position, ZERO) + sells))

    def worst_notional(self, strategy: str, symbol: str, adding: Order | None = None) -> Decimal:
        """The largest notional the strategy's position in `symbol` could reach if every
        opening order of it in flight on one side (and `adding`) filled in full, after the
        position closed if they are against it: each side valued at the highest of the market
        price and the limits of its orders (a sell limit above the market fills only once the
        market has reached it)."""
        pending = [
            order
            for order in [*self.pending(), *([adding] if adding else [])]
            if (order.strategy, order.symbol) == (strategy, symbol)
            and not order.reduce_only
            and order.left
        ]
        position, price = self.books[(strategy, symbol)], self.prices[symbol]

        def valued(held: Decimal, orders: list[Order]) -> Decimal:
            at = max([price, *(order.limit for order in orders if order.limit is not None)])
            return abs(held + sum((order.left for order in orders), ZERO)) * at

        return max(
            valued(max(position, ZERO), [order for order in pending if order.left > 0]),
            valued(min(position, ZERO), [order for order in pending if order.left < 0]),
        )

    def exposure(self, strategy: str, adding: Order | None = None) -> Decimal:
        """The strategy's worst case over every symbol, with `adding` one more order in
        flight."""
        return sum((self.worst_notional(strategy, symbol, adding) for symbol in SYMBOLS), ZERO)

    def last_minute(self, strategy: str) -> list[Approval]:
        """The strategy's approvals in the rolling minute ending now (60 s old is out)."""
        now = self.now()
        return [a for a in self.approvals if a.strategy == strategy and now - a.at < MINUTE]

    def today(self, strategy: str) -> list[Approval]:
        """The strategy's approvals of the current UTC day."""
        start = utc_day_start(self.now())
        return [a for a in self.approvals if a.strategy == strategy and a.at >= start]

    def violations(self, intent: OrderIntent) -> set[str]:
        """Every rule `intent` breaks now by this model: the gate must reject it exactly when
        there is one, and name one of them."""
        limits, price = self.limits[intent.strategy], self.prices[intent.symbol]
        broken = set()
        resting = intent.price is not None and (
            intent.price >= price if intent.side is Side.SELL else intent.price <= price
        )
        if (
            intent.price is not None
            and not (intent.reduce_only and resting)  # a take profit may rest however far
            and abs(intent.price - price) * 100 > limits.limit_distance_pct * price
        ):
            broken.add("PRICE_SANITY")  # so may a close through the market not
        if intent.reduce_only:
            return broken  # otherwise closing is always possible
        state = self.effective_state(intent.strategy)
        if state is not TradingState.ACTIVE:
            broken.add(state.value)
        if intent.symbol in limits.denied:
            broken.add("SYMBOL_NOT_ALLOWED")
        if intent.side.value not in limits.sides:
            broken.add("SIDE_NOT_ALLOWED")
        if self.in_flight(intent.strategy) >= limits.open_orders:
            broken.add("MAX_OPEN_ORDERS")
        if len(self.last_minute(intent.strategy)) >= limits.per_minute:
            broken.add("MAX_ORDERS_PER_MINUTE")
        if len(self.today(intent.strategy)) >= limits.per_day:
            broken.add("MAX_ORDERS_PER_DAY")
        true_price = max(intent.price or price, price)
        if intent.qty * true_price > limits.order_notional:
            broken.add("MAX_ORDER_NOTIONAL")
        adding = _order(intent)
        if self.worst_notional(intent.strategy, intent.symbol, adding) > limits.position_notional:
            broken.add("MAX_POSITION_NOTIONAL")
        if self.exposure(intent.strategy, adding) > limits.strategy_exposure:
            broken.add("MAX_STRATEGY_EXPOSURE")
        total = sum(
            (
                self.exposure(name, adding if name == intent.strategy else None)
                for name in STRATEGIES
            ),
            ZERO,
        )
        if total > self.config.max_total_exposure_usdt:
            broken.add("MAX_TOTAL_EXPOSURE")
        return broken

    def check_approval(self, approved: ApprovedOrder) -> None:
        """The limits an approval is within, by the model's state just before it."""
        intent = approved.intent
        strategy, limits = intent.strategy, self.limits[intent.strategy]
        price = self.prices[intent.symbol]
        assert approved.order_link_id not in self.orders  # a new order, not a reused id
        # 6. The leverage is the signal's, capped at max_leverage.
        expected = None if intent.leverage is None else min(intent.leverage, limits.leverage)
        assert approved.leverage == expected
        if intent.reduce_only:
            return  # the limits below only ever hold back orders that may open a position
        # 5. Only an ACTIVE bot and strategy may open.
        assert self.effective_state(strategy) is TradingState.ACTIVE
        # 1. The order's notional at the true price: the worse of its limit and the market.
        true_price = max(intent.price or price, price)
        assert intent.qty * true_price <= limits.order_notional
        # 3. Fewer than max_open_orders of the strategy's orders were in flight.
        assert self.in_flight(strategy) < limits.open_orders
        # 4. Fewer approvals (every one counts) in the last minute, and today, than allowed.
        assert len(self.last_minute(strategy)) < limits.per_minute
        assert len(self.today(strategy)) < limits.per_day
        # 2. Worst cases, with every order in flight on one side filling, this one included,
        # each side at the worse of the market and its limits: in the symbol, over the
        # strategy's symbols, over all strategies.
        adding = _order(intent)
        assert self.worst_notional(strategy, intent.symbol, adding) <= limits.position_notional
        mine = self.exposure(strategy, adding)
        assert mine <= limits.strategy_exposure
        others = sum((self.exposure(name) for name in STRATEGIES if name != strategy), ZERO)
        assert mine + others <= self.config.max_total_exposure_usdt

    def decide(self, intent: OrderIntent) -> Verdict:
        """The gate's verdict at the model's prices, checked against the model; an approval
        joins the orders in flight and the approvals."""
        broken = self.violations(intent)
        verdict = self.gate.decide(
            intent, price=self.prices[intent.symbol], prices=dict(self.prices)
        )
        if isinstance(verdict, ApprovedOrder):
            assert not broken, f"approved although it breaks {broken}: {intent!r}"
            self.check_approval(verdict)
            self.orders[verdict.order_link_id] = _order(intent)
            self.approvals.append(Approval(intent.strategy, self.now(), not intent.reduce_only))
        else:
            assert not verdict.approved
            assert broken, f"rejected ({verdict.rule}: {verdict.reason}) within every limit"
            assert verdict.rule in broken, f"rejected by {verdict.rule}, but it breaks {broken}"
        return verdict

    def conformed(self, intent: OrderIntent) -> OrderIntent | None:
        """The intent on the instrument's grid, as the bot hands it to the gate; None if the
        venue would refuse it (too small)."""
        instrument = INSTRUMENTS[intent.symbol]
        result = conform(intent, instrument, self.prices[intent.symbol])
        if isinstance(result, str):
            return None
        # 7. Rounding never makes an order bigger, nor a limit price worse for the trader.
        assert result.qty <= intent.qty
        assert result.qty % instrument.qty_step == 0
        assert intent.qty - result.qty < instrument.qty_step
        if intent.price is not None:
            assert result.price is not None
            tick = instrument.tick_size
            if intent.side is Side.BUY:
                assert intent.price - tick < result.price <= intent.price
            else:
                assert intent.price <= result.price < intent.price + tick
        return result

    def fillable(self, order: Order, qty: Decimal) -> Decimal:
        """How much of `qty` (unsigned) of `order` the venue fills, signed: a reduce-only order
        fills at most the position it reduces, and never increases |position|."""
        sign = 1 if order.left > 0 else -1
        if not order.reduce_only:
            return sign * qty
        position = self.books[(order.strategy, order.symbol)]
        room = max(-sign * position, ZERO)  # a buy reduces a short, a sell a long
        filled = sign * min(qty, room)
        assert abs(position + filled) <= abs(position)
        return filled

    def enter(self, state: ScopeState) -> None:
        """A trading state entered and journaled (it survives a restart)."""
        self.states[state.scope] = state
        self.gate.set_state(state)

    def intent(self, strategy: str, symbol: str, **fields: object) -> OrderIntent:
        """An intent of a fresh signal, issued now."""
        return make_intent(
            strategy=strategy,
            signal_id=f"m{next(self.signal_ids)}",
            symbol=symbol,
            signal_ts=self.now(),
            **fields,
        )

    def qty(self, spec: IntentSpec) -> Decimal:
        """The quantity a spec asks for (before the lot size), at the market price."""
        strategy, symbol = spec.strategy, spec.symbol
        limits, price = self.limits[strategy], self.prices[symbol]
        if isinstance(spec.size, int):
            notional = limits.order_notional * spec.size / 100
            return (notional / price).quantize(Decimal("0.00001"), ROUND_DOWN)
        room = limits.order_notional / price
        if spec.size == "room":  # what every size limit leaves (exact for the position)
            sign = 1 if spec.side is Side.BUY else -1
            same_side = [
                order
                for order in self.pending()
                if (order.strategy, order.symbol) == (strategy, symbol)
                and not order.reduce_only
                and order.left * sign > 0
            ]
            reach = self.books[(strategy, symbol)] + sum((o.left for o in same_side), ZERO)
            valued_at = max(
                [price, self.limit_price(spec) or price, *(o.limit or price for o in same_side)]
            )
            total = sum((self.exposure(name) for name in STRATEGIES), ZERO)
            room = min(
                room,
                limits.position_notional / valued_at - sign * reach,
                (limits.strategy_exposure - self.exposure(strategy)) / price,
                (self.config.max_total_exposure_usdt - total) / price,
            )
        step = INSTRUMENTS[symbol].qty_step
        lots = (room / step).to_integral_value(ROUND_DOWN) + spec.extra_lots
        return max(Decimal(1), lots) * step

    def limit_price(self, spec: IntentSpec) -> Decimal | None:
        price = self.prices[spec.symbol]
        if spec.limit is None:
            return None
        if isinstance(spec.limit, str):  # exactly at the strategy's max_limit_distance_pct
            sign = 1 if spec.limit == "above" else -1
            return price * (100 + sign * self.limits[spec.strategy].limit_distance_pct) / 100
        return (price * (100 + spec.limit) / 100).quantize(Decimal("0.0001"))

    # --- rules ---------------------------------------------------------------------------

    @initialize(
        config=risk_configs(),
        overrides=st.tuples(strategy_overrides(), strategy_overrides()),
        start_s=st.integers(-600, 120),
        btc=st.integers(3000, 7000).map(lambda n: n * PRICE_GRID["BTCUSDT"]),
        eth=st.integers(1500, 4500).map(lambda n: n * PRICE_GRID["ETHUSDT"]),
    )
    def configure(
        self,
        config: RiskConfig,
        overrides: tuple[StrategyRiskConfig, StrategyRiskConfig],
        start_s: int,
        btc: Decimal,
        eth: Decimal,
    ) -> None:
        """The configuration of the whole run, its start time (around midnight UTC) and the
        first prices. The gate's effective limits are the stricter of global and own."""
        self.config = config
        self.overrides = dict(zip(STRATEGIES, overrides, strict=True))
        self.limits = {name: Limits.of(config, own) for name, own in self.overrides.items()}
        self.clock[0] = MIDNIGHT + timedelta(seconds=start_s)
        self.prices = {"BTCUSDT": btc, "ETHUSDT": eth}
        self.gate = self.new_gate()
        assert self.gate.limits() == config
        for name in STRATEGIES:
            effective = self.gate.limits(name)
            assert Limits.of(effective, StrategyRiskConfig()) == self.limits[name]

    @rule(
        target=approved,
        intents=st.lists(intent_specs(near_limits=False), min_size=1, max_size=4),
    )
    def signal(self, intents: list[IntentSpec]) -> MultipleResults[str]:
        """A burst of intents, each on a fresh signal issued now: sized at a % of the
        strategy's order limit at the market price, at the market or a limit near it,
        conformed to the instrument and decided at the current prices, one after the other."""
        return self.send(intents)

    @rule(target=approved, intents=st.lists(intent_specs(near_limits=True), min_size=1, max_size=3))
    def signal_near_limits(self, intents: list[IntentSpec]) -> MultipleResults[str]:
        """Like `signal`, with opening intents sized to a lot of the order limit or of the room
        the exposure limits leave, and limit prices exactly at the allowed distance: where an
        off-by-one or a wrong price in the gate would show."""
        return self.send(intents)

    def send(self, intents: list[IntentSpec]) -> MultipleResults[str]:
        """Each intent priced, sized, conformed and decided; the approved orders' ids."""
        approved = []
        for spec in intents:
            price = self.prices[spec.symbol]
            qty = self.qty(spec)
            limit = self.limit_price(spec)
            if qty <= 0:
                continue
            intent = self.intent(
                spec.strategy,
                spec.symbol,
                side=spec.side,
                qty=qty,
                order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
                price=limit,
                reference_price=limit or price,
                reduce_only=spec.reduce_only,
                leverage=spec.leverage,
            )
            conformed = self.conformed(intent)
            if conformed is None:
                continue
            verdict = self.decide(conformed)
            if isinstance(verdict, ApprovedOrder):
                approved.append(verdict.order_link_id)
        return multiple(*approved)

    @precondition(lambda self: any(self.books.values()))
    @rule(target=approved, data=st.data())
    def close(self, data: st.DataObject) -> str:
        """A strategy closes one of its positions in full: a reduce-only intent on the other
        side, at the market or a limit near it. Closing always passes the limits."""
        held = [key for key, position in self.books.items() if position]
        strategy, symbol = data.draw(st.sampled_from(held), label="position")
        position, price = self.books[(strategy, symbol)], self.prices[symbol]
        limit_pct = data.draw(st.none() | st.decimals(Decimal(-1), Decimal(1), places=2))
        limit = None
        if limit_pct is not None:
            limit = (price * (100 + limit_pct) / 100).quantize(Decimal("0.0001"))
        intent = self.intent(
            strategy,
            symbol,
            side=Side.SELL if position > 0 else Side.BUY,
            qty=abs(position),
            order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
            price=limit,
            reference_price=limit or price,
            reduce_only=True,
        )
        conformed = self.conformed(intent)
        assert conformed is not None and conformed.qty == abs(position)  # on the lot size
        verdict = self.decide(conformed)
        assert isinstance(verdict, ApprovedOrder)
        return verdict.order_link_id

    @rule(symbol=st.sampled_from(SYMBOLS), pct=st.decimals(Decimal(-8), Decimal(8), places=2))
    def move_price(self, symbol: str, pct: Decimal) -> None:
        """The market moves up to 8 %. Exposure already taken may exceed a limit now, which
        only holds back further openings."""
        self.prices[symbol] = on_grid(symbol, self.prices[symbol] * (100 + pct) / 100)

    @rule(link_id=consumes(approved))
    def fill(self, link_id: str) -> None:
        """An order fills in full (a reduce-only one at most to flat): its quantity moves into
        the book, then the venue reports the order terminal."""
        order = self.orders.pop(link_id)
        filled = self.fillable(order, abs(order.left))
        self.books[(order.strategy, order.symbol)] += filled
        if filled:
            self.gate.ledger.fill_booked(_booked(link_id, order, filled))
        total = order.filled + abs(filled)
        self.gate.ledger.follow(_terminal(link_id, OrderStatus.FILLED, total))

    @rule(target=unbooked, link_id=consumes(approved))
    def report_filled_first(self, link_id: str) -> str:
        """The venue reports an opening order Filled before its fill reaches the books (as
        Bybit pushes the order before the execution): until it does, it still counts."""
        order = self.orders[link_id]
        if order.reduce_only:
            self.fill(link_id)  # what it may fill depends on the books
            return link_id
        del self.orders[link_id]
        self.unbooked[link_id] = order
        total = order.filled + abs(order.left)
        self.gate.ledger.follow(_terminal(link_id, OrderStatus.FILLED, total))
        return link_id

    @rule(link_id=consumes(unbooked))
    def book_fill(self, link_id: str) -> None:
        """The fill of an order reported filled reaches the books."""
        order = self.unbooked.pop(link_id, None)
        if order is None:
            return  # a reduce-only order: booked as it was reported
        self.books[(order.strategy, order.symbol)] += order.left
        self.gate.ledger.fill_booked(_booked(link_id, order, order.left))

    @rule(link_id=approved, fraction=st.integers(1, 99))
    def partial_fill(self, link_id: str, fraction: int) -> None:
        """About `fraction` % of what is left of an order fills (whole lots, at least one lot
        left) and is booked; it stays in flight with the rest."""
        order = self.orders[link_id]
        step = INSTRUMENTS[order.symbol].qty_step
        lots = int(abs(order.left) / step)
        if lots < 2:
            return  # one lot cannot fill in part
        filled = self.fillable(order, max(1, min(lots - 1, lots * fraction // 100)) * step)
        if filled == 0:
            return  # a reduce-only order with nothing left to reduce: the venue fills none
        self.books[(order.strategy, order.symbol)] += filled
        self.gate.ledger.fill_booked(_booked(link_id, order, filled))
        order.left -= filled
        order.filled += abs(filled)

    @rule(link_id=approved, lots=st.integers(1, 60))
    def amend(self, link_id: str, lots: int) -> None:
        """Another client of the key amends an opening order in flight to `lots` lots more
        than has filled of it, up or down: from the venue's report on, its exposure counts
        the quantity the venue holds, not the one approved."""
        order = self.orders[link_id]
        if order.reduce_only:
            return  # the venue may trim one: it adds no exposure either way
        unfilled = lots * INSTRUMENTS[order.symbol].qty_step
        status = OrderStatus.PARTIALLY_FILLED if order.filled else OrderStatus.NEW
        self.gate.ledger.follow(
            OrderEvent(
                order_link_id=link_id,
                status=status,
                filled_qty=order.filled,
                venue_qty=order.filled + unfilled,
            )
        )
        order.left = unfilled if order.left > 0 else -unfilled

    @rule(link_id=consumes(approved))
    def cancel(self, link_id: str) -> None:
        """An order is cancelled (or expires) before any more of it fills: terminal."""
        order = self.orders.pop(link_id)
        self.gate.ledger.follow(_terminal(link_id, OrderStatus.CANCELLED, order.filled))

    @precondition(lambda self: bool(self.approvals or self.states))
    @rule(downtime_s=st.integers(0, 90))
    def restart(self, downtime_s: int) -> None:
        """The bot restarts after `downtime_s`: a new gate and exposure ledger over the same
        books and clock, every unfinished order reserved again less what the books hold of it, the
        approvals the count rules look back at counted again in time order, and every
        journaled trading state re-applied. Those approvals are today's and the last
        minute's, which just after midnight reach into yesterday."""
        self.clock[0] += timedelta(seconds=downtime_s)
        for order in self.unbooked.values():  # start-up books the fills it finds first
            self.books[(order.strategy, order.symbol)] += order.left
        self.unbooked.clear()
        gate = self.new_gate()
        for link_id, order in self.orders.items():
            whole = order.filled + abs(order.left)
            reservation = Reservation(
                order.strategy,
                order.symbol,
                whole if order.left > 0 else -whole,
                order.reduce_only,
                booked=order.filled,
                limit=order.limit,
            )
            gate.ledger.reserve(link_id, reservation)
        since = counting_since(self.now())
        for approval in self.approvals:
            if approval.at >= since:
                gate.counts.count(approval.strategy, approval.at)
        for state in self.states.values():
            gate.set_state(state)
        self.gate = gate

    @rule(seconds=st.integers(1, 150) | st.just(60))
    def advance_clock(self, seconds: int) -> None:
        """Time passes (often exactly a minute): the rolling minute moves on, and a UTC day
        may begin."""
        self.clock[0] += timedelta(seconds=seconds)

    @precondition(lambda self: len(self.held()) < 2)
    @rule(
        scope=st.sampled_from(SCOPES),
        state=st.sampled_from([TradingState.HALTED, TradingState.REDUCING]),
    )
    def halt(self, scope: str, state: TradingState) -> None:
        """`bot halt` / `bot reduce` of the bot or one strategy. It takes effect for the very
        next intent: an opening intent of every strategy it covers, sent at once, is refused
        by the state it is in now."""
        self.enter(ScopeState(scope, state, f"operator: {state.value}", self.now()))
        for strategy in STRATEGIES if scope == BOT_SCOPE else (scope,):
            probe = self.intent(strategy, "BTCUSDT", qty=INSTRUMENTS["BTCUSDT"].min_order_qty)
            verdict = self.decide(probe)
            assert verdict.rule == self.effective_state(strategy).value

    @precondition(lambda self: bool(self.held()))
    @rule()
    def resume(self) -> None:
        """`bot resume` of the scope held back last: ACTIVE again (though the bot's state may
        still hold a strategy back, or a strategy's own)."""
        scope = max(self.held(), key=lambda scope: self.states[scope].since)
        self.enter(ScopeState(scope, TradingState.ACTIVE, "bot resume", self.now()))

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def ledger_holds_the_orders_in_flight(self) -> None:
        """The gate's ledger counts exactly the model's orders in flight, by what is left."""
        for strategy in STRATEGIES:
            assert self.gate.ledger.open_orders(strategy) == self.in_flight(strategy)
            for symbol in SYMBOLS:
                expected = self.worst(strategy, symbol)
                assert self.gate.ledger.worst_position(strategy, symbol) == expected

    @invariant()
    def exposure_is_valued_as_the_model_values_it(self) -> None:
        """Each strategy's exposure at the market prices, every side of a symbol at the
        highest of the market and the limits of that side's orders in flight."""
        if not self.prices:
            return  # not configured yet
        for strategy in STRATEGIES:
            exposure = self.gate.ledger.strategy_exposure(strategy, self.prices)
            assert exposure == self.exposure(strategy)

    @invariant()
    def counts_are_the_approvals(self) -> None:
        """The gate's counts are the approvals of the last minute and of today."""
        for strategy in STRATEGIES:
            counts = self.gate.counts
            assert counts.last_minute(strategy, self.now()) == len(self.last_minute(strategy))
            assert counts.today(strategy, self.now()) == len(self.today(strategy))

    @invariant()
    def opening_rates_stay_within_limits(self) -> None:
        """4. No strategy opened more orders in the last minute, or today, than allowed."""
        for strategy in STRATEGIES:
            limits = self.limits[strategy]
            assert sum(a.opening for a in self.last_minute(strategy)) <= limits.per_minute
            assert sum(a.opening for a in self.today(strategy)) <= limits.per_day

    @invariant()
    def states_are_the_journaled_ones(self) -> None:
        """Every scope is in the state last entered for it (ACTIVE if none)."""
        for scope in SCOPES:
            entered = self.states.get(scope)
            expected = TradingState.ACTIVE if entered is None else entered.state
            assert self.gate.state_of(scope).state is expected


# ~3 s. Hypothesis switches some rules off in many examples (swarm testing): 100 examples
# find an off-by-one at a limit reliably.
GateMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestGateMachine = GateMachine.TestCase
