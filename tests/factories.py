"""Valid messages for tests: every field defaulted, any of them overridable."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bot.messages import (
    Execution,
    ExitOrder,
    OrderIntent,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionUpdate,
    Side,
)
from bot.risk.config import RiskConfig
from bot.risk.gate import ApprovedOrder, RiskGate

_HUGE = Decimal(10) ** 12
#: Limits no test intent reaches: for tests of what happens after an approval.
UNLIMITED = RiskConfig(
    max_order_notional_usdt=_HUGE,
    max_position_notional_usdt=_HUGE,
    max_strategy_exposure_usdt=_HUGE,
    max_total_exposure_usdt=_HUGE,
    max_daily_loss_usdt=_HUGE,
    max_open_orders=10**9,
    max_orders_per_minute=10**9,
    max_orders_per_day=10**9,
    max_limit_distance_pct=_HUGE,
    max_stop_distance_pct=_HUGE,
    max_leverage=Decimal(100),
    max_signal_age_s=10**9,
    max_signal_future_s=10**9,
)


def make_intent(**overrides: Any) -> OrderIntent:
    """A 0.01 BTCUSDT market buy for strategy `follow`, sized at 97000, signal issued now."""
    fields: dict[str, Any] = {
        "strategy": "follow",
        "signal_source": "voiceofchain",
        "signal_id": "s1",
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "order_type": OrderType.MARKET,
        "qty": Decimal("0.01"),
        "reference_price": Decimal(97000),
        "signal_ts": datetime.now(UTC),
    }
    return OrderIntent(**(fields | overrides))


def make_request(**overrides: Any) -> OrderRequest:
    """The order for `make_intent()`'s defaults, under a fixed orderLinkId."""
    fields: dict[str, Any] = {
        "order_link_id": "follow-0-x",
        "key_name": "k",
        "strategy": "follow",
        "signal_source": "voiceofchain",
        "signal_id": "s1",
        "leg": 0,
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "order_type": OrderType.MARKET,
        "qty": Decimal("0.01"),
    }
    return OrderRequest(**(fields | overrides))


def make_execution(**overrides: Any) -> Execution:
    """A fill of all of `make_request()`'s order, at 97000, on key `k`."""
    fields: dict[str, Any] = {
        "exec_id": "e1",
        "key_name": "k",
        "order_id": "o1",
        "order_link_id": "follow-0-x",
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "qty": Decimal("0.01"),
        "price": Decimal(97000),
        "fee": Decimal(0),
        "ts": datetime.now(UTC),
    }
    return Execution(**(fields | overrides))


def approve(intent: OrderIntent) -> ApprovedOrder:
    """`intent` approved by a real gate with limits it cannot reach (the only way to get an
    `ApprovedOrder`), priced at its own reference price."""
    gate = RiskGate(UNLIMITED.model_copy(update={"symbols": (intent.symbol,)}))
    verdict = gate.decide(intent, price=intent.reference_price, prices={})
    assert isinstance(verdict, ApprovedOrder), verdict.reason
    return verdict


def sim_position(
    size: Decimal, price: Decimal = Decimal(97000), **overrides: Any
) -> PositionUpdate:
    """The sim key's BTCUSDT position as the venue would report it, opened at `price`."""
    fields: dict[str, Any] = {
        "key_name": "follow_sim",
        "symbol": "BTCUSDT",
        "size": size,
        "entry_price": price,
        "mark_price": price,
        "unrealized_pnl": Decimal(0),
        "cum_realized_pnl": Decimal(0),
        "leverage": Decimal(1),
        "ts": datetime.now(UTC),
    }
    return PositionUpdate(**(fields | overrides))


def stop_loss(**overrides: Any) -> ExitOrder:
    """The venue's stop-loss order of the sim key's BTCUSDT long, waiting at 95000."""
    fields: dict[str, Any] = {
        "order_id": "sl-1",
        "key_name": "follow_sim",
        "symbol": "BTCUSDT",
        "side": Side.SELL,
        "kind": "StopLoss",
        "trigger_price": Decimal(95000),
        "qty": Decimal("0.01"),
        "status": OrderStatus.NEW,
        "ts": datetime.now(UTC),
    }
    return ExitOrder(**(fields | overrides))
