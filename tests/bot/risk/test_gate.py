"""The risk gate: approves only intents within every limit, on true prices and counting
orders in flight, and says why otherwise."""

from __future__ import annotations

import dataclasses
import itertools
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.account import AccountProjection
from bot.journal import Journal
from bot.messages import OrderIntent, OrderType, Side, Signal, SignalAction, parse_signal
from bot.risk.config import RiskConfig, StrategyRiskConfig
from bot.risk.counts import OrderCounts, counting_since
from bot.risk.exposure import ExposureLedger
from bot.risk.gate import ApprovedOrder, RiskGate, Verdict
from bot.risk.states import BOT_SCOPE, ScopeState, TradingState
from bot.risk.usage import restored_ledger
from tests.factories import make_execution, make_intent

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
_ids = itertools.count()
MARKET = Decimal(50000)
CONFIG = RiskConfig(
    symbols=("BTCUSDT", "ETHUSDT"),
    max_order_notional_usdt=Decimal(1000),
    max_position_notional_usdt=Decimal(2000),
    max_strategy_exposure_usdt=Decimal(3000),
    max_total_exposure_usdt=Decimal(5000),
    max_signal_age_s=60,
    max_signal_future_s=5,
)


def intent(
    *,
    symbol: str = "BTCUSDT",
    side: Side = Side.BUY,
    qty: Decimal = Decimal("0.01"),
    limit: Decimal | None = None,
    claimed_price: Decimal = MARKET,
    age_s: float = 1,
    reduce_only: bool = False,
    strategy: str = "follow",
) -> OrderIntent:
    """An intent of a signal of its own (each one a separate order)."""
    return make_intent(
        signal_id=f"g{next(_ids)}",
        symbol=symbol,
        side=side,
        qty=qty,
        order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
        price=limit,
        reference_price=claimed_price,
        reduce_only=reduce_only,
        signal_ts=NOW - timedelta(seconds=age_s),
        strategy=strategy,
    )


def new_gate(
    positions: dict[tuple[str, str], Decimal] | None = None,
    strategies: dict[str, StrategyRiskConfig] | None = None,
    config: RiskConfig = CONFIG,
) -> RiskGate:
    held = positions or {}
    ledger = ExposureLedger(
        lambda strategy, symbol: held.get((strategy, symbol), Decimal(0)),
        lambda strategy: [
            symbol for (name, symbol), qty in held.items() if name == strategy and qty
        ],
    )
    return RiskGate(config, strategies or {"follow": StrategyRiskConfig()}, ledger, lambda: NOW)


def decide(gate: RiskGate, item: OrderIntent, price: Decimal | None = None) -> Verdict:
    """The gate's verdict at BTC `price` (default 50,000) and ETH 3,000."""
    prices = {"BTCUSDT": price or MARKET, "ETHUSDT": Decimal(3000)}
    return gate.decide(item, price=prices.get(item.symbol, Decimal(1)), prices=prices)


def test_intent_within_limits_is_approved() -> None:
    decision = decide(new_gate(), intent())

    assert decision.approved
    assert decision.rule is None


def test_symbol_outside_allowlist_or_denied_is_rejected_with_reason() -> None:
    denied = RiskGate(CONFIG.model_copy(update={"denied_symbols": ("ETHUSDT",)}))

    assert decide(new_gate(), intent(symbol="DOGEUSDT")).rule == "SYMBOL_NOT_ALLOWED"
    refused = decide(denied, intent(symbol="ETHUSDT"))
    assert (refused.rule, "denied_symbols" in refused.reason) == ("SYMBOL_NOT_ALLOWED", True)


def test_stale_and_future_signals_are_rejected() -> None:
    stale = decide(new_gate(), intent(age_s=61))
    future = decide(new_gate(), intent(age_s=-6))

    assert (stale.rule, future.rule) == ("STALE_SIGNAL", "STALE_SIGNAL")
    assert "61.0 s old" in stale.reason
    assert "future" in future.reason


def test_an_intent_that_only_reduces_is_never_stale() -> None:
    # A target or close of a position held is wanted however old its signal (a hook run
    # again after a restart): it adds no exposure.
    closing = decide(new_gate(), intent(age_s=3600, side=Side.SELL, reduce_only=True))

    assert closing.approved, closing.reason


