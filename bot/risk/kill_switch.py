"""The kill switch: halt (or resume) a scope at once, then, if asked, cancel its open orders
and flatten its positions.

The state is set in the gate first, so the very next intent sees it (queued ones included),
then journaled before the operator is answered, so it survives a crash. Cancelling waits for
orders being sent right now to land, so none slips past the halt. Flattening sends one
reduce-only market order per position of each strategy in scope (its own book, not the key's
whole position); each is approved by the gate like any other order and journaled under a
signal of source `admin`, so `bot orders` shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from bot.account import Account
from bot.execution.executor import Executor
from bot.execution.orders import MAY_EXIST_AT_VENUE, OPEN_AT_VENUE
from bot.journal import Journal, OrderRecord
from bot.logs import logger
from bot.market import MarketData
from bot.messages import (
    OrderIntent,
    OrderType,
    Side,
    Signal,
    SignalAction,
    utc_now,
)
from bot.risk.gate import RiskGate, Verdict
from bot.risk.states import BOT_SCOPE, ScopeState
from bot.venue.errors import VenueError
from strategies.base import MarketView

__all__ = ["FLATTEN_SOURCE", "KillSwitch", "announce_state"]

#: The signal source of the orders a flatten sends.
FLATTEN_SOURCE: Final = "admin"
#: How long a cancel waits for orders being sent right now to land.
_CANCEL_WAIT_S: Final = 10.0
_CANCEL_POLL_S: Final = 0.1


def announce_state(state: ScopeState) -> None:
    logger.warning(
        "trading state of {scope}: {state} ({reason})",
        scope=state.scope,
        state=state.state.value,
        reason=state.reason,
    )


class KillSwitch:
    """Enters trading states for the operator, with cancel and flatten on request."""

    def __init__(
        self,
        gate: RiskGate,
        executor: Executor,
        journal: Journal,
        market: MarketData,
        account: Account,
        key_of: Mapping[str, str],
        decide: Callable[[OrderIntent, MarketView], Verdict],
    ) -> None:
        """`key_of` maps each configured strategy to its key name; `decide` is the
        pipeline's way to an approval (the instrument's grid, then the gate)."""
        self._gate = gate
        self._executor = executor
        self._journal = journal
        self._market = market
        self._account = account
        self._key_of = key_of
        self._decide = decide

    async def enter(
        self, state: ScopeState, *, cancel_open: bool = False, flatten: bool = False
    ) -> dict[str, Any]:
        """Enter `state`; then cancel and flatten as asked. Returns what was done."""
        self._gate.set_state(state)  # first: the very next intent sees it
        announce_state(state)
        await self._journal.call(self._journal.record_trading_state, state)
        report: dict[str, Any] = {
            "scope": state.scope,
            "state": state.state.value,
            "reason": state.reason,
        }
        strategies = (
            frozenset(self._key_of) if state.scope == BOT_SCOPE else frozenset({state.scope})
        )
        if cancel_open:
            report["cancelled"] = await self._cancel_open(strategies)
        if flatten:
            report["flattened"] = await self._flatten(strategies)
        return report

    async def _cancel_open(self, strategies: frozenset[str]) -> list[dict[str, str]]:
        """Cancel every order of `strategies` that may be open at the venue; an order being
        sent right now is cancelled once it has landed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CANCEL_WAIT_S
        done: dict[str, dict[str, str]] = {}
        while True:
            records = [
                record
                for record in await self._journal.call(self._journal.unfinished_orders)
                if record.request.strategy in strategies
                and record.status in OPEN_AT_VENUE | MAY_EXIST_AT_VENUE
                and record.request.order_link_id not in done
            ]
            busy = self._executor.in_flight()
            waiting = False
            for record in records:
                if record.request.order_link_id in busy:
                    waiting = True
                    continue
                done[record.request.order_link_id] = await self._cancel(record)
            if not waiting:
                break
            if loop.time() > deadline:
                logger.warning("cancel: orders still being sent after {s:g} s", s=_CANCEL_WAIT_S)
                break
            await asyncio.sleep(_CANCEL_POLL_S)
        return list(done.values())

    async def _cancel(self, record: OrderRecord) -> dict[str, str]:
        request = record.request
        row = {"order_link_id": request.order_link_id, "strategy": request.strategy}
        try:
            event = await self._executor.cancel(request)
        except VenueError as exc:
            logger.error("cancel of {id} failed: {error}", id=request.order_link_id, error=exc)
            return row | {"status": "cancel failed", "reason": str(exc)}
        status = event.status.value if event is not None else "not at the venue"
        return row | {"status": status}

    async def _flatten(self, strategies: frozenset[str]) -> list[dict[str, str]]:
        """One reduce-only market order per open position of `strategies`."""
        stamp = utc_now().strftime("%Y%m%dT%H%M%S%f")
        books = [
            book
            for book in self._account.projection.books()
            if book.strategy in strategies and book.size != 0
        ]
        results = []
        for index, book in enumerate(books):
            row = {"strategy": book.strategy, "symbol": book.symbol, "qty": str(abs(book.size))}
            signal = Signal(
                source=FLATTEN_SOURCE,
                id=f"flatten-{stamp}-{index}",
                symbol=book.symbol,
                action=SignalAction.CLOSE,
                strategy=book.strategy,
                ts=utc_now(),
            )
            try:
                status = await self._close(signal, book.key_name, book.size)
            except VenueError as exc:
                logger.error("flatten of {symbol} failed: {error}", symbol=book.symbol, error=exc)
                status = f"failed: {exc}"
            results.append(row | {"status": status})
        return results

    async def _close(self, signal: Signal, key_name: str, size: Decimal) -> str:
        """Close `size` (signed) of `signal.strategy`'s position: journaled, gated, sent."""
        assert signal.strategy is not None
        view = await self._market.view(
            key_name, signal.strategy, signal.symbol, with_position=False
        )
        intent = OrderIntent(
            strategy=signal.strategy,
            signal_source=signal.source,
            signal_id=signal.id,
            symbol=signal.symbol,
            side=Side.SELL if size > 0 else Side.BUY,
            order_type=OrderType.MARKET,
            qty=abs(size),
            reference_price=view.last_price,
            reduce_only=True,
            signal_ts=signal.ts,
        )
        await self._journal.call(self._journal.record_signal, signal)
        try:
            verdict = self._decide(intent, view)
            events = await self._executor.execute_all([verdict], key_name)
            if not events:
                return f"rejected ({verdict.rule}): {verdict.reason}"
            return events[0].status.value
        finally:
            await self._journal.call(self._journal.mark_processed, signal)
