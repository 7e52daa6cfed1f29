"""The kill switch: halt (or resume) a scope at once, then, if asked, cancel its open orders
and flatten its positions.

The state is set in the gate first, so the very next intent sees it (queued ones included),
then journaled before the operator is answered, so it survives a crash. Cancelling waits for
orders being sent right now to land, so none slips past the halt. Flattening first cancels
the scope's open orders (an entry would open a position again; a reduce-only target would
leave the close no room), then sends one reduce-only market order per position of each
strategy in scope (its own book, not the key's whole position); each is approved by the gate
like any other order and journaled under a signal of source `admin`, so `bot orders` shows
it. The books are read again after the closes: a position an entry opened by beating its
cancel is closed too.

Cancels and flattens of concurrent commands run one after the other (the states themselves
take effect at once), so the second finds what the first left: nothing is cancelled twice,
and a position whose close from an earlier flatten is still unfinished is skipped: nothing
is closed twice. A flatten that waited while
another command moved the scope to another trading state (a resume) is not done: its answer
says `superseded`.

Each row of the report says `done`: the order is cancelled (or was not open), the position's
close reached the venue. A row not done (a refused or failed cancel or close, an order still
being sent, or sent without an answer and not shown by the venue within the executor's
`unseen_final_after_s`: it may have filled) is the operator's to know: `bot halt` exits 1 on
one. The halt then cancels and closes again by itself what is left, after each of
`FINISH_AGAIN_S` while it stands (a resume or another halt ends that), and says when all is
done, or that it gave up: an order whose answer was lost shows at the venue a little later,
and the position it opened is closed without waiting for the operator's next command. What a
halt was asked to do is journaled with it until done (`HaltWork`), so the next start does
again what a stop or a crash cut short, then tries as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence, Set
from decimal import Decimal
from typing import Any, Final

from bot.account import Account, StrategyBook
from bot.briefly import JOURNAL_WAIT_S, ended_within
from bot.execution.executor import Executor, NotShownYet
from bot.execution.orders import MAY_EXIST_AT_VENUE, OPEN_AT_VENUE, trimmed
from bot.journal import Journal, OrderRecord
from bot.logs import logger
from bot.market import MarketData
from bot.messages import (
    Instrument,
    OrderIntent,
    OrderStatus,
    OrderType,
    Signal,
    SignalAction,
    utc_now,
)
from bot.risk.gate import RiskGate, Verdict
from bot.risk.states import BOT_SCOPE, HaltWork, ScopeState, TradingState
from bot.venue.errors import VenueError

__all__ = ["FLATTEN_SOURCE", "KillSwitch", "announce_state"]

#: The signal source of the orders a flatten sends.
FLATTEN_SOURCE: Final = "admin"
#: A flatten reads the books again after its closes, once they hold the fills the venue
#: reported (waited for this long at most), and closes what it finds, at most this often.
_BOOKED_WAIT_S: Final = 5.0
_FLATTEN_ROUNDS: Final = 3
#: How long a cancel waits for orders being sent right now to land.
_CANCEL_WAIT_S: Final = 10.0
_CANCEL_POLL_S: Final = 0.1
#: When a halt the journal could not take is tried again (then each minute).
_RECORD_AGAIN_S: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
#: When a halt whose cancels or closes did not all complete does them again by itself, while
#: it stands (about four minutes in all: an order the venue did not show yet shows by then).
FINISH_AGAIN_S: Final = (2.0, 4.0, 8.0, 16.0, 30.0, 60.0, 60.0, 60.0)


def announce_state(state: ScopeState) -> None:
    logger.bind(notify="trading_state").warning(
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
        decide: Callable[[OrderIntent, Instrument, Decimal], Verdict],
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
        # Flattens run one command at a time: two halts with --flatten at once would each
        # close the same positions (the second's orders refused by the venue as reduce-only
        # with nothing to reduce, and reported as failed).
        self._flattening = asyncio.Lock()
        # Cancels of commands sent at once run one after the other too: each would send a
        # cancel for every open order, the same orders, spending the key's request limit
        # (which the closes of a flatten wait behind) on cancels the venue refuses (110001).
        self._cancelling = asyncio.Lock()
        # orderLinkId -> (strategy, symbol, filled qty the venue reported) of the orders this
        # switch cancelled or closed, until the books hold it (or a flatten gives up on it).
        self._reported_fills: dict[str, tuple[str, str, Decimal]] = {}
        # Halts entered while the journal could not write, being journaled when it can.
        self._recording: set[asyncio.Task[None]] = set()
        # scope -> the halt entered there that the journal could not take (yet).
        self._unjournaled: dict[str, ScopeState] = {}
        # Halts doing again by themselves what they left undone (`_finish`), and the records
        # that they are done.
        self._finishing: set[asyncio.Task[None]] = set()
        # The halts that did all they were asked to: one not journaled yet is journaled so.
        self._work_done_by: set[ScopeState] = set()

    def states(self) -> list[tuple[ScopeState, bool]]:
        """The state entered for the bot and for each strategy that has one (the others are
        ACTIVE), each with whether the journal holds it: a halt entered while the journal
        could not write holds here only, and a restart before it is journaled forgets it."""
        entered = []
        for scope in (BOT_SCOPE, *self._key_of):
            state = self._gate.entered_state(scope)
            if state is not None:
                entered.append((state, self._unjournaled.get(scope) is not state))
        return entered

    async def enter(
        self, state: ScopeState, *, cancel_open: bool = False, flatten: bool = False
    ) -> dict[str, Any]:
        """Enter `state`; then cancel and flatten as asked. Returns what was done."""
        report: dict[str, Any] = {
            "scope": state.scope,
            "state": state.state.value,
            "reason": state.reason,
        }
        if state.state is not TradingState.HALTED:
            # Journaled first: one the journal refuses (a full disk) is not entered, as its
            # answer says; entered first, the bot traded while its operator was told it had
            # not resumed. A halt answered meanwhile came after it, and stands (its record
            # follows this one).
            before = self._gate.state_of(state.scope)
            await self._journal.call(self._journal.record_trading_state, state)
            if self._gate.state_of(state.scope) == before:
                self._gate.set_state(state)
                announce_state(state)
            return report
        work = HaltWork.asked(cancel_open=cancel_open, flatten=flatten)
        # Since now, when it takes effect: an order journaled before is one it was to cancel
        # (the command was read earlier, and its replay check written since).
        state = dataclasses.replace(state, since=utc_now())
        self._gate.set_state(state)  # first: the very next intent sees it
        announce_state(state)
        first = asyncio.ensure_future(
            self._journal.call(self._journal.record_trading_state, state, work)
        )
        ended = await ended_within(first)
        problem = (
            f"no answer within {JOURNAL_WAIT_S:g} s: locked by another program, or stalled"
            if not ended
            else "the journal closed"
            if first.cancelled()
            else first.exception()
        )
        if problem is not None:
            # A halt stops trading, and is never undone for a journal that cannot write (a
            # full disk, another program's lock): it holds, and cancels and flattens, and is
            # journaled once the journal writes again (a restart before that forgets it).
            logger.error(
                "halt of {scope}: the journal could not record it ({error}); it holds, and is "
                "journaled once the journal writes again",
                scope=state.scope,
                error=problem,
            )
            report["journaled"] = False
            self._unjournaled[state.scope] = state
            recording = asyncio.create_task(
                self._journal_when_it_writes(state, work, None if ended else first)
            )
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)
        report |= await self._act(
            state, self._strategies_in(state.scope), cancel_open=cancel_open, flatten=flatten
        )
        if report.get("superseded"):
            return report
        if _rows_not_done(report):
            report["finishing"] = (
                f"while the halt stands, up to {len(FINISH_AGAIN_S)} times over about "
                f"{sum(FINISH_AGAIN_S) / 60:.0f} minutes"
            )
            self._start_finishing(state, work, _undone_cancels(report), FINISH_AGAIN_S)
        elif work is not HaltWork.NONE:
            self._in_background(self._work_done(state))  # the answer does not wait for it
        return report

    def _strategies_in(self, scope: str) -> frozenset[str]:
        return frozenset(self._key_of) if scope == BOT_SCOPE else frozenset({scope})

    def _start_finishing(
        self, state: ScopeState, work: HaltWork, cancels: frozenset[str], delays: Sequence[float]
    ) -> None:
        self._in_background(self._finish(state, work, cancels, delays))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the bot's stop ends (`stop`)."""
        task = asyncio.create_task(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _work_done(self, state: ScopeState) -> None:
        """Journal that the halt `state` did all it was asked to (a journal that cannot
        write only costs the next start a look that finds nothing left to do); one not
        journaled yet is journaled so when it is."""
        self._work_done_by.add(state)
        if self._unjournaled.get(state.scope) is state:
            return
        try:
            await self._journal.call(self._journal.record_halt_work_done, state)
        except Exception as exc:
            logger.warning(
                "halt of {scope}: done, but the journal could not record it ({error}); the "
                "next start looks again and finds nothing left",
                scope=state.scope,
                error=exc,
            )

    async def _act(
        self, state: ScopeState, strategies: frozenset[str], *, cancel_open: bool, flatten: bool
    ) -> dict[str, Any]:
        """The halt's cancels and closes, as asked: the report's `cancelled` and `flattened`
        rows, and `superseded` for a flatten another command overtook."""
        report: dict[str, Any] = {}
        if cancel_open:
            report["cancelled"] = await self._cancel_open(strategies)
        if flatten:
            async with self._flattening:  # the state above is set at once, whatever waits
                if not cancel_open and not self._overtaken(state):
                    # Their resting orders go first: an entry would open a position again
                    # (one sent just before the halt lands meanwhile), and reduce-only ones
                    # (a ladder's targets) would leave the close no room: Bybit trims a
                    # reduce-only order to what the others do not cover (110017).
                    report["cancelled"] = await self._cancel_open(strategies, sparing_flattens=True)
                # Another command (a resume) changed the state while this one waited, or
                # during its cancels (seconds on a slow venue): what opens after it is not
                # the halt's to close.
                if self._overtaken(state):
                    report["flattened"] = []
                    report["superseded"] = True
                else:
                    report["flattened"] = await self._flatten(strategies)
        return report

    def _overtaken(self, state: ScopeState) -> bool:
        """Whether another command moved `state`'s scope to another trading state since."""
        return self._gate.state_of(state.scope).state is not state.state

    async def _finish(
        self,
        state: ScopeState,
        work: HaltWork,
        cancels: frozenset[str],
        delays: Sequence[float],
    ) -> None:
        """Do again what the halt `state` left of its `work`, after each of `delays` while
        it still stands; say when all is done, or that it gave up. A flatten is done again
        whole: it reads afresh what is open, and closes only what the books show open and
        settled (nothing twice); a cancel, only for the orders of `cancels` whose cancel did
        not complete (an order placed since is not the halt's to cancel)."""
        strategies = self._strategies_in(state.scope)
        report: Mapping[str, Any] = {}
        for delay in delays:
            await asyncio.sleep(delay)
            if self._gate.state_of(state.scope) is not state:
                return  # a later command (a resume, another halt) took over
            try:
                if work is HaltWork.FLATTEN:  # it cancels first itself, sparing its closes
                    report = await self._act(state, strategies, cancel_open=False, flatten=True)
                else:
                    report = {"cancelled": await self._cancel_again(state, strategies, cancels)}
                    cancels = _undone_cancels(report)
            except Exception as exc:  # tried again after the next pause
                logger.warning(
                    "halt of {scope}: trying again failed: {error}", scope=state.scope, error=exc
                )
                continue
            if report.get("superseded") or self._gate.state_of(state.scope) is not state:
                return
            if not _rows_not_done(report):
                logger.bind(notify="trading_state").warning(
                    "halt of {scope}: what it left undone is done now", scope=state.scope
                )
                await self._work_done(state)
                return
            logger.info(
                "halt of {scope}: {undone} still not done",
                scope=state.scope,
                undone=_rows_not_done(report),
            )
        logger.bind(notify="trading_state").error(
            "halt of {scope}: {undone} still not done after trying again {times} times: check "
            "`bot orders` and `bot positions`, then run the halt again (the next start tries "
            "again too)",
            scope=state.scope,
            undone=_rows_not_done(report) or "some rows",
            times=len(delays),
        )

    async def _cancel_again(
        self, state: ScopeState, strategies: frozenset[str], cancels: frozenset[str]
    ) -> list[dict[str, str | bool]]:
        """The cancels of the orders `cancels` still open, once more (none if the halt no
        longer stands once the cancels' turn comes)."""
        async with self._cancelling:
            if self._gate.state_of(state.scope) is not state:
                return []
            return await self._cancel_open_now(strategies, sparing_flattens=False, only=cancels)

    async def resume_halt_work(self, books: Sequence[StrategyBook]) -> None:
        """At start-up: each standing halt whose work (`HaltWork`) a stop or a crash cut
        short does it again at once, then as after its first try; the positions a halt
        holds open without being asked to flatten them are said, once per scope. For a
        cancel, the orders it was to cancel are those journaled before it."""
        flattening: set[str] = set()
        for scope, work in (await self._journal.call(self._journal.unfinished_halt_work)).items():
            state = self._gate.entered_state(scope)
            if state is None or state.state is not TradingState.HALTED:
                continue
            if scope != BOT_SCOPE and scope not in self._key_of:
                logger.warning(
                    "halt of {scope}: its {work} is left undone: the strategy is no longer "
                    "configured (configured again, it is done at that start)",
                    scope=scope,
                    work=work.value,
                )
                continue
            cancels = frozenset[str]()
            if work is HaltWork.CANCEL:
                cancels = await self._journal.call(
                    self._journal.unfinished_orders_created_before, state.since
                )
            else:
                flattening.add(scope)
            logger.bind(notify="trading_state").warning(
                "halt of {scope}: a stop cut its {work} short; doing it again now",
                scope=scope,
                work="cancels" if work is HaltWork.CANCEL else "flatten",
            )
            self._start_finishing(state, work, cancels, (0.0, *FINISH_AGAIN_S))
        self._warn_of_positions_held(books, flattening)

    def _warn_of_positions_held(self, books: Sequence[StrategyBook], flattening: Set[str]) -> None:
        """The strategies' positions open in a halted scope not `flattening`, said once per
        scope: a halt not asked to flatten says nothing more of them."""
        bot_halted = self._gate.state_of(BOT_SCOPE).state is TradingState.HALTED
        held: dict[str, list[str]] = {}
        for book in books:
            if not book.size or book.strategy not in self._key_of:
                continue
            scope = BOT_SCOPE if bot_halted else book.strategy
            if self._gate.state_of(scope).state is TradingState.HALTED and not (
                flattening & {book.strategy, BOT_SCOPE}
            ):
                held.setdefault(scope, []).append(
                    f"{book.strategy} {book.size.normalize():f} {book.symbol}"
                )
        for scope, positions in held.items():
            option = "" if scope == BOT_SCOPE else f" --strategy {scope}"
            logger.bind(notify="trading_state").warning(
                "{scope} is HALTED with positions open ({positions}), not asked to flatten "
                "them: `bot halt{option} --flatten` closes them",
                scope=scope,
                positions=", ".join(positions),
                option=option,
            )

    async def stop(self) -> None:
        """The bot stops: halts stop doing again what they left undone (what was in flight
        is settled by the next start, as every journaled order, which then does again what
        is left: `resume_halt_work`)."""
        for task in self._finishing:
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)

    async def _journal_when_it_writes(
        self, state: ScopeState, work: HaltWork, unfinished: asyncio.Future[None] | None
    ) -> None:
        """Journal a halt the journal could not take when it was entered (its first record
        `unfinished` yet, or failed), trying after each of `_RECORD_AGAIN_S` then each
        minute, while it is still the scope's state (a later command journals its own), with
        what is left of its `work` (done meanwhile: nothing)."""
        try:
            recorded = unfinished is not None and await self._recorded(state, unfinished)
            pauses = itertools.chain(_RECORD_AGAIN_S, itertools.repeat(60.0))
            while not recorded:
                await asyncio.sleep(next(pauses))
                if self._gate.state_of(state.scope) is not state:
                    return
                # Queued at once: a command entered after this check is journaled after.
                left = HaltWork.NONE if state in self._work_done_by else work
                record = self._journal.call(self._journal.record_trading_state, state, left)
                recorded = await self._recorded(state, record)
        finally:
            if self._unjournaled.get(state.scope) is state:
                del self._unjournaled[state.scope]
        if state in self._work_done_by:  # done before the record that says it is not
            await self._work_done(state)

    @staticmethod
    async def _recorded(state: ScopeState, record: Awaitable[None]) -> bool:
        """Whether the journal took `record` of the halt `state` (said either way)."""
        try:
            await record
        except Exception as exc:
            logger.warning(
                "halt of {scope}: still not journaled ({error}); tried again in a while",
                scope=state.scope,
                error=exc,
            )
            return False
        logger.info("halt of {scope}: journaled now", scope=state.scope)
        return True

    async def _cancel_open(
        self, strategies: frozenset[str], *, sparing_flattens: bool = False
    ) -> list[dict[str, str | bool]]:
        """Cancel every order of `strategies` that may be open at the venue (with
        `sparing_flattens`, but an earlier flatten's closes). An order being sent right now
        is waited for (the executor refuses to send an opening order once its scope is
        halted, and a send in progress lands or fails), then cancelled; one still busy after
        `_CANCEL_WAIT_S` is reported as such."""
        async with self._cancelling:  # the second finds what the first left
            return await self._cancel_open_now(strategies, sparing_flattens=sparing_flattens)

    async def _cancel_open_now(
        self,
        strategies: frozenset[str],
        *,
        sparing_flattens: bool,
        only: frozenset[str] | None = None,
    ) -> list[dict[str, str | bool]]:
        """`_cancel_open`, its lock held; `only`: just the orders of these orderLinkIds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CANCEL_WAIT_S
        done: dict[str, dict[str, str | bool]] = {}
        # Unknown ones seen being looked up: cancelled once that ends, though it ended them
        # (a market entry found filled by the reconciliation loop, which does not wait for
        # the books to hold the fill): the cancel's look-up reports the fill, which a
        # flatten then waits for the books to hold before it reads them.
        looked_up: dict[str, OrderRecord] = {}
        while True:
            # Judged before the look below, not after the cancels it starts: those can
            # outlast the wait, and an order seen being sent before them has landed since.
            late = loop.time() > deadline
            busy = self._executor.in_flight()
            # From memory: a journal another program has locked holds its thread for
            # seconds, and every resting entry could fill meanwhile.
            unfinished = {
                record.request.order_link_id: record
                for record in self._journal.committed_unfinished()
                if record.request.strategy in strategies
                and record.status in _MAY_REST_AT_VENUE
                and not (sparing_flattens and record.request.signal_source == FLATTEN_SOURCE)
                and (only is None or record.request.order_link_id in only)
            }
            waiting, cancelling = [], []
            for link_id, record in (looked_up | unfinished).items():
                if link_id in done:
                    continue
                if link_id in busy:
                    waiting.append(record)
                    if record.status is OrderStatus.UNKNOWN:
                        looked_up[link_id] = record
                else:
                    cancelling.append(record)
            # All at once: each takes two round trips to the venue, which a slow venue makes
            # seconds (each key's requests still go at its own pace).
            rows = await asyncio.gather(*(self._cancel(record) for record in cancelling))
            done.update(zip((r.request.order_link_id for r in cancelling), rows, strict=True))
            if not waiting:
                break
            if late:
                for record in waiting:
                    logger.error(
                        "cancel: {id} is still being sent", id=record.request.order_link_id
                    )
                    done[record.request.order_link_id] = _row(
                        record, "still being sent: not cancelled yet", False
                    )
                break
            await asyncio.sleep(_CANCEL_POLL_S)
        return list(done.values())

    async def _cancel(self, record: OrderRecord) -> dict[str, str | bool]:
        request = record.request
        try:
            # One sent just before whose answer was lost is looked for until the venue shows
            # it: a market entry may have filled, which the flatten must close.
            event = await self._executor.cancel_sent(record)
        except NotShownYet as exc:
            return _row(record, f"{exc}; looked for again shortly", False)
        except Exception as exc:  # one failed cancel must not stop the others
            logger.error("cancel of {id} failed: {error}", id=request.order_link_id, error=exc)
            return _row(record, f"cancel failed: {exc}", False)
        if event is None:
            return _row(record, "not at the venue", True)
        if event.filled_qty:  # filled before the cancel came: the books must hold it
            self._reported_fills[request.order_link_id] = (
                request.strategy,
                request.symbol,
                event.filled_qty,
            )
        return _row(record, event.status.value, event.status.is_terminal)

    async def _flatten(self, strategies: frozenset[str]) -> list[dict[str, str | bool]]:
        """Reduce-only market orders closing each open position of `strategies`; the books
        are read again after the closes, and what an entry that beat its cancel opened
        meanwhile is closed too (at most `_FLATTEN_ROUNDS` rounds)."""
        stamp = utc_now().strftime("%Y%m%dT%H%M%S%f")
        results: list[dict[str, str | bool]] = []
        for round_ in range(_FLATTEN_ROUNDS):
            results += await self._books_behind(strategies)
            # One whose close did not complete would fail alike, and one whose books are
            # behind could be closed twice: the operator has its row, not done.
            skipped = {(row["strategy"], row["symbol"]) for row in results if not row["done"]}
            open_books, unsettled = self._open_books(strategies)
            results += [
                _unsettled_row(book, record)
                for book, record in unsettled
                if (book.strategy, book.symbol) not in skipped
            ]
            skipped |= {(book.strategy, book.symbol) for book, _ in unsettled}
            books = [b for b in open_books if (b.strategy, b.symbol) not in skipped]
            if not books:
                break
            if round_:
                logger.warning("flatten: positions opened meanwhile; closing them too")
            # All at once, as the cancels: one position's close does not wait for another's.
            start = len(results)
            results += await asyncio.gather(
                *(
                    self._close_book(book, f"flatten-{stamp}-{start + index}")
                    for index, book in enumerate(books)
                )
            )
        return results

    async def _books_behind(self, strategies: frozenset[str]) -> list[dict[str, str | bool]]:
        """Wait (at most `_BOOKED_WAIT_S`) until the books hold every fill the venue reported
        of the orders of `strategies` this switch cancelled or closed: read sooner, they
        would show a position already closed (closed twice) or miss one an entry opened
        before its cancel. A row, not done, for each (strategy, symbol) whose books are
        still behind then: it is not closed now; the others are. Those fills are kept until
        the books hold them: a later attempt (the halt's own, or the operator's) waits for
        them again, and never closes what the books do not show closed yet."""
        booked = self._account.projection.booked_qty
        deadline = asyncio.get_running_loop().time() + _BOOKED_WAIT_S
        fetched = False
        while True:
            self._reported_fills = {
                link: reported
                for link, reported in self._reported_fills.items()
                if booked(link) < reported[2]
            }
            waited = {
                link: reported
                for link, reported in self._reported_fills.items()
                if reported[0] in strategies
            }
            if not waited:
                return []
            if asyncio.get_running_loop().time() > deadline:
                break
            if not fetched:  # a key whose stream is down has its fills fetched by REST
                fetched = True
                keys = {
                    self._key_of[strategy]
                    for strategy, _, _ in waited.values()
                    if strategy in self._key_of
                }
                for key_name in keys:
                    with contextlib.suppress(VenueError):  # the wait goes on all the same
                        await self._account.catch_up_if_down(key_name)
                continue
            await asyncio.sleep(_CANCEL_POLL_S)
        behind = {(strategy, symbol) for strategy, symbol, _ in waited.values()}
        logger.bind(notify="venue_error").warning(
            "flatten: the books do not hold yet every fill the venue reported in {where}; not "
            "closed now (it could be closed twice); closed when the halt tries again",
            where=", ".join(f"{symbol} of {strategy}" for strategy, symbol in sorted(behind)),
        )
        return [
            {
                "strategy": strategy,
                "symbol": symbol,
                "qty": "",
                "status": "fills not in the books yet: not closed yet",
                "done": False,
            }
            for strategy, symbol in sorted(behind)
        ]

    def _open_books(
        self, strategies: frozenset[str]
    ) -> tuple[list[StrategyBook], list[tuple[StrategyBook, OrderRecord]]]:
        """The open positions of `strategies` to close, and the unfinished closes of earlier
        flattens standing for the others (a close the venue's answer never settled: another
        now could close twice; each gets a row, not done)."""
        closing = {
            (record.request.strategy, record.request.symbol): record
            for record in self._journal.committed_unfinished()
            if record.request.signal_source == FLATTEN_SOURCE
        }
        held = [
            book
            for book in self._account.projection.books()
            if book.strategy in strategies and book.size != 0
        ]
        return (
            [book for book in held if (book.strategy, book.symbol) not in closing],
            [
                (book, closing[key])
                for book in held
                if (key := (book.strategy, book.symbol)) in closing
            ],
        )

    async def _close_book(self, book: StrategyBook, signal_id: str) -> dict[str, str | bool]:
        """Close one strategy's position as the signal `signal_id` of the operator: its row."""
        row: dict[str, str | bool] = {
            "strategy": book.strategy,
            "symbol": book.symbol,
            "qty": f"{abs(book.size).normalize():f}",
        }
        signal = Signal(
            source=FLATTEN_SOURCE,
            id=signal_id,
            symbol=book.symbol,
            action=SignalAction.CLOSE,
            strategy=book.strategy,
            ts=utc_now(),
        )
        try:
            status, done = await self._close(signal, book.key_name, book.size)
        except Exception as exc:  # one failed close must not stop the others
            logger.error("flatten of {symbol} failed: {error}", symbol=book.symbol, error=exc)
            status, done = f"failed: {exc}", False
        return row | {"status": status, "done": done}

    async def _close(self, signal: Signal, key_name: str, size: Decimal) -> tuple[str, bool]:
        """Close `size` (signed) of `signal.strategy`'s position: journaled, gated, sent, in
        legs of at most the instrument's largest order. Returns each leg's status, and whether
        every leg reached the venue (not refused by the gate, not rejected or unknown)."""
        assert signal.strategy is not None
        instrument, price = await self._market.quote(key_name, signal.symbol)
        await self._journal.call(self._journal.record_signal, signal)
        statuses = []
        try:
            left, leg = abs(size), 0
            while left > 0:
                qty = min(left, instrument.max_qty(OrderType.MARKET))
                intent = OrderIntent.close_at_market(
                    strategy=signal.strategy,
                    signal_source=signal.source,
                    signal_id=signal.id,
                    leg=leg,
                    symbol=signal.symbol,
                    long=size > 0,
                    qty=qty,
                    price=price,
                    signal_ts=signal.ts,
                )
                verdict = self._decide(intent, instrument, price)
                events = await self._executor.execute_all([verdict], key_name)
                if not events:
                    statuses.append(f"rejected ({verdict.rule}): {verdict.reason}")
                    return ", ".join(statuses), False
                (event,) = events
                if event.filled_qty:
                    self._reported_fills[event.order_link_id] = (
                        signal.strategy,
                        signal.symbol,
                        event.filled_qty,
                    )
                statuses.append(event.status.value)
                if event.status not in _AT_VENUE:
                    return ", ".join(statuses), False
                if trimmed(event, qty):
                    # Trimmed by the venue: other reduce-only orders (another client's) cover
                    # the rest, or the key's position is smaller than the books say (another
                    # client closed part of it on a shared key).
                    statuses[-1] += (
                        f" {event.filled_qty} of {qty}: the venue trimmed it (other reduce-only"
                        " orders cover the rest, or the key's position is smaller than the "
                        "books: see `bot positions`, cancel those orders, then flatten again)"
                    )
                    return ", ".join(statuses), False
                left, leg = left - qty, leg + 1
        finally:
            await self._journal.call(self._journal.mark_processed, signal)
        return ", ".join(statuses), True


