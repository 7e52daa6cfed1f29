"""The risk gate's configuration: `[risk]` globally, `[strategies.<name>.risk]` per strategy.

A per-strategy value can only tighten the global one: the effective limit is the stricter of
the two (the smaller number, the intersection of symbols and sides, a required stop, the
longer cooldown). Count limits (open orders, orders per minute and per day) apply to each
strategy; the global value is every strategy's ceiling.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from bot.messages import MAX_NUMBER, SYMBOL_PATTERN, Symbol

__all__ = ["RiskConfig", "StrategyRiskConfig"]

SideName = Literal["Buy", "Sell"]


def _upper_symbol(value: object) -> object:
    """A symbol name in upper case, as Bybit's are ("uppercase only") and signals' are made:
    "btcusdt" means BTCUSDT; anything that is no symbol name is left as written, to be
    refused as such."""
    if isinstance(value, str) and re.fullmatch(SYMBOL_PATTERN, value.strip().upper()):
        return value.strip().upper()
    return value


ConfiguredSymbol = Annotated[Symbol, BeforeValidator(_upper_symbol)]
_SIDES: tuple[SideName, ...] = ("Buy", "Sell")
_LONGER_IS_STRICTER = frozenset({"cooldown_after_loss_s"})


class RiskConfig(BaseModel):
    """`[risk]`: the limits every intent is checked against. USDT amounts are notionals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbols: tuple[ConfiguredSymbol, ...] = Field(
        ("BTCUSDT", "ETHUSDT", "SOLUSDT"), description="allowlist; anything else is rejected"
    )
    denied_symbols: tuple[ConfiguredSymbol, ...] = Field(
        (), description="never traded, even if allowed"
    )
    sides: tuple[SideName, ...] = Field(_SIDES, description="sides that may open: Buy, Sell")
    max_order_notional_usdt: Decimal = Field(Decimal(1000), gt=0, le=MAX_NUMBER)
    max_position_notional_usdt: Decimal = Field(
        Decimal(2000),
        gt=0,
        le=MAX_NUMBER,
        description="one strategy's position in one symbol, with its orders in flight",
    )
    max_strategy_exposure_usdt: Decimal = Field(
        Decimal(3000),
        gt=0,
        le=MAX_NUMBER,
        description="one strategy over all symbols, with orders in flight",
    )
    max_total_exposure_usdt: Decimal = Field(
        Decimal(5000),
        gt=0,
        le=MAX_NUMBER,
        description="every strategy together, with orders in flight",
    )
    max_open_orders: int = Field(
        10, gt=0, description="a strategy's orders not yet terminal, reduce-only ones included"
    )
    max_leverage: Decimal = Field(
        Decimal(10),
        ge=1,
        le=MAX_NUMBER,  # what an order can carry
        description="a signal's leverage above this is capped to it; set on the venue "
        "before the order when it differs",
    )
    max_orders_per_minute: int = Field(10, gt=0, description="approvals per strategy, rolling")
    max_orders_per_day: int = Field(100, gt=0, description="approvals per strategy, UTC day")
    cooldown_after_loss_s: float = Field(
        0, ge=0, description="no opening order for this long after a losing close (0: off)"
    )
    max_daily_loss_usdt: Decimal = Field(
        Decimal(300),
        gt=0,
        le=MAX_NUMBER,
        description="realized loss plus fees today (UTC) at which a strategy (its own limit) "
        "or the bot (this one, over all strategies) goes REDUCING until the next UTC day",
    )
    max_limit_distance_pct: Decimal = Field(
        Decimal(10), gt=0, description="a limit price further than this from the market is refused"
    )
    max_price_age_s: float = Field(
        10,
        gt=0,
        description="a market order is refused when the bot's price of the symbol is older "
        "than this (since it was fetched; at least venue.market_cache_s)",
    )
    require_stop_loss: bool = Field(False, description="refuse opening orders without a stop")
    max_stop_distance_pct: Decimal = Field(
        Decimal(25), gt=0, description="a stop further than this from the entry is refused"
    )
    max_signal_age_s: float = Field(
        60, gt=0, description="signals older than this (by their `ts`) are stale"
    )
    max_signal_future_s: float = Field(
        5, ge=0, description="tolerated clock difference for a `ts` in the future"
    )

    def tightened(self, override: StrategyRiskConfig) -> RiskConfig:
        """This configuration with a strategy's stricter values applied."""
        update: dict[str, object] = {}
        for name, value in override.model_dump(exclude_none=True).items():
            current = getattr(self, name)
            if name == "denied_symbols":
                update[name] = tuple(dict.fromkeys((*current, *value)))  # both lists deny
            elif isinstance(current, tuple):
                update[name] = tuple(item for item in current if item in value)
            elif isinstance(current, bool):
                update[name] = current or value  # a requirement can only be added
            elif name in _LONGER_IS_STRICTER:
                update[name] = max(current, value)
            else:
                update[name] = min(current, value)
        return self.model_copy(update=update)

    def overruled_values(self, override: StrategyRiskConfig) -> list[str]:
        """Each of a strategy's values the global one overrules (a strategy's limits only
        tighten), said as `name = value (the global's ... applies)` or `name X, Y (not in
        the global's)`: a value meant to loosen, which would otherwise go silently unapplied."""
        tightened = self.tightened(override)
        found = []
        for name, value in override.model_dump(exclude_none=True).items():
            if name == "denied_symbols":
                continue  # both lists deny: never overruled
            applied = getattr(tightened, name)
            if isinstance(applied, tuple):
                dropped = [item for item in value if item not in applied]
                if dropped:
                    found.append(f"{name} {', '.join(map(str, dropped))} (not in the global's)")
            elif applied != value:
                found.append(f"{name} = {value} (the global's {applied} applies)")
        return found


class StrategyRiskConfig(BaseModel):
    """`[strategies.<name>.risk]`: a strategy's own, stricter limits (unset: the global)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbols: tuple[ConfiguredSymbol, ...] | None = None
    denied_symbols: tuple[ConfiguredSymbol, ...] | None = None
    sides: tuple[SideName, ...] | None = Field(None, description='e.g. ["Buy"] for long-only')
    max_order_notional_usdt: Decimal | None = Field(None, gt=0, le=MAX_NUMBER)
    max_position_notional_usdt: Decimal | None = Field(None, gt=0, le=MAX_NUMBER)
    max_strategy_exposure_usdt: Decimal | None = Field(None, gt=0, le=MAX_NUMBER)
    max_open_orders: int | None = Field(None, gt=0)
    max_leverage: Decimal | None = Field(None, ge=1, le=MAX_NUMBER)
    max_orders_per_minute: int | None = Field(None, gt=0)
    max_orders_per_day: int | None = Field(None, gt=0)
    cooldown_after_loss_s: float | None = Field(None, ge=0)
    max_daily_loss_usdt: Decimal | None = Field(None, gt=0, le=MAX_NUMBER)
    max_limit_distance_pct: Decimal | None = Field(None, gt=0)
    max_price_age_s: float | None = Field(None, gt=0)
    require_stop_loss: bool | None = None
    max_stop_distance_pct: Decimal | None = Field(None, gt=0)
    max_signal_age_s: float | None = Field(None, gt=0)
