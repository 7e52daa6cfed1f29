"""The pipeline: journaled signals → strategies → risk gate → executor.

`submit` is the `SignalSink` every adapter calls: it journals the signal and queues it, and
returns before any trading happens, so senders get their answer in well under a millisecond
of work.

Ordered where it matters, concurrent where it can be: each signal is queued on one lane per
(key, symbol) its strategies trade, and a lane runs its signals one at a time in arrival
order. So an `open` then a `close` of one symbol on one key are sent in that order, while
other symbols and keys run concurrently. A signal is marked processed once every lane it was
queued on has finished it; after a crash, unprocessed signals are queued again in their
original order, skipping strategies that already decided (their orders are reconciled by the
executor), and deterministic orderLinkIds keep anything from being placed twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Final

from bot import metrics
from bot.execution.executor import Executor
from bot.execution.rounding import conform
from bot.journal import Journal
from bot.logs import logger
from bot.market import MarketData
from bot.messages import Decline, Instrument, OrderIntent, RiskDecision, Signal, utc_now
from bot.risk.gate import ApprovedOrder, RiskGate, Verdict
from bot.venue.errors import KeyFatalError, VenueError
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


@dataclass
class _Job:
    """A signal's work on one lane: the strategies of that lane's key."""

    signal: Signal
    slots: list[StrategySlot]
    #: shared by the signal's jobs on all lanes: the last one to finish marks it processed
    remaining: list[int] = field(default_factory=lambda: [1])


Lane = tuple[str, str]  # (key name, symbol)


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
        self._lanes: dict[Lane, asyncio.Queue[_Job]] = {}
        self._workers: dict[Lane, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(self, signal: Signal) -> bool:
        """Journal `signal` durably and queue it; False if it is a duplicate."""
        if not await self._journal.call(self._journal.record_signal, signal):
            logger.info("duplicate signal ignored", source=signal.source, signal_id=signal.id)
            return False
        self._dispatch(signal, self._route(signal))
        return True

    async def recover(self) -> int:
        """Queue, in their original order, the signals a previous run journaled but never
        finished; strategies that already decided about one are not asked again."""
        pending = await self._journal.call(self._journal.unprocessed_signals)
        for signal in pending:
            decided = await self._journal.call(
                self._journal.decided_strategies, signal.source, signal.id
            )
            todo = [slot for slot in self._route(signal) if slot.name not in decided]
            if decided and not todo:
                await self._journal.call(self._journal.mark_processed, signal)
                continue
            self._dispatch(signal, todo)
        if pending:
            logger.warning("re-queued {n} signals left unprocessed by the last run", n=len(pending))
        return len(pending)

    async def run(self) -> None:
        """Own the lanes' workers until cancelled (cancelling stops them all)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            for lane in self._lanes:
                self._start_worker(lane)
            try:
                await asyncio.Event().wait()
            finally:
                self._group = None

    async def drain(self) -> None:
        """Wait until every queued signal has been processed."""
        await self._idle.wait()

    @property
    def queued(self) -> int:
        return self._outstanding

    # lanes ----------------------------------------------------------------------------------

    def _dispatch(self, signal: Signal, slots: list[StrategySlot]) -> None:
        """Queue `signal` on the lane of each (key, symbol) its strategies trade with; a
        signal no strategy takes gets its decline on a lane of its own symbol."""
        by_lane: dict[Lane, list[StrategySlot]] = {}
        for slot in slots:
            by_lane.setdefault((slot.key_name, signal.symbol), []).append(slot)
        if not by_lane:
            by_lane[("", signal.symbol)] = []
        remaining = [len(by_lane)]
        for lane, lane_slots in by_lane.items():
            self._queue(lane).put_nowait(_Job(signal, lane_slots, remaining))
            self._outstanding += 1
        self._idle.clear()
        metrics.SIGNAL_QUEUE.set(self._outstanding)

    def _queue(self, lane: Lane) -> asyncio.Queue[_Job]:
        if lane not in self._lanes:
            self._lanes[lane] = asyncio.Queue()
            if self._group is not None:
                self._start_worker(lane)
        return self._lanes[lane]

    def _start_worker(self, lane: Lane) -> None:
        assert self._group is not None
        if lane not in self._workers:
            self._workers[lane] = self._group.create_task(self._work(lane))

    async def _work(self, lane: Lane) -> None:
        """One lane: its jobs one at a time, in arrival order, until none is left.

        An idle lane goes away (a new signal starts it again), so lanes never pile up
        whatever symbols arrive. Nothing is awaited between finding the queue empty and
        removing the lane, so no job can be queued on a lane that is going away.
        """
        queue = self._lanes[lane]
        try:
            while not queue.empty():
                job = queue.get_nowait()
                try:
                    await self._run_job(job)
                except Exception:  # one bad signal must not stop the lane
                    logger.exception("signal {id} failed; it stays unprocessed", id=job.signal.id)
                finally:
                    self._outstanding -= 1
                    metrics.SIGNAL_QUEUE.set(self._outstanding)
                    if self._outstanding == 0:
                        self._idle.set()
        finally:
            del self._lanes[lane], self._workers[lane]

    async def _run_job(self, job: _Job) -> None:
        await self._run_slots(job.signal, job.slots)
        job.remaining[0] -= 1
        if job.remaining[0] == 0:
            await self._journal.call(self._journal.mark_processed, job.signal)

    # strategies -----------------------------------------------------------------------------

    async def _run_slots(self, signal: Signal, slots: Sequence[StrategySlot]) -> None:
        if not slots:
            reason = (
                f"strategy '{signal.strategy}' is not configured for source '{signal.source}'"
                if signal.strategy
                else f"no strategy subscribes to source '{signal.source}'"
            )
            await self._decline(
                signal, Decline(strategy=signal.strategy or NO_STRATEGY, reason=reason)
            )
            return
        rejection = self._gate.screen(signal)
        for slot in slots:
            if rejection is None:
                await self._run_strategy(signal, slot)
            else:
                rule, reason = rejection
                await self._decline(signal, Decline(strategy=slot.name, reason=reason), rule=rule)

    def _route(self, signal: Signal) -> list[StrategySlot]:
        return [
            slot
            for slot in self._strategies.values()
            if signal.source in slot.sources and signal.strategy in (None, slot.name)
        ]

    async def _run_strategy(self, signal: Signal, slot: StrategySlot) -> None:
        strategy = slot.strategy
        decline = partial(Decline, strategy=slot.name)
        disabled = self._executor.disabled_reason(slot.key_name)
        if disabled is not None:
            await self._decline(
                signal,
                decline(reason=f"key {slot.key_name} is disabled by the venue: {disabled}"),
                rule="KEY_DISABLED",
            )
            return
        try:
            market = await self._market.view(
                slot.key_name,
                slot.name,
                signal.symbol,
                with_position=strategy.wants_position(signal),
            )
        except KeyFatalError as exc:
            self._executor.disable_key(slot.key_name, exc)
            await self._decline(
                signal,
                decline(reason=f"key {slot.key_name} is disabled by the venue: {exc.message}"),
                rule="KEY_DISABLED",
            )
            return
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
        verdicts = [self.decide(intent, market.instrument, market.last_price) for intent in output]
        for verdict in verdicts:
            if isinstance(verdict, ApprovedOrder):
                metrics.DECISIONS.labels("approved").inc()
            else:
                metrics.DECISIONS.labels("rejected").inc()
                logger.info("intent rejected: {reason}", reason=verdict.reason, rule=verdict.rule)
        events = await self._executor.execute_all(verdicts, slot.key_name)
        if any(event.order_id is not None for event in events):
            metrics.SIGNAL_TO_ORDER.observe((utc_now() - signal.received_at).total_seconds())

    def decide(self, intent: OrderIntent, instrument: Instrument, price: Decimal) -> Verdict:
        """The intent on the instrument's grid, judged by the gate at the venue's `price`; or
        why it cannot be sent."""
        conformed = conform(intent, instrument, price)
        if isinstance(conformed, str):
            return RiskDecision(
                intent=intent, approved=False, rule="INSTRUMENT_RULES", reason=conformed
            )
        return self._gate.decide(
            conformed,
            price=price,
            prices=self._market.known_prices(),
            price_age_s=self._market.price_age_s(conformed.symbol),
        )

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