#: A close in one of these states reached the venue (a market order fills).
#: What a cancel looks for at the venue: a Pending order not being sent may have left too,
#: its Submitting unwritten (a full disk) while it traveled (`Executor._resume`).
_MAY_REST_AT_VENUE: Final = OPEN_AT_VENUE | MAY_EXIST_AT_VENUE | {OrderStatus.PENDING}
_AT_VENUE: Final = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED})


def _rows_not_done(report: Mapping[str, Any]) -> str:
    """How many of a report's rows are not done ("2 of 3 rows"); "" when all are."""
    rows = [*report.get("cancelled", ()), *report.get("flattened", ())]
    undone = sum(1 for row in rows if not row["done"])
    return f"{undone} of {len(rows)} rows" if undone else ""


def _undone_cancels(report: Mapping[str, Any]) -> frozenset[str]:
    """The orderLinkIds of a report's cancels not done."""
    return frozenset(
        str(row["order_link_id"]) for row in report.get("cancelled", ()) if not row["done"]
    )


def _unsettled_row(book: StrategyBook, close: OrderRecord) -> dict[str, str | bool]:
    """The row of a position an earlier flatten's `close`, still unsettled, stands for."""
    return {
        "strategy": book.strategy,
        "symbol": book.symbol,
        "qty": f"{abs(book.size).normalize():f}",
        "status": f"not closed: an earlier close ({close.request.order_link_id}, "
        f"{close.status.value}) is not settled yet, and another could close it twice",
        "done": False,
    }


def _row(record: OrderRecord, status: str, done: bool) -> dict[str, str | bool]:
    request = record.request
    return {
        "order_link_id": request.order_link_id,
        "strategy": request.strategy,
        "status": status,
        "done": done,
    }
