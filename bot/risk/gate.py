"""The risk gate: every intent is checked against every rule; a denial is a value with a reason.

Rules, in order (the first that fails decides), each limit the stricter of `[risk]` and the
strategy's own `[strategies.<name>.risk]`:
  HALTED / REDUCING        the bot or the strategy is not ACTIVE: only reduce-only intents pass;
                           a loss today (realized plus fees) of `max_daily_loss_usdt` puts the
                           strategy (or, over all strategies, the bot) in REDUCING until the
                           next UTC day or `bot resume`
  SYMBOL_NOT_ALLOWED       an opening order on a symbol not in `symbols`, or in
                           `denied_symbols`
  STALE_SIGNAL             an opening order whose signal's `ts` (for a fill's hook, the
                           fill's) is older than `max_signal_age_s`, or in the future; an
                           intent that only reduces is exempt: it adds no exposure, and a
                           target or close left unsent leaves a position unmanaged
  SIDE_NOT_ALLOWED         an opening order on a side not in `sides` (e.g. a long-only strategy)
  COOLDOWN                 an opening order within `cooldown_after_loss_s` of a losing close
  STALE_PRICE              a market order while the venue's price is older than
                           `max_price_age_s`
  PRICE_SANITY             a limit price further than `max_limit_distance_pct` from the market,
                           except a reduce-only limit on the far side of it (a take profit: it
                           rests until the price comes, and adds no exposure)
  STOP_LOSS                no stop when `require_stop_loss`; a stop on the wrong side of the
                           entry; a stop further than `max_stop_distance_pct` from it
  MAX_OPEN_ORDERS          the strategy has `max_open_orders` orders not yet terminal
  MAX_ORDERS_PER_MINUTE    the strategy had `max_orders_per_minute` approvals in the last minute
  MAX_ORDERS_PER_DAY       ... or `max_orders_per_day` today (UTC)
  MAX_ORDER_NOTIONAL       qty x the true price exceeds `max_order_notional_usdt`
  MAX_POSITION_NOTIONAL    the strategy's worst-case position in the symbol after this order
                           (with its orders in flight) exceeds `max_position_notional_usdt`
  MARKET_DATA              a symbol where some strategy holds exposure has no current price
                           among `prices`: exposure is never valued at zero
  MAX_STRATEGY_EXPOSURE    the strategy's worst case over all symbols exceeds its limit
  MAX_TOTAL_EXPOSURE       every strategy's worst case together exceeds `max_total_exposure_usdt`

The true price of an order is the worse (higher) of its limit price and the venue's current
price: a strategy-supplied price is never trusted for a limit. So is every order in flight
valued: each side of a symbol's worst case at the highest of the market and that side's
limits (`ExposureLedger.worst_notional`). Reduce-only intents pass the
size, count and exposure rules: closing must always be possible. A signal's leverage is not a
rejection: the approval carries it capped at `max_leverage`.

An approval is an `ApprovedOrder`, the only thing the executor sends, and only this module
can make one. `screen(signal)` applies the signal-level rules (symbol, staleness) before any
strategy runs, so a signal that can never pass costs no venue round trip for market data. The
gate reads the intent, the prices it is given, the clock, the books and the exposure ledger;
never the venue.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import InitVar, dataclass
from datetime import date, datetime
from decimal import ROUND_DOWN, Decimal
from typing import ClassVar, Final

from bot.execution.ids import order_link_id
from bot.messages import (
    Execution,
    OrderIntent,
    OrderType,
    RiskDecision,
    Side,
    Signal,
    SignalAction,
    StopMove,
    utc_now,
)
from bot.risk.config import RiskConfig, StrategyRiskConfig
from bot.risk.counts import OrderCounts
from bot.risk.exposure import ExposureLedger, Reservation
from bot.risk.states import BOT_SCOPE, ScopeState, TradingState, stricter

__all__ = ["STOP_SIDE", "ApprovedOrder", "RiskGate", "Verdict", "stop_move_problem"]

#: The reason of the ACTIVE state a rule's REDUCING gives way to at the next UTC day.
_DAY_LIFT: Final = "a new UTC day"

Rejection = tuple[str, str] | None
#: The rule of a stop move the price has already crossed (it would close the position).
STOP_SIDE: Final = "STOP_SIDE"
_SEAL: Final = object()
_LEVERAGE_STEP: Final = Decimal("0.01")


@dataclass(frozen=True)
class ApprovedOrder:
    """The gate's approval of one intent: the only input the executor sends orders from.

    Only `RiskGate.decide` can make one: any other construction (or `dataclasses.replace`)
    raises `TypeError`.
    """

    decision: RiskDecision
    order_link_id: str
    #: the leverage to trade at: the signal's, within [1, max_leverage] on Bybit's 0.01 grid;
    #: None: no wish (the venue's is then only lowered, to `max_leverage`, if higher)
    leverage: Decimal | None
    max_leverage: Decimal
    #: when the gate approved (and counted) it
    approved_at: datetime
    _seal: InitVar[object] = None  # not a field: `dataclasses.replace` cannot carry it
    #: read like a `RiskDecision`: `approved`, `rule`, `reason`
    approved: ClassVar[bool] = True
    rule: ClassVar[None] = None

    def __post_init__(self, _seal: object) -> None:
        if _seal is not _SEAL:
            raise TypeError("only the risk gate approves an order (RiskGate.decide)")

    @property
    def intent(self) -> OrderIntent:
        return self.decision.intent

    @property
    def reason(self) -> str:
        return self.decision.reason


#: What the gate answers: an approval, or a rejection (a `RiskDecision` that is not approved).
Verdict = ApprovedOrder | RiskDecision


class RiskGate:
    """Approves or rejects order intents against the configured limits."""

    def __init__(
        self,
        config: RiskConfig,
        strategies: Mapping[str, StrategyRiskConfig] | None = None,
        ledger: ExposureLedger | None = None,
        clock: Callable[[], datetime] = utc_now,
        *,
        pnl_today: Callable[[str | None], Decimal] = lambda strategy: Decimal(0),
        last_loss_at: Callable[[str], datetime | None] = lambda strategy: None,
        state_entered: Callable[[ScopeState], None] = lambda state: None,
    ) -> None:
        """`pnl_today(strategy)` (None: every strategy) and `last_loss_at(strategy)` (the
        time of its latest losing close) read the books; `state_entered` hears of every state
        a rule enters, to journal it."""
        self._config = config
        self._configs = {
            name: config.tightened(override) for name, override in (strategies or {}).items()
        }
        self._strategies = tuple(self._configs)
        self._ledger = ledger or ExposureLedger(lambda strategy, symbol: Decimal(0))
        self._clock = clock
        self._states: dict[str, ScopeState] = {}
        self._since = clock()
        self._pnl_today = pnl_today
        self._last_loss_at = last_loss_at
        self._state_entered = state_entered
        self._loss_waived: dict[str, date] = {}  # scope -> the UTC day a person resumed it
        self.counts = OrderCounts()

    @property
    def ledger(self) -> ExposureLedger:
        return self._ledger

    def exposure_symbols(self, strategy: str) -> set[str]:
        """Every symbol where `strategy` or another holds exposure: what `decide` needs the
        prices of for an intent of `strategy`."""
        names = {strategy, *self._strategies}
        return {symbol for name in names for symbol in self._ledger.exposure_symbols(name)}

    def limits(self, strategy: str | None = None) -> RiskConfig:
        """The limits a strategy's intents are judged by (None: the global ones)."""
        return self._config if strategy is None else self._configs.get(strategy, self._config)

    def opening_leverage_cap(self, strategies: Iterable[str], symbol: str) -> Decimal | None:
        """The highest max_leverage at which one of `strategies` may open `symbol` (the
        leverage an order of theirs may set there); None if none of them may open it."""
        caps = [
            config.max_leverage
            for config in map(self.limits, strategies)
            if _symbol(config, symbol, closing=False) is None
        ]
        return max(caps, default=None)

    def decide(
        self,
        intent: OrderIntent,
        *,
        price: Decimal,
        prices: Mapping[str, Decimal],
        price_age_s: float = 0.0,
    ) -> Verdict:
        """The verdict on `intent`, with `price` the venue's current price of its symbol
        (`price_age_s` old) and `prices` the current price of every symbol where a strategy
        holds exposure (`exposure_symbols`), for the exposure limits.

        An approval is reserved in the exposure ledger under its orderLinkId and counted in
        the same step, so the very next intent counts it in flight.
        """
        config = self.limits(intent.strategy)
        now = self._clock()
        rejection = (
            self._trading_state(intent)
            or _symbol(config, intent.symbol, intent.reduce_only)
            or (None if intent.reduce_only else self._staleness(config, intent.signal_ts))
            or _side(config, intent)
            or self._cooldown(config, intent, now)
            or _price_sanity(config, intent, price, price_age_s)
            or _stop_loss(config, intent, price)
            or self._counts(config, intent, now)
            or self._size(config, intent, price, {**prices, intent.symbol: price})
        )
        if rejection is not None:
            rule, reason = rejection
            return RiskDecision(intent=intent, approved=False, rule=rule, reason=reason)
        link_id = order_link_id(intent.strategy, intent.signal_source, intent.signal_id, intent.leg)
        self._ledger.reserve(link_id, _reservation(intent))
        self.counts.count(intent.strategy, now)
        reason = "within all limits"
        leverage = _leverage(intent.leverage, config.max_leverage)
        if leverage is not None and leverage != intent.leverage:
            reason += f"; leverage {intent.leverage} set to {leverage} (max_leverage = "
            reason += f"{config.max_leverage}, Bybit's step 0.01)"
        decision = RiskDecision(intent=intent, approved=True, reason=reason)
        return ApprovedOrder(decision, link_id, leverage, config.max_leverage, now, _SEAL)

    def withdraw(self, approvals: Iterable[ApprovedOrder]) -> None:
        """Take back approvals that came to nothing (the journal could not write them, so
        none was sent): what they reserved and counted would otherwise hold the strategy's
        limits until a restart, one more each time its signal runs again."""
        for approval in approvals:
            self._ledger.release(approval.order_link_id)
            self.counts.uncount(approval.intent.strategy, approval.approved_at)

    def set_state(self, state: ScopeState) -> None:
        """Enter a trading state; effective for the very next intent.

        A person's resume while the scope's loss today is at its limit waives the daily loss
        rule for that scope until the UTC day ends. Re-applied from the journal after a
        restart, a resume waives it only if the scope has closed nothing at a loss since the
        resume: else the limit may have been reached after it (its REDUCING lost in a crash
        or to a journal that could not write), and the rule enters REDUCING again.
        """
        self._states[state.scope] = state
        # Journals of earlier versions hold the day's lift as a person's resume: it is not one.
        if state.state is TradingState.ACTIVE and not state.automatic and state.reason != _DAY_LIFT:
            limit, pnl = self._daily_loss(state.scope)
            if -pnl >= limit and not self._lost_since(state.scope, state.since):
                self._loss_waived[state.scope] = state.since.date()

    def _lost_since(self, scope: str, since: datetime) -> bool:
        """Whether the scope (the bot: any strategy) closed at a loss after `since`."""
        names = self._strategies if scope == BOT_SCOPE else (scope,)
        return any((at := self._last_loss_at(name)) is not None and at > since for name in names)

    def state_of(self, scope: str) -> ScopeState:
        """A scope's own state (ACTIVE unless set)."""
        return self._states.get(scope) or ScopeState(scope, TradingState.ACTIVE, "", self._since)

    def entered_state(self, scope: str) -> ScopeState | None:
        """The state last entered for `scope`, as it stands (no rule applied now); None if
        none ever was (ACTIVE)."""
        return self._states.get(scope)

    def state_now(self, scope: str) -> ScopeState | None:
        """A scope's own state as of now, the rules applied (`_apply_rules`); None if no
        state was ever entered (ACTIVE): what `bot risk status` shows."""
        self._apply_rules(None if scope == BOT_SCOPE else scope)
        return self._states.get(scope)

    def _trading_state(self, intent: OrderIntent) -> Rejection:
        if intent.reduce_only:
            return None
        effective = self._current(intent.strategy)
        if effective.state.may_increase:
            return None
        # A rule's state ends with the day, a person's only with a resume: while either holds
        # the scope (the bot's and the strategy's own), the later end is the one to say.
        holding = (self.state_of(BOT_SCOPE), self.state_of(intent.strategy))
        by_rules = all(state.automatic for state in holding if not state.state.may_increase)
        until = "the next UTC day or `bot resume`" if by_rules else "`bot resume`"
        return (
            effective.state.value,
            f"{self._why(effective)}; only reduce-only orders pass until {until}",
        )

    def block_reason(self, strategy: str) -> str | None:
        """Why `strategy` may not increase exposure right now (its state or the bot's), or
        None: the executor asks before each send of an opening order, so a loss booked after
        the order's approval (its retry waiting out a rate limit, say) stops it too."""
        effective = self._current(strategy)
        return None if effective.state.may_increase else self._why(effective)

    def fill_applied(self, fill: Execution, strategies: Collection[str]) -> None:
        """A fill is in the books (an account listener), allocated to `strategies`: a loss it
        booked puts them, or the bot, in REDUCING now, announced and journaled, not only
        when the next signal comes."""
        named: list[str | None] = [name for name in self._strategies if name in strategies]
        for strategy in named or [None]:  # each with the bot's
            self._apply_rules(strategy)

    def _current(self, strategy: str) -> ScopeState:
        """`strategy`'s effective state as of now (`_apply_rules` first)."""
        self._apply_rules(strategy)
        return self._effective(strategy)

    def _apply_rules(self, strategy: str | None) -> None:
        """The rules' states brought up to now, for `strategy` (if any) and the bot: one of an
        earlier UTC day lifted, a loss today at its limit entered."""
        for scope in (BOT_SCOPE,) if strategy is None else (BOT_SCOPE, strategy):
            self._lift_expired(scope)
        self._check_daily_loss(strategy)

    def _effective(self, strategy: str) -> ScopeState:
        return stricter(self.state_of(BOT_SCOPE), self.state_of(strategy))

    @staticmethod
    def _why(state: ScopeState) -> str:
        who = "the bot" if state.scope == BOT_SCOPE else f"strategy {state.scope}"
        return f"{who} is {state.state.value} ({state.reason})"

    def _lift_expired(self, scope: str) -> None:
        """A state a rule entered ends with its UTC day. The lift is the rule's own
        (`automatic`), never a person's resume, which would waive today's loss limit."""
        state = self._states.get(scope)
        if (
            state is not None
            and state.automatic
            and state.state is not TradingState.ACTIVE
            and state.since.date() < self._clock().date()
        ):
            lifted = ScopeState(
                scope, TradingState.ACTIVE, _DAY_LIFT, self._clock(), automatic=True
            )
            self._enter(lifted)

    def _check_daily_loss(self, strategy: str | None) -> None:
        """Enter REDUCING for a scope whose loss today reached its limit (unless a person
        resumed it today): `strategy`'s (if any) and the bot's."""
        today = self._clock().date()
        for scope in (BOT_SCOPE,) if strategy is None else (strategy, BOT_SCOPE):
            if self._loss_waived.get(scope) == today:
                continue
            limit, pnl = self._daily_loss(scope)
            if -pnl >= limit and self.state_of(scope).state is TradingState.ACTIVE:
                reason = f"loss today {-pnl:.2f} USDT reached max_daily_loss_usdt = {limit}"
                self._enter(ScopeState(scope, TradingState.REDUCING, reason, self._clock(), True))

    def _daily_loss(self, scope: str) -> tuple[Decimal, Decimal]:
        """The scope's daily loss limit and its PnL today (the bot's: every strategy's)."""
        if scope == BOT_SCOPE:
            return self._config.max_daily_loss_usdt, self._pnl_today(None)
        return self.limits(scope).max_daily_loss_usdt, self._pnl_today(scope)

    def _enter(self, state: ScopeState) -> None:
        self.set_state(state)
        self._state_entered(state)

    def screen(self, signal: Signal) -> Rejection:
        """(rule, reason) if no intent from `signal` could pass, else None."""
        # A close of a symbol no longer allowed passes only where there is something to close:
        # arbitrary symbols must not cost a venue round trip each.
        closing = signal.action is SignalAction.CLOSE and any(
            self._ledger.worst_position(name, signal.symbol) for name in self._strategies
        )
        return _symbol(self._config, signal.symbol, closing) or self._staleness(
            self._config, signal.ts
        )

    def stale_reason(self, signal_ts: datetime) -> str | None:
        """Why a signal issued at `signal_ts` is too old (or too far ahead) to act on now."""
        rejection = self._staleness(self._config, signal_ts)
        return None if rejection is None else rejection[1]

    def _staleness(self, config: RiskConfig, signal_ts: datetime) -> Rejection:
        age_s = (self._clock() - signal_ts).total_seconds()
        if age_s > config.max_signal_age_s:
            return (
                "STALE_SIGNAL",
                f"signal is {age_s:.1f} s old (max_signal_age_s = {config.max_signal_age_s:g})",
            )
        if -age_s > config.max_signal_future_s:
            return (
                "STALE_SIGNAL",
                f"signal ts is {-age_s:.1f} s in the future (risk.max_signal_future_s = "
                f"{config.max_signal_future_s:g}); check the sender's clock",
            )
        return None

    def _cooldown(self, config: RiskConfig, intent: OrderIntent, now: datetime) -> Rejection:
        if intent.reduce_only or not config.cooldown_after_loss_s:
            return None
        loss_at = self._last_loss_at(intent.strategy)
        if loss_at is None:
            return None
        since_s = (now - loss_at).total_seconds()
        if since_s >= config.cooldown_after_loss_s:
            return None
        return (
            "COOLDOWN",
            f"{intent.strategy} closed at a loss {since_s:.0f} s ago "
            f"(cooldown_after_loss_s = {config.cooldown_after_loss_s:g})",
        )

    def _counts(self, config: RiskConfig, intent: OrderIntent, now: datetime) -> Rejection:
        if intent.reduce_only:
            return None
        strategy = intent.strategy
        for rule, count, limit_name, what in (
            ("MAX_OPEN_ORDERS", self._ledger.open_orders(strategy), "max_open_orders", "open"),
            (
                "MAX_ORDERS_PER_MINUTE",
                self.counts.last_minute(strategy, now),
                "max_orders_per_minute",
                "in the last minute",
            ),
            (
                "MAX_ORDERS_PER_DAY",
                self.counts.today(strategy, now),
                "max_orders_per_day",
                "today (UTC)",
            ),
        ):
            limit = getattr(config, limit_name)
            if count >= limit:
                return rule, f"{strategy} has {count} orders {what} ({limit_name} = {limit})"
        return None

    def _size(
        self,
        config: RiskConfig,
        intent: OrderIntent,
        price: Decimal,
        prices: Mapping[str, Decimal],
    ) -> Rejection:
        if intent.reduce_only:
            return None
        true_price = max(intent.price or price, price)
        notional = intent.qty * true_price
        if notional > config.max_order_notional_usdt:
            return (
                "MAX_ORDER_NOTIONAL",
                f"notional {notional:.2f} USDT (at {true_price}) exceeds "
                f"max_order_notional_usdt = {config.max_order_notional_usdt}",
            )
        ledger, strategy, adding = self._ledger, intent.strategy, _reservation(intent)
        position = ledger.worst_notional(strategy, intent.symbol, price, adding)
        if position > config.max_position_notional_usdt:
            return (
                "MAX_POSITION_NOTIONAL",
                f"{strategy}'s {intent.symbol} position could reach {position:.2f} USDT with its "
                f"orders in flight (max_position_notional_usdt = "
                f"{config.max_position_notional_usdt})",
            )
        mine = ledger.exposure_at(strategy, prices, adding)
        others = [ledger.exposure_at(name, prices) for name in self._strategies if name != strategy]
        unpriced = sorted({s for exposure in (mine, *others) for s in exposure.unpriced})
        if unpriced:  # never valued at zero: the limits could not be checked
            return (
                "MARKET_DATA",
                f"no current price of {', '.join(unpriced)}, where exposure is held: the "
                "exposure limits cannot be checked; the next signal tries again",
            )
        if mine.notional > config.max_strategy_exposure_usdt:
            return (
                "MAX_STRATEGY_EXPOSURE",
                f"{strategy}'s exposure could reach {mine.notional:.2f} USDT with its orders in "
                f"flight (max_strategy_exposure_usdt = {config.max_strategy_exposure_usdt})",
            )
        total = mine.notional + sum((exposure.notional for exposure in others), Decimal(0))
        if total > self._config.max_total_exposure_usdt:
            return (
                "MAX_TOTAL_EXPOSURE",
                f"total exposure could reach {total:.2f} USDT with orders in flight "
                f"(max_total_exposure_usdt = {self._config.max_total_exposure_usdt})",
            )
        return None


