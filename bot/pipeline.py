"""The pipeline: journaled signals → strategies → risk gate → executor.

`submit` is the `SignalSink` every adapter calls: it journals the signal and queues it, and
returns before any trading happens, so senders get their answer in well under a millisecond
of work. Worker tasks take signals off the queue and run them through every strategy the
signal is routed to. Whatever happens, a decision with its reason is journaled, and the
signal is marked processed only at the end: after a crash, unprocessed signals are run
again on start-up, and deterministic orderLinkIds keep that from placing anything twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from bot import metrics
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.logs import logger
from bot.market import MarketData
from bot.messages import Decline, OrderIntent, OrderStatus, Signal, utc_now
from bot.risk.gate import RiskGate
from bot.venue.errors import VenueError
from strategies.base import Strategy

__all__ = ["NO_STRATEGY", "Pipeline", "StrategySlot"]

NO_STRATEGY: Final = "(none)"


@dataclass(frozen=True)
class StrategySlot:
    """A configured strategy: its configured name, the plug-in instance, its key, its sources.

    `name` comes from the configuration, not from the plug-in, which could change its own.
    """

    name: str
    strategy: Strategy
    key_name: str
    sources: frozenset[str]


class Pipeline:
    """Routes each signal to its strategies and their intents through the gate to the executor."""

    def __init__(
        self,
        journal: Journal,
        strategies: Mapping[str, StrategySlot],
        gate: RiskGate,
        executor: Executor,
        market: MarketData,
    ) -> None:
        self._journal = journal
        self._strategies = strategies
        self._gate = gate
        self._executor = executor
        self._market = market
        self._queue: asyncio.Queue[Signal] = asyncio.Queue()

    async def submit(self, signal: Signal) -> bool:
        """Journal `signal` durably and queue it; False if it is a duplicate."""
        if not await self._journal.call(self._journal.record_signal, signal):
            logger.info("duplicate signal ignored", source=signal.source, signal_id=signal.id)
            return False
        self._queue.put_nowait(signal)
        metrics.SIGNAL_QUEUE.set(self._queue.qsize())
        return True

    async def recover(self) -> int:
        """Queue the signals a previous run journaled but never finished processing."""
        pending = await self._journal.call(self._journal.unprocessed_signals)
        for signal in pending:
            self._queue.put_nowait(signal)
        if pending:
            logger.warning("re-queued {n} signals left unprocessed by the last run", n=len(pending))
        return len(pending)

    async def work(self) -> None:
        """One worker: process queued signals until cancelled."""
        while True:
            signal = await self._queue.get()
            metrics.SIGNAL_QUEUE.set(self._queue.qsize())
            try:
                await self.process(signal)
            except Exception:  # one bad signal must not stop the worker
                logger.exception("signal {id} failed; it stays unprocessed", id=signal.id)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued signal has been processed."""
        await self._queue.join()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def process(self, signal: Signal) -> None:
        """Run one signal through every strategy it is routed to, then mark it processed."""
        slots = self._route(signal)
        if not slots:
            reason = (
                f"strategy '{signal.strategy}' is not configured for source '{signal.source}'"
                if signal.strategy
                else f"no strategy subscribes to source '{signal.source}'"
            )
            await self._decline(
                signal, Decline(strategy=signal.strategy or NO_STRATEGY, reason=reason)
            )
        rejection = self._gate.screen(signal) if slots else None
        for slot in slots:
            if rejection is None:
                await self._run_strategy(signal, slot)
            else:
                rule, reason = rejection
                await self._decline(signal, Decline(strategy=slot.name, reason=reason), rule=rule)
        await self._journal.call(self._journal.mark_processed, signal)

    def _route(self, signal: Signal) -> list[StrategySlot]:
        return [
            slot
            for slot in self._strategies.values()
            if signal.source in slot.sources and signal.strategy in (None, slot.name)
        ]

    async def _run_strategy(self, signal: Signal, slot: StrategySlot) -> None:
        strategy = slot.strategy
        decline = partial(Decline, strategy=slot.name)
        try:
            market = await self._market.view(
                slot.key_name, signal.symbol, with_position=strategy.wants_position(signal)
            )
        except VenueError as exc:
            await self._decline(signal, decline(reason=f"market data unavailable: {exc}"))
            return
        try:
            output = strategy.on_signal(signal, market)
        except Exception as exc:  # a plug-in's bug is journaled, not fatal
            logger.exception("strategy {name} raised", name=slot.name)
            await self._decline(
                signal, decline(reason=f"strategy raised {type(exc).__name__}: {exc}")
            )
            return
        if isinstance(output, Decline):
            await self._decline(signal, decline(reason=output.reason))
            return
        problem = _foreign_or_repeated(output, slot.name, signal)
        if problem:
            # An intent names the key it trades with through its strategy, and its order
            # through (strategy, signal, leg): a plug-in must be able to change neither.
            await self._decline(signal, decline(reason=problem))
            return
        for intent in output:
            decision = self._gate.decide(intent)
            await self._journal.call(self._journal.record_decision, decision)
            metrics.DECISIONS.labels("approved" if decision.approved else "rejected").inc()
            if not decision.approved:
                logger.info("intent rejected: {reason}", reason=decision.reason, rule=decision.rule)
                continue
            event = await self._executor.execute(intent, slot.key_name)
            metrics.ORDERS.labels(event.status.value).inc()
            if event.order_id is not None:
                metrics.SIGNAL_TO_ORDER.observe((utc_now() - signal.received_at).total_seconds())
            if event.status in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED):
                self._market.forget_equity(slot.key_name)

    async def _decline(self, signal: Signal, decline: Decline, rule: str = "strategy") -> None:
        """Journal that `signal` gets no order from a strategy, by its choice or a risk rule."""
        logger.info("no order for signal {id}: {reason}", id=signal.id, reason=decline.reason)
        metrics.DECISIONS.labels("declined" if rule == "strategy" else "rejected").inc()
        await self._journal.call(self._journal.record_decline, signal, decline, rule)


def _foreign_or_repeated(intents: Sequence[OrderIntent], strategy: str, signal: Signal) -> str:
    """Why a strategy's intents cannot be executed as returned, or "" if they can."""
    if any(
        (intent.strategy, intent.signal_source, intent.signal_id)
        != (strategy, signal.source, signal.id)
        for intent in intents
    ):
        return "strategy returned an intent for another strategy or signal"
    legs = [intent.leg for intent in intents]
    if len(set(legs)) != len(legs):
        return f"strategy returned several intents for one leg (legs {legs}); number them"
    return ""
