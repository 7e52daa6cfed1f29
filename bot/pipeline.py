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
import dataclasses
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from operator import methodcaller
from typing import Final

from pydantic import ValidationError

from bot import metrics
from bot.bounded import remember
from bot.config import ConfigError
from bot.execution.executor import Executor
from bot.execution.orders import close_shortfall, closed_or_turned
from bot.execution.rounding import conform, conform_stop_move, grid_moves
from bot.journal import LOCK_WAIT_S, FillBooking, Journal
from bot.logs import logger
from bot.market import MarketData
from bot.messages import (
    Decline,
    Execution,
    Instrument,
    OrderEvent,
    OrderIntent,
    OrderStatus,
    RiskDecision,
    Signal,
    SignalAction,
    StopMove,
    field_problems,
    utc_now,
)
from bot.risk.gate import STOP_SIDE, ApprovedOrder, RiskGate, Verdict, stop_move_problem
from bot.risk.kill_switch import FLATTEN_SOURCE, announce_state
from bot.risk.states import ScopeState, TradingState
from bot.runner import Failed, StrategyRunner
from bot.venue.errors import KeyFatalError, VenueError
from strategies.base import (
    Fill,
    OrderRejection,
    Strategy,
    StrategyContext,
    StrategyOutput,
    StrategyParams,
)

__all__ = [
    "NO_STRATEGY",
    "SIGNAL_WRITE_WAIT_S",
    "TIMER_SOURCE",
    "Pipeline",
    "StrategySlot",
    "StrategyStartError",
]

NO_STRATEGY: Final = "(none)"
#: How long a new signal's journal write may take before its sender is answered that it was
#: not stored (a webhook's `503`): the journal's health check's bound, and well inside
#: TradingView's 3 s. Another program holding the journal's lock (a backup) cannot make
#: senders wait longer, however many queue, nor store a signal whose sender gave up.
SIGNAL_WRITE_WAIT_S: Final = LOCK_WAIT_S
#: The rule journaled when a strategy's code raised or overran (the journal's trace says
#: "failed" for it).
STRATEGY_FAILED: Final = "STRATEGY_FAILED"
#: `on_start` may load a model or warm a cache: its budget, not the per-call one.
ON_START_BUDGET_S: Final = 30.0
#: Rounds of fetching the prices exposure is valued at before an intent is judged: each may
#: find that another lane added exposure in one more symbol meanwhile.
_PRICE_ROUNDS: Final = 3
#: The source of the synthetic signals `on_timer` gets.
TIMER_SOURCE: Final = "timer"
#: How the reason of a strategy's halt for its failing code begins (no timer ticks then).
FAILURE_HALT: Final = "its code failed"
#: When an `on_fill` that could not run (no market data, the key refused) is tried again:
#: soon, for a passing gap in market data, then each minute for an hour, for an outage of
#: the venue; after the last try it is left due for the next start.
FILL_HOOK_RETRIES_S: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
FILL_HOOK_SLOW_RETRIES_S: Final = (60.0,) * 60
#: When a signal whose work the journal could not write (a full disk, a lock another program
#: held) is run again: its sender was answered 202, so it is not left for the next start
#: (which would find it stale) while the journal writes again; after the last, it is.
JOURNAL_RETRIES_S: Final = FILL_HOOK_RETRIES_S + FILL_HOOK_SLOW_RETRIES_S
ZERO: Final = Decimal(0)
#: How long a signal waits for the cancels of its strategy's reduce-only orders whose position
#: closed or turned (stranded) before it is decided without them.
STRANDED_WAIT_S: Final = 5.0
#: A stop move's outcome while the price is past the stop it asks for, before its close.
CROSSED: Final = "crossed"
#: How many reused signal ids are remembered, each warned of once.
_REUSED_IDS_KEPT: Final = 1_000
#: What a signal asks to trade (every field but who sent it, when, and its raw body): two
#: signals under one id that differ in any of these are two signals (the id reused), not a
#: resend of one.
_SIGNAL_TERMS: Final = tuple(
    name for name in Signal.model_fields if name not in {"source", "id", "ts", "received_at", "raw"}
)


class StrategyStartError(ConfigError):
    """A strategy's `on_start` raised or overran: the bot does not start (most often its
    parameters, so it reads like a configuration error)."""


@dataclass(frozen=True)
class StrategySlot:
    """A configured strategy: its configured name, the plug-in instance, its key, its sources.

    `name` comes from the configuration, not from the plug-in, which could change its own.
    Its params and timer attributes are read from the plug-in once, as the slot is made: on
    the event loop an attribute that is a slow property would hold up every lane.
    """

    name: str
    strategy: Strategy
    key_name: str
    sources: frozenset[str]
    params: StrategyParams = field(init=False)
    timer_interval_s: float | None = field(init=False)
    timer_symbols: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", self.strategy.params)
        object.__setattr__(self, "timer_interval_s", self.strategy.timer_interval_s)
        object.__setattr__(self, "timer_symbols", tuple(self.strategy.timer_symbols))


@dataclass
class _Job:
    """A signal's work on one lane: the strategies of that lane's key."""

    signal: Signal
    slots: list[StrategySlot]
    #: shared by the signal's jobs on all lanes: the last one to finish marks it processed
    remaining: list[int] = field(default_factory=lambda: [1])


