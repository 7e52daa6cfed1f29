"""The order executor: every approved intent ends in exactly one venue order, or a reason.

For each order it journals the approval and the order (Pending) in one transaction, then
drives the order through its lifecycle (`bot.execution.orders`) with bounded attempts:

- before each send the order is journaled Submitting, so a crash leaves a row that says
  "may exist: look before you act";
- a retryable failure (10006, HTTP 429/403, 10002) waits for the time the venue gave (the
  venue module resynchronises the clock on 10002), then resends with the same orderLinkId;
- an ambiguous failure (timeout, 10000, 10016, 5xx, no answer) is journaled Unknown; the order
  is looked up by orderLinkId before anything else, and resent only if the venue shows none;
- 110072 (duplicate orderLinkId) means the order exists: it is looked up, never resent;
- a clear rejection is final, unless an earlier send was ambiguous: then the order stays
  Unknown for reconciliation, which declares it never sent only once look-ups that answered
  have missed it for `unseen_final_after_s` after its last send (a failed look-up proves
  nothing);
- before every send the signal's staleness is checked again: waits never send an order late;
- a key-fatal answer switches the key off for all its strategies until restart.

A new market order is then followed for a moment (`follow_s`) until it is terminal, so the
next signal of its key and symbol sees the fill (its position at once; its order's state once
the journal has written what the stream said, which a strategy's context waits for).
`reconcile` is the safety net: it resumes every order the journal holds as not terminal, at
start-up before any new signal and then in a loop (`bot.execution.reconcile`), until each is
terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Final

from bot.account import StrandedBy
from bot.bounded import remember
from bot.briefly import JOURNAL_WAIT_S, ended_within
from bot.execution.config import ExecutionConfig
from bot.execution.orders import (
    MAY_EXIST_AT_VENUE,
    OPEN_AT_VENUE,
    close_shortfall,
    not_ours,
    trimmed,
    unlike_request,
)
from bot.journal import Journal, OrderRecord
from bot.logs import logger
from bot.messages import (
    Execution,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionUpdate,
    RiskDecision,
    Side,
    StopMove,
    utc_now,
)
from bot.risk.gate import ApprovedOrder, Verdict
from bot.venue.base import Venue
from bot.venue.errors import (
    CLOCK_DRIFT_CODE,
    AmbiguousError,
    DuplicateOrderError,
    HeldError,
    KeyFatalError,
    OrderRejectedError,
    RetryableError,
    VenueError,
)
from bot.venue.shapes import cancelled_reason

__all__ = ["Executor", "NotShownYet", "StalenessCheck", "build_request"]

#: The risk gate's staleness rule: why a signal issued at `ts` is too old to act on, or None.
StalenessCheck = Callable[[datetime], str | None]

_FOLLOW_POLLS_S: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
#: How often a follower whose order a look-up found terminal checks the books for its fills.
_BOOKED_POLL_S: Final = 0.05
#: How long a follower waits for the account stream before it looks the order up itself.
_STREAM_GRACE_S: Final = 0.25
_JITTER: Final = 0.25
#: How many orders the bot cancelled, and cancels by others warned of, are remembered.
_CANCELS_KEPT: Final = 10_000
#: Resting orders whose last look-up is remembered (beyond them, one is looked up again).
_LOOKS_KEPT: Final = 10_000
#: An order report's reason when a user (not the venue's own rules) cancelled it.
_CANCELLED_BY_USER: Final = cancelled_reason("CancelByUser")
#: How long a reduce-only order still in flight when its position closed is waited for (its
#: answer from the venue, with its orderId), and how often it is looked at. One still without
#: an orderId is left: a key whose position stays closed tells it again each reconciliation
#: pass; a strategy's close on a key that holds a new position does not.
_STRANDED_ANSWER_WAIT_S: Final = 15.0
_STRANDED_POLL_S: Final = 0.05
# How long a signal run again waits for a leg another pass holds in flight (the
# reconciliation loop's look-up: two reads, each within the venue's timeout, and the
# key's rate limit).
_HELD_ELSEWHERE_WAIT_S: Final = 60.0
#: How often a wait for an order held in flight elsewhere looks again.
_IN_FLIGHT_POLL_S: Final = 0.05
#: An order under our orderLinkId that the venue created this long (besides the 1 s its
#: clock may trail a signed request's) before our first send of it is another client's.
_CREATED_MARGIN: Final = timedelta(seconds=2)
#: A cancel the venue may not have carried out (no clear answer, or "try again") is sent up
#: to this many times in all: a cancel of a cancelled order is "not found", never a second
#: effect. A wait the venue asks for beyond `_CANCEL_WAIT_MAX_S` is not waited for.
_CANCEL_ATTEMPTS: Final = 3
_CANCEL_RETRY_S: Final = 0.2
_CANCEL_WAIT_MAX_S: Final = 5.0


def build_request(
    approved: ApprovedOrder, key_name: str, *, closes_position: bool = False
) -> OrderRequest:
    """The venue order for an approved intent, named by its deterministic orderLinkId
    (`closes_position`: see `OrderRequest`)."""
    intent = approved.intent
    return OrderRequest(
        order_link_id=approved.order_link_id,
        key_name=key_name,
        strategy=intent.strategy,
        signal_source=intent.signal_source,
        signal_id=intent.signal_id,
        leg=intent.leg,
        symbol=intent.symbol,
        side=intent.side,
        order_type=intent.order_type,
        qty=intent.qty,
        price=intent.price,
        stop_loss=intent.stop_loss,
        take_profit=intent.take_profit,
        reduce_only=intent.reduce_only,
        leverage=None if intent.reduce_only else approved.leverage,
        max_leverage=None if intent.reduce_only else approved.max_leverage,
        closes_position=closes_position,
    )


#: An order's terms a user may amend, as a venue report gives them.
_AMENDABLE: Final = ("venue_qty", "venue_price", "venue_stop_loss", "venue_take_profit")


def _amended(event: OrderEvent, request: OrderRequest) -> str | None:
    """What the venue's report of our order shows amended that only a user amends, in words
    (`unlike_request`), each number of the report plain ("96000", never "96000.0"); an opening
    order's quantity left out (the risk gate says it). The same words, the same amendment:
    a report that changes nothing of them (a venue's trim, another spelling) is no news."""
    plain = {name: _plain_number(getattr(event, name)) for name in _AMENDABLE}
    if not request.reduce_only:
        plain["venue_qty"] = None
    return unlike_request(event.model_copy(update=plain), request)


def _plain_number(value: Decimal | None) -> Decimal | None:
    """`value` without trailing zeros or an exponent: 96000.0 and 9.6E+4 read 96000."""
    return None if value is None else Decimal(format(value.normalize(), "f"))


class NotShownYet(Exception):
    """An order sent without an answer that the venue did not show within the wait: it may
    rest there, or have filled."""


class _LookupFailed(Exception):
    """The venue could not be asked (it answered with an error): nothing is known."""


class Executor:
    """Places approved orders, each through the key its strategy is bound to."""

    def __init__(
        self,
        journal: Journal,
        venues: Mapping[str, Venue],
        config: ExecutionConfig | None = None,
        *,
        staleness: StalenessCheck = lambda ts: None,
        stream_live: Callable[[str], bool] = lambda key_name: False,
        stream_connection: Callable[[str], int | None] = lambda key_name: None,
        order_changed: Callable[[OrderEvent], None] = lambda event: None,
        blocked: Callable[[str], str | None] = lambda strategy: None,
        booked_qty: Callable[[str], Decimal] | None = None,
        closable_size: Callable[[str, str, str], Decimal] | None = None,
        order_journaled: Callable[[OrderRequest], None] = lambda request: None,
        order_identified: Callable[[str, str | None], None] = lambda link_id, order_id: None,
        stop_moving: Callable[[str, StopMove], None] = lambda key_name, move: None,
        leverage_cap: Callable[[str, str], Decimal | None] = lambda key_name, symbol: None,
        unjournaled: Callable[[Sequence[ApprovedOrder]], None] = lambda approvals: None,
        rng: random.Random | None = None,
    ) -> None:
        """`venues` maps key name to the venue reached with that key; `stream_live` says
        whether a key's account stream is up (then fills are awaited, not polled for), and
        `stream_connection` which connection of it is live (None: down), so a resting order
        is looked up less often while one stays up;
        `order_changed` hears of every change the journal made to an order (its event): a
        look-up may be the first to show the venue's terms of it, or its end;
        `blocked(strategy)` says why a strategy may not increase exposure now (the gate's
        trading states: asked before every send of an opening order, so a halt stops legs
        already approved);
        `booked_qty(orderLinkId)` how much of an order's fills the account's books hold (a
        follower waits for them, so the next signal of the lane sees the position), and
        `closable_size(key, strategy, symbol)` what of a strategy's signed position in its
        books the key's position at the venue still holds (a reduce-only order resumed after
        a crash is sent only while there is some, a close of the whole position only while
        that is all of it: the start brings the books up to the venue first);
        `order_journaled` hears of each order journaled by `execute_all`, before its send,
        `order_identified(orderLinkId, orderId)` of the venue's orderId of each order of ours
        as soon as an answer or a look-up tells it (None: the order ended without the venue
        taking it), and `stop_moving(key, move)` of each stop loss `move_stop` is about to
        set; `leverage_cap(key, symbol)` is the max_leverage its strategies may open at
        there (the highest; None if none may), which a position the venue reports is judged
        against before this run has sent an order there; `unjournaled` hears of the
        approvals of an `execute_all` whose verdicts the journal could not write (none of
        them was sent: the gate takes them back)."""
        self._journal = journal
        self._venues = venues
        self._config = config or ExecutionConfig()
        self._staleness = staleness
        self._stream_live = stream_live
        self._stream_connection = stream_connection
        # orderLinkId -> (loop time, stream connection) of its last look-up by `reconcile`
        self._looked_at: OrderedDict[str, tuple[float, int | None]] = OrderedDict()
        self._order_changed = order_changed
        self._blocked = blocked
        self._booked_qty = booked_qty
        self._closable_size = closable_size
        self._order_journaled = order_journaled
        self._order_identified = order_identified
        self._stop_moving = stop_moving
        self._configured_leverage_cap = leverage_cap
        self._unjournaled = unjournaled
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._disabled_keys: dict[str, str] = {}
        # Orders the venue said it holds (110072) but has not shown: warned of once each.
        self._warned_unseen: OrderedDict[str, None] = OrderedDict()
        # Orders the venue acknowledged that look-ups no longer find: loop time of the first.
        self._missing_since: OrderedDict[str, float] = OrderedDict()
        # Our orders cancelled elsewhere: warned of once each.
        self._warned_cancels: OrderedDict[str, None] = OrderedDict()
        # Our orders amended elsewhere: the amendment (`_amended`) last warned of, per order
        # (None: amended back since), as the journal keeps it too.
        self._warned_terms: OrderedDict[str, str | None] = OrderedDict()
        self._in_flight: set[str] = set()
        self._reconcile_cursor: dict[str, int] = {}
        self._watches: dict[str, asyncio.Event] = {}
        # Followed orders the stream reported terminal: what it said of each.
        self._terminal: dict[str, OrderEvent] = {}
        # (key, symbol) -> the leverage the venue holds, as this run set, read or heard it
        self._leverage: dict[tuple[str, str], Decimal] = {}
        # (key, symbol) -> the max_leverage of the last opening order sent there, and the
        # venue's leverage this run last replaced (a late report of it is no news)
        self._leverage_caps: dict[tuple[str, str], Decimal] = {}
        self._leverage_replaced: dict[tuple[str, str], Decimal] = {}
        # Cancels of reduce-only orders left by a closed position, by orderLinkId, running.
        self._stranded: dict[str, asyncio.Task[None]] = {}
        self._placed: Counter[str] = Counter()  # orders the venue accepted, per key

    def orders_placed(self, key_name: str) -> int:
        """How many orders the venue has accepted from this run on `key_name`."""
        return self._placed[key_name]

    def disabled_reason(self, key_name: str) -> str | None:
        """Why the venue refused `key_name` (its strategies are stopped), or None."""
        return self._disabled_keys.get(key_name)

    def disable_key(self, key_name: str, exc: KeyFatalError) -> None:
        """Stop every order of `key_name` until restart: the venue says the key is bad."""
        if key_name not in self._disabled_keys:
            logger.bind(notify="key").critical(
                "ALERT: the venue refused key {key} ({error}); its strategies are stopped "
                "until the key is fixed and the bot restarted",
                key=key_name,
                error=str(exc),
            )
        self._disabled_keys[key_name] = exc.message

    # entry points ---------------------------------------------------------------------------

    async def execute_all(
        self,
        verdicts: Sequence[Verdict],
        key_name: str,
        *,
        closes_position: bool = False,
    ) -> list[OrderEvent]:
        """Journal a strategy's verdicts on one signal, then drive each approved order.

        Only an `ApprovedOrder` (which only the risk gate makes) is sent; a `RiskDecision`
        is a rejection to journal, and one claiming approval is refused with `TypeError`.

        Every verdict, and every approved order (Pending), is journaled in one transaction
        before anything is sent, so a crash can never leave one leg decided and another not.
        Orders are then driven one at a time, in leg order, each through `key_name`: the key
        the configuration binds to the strategy, never one an intent names. An orderLinkId
        already journaled (the same signal run again) is resumed, never created twice.
        `closes_position`: each order closes its strategy's position whole (see
        `OrderRequest`); the strategy's other reduce-only orders on its side are cancelled
        once it is journaled, before it is sent, and a crash between the two leaves both to
        the next start's reconciliation, which does the same.
        """
        approved = [verdict for verdict in verdicts if isinstance(verdict, ApprovedOrder)]
        decisions = [_decision_of(verdict) for verdict in verdicts]
        requests = [
            build_request(approval, key_name, closes_position=closes_position)
            for approval in approved
        ]
        links = {request.order_link_id for request in requests}
        self._in_flight |= links
        try:
            # New rows, which no write still waiting in the journal's window bears on: written
            # ahead of them, so the order is not sent after a batch of some earlier fill's.
            try:
                created = await self._journal.call_ahead(
                    self._journal.record_decisions, decisions, requests
                )
            except Exception:  # the transaction rolled back (not a cancel: it may commit)
                # Not one already journaled and unfinished (its signal run again): its
                # reservation, which this approval's replaced, stands for a live order.
                self._unjournaled(
                    [a for a in approved if self._journal.unfinished(a.order_link_id) is None]
                )
                raise
            for request in requests:
                self._order_journaled(request)
            events = []
            for approval, request in zip(approved, requests, strict=True):
                if request.order_link_id in created:
                    await self._make_room(request)
                    signal_ts = approval.intent.signal_ts
                    event = await self._drive(request, signal_ts, 0, may_exist=False)
                    self._say_if_not_closed(request, event)
                    events.append(event)
                    continue
                known = await self._journal.call(self._journal.order, request.order_link_id)
                assert known is not None  # the insert was refused because it exists
                if known.status.is_terminal:
                    # Over before this approval (its leg decided again, e.g. a refused entry
                    # retried by on_order_rejected): nothing will release what it reserved.
                    self._order_changed(_event_of(known))
                events.append(await self._resume(known, resend=True))
            return events
        finally:
            self._in_flight -= links

    async def execute(self, approved: ApprovedOrder, key_name: str) -> OrderEvent:
        """`execute_all` for one approved intent; returns its order's latest state."""
        (event,) = await self.execute_all([approved], key_name)
        return event

    async def move_stop(self, move: StopMove, key_name: str) -> tuple[str, str]:
        """Set the stop loss of `key_name`'s position in `move.symbol`: (outcome, why), the
        outcome `moved`, `rejected` (the venue's final no) or `failed` (attempts spent, or the
        key disabled). Setting a stop is idempotent, so an ambiguous answer is simply retried;
        the venue's refusals (a rate limit, a ban) are waited out as a close's are: the stop
        protects the position."""
        venue = self._venues[key_name]
        self._stop_moving(key_name, move)
        last: VenueError | None = None
        attempts = _Attempts(
            self._config.max_send_attempts,
            self._config.max_close_retry_wait_s,
            asyncio.get_running_loop().time,
        )
        while attempts.next():
            try:
                await venue.set_trading_stop(
                    move.symbol, stop_loss=move.stop_loss, take_profit=None
                )
            except KeyFatalError as exc:
                self.disable_key(key_name, exc)
                return "failed", f"key {key_name} is disabled by the venue: {exc.message}"
            except OrderRejectedError as exc:
                return "rejected", str(exc)
            except VenueError as exc:
                last = exc
                if not await self._wait_to_retry(exc, attempts):
                    break
                continue
            return "moved", f"stop loss of {move.symbol} set to {move.stop_loss}"
        return "failed", f"attempts spent: {last}"

    async def cancel(self, request: OrderRequest) -> OrderEvent | None:
        """Ask the venue to cancel an order, then journal what the venue shows of it (the
        cancel, or the fill that beat it); None if the venue holds no such order. The
        request is journaled first: a restart that finds the order cancelled knows the cancel
        was the bot's own. A journal that cannot write (a full disk) does not hold the cancel
        back (a halt's: a resting entry would fill after it): only that word is lost, and
        what the venue shows of the order is returned unjournaled, for the reconciliation
        loop to journal once the journal writes again."""
        problem = await self._record_cancel(request.order_link_id)
        if problem is not None:
            logger.error(
                "cancel of {id}: the journal could not record it ({error}); sent all the same",
                id=request.order_link_id,
                error=problem,
            )
            # The bot's own: never said as a cancel by someone else when the venue reports it.
            remember(self._warned_cancels, request.order_link_id, None, _CANCELS_KEPT)
        try:
            cancelled = await self._send_cancel(request)
        except (AmbiguousError, RetryableError):
            # An earlier try may have been carried out: what the venue shows of it says.
            shown = await self._shown_after_cancel(request)
            if shown is None or not shown.status.is_terminal:
                raise
            logger.info(
                "cancel of {id}: no clear answer; the venue shows it {status}",
                id=request.order_link_id,
                status=shown.status.value,
            )
            return shown
        logger.info(
            "cancel of {id}: {result}",
            id=request.order_link_id,
            result="sent" if cancelled else "nothing open to cancel",
        )
        return await self._shown_after_cancel(request)

    async def cancel_sent(
        self, record: OrderRecord, within_s: float | None = None
    ) -> OrderEvent | None:
        """`cancel` of the order `record` holds. One sent without an answer (Submitting,
        Unknown) that the venue does not show after the cancel is not taken as absent: a
        venue can take seconds to show a new order, which trades all the while (a market
        entry fills). It is looked for (`_look_for`) for up to `within_s`; NotShownYet if it
        never shows."""
        shown = await self.cancel(record.request)
        if shown is None and record.status in MAY_EXIST_AT_VENUE:
            shown = await self._look_for(record.request, within_s)
            if shown is None:
                raise NotShownYet(
                    "sent, its answer lost, and the venue does not show it yet: it may still "
                    "rest there, or have filled"
                )
        return shown

    async def _look_for(
        self, request: OrderRequest, within_s: float | None = None
    ) -> OrderEvent | None:
        """What the venue shows of an order it may hold though a look-up just missed it,
        looked up again (and journaled as found) until it does, for at most `within_s`
        (default `unseen_final_after_s`, past which a look-up's miss is taken as final);
        None if it never did."""
        if within_s is None:
            within_s = self._config.unseen_final_after_s
        delays = _within(self._config.lookup_delays_s, within_s)
        if not delays:
            return None
        try:
            return await self._look_up_patiently(request, delays)
        except _LookupFailed:
            return None

    async def _record_cancel(self, link_id: str) -> str | None:
        """Journal that the bot asks the venue to cancel `link_id`; why not, if the journal
        could not, or not within `JOURNAL_WAIT_S` (another program's lock: the record goes
        on, and the cancel does not wait for it)."""
        recording = asyncio.ensure_future(
            self._journal.call(self._journal.record_cancel_requested, link_id)
        )
        if not await ended_within(recording):
            return f"no answer within {JOURNAL_WAIT_S:g} s: locked by another program, or stalled"
        try:
            recording.result()
        except sqlite3.OperationalError as exc:
            return str(exc)
        return None

    async def _shown_after_cancel(self, request: OrderRequest) -> OrderEvent | None:
        """`_look_up_safely` after a cancel; the venue's row unjournaled when the journal
        cannot take it (a full disk): the cancel's outcome is known all the same."""
        try:
            return await self._look_up_safely(request)
        except sqlite3.OperationalError as exc:
            logger.error(
                "cancel of {id}: its outcome could not be journaled ({error}); the "
                "reconciliation loop journals it once the journal writes again",
                id=request.order_link_id,
                error=str(exc),
            )
            try:
                return await self._venue_row(self._venues[request.key_name], request)
            except _LookupFailed:
                return None

    async def withdraw_openings(self, key_name: str, strategy: str, symbol: str) -> None:
        """Cancel the strategy's opening orders in `symbol` that may be open at the venue: a
        close signal flattens, and an entry left resting (or still filling) would open the
        position again after the close. One being sent is waited for first; then each is
        cancelled, and what filled of it is waited for until the books hold it, so the close
        that follows sees it. The waits together last at most `follow_s`; an order that could not be
        withdrawn is said as a venue_error warning (the close goes on: it reduces what is
        booked)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.follow_s
        records = await self._journal.call(self._journal.unfinished_orders)
        openings = [
            record
            for record in records
            if (record.request.key_name, record.request.strategy, record.request.symbol)
            == (key_name, strategy, symbol)
            and not record.request.reduce_only
        ]
        outcomes = await asyncio.gather(
            *(self._withdraw(record, deadline) for record in openings), return_exceptions=True
        )
        for record, outcome in zip(openings, outcomes, strict=True):
            if outcome is not None:
                logger.bind(notify="venue_error").warning(
                    "before a close: order {id} could not be withdrawn: {problem}",
                    id=record.request.order_link_id,
                    problem=outcome,
                )

    async def _withdraw(self, record: OrderRecord, deadline: float) -> str | None:
        """Cancel one opening order and wait until the books hold what filled of it; why not,
        if it could not be done by `deadline`."""
        request = record.request
        loop = asyncio.get_running_loop()
        if not await self._out_of_flight(request.order_link_id, deadline):
            return "it is still being sent or looked up"
        try:
            shown = await self.cancel_sent(record, deadline - loop.time())
        except NotShownYet as exc:
            return f"{exc}; the close reduces what the books hold"
        if shown is None:
            return None
        if not shown.status.is_terminal:
            return f"the venue still shows it {shown.status.value}"
        if shown.filled_qty == 0:
            return None
        mine = request.order_link_id not in self._watches
        watch = self._watches.setdefault(request.order_link_id, asyncio.Event())
        try:
            while not self._books_hold(shown):
                if loop.time() >= deadline:
                    return f"{shown.filled_qty} of it filled and the books do not hold it yet"
                await _heard(watch, deadline)
                watch.clear()
        finally:
            if mine:  # and what the stream said of its end meanwhile, kept for a watcher
                self._watches.pop(request.order_link_id, None)
                self._terminal.pop(request.order_link_id, None)
        return None

    async def _send_cancel(self, request: OrderRequest) -> bool:
        """`venue.cancel_order`, sent again (at most `_CANCEL_ATTEMPTS` in all) while the
        venue's answer is unclear or asks for another try."""
        venue = self._venues[request.key_name]
        for attempt in range(1, _CANCEL_ATTEMPTS):
            try:
                return await venue.cancel_order(request.order_link_id, request.symbol)
            except RetryableError as exc:
                if exc.retry_after_s > _CANCEL_WAIT_MAX_S:
                    raise
                await asyncio.sleep(exc.retry_after_s + self._jitter(exc.retry_after_s))
            except AmbiguousError:
                await asyncio.sleep(_CANCEL_RETRY_S * attempt + self._jitter(_CANCEL_RETRY_S))
        return await venue.cancel_order(request.order_link_id, request.symbol)  # the last try

    def position_closed(self, closed: StrandedBy) -> None:
        """A position closed (a stop, a target, a manual close): the key's, or one
        strategy's. Cancel, in the background, the reduce-only orders of ours that reduced
        it (of that strategy, on the side that closes what it held) still resting there,
        but none laid for a later position by its own signal (`_for_a_later_position`).
        They could only close a later position, at levels meant for this one, and would take
        its room for reduce-only orders (a ladder's legs after its stop fired). A key whose position
        stays closed is told again on every reconciliation pass: an order the venue answered
        only after the close is cancelled then."""
        for request in self._reducing(closed):
            link = request.order_link_id
            if link not in self._stranded:
                self._stranded[link] = asyncio.get_running_loop().create_task(
                    self._cancel_stranded(request, closed.cause)
                )

    async def _make_room(
        self, request: OrderRequest, answer_wait_s: float = _STRANDED_ANSWER_WAIT_S
    ) -> None:
        """For an order that closes its strategy's position (`closes_position`), cancel the
        strategy's reduce-only orders resting on its side (all of them, whatever their
        signal), and wait: they would leave it no room (Bybit trims a reduce-only order to
        what the others do not cover, 110017). One still in flight is waited for up to
        `answer_wait_s` (its orderId); one unanswered by then is left."""
        if not request.closes_position:
            return
        closing = StrandedBy(
            request.key_name,
            request.symbol,
            request.strategy,
            was_long=request.side is Side.SELL,
            cause=request.order_link_id,
        )
        await asyncio.gather(
            *(self._cancel_once_answered(r, answer_wait_s) for r in self._reducing(closing))
        )

    def _say_if_not_closed(self, request: OrderRequest, event: OrderEvent) -> None:
        """An ERROR (notify venue_error) when an order that closes its strategy's position
        (`closes_position`) did not: the reduce-only orders that protected it are cancelled,
        and what is open keeps only its old stop. A WARNING (the same notification) when
        another reduce-only market order (a close signal's) was trimmed by the venue: its
        `Filled` is for less than it was sent to close."""
        if not request.closes_position:
            if request.reduce_only and request.order_type is OrderType.MARKET:
                self._say_if_trimmed(request, event)
            return
        why = close_shortfall(event, request.qty)
        if why is None:
            return
        logger.bind(notify="venue_error").error(
            "{strategy}'s {symbol} position: its reduce-only orders were cancelled for a close "
            "at market ({id}), but {why}; what is open keeps its old stop and no target: close "
            "or protect it by hand",
            strategy=request.strategy,
            symbol=request.symbol,
            id=request.order_link_id,
            why=why,
        )

    @staticmethod
    def _say_if_trimmed(request: OrderRequest, event: OrderEvent) -> None:
        if not trimmed(event, request.qty):
            return
        logger.bind(notify="venue_error").warning(
            "{strategy}'s close {id} ({side} {symbol}) filled {filled} of {qty}: the venue "
            "trimmed it (other reduce-only orders, another client's, take the room, or the "
            "key's position is smaller than the books); the rest stays open: see `bot "
            "positions`",
            strategy=request.strategy,
            id=request.order_link_id,
            side=request.side.value,
            symbol=request.symbol,
            filled=f"{event.filled_qty.normalize():f}",
            qty=f"{request.qty.normalize():f}",
        )

    def _reducing(self, closed: StrandedBy) -> list[OrderRequest]:
        """Our reduce-only orders resting now on the side that reduces the position `closed`
        names (of its strategy, if it names one), but `closed.cause`: one placed later is for
        whatever position comes next."""
        reducing = None if closed.was_long is None else Side.SELL if closed.was_long else Side.BUY
        return [
            record.request
            for record in self._journal.committed_unfinished(closed.key_name)
            if record.request.symbol == closed.symbol
            and record.request.reduce_only
            and closed.strategy in (None, record.request.strategy)
            and reducing in (None, record.request.side)
            and record.request.order_link_id != closed.cause
            # Filled in the books already, its report still on the way: nothing to cancel.
            and (
                self._booked_qty is None
                or self._booked_qty(record.request.order_link_id) < record.venue_qty
            )
        ]

    async def _cancel_stranded(self, request: OrderRequest, cause: str) -> None:
        """Cancel one reduce-only order left by a closed position, unless it was laid for a
        later position its own signal opened (`_for_a_later_position`); it leaves
        `_stranded` when done."""
        try:
            try:
                siblings = await self._journal.call(
                    self._journal.signal_orders,
                    request.signal_source,
                    request.signal_id,
                    request.strategy,
                )
            except Exception as exc:  # run in the background: nothing else would hear of it
                logger.bind(notify="venue_error").warning(
                    "could not tell whether {id} belongs to the close of its {symbol} position "
                    "({error}); not cancelled: cancel it by hand if it is still open",
                    id=request.order_link_id,
                    symbol=request.symbol,
                    error=str(exc) or type(exc).__name__,
                )
                return
            if not _for_a_later_position(request, cause, siblings):
                await self._cancel_once_answered(request)
        finally:
            del self._stranded[request.order_link_id]

    async def _cancel_once_answered(
        self, request: OrderRequest, answer_wait_s: float = _STRANDED_ANSWER_WAIT_S
    ) -> None:
        """Cancel one reduce-only order of a closed (or closing) position, once the venue has
        answered it with its orderId if it is still in flight (waited for up to
        `answer_wait_s`); never raises."""
        link = request.order_link_id
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(answer_wait_s):
                    # The journal's committed state has no event to wait on.
                    while (known := self._journal.unfinished(link)) is not None and (  # noqa: ASYNC110
                        known.order_id is None
                    ):
                        await asyncio.sleep(_STRANDED_POLL_S)
            known = self._journal.unfinished(link)
            if known is None or known.order_id is None:
                # Ended meanwhile (filled, refused): nothing rests. Or still unanswered: a
                # cancel by orderLinkId could hit another client's order under that id.
                return
            event = await self.cancel(request)
        except Exception as exc:  # run in the background: nothing else would hear of it
            known = self._journal.unfinished(link)
            if isinstance(exc, VenueError) and known is not None and known.cancel_requested:
                # Journaled as asked for: the reconciliation loop cancels it again (`_resume`).
                logger.warning(
                    "cancel of {id}, a reduce-only order of a closed {symbol} position, failed: "
                    "{error}; the reconciliation loop asks again",
                    id=link,
                    symbol=request.symbol,
                    error=str(exc) or type(exc).__name__,
                )
                return
            logger.bind(notify="venue_error").warning(
                "could not cancel {id}, a reduce-only order of a closed {symbol} position: "
                "{error}; cancel it by hand if it is still open",
                id=link,
                symbol=request.symbol,
                error=str(exc) or type(exc).__name__,
            )
        else:
            logger.info(
                "reduce-only {id} of {strategy}: the {symbol} position it reduced is closed "
                "or turned (or being closed), so it was cancelled (the venue shows it {status})",
                id=link,
                strategy=request.strategy,
                symbol=request.symbol,
                status=event.status.value if event is not None else "gone",
            )

    def stranded(self) -> frozenset[str]:
        """The orderLinkIds of reduce-only orders being cancelled, their position closed."""
        return frozenset(self._stranded)

    async def stranded_cancelled(self, order_link_ids: Sequence[str], timeout_s: float) -> None:
        """Wait, up to `timeout_s`, until none of `order_link_ids` is being cancelled as
        stranded any more (each cancel done, or given up)."""
        cancels = [self._stranded[link] for link in order_link_ids if link in self._stranded]
        if cancels:
            await asyncio.wait(cancels, timeout=timeout_s)

    def in_flight(self) -> frozenset[str]:
        """The orderLinkIds being sent or looked up right now."""
        return frozenset(self._in_flight)

    async def reconcile(
        self, key_name: str | None = None, *, limit: int | None = -1, resend: bool = False
    ) -> int:
        """Resume unfinished orders (of one key, or all) not being driven right now.

        With `resend` (start-up, before any signal runs) an order that may never have left is
        sent; without it (the loop, while lanes run) orders are only looked up, so that a
        resend can never overtake a later signal of the same key and symbol, and an order
        resting at the venue only every `reconcile_live_interval_s` while the key's account
        stream stays up (`_stream_covers`). Returns how many
        orders were looked at: at most `limit` per key (default `reconcile_batch`, rotating
        through the backlog; None for all).
        """
        batch = self._config.reconcile_batch if limit == -1 else limit
        # As committed: a write still queued for the journal (a fill the stream just
        # reported) may not be in it yet. That is safe: a look-up comes before any resend.
        records = self._journal.committed_unfinished(key_name)
        now = asyncio.get_running_loop().time()
        by_key: dict[str, list[OrderRecord]] = {}
        for record in records:
            key = record.request.key_name
            if (
                record.request.order_link_id not in self._in_flight
                and key in self._venues
                and (resend or not self._stream_covers(record, now))
            ):
                by_key.setdefault(key, []).append(record)
        resumed = 0
        for key, pending in by_key.items():
            for record in self._rotate(key, pending, batch):
                link_id = record.request.order_link_id
                looked_at = (now, self._stream_connection(key))
                remember(self._looked_at, link_id, looked_at, _LOOKS_KEPT)
                await self._resume_in_flight(record, resend=resend)
                resumed += 1
        return resumed

    async def resume_decided(
        self, signal_source: str, signal_id: str, strategies: Collection[str]
    ) -> None:
        """Carry on, as a start does (`reconcile` with `resend`), the unfinished orders of
        one signal that `strategies` decided: its lane runs the signal again after the
        journal failed midway (`Pipeline`), and does not ask them again. An order of theirs
        that left is looked up and taken, never sent twice; one that never left (a leg after
        the failed one) is sent, on its lane, before the lane's later signals."""
        if not strategies:
            return
        for record in await self._journal.call(self._journal.unfinished_orders):
            request = record.request
            if (
                request.signal_source == signal_source
                and request.signal_id == signal_id
                and request.strategy in strategies
                and request.key_name in self._venues
            ):
                current = await self._once_not_in_flight(record)
                if current is not None:
                    await self._resume_in_flight(current, resend=True)

    async def _once_not_in_flight(self, record: OrderRecord) -> OrderRecord | None:
        """The order's record once no other pass holds it in flight, as that pass left it
        (None: finished, or still held after `_HELD_ELSEWHERE_WAIT_S`, said). Passed over, a
        leg the reconciliation loop was looking up stayed Pending for good: the loop never
        sends one, and its signal, run again, was done."""
        link_id = record.request.order_link_id
        if link_id not in self._in_flight:
            return record
        deadline = asyncio.get_running_loop().time() + _HELD_ELSEWHERE_WAIT_S
        while await self._out_of_flight(link_id, deadline):
            current = await self._journal.call(self._journal.order, link_id)
            if link_id not in self._in_flight:  # else taken again while it was read
                return None if current is None or current.status.is_terminal else current
        logger.bind(notify="venue_error").warning(
            "order {id} is still being looked up after {s:g} s: its signal's run again leaves "
            "it to the next start (which sends it if the venue lacks it and its signal is "
            "still fresh)",
            id=link_id,
            s=_HELD_ELSEWHERE_WAIT_S,
        )
        return None

    async def _out_of_flight(self, link_id: str, deadline: float) -> bool:
        """Wait until no pass holds the order in flight (being sent, or looked up); False if
        one still does at `deadline` (the event loop's time)."""
        loop = asyncio.get_running_loop()
        while link_id in self._in_flight:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_IN_FLIGHT_POLL_S)
        return True

    async def _resume_in_flight(self, record: OrderRecord, *, resend: bool) -> None:
        """`_resume`, the order counted in flight meanwhile (so that nothing else resumes,
        or cancels, it at once); a venue's failure is logged, for a later pass."""
        link_id = record.request.order_link_id
        self._in_flight.add(link_id)
        try:
            await self._resume(record, resend=resend)
        except VenueError as exc:
            logger.bind(notify="venue_error").warning(
                "reconciliation of {id} failed: {error}", id=link_id, error=exc
            )
        finally:
            self._in_flight.discard(link_id)

    def _stream_covers(self, record: OrderRecord, now: float) -> bool:
        """Whether a resting limit order needs no look-up now: the key's account stream has stayed
        up since its last one, which was within `reconcile_live_interval_s` (the stream
        reports what happens to it; each look-up costs a request of the address's budget)."""
        if record.status not in OPEN_AT_VENUE or record.request.order_type is not OrderType.LIMIT:
            return False  # a market order left open is news: a report of it may be lost
        if record.cancel_requested:
            return False  # asked to cancel and still open: the cancel is carried out again
        looked_at = self._looked_at.get(record.request.order_link_id)
        connection = self._stream_connection(record.request.key_name)
        return (
            looked_at is not None
            and connection is not None
            and looked_at[1] == connection
            and now - looked_at[0] < self._config.reconcile_live_interval_s
        )

    def _rotate(self, key: str, records: list[OrderRecord], batch: int | None) -> list[OrderRecord]:
        """The next `batch` of a key's backlog, so that every order gets its turn."""
        if batch is None or len(records) <= batch:
            return records
        start = self._reconcile_cursor.get(key, 0) % len(records)
        self._reconcile_cursor[key] = start + batch
        return (records[start:] + records[:start])[:batch]

    # the lifecycle ---------------------------------------------------------------------------

    async def _resume(self, record: OrderRecord, *, resend: bool) -> OrderEvent:
        """Carry a journaled order on from where the journal left it."""
        request, status = record.request, record.status
        if status.is_terminal:
            return _event_of(record)
        if status in OPEN_AT_VENUE:
            try:
                shown = await self._venue_row(self._venues[request.key_name], request)
            except _LookupFailed:
                return _event_of(record)  # nothing is known: never conclude from a failed look-up
            if shown is None:
                return await self._gone_from_venue(record)
            self._missing_since.pop(request.order_link_id, None)
            taken = await self._take(shown, request) or _event_of(record)
            if record.cancel_requested and not taken.status.is_terminal:
                return await self._cancel_again(request) or taken
            return taken
        stale = self._too_late(record)
        if status is OrderStatus.PENDING and not resend and stale is None:
            # Not in flight (the loop passes those over), yet perhaps sent: a send whose
            # Submitting the journal could not write (a full disk) left it Pending while the
            # order traveled. Taken as the venue shows it; else left to its lane's run of
            # the signal again (`resume_decided`), its staleness or the next start, never
            # sent from here.
            return await self._look_up_safely(request) or _event_of(record)
        # It may exist, Pending included: its send attempt is journaled while the order
        # travels, so a crash can leave a sent order Pending. Look, and resend only what the
        # venue lacks.
        spent = record.attempts >= self._config.max_total_sends
        # One a close withdrew (its cancel asked, the venue then holding nothing to cancel)
        # is never sent again: the close may have flattened what it would open.
        if resend and stale is None and not spent and not record.cancel_requested:
            # Its room first, as when it was decided; an order still unanswered now stays so
            # (nothing else in this pass answers it), and the close is said if it is trimmed.
            await self._make_room(request, answer_wait_s=0)
            event = await self._drive(request, record.signal_ts, record.attempts, may_exist=True)
            self._say_if_not_closed(request, event)
            return event
        try:
            found = await self._look_up_patiently(request, (0.0, self._config.lookup_delays_s[-1]))
        except _LookupFailed:
            return _event_of(record)  # nothing is known: never conclude from a failed look-up
        if found is not None:
            return found
        unseen_s = (utc_now() - record.updated_at).total_seconds()
        if unseen_s < self._config.unseen_final_after_s:
            return _event_of(record)  # a slow venue may still show it: a later pass decides
        if await self._journal.call(self._journal.venue_said_it_exists, request.order_link_id):
            # It answered a resend of ours 110072: it holds the order, however long it takes
            # to show it. Never concluded absent; the loop keeps looking.
            if request.order_link_id not in self._warned_unseen:
                remember(self._warned_unseen, request.order_link_id, None, _CANCELS_KEPT)
                logger.bind(notify="venue_error").warning(
                    "order {id}: the venue said it holds it (110072) but has not shown it for "
                    "{s:.0f} s; it stays Unknown and is looked up again",
                    id=request.order_link_id,
                    s=unseen_s,
                )
            return _event_of(record)
        if stale is not None and request.reduce_only:
            tried = f"sent {record.attempts} times, not found" if record.attempts else "never sent"
            reason = f"{tried} at the venue, and not to be sent now: {stale}"
            # Its position gone (its stop fired, or it was closed, while the bot was down):
            # nothing is left for it to reduce, nor for the trader to check; the rejection
            # says it. Else part of the position may be open without it: said.
            if not self._position_gone(request):
                logger.bind(notify="venue_error").warning(
                    "reduce-only order {id} of {strategy} ({symbol}: a target or a close) is "
                    "given up: {reason}; check that position's targets and stop",
                    id=request.order_link_id,
                    strategy=request.strategy,
                    symbol=request.symbol,
                    reason=reason,
                )
        elif stale is not None:
            reason = f"never reached the venue; its signal went stale ({stale})"
        elif record.cancel_requested:
            reason = "withdrawn (its cancel asked) and not found at the venue: not sent again"
        elif spent:
            reason = f"not found at the venue after {record.attempts} sends"
        else:
            reason = f"not found at the venue {unseen_s:.0f} s after its last send"
        event = await self._reject(request, reason)
        if stale is None:  # else given up before its room was made: said above
            self._say_if_not_closed(request, event)
        return event

    async def _cancel_again(self, request: OrderRequest) -> OrderEvent | None:
        """Cancel an order the bot asked the venue to cancel (journaled before the request)
        that still rests there: a kill before the cancel reached the venue, or a cancel that
        failed. The decision stands: its position closed or turned, a close needed its room,
        or a close withdrew it. Left resting, a reduce-only one takes profit on whatever
        position comes next at levels meant for the gone one (and takes that ladder's room
        for targets), and makes a flip decline as unfinished work. None if the venue did not
        answer clearly: the next pass tries again (a plain warning, no notification)."""
        if request.order_link_id in self._stranded:
            return None  # being cancelled right now
        logger.info(
            "order {id}: its cancel was asked for but it still rests at the venue; cancelling "
            "it again",
            id=request.order_link_id,
        )
        try:
            return await self.cancel(request)
        except (AmbiguousError, RetryableError) as exc:
            logger.warning(
                "cancel of {id} failed again: {error}; the next reconciliation pass asks again",
                id=request.order_link_id,
                error=str(exc),
            )
            return None

    async def _gone_from_venue(self, record: OrderRecord) -> OrderEvent:
        """An order the venue acknowledged that a look-up, which answered, did not find open
        nor in its history. A venue can lose its state (a simulator started again without
        it), the key can now open another account, or the order ended (filled, cancelled)
        longer ago than the venue's history answers without a time range (Bybit: 7 days),
        while the bot was down: the order rests on no book the bot trades on, yet the
        journal would hold it open for ever, counted in the exposure and the open orders,
        holding back its strategy's next entries, past any cancel (the venue answers
        110001). Once look-ups have missed it for `unseen_final_after_s`, it is journaled
        Cancelled, with what the journal knows it filled (its fills reach the books by the
        fill look-up, not by this row), and said."""
        request = record.request
        now = asyncio.get_running_loop().time()
        first = self._missing_since.get(request.order_link_id)
        if first is None:
            remember(self._missing_since, request.order_link_id, now, _LOOKS_KEPT)
            return _event_of(record)
        if now - first < self._config.unseen_final_after_s:
            return _event_of(record)  # one more look, later: a venue slow to show it
        self._missing_since.pop(request.order_link_id, None)
        missed_s = now - first
        reason = (
            f"gone from the venue: acknowledged ({record.status.value}), then not found open "
            f"nor in its order history for {missed_s:.0f} s (the venue lost it, the key now "
            "opens another account, or it ended before the history the venue keeps at hand)"
        )
        logger.bind(notify="venue_error").warning(
            "order {id} of {strategy} ({side} {symbol}) journaled Cancelled: {reason}; check "
            "the account at the venue",
            id=request.order_link_id,
            strategy=request.strategy,
            side=request.side.value,
            symbol=request.symbol,
            reason=reason,
        )
        return await self._record(
            OrderEvent(
                order_link_id=request.order_link_id,
                status=OrderStatus.CANCELLED,
                order_id=record.order_id,
                filled_qty=record.filled_qty,
                avg_price=record.avg_price,
                reason=reason,
            )
        )

    async def _drive(
        self,
        request: OrderRequest,
        signal_ts: datetime | None,
        sends: int,
        *,
        may_exist: bool,
    ) -> OrderEvent:
        """Send until the venue holds the order or says a final no; bounded attempts.

        `sends` is how many times the order was sent before (its journaled attempts);
        `may_exist`: an earlier send may have reached the venue (look before sending).

        A market order is followed once placed: what the account stream says of it is
        listened for from before its first send, so a report that beats the venue's
        acknowledgement is kept for the follower.
        """
        link_id = request.order_link_id
        if request.order_type is OrderType.MARKET:
            self._watches[link_id] = asyncio.Event()
        try:
            return await self._send_until_held(request, signal_ts, sends, may_exist=may_exist)
        finally:
            self._watches.pop(link_id, None)
            self._terminal.pop(link_id, None)

    async def _send_until_held(
        self,
        request: OrderRequest,
        signal_ts: datetime | None,
        sends: int,
        *,
        may_exist: bool,
    ) -> OrderEvent:
        venue = self._venues[request.key_name]
        log = logger.bind(order_link_id=request.order_link_id, strategy=request.strategy)
        last: VenueError | None = None
        stopped = "attempts spent"  # why the loop below stopped sending, if it breaks
        refused_unread = False  # the last send was refused unread (a rate limit, a ban)
        attempts = _Attempts(
            self._config.max_send_attempts,
            self._patience_s(request),
            asyncio.get_running_loop().time,  # the clock the waits between tries sleep on
        )
        while attempts.next():
            attempt = attempts.number
            if may_exist:
                try:
                    found = await self._look_up(venue, request)
                except _LookupFailed:
                    await self._backoff(attempt)
                    continue
                if found is not None:
                    log.info("order found at the venue; not sent again")
                    return found
            if sends >= self._config.max_total_sends:
                break
            # The leverage first: its requests take time, and the checks below must be the
            # last word before the send (a halt or a deadline that came meanwhile holds it).
            refused = await self._set_leverage(venue, request)
            if refused is not None:
                last = refused
                if isinstance(refused, KeyFatalError):
                    self.disable_key(request.key_name, refused)
                    return await self._key_disabled(request, refused.message, may_exist=may_exist)
                if isinstance(refused, OrderRejectedError):
                    if may_exist:  # an earlier send may have landed: reconciliation decides
                        stopped = f"not sent again: leverage could not be set: {refused.message}"
                        break
                    return await self._record(
                        OrderEvent(
                            order_link_id=request.order_link_id,
                            status=OrderStatus.REJECTED,
                            reason=f"not sent: leverage could not be set: {refused.message}",
                            ret_code=refused.ret_code,
                        )
                    )
                if not await self._wait_to_retry(refused, attempts):
                    break
                continue
            stale = self._stale(request, signal_ts)
            if stale is not None:  # waits and retries took too long: never send it late
                if may_exist:  # an earlier send may have landed: reconciliation decides
                    stopped = f"not sent again: {stale}"
                    break
                return await self._reject(request, f"not sent: {stale}")
            disabled = self._disabled_keys.get(request.key_name)
            if disabled is not None:
                return await self._key_disabled(request, disabled, may_exist=may_exist)
            halted = None if request.reduce_only else self._blocked(request.strategy)
            if halted is not None:  # a halt since the approval: never send it now
                if may_exist:  # an earlier send may have landed: reconciliation decides
                    stopped = f"not sent again: {halted}"
                    break
                return await self._reject(request, f"not sent: {halted}")
            # The send attempt is journaled while the order travels, not before: the journal's
            # queue keeps it ahead of every later write, and a crash that loses it leaves the
            # order Pending, whose resend the venue refuses as a duplicate orderLinkId (looked
            # up then, never placed twice).
            # After a try refused unread, the journal's Submitting (and its count of sends)
            # is that try's, which never reached the venue: it stands for this one.
            # Its time by the venue's clock is kept with it (`_made_before_our_first_send`),
            # unless an earlier send may have gone unjournaled (a crash lost its Submitting):
            # then this is not the first send, and says nothing of when ours was made.
            submitting = OrderEvent(
                order_link_id=request.order_link_id,
                status=OrderStatus.SUBMITTING,
                signing_offset_ms=None if may_exist and sends == 0 else venue.clock_offset_ms,
            )
            written = None if refused_unread else self._journal.submit_order_event(submitting)
            refused_unread = False
            sends += 1
            # Asked again once the key's rate limits let the order go: the wait for room (up
            # to 30 s) can outlast a halt answered meanwhile, or the signal's deadline, and
            # the order must not leave after either.
            hold = None if request.reduce_only else partial(self._held, request, signal_ts)
            try:
                try:
                    ack = await venue.place_order(request, hold)
                finally:  # a journal that cannot write stops the drive here
                    # Mostly written by now: then without a trip through the event loop.
                    if written is not None:
                        if not written.done():
                            await asyncio.wrap_future(written)
                        self._changed(submitting, written.result())
            except DuplicateOrderError as exc:
                # It exists (a lost answer of an earlier send, or an earlier journal's): look
                # it up, with patience. Before this one, had any send of ours reached it?
                sent_before, may_exist, last = may_exist, True, exc
                if sent_before:
                    # The venue's word that ours landed, journaled (its ret_code kept with
                    # the event): a venue slow to show it must never make it "never sent".
                    await self._record(_failure(request, OrderStatus.UNKNOWN, exc))
                try:
                    found = await self._look_up_patiently(
                        request, self._config.lookup_delays_s, sent_before=sent_before
                    )
                except _LookupFailed:
                    continue
                if found is not None:
                    return found
                continue
            except AmbiguousError as exc:
                last, may_exist = exc, True
                log.warning("send was ambiguous: {error}", error=str(exc))
                await self._record(_failure(request, OrderStatus.UNKNOWN, exc))
                await self._backoff(attempt)
                continue
            except RetryableError as exc:
                last, refused_unread = exc, True
                sends -= 1  # refused unread (a rate limit, a ban): it never reached the venue
                if not await self._wait_to_retry(exc, attempts):
                    break
                continue
            except OrderRejectedError as exc:
                if may_exist:  # an earlier send may have landed: never rejected on a guess
                    log.warning("resend rejected ({error}); reconciling", error=str(exc))
                    try:
                        found = await self._look_up_patiently(request, self._config.lookup_delays_s)
                    except _LookupFailed:
                        found = None
                    return found or await self._record(_failure(request, OrderStatus.UNKNOWN, exc))
                log.bind(notify="rejection").warning("order rejected: {error}", error=str(exc))
                return await self._record(_failure(request, OrderStatus.REJECTED, exc))
            except KeyFatalError as exc:
                self.disable_key(request.key_name, exc)
                return await self._key_disabled(
                    request, exc.message, may_exist=may_exist, ret_code=exc.ret_code
                )
            except HeldError as exc:  # halted while it waited for room: it never left
                if may_exist:  # an earlier send may have landed: reconciliation decides
                    stopped = f"not sent again: {exc.message}"
                    break
                return await self._reject(request, f"not sent: {exc.message}")
            log.info("order placed", order_id=ack.order_id, attempt=attempt + 1)
            self._placed[request.key_name] += 1
            self._order_identified(request.order_link_id, ack.order_id)
            # Journaled with the stream's reports of the order, which follow within
            # milliseconds: one commit for all. Lost in a crash, it leaves the order
            # Submitting, which start-up looks up at the venue before anything is sent again.
            self._journal.defer(
                partial(self._journal.record_order_event, ack), order_link_id=ack.order_link_id
            )
            if request.order_type is OrderType.MARKET:
                return await self._follow(venue, request, ack.order_id) or ack
            return ack
        return await self._give_up(request, last, stopped, may_exist=may_exist)

    async def _set_leverage(self, venue: Venue, request: OrderRequest) -> VenueError | None:
        """Set the order's leverage on the venue unless it is known to be so (without a wish,
        lower the venue's to the order's `max_leverage` if it is higher: for an opening order
        whose symbol's leverage is not known yet, the venue is asked first, and if it does
        not say, the leverage is set to `max_leverage`, never left above it); the venue's
        refusal, if any. Leverage is per symbol and account: remembered per key, and only
        what this run set, read or then heard from the venue (`position_updated`; the books'
        last report may be the journal's, from before a restart: a leverage changed while the
        bot was down would pass for capped)."""
        where = (request.key_name, request.symbol)
        known = self._leverage.get(where)
        target = request.leverage
        if request.max_leverage is not None:
            self._leverage_caps[where] = request.max_leverage
        try:
            if target is None and request.max_leverage is not None:
                if known is None and not request.reduce_only:
                    known = await venue.symbol_leverage(request.symbol)
                    if known is not None:
                        self._leverage[where] = known
                if known is not None:
                    target = min(known, request.max_leverage)
                elif not request.reduce_only:
                    target = request.max_leverage
            if target is None or target == known:
                return None
            self._leverage.pop(where, None)  # until the venue confirms: an answer may be lost
            if known is not None:
                self._leverage_replaced[where] = known
            await venue.set_leverage(request.symbol, target)
        except VenueError as exc:
            doing = "reading the leverage" if target is None else f"setting leverage {target}"
            logger.warning(
                "{doing} on {symbol} failed: {error}",
                doing=doing,
                symbol=request.symbol,
                error=str(exc),
            )
            return exc
        self._leverage[where] = target
        return None

    def _patience_s(self, request: OrderRequest) -> float:
        """How long the venue's refusals of `request` are waited out (see `_Attempts`)."""
        if request.reduce_only:
            return self._config.max_close_retry_wait_s
        return self._config.max_retry_wait_s

    async def _wait_to_retry(self, exc: VenueError, attempts: _Attempts) -> bool:
        """Wait as the venue asked (a rate limit) or back off; False if the wait is longer
        than the `attempts`' patience. A refusal for the rate limit or a ban makes the next
        of `attempts` free (a clock error is retried at once, so it stays counted)."""
        if not isinstance(exc, RetryableError):
            await self._backoff(attempts.number)
            return True
        if exc.ret_code != CLOCK_DRIFT_CODE:
            attempts.refused_unread()
        if exc.retry_after_s > attempts.patience_s:
            logger.warning("venue asks to wait {s:.0f} s; giving up this run", s=exc.retry_after_s)
            return False
        await asyncio.sleep(exc.retry_after_s + self._jitter(self._config.backoff_base_s))
        return True

    def _stale(self, request: OrderRequest, signal_ts: datetime | None) -> str | None:
        """Why it is too late to send `request`: its signal went stale. Never for a reduce-only
        order (as in the gate: it adds no exposure)."""
        if signal_ts is None or request.reduce_only:
            return None
        return self._staleness(signal_ts)

    def _held(self, request: OrderRequest, signal_ts: datetime | None) -> str | None:
        """Why an opening order must not leave after all once its turn under the rate limits
        came: a halt, or its signal gone stale, since the checks before the wait."""
        return self._blocked(request.strategy) or self._stale(request, signal_ts)

    def _too_late(self, record: OrderRecord) -> str | None:
        """Why an order a start-up (or the loop) finds perhaps never sent must not be sent
        now: an opening one whose signal went stale. A reduce-only one (a target, a close,
        whose signal may be hours old) is judged by the position it reduces, however late:
        it is due while the strategy still holds it, in its books and at the venue
        (`closable_size`; the strategy opens nothing while the bot is down, so a position
        it holds is that one), a close of the whole position (`closes_position`) only while
        it holds all of it. Without the books to judge by, a reduce-only order decided, or
        last sent, longer ago than a signal may be old is too late (its journal row's time):
        after a long time down, the position it was meant for may be gone."""
        request = record.request
        if request.reduce_only and self._closable_size is not None:
            if self._position_gone(request):
                return f"{request.strategy} no longer holds the position it was to reduce"
            held = self._closable_size(request.key_name, request.strategy, request.symbol)
            if request.closes_position and abs(held) < request.qty:
                # Part of it closed meanwhile (a target): the rest on the key may be another's.
                return (
                    f"{request.strategy} holds {abs(held)} of the position now, less than the "
                    f"close's {request.qty}"
                )
            return None
        if request.reduce_only:
            stale = self._staleness(record.updated_at)
            return None if stale is None else f"last tried too long ago ({stale})"
        return self._stale(request, record.signal_ts)

    def _position_gone(self, request: OrderRequest) -> bool:
        """Whether the books say the strategy no longer holds the position the reduce-only
        `request` was to reduce (False without the books to judge by)."""
        if self._closable_size is None:
            return False
        held = self._closable_size(request.key_name, request.strategy, request.symbol)
        return not _reduces(request.side, held)

    async def _give_up(
        self, request: OrderRequest, last: VenueError | None, why: str, *, may_exist: bool
    ) -> OrderEvent:
        """Sending stopped (`why`: attempts spent, or a resend of an order that may exist
        barred): Unknown if the venue may hold it (reconciled later), else Rejected with the
        venue's last answer."""
        status = OrderStatus.UNKNOWN if may_exist else OrderStatus.REJECTED
        logger.bind(notify="venue_error").warning(
            "order {id} of {strategy} ({side} {qty} {symbol}): {why}, journaled "
            "{status}; the venue's last answer: {error}",
            id=request.order_link_id,
            why=why,
            strategy=request.strategy,
            side=request.side.value,
            qty=request.qty,
            symbol=request.symbol,
            status=status.value,
            error=str(last or "none (no send answered; its look-ups failed or found nothing)"),
        )
        if last is None:
            last = VenueError(f"{why} without an answer")
        return await self._record(_failure(request, status, last))

    async def _key_disabled(
        self, request: OrderRequest, reason: str, *, may_exist: bool, ret_code: int | None = None
    ) -> OrderEvent:
        """Unknown if an earlier send may have landed (a dead key cannot look it up: a later
        reconciliation will), else Rejected."""
        status = OrderStatus.UNKNOWN if may_exist else OrderStatus.REJECTED
        message = f"key {request.key_name} is disabled: {reason}"
        logger.warning("order {id}: {message}", id=request.order_link_id, message=message)
        return await self._record(
            OrderEvent(
                order_link_id=request.order_link_id,
                status=status,
                reason=message,
                ret_code=ret_code,
            )
        )

    # look-ups --------------------------------------------------------------------------------

    async def _look_up(
        self,
        venue: Venue,
        request: OrderRequest,
        order_id: str | None = None,
        *,
        sent_before: bool = True,
    ) -> OrderEvent | None:
        """The venue's view of the order, journaled; None if it holds no such order.
        `order_id`: the venue's id of ours, if the caller knows it (else the journal's);
        `sent_before`: whether a send of ours may have reached the venue before (False when
        the first send it read was refused as a duplicate: what is there is not ours).

        What the venue shows under our orderLinkId may be another client's order (`not_ours`:
        another symbol, side, type or reduce-only flag, or, once the venue has given ours an
        orderId, another one): before ours has an orderId, ours cannot be there under that id,
        and never will be, so the order is rejected; after, the row is passed over. Before
        ours has an orderId, terms a client can amend that differ from ours (`unlike_request`)
        tell another client's order only if no send of ours can have landed; else the order is
        taken as ours, amended, with a warning. (The venue looks in every symbol, so a foreign
        order in another symbol is found, and told apart by it.)"""
        found = await self._venue_row(venue, request)
        if found is None:
            return None
        return await self._take(found, request, order_id, sent_before=sent_before)

    @staticmethod
    async def _venue_row(venue: Venue, request: OrderRequest) -> OrderEvent | None:
        """What the venue shows under the order's orderLinkId (None: nothing); raises
        `_LookupFailed` if it could not be asked."""
        try:
            return await venue.get_order(request.order_link_id, request.symbol)
        except VenueError as exc:
            logger.warning("order look-up failed: {error}", id=request.order_link_id, error=exc)
            raise _LookupFailed from exc

    async def _take(
        self,
        found: OrderEvent,
        request: OrderRequest,
        order_id: str | None = None,
        *,
        sent_before: bool = True,
    ) -> OrderEvent | None:
        """`found`, the venue's row under the order's orderLinkId, journaled as the order's if
        it is ours (see `_look_up`); None if it is another client's, passed over."""
        order_id = order_id or self._journal.venue_order_id(request.order_link_id)
        problem = not_ours(found, request, order_id)
        amended = unlike_request(found, request) if problem is None and order_id is None else None
        # A send of ours may have landed (its answer lost: a crash, a cut connection) only if
        # the venue made the order after our first send left.
        if (
            amended is not None
            and sent_before
            and await self._made_before_our_first_send(found, request)
        ):
            sent_before = False
            amended = f"{amended}; made at the venue before our first send"
        if amended is not None and not sent_before:
            problem = amended  # there before our first send reached the venue: not ours
        elif amended is not None:
            self._amendment_said(request.order_link_id, _amended(found, request))
            logger.bind(notify="foreign").warning(
                "order {id} is at the venue with other terms than it was sent with ({terms}): "
                "taken as ours, amended by another client; check that it is what you want",
                id=request.order_link_id,
                terms=amended,
            )
        if problem is None:
            return await self._apply(found)
        if order_id is None:
            return await self._reject_foreign(request, problem)
        logger.warning(
            "order look-up found another client's order under our orderLinkId ({problem}): "
            "passed over",
            id=request.order_link_id,
            problem=problem,
        )
        return None

    async def _made_before_our_first_send(self, found: OrderEvent, request: OrderRequest) -> bool:
        """Whether the venue created `found` before our first send of `request` could have
        reached it: then it is another client's order, however that send ended.

        The first send's time is its journaled Submitting event, taken before the send, by
        our clock, with the signing offset of then; the venue's `createdTime` is by its
        clock. A signed request is accepted only while its timestamp (ours plus the signing
        offset) is under the venue's time plus 1 s (Bybit's rule), so an order of ours is
        created no earlier than that Submitting time plus the offset less 1 s: a further
        second of margin on top. Unknown (an older journal, or a first send that may have
        gone unjournaled): never said to be before."""
        created = found.venue_created_at
        if created is None:
            return False
        journal = self._journal
        events = await journal.call(journal.order_events, request.order_link_id)
        sends = [event for event in events if event.status is OrderStatus.SUBMITTING]
        signed = [(e.ts, e.signing_offset_ms) for e in sends if e.signing_offset_ms is not None]
        if not sends or len(signed) < len(sends):
            return False  # a send's venue time is not known (or a first send went unjournaled)
        # Each send by the venue's clock with the offset it was signed with: the offset now
        # may be higher (a resync after our clock stepped back, another run), which would
        # move our send later than it was. The lower of the two is taken: a try refused
        # unread (10002, the clock resynced) is resent under its earlier Submitting, with
        # the offset of now.
        now_ms = self._venues[request.key_name].clock_offset_ms
        earliest_ours = min(
            ts + timedelta(milliseconds=min(offset_ms, now_ms)) for ts, offset_ms in signed
        )
        return created < earliest_ours - _CREATED_MARGIN

    async def _look_up_safely(self, request: OrderRequest) -> OrderEvent | None:
        """A look-up whose failure counts as 'not seen'."""
        try:
            return await self._look_up(self._venues[request.key_name], request)
        except _LookupFailed:
            return None

    async def _look_up_patiently(
        self, request: OrderRequest, delays_s: Sequence[float], *, sent_before: bool = True
    ) -> OrderEvent | None:
        """Look up an order that may exist, once after each delay, until the venue shows it
        (a new order can take a moment to become visible to queries); `sent_before` as for
        `_look_up`.

        None only if at least one look-up succeeded and none showed the order; raises
        `_LookupFailed` if every look-up failed, since nothing is known then.
        """
        venue = self._venues[request.key_name]
        answered = False
        for delay in delays_s:
            await asyncio.sleep(delay)
            try:
                found = await self._look_up(venue, request, sent_before=sent_before)
            except _LookupFailed:
                continue
            if found is not None:
                return found
            answered = True
        if not answered:
            raise _LookupFailed
        return None

    def fill_booked(self, fill: Execution, strategy: str | None = None) -> None:
        """A fill of the order is in the account's books: wake whoever follows it."""
        watch = self._watches.get(fill.order_link_id)
        if watch is not None:
            watch.set()

    def position_updated(self, update: PositionUpdate) -> None:
        """The venue reported a position: a leverage other than the one this run set, read
        or last heard was changed since, by hand or by another client of the key. It is
        known from now on, so the next order sets it back if it must (a report older than our
        own change costs one request too many), and the next change is judged against it.
        One above the cap of the symbol's last opening order (before one: `leverage_cap`)
        while a position is open is a WARNING (notify foreign): that position's liquidation
        price moved nearer. The first report of a symbol this run (the start's, a
        reconnection's) is judged too: the leverage may have been raised while the bot was
        down."""
        where = (update.key_name, update.symbol)
        ours = self._leverage.get(where)
        if update.leverage and update.leverage == ours:
            # The venue holds ours: a report of the one replaced is a change again from now.
            self._leverage_replaced.pop(where, None)
        if not update.leverage or update.leverage == ours:
            return  # no change
        self._leverage[where] = update.leverage
        cap = self._leverage_caps.get(where) or self._configured_leverage_cap(*where)
        late = update.leverage == self._leverage_replaced.get(where)  # from before our change
        if update.size == 0 or cap is None or update.leverage <= cap or late:
            if ours is None:
                return  # the first this run has heard of it: nothing changed that it knows
            logger.info(
                "the venue reports {symbol} on key {key} at {x}x, not the {ours}x this run "
                "set, read or heard: it is checked against max_leverage before the next order",
                symbol=update.symbol,
                key=update.key_name,
                x=update.leverage,
                ours=ours,
            )
            return
        logger.bind(notify="foreign").warning(
            "the open {symbol} position on key {key} is at {x}x, above max_leverage {cap}x: "
            "{how}; its liquidation price is that much nearer until the next order of the "
            "symbol sets it back, or you do",
            symbol=update.symbol,
            key=update.key_name,
            x=update.leverage,
            cap=cap,
            how="changed at the venue, not by the bot (by hand on Bybit, or by another client "
            "of the key)"
            if ours is not None
            else "so at the venue when this run first heard of it (set by hand on Bybit or by "
            "another client of the key, perhaps while the bot was down; or max_leverage was "
            "lowered since)",
        )

    def order_updated(self, event: OrderEvent) -> None:
        """The account stream moved an order forward: wake whoever follows it (the stream is
        alive), saying whether the order is terminal now; and say so when an order of ours
        was cancelled at the venue by someone other than the bot."""
        self._warn_if_cancelled_elsewhere(event)
        self._warn_if_amended_elsewhere(event)
        watch = self._watches.get(event.order_link_id)
        if watch is not None:
            if event.status.is_terminal:
                self._terminal[event.order_link_id] = event
            watch.set()

    def _warn_if_cancelled_elsewhere(self, event: OrderEvent) -> None:
        """A WARNING (notify foreign), once per order, when one of our open orders is
        cancelled at the venue by a user (by hand on Bybit, or another client of the key)
        while the bot did not ask for it: what its signal asked for is not traded further."""
        link_id = event.order_link_id
        if event.reason != _CANCELLED_BY_USER or link_id in self._warned_cancels:
            return
        record = self._journal.unfinished(link_id)
        if record is None or record.cancel_requested:
            return  # not ours, known to be over, or the bot's own cancel (journaled first)
        remember(self._warned_cancels, link_id, None, _CANCELS_KEPT)
        logger.bind(notify="foreign").warning(
            "order {id} was cancelled at the venue, not by the bot (by hand on Bybit, or by "
            "another client of the key); what is left of it is not traded",
            id=link_id,
        )

    def _warn_if_amended_elsewhere(self, event: OrderEvent) -> None:
        """A WARNING (notify foreign), once per change, when the venue reports one of our
        unfinished orders with terms its signal did not ask for that only a user sets (by hand
        on Bybit, or another client of the key): a dearer limit (a buy's higher, a sell's
        lower), a reduce-only order grown, another stop loss or take profit. Another quantity
        of an opening order is the risk gate's to say (it counts the venue's from then on);
        what the venue does of itself (trims a reduce-only order, moves a limit in to its price
        band) is not said."""
        link_id = event.order_link_id
        record = self._journal.unfinished(link_id)
        if record is None:
            return  # not ours, or known to be over
        terms = _amended(event, record.request)
        # What was said last: this run's word, or the journal's (said before a restart).
        if self._warned_terms.get(link_id, record.amendment_said) == terms:
            return  # said already (the report changes nothing of it), or nothing to say
        self._amendment_said(link_id, terms)
        if terms is None:
            return  # amended back: a next change is news
        request = record.request
        logger.bind(notify="foreign").warning(
            "order {id} ({side} {symbol}) was amended at the venue, not by the bot (by hand on "
            "Bybit, or by another client of the key): {terms}; it trades on those terms "
            "unless you amend it back",
            id=link_id,
            side=request.side,
            symbol=request.symbol,
            terms=terms,
        )

    def _amendment_said(self, order_link_id: str, said: str | None) -> None:
        """Remember what was said of the order amended elsewhere (None: amended back), in
        this run and in the journal (a deferred write: a crash before it says it once more)."""
        remember(self._warned_terms, order_link_id, said, _CANCELS_KEPT)
        self._journal.submit(self._journal.record_amendment_said, order_link_id, said)

    async def _follow(
        self, venue: Venue, request: OrderRequest, order_id: str | None
    ) -> OrderEvent | None:
        """Follow a new order (the venue's `order_id`) until it is terminal or `follow_s` has
        passed.

        The account stream normally reports the fill within milliseconds; only if it stays
        silent (it is down, or slow) is the order looked up by REST. The answer is what the
        stream said of the terminal order, not a read-back from the journal: the journal
        records the same report (a deferred write, which any later `call` writes first; one
        that fails is logged, and the next start's catch-up brings the order's state again).
        `_drive` listens from before the send, so a report that came before the
        acknowledgement is already here. A terminal report of another orderId under our
        orderLinkId (another client's order, `not_ours`) is passed over.
        """
        link_id = request.order_link_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.follow_s
        watch = self._watches.setdefault(link_id, asyncio.Event())
        terminal: OrderEvent | None = None
        while self._stream_live(request.key_name) and loop.time() < deadline:
            if not await _heard(watch, deadline):
                break  # the stream is silent: look it up instead
            watch.clear()
            terminal = terminal or self._terminal.pop(link_id, None)
            if terminal is not None and not_ours(terminal, request, order_id) is not None:
                terminal = None  # the keeper has warned of it
            if terminal is None:
                continue  # New or a partial fill: nothing to answer yet
            if self._books_hold(terminal):
                return terminal
        if terminal is None:
            terminal = await self._poll(venue, request, order_id, deadline)
            if terminal is None or not terminal.status.is_terminal:
                return terminal
            # Looked up by REST (the stream silent): the reconciliation loop fetches its
            # fills by REST too, each `reconcile_interval_s`; the lane's next signal is sized
            # from the books, so they are waited for while the follow lasts.
            while not self._books_hold(terminal) and loop.time() < deadline:  # noqa: ASYNC110 - the books have no event to wait on
                await asyncio.sleep(_BOOKED_POLL_S)
        if not self._books_hold(terminal):  # not in time: say so, go on
            logger.warning("order {id}: terminal, its fills not booked yet", id=link_id)
        return terminal

    def _books_hold(self, terminal: OrderEvent) -> bool:
        """Whether the account's books hold every fill of a terminal order."""
        if self._booked_qty is None or terminal.filled_qty == 0:
            return True
        return self._booked_qty(terminal.order_link_id) >= terminal.filled_qty

    async def _poll(
        self, venue: Venue, request: OrderRequest, order_id: str | None, deadline: float
    ) -> OrderEvent | None:
        """Look a new order up by REST until it is terminal or the deadline passes."""
        loop = asyncio.get_running_loop()
        latest: OrderEvent | None = None
        for pause in _FOLLOW_POLLS_S:
            if loop.time() + pause > deadline:
                break
            await asyncio.sleep(pause)
            try:
                found = await self._look_up(venue, request, order_id)
            except _LookupFailed:
                continue
            if found is not None:
                latest = found
                if found.status.is_terminal:
                    break
        return latest

    # journal ---------------------------------------------------------------------------------

    async def _apply(self, event: OrderEvent) -> OrderEvent:
        """Journal what the venue showed, if it moves the order forward; return the order's
        journaled state either way."""
        self._warn_if_cancelled_elsewhere(event)  # a look-up may be the first to see it
        self._warn_if_amended_elsewhere(event)
        await self._record(event)
        record = await self._journal.call(self._journal.order, event.order_link_id)
        return event if record is None else _event_of(record)

    async def _record(self, event: OrderEvent) -> OrderEvent:
        moved = await self._journal.call(self._journal.record_order_event, event)
        self._changed(event, moved)
        if event.order_id:
            self._order_identified(event.order_link_id, event.order_id)
        elif moved and event.status.is_terminal:  # ended without the venue ever taking it
            self._order_identified(event.order_link_id, None)
        return event

    def _changed(self, event: OrderEvent, moved: bool) -> None:
        """The risk ledger hears of every change the journal has just made to an order: the
        venue's quantity and limit price of it (another client may have amended it), its end."""
        if moved:
            self._order_changed(event)

    async def _reject(
        self, request: OrderRequest, reason: str, *, notify: str | None = None
    ) -> OrderEvent:
        log = logger.bind(notify=notify) if notify else logger
        log.warning("order {id} rejected: {reason}", id=request.order_link_id, reason=reason)
        return await self._record(
            OrderEvent(
                order_link_id=request.order_link_id, status=OrderStatus.REJECTED, reason=reason
            )
        )

    async def _reject_foreign(self, request: OrderRequest, problem: str) -> OrderEvent:
        """Reject an order never placed because the venue holds another client's order under
        its orderLinkId (`problem` says how we know), said as a foreign-client warning."""
        return await self._reject(
            request,
            f"the venue holds another client's order under its orderLinkId ({problem}); "
            "give each program on a key its own strategy names, or its own key",
            notify="foreign",
        )

    # waiting ---------------------------------------------------------------------------------

    async def _backoff(self, attempt: int) -> None:
        base = min(self._config.backoff_base_s * 2**attempt, self._config.backoff_max_s)
        await asyncio.sleep(base + self._jitter(base))

    def _jitter(self, scale: float) -> float:
        return self._rng.uniform(0, _JITTER * scale)