def _reservation(intent: OrderIntent) -> Reservation:
    """What `intent` holds in the exposure ledger once approved."""
    signed = intent.qty if intent.side is Side.BUY else -intent.qty
    return Reservation(
        intent.strategy, intent.symbol, signed, intent.reduce_only, limit=intent.price
    )


def stop_move_problem(move: StopMove, position_qty: Decimal, price: Decimal) -> Rejection:
    """Why a strategy may not move its position's stop loss to `move.stop_loss`, or None.

    A stop only ever protects: the strategy must hold a position in the symbol, and the stop
    must sit on its losing side of the price (below it for a long, above for a short), or it
    would close the position at once. Moving a stop needs no other rule: it never adds
    exposure, so it passes in every trading state.
    """
    if position_qty == 0:
        return (
            "NO_POSITION",
            f"strategy {move.strategy} holds no {move.symbol} position whose stop could move",
        )
    long = position_qty > 0
    if (move.stop_loss >= price) if long else (move.stop_loss <= price):
        where = "below" if long else "above"
        side = "long" if long else "short"
        return (
            STOP_SIDE,
            f"a {side}'s stop loss must be {where} the price {price}, not {move.stop_loss}",
        )
    return None


def _leverage(wanted: Decimal | None, cap: Decimal) -> Decimal | None:
    """A wanted leverage within [1, cap], rounded down to Bybit's 0.01 step."""
    if wanted is None:
        return None
    return min(max(wanted, Decimal(1)), cap).quantize(_LEVERAGE_STEP, rounding=ROUND_DOWN)