def test_notional_over_limit_is_rejected_but_reduce_only_may_close() -> None:
    gate = new_gate()

    assert decide(gate, intent(qty=Decimal("0.03"))).rule == "MAX_ORDER_NOTIONAL"
    assert decide(gate, intent(qty=Decimal("0.03"), reduce_only=True)).approved


def test_a_sell_with_an_entry_far_below_the_market_is_priced_at_the_market() -> None:
    # Reproduced: a follow sell with entry far below the market passed as 1,000 USDT and
    # filled for 2,425 USDT. A sell limit below the market is marketable: it trades there.
    far_entry = intent(side=Side.SELL, qty=Decimal("0.025"), limit=Decimal(40000))
    lenient = new_gate(config=CONFIG.model_copy(update={"max_limit_distance_pct": 100}))

    decision = decide(lenient, far_entry, price=Decimal(97000))

    assert decision.rule == "MAX_ORDER_NOTIONAL"
    assert "at 97000" in decision.reason


def test_a_plug_in_lying_about_its_price_gains_nothing() -> None:
    # Reproduced: a plug-in setting reference_price=1 got 48,500 USDT through a 1,000 cap.
    liar = intent(qty=Decimal("0.5"), claimed_price=Decimal(1))

    assert decide(new_gate(), liar, price=Decimal(97000)).rule == "MAX_ORDER_NOTIONAL"


def test_orders_in_flight_count_so_two_quick_signals_cannot_both_pass() -> None:
    gate = new_gate()
    first = decide(gate, intent(qty=Decimal("0.02")))  # 1000 USDT, reserved as it is approved
    second = decide(gate, intent(qty=Decimal("0.02")))  # would make 2000: at the limit

    third = decide(gate, intent(qty=Decimal("0.001")))

    assert isinstance(first, ApprovedOrder) and second.approved
    assert third.rule == "MAX_POSITION_NOTIONAL"
    gate.ledger.release(first.order_link_id)  # terminal, and (say) never filled
    assert decide(gate, intent(qty=Decimal("0.001"))).approved


def test_resting_sells_above_the_market_count_at_their_limits() -> None:
    # Reproduced: two sell limits 9 % above the market were counted at the market, so a
    # third sell passed that made a 2,016 USDT short on a 2,000 limit once the market rose
    # to fill them (as it must, for them to fill).
    gate = new_gate()
    for _ in range(2):  # 0.018 x 54,500 = 981 USDT each
        resting = intent(side=Side.SELL, qty=Decimal("0.018"), limit=Decimal(54500))
        assert decide(gate, resting).approved

    third = decide(gate, intent(side=Side.SELL, qty=Decimal("0.001")))  # 50 USDT at market

    assert third.rule == "MAX_POSITION_NOTIONAL"
    assert "could reach 2016.50 USDT" in third.reason
    assert decide(gate, intent(qty=Decimal("0.02"))).approved  # buys: at the market


def test_sells_against_a_long_count_whole_as_the_long_may_close_first() -> None:
    # Reproduced: sells against a 0.03 long were netted against it (a 1,350 USDT short at
    # worst after three), but the long's stop can fire before they fill: then they open a
    # 2,850 USDT short on a 2,000 limit. A flip's one order of both sizes is such a sell.
    gate = new_gate({("follow", "BTCUSDT"): Decimal("0.03")})
    for _ in range(2):  # 0.019 x 50,000 = 950 USDT each
        assert decide(gate, intent(side=Side.SELL, qty=Decimal("0.019"))).approved

    third = decide(gate, intent(side=Side.SELL, qty=Decimal("0.019")))

    assert third.rule == "MAX_POSITION_NOTIONAL"
    assert "could reach 2850.00 USDT" in third.reason
    closing = intent(side=Side.SELL, qty=Decimal("0.03"), reduce_only=True)
    assert decide(gate, closing).approved  # closing stays possible