@dataclass(frozen=True)
class _HookJob:
    """A strategy hook's work on a lane (after what was queued there before it)."""

    label: str
    run: Callable[[], Awaitable[None]]


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
        runner: StrategyRunner,
        booked_qty: Callable[[str], Decimal] = lambda order_link_id: ZERO,
        strategy_size: Callable[[str, str, str], Decimal] | None = None,
    ) -> None:
        """`runner` runs the strategies' code (each on its own thread, within its budget);
        `booked_qty(orderLinkId)` says how much of an order the account's books hold, and
        `strategy_size(key, strategy, symbol)` a strategy's signed position there (None: the
        hooks are told it is not known)."""
        self._journal = journal
        self._strategies = strategies
        # The strategies with an `on_fill` hook: whose fills queue one.
        self._hooked = frozenset(
            slot.name for slot in strategies.values() if _overrides(slot.strategy, "on_fill")
        )
        self._strategy_size = strategy_size
        self._gate = gate
        self._executor = executor
        self._market = market
        self._runner = runner
        self._booked_qty = booked_qty
        self._lanes: dict[Lane, asyncio.Queue[_Job | _HookJob]] = {}
        self._workers: dict[Lane, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._outstanding = 0
        # Fills (by execId) whose `on_fill` is queued or running: each is queued once.
        self._fill_hooks: set[str] = set()
        # (strategy, symbol) of each timer tick queued or running: the next waits for it.
        self._ticking: set[tuple[str, str]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        # (source, id) of the signals whose id was reused, said once each (bounded).
        self._reused: OrderedDict[tuple[str, str], None] = OrderedDict()
        # strategy -> the halt (a person's) it stood under when its code kept failing.
        self._failed_while_halted: dict[str, ScopeState] = {}

    async def submit(self, signal: Signal) -> bool:
        """Journal `signal` durably and queue it; False if it is a duplicate. TimeoutError
        (never stored) if the journal does not take it within `SIGNAL_WRITE_WAIT_S`."""
        journal = self._journal
        if not await journal.call_within(SIGNAL_WRITE_WAIT_S, journal.record_signal, signal):
            logger.info("duplicate signal ignored", source=signal.source, signal_id=signal.id)
            metrics.SIGNALS.labels(signal.source, "duplicate").inc()
            await self._warn_if_reused(signal)
            return False
        metrics.SIGNALS.labels(signal.source, "accepted").inc()
        metrics.LAST_SIGNAL.labels(signal.source).set_to_current_time()
        self._dispatch(signal, self._route(signal))
        return True

    async def _warn_if_reused(self, signal: Signal) -> None:
        """Say so when a duplicate's id was used before for another signal (another symbol,
        side, action or price, not a resend of the same one): the first is kept, so the
        second is never traded, which its sender must hear of, once (a sender retrying it
        is not told again)."""
        if (signal.source, signal.id) in self._reused:
            return
        first = await self._journal.call(self._journal.signal, signal.source, signal.id)
        if first is None:
            return
        changed = [name for name in _SIGNAL_TERMS if getattr(first, name) != getattr(signal, name)]
        if changed:
            remember(self._reused, (signal.source, signal.id), None, _REUSED_IDS_KEPT)
            logger.bind(notify="rejection").warning(
                "signal id {signal_id} of {source} was used before for another signal (another "
                "{fields}): the first is kept and this one is not traded; give each "
                "signal its own id",
                signal_id=signal.id,
                source=signal.source,
                fields=", ".join(changed),
            )

    async def recover(self) -> int:
        """Queue the fill hooks a previous run did not finish, then, in their original
        order, the signals it journaled but never finished; strategies that already decided
        about one are not asked again. Returns how many signals were queued again."""
        hooks = await self._journal.call(self._journal.due_fill_hooks)
        for fill, booking in hooks:
            self._queue_fill_hook(fill, booking)
        if hooks:
            logger.warning(
                "re-queued {n} strategy fill hooks (on_fill) left unfinished by the last run",
                n=len(hooks),
            )
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

    def _queue_hook(self, lane: Lane, label: str, run: Callable[[], Awaitable[None]]) -> None:
        self._queue(lane).put_nowait(_HookJob(label, run))
        self._outstanding += 1
        self._idle.clear()
        metrics.SIGNAL_QUEUE.set(self._outstanding)

    def _queue(self, lane: Lane) -> asyncio.Queue[_Job | _HookJob]:
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
                    if isinstance(job, _HookJob):
                        await job.run()
                    else:
                        await self._run_until_journaled(job)
                except Exception:  # one bad signal or hook must not stop the lane
                    if isinstance(job, _HookJob):
                        logger.exception("{what} failed", what=job.label)
                    else:
                        logger.exception(
                            "signal {id} failed; it stays unprocessed", id=job.signal.id
                        )
                finally:
                    self._outstanding -= 1
                    metrics.SIGNAL_QUEUE.set(self._outstanding)
                    if self._outstanding == 0:
                        self._idle.set()
        finally:
            del self._lanes[lane], self._workers[lane]

    async def _run_until_journaled(self, job: _Job) -> None:
        """Run a signal's job; one whose work the journal could not write (a full disk, a
        lock another program held) runs again after each of `JOURNAL_RETRIES_S`, as a start
        would (its strategies whose decision was journaled are not asked again: their orders
        are carried on, `Executor.resume_decided`), one line said of it each time. Its lane
        waits meanwhile: a later signal of the same key and symbol (a close) never overtakes
        it."""
        for attempt, delay in enumerate((*JOURNAL_RETRIES_S, None)):
            try:
                await self._run_job(job, again=attempt > 0)
            except sqlite3.OperationalError as exc:
                then = "on the next start" if delay is None else f"in {delay:g} s"
                logger.error(
                    "signal {id} could not be journaled ({error}); it runs again {then}",
                    id=job.signal.id,
                    error=str(exc),
                    then=then,
                )
            else:
                return
            if delay is not None:
                await asyncio.sleep(delay)

    async def _run_job(self, job: _Job, *, again: bool = False) -> None:
        slots = job.slots
        if again and slots:  # run before: who decided then is not asked again
            decided = await self._carry_on_decided(job.signal, [slot.name for slot in slots])
            slots = [slot for slot in slots if slot.name not in decided]
        if slots or not job.slots:
            await self._run_slots(job.signal, slots)
        job.remaining[0] -= 1
        if job.remaining[0] == 0:
            # Nothing waits for it: it goes with the deferred writes (its order's
            # acknowledgement and reports, the late ones too) at their window's end (a crash
            # before it only means the signal is looked at again, its decided strategies
            # skipped).
            self._journal.defer(partial(self._journal.mark_processed, job.signal))

    async def _carry_on_decided(self, signal: Signal, strategies: Sequence[str]) -> set[str]:
        """Which of `strategies` decided on `signal` in an earlier run the journal holds; their
        orders are carried on (`Executor.resume_decided`): a leg a journal failure left
        unsent has no other way out before the signal goes stale."""
        journaled = await self._journal.call(
            self._journal.decided_strategies, signal.source, signal.id
        )
        decided = {name for name in strategies if name in journaled}
        await self._executor.resume_decided(signal.source, signal.id, decided)
        return decided

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
        if signal.action is SignalAction.CLOSE:
            # A close flattens: the strategy's entries still open in the symbol go first, and
            # what filled of them is in the position it then closes.
            await self._executor.withdraw_openings(slot.key_name, slot.name, signal.symbol)
        context = await self._context(signal, slot)
        if context is None:
            return
        output = await self._hear(slot, "on_signal", signal, context)
        if output is None:
            output = Decline(strategy=slot.name, reason="on_signal returned None, not a list")
        elif isinstance(output, Sequence) and not output:
            output = Decline(strategy=slot.name, reason="no intents")
        decided = await self._act(signal, slot, context, output, may_hear_rejections=True)
        if decided is False:  # stop moves only (journaled on their own): the signal's answer
            await self._decline(
                signal, Decline(strategy=slot.name, reason="no orders: stop moves only")
            )

    async def _let_stranded_go(self, slot: StrategySlot, symbol: str) -> None:
        """Wait, up to `STRANDED_WAIT_S`, for the cancels of the strategy's reduce-only orders
        in `symbol` whose position closed or turned: left resting, one would take profit on
        the position this signal opens or turns back, at a level meant for the gone one."""
        stranded = self._executor.stranded()
        if not stranded:
            return
        mine = [
            record.request.order_link_id
            for record in self._journal.open_orders_of(slot.key_name, slot.name, symbol)
            if record.request.order_link_id in stranded
        ]
        if mine:
            await self._executor.stranded_cancelled(mine, STRANDED_WAIT_S)

    async def _context(self, signal: Signal, slot: StrategySlot) -> StrategyContext | None:
        """What the strategy may know for `signal`; None (the decline journaled) when the
        key is disabled or the venue cannot say."""
        decline = partial(Decline, strategy=slot.name)
        disabled = self._executor.disabled_reason(slot.key_name)
        if disabled is not None:
            await self._decline(
                signal,
                decline(reason=f"key {slot.key_name} is disabled by the venue: {disabled}"),
                rule="KEY_DISABLED",
            )
            return None
        await self._let_stranded_go(slot, signal.symbol)
        try:
            context = await self._market.context(
                slot.key_name,
                slot.name,
                slot.params,
                signal.symbol,
                orders_today=self._gate.counts.today(slot.name, utc_now()),
            )
        except KeyFatalError as exc:
            self._executor.disable_key(slot.key_name, exc)
            await self._decline(
                signal,
                decline(reason=f"key {slot.key_name} is disabled by the venue: {exc.message}"),
                rule="KEY_DISABLED",
            )
        except VenueError as exc:
            await self._decline(
                signal, decline(reason=f"market data unavailable: {exc}"), rule="MARKET_DATA"
            )
        else:
            stranded = self._executor.stranded()
            if stranded and any(o.order_link_id in stranded for o in context.open_orders):
                # Still being cancelled after the wait, their position closed: not open for
                # what comes next (a ladder counts its earlier targets against the position
                # it holds now).
                kept = tuple(o for o in context.open_orders if o.order_link_id not in stranded)
                context = dataclasses.replace(context, open_orders=kept)
            return context
        return None

    async def _act(
        self,
        signal: Signal,
        slot: StrategySlot,
        context: StrategyContext,
        output: StrategyOutput | Failed | None,
        *,
        may_hear_rejections: bool,
        cause: Execution | None = None,
    ) -> bool | None:
        """Carry out what a strategy's call returned: journal a decline or failure, move
        stops, and send intents through the gate to the executor. With
        `may_hear_rejections`, the strategy's `on_order_rejected` hears of each intent the
        gate or the venue refused (never for what that hook itself returned: no loops).
        True if it decided an order (an intent, or a stop move's close), False if it moved
        stops only, None if there was nothing to carry out (nothing, or what it journaled as
        a decline or failure)."""
        if output is None:
            return None
        if isinstance(output, Failed):
            await self._decline(
                signal, Decline(strategy=slot.name, reason=output.reason), rule=STRATEGY_FAILED
            )
            if output.halt:
                await self._halt(slot.name, output.reason)
            return None
        if isinstance(output, Decline):
            await self._decline(signal, Decline(strategy=slot.name, reason=output.reason))
            return None
        # The bot's own objects, each checked on the strategy's thread (`_answer`).
        items = list(output)
        closes = [
            await self._move_stop(slot, move, context, cause)
            for move in items
            if isinstance(move, StopMove)
        ]
        intents = [intent for intent in items if isinstance(intent, OrderIntent)]
        if intents:
            await self._execute(signal, slot, context, intents, may_hear_rejections)
        return bool(intents) or any(closes)

    async def _execute(
        self,
        signal: Signal,
        slot: StrategySlot,
        context: StrategyContext,
        intents: Sequence[OrderIntent],
        may_hear_rejections: bool,
    ) -> None:
        """Judge the intents, send the approved ones, and tell the strategy what was refused."""
        # The intents are judged at the symbol's price now, not at the context's: the price
        # may have moved while the strategy thought (or, for on_order_rejected's answer,
        # while the first orders were sent), and an order's notional is the venue's.
        prices = await self._market.current_prices(slot.key_name, {context.symbol})
        price = prices.get(context.symbol, context.last_price)  # none now: the latest known
        if not all(intent.reduce_only for intent in intents):  # exposure is counted
            # While prices are fetched another lane may add exposure in one more symbol.
            for _ in range(_PRICE_ROUNDS):
                wanted = self._gate.exposure_symbols(slot.name) - {context.symbol} - prices.keys()
                found = await self._market.current_prices(slot.key_name, wanted) if wanted else {}
                prices.update(found)
                if not found:
                    break  # all there, or none to be had now: the gate refuses what is missing
        verdicts = [self.decide(intent, context.instrument, price, prices) for intent in intents]
        for verdict in verdicts:
            if not isinstance(verdict, ApprovedOrder):
                logger.bind(notify="rejection").info(
                    "intent rejected: {reason}",
                    reason=verdict.reason,
                    rule=verdict.rule,
                    strategy=slot.name,
                    signal_id=signal.id,
                )
        events = await self._executor.execute_all(verdicts, slot.key_name)
        if any(event.order_id is not None for event in events):
            metrics.SIGNAL_TO_ORDER.observe((utc_now() - signal.received_at).total_seconds())
        if may_hear_rejections and _overrides(slot.strategy, "on_order_rejected"):
            for rejection in _rejections(verdicts, events):
                output = await self._hear(slot, "on_order_rejected", signal, context, rejection)
                repeated = await self._decided_again(signal, slot, output)
                if repeated:
                    reason = (
                        f"on_order_rejected returned leg {', '.join(map(str, repeated))} again, "
                        "which this signal has decided already (placed or refused): a leg is "
                        "one order, so a retry needs a leg of its own (intent(..., leg=N))"
                    )
                    await self._decline(signal, Decline(strategy=slot.name, reason=reason))
                    continue
                await self._act(signal, slot, context, output, may_hear_rejections=False)

    async def _decided_again(
        self, signal: Signal, slot: StrategySlot, output: StrategyOutput | Failed | None
    ) -> list[int]:
        """The legs of `output` the strategy has decided already for `signal`: asked for
        again, they would be approved and counted by the gate, and never sent (the leg's
        orderLinkId is taken)."""
        if not isinstance(output, list | tuple):
            return []
        legs = {item.leg for item in output if isinstance(item, OrderIntent)} | {
            item.close_leg_if_crossed
            for item in output
            if isinstance(item, StopMove) and item.close_leg_if_crossed is not None
        }
        if not legs:
            return []
        decided, _ = await self._journal.call(
            self._journal.carried_out, signal.source, signal.id, slot.name, ""
        )
        return sorted(legs & decided)

    async def _move_stop(
        self,
        slot: StrategySlot,
        move: StopMove,
        context: StrategyContext,
        cause: Execution | None = None,
    ) -> bool:
        """Round, check and send a strategy's stop move, or close its position at market if
        the price has crossed the stop and the move asks for that; journal what came of it
        (with the fill whose hook asked for it, `cause`). True if it decided a close."""
        held = context.positions.get(move.symbol)
        qty = held.qty if held else ZERO
        closing = False
        try:
            instrument = (
                context.instrument
                if context.instrument.symbol == move.symbol
                else (await self._market.quote(slot.key_name, move.symbol))[0]
            )
            # Afresh, not the context's cached price: a target reached within the cache's
            # age would make a break-even stop look like it sits at the price.
            price = await self._market.fresh_price(slot.key_name, move.symbol)
        except VenueError as exc:
            outcome, reason = "rejected", f"NO_PRICE: the price cannot be read: {exc}"
        else:
            conformed = conform_stop_move(move, instrument, long=qty > 0)
            if isinstance(conformed, str):
                outcome, reason = "rejected", f"INSTRUMENT_RULES: {conformed}"
            else:
                move = conformed
                outcome, reason, price = await self._set_stop(slot, move, qty, price)
            closing = outcome == CROSSED
            if closing:
                outcome, reason = await self._close_crossed(
                    slot, move, instrument, qty, price, reason
                )
        # A stop the strategy wanted and did not get leaves its position less protected than
        # it planned, and a close it did not ask for in so many words is news: the operator
        # hears of both. Unless the venue refused it because the position closed meanwhile
        # (its last targets, or its stop, filled while the move was on its way: Bybit's 10001
        # "zero position"): nothing is left to protect.
        moot = outcome == "rejected" and self._closed_since(slot, move.symbol, qty)
        if moot:
            reason = f"{reason}; the position closed (or turned) meanwhile: nothing left to protect"
        log = logger.info if outcome == "moved" or moot else logger.bind(notify="rejection").warning
        log(
            "stop move of {strategy} on {symbol} to {stop}: {outcome} ({reason})",
            strategy=slot.name,
            symbol=move.symbol,
            stop=move.stop_loss,
            outcome=outcome,
            reason=reason,
        )
        await self._journal.call(
            self._journal.record_stop_move,
            move,
            slot.key_name,
            outcome,
            reason,
            cause.exec_id if cause is not None else None,
        )
        return closing

    def _closed_since(self, slot: StrategySlot, symbol: str, held: Decimal) -> bool:
        """Whether the strategy's books no longer hold the position `held` (signed) it had
        in `symbol` when it asked for a stop move: flat, or turned (False while unknown, or if
        it held nothing)."""
        if self._strategy_size is None:
            return False
        return closed_or_turned(held, self._strategy_size(slot.key_name, slot.name, symbol))

    async def _set_stop(
        self, slot: StrategySlot, move: StopMove, qty: Decimal, price: Decimal
    ) -> tuple[str, str, Decimal]:
        """Check the move against the position and `price`, then send it: (outcome, why, the
        price last read), the outcome the executor's, or `rejected`, or `crossed` when the
        price is past the stop and the move names a leg to close with (checked again after
        the venue's no: the price may have moved since it was read)."""
        problem = stop_move_problem(move, qty, price)
        if problem is None:
            outcome, reason = await self._executor.move_stop(move, slot.key_name)
            if outcome != "rejected" or move.close_leg_if_crossed is None:
                return outcome, reason, price
            try:
                price = await self._market.fresh_price(slot.key_name, move.symbol)
            except VenueError:
                return outcome, reason, price  # unreadable: the venue's no stands
            problem = stop_move_problem(move, qty, price)
            if problem is None or problem[0] != STOP_SIDE:
                return outcome, reason, price
        rule, why = problem
        crossed = rule == STOP_SIDE and move.close_leg_if_crossed is not None
        return (CROSSED if crossed else "rejected"), f"{rule}: {why}", price

    async def _close_crossed(
        self,
        slot: StrategySlot,
        move: StopMove,
        instrument: Instrument,
        qty: Decimal,
        price: Decimal,
        crossed: str,
    ) -> tuple[str, str]:
        """Close the strategy's position at market, as the leg the move names, because the
        price has crossed the stop it wanted: what that stop would have done. The close is
        judged and journaled first; then its resting reduce-only orders there (a ladder's
        targets), which would leave it no room, are cancelled; then it is sent. A crash on
        the way leaves it to the next start, which does the same while the position is held
        (`OrderRequest.closes_position`). Returns (`closed` or `rejected`, why)."""
        assert move.close_leg_if_crossed is not None
        intent = OrderIntent.close_at_market(
            strategy=slot.name,
            signal_source=move.signal_source,
            signal_id=move.signal_id,
            leg=move.close_leg_if_crossed,
            symbol=move.symbol,
            long=qty > 0,
            qty=abs(qty),
            price=price,
            signal_ts=utc_now(),  # decided now, whatever the age of the signal it protects
        )
        verdict = self.decide(intent, instrument, price, {})  # a close: no exposure
        if not isinstance(verdict, ApprovedOrder):  # nothing is cancelled for a close refused
            await self._executor.execute_all([verdict], slot.key_name)  # journals the refusal
            return "rejected", f"{crossed}; its close at market was refused: {verdict.reason}"
        (event,) = await self._executor.execute_all([verdict], slot.key_name, closes_position=True)
        why = close_shortfall(event, verdict.decision.intent.qty)  # an ERROR already
        if why is not None:
            return "rejected", f"{crossed}; its close at market did not close it: {why}"
        return "closed", (
            f"{crossed}: the position was closed at market instead, as leg "
            f"{move.close_leg_if_crossed} (order {event.status.value})"
        )

    async def _halt(self, strategy: str, reason: str) -> None:
        """Halt a strategy that keeps failing: opening orders refused until a person resumes
        it (`bot resume --strategy NAME`); the other strategies go on."""
        failures = self._runner.max_failures(strategy)
        standing = self._gate.state_of(strategy)
        if standing.state is TradingState.HALTED:
            # Halted already (by a person): that halt stands, with its reason and what it
            # was asked to do and has not done yet (a flatten the venue refused so far),
            # which a halt of its own would end.
            self._failed_while_halted[strategy] = standing
            logger.warning(
                "strategy {strategy} failed {failures} times in a row while halted; it stays "
                "halted ({reason}); last failure: {error}",
                strategy=strategy,
                failures=failures,
                reason=standing.reason,
                error=reason,
            )
            return
        state = ScopeState(
            strategy,
            TradingState.HALTED,
            f"{FAILURE_HALT} {failures} times in a row; last: {reason}",
            utc_now(),
        )
        self._gate.set_state(state)
        announce_state(state)
        await self._journal.call(self._journal.record_trading_state, state)

    def _halted_for_failures(self, strategy: str) -> bool:
        """Whether `strategy` is halted because its code kept failing (by this run or one
        before it: the state is journaled), or kept failing while a person's halt stood,
        and not resumed since nor halted again."""
        state = self._gate.state_of(strategy)
        return state.state is TradingState.HALTED and (
            state.reason.startswith(FAILURE_HALT)
            or self._failed_while_halted.get(strategy) is state
        )

    # hooks ----------------------------------------------------------------------------------

    async def start_strategies(self) -> None:
        """Each strategy's `on_start`, before any signal; one that fails stops the start."""
        for slot in self._strategies.values():
            outcome = await self._runner.call(
                slot.name, "on_start", slot.strategy.on_start, budget_s=ON_START_BUDGET_S
            )
            if isinstance(outcome, Failed):
                raise StrategyStartError(f"strategy {slot.name}: {outcome.reason}")

    def fill_booked(self, fill: Execution, strategy: str | None) -> FillBooking | None:
        """The account booked a fill of one of our orders: queue its strategy's `on_fill` on
        the lane of its key and symbol (after the signals already queued there), with the
        books as they are now (the journal keeps it due, with them, until it is done); None
        if no hook was queued."""
        if strategy not in self._hooked:
            return None
        size = self._strategy_size
        booking = FillBooking(
            self._booked_qty(fill.order_link_id),
            None if size is None else size(fill.key_name, strategy, fill.symbol),
        )
        self._queue_fill_hook(fill, booking)
        return booking

    def _queue_fill_hook(self, fill: Execution, booking: FillBooking, attempt: int = 0) -> None:
        """Queue the fill's hook unless it is queued or running already: start-up's gap-fill
        may book a fill whose hook `recover` finds due too."""
        if fill.exec_id in self._fill_hooks:
            return
        self._fill_hooks.add(fill.exec_id)
        self._queue_hook(
            (fill.key_name, fill.symbol),
            f"on_fill of {fill.order_link_id}",
            partial(self._on_fill, fill, booking, attempt),
        )

    async def _on_fill(self, fill: Execution, booking: FillBooking, attempt: int) -> None:
        """`booking`: the books once this fill was in them.

        The journal keeps the hook due until it has run (or turns out to have nothing to
        run), so one a crash or a stop interrupts runs again on the next start. Of what a
        hook returns, what an earlier run of it already did (legs decided, the stop moved for
        this fill) is left out, so nothing is decided, counted or sent twice. One that cannot
        run for want of market data or a usable key is tried again `FILL_HOOK_RETRIES_S`,
        then `FILL_HOOK_SLOW_RETRIES_S` later, then left due for the next start: a ladder's
        legs or break-even stop are never dropped for an outage. One whose work the journal
        could not write (a full disk, a lock another program held) is tried again alike."""
        try:
            heard = await self._hear_of_fill(fill, booking, again=attempt > 0)
        except sqlite3.OperationalError as exc:
            logger.error(
                "on_fill of {id} could not be journaled ({error}); it is tried again",
                id=fill.order_link_id,
                error=str(exc),
            )
            heard = False
        finally:
            self._fill_hooks.discard(fill.exec_id)
        if heard:
            self._journal.defer(partial(self._journal.fill_hook_done, fill.exec_id))
            return
        retries = FILL_HOOK_RETRIES_S + FILL_HOOK_SLOW_RETRIES_S
        if attempt == len(FILL_HOOK_RETRIES_S):
            logger.bind(notify="venue_error").warning(
                "on_fill of {id} could not run (see the declines above); it is tried again "
                "each minute for an hour, then on the next start",
                id=fill.order_link_id,
            )
        if attempt < len(retries):
            asyncio.get_running_loop().call_later(
                retries[attempt], partial(self._queue_fill_hook, fill, booking, attempt + 1)
            )
        else:
            logger.bind(notify="venue_error").error(
                "on_fill of {id} could not run for an hour; it runs again on the next start",
                id=fill.order_link_id,
            )

    async def _hear_of_fill(self, fill: Execution, booking: FillBooking, *, again: bool) -> bool:
        """Run the strategy's `on_fill` and carry out what it returns; False if it could not
        be run (no context: the decline is journaled). Run `again`, the orders an earlier run
        decided are carried on first (`Executor.resume_decided`): what it decided is left
        out of what the hook returns now, so a leg a journal failure left unsent (its
        Submitting refused midway) had no other way out before the next start."""
        record = await self._journal.call(self._journal.order, fill.order_link_id)
        slot = None if record is None else self._strategies.get(record.request.strategy)
        if record is None or slot is None or not _overrides(slot.strategy, "on_fill"):
            return True
        request = record.request
        if request.signal_source == FLATTEN_SOURCE:
            return True  # the operator's close, not the strategy's decision: nothing to hear
        if again:
            await self._executor.resume_decided(
                request.signal_source, request.signal_id, {slot.name}
            )
        signal = await self._journal.call(
            self._journal.signal, request.signal_source, request.signal_id
        )
        if signal is None:
            signal = _synthetic_signal(
                request.signal_source, request.signal_id, request.symbol, fill.ts
            )
        context = await self._context(signal, slot)
        if context is None:
            return False
        report = Fill(
            order_link_id=fill.order_link_id,
            leg=request.leg,
            symbol=fill.symbol,
            side=fill.side,
            qty=fill.qty,
            price=fill.price,
            fee=fill.fee,
            order_qty=record.venue_qty,  # as the venue holds it: another client may amend it
            order_filled_qty=booking.booked,
            reduce_only=request.reduce_only,
            ts=fill.ts,
            position_after=booking.position,
        )
        output = await self._hear(slot, "on_fill", signal, context, report)
        if isinstance(output, list | tuple):
            legs, moved = await self._journal.call(
                self._journal.carried_out, signal.source, signal.id, slot.name, fill.exec_id
            )
            # What it decides now is judged at the fill's time, not the signal's: a limit
            # entry filled an hour after its signal may still call for an opening order.
            at = min(fill.ts, utc_now())
            output = [
                item.model_copy(update={"signal_ts": max(item.signal_ts, at)})
                if isinstance(item, OrderIntent)
                else item
                for item in output
                if not (isinstance(item, OrderIntent) and item.leg in legs)
                and not (
                    isinstance(item, StopMove) and (moved or item.close_leg_if_crossed in legs)
                )
            ]
        await self._act(signal, slot, context, output, may_hear_rejections=True, cause=fill)
        return True

    async def run_timers(self) -> None:
        """Tick each strategy that asks for it (`timer_interval_s`), until cancelled."""
        async with asyncio.TaskGroup() as group:
            for slot in self._strategies.values():
                interval = slot.timer_interval_s
                if interval is not None and slot.timer_symbols:
                    group.create_task(self._tick_forever(slot, interval))

    async def _tick_forever(self, slot: StrategySlot, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            now = utc_now()
            for symbol in slot.timer_symbols:
                if (slot.name, symbol) in self._ticking:
                    # The last tick still waits its turn (a busy lane, a slow on_timer): ticks
                    # would pile up without end behind it.
                    continue
                # One id per symbol and tick (the orderLinkId holds the strategy already).
                tick_id = f"{symbol}-{int(now.timestamp() * 1000)}"
                tick = _synthetic_signal(TIMER_SOURCE, tick_id, symbol, now)
                self._ticking.add((slot.name, symbol))
                self._queue_hook(
                    (slot.key_name, symbol),
                    f"on_timer of {slot.name}",
                    partial(self._on_tick, slot, tick),
                )

    async def _on_tick(self, slot: StrategySlot, tick: Signal) -> None:
        try:
            await self._tick(slot, tick)
        finally:
            self._ticking.discard((slot.name, tick.symbol))

    async def _tick(self, slot: StrategySlot, tick: Signal) -> None:
        if self._halted_for_failures(slot.name):
            return  # it would fail again each tick, a traceback and a decline each time
        context = await self._context(tick, slot)
        if context is None:
            return
        output = await self._hear(slot, "on_timer", tick, context)
        try:
            await self._act(tick, slot, context, output, may_hear_rejections=True)
        except sqlite3.OperationalError as exc:
            await self._carry_on_tick(slot, tick, exc)

    async def _carry_on_tick(
        self, slot: StrategySlot, tick: Signal, failure: sqlite3.OperationalError
    ) -> None:
        """A tick whose orders the journal failed midway (a full disk, another program's
        lock): those it decided are carried on as a signal run again carries on its
        decided strategies' (`Executor.resume_decided`), after each of `JOURNAL_RETRIES_S`,
        its lane waiting. A tick is not journaled and not asked again (the next one comes):
        else a leg the failure left unsent stayed Pending until its tick went stale, a
        reduce-only one until the next start."""
        for delay in JOURNAL_RETRIES_S:
            logger.error(
                "on_timer of {name}: its orders could not be journaled ({error}); those it "
                "decided are carried on in {delay:g} s",
                name=slot.name,
                error=str(failure),
                delay=delay,
            )
            await asyncio.sleep(delay)
            try:
                await self._carry_on_decided(tick, [slot.name])
            except sqlite3.OperationalError as exc:
                failure = exc
            else:
                return
        logger.error(
            "on_timer of {name}: its orders could not be journaled ({error}); those it "
            "decided are carried on at the next start",
            name=slot.name,
            error=str(failure),
        )

    async def _hear(
        self,
        slot: StrategySlot,
        hook: str,
        signal: Signal,
        context: StrategyContext,
        *before: object,
    ) -> StrategyOutput | Failed | None:
        """Run the strategy's `hook(*before, signal, context)` on its thread within its
        budget, with its own copies of the signal and the context, and its answer made the
        bot's own objects there (`_answer`)."""
        # The hook is looked up on the strategy's thread too (a plug-in's own attribute access).
        call = partial(methodcaller(hook, *before, _own(signal), _copy(context)), slot.strategy)
        return await self._runner.call(slot.name, hook, partial(_answer, call, slot.name, signal))

    def decide(
        self,
        intent: OrderIntent,
        instrument: Instrument,
        price: Decimal,
        prices: Mapping[str, Decimal],
    ) -> Verdict:
        """The intent on the instrument's grid, judged by the gate at the venue's `price`, and
        at `prices` the exposure elsewhere (none needed for a reduce-only intent); or why it
        cannot be sent."""
        conformed = conform(intent, instrument, price)
        if isinstance(conformed, str):
            return RiskDecision(
                intent=intent, approved=False, rule="INSTRUMENT_RULES", reason=conformed
            )
        verdict = self._gate.decide(
            conformed,
            price=price,
            prices=prices,
            price_age_s=self._market.price_age_s(conformed.symbol),
        )
        moved = grid_moves(intent, conformed)
        if moved and isinstance(verdict, RiskDecision) and not verdict.approved:
            # Its numbers are the grid's: "stop 97000.0 must be below the entry 97000" of a
            # stop sent at 96999.99 is said with what the strategy sent.
            reason = f"{verdict.reason} (on the instrument's grid: {moved})"
            return verdict.model_copy(update={"reason": reason})
        return verdict

    async def _decline(self, signal: Signal, decline: Decline, rule: str = "strategy") -> None:
        """Journal that `signal` gets no order from a strategy, by its choice or a risk rule."""
        logger.info("no order for signal {id}: {reason}", id=signal.id, reason=decline.reason)
        await self._journal.call(self._journal.record_decline, signal, decline, rule)


def _copy(context: StrategyContext) -> StrategyContext:
    """The context a strategy's call gets: its own copy (its instrument too, which the venue
    caches), so that whatever the strategy does to it, the bot acts on the one it built."""
    return dataclasses.replace(context, instrument=context.instrument.model_copy())


def _own(signal: Signal) -> Signal:
    """The signal a strategy's call gets: its own deep copy. The bot judges what it returns
    against its own (the symbol, the id): a plug-in that changed what it was given (its
    `raw` fields, or a field through `object.__setattr__`) would otherwise change that, and
    what the next strategy is given."""
    return signal.model_copy(deep=True)


def _answer(call: Callable[[], object], strategy: str, signal: Signal) -> StrategyOutput | None:
    """`call()`, a strategy's hook, with what it returned made into the bot's own objects:
    run on the strategy's thread, within its budget, because reading the answer may run the
    plug-in's code too (an intent's or a list's overridden `__iter__`, a Decline's `reason`),
    which must neither block the event loop nor raise there (its `sys.exit()` would stop the
    bot). An answer that cannot be carried out is a Decline saying why."""
    output = call()
    if output is None:
        return None
    if isinstance(output, Decline):
        return Decline(strategy=strategy, reason=output.reason)
    items = _usable(output, strategy, signal)
    return Decline(strategy=strategy, reason=items) if isinstance(items, str) else items


def _usable(output: object, strategy: str, signal: Signal) -> list[OrderIntent | StopMove] | str:
    """A strategy's output as the bot carries it out, each item validated again (one built
    with `model_copy(update=...)` was never validated: a float or NaN qty); or why it
    cannot be carried out."""
    if not isinstance(output, list | tuple):
        return (
            f"strategy returned {type(output).__name__}; expected a list of OrderIntent or "
            "StopMove, or a Decline"
        )
    strange = [
        type(item).__name__ for item in output if not isinstance(item, OrderIntent | StopMove)
    ]
    if strange:
        return f"strategy returned {', '.join(strange)}; expected OrderIntent or StopMove items"
    items: list[OrderIntent | StopMove] = []
    for item in output:
        kind = OrderIntent if isinstance(item, OrderIntent) else StopMove
        try:
            items.append(kind.model_validate(dict(item)))
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {said}" for field, said in field_problems(exc))
            return f"strategy returned an invalid {kind.__name__}: {problems}"
    if any(
        (item.strategy, item.signal_source, item.signal_id) != (strategy, signal.source, signal.id)
        for item in items
    ):
        return "strategy returned an intent for another strategy or signal"
    others = sorted({i.symbol for i in items if isinstance(i, OrderIntent)} - {signal.symbol})
    if others:
        return (
            f"strategy returned an intent for {', '.join(others)}, but its call was about "
            f"{signal.symbol}: an intent trades the symbol of its signal (or timer tick)"
        )
    legs = [
        item.leg if isinstance(item, OrderIntent) else item.close_leg_if_crossed
        for item in items
        if isinstance(item, OrderIntent) or item.close_leg_if_crossed is not None
    ]
    if len(set(legs)) != len(legs):
        return f"strategy returned several intents for one leg (legs {legs}); number them"
    return items


def _overrides(strategy: Strategy, hook: str) -> bool:
    """Whether the strategy implements `hook` itself (no work is queued for a default)."""
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def _rejections(verdicts: Sequence[Verdict], events: Sequence[OrderEvent]) -> list[OrderRejection]:
    """What the gate refused, then what the venue refused, of one call's intents."""
    refused = [
        OrderRejection(
            leg=verdict.intent.leg,
            symbol=verdict.intent.symbol,
            rule=verdict.rule or "RISK",
            reason=verdict.reason,
        )
        for verdict in verdicts
        if isinstance(verdict, RiskDecision)
    ]
    sent = [verdict for verdict in verdicts if isinstance(verdict, ApprovedOrder)]
    for approval, event in zip(sent, events, strict=False):
        if event.status is OrderStatus.REJECTED:
            refused.append(
                OrderRejection(
                    leg=approval.intent.leg,
                    symbol=approval.intent.symbol,
                    rule="VENUE",
                    reason=event.reason,
                    order_link_id=event.order_link_id,
                )
            )
    return refused


def _synthetic_signal(source: str, signal_id: str, symbol: str, ts: datetime) -> Signal:
    """A signal the bot makes up for a hook (a timer tick, or an order whose signal the
    journal no longer holds): no side, nothing but where and when."""
    return Signal.model_construct(
        source=source,
        id=signal_id,
        symbol=symbol,
        side=None,
        action=SignalAction.OPEN,
        entry=None,
        stop_loss=None,
        take_profit=(),
        leverage=None,
        strategy=None,
        ts=ts,
        received_at=ts,
        raw={},
    )