def _symbol(config: RiskConfig, symbol: str, closing: bool) -> Rejection:
    """Opening needs an allowed symbol; closing is always possible (a symbol denied after a
    position was opened must still be closable)."""
    if closing or (symbol in config.symbols and symbol not in config.denied_symbols):
        return None
    where = "denied_symbols" if symbol in config.denied_symbols else "the allowed symbols"
    return "SYMBOL_NOT_ALLOWED", f"{symbol} is not tradable here ({where})"


def _side(config: RiskConfig, intent: OrderIntent) -> Rejection:
    if intent.reduce_only or intent.side.value in config.sides:
        return None
    return (
        "SIDE_NOT_ALLOWED",
        f"{intent.side.value} may not open a position (allowed sides: {', '.join(config.sides)})",
    )


def _price_sanity(
    config: RiskConfig, intent: OrderIntent, price: Decimal, price_age_s: float
) -> Rejection:
    if intent.order_type is OrderType.MARKET:
        if intent.reduce_only or price_age_s <= config.max_price_age_s:
            return None
        return (
            "STALE_PRICE",
            f"the {intent.symbol} price is {price_age_s:.1f} s old (max_price_age_s = "
            f"{config.max_price_age_s:g}); a market order needs a current price",
        )
    if intent.price is None:
        return None
    resting = intent.price >= price if intent.side is Side.SELL else intent.price <= price
    if intent.reduce_only and resting:
        return None  # a target, however far: a close through the market is still checked
    distance_pct = abs(intent.price - price) / price * 100
    if distance_pct <= config.max_limit_distance_pct:
        return None
    return (
        "PRICE_SANITY",
        f"limit {intent.price} is {distance_pct:.1f} % from the market {price} "
        f"(max_limit_distance_pct = {config.max_limit_distance_pct})",
    )


def _stop_loss(config: RiskConfig, intent: OrderIntent, price: Decimal) -> Rejection:
    if intent.reduce_only:
        return None
    stop = intent.stop_loss
    if stop is None:
        if config.require_stop_loss:
            return "STOP_LOSS", "this strategy must send a stop loss with every opening order"
        return None
    entry = intent.price or price
    buy = intent.side is Side.BUY
    if (stop >= entry) if buy else (stop <= entry):
        where = "below" if buy else "above"
        return "STOP_LOSS", f"stop {stop} must be {where} the entry {entry} of a {intent.side}"
    distance_pct = abs(entry - stop) / entry * 100
    if distance_pct > config.max_stop_distance_pct:
        return (
            "STOP_LOSS",
            f"stop {stop} is {distance_pct:.1f} % from the entry {entry} "
            f"(max_stop_distance_pct = {config.max_stop_distance_pct})",
        )
    return None