def test_stacked_positions_hit_the_strategy_and_total_exposure() -> None:
    # Reproduced: thirteen sells stacked a 6,300 USDT short on a 1,000 order cap.
    positions = {
        ("follow", "BTCUSDT"): Decimal("-0.03"),  # 1500 USDT short
        ("follow", "ETHUSDT"): Decimal("-0.5"),  # 1500 USDT short
        ("other", "BTCUSDT"): Decimal("0.04"),  # 2000 USDT long
    }
    gate = new_gate(positions, {"follow": StrategyRiskConfig(), "other": StrategyRiskConfig()})

    mine = decide(gate, intent(side=Side.SELL, qty=Decimal("0.001"), symbol="ETHUSDT"))
    total = decide(gate, intent(strategy="other", symbol="ETHUSDT", qty=Decimal("0.1")))

    assert mine.rule == "MAX_STRATEGY_EXPOSURE"
    assert total.rule == "MAX_TOTAL_EXPOSURE"


def test_exposure_in_a_symbol_no_longer_allowed_still_counts() -> None:
    # Reproduced: a position in a symbol dropped from [risk] symbols was never counted.
    gate = new_gate({("follow", "ETHUSDT"): Decimal("-0.7")})  # 2100 USDT short
    gate_config = CONFIG.model_copy(update={"symbols": ("BTCUSDT",)})
    narrowed = RiskGate(gate_config, {"follow": StrategyRiskConfig()}, gate.ledger, lambda: NOW)

    assert decide(narrowed, intent(qty=Decimal("0.02"))).rule == "MAX_STRATEGY_EXPOSURE"


def test_exposure_without_a_price_is_never_counted_as_zero() -> None:
    # Reproduced: after a restart a position in a symbol no signal had priced counted as 0.
    gate = new_gate({("follow", "SOLUSDT"): Decimal(10)})

    decision = decide(gate, intent())  # prices of BTC and ETH only

    assert decision.rule == "MARKET_DATA"
    assert "no current price of SOLUSDT, where exposure is held" in decision.reason


def test_a_strategy_limit_only_tightens_the_global_one() -> None:
    long_only = StrategyRiskConfig(sides=("Buy",), max_order_notional_usdt=Decimal(99999))
    gate = new_gate(strategies={"follow": long_only})

    assert decide(gate, intent(side=Side.SELL)).rule == "SIDE_NOT_ALLOWED"
    assert decide(gate, intent(qty=Decimal("0.03"))).rule == "MAX_ORDER_NOTIONAL"  # global 1000


