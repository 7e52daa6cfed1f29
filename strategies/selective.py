"""Selective: follow a provider's signals, but only those that meet your conditions.

How a quant layers judgement over a signal provider: each `open` signal must pass every
condition below, or it is declined with the condition it failed; one that passes is traded
exactly as `follow` trades it (risk-sized from entry and stop, leverage capped). A `close`
signal always passes: a filter must never keep a position from being closed.

- `symbols` / `sides`: only these (empty: any);
- `min_reward_risk`: the nearest profitable target must be at least this many times as far
  from the entry (or the last price) as the stop is, all three on the tick as the bot trades
  them (a target rounded toward the entry earns less than the one sent);
- `max_trades_per_day`: no more orders than this per UTC day (as the risk gate counts them);
- `require_targets`: a signal without any take-profit target is declined.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from pydantic import Field, field_validator

from bot.execution.rounding import round_to_step
from bot.messages import Instrument, Side, Signal, SignalAction
from strategies.base import StrategyContext, StrategyOutput
from strategies.follow import Follow, limit_price, profitable_targets

__all__ = ["Selective", "reward_risk"]

#: `sides` is written as signals write a side (buy, sell, long, short) or as Bybit does.
_SIDES: Final = {"buy": Side.BUY, "long": Side.BUY, "sell": Side.SELL, "short": Side.SELL}


class Selective(Follow):
    """Follow only the signals that meet the configured conditions."""

    class Params(Follow.Params):
        symbols: tuple[str, ...] = Field((), description="trade only these symbols (empty: any)")
        sides: tuple[Side, ...] = Field((), description="trade only these sides (empty: both)")
        min_reward_risk: Decimal = Field(
            Decimal(0), ge=0, description="nearest target's distance over the stop's, at least"
        )
        max_trades_per_day: int | None = Field(
            None, ge=1, description="orders per UTC day, at most (None: no limit here)"
        )
        require_targets: bool = Field(False, description="decline signals without take_profit")

        @field_validator("symbols", mode="before")
        @classmethod
        def _upper_symbols(cls, symbols: object) -> object:
            # As signals spell them: "btcusdt" would otherwise filter out every signal.
            if isinstance(symbols, list | tuple):
                return tuple(
                    symbol.strip().upper() if isinstance(symbol, str) else symbol
                    for symbol in symbols
                )
            return symbols

        @field_validator("sides", mode="before")
        @classmethod
        def _side_spellings(cls, sides: object) -> object:
            if isinstance(sides, list | tuple):
                return tuple(
                    _SIDES.get(side.strip().lower(), side) if isinstance(side, str) else side
                    for side in sides
                )
            return sides

    params: Params

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        if signal.action is not SignalAction.CLOSE:
            failed = self._failed_condition(signal, context)
            if failed:
                return self.decline(f"filtered out: {failed}")
        return super().on_signal(signal, context)

    def _failed_condition(self, signal: Signal, context: StrategyContext) -> str:
        """The first condition `signal` fails, or "" if it meets them all."""
        params = self.params
        if params.symbols and signal.symbol not in params.symbols:
            return f"{signal.symbol} is not one of {', '.join(params.symbols)}"
        if params.sides and signal.side not in params.sides:
            return f"side {signal.side} is not one of {', '.join(map(str, params.sides))}"
        if params.max_trades_per_day is not None and (
            context.orders_today >= params.max_trades_per_day
        ):
            return f"{context.orders_today} orders today already (max_trades_per_day)"
        if params.require_targets and not signal.take_profit:
            return "the signal has no take_profit target"
        if params.min_reward_risk > 0:
            return self._reward_risk_problem(signal, context)
        return ""

    def _reward_risk_problem(self, signal: Signal, context: StrategyContext) -> str:
        """Why the signal's reward/risk, as the order would carry it, is too low, or "" if it
        is not (or if its entry has no price on the tick: `Follow` declines it, saying so)."""
        entry = limit_price(signal, context)
        if isinstance(entry, str):
            return ""
        ratio = reward_risk(signal, entry or context.last_price, context.instrument)
        if ratio is None:
            return "reward/risk unknown: the signal needs a stop_loss and a target"
        if ratio < self.params.min_reward_risk:
            return f"reward/risk {ratio:.2f} is below {self.params.min_reward_risk}"
        return ""


def reward_risk(signal: Signal, reference: Decimal, instrument: Instrument) -> Decimal | None:
    """The nearest profitable target's distance from `reference` (the entry on the tick, or
    the last price) over the stop's, both on the tick as the order carries them (the targets
    as `profitable_targets` rounds them, the stop toward the price as the risk gate does);
    None when the signal has no stop on the losing side or no target on the profitable side."""
    if signal.stop_loss is None or signal.side is None:
        return None
    buy = signal.side is Side.BUY
    stop_loss = round_to_step(signal.stop_loss, instrument.tick_size, up=buy)
    risk = (reference - stop_loss) * (1 if buy else -1)
    targets = profitable_targets(signal, reference, instrument)
    if risk <= 0 or not targets:
        return None
    return abs(targets[0] - reference) / risk
