"""Valid messages for tests: every field defaulted, any of them overridable."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bot.messages import OrderIntent, OrderRequest, OrderType, Side


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