@settings(max_examples=200)
@given(
    orders=st.lists(
        st.tuples(
            st.sampled_from(["follow", "other"]),
            st.sampled_from(["BTCUSDT", "ETHUSDT"]),
            st.sampled_from(Side),
            st.decimals(min_value=Decimal("0.001"), max_value=Decimal(1), places=3),
            st.decimals(min_value=Decimal(1000), max_value=Decimal(100000), places=1),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_no_sequence_of_approvals_breaches_a_limit_counting_orders_in_flight(
    orders: list[tuple[str, str, Side, Decimal, Decimal, bool]],
) -> None:
    gate = new_gate(strategies={"follow": StrategyRiskConfig(), "other": StrategyRiskConfig()})
    prices = {"BTCUSDT": Decimal(50000), "ETHUSDT": Decimal(3000)}
    in_flight: dict[tuple[str, str, bool], list[tuple[Decimal, Decimal]]] = {}
    for strategy, symbol, side, qty, limit, use_limit in orders:
        item = intent(
            strategy=strategy,
            symbol=symbol,
            side=side,
            qty=qty,
            limit=limit if use_limit else None,
        )
        decision = gate.decide(item, price=prices[symbol], prices=prices)
        if not decision.approved:
            continue
        true_price = max(limit if use_limit else prices[symbol], prices[symbol])
        assert qty * true_price <= CONFIG.max_order_notional_usdt
        side_key = (strategy, symbol, side is Side.BUY)
        in_flight.setdefault(side_key, []).append((qty, true_price))
    # Whatever subset of the approved orders fills, no limit is breached, even at the
    # highest price one of them may fill at (a sell limit fills once the market reaches it).
    for sizes in in_flight.values():
        worst = sum(qty for qty, _ in sizes) * max(price for _, price in sizes)
        assert worst <= CONFIG.max_position_notional_usdt


def signal_at(symbol: str, age_s: float) -> Signal:
    ts = (NOW - timedelta(seconds=age_s)).isoformat()
    return parse_signal("voiceofchain", {"id": "s", "symbol": symbol, "side": "buy", "ts": ts})


def test_screen_refuses_a_whole_signal_before_any_strategy_runs() -> None:
    gate = new_gate()

    assert gate.screen(signal_at("BTCUSDT", 1)) is None
    refused = gate.screen(signal_at("DOGEUSDT", 1))
    assert refused is not None and refused[0] == "SYMBOL_NOT_ALLOWED"
    stale = gate.screen(signal_at("BTCUSDT", 120))
    assert stale is not None
    assert stale[0] == "STALE_SIGNAL"


def test_a_halted_bot_or_strategy_passes_only_reduce_only_intents() -> None:
    gate = new_gate(strategies={"follow": StrategyRiskConfig(), "other": StrategyRiskConfig()})
    gate.set_state(ScopeState("follow", TradingState.REDUCING, "loss limit", NOW))

    reducing = decide(gate, intent())
    other = decide(gate, intent(strategy="other"))
    closing = decide(gate, intent(reduce_only=True))
    gate.set_state(ScopeState(BOT_SCOPE, TradingState.HALTED, "operator", NOW))
    halted = decide(gate, intent(strategy="other"))

    assert (reducing.rule, "loss limit" in reducing.reason) == ("REDUCING", True)
    assert other.approved and closing.approved
    assert halted.rule == "HALTED"
    assert decide(gate, intent(strategy="other", reduce_only=True)).approved


def test_a_limit_far_from_the_market_is_refused_as_insane() -> None:
    decision = decide(new_gate(), intent(limit=Decimal(40000), qty=Decimal("0.001")))

    assert decision.rule == "PRICE_SANITY"
    assert "20.0 % from the market 50000" in decision.reason


def test_a_far_reduce_only_target_passes_but_a_far_close_through_the_market_does_not() -> None:
    def close(side: Side, limit: int) -> Verdict:
        return decide(new_gate(), intent(side=side, limit=Decimal(limit), reduce_only=True))

    assert close(Side.SELL, 70000).approved  # a long's target 40 % up: rests until reached
    assert close(Side.BUY, 30000).approved  # a short's, 40 % down
    assert close(Side.SELL, 30000).rule == "PRICE_SANITY"  # would sweep the book down to it
    assert close(Side.BUY, 70000).rule == "PRICE_SANITY"


def test_stop_loss_rules_required_side_and_distance() -> None:
    strict = new_gate(strategies={"follow": StrategyRiskConfig(require_stop_loss=True)})

    missing = decide(strict, intent())
    wrong_side = decide(new_gate(), intent().model_copy(update={"stop_loss": Decimal(51000)}))
    too_far = decide(new_gate(), intent().model_copy(update={"stop_loss": Decimal(30000)}))
    fine = decide(new_gate(), intent().model_copy(update={"stop_loss": Decimal(49000)}))

    assert (missing.rule, wrong_side.rule, too_far.rule) == ("STOP_LOSS",) * 3
    assert "must be below the entry" in wrong_side.reason
    assert fine.approved
    assert decide(strict, intent(reduce_only=True)).approved  # closing needs no stop


def test_a_daily_loss_puts_the_strategy_in_reducing_until_the_next_utc_day() -> None:
    losses = {"follow": Decimal(-120), None: Decimal(-120)}
    entered: list[ScopeState] = []
    day = [NOW]
    gate = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(1000)}),
        {"follow": StrategyRiskConfig(max_daily_loss_usdt=Decimal(100))},
        clock=lambda: day[0],
        pnl_today=lambda strategy: losses.get(strategy, Decimal(0)),
        state_entered=entered.append,
    )

    opening = decide(gate, intent())
    closing = decide(gate, intent(reduce_only=True))

    assert opening.rule == "REDUCING"
    assert "loss today 120.00 USDT reached max_daily_loss_usdt = 100" in opening.reason
    assert closing.approved
    assert [(s.scope, s.state, s.automatic) for s in entered] == [
        ("follow", TradingState.REDUCING, True)
    ]
    day[0] = NOW + timedelta(days=1)
    losses.clear()  # a new day's books start at zero
    assert decide(gate, intent(age_s=-86399)).approved  # a signal of the new day


