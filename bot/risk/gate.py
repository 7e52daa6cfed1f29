"""The risk gate: every intent is checked against every rule; a denial is a value with a reason.

Rules, in order (the first that fails decides):
  SYMBOL_NOT_ALLOWED   the symbol is not in `risk.symbols`
  STALE_SIGNAL         the signal's `ts` is older than `max_signal_age_s`, or in the future
  MAX_ORDER_NOTIONAL   qty x reference price exceeds `max_order_notional_usdt`
                       (reduce-only intents are exempt: closing must always be possible)

`screen(signal)` applies the signal-level rules (symbol, staleness) before any strategy runs,
so a signal that can never pass costs no venue round trip for market data.

The gate is pure: it reads the intent and the clock, never the venue or the executor.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bot.config import RiskConfig
from bot.messages import OrderIntent, RiskDecision, Signal, utc_now

__all__ = ["RiskGate"]


class RiskGate:
    """Approves or rejects order intents against the configured limits."""

    def __init__(self, config: RiskConfig, clock: Callable[[], datetime] = utc_now) -> None:
        self._config = config
        self._symbols = frozenset(config.symbols)
        self._clock = clock

    def decide(self, intent: OrderIntent) -> RiskDecision:
        rejection = (
            self._symbol(intent.symbol)
            or self._staleness(intent.signal_ts)
            or self._notional(intent)
        )
        if rejection is not None:
            rule, reason = rejection
            return RiskDecision(intent=intent, approved=False, rule=rule, reason=reason)
        return RiskDecision(intent=intent, approved=True, reason="within all limits")

    def screen(self, signal: Signal) -> tuple[str, str] | None:
        """(rule, reason) if no intent from `signal` could pass, else None."""
        return self._symbol(signal.symbol) or self._staleness(signal.ts)

    def stale_reason(self, signal_ts: datetime) -> str | None:
        """Why a signal issued at `signal_ts` is too old (or too far ahead) to act on now."""
        rejection = self._staleness(signal_ts)
        return None if rejection is None else rejection[1]

    def _symbol(self, symbol: str) -> tuple[str, str] | None:
        if symbol in self._symbols:
            return None
        return "SYMBOL_NOT_ALLOWED", f"{symbol} is not in risk.symbols"

    def _staleness(self, signal_ts: datetime) -> tuple[str, str] | None:
        age_s = (self._clock() - signal_ts).total_seconds()
        if age_s > self._config.max_signal_age_s:
            return (
                "STALE_SIGNAL",
                f"signal is {age_s:.1f} s old (risk.max_signal_age_s = "
                f"{self._config.max_signal_age_s:g})",
            )
        if -age_s > self._config.max_signal_future_s:
            return (
                "STALE_SIGNAL",
                f"signal ts is {-age_s:.1f} s in the future (risk.max_signal_future_s = "
                f"{self._config.max_signal_future_s:g}); check the sender's clock",
            )
        return None

    def _notional(self, intent: OrderIntent) -> tuple[str, str] | None:
        if intent.reduce_only or intent.notional_usdt <= self._config.max_order_notional_usdt:
            return None
        return (
            "MAX_ORDER_NOTIONAL",
            f"notional {intent.notional_usdt:.2f} USDT exceeds risk.max_order_notional_usdt = "
            f"{self._config.max_order_notional_usdt}",
        )
