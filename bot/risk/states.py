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

__all__ = ["BOT_SCOPE", "HaltWork", "ScopeState", "TradingState", "stricter"]

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


class HaltWork(enum.StrEnum):
    """What a halt was asked to do beyond stopping new exposure, journaled with it until
    done, so that a start after a stop or a crash that cut it short does it again."""

    NONE = ""
    #: Cancel the orders the scope had open when the halt was entered.
    CANCEL = "cancel"
    #: Cancel the scope's open orders (but the flatten's own closes), then close its
    #: positions (whether cancelling was asked or not).
    FLATTEN = "flatten"

    @classmethod
    def asked(cls, *, cancel_open: bool, flatten: bool) -> HaltWork:
        return cls.FLATTEN if flatten else cls.CANCEL if cancel_open else cls.NONE


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