def test_a_loss_booked_by_a_fill_enters_reducing_then_and_stops_an_approved_order() -> None:
    """Not only at the next signal: the state is announced when the loss is booked (status,
    metrics, notification), and an opening order approved before it is not sent after."""
    losses: dict[str | None, Decimal] = {}
    entered: list[ScopeState] = []
    gate = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(1000)}),
        {"follow": StrategyRiskConfig(max_daily_loss_usdt=Decimal(100))},
        clock=lambda: NOW,
        pnl_today=lambda strategy: losses.get(strategy, Decimal(0)),
        state_entered=entered.append,
    )
    assert decide(gate, intent()).approved
    assert gate.block_reason("follow") is None

    losses.update({"follow": Decimal(-40), None: Decimal(-40)})
    gate.fill_applied(make_execution(), ("follow",))
    assert entered == []  # under the limit

    losses.update({"follow": Decimal(-120), None: Decimal(-120)})
    gate.fill_applied(make_execution(), ("follow",))

    assert [(s.scope, s.state, s.automatic) for s in entered] == [
        ("follow", TradingState.REDUCING, True)
    ]
    assert "loss today 120.00 USDT" in (gate.block_reason("follow") or "")
    gate.fill_applied(make_execution(), ("follow",))
    assert len(entered) == 1  # entered once


def test_an_approved_orders_send_is_blocked_by_a_loss_booked_since() -> None:
    """The executor's check before each send applies the daily loss itself, with no fill
    heard in between (a listener that was not told, a booking from the journal)."""
    losses: dict[str | None, Decimal] = {}
    gate = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(100)}),
        clock=lambda: NOW,
        pnl_today=lambda strategy: losses.get(strategy, Decimal(0)),
    )
    assert decide(gate, intent()).approved
    losses[None] = Decimal(-150)

    assert "the bot is REDUCING (loss today 150.00 USDT" in (gate.block_reason("follow") or "")


def test_yesterdays_reducing_lifted_late_in_a_losing_day_does_not_waive_todays_limit() -> None:
    """The lift at a new UTC day is a rule's, not a person's resume: were it taken for one,
    a day whose first opening signal came after its losses passed the limit (its closes are
    reduce-only, judged without the state) would open positions past the limit all day."""
    clock = [NOW]
    losses: dict[str | None, Decimal] = {}
    gate = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(100)}),
        clock=lambda: clock[0],
        pnl_today=lambda strategy: losses.get(strategy, Decimal(0)),
    )
    gate.set_state(ScopeState(BOT_SCOPE, TradingState.REDUCING, "loss", NOW, automatic=True))
    clock[0] = NOW + timedelta(days=1)
    losses[None] = Decimal(-150)  # today's closes lost past the limit before any opening signal

    verdict = decide(gate, intent(age_s=-86399))

    assert verdict.rule == "REDUCING"
    assert "loss today 150.00 USDT" in verdict.reason


def test_a_rejection_says_a_persons_hold_outlasts_a_rules_of_the_same_state() -> None:
    gate = RiskGate(CONFIG, clock=lambda: NOW)
    gate.set_state(ScopeState(BOT_SCOPE, TradingState.REDUCING, "loss", NOW, automatic=True))
    gate.set_state(ScopeState("follow", TradingState.REDUCING, "by hand", NOW))

    rejected = decide(gate, intent())

    assert rejected.rule == "REDUCING"
    assert rejected.reason.endswith("only reduce-only orders pass until `bot resume`")


def test_a_days_lift_journaled_by_an_earlier_version_is_no_persons_resume() -> None:
    """Earlier versions journaled the lift at a new UTC day without `automatic`: re-applied
    at a restart on a day whose loss is at the limit, it waived the limit as a resume does."""
    gate = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(100)}),
        clock=lambda: NOW,
        pnl_today=lambda strategy: Decimal(-150),
    )
    gate.set_state(ScopeState(BOT_SCOPE, TradingState.ACTIVE, "a new UTC day", NOW))

    assert decide(gate, intent()).rule == "REDUCING"


