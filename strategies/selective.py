"""Selective: follow a provider's signals, but only those that meet your conditions.

How a quant layers judgement over a signal provider: each `open` signal must pass every
condition below, or it is declined with the condition it failed; one that passes is traded
exactly as `follow` trades it (risk-sized from entry and stop, leverage capped). A `close`
signal always passes: a filter must never keep a position from being closed.

- `symbols` / `sides`: only these (empty: any);
- `min_reward_risk`: the nearest profitable target must be at least this many times as far
  from the entry (or the last price) as the stop is;
- `max_trades_per_day`: no more orders than this per UTC day (as the risk gate counts them);
- `require_targets`: a signal without any take-profit target is declined.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from pydantic import Field, field_validator

from bot.messages import Side, Signal, SignalAction
from strategies.base import StrategyContext, StrategyOutput
from strategies.follow import Follow

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
            ratio = reward_risk(signal, signal.entry or context.last_price)
            if ratio is None:
                return "reward/risk unknown: the signal needs a stop_loss and a target"
            if ratio < params.min_reward_risk:
                return f"reward/risk {ratio:.2f} is below {params.min_reward_risk}"
        return ""


def reward_risk(signal: Signal, reference: Decimal) -> Decimal | None:
    """The nearest profitable target's distance from `reference` over the stop's; None when
    the signal has no stop on the losing side or no target on the profitable side."""
    if signal.stop_loss is None or signal.side is None:
        return None
    direction = 1 if signal.side is Side.BUY else -1
    risk = (reference - signal.stop_loss) * direction
    rewards = [(tp - reference) * direction for tp in signal.take_profit]
    rewards = [reward for reward in rewards if reward > 0]
    if risk <= 0 or not rewards:
        return None
    return min(rewards) / risk