class _Attempts:
    """The attempts of one drive of an order: `limit` of them, except that a try the venue
    refused unread for its rate limit or a ban (nothing reached it) is followed by one that
    does not count, while the drive's first such refusal is under `patience_s` old (nor is a
    rate limit's reset or a ban longer than that waited for). Another
    client of the key can take the whole rate limit for a while: counted, those refusals
    would spend the attempts in a second or two, and lose the signal; the signal's age
    bounds them too (a stale order is never sent)."""

    def __init__(self, limit: int, patience_s: float, clock: Callable[[], float]) -> None:
        self.number = -1  # of the current attempt, counted ones only
        self.patience_s = patience_s
        self._limit = limit
        self._clock = clock
        self._refused_since: float | None = None
        self._free = False

    def next(self) -> bool:
        """Start the next attempt; False once they are spent."""
        if self._free:
            self._free = False
            return True
        self.number += 1
        return self.number < self._limit

    def refused_unread(self) -> None:
        """This try was refused unread: the next one is free while refusals are recent."""
        now = self._clock()
        if self._refused_since is None:
            self._refused_since = now
        self._free = now - self._refused_since < self.patience_s


def _decision_of(verdict: Verdict) -> RiskDecision:
    if isinstance(verdict, ApprovedOrder):
        return verdict.decision
    if verdict.approved:
        raise TypeError("an approval must come from the risk gate as an ApprovedOrder")
    return verdict