def test_open_orders_and_order_rates_limit_opening_orders_only() -> None:
    clock = [NOW]
    gate = RiskGate(
        CONFIG.model_copy(update={"max_open_orders": 3, "max_orders_per_minute": 4}),
        {"follow": StrategyRiskConfig(max_orders_per_day=5)},
        clock=lambda: clock[0],
    )
    small = Decimal("0.001")

    approved = [decide(gate, intent(qty=small)) for _ in range(3)]
    fourth = decide(gate, intent(qty=small))
    assert all(isinstance(a, ApprovedOrder) for a in approved)
    assert (fourth.rule, fourth.reason) == (
        "MAX_OPEN_ORDERS",
        "follow has 3 orders open (max_open_orders = 3)",
    )
    assert decide(gate, intent(qty=small, reduce_only=True)).approved  # the 4th this minute

    for approval in approved:
        assert isinstance(approval, ApprovedOrder)
        gate.ledger.release(approval.order_link_id)
    per_minute = decide(gate, intent(qty=small))
    assert per_minute.rule == "MAX_ORDERS_PER_MINUTE"
    assert "4 orders in the last minute" in per_minute.reason

    clock[0] = NOW + timedelta(seconds=61)
    assert decide(gate, intent(qty=small, age_s=1 - 61)).approved  # the 5th today
    per_day = decide(gate, intent(qty=small, age_s=1 - 61))
    assert (per_day.rule, "5 orders today" in per_day.reason) == ("MAX_ORDERS_PER_DAY", True)


def test_a_losing_close_starts_a_cooldown_for_opening_orders() -> None:
    clock = [NOW]
    lost_at = {"follow": NOW - timedelta(seconds=100)}
    gate = RiskGate(
        CONFIG,
        {"follow": StrategyRiskConfig(cooldown_after_loss_s=300), "other": StrategyRiskConfig()},
        clock=lambda: clock[0],
        last_loss_at=lost_at.get,
    )

    cooling = decide(gate, intent())

    assert (cooling.rule, cooling.reason) == (
        "COOLDOWN",
        "follow closed at a loss 100 s ago (cooldown_after_loss_s = 300)",
    )
    assert decide(gate, intent(reduce_only=True)).approved
    assert decide(gate, intent(strategy="other")).approved  # its own books, no loss
    clock[0] = NOW + timedelta(seconds=200)
    assert decide(gate, intent(age_s=1 - 200)).approved


def test_a_market_order_needs_a_current_price_and_a_limit_order_does_not() -> None:
    gate = new_gate()
    prices = {"BTCUSDT": MARKET}

    stale = gate.decide(intent(), price=MARKET, prices=prices, price_age_s=11)
    limit = gate.decide(intent(limit=Decimal(49900)), price=MARKET, prices=prices, price_age_s=11)
    closing = gate.decide(intent(reduce_only=True), price=MARKET, prices=prices, price_age_s=11)

    assert stale.rule == "STALE_PRICE"
    assert "11.0 s old (max_price_age_s = 10)" in stale.reason
    assert limit.approved and closing.approved


def test_the_signal_leverage_is_capped_never_raised_and_on_bybits_grid() -> None:
    gate = new_gate(strategies={"follow": StrategyRiskConfig(max_leverage=Decimal(5))})

    def approved_leverage(wanted: str | None) -> Decimal | None:
        lever = None if wanted is None else Decimal(wanted)
        verdict = decide(gate, intent().model_copy(update={"leverage": lever}))
        assert isinstance(verdict, ApprovedOrder) and verdict.max_leverage == 5
        gate.ledger.release(verdict.order_link_id)
        return verdict.leverage

    high = decide(gate, intent().model_copy(update={"leverage": Decimal(50)}))
    assert isinstance(high, ApprovedOrder)
    gate.ledger.release(high.order_link_id)
    assert "leverage 50 set to 5.00 (max_leverage = 5" in high.reason
    assert approved_leverage("3") == 3
    assert approved_leverage("2.129") == Decimal("2.12")
    assert approved_leverage("0.5") == 1
    assert approved_leverage(None) is None


def test_a_resume_lifts_the_daily_loss_reducing_until_the_next_utc_day() -> None:
    day = [NOW]
    gate = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(100)}),
        {"follow": StrategyRiskConfig()},
        clock=lambda: day[0],
        pnl_today=lambda strategy: Decimal(-150),
    )
    assert decide(gate, intent()).rule == "REDUCING"

    for scope in ("follow", BOT_SCOPE):
        gate.set_state(ScopeState(scope, TradingState.ACTIVE, "resumed by the operator", NOW))

    assert decide(gate, intent()).approved
    day[0] = NOW + timedelta(days=1)  # still -150 on the new day: the limit applies again
    assert decide(gate, intent(age_s=-86399)).rule == "REDUCING"


