"""Trading states: ACTIVE, REDUCING, HALTED, for the whole bot and for each strategy.

REDUCING and HALTED pass only orders that reduce exposure (reduce-only); a strategy's
effective state is the stricter of its own and the bot's. A state and why it was entered
live in the journal and survive a restart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Final

__all__ = ["BOT_SCOPE", "ScopeState", "TradingState", "stricter"]

#: The scope name of the whole bot (strategy names cannot contain parentheses).
BOT_SCOPE: Final = "(bot)"


class TradingState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def may_increase(self) -> bool:
        """Whether an order that increases exposure may pass."""
        return self is TradingState.ACTIVE


_RANK: Final = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@dataclass(frozen=True)
class ScopeState:
    """A scope's state, why, and since when. `automatic`: entered by a rule (the daily loss
    limit), which lifts it at the next UTC day; a person's halt waits for `bot resume`."""

    scope: str
    state: TradingState
    reason: str
    since: datetime
    automatic: bool = False


def stricter(first: ScopeState, second: ScopeState) -> ScopeState:
    return first if _RANK[first.state] >= _RANK[second.state] else second