def _failure(request: OrderRequest, status: OrderStatus, exc: VenueError) -> OrderEvent:
    return OrderEvent(
        order_link_id=request.order_link_id,
        status=status,
        reason=exc.message,
        ret_code=exc.ret_code,
    )


async def _heard(watch: asyncio.Event, deadline: float) -> bool:
    """Whether a report of the order (`watch`) comes within the stream's grace period, and
    before `deadline` (loop time). A timeout scope, not `wait_for`: no task per wake-up of
    every order."""
    if not watch.is_set():
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(_STREAM_GRACE_S, deadline - loop.time())):
                await watch.wait()
    return watch.is_set()


def _reduces(side: Side, position: Decimal) -> bool:
    """Whether an order of `side` reduces a signed `position` (a sell a long, a buy a short)."""
    return position > 0 if side is Side.SELL else position < 0


def _for_a_later_position(leg: OrderRequest, cause: str, siblings: Sequence[OrderRecord]) -> bool:
    """Whether the reduce-only `leg` was laid for a position its own signal opened after the
    fill of `cause` closed or turned the last one: `cause` is an order of that signal (among
    `siblings`, the signal's orders of its strategy) that opened (a flip's entry), or that
    closed before another of them opened (a close, then a new entry and its target, in one
    batch). One of a signal whose target or close closed the position is not (a ladder's
    other targets): the strategy's share is gone, though another client's position may keep
    the venue's open, and it would take profit on a later position."""
    requests = {record.request.order_link_id: record.request for record in siblings}
    closing = requests.get(cause)
    if closing is None:
        return False
    if not closing.reduce_only:
        return True
    return any(
        not other.reduce_only and closing.leg < other.leg < leg.leg for other in requests.values()
    )


def _within(delays_s: Sequence[float], within_s: float) -> list[float]:
    """`delays_s`, the last repeated, cut to add up to `within_s`."""
    spread: list[float] = []
    more = itertools.chain(delays_s, itertools.repeat(max(delays_s[-1], _IN_FLIGHT_POLL_S)))
    left = within_s
    while left > 1e-6:
        spread.append(min(next(more), left))
        left -= spread[-1]
    return spread


def _event_of(record: OrderRecord) -> OrderEvent:
    return OrderEvent(
        order_link_id=record.request.order_link_id,
        status=record.status,
        order_id=record.order_id,
        filled_qty=record.filled_qty,
        avg_price=record.avg_price,
        reason=record.reason,
        ret_code=record.ret_code,
    )