def test_closing_is_possible_on_a_symbol_denied_after_the_position_opened() -> None:
    denied = {"follow": StrategyRiskConfig(denied_symbols=("BTCUSDT",))}
    held = {("follow", "BTCUSDT"): Decimal("0.01"), ("follow", "SOLUSDT"): Decimal(1)}
    gate = new_gate(held, strategies=denied)
    close = signal_at("SOLUSDT", 1).model_copy(update={"action": SignalAction.CLOSE, "side": None})
    nothing_held = close.model_copy(update={"symbol": "DOGEUSDT"})

    assert decide(gate, intent()).rule == "SYMBOL_NOT_ALLOWED"
    assert decide(gate, intent(reduce_only=True)).approved
    assert gate.screen(close) is None  # SOLUSDT is not allowed, but a position is held
    refused = gate.screen(nothing_held)
    assert refused is not None and refused[0] == "SYMBOL_NOT_ALLOWED"


def test_strategy_overrides_tighten_lists_and_cooldowns_too() -> None:
    base = CONFIG.model_copy(update={"denied_symbols": ("SOLUSDT",), "cooldown_after_loss_s": 60})

    tight = base.tightened(
        StrategyRiskConfig(denied_symbols=("ETHUSDT",), cooldown_after_loss_s=10)
    )

    assert set(tight.denied_symbols) == {"SOLUSDT", "ETHUSDT"}
    assert tight.cooldown_after_loss_s == 60  # the longer cooldown is the stricter one


def test_a_strategy_value_the_global_overrules_is_named() -> None:
    """A looser value goes unapplied: said at start, not silently clamped."""
    base = CONFIG.model_copy(
        update={"symbols": ("BTCUSDT", "ETHUSDT"), "max_order_notional_usdt": Decimal(1000)}
    )
    override = StrategyRiskConfig(
        symbols=("BTCUSDT", "DOGEUSDT"),
        denied_symbols=("ETHUSDT",),
        max_order_notional_usdt=Decimal(5000),
        max_open_orders=1,
        require_stop_loss=True,
    )

    assert base.overruled_values(override) == [
        "symbols DOGEUSDT (not in the global's)",
        "max_order_notional_usdt = 5000 (the global's 1000 applies)",
    ]
    assert base.overruled_values(StrategyRiskConfig(max_open_orders=1)) == []


def test_only_the_gate_makes_an_approved_order() -> None:
    approval = decide(new_gate(), intent())
    assert isinstance(approval, ApprovedOrder)

    with pytest.raises(TypeError, match="only the risk gate"):
        ApprovedOrder(
            approval.decision, approval.order_link_id, None, Decimal(10), approval.approved_at
        )
    with pytest.raises(TypeError, match="only the risk gate"):
        dataclasses.replace(approval, leverage=Decimal(100))


def test_nothing_outside_the_gate_constructs_an_approved_order() -> None:
    root = Path(__file__).resolve().parents[3]
    makers = [
        path.relative_to(root).as_posix()
        for package in ("bot", "signals", "strategies")
        for path in (root / package).rglob("*.py")
        if re.search(r"\bApprovedOrder\(", path.read_text(encoding="utf-8"))
    ]

    assert makers == ["bot/risk/gate.py"]


def test_a_restart_recounts_the_last_minute_even_across_midnight() -> None:
    just_after = datetime(2026, 11, 25, 0, 0, 5, tzinfo=UTC)

    assert counting_since(just_after) == datetime(2026, 11, 24, 23, 59, 5, tzinfo=UTC)
    assert counting_since(NOW) == datetime(2026, 11, 24, tzinfo=UTC)


def test_the_minute_count_keeps_only_its_minute_when_nobody_asks() -> None:
    # Reproduced: a strategy that only reduces is never asked for its counts, and every
    # approval time it ever had was kept (100,000 after 100,000 approvals).
    counts = OrderCounts()
    for second in range(600):
        counts.count("closer", NOW + timedelta(seconds=second))

    assert len(counts._recent["closer"]) == 60
    assert counts.today("closer", NOW + timedelta(seconds=599)) == 600


