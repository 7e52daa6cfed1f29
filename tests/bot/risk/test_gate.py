"""The risk gate: approves only intents within every limit, and says why otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from bot.config import RiskConfig
from bot.messages import OrderIntent, Signal, parse_signal
from bot.risk.gate import RiskGate
from tests.factories import make_intent

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CONFIG = RiskConfig(
    symbols=("BTCUSDT", "ETHUSDT"),
    max_order_notional_usdt=Decimal(1000),
    max_signal_age_s=60,
    max_signal_future_s=5,
)


def intent(
    *,
    symbol: str = "BTCUSDT",
    qty: Decimal = Decimal("0.01"),
    price: Decimal = Decimal(50000),
    age_s: float = 1,
    reduce_only: bool = False,
) -> OrderIntent:
    return make_intent(
        symbol=symbol,
        qty=qty,
        reference_price=price,
        reduce_only=reduce_only,
        signal_ts=NOW - timedelta(seconds=age_s),
    )


gate = RiskGate(CONFIG, clock=lambda: NOW)


def test_intent_within_limits_is_approved() -> None:
    decision = gate.decide(intent())

    assert decision.approved
    assert decision.rule is None


def test_symbol_outside_allowlist_is_rejected_with_reason() -> None:
    decision = gate.decide(intent(symbol="DOGEUSDT"))

    assert not decision.approved
    assert decision.rule == "SYMBOL_NOT_ALLOWED"
    assert "DOGEUSDT" in decision.reason


def test_stale_and_future_signals_are_rejected() -> None:
    stale = gate.decide(intent(age_s=61))
    future = gate.decide(intent(age_s=-6))

    assert (stale.rule, future.rule) == ("STALE_SIGNAL", "STALE_SIGNAL")
    assert "61.0 s old" in stale.reason
    assert "future" in future.reason


def test_notional_over_limit_is_rejected_but_reduce_only_may_close() -> None:
    big = intent(qty=Decimal("0.03"))  # 1500 USDT

    assert gate.decide(big).rule == "MAX_ORDER_NOTIONAL"
    assert gate.decide(intent(qty=Decimal("0.03"), reduce_only=True)).approved


@given(
    qty=st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**6), places=6),
    price=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(10**7), places=4),
    age_s=st.floats(min_value=-3600, max_value=3600),
    symbol=st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]),
)
def test_never_approves_an_intent_over_any_limit(
    qty: Decimal, price: Decimal, age_s: float, symbol: str
) -> None:
    decision = gate.decide(intent(symbol=symbol, qty=qty, price=price, age_s=age_s))

    if decision.approved:
        assert qty * price <= CONFIG.max_order_notional_usdt
        assert symbol in CONFIG.symbols
        assert -CONFIG.max_signal_future_s <= age_s <= CONFIG.max_signal_age_s
    else:
        assert decision.rule and decision.reason


def signal_at(symbol: str, age_s: float) -> Signal:
    ts = (NOW - timedelta(seconds=age_s)).isoformat()
    return parse_signal("voiceofchain", {"id": "s", "symbol": symbol, "side": "buy", "ts": ts})


def test_screen_refuses_a_whole_signal_before_any_strategy_runs() -> None:
    assert gate.screen(signal_at("BTCUSDT", 1)) is None
    assert gate.screen(signal_at("DOGEUSDT", 1)) == (
        "SYMBOL_NOT_ALLOWED",
        "DOGEUSDT is not in risk.symbols",
    )
    stale = gate.screen(signal_at("BTCUSDT", 120))
    assert stale is not None
    assert stale[0] == "STALE_SIGNAL"