def test_a_keys_opening_leverage_cap_is_the_highest_of_the_strategies_that_may_open_there() -> None:
    # A shared key: "bold" may open BTCUSDT at up to 10x; "careful" only ETHUSDT, at 3x.
    gate = new_gate(
        strategies={
            "bold": StrategyRiskConfig(max_leverage=Decimal(10), denied_symbols=("ETHUSDT",)),
            "careful": StrategyRiskConfig(max_leverage=Decimal(3), symbols=("ETHUSDT",)),
        },
        config=CONFIG.model_copy(update={"max_leverage": Decimal(20)}),
    )

    assert gate.opening_leverage_cap(["bold", "careful"], "BTCUSDT") == 10
    assert gate.opening_leverage_cap(["bold", "careful"], "ETHUSDT") == 3
    assert gate.opening_leverage_cap(["careful"], "BTCUSDT") is None  # none opens it there
    assert gate.opening_leverage_cap([], "BTCUSDT") is None


@pytest.mark.parametrize("key_before_followed", [True, False])
def test_what_a_strategy_moved_to_another_key_holds_on_the_key_before_counts_while_followed(
    tmp_path: Path, key_before_followed: bool
) -> None:
    """Strategy `follow` bought 0.038 BTC (1,900 USDT, its position limit 2,000) on key k1,
    then was moved to key k2. That position, on another account, neither nets against nor
    closes with what it does on k2: while the bot follows k1 (another strategy trades on
    it), each side it could reach on k2 counts it whole. On a key nothing trades on, the bot
    no longer hears of it (a close by hand would never free the strategy): start-up says so."""
    projection = AccountProjection()
    fill = make_execution(
        exec_id="e1", key_name="k1", order_link_id="follow-0-x", qty=Decimal("0.038")
    )
    projection.apply_execution(fill, {"follow": Decimal("0.038")})
    key_of = {"follow": "k2", **({"other": "k1"} if key_before_followed else {})}
    journal = Journal(tmp_path / "journal.sqlite3")
    ledger = restored_ledger(journal, projection, key_of, [])
    journal.close()
    gate = RiskGate(CONFIG, dict.fromkeys(key_of, StrategyRiskConfig()), ledger, lambda: NOW)

    buy, sell = (
        decide(gate, intent(qty=Decimal("0.01"))),
        decide(gate, intent(qty=Decimal("0.01"), side=Side.SELL)),
    )

    if key_before_followed:
        assert (buy.rule, sell.rule) == ("MAX_POSITION_NOTIONAL", "MAX_POSITION_NOTIONAL")
        assert "could reach 2400.00 USDT" in buy.reason
        assert ledger.exposure_symbols("follow") == {"BTCUSDT"}
    else:
        assert buy.approved and sell.approved


@pytest.mark.parametrize("lost_after_the_resume", [True, False])
def test_a_resume_re_applied_at_a_restart_waives_only_the_loss_it_was_made_at(
    lost_after_the_resume: bool,
) -> None:
    """A resume at 10:00 with the loss under the limit; a losing close at 14:00 takes it past
    the limit, and the REDUCING the rule entered is lost (a crash, a journal that could not
    write). Restarted at 15:00, the journal's resume re-applied must not waive the limit the
    resume never saw: opening orders were approved for the rest of the day. A resume made
    with the loss already at the limit (nothing lost since) waives it still."""
    resumed_at = NOW - timedelta(hours=5)
    last_loss = NOW - timedelta(hours=1) if lost_after_the_resume else resumed_at
    restarted = RiskGate(
        CONFIG.model_copy(update={"max_daily_loss_usdt": Decimal(1000)}),
        {"follow": StrategyRiskConfig(max_daily_loss_usdt=Decimal(200))},
        clock=lambda: NOW,
        pnl_today=lambda strategy: Decimal(-250),
        last_loss_at=lambda strategy: last_loss - timedelta(minutes=1),
    )
    restarted.set_state(ScopeState("follow", TradingState.ACTIVE, "resumed", resumed_at))

    verdict = decide(restarted, intent())

    if lost_after_the_resume:
        assert verdict.rule == "REDUCING"
        assert "loss today 250.00 USDT" in verdict.reason
    else:
        assert verdict.approved
