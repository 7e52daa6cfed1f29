"""The account projection: what each key and each strategy holds, without asking the venue.

Built from the venue's own reports: fills (each applied once, by execId), position and wallet
snapshots, from the private stream and from REST when a gap is closed. Strategies' market
views and the risk gate read it; a signal's critical path never waits for the venue to say
what the account holds.

Per key it keeps the venue's view (positions with entry, mark, unrealized PnL and leverage;
equity and available balance). Per strategy it keeps its own book, from the fills of its own
orders (the strategy whose orderLinkId a fill carries): signed size, average entry, realized
PnL and fees, today (UTC) and in total. A strategy sharing a key therefore sees only its own
position, and its `close` flattens only that. A fill of an order the venue created itself (a
position's stop loss or take profit closes the whole position) is shared among the
strategies holding that position, in proportion to what each holds; so is a fill of another
client's order (by hand, another program on the key) beyond what other clients hold (the
unattributed book), which the venue's one net position no longer holds for them. The split
is journaled with the fill, so replaying the journal rebuilds the same books.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from functools import partial
from operator import attrgetter
from typing import Final, NamedTuple

from bot.bounded import remember
from bot.execution.orders import closed_or_turned, differences
from bot.journal import FillBooking, Journal, OrderOwner, OrderRecord, WaitingExit
from bot.logs import logger
from bot.messages import (
    ClosedPnl,
    Execution,
    ExitOrder,
    OrderEvent,
    OrderRequest,
    PositionUpdate,
    Side,
    WalletUpdate,
    utc_now,
)
from bot.venue.base import SETTLE_COIN, Venue
from bot.venue.errors import VenueError
from bot.venue.stream import AccountStream, StreamMessage

__all__ = [
    "UNATTRIBUTED",
    "Account",
    "AccountKeeper",
    "AccountProjection",
    "AccountReport",
    "RecentFills",
    "StrandedBy",
    "StrategyBook",
]

#: Everything the venue reports about an account: by stream, or by REST closing a gap.
AccountReport = StreamMessage | ClosedPnl

#: The book of fills no strategy of this bot placed (manual orders, another program).
UNATTRIBUTED: Final = "(unattributed)"
ZERO: Final = Decimal(0)
#: orderLinkIds whose owner the keeper remembers (the latest; fills of an order come close)
_OWNER_CACHE: Final = 10_000
#: Precision of a fill split among strategies: far below any lot size, and finite.
_SPLIT_QUANTUM: Final = Decimal("1e-12")
#: The venue's exits of a whole position (tpslMode Full, as the bot sets them); a partial
#: one was set by another client for its own part, and counts as its order.
_WHOLE_POSITION_EXITS: Final = frozenset({"StopLoss", "TakeProfit", "TrailingStop"})
#: Bybit's execTypes of what the venue does to a position itself: liquidation,
#: auto-deleveraging, a future's delivery and settlement.
_VENUE_EXEC_TYPES: Final = frozenset({"BustTrade", "AdlTrade", "Delivery", "Settle"})
#: What a report or fill under the orderLinkId of an order the bot ended as never taken is
#: of: most likely another client's, unless the venue showed the bot's own late.
_NEVER_TAKEN: Final = (
    "of an order the venue never took from us, or showed only after the bot stopped looking "
    "for it: if the bot's own (sent without an answer), its position is in no strategy's "
    "books and only you can close it"
)
#: Orders whose booked fill quantity is remembered (a follower asks only of recent ones).
_BOOKED_ORDERS: Final = 10_000
#: The cancelled exit orders, and the orderLinkIds of ours another client used, already
#: warned of (a stream that reconnects may report one again), oldest forgotten first.
_WARNED_KEPT: Final = 1_000
#: Position exits whose level only a client moves (a trailing stop's moves by itself).
_MOVABLE_EXITS: Final = frozenset({"StopLoss", "TakeProfit"})
#: Levels the bot set lately, per position exit, that a move to is the bot's own.
_LEVELS_KEPT: Final = 8
#: Reconciliation passes that fetch a key's closed PnL after one of its positions closed.
_CLOSED_PNL_FETCHES: Final = 3
#: What a position report says, but when: two that agree on it say the same.
_POSITION_STATE: Final = attrgetter(
    "size", "entry_price", "mark_price", "unrealized_pnl", "cum_realized_pnl", "leverage"
)
#: How long a fill of our order that came before the venue's answer to the send is held for
#: the orderId the answer brings (it normally comes within milliseconds), and again while
#: the executor still sends or looks up the order (a stalled venue, retries), up to
#: `_IDENTITY_WAIT_MAX_S`; then it is booked as the order's, its orderId unchecked, as a
#: fill of an order in flight always was.
_IDENTITY_WAIT_S: Final = 10.0
_IDENTITY_WAIT_MAX_S: Final = 120.0
#: How long the books of a key's symbol (every strategy's and the unattributed one) may
#: disagree with the venue's position before the bot fetches again what it may have missed
#: (fills of the last `_DRIFT_LOOKBACK`, positions, open orders), then warns if they still do.
_BOOKS_DRIFT_S: Final = 30.0
_DRIFT_LOOKBACK: Final = timedelta(hours=1)
#: The pauses (s) before each fetch of the fills of orders a start settled as filled, while
#: the venue lists less of them than it shows filled.
_SETTLED_FILL_RETRIES_S: Final = (0.0, 0.5, 1.0, 2.0)
#: How far behind a key's newest fill its fills' execIds are remembered. A REST catch-up
#: asks from a minute before the newest journaled fill, so its pages land well inside; an
#: older fill is looked up in the journal instead (right, only slower), so the memory stays
#: bounded however long the bot runs.
FILL_MEMORY: Final = timedelta(minutes=10)

#: Hears of a fill of an order of ours once it is in the books, with the strategy whose order
#: it is (None: the venue's own, e.g. a stop loss); returns the books' state it queued a
#: strategy's hook with, if it did.
FillListener = Callable[[Execution, str | None], FillBooking | None]


@dataclass
class StrategyBook:
    """One strategy's position in one symbol on one key, from its own fills."""

    key_name: str
    strategy: str
    symbol: str
    size: Decimal = ZERO  # signed
    entry_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO  # before fees, since the bot began
    fees: Decimal = ZERO
    #: realized PnL and fees of `day` (UTC), the day of the latest fill
    day: date | None = None
    day_realized_pnl: Decimal = ZERO
    day_fees: Decimal = ZERO
    #: when a fill last closed (part of) the position at a loss, fee included
    last_loss_at: datetime | None = None

    def today(self, now: datetime | None = None) -> tuple[Decimal, Decimal]:
        """Realized PnL and fees of the current UTC day."""
        return self.on((now or utc_now()).astimezone(UTC).date())

    def on(self, day: date) -> tuple[Decimal, Decimal]:
        """Realized PnL and fees of `day` (UTC) if it is the day of the latest fill, else 0."""
        return (self.day_realized_pnl, self.day_fees) if self.day == day else (ZERO, ZERO)

    def fill(self, signed_qty: Decimal, price: Decimal, fee: Decimal, when: datetime) -> None:
        """Apply a fill of `signed_qty` at `price` (average-cost accounting)."""
        day = when.astimezone(UTC).date()
        if self.day is None or day > self.day:  # the day only rolls forward
            self.day, self.day_realized_pnl, self.day_fees = day, ZERO, ZERO
        today = day == self.day  # a late fill of an earlier day counts in totals only
        self.fees += fee
        if today:
            self.day_fees += fee
        old = self.size
        new = old + signed_qty
        if old == 0 or (old > 0) == (signed_qty > 0):
            self.entry_price = (abs(old) * self.entry_price + abs(signed_qty) * price) / abs(new)
        else:
            closed = min(abs(old), abs(signed_qty))
            pnl = closed * (price - self.entry_price) * (1 if old > 0 else -1)
            self.realized_pnl += pnl
            if today:
                self.day_realized_pnl += pnl
            if pnl - fee < 0 and (self.last_loss_at is None or when > self.last_loss_at):
                self.last_loss_at = when
            if new == 0:
                self.entry_price = ZERO
            elif (new > 0) != (old > 0):
                self.entry_price = price  # flipped: the rest opened at this fill
        self.size = new

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        return self.size * (mark - self.entry_price) if self.size else ZERO


def _own_fill(signed: Decimal, strategy: str, books: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """A strategy's own fill (`books`: the key's nonzero books of the symbol, by name): what
    reduces its book is its own; of what opens it, the part that meets an opposite
    unattributed book closes that book (with its share of the fee)."""
    held = books.get(strategy, ZERO)
    reducing = min(abs(signed), abs(held)) if held != 0 and (held > 0) != (signed > 0) else ZERO
    foreign = books.get(UNATTRIBUTED, ZERO)
    if foreign == 0 or (foreign > 0) == (signed > 0):
        return {strategy: signed}
    netted = min(abs(signed) - reducing, abs(foreign))
    if netted == 0:
        return {strategy: signed}
    netted = netted if signed > 0 else -netted
    return (
        {UNATTRIBUTED: netted, strategy: signed - netted}
        if netted != signed
        else {UNATTRIBUTED: signed}
    )


def _shares(holders: Mapping[str, Decimal], share: Decimal, held: Decimal) -> dict[str, Decimal]:
    """`share` (at most `held`, the sum of the holders' sizes) split among `holders` in
    proportion, as amounts that add up to it exactly and never exceed a holder's size: each
    part is rounded down, and what rounding left goes to the largest holders first (so the
    1/3 dust never grows a book, nor flips its side)."""
    parts = {
        name: (abs(size) * share / held).quantize(_SPLIT_QUANTUM, rounding=ROUND_DOWN)
        for name, size in holders.items()
    }
    left = share - sum(parts.values(), ZERO)
    for name in sorted(holders, key=lambda name: (-abs(holders[name]), name)):
        if left <= 0:
            break
        extra = min(left, abs(holders[name]) - parts[name])
        parts[name] += extra
        left -= extra
    return parts


class StrandedBy(NamedTuple):
    """A position that closed, whose reduce-only orders of ours have nothing left to reduce:
    the key's in `symbol` (`strategy` None), or one strategy's, which was long (`was_long`)
    until the fill of `cause` (an orderLinkId, "" for the venue's own exits) closed or
    turned it. Orders `cause`'s own signal laid for a position it opened after are kept."""

    key_name: str
    symbol: str
    strategy: str | None = None
    was_long: bool | None = None
    cause: str = ""


class AccountProjection:
    """Positions, fills, PnL and balances per key and per strategy, kept in memory."""

    def __init__(self) -> None:
        self._books: dict[tuple[str, str, str], StrategyBook] = {}
        # strategy -> its books on every key: the risk gate asks for a strategy's open
        # positions, PnL and last loss on every decision, and must not scan every book.
        self._books_of: dict[str, list[StrategyBook]] = {}
        self._positions: dict[tuple[str, str], PositionUpdate] = {}
        self._wallets: dict[str, WalletUpdate] = {}
        self._closed: dict[tuple[str, str], ClosedPnl] = {}
        self._closed_day: date | None = None  # of the newest closed-PnL record
        self._booked: OrderedDict[str, Decimal] = OrderedDict()  # orderLinkId -> filled qty

    @classmethod
    def replay(
        cls,
        executions: Iterable[tuple[Execution, Mapping[str, Decimal]]],
        positions: Iterable[PositionUpdate] = (),
        wallets: Iterable[WalletUpdate] = (),
        closed: Iterable[ClosedPnl] = (),
    ) -> AccountProjection:
        """The projection a journal's history produces (start-up, `bot positions`)."""
        projection = cls()
        for record in closed:
            projection.apply_closed_pnl(record)
        for execution, allocation in executions:
            projection.apply_execution(execution, allocation)
        for position in positions:
            projection.apply_position(position)
        for wallet in wallets:
            projection.apply_wallet(wallet)
        return projection

    @classmethod
    def from_journal(cls, journal: Journal) -> AccountProjection:
        """The projection of everything a journal holds (blocking: off the event loop)."""
        return cls.replay(
            journal.executions(), journal.positions(), journal.wallets(), journal.closed_pnl()
        )

    # changes ------------------------------------------------------------------------------

    def allocate(self, execution: Execution, strategy: str | None) -> dict[str, Decimal]:
        """How a new fill's quantity is split among strategies (signed, summing to the fill).

        A fill of a strategy's own order is its own (but see the last paragraph). A fill of an
        order the venue created
        (stop loss, take profit) reduces the strategies holding the opposite side, in
        proportion to their sizes; what none of them holds is unattributed. A fill of an order
        another client placed (by hand on Bybit, another program on the key, a partial stop
        loss or take profit: the bot sets only whole-position exits) first closes what
        other clients hold (the unattributed book), then, the key's one position being net,
        reduces the strategies holding the opposite side in the same proportion: the venue no
        longer holds what their books would say. What is left opens the unattributed book.

        A strategy's own fill that would open its book against what other clients hold on
        the other side closes theirs first: the key's one position is net, and a strategy's
        short beside another client's long would both go on claiming a position once the
        venue's, their difference, is closed (phantom exposure; the strategy's close refused
        110017). Other fills never leave the two books on opposite sides (see above).

        Two strategies may hold opposite sides (the key holds their difference). A fill
        after which the books add up to nothing, the key's position closed, leaves none
        of them holding one: what each still held is closed at the fill's price (their
        long and short crossed), or they would each go on claiming a position the venue
        no longer holds, which their sum, the venue's 0, would never show (their closes
        refused 110017).
        """
        books = {
            book.strategy: book.size
            for (key, _, symbol), book in self._books.items()
            if key == execution.key_name and symbol == execution.symbol and book.size != 0
        }
        allocation = self._split(execution, strategy, books)
        after = dict(books)
        for name, part in allocation.items():
            after[name] = after.get(name, ZERO) + part
        if sum(after.values(), ZERO) == 0:
            for name, size in after.items():
                if size != 0:
                    allocation[name] = allocation.get(name, ZERO) - size
                    if allocation[name] == 0:  # a book this fill opened, crossed at once
                        del allocation[name]
        return allocation

    def _split(
        self, execution: Execution, strategy: str | None, books: Mapping[str, Decimal]
    ) -> dict[str, Decimal]:
        """`allocate`, before the books left opposite a closed position are crossed."""
        signed = execution.signed_qty
        if strategy is not None:
            return _own_fill(signed, strategy, books)
        allocation: dict[str, Decimal] = {}
        rest = signed
        if execution.stop_order_type not in _WHOLE_POSITION_EXITS:
            foreign = self.strategy_size(execution.key_name, UNATTRIBUTED, execution.symbol)
            if foreign != 0 and (foreign > 0) != (signed > 0):
                closed = min(abs(signed), abs(foreign))
                allocation[UNATTRIBUTED] = closed if signed > 0 else -closed
                rest = signed - allocation[UNATTRIBUTED]
        holders = {
            name: size
            for name, size in books.items()
            if name != UNATTRIBUTED and (size > 0) != (signed > 0)
        }
        held = sum((abs(size) for size in holders.values()), ZERO)
        if rest != 0 and held != 0:
            share = min(abs(rest), held)
            for name, part in _shares(holders, share, held).items():
                allocation[name] = part if rest > 0 else -part
            rest -= share if rest > 0 else -share
        if rest != 0:
            allocation[UNATTRIBUTED] = allocation.get(UNATTRIBUTED, ZERO) + rest
        return allocation

    def apply_execution(
        self,
        execution: Execution,
        allocation: Mapping[str, Decimal],
        *,
        of_our_order: bool = True,
    ) -> None:
        """Apply a fill once (the journal's execId dedupe decides what is new); one not
        `of_our_order` (another client's order under our orderLinkId) is not counted as a
        fill of ours (`booked_qty`)."""
        link_id = execution.order_link_id
        if link_id and of_our_order:
            booked = self._booked.get(link_id, ZERO) + abs(execution.qty)
            remember(self._booked, link_id, booked, _BOOKED_ORDERS)
        # The fee in proportion to each part: parts crossed between books (`allocate`) add
        # up to more than the fill, and pay their share of its one fee.
        total = sum((abs(part) for part in allocation.values()), ZERO)
        for strategy, signed_qty in allocation.items():
            fee = execution.fee * abs(signed_qty) / total if total else ZERO
            self._book(execution.key_name, strategy, execution.symbol).fill(
                signed_qty, execution.price, fee, execution.ts
            )

    def apply_position(self, update: PositionUpdate) -> None:
        current = self._positions.get((update.key_name, update.symbol))
        if current is None or update.ts >= current.ts:
            self._positions[(update.key_name, update.symbol)] = update

    def apply_wallet(self, update: WalletUpdate) -> None:
        current = self._wallets.get(update.key_name)
        if current is None or update.ts >= current.ts:
            self._wallets[update.key_name] = update

    def apply_closed_pnl(self, record: ClosedPnl) -> None:
        self._closed[(record.key_name, record.order_id)] = record
        day = record.ts.astimezone(UTC).date()
        if self._closed_day is None or day > self._closed_day:
            # Only today's are read (`venue_closed_pnl_today`): keep today's and yesterday's,
            # so the records do not grow with every close of a long run.
            self._closed_day = day
            since = day - timedelta(days=1)
            self._closed = {
                index: kept
                for index, kept in self._closed.items()
                if kept.ts.astimezone(UTC).date() >= since
            }

    # reading ------------------------------------------------------------------------------

    def booked_qty(self, order_link_id: str) -> Decimal:
        """How much of an order's fills the books hold (recent orders only)."""
        return self._booked.get(order_link_id, ZERO)

    def flat(self, key_name: str, symbol: str) -> bool:
        """Whether the key's position in `symbol` is closed: the venue's last report of it
        says so, and the key's books there (every strategy's and the unattributed one) agree
        (a report older than a fill already booked does not count)."""
        update = self._positions.get((key_name, symbol))
        if update is None or update.size != 0:
            return False
        return all(
            book.size == 0
            for (key, _, book_symbol), book in self._books.items()
            if key == key_name and book_symbol == symbol
        )

    def agreeing_books(self, key_name: str, symbol: str) -> list[StrategyBook]:
        """The strategies' open books of the key's position in `symbol` when the venue's
        last report and every book there (the unattributed one too) agree on its direction:
        each such book's reduce-only orders on the side that would only add to it are left
        from a position that turned (none while the report and the books disagree)."""
        update = self._positions.get((key_name, symbol))
        if update is None or update.size == 0:
            return []
        long = update.size > 0
        books = [
            book
            for (key, _, book_symbol), book in self._books.items()
            if key == key_name and book_symbol == symbol and book.size != 0
        ]
        if any((book.size > 0) != long for book in books):
            return []
        return [book for book in books if book.strategy != UNATTRIBUTED]

    def strategy_size(self, key_name: str, strategy: str, symbol: str) -> Decimal:
        """The strategy's own signed position in `symbol` on `key_name`."""
        book = self._books.get((key_name, strategy, symbol))
        return book.size if book is not None else ZERO

    def closable_size(self, key_name: str, strategy: str, symbol: str) -> Decimal:
        """The strategy's own signed position in `symbol` on `key_name`, cut to what the key's
        position at the venue (as last reported) holds on that side: zero if that is flat or
        the other way (a close of the strategy's must not reduce what is not there). The
        books alone while the venue's position is not known."""
        own = self.strategy_size(key_name, strategy, symbol)
        reported = self._positions.get((key_name, symbol))
        if reported is None:
            return own
        if own == 0 or reported.size == 0 or (own > 0) != (reported.size > 0):
            return ZERO
        return own if abs(own) <= abs(reported.size) else reported.size

    def open_books(self, key_name: str, strategy: str) -> list[StrategyBook]:
        """The strategy's own open positions on `key_name` (flat ones left out)."""
        return [
            book
            for book in self._books_of.get(strategy, ())
            if book.key_name == key_name and book.size != 0
        ]

    def open_books_of(self, strategy: str) -> list[StrategyBook]:
        """The strategy's own open positions on every key (a strategy moved to another key
        leaves its positions on the one it traded before)."""
        return [book for book in self._books_of.get(strategy, ()) if book.size != 0]

    def pnl_today(self, strategy: str | None = None, now: datetime | None = None) -> Decimal:
        """Realized PnL minus fees of the current UTC day: one strategy's, or every one's
        (the bot's: what other clients of its keys did, the unattributed book, is theirs)."""
        day = (now or utc_now()).astimezone(UTC).date()  # once: the gate asks on every intent
        books = (
            (book for book in self._books.values() if book.strategy != UNATTRIBUTED)
            if strategy is None
            else self._books_of.get(strategy, ())
        )
        total = ZERO
        for book in books:
            realized, fees = book.on(day)
            total += realized - fees
        return total

    def last_loss_at(self, strategy: str) -> datetime | None:
        """When the strategy last closed (part of) a position at a loss, on any key."""
        times = [
            book.last_loss_at
            for book in self._books_of.get(strategy, ())
            if book.last_loss_at is not None
        ]
        return max(times, default=None)

    def books(self) -> list[StrategyBook]:
        """Every strategy's book, open or with PnL or fees, sorted by key, strategy, symbol."""
        return [self._books[k] for k in sorted(self._books)]

    def drift(self, key_name: str) -> dict[str, tuple[Decimal, Decimal]]:
        """Each symbol whose position at the venue, as last reported, is not what the key's
        books (every strategy's and the unattributed one) add up to: (venue, books)."""
        # USDT-settled symbols only: the venue's position list is asked for those.
        venue = {
            update.symbol: update.size
            for update in self.positions_of(key_name)
            if update.symbol.endswith(SETTLE_COIN)
        }
        books: dict[str, Decimal] = {}
        for (key, _, symbol), book in self._books.items():
            if key == key_name and symbol.endswith(SETTLE_COIN):
                books[symbol] = books.get(symbol, ZERO) + book.size
        return {
            symbol: (venue.get(symbol, ZERO), books.get(symbol, ZERO))
            for symbol in venue.keys() | books.keys()
            if venue.get(symbol, ZERO) != books.get(symbol, ZERO)
        }

    def position(self, key_name: str, symbol: str) -> PositionUpdate | None:
        """The venue's view of the key's position, as last reported."""
        return self._positions.get((key_name, symbol))

    def wallet(self, key_name: str) -> WalletUpdate | None:
        return self._wallets.get(key_name)

    def positions_of(self, key_name: str) -> list[PositionUpdate]:
        """The venue's last reported positions of a key."""
        return [update for (key, _), update in self._positions.items() if key == key_name]

    def venue_closed_pnl_today(self, key_name: str, now: datetime | None = None) -> Decimal:
        """The key's realized PnL of the current UTC day, net of fees, as the venue reports
        it: the cross-check of the strategies' books."""
        day = (now or utc_now()).astimezone(UTC).date()
        return sum(
            (
                record.closed_pnl
                for (key, _), record in self._closed.items()
                if key == key_name and record.ts.astimezone(UTC).date() == day
            ),
            ZERO,
        )

    def key_names(self) -> list[str]:
        """Every key the projection has heard of."""
        names = {key for key, _, _ in self._books} | set(self._wallets)
        return sorted(names | {key for key, _ in self._positions})

    def leverage(self, key_name: str, symbol: str) -> Decimal | None:
        """The leverage of the key's `symbol` as the venue last reported it, if it did."""
        position = self._positions.get((key_name, symbol))
        return position.leverage if position is not None and position.leverage else None

    def mark_price(self, key_name: str, symbol: str) -> Decimal | None:
        position = self._positions.get((key_name, symbol))
        return position.mark_price if position is not None and position.mark_price else None

    def _book(self, key_name: str, strategy: str, symbol: str) -> StrategyBook:
        index = (key_name, strategy, symbol)
        book = self._books.get(index)
        if book is None:
            book = self._books[index] = StrategyBook(key_name, strategy, symbol)
            self._books_of.setdefault(strategy, []).append(book)
        return book


class RecentFills:
    """The execIds of the fills applied in the last `horizon` of each key's fills (by the
    venue's exec time, behind the key's newest): enough to tell a fill met again from a new
    one without asking the journal, and bounded however many fills a bot sees.

    `seen(fill)` says True (met before), False (new), or None: older than the memory
    reaches, so only the journal can tell.
    """

    def __init__(self, horizon: timedelta = FILL_MEMORY) -> None:
        self._horizon = horizon
        self._ids: set[str] = set()
        # per key: (exec time, execId) as added, and the key's newest exec time
        self._added: dict[str, deque[tuple[datetime, str]]] = {}
        self._newest: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, fill: Execution) -> bool | None:
        if fill.exec_id in self._ids:
            return True
        newest = self._newest.get(fill.key_name)
        if newest is not None and fill.ts < newest - self._horizon:
            return None
        return False

    def add(self, fill: Execution) -> None:
        """Remember `fill`; forget what has fallen out of the horizon (an entry only goes
        once its time is behind it, so every fill within the horizon stays known)."""
        key = fill.key_name
        newest = max(fill.ts, self._newest.get(key, fill.ts))
        self._newest[key] = newest
        added = self._added.setdefault(key, deque())
        added.append((fill.ts, fill.exec_id))
        self._ids.add(fill.exec_id)
        floor = newest - self._horizon
        while added and added[0][0] < floor:
            self._ids.discard(added.popleft()[1])


@dataclass
class _Held:
    """Reports of one key and symbol held for the venue's answers to our sends: in the order
    they came, the orderLinkIds still waiting, and what wakes their release."""

    reports: list[OrderEvent | Execution | ExitOrder] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class AccountKeeper:
    """Applies the venue's reports of one bot's keys to the projection and the journal.

    Every report passes here, from the private stream or from REST: order changes (forward
    only, for orders the journal holds), venue-created exits, fills (once each, by execId),
    position and wallet snapshots (the newest wins). The projection is updated at once; the
    journal writes are queued on the journal's thread, in order, without waiting for each:
    a report lost to a crash before its write is fetched again by the REST gap-fill on the
    next start. `order_updated` is told of every order change, so the executor can stop
    waiting for it.
    """

    def __init__(
        self,
        journal: Journal,
        projection: AccountProjection,
        order_updated: Callable[[OrderEvent], None] = lambda event: None,
        seen_fills: Iterable[Execution] = (),
        fill_booked: FillListener = lambda fill, strategy: None,
        fill_memory: timedelta = FILL_MEMORY,
        position_updated: Callable[[PositionUpdate], None] = lambda update: None,
        position_closed: Callable[[StrandedBy], None] = lambda closed: None,
        seen_exits: Iterable[WaitingExit] = (),
        fill_applied: Callable[[Execution, Collection[str]], None] = lambda fill, names: None,
    ) -> None:
        """`seen_fills`: the fills already journaled, oldest first (the dedupe survives a
        restart); `seen_exits`: the exits the journal holds waiting, oldest first (a level
        an earlier run saw, and warned of if it was another client's, is not news again;
        a move while the bot was down is said as a move); `fill_booked(fill, strategy)`
        hears of every fill of an order of ours applied to the books (with the strategy
        that placed the order), and returns the books' state it queued a strategy's hook
        with (journaled as due until the hook is done), or None; `fill_memory`: see `RecentFills`;
        `position_updated(update)` hears of every position the venue reports (its leverage,
        which anyone may change);
        `position_closed(closed)` of each fill that closes (or turns) a strategy's position,
        and of each report or fill after which the key's position in the symbol is closed
        (`AccountProjection.flat`): see `StrandedBy`; `fill_applied(fill, strategies)` of
        every fill applied to the books, a venue's stop or take profit (no orderLinkId)
        too, with the strategies it was allocated to (their PnL moved)."""
        self._journal = journal
        self._projection = projection
        self._order_updated = order_updated
        self._fill_booked = fill_booked
        self._position_updated = position_updated
        self._position_closed = position_closed
        self._fill_applied = fill_applied
        self._recent_fills = RecentFills(fill_memory)
        self._warned_exits: OrderedDict[str, None] = OrderedDict()
        self._warned_foreign: OrderedDict[str, None] = OrderedDict()
        # The trigger each position exit (by orderId) last showed, and the levels the bot
        # itself set or asked for lately, per (key, symbol, kind): a move to any other level
        # was made by another client.
        self._exit_triggers: OrderedDict[str, Decimal] = OrderedDict()
        for exit_order in seen_exits:
            remember(
                self._exit_triggers, exit_order.order_id, exit_order.trigger_price, _WARNED_KEPT
            )
        self._levels_set: dict[tuple[str, str, str], deque[Decimal]] = {}
        # Keys a position of which closed lately: how many passes still fetch closed PnL.
        self._closes_to_fetch: dict[str, int] = {}
        for fill in seen_fills:
            self._recent_fills.add(fill)
        # One fill too old for the memory is checked against the journal at a time, so a
        # second copy's check queues behind the first one's write.
        self._old_fill_check = asyncio.Lock()
        self._owners: OrderedDict[str, OrderOwner | None] = OrderedDict()
        # The venue's orderId of each order of ours it answered lately (None: it never took
        # the order), told by the executor at once, before the journal's deferred write.
        self._identified: OrderedDict[str, str | None] = OrderedDict()
        # Per (key, symbol): the order reports and fills held, in the venue's order, since
        # one came under the orderLinkId of an order of ours in flight, before the venue's
        # answer told its orderId (see `_Held`).
        self._held: dict[tuple[str, str], _Held] = {}
        # The orderLinkIds the executor is sending or looking up (`follow_sends`).
        self._sending: Callable[[], Collection[str]] = frozenset
        self._releases: set[asyncio.Task[None]] = set()
        # Books that disagree with the venue: since when, per (key, symbol), and by how much
        # (venue - books); and the differences already warned of.
        self._drifting: dict[tuple[str, str], tuple[float, Decimal]] = {}
        self._warned_drift: OrderedDict[tuple[str, str], Decimal] = (
            OrderedDict()
        )  # -> venue - books warned of
        # Per key: the open orders its latest gap close read (`open_orders_read`), and
        # whether that gap close read every part (`gap_closed`).
        self._open_orders_read: dict[str, list[OrderEvent]] = {}
        self._gap_closed: dict[str, bool] = {}

    async def apply(self, report: AccountReport) -> None:
        journal, projection = self._journal, self._projection
        if isinstance(report, OrderEvent | Execution | ExitOrder) and self._held_back(report):
            return
        if isinstance(report, OrderEvent):
            self._apply_order_report(report)
        elif isinstance(report, ExitOrder):
            await self._apply_exit(report)
        elif isinstance(report, Execution):
            await self._apply_execution(report)
        elif isinstance(report, PositionUpdate):
            before = projection.position(report.key_name, report.symbol)
            projection.apply_position(report)
            # Bybit pushes the position on every order create, amend and cancel, changed or
            # not: no fill came between two that agree, so nothing to write. The listeners
            # still hear it (the executor compares its leverage with the one it set).
            if before is None or _POSITION_STATE(before) != _POSITION_STATE(report):
                self._write(journal.record_position, report)
            self._position_updated(report)
            if report.size == 0 and before is not None and before.size != 0:
                self._closes_to_fetch[report.key_name] = _CLOSED_PNL_FETCHES
            self._tell_if_closed(report.key_name, report.symbol)
        elif isinstance(report, ClosedPnl):
            projection.apply_closed_pnl(report)
            self._write(journal.record_closed_pnl, report)
        else:
            projection.apply_wallet(report)
            self._write(journal.record_wallet, report)

    async def check_exit(self, exit_order: ExitOrder) -> None:
        """Warn of a position exit that another client cancelled or moved, however the bot
        learns of it: the stream, or a REST scan (after a restart, or a stream outage)."""
        self._warn_if_unprotected(exit_order)
        await self._warn_if_moved(exit_order)

    def _warn_if_unprotected(self, exit_order: ExitOrder) -> None:
        """Say so, once per order, when someone cancels a stop loss or take profit at the
        venue while the position it protects is still open."""
        if not exit_order.cancelled_by_hand or exit_order.order_id in self._warned_exits:
            return
        position = self._projection.position(exit_order.key_name, exit_order.symbol)
        closes_long = exit_order.side is Side.SELL
        if position is None or position.size == 0 or (position.size > 0) != closes_long:
            return
        remember(self._warned_exits, exit_order.order_id, None, _WARNED_KEPT)
        logger.bind(notify="foreign").warning(
            "the {kind} at {trigger} of the {symbol} position on key {key} was cancelled at "
            "the venue (orderId {order_id}); the position stays open without it: set it again "
            "(POST /v5/position/trading-stop) or close the position",
            kind=exit_order.kind,
            trigger=exit_order.trigger_price,
            symbol=exit_order.symbol,
            key=exit_order.key_name,
            order_id=exit_order.order_id,
        )

    def expect_level(self, key_name: str, symbol: str, kind: str, level: Decimal) -> None:
        """The bot sets (or is about to set) the `kind` exit (StopLoss, TakeProfit) of the
        key's `symbol` position to `level`: a move of that exit to it is the bot's own."""
        levels = self._levels_set.setdefault((key_name, symbol, kind), deque(maxlen=_LEVELS_KEPT))
        levels.append(level)

    async def _warn_if_moved(self, exit_order: ExitOrder) -> None:
        """Say so, once per level, when a stop loss or take profit of a position is at a level
        the bot did not set: moved at the venue since it was last seen, or, first seen (after
        a restart, or a new exit order), at a level other than every one the bot set for that
        exit (another client amended it, amended the order that opened the position, or set
        the position's level): the position is then protected otherwise than the bot meant.
        An exit the bot never set a level for is not judged. The levels the bot set lately
        are in memory; older ones, or those of an earlier run, are asked of the journal (only
        when the level is not in memory)."""
        trigger, order_id = exit_order.trigger_price, exit_order.order_id
        if (
            trigger is None
            or exit_order.kind not in _MOVABLE_EXITS
            or exit_order.status.is_terminal
        ):
            return
        before = self._exit_triggers.get(order_id)
        remember(self._exit_triggers, order_id, trigger, _WARNED_KEPT)
        where = (exit_order.key_name, exit_order.symbol, exit_order.kind)
        if before == trigger or trigger in self._levels_set.get(where, ()):
            return
        journal = self._journal
        levels = await journal.call(journal.levels_set, *where)
        if trigger in levels:
            self.expect_level(*where, trigger)
            return
        if before is None and not levels:
            return  # an exit of a position the bot never protected
        logger.bind(notify="foreign").warning(
            "the {kind} of the {symbol} position on key {key} {change}, not by the bot "
            "(orderId {order_id}); set it again (POST /v5/position/trading-stop) if that was "
            "not meant",
            kind=exit_order.kind,
            symbol=exit_order.symbol,
            key=exit_order.key_name,
            change=(
                f"was moved at the venue from {before} to {trigger}"
                if before is not None
                else f"was set at the venue to {trigger}, a level the bot never set"
            ),
            order_id=order_id,
        )

    def _warn_foreign(self, order_link_id: str, problem: str) -> None:
        """Say so, once per orderLinkId, when another client of the key uses the orderLinkId
        of one of our orders for an order of its own: its reports are not ours."""
        if order_link_id in self._warned_foreign:
            return
        remember(self._warned_foreign, order_link_id, None, _WARNED_KEPT)
        logger.bind(notify="foreign").warning(
            "another client of the key used orderLinkId {id} for an order of its own "
            "({problem}): its reports and fills are not applied to ours; give each program "
            "on a key its own strategy names, or its own key",
            id=order_link_id,
            problem=problem,
        )

    async def _apply_exit(self, exit_order: ExitOrder) -> None:
        # Judged before its level is written: the journal's level seeds the next run's
        # memory (`seen_exits`), so a kill between the two repeats a warning, never loses one.
        await self.check_exit(exit_order)
        self._write(self._journal.record_exit, exit_order)

    def _apply_order_report(self, report: OrderEvent) -> None:
        problem = self._journal.foreign_report(report) or self._unlike_identified(report)
        if problem is not None:
            self._warn_foreign(report.order_link_id, problem)
            return
        self._journal.defer(
            partial(self._journal.record_order_event, report, missing_ok=True),
            order_link_id=report.order_link_id,
        )
        self._order_updated(report)

    def _unlike_identified(self, report: OrderEvent) -> str | None:
        """What shows a venue report is not of our order, by the orderId the executor was
        told for it (before the journal has it): another one, or none (never taken)."""
        link_id = report.order_link_id
        if link_id not in self._identified:
            return None
        ours = self._identified[link_id]
        if ours is None:
            return f"a report {_NEVER_TAKEN}"
        if report.order_id and report.order_id != ours:
            return f"orderId {report.order_id}, not ours {ours}"
        return None

    def order_identified(self, order_link_id: str, order_id: str | None) -> None:
        """The venue answered a send of our order `order_link_id` with its orderId (None:
        the order ended without the venue ever taking it). A report or fill under that
        orderLinkId of another orderId (or of an order it never took) is another client's;
        what was held until now for this answer is applied."""
        remember(self._identified, order_link_id, order_id, _OWNER_CACHE)
        for held in self._held.values():
            held.waiting.discard(order_link_id)
            if not held.waiting:
                held.answered.set()

    def follow_sends(self, sending: Callable[[], Collection[str]]) -> None:
        """`sending()`: the orderLinkIds the executor is sending or looking up right now; a
        report held for one of their answers waits on while it still is (see `_release`)."""
        self._sending = sending

    def _awaiting_answer(self, report: OrderEvent | Execution) -> OrderRecord | None:
        """Our unfinished order, of the report's symbol and side, under whose orderLinkId
        the report is, if the venue has not answered it with an orderId yet: the report may
        be of ours (the stream is often faster than the answer) or of another client's order
        under the same id (ours is then refused as a duplicate); only the answer can tell."""
        link_id = report.order_link_id
        if not link_id or link_id in self._identified:
            return None
        known = self._journal.unfinished(link_id)
        if known is None or known.order_id is not None:
            return None
        same = (known.request.symbol, known.request.side) == (report.symbol, report.side)
        return known if same else None

    def _held_back(self, report: OrderEvent | Execution | ExitOrder) -> bool:
        """Hold the report if it awaits an answer (`_awaiting_answer`), or if it is a fill
        or a position exit of a key and symbol whose reports are held already (so that fills
        are booked in the venue's order, each closing what the one before opened, and an
        exit is journaled after the fill of the order whose stop it is); True if held."""
        ours = None if isinstance(report, ExitOrder) else self._awaiting_answer(report)
        if ours is not None:
            market = (ours.request.key_name, ours.request.symbol)
        elif not isinstance(report, OrderEvent) and (report.key_name, report.symbol) in self._held:
            market = (report.key_name, report.symbol)
        else:
            return False
        held = self._held.get(market)
        if held is None:
            held = self._held[market] = _Held()
            task = asyncio.get_running_loop().create_task(self._release(market, held))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        held.reports.append(report)
        if ours is not None:
            held.waiting.add(ours.request.order_link_id)
            held.answered.clear()
        return True

    async def _release(self, market: tuple[str, str], held: _Held) -> None:
        """Apply what is held for `market`, in order: before each, wait until every order it
        waits for has its answer (`_answered`; then a fill is booked as its order's,
        unchecked; lost to a crash meanwhile, fills are fetched again at start). What comes
        while they are applied queues behind them."""
        while held.reports:
            if held.waiting:
                await self._answered(held)
                held.waiting.clear()  # answered, or waited long enough
            report = held.reports.pop(0)
            try:
                if isinstance(report, OrderEvent):
                    self._apply_order_report(report)
                elif isinstance(report, ExitOrder):
                    await self._apply_exit(report)
                else:
                    await self._apply_execution(report)
            except Exception:  # the next one still goes; a catch-up or the books check
                logger.exception("a held report of {market} could not be applied", market=market)
        del self._held[market]

    async def _answered(self, held: _Held) -> None:
        """Wait until every order `held` waits for has its answer: `_IDENTITY_WAIT_S`, then
        on while the executor still sends or looks up one of them, up to
        `_IDENTITY_WAIT_MAX_S` in all."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _IDENTITY_WAIT_MAX_S
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_IDENTITY_WAIT_S, give_up - loop.time())):
                    await held.answered.wait()
                    return
            if loop.time() >= give_up or held.waiting.isdisjoint(self._sending()):
                return

    async def _apply_execution(self, fill: Execution) -> None:
        if self._recent_fills.seen(fill):
            return  # applied already (a REST page after the stream): nothing to say again
        strategy, ours = await self._strategy_of(fill)
        # A stream message and a REST page may both bring a fill: apply it once.
        seen = self._recent_fills.seen(fill)
        if seen is None:
            journal = self._journal
            async with self._old_fill_check:
                # The journal's thread has every write queued before this call.
                if not await journal.call(journal.has_execution, fill.exec_id):
                    self._book(fill, strategy, ours=ours)
        elif not seen:
            self._book(fill, strategy, ours=ours)

    def _book(self, fill: Execution, strategy: str | None, *, ours: bool) -> None:
        """Apply a new fill and queue its journal write (nothing awaited in between: a
        cancellation cannot split them). Not `ours`: another client's fill under one of our
        orderLinkIds, which never counts as a fill of our order."""
        self._recent_fills.add(fill)
        allocation = self._projection.allocate(fill, strategy)
        before = {
            name: self._projection.strategy_size(fill.key_name, name, fill.symbol)
            for name in allocation
        }
        self._projection.apply_execution(fill, allocation, of_our_order=ours)
        # The hook is queued before the write that says it is due: both wait their turn (the
        # hook on its lane, the write on the journal's queue), so its "done" comes after.
        hook = self._fill_booked(fill, strategy) if fill.order_link_id and ours else None
        self._write(self._journal.record_execution, fill, allocation, hook)
        for name, size in before.items():
            after = self._projection.strategy_size(fill.key_name, name, fill.symbol)
            if name != UNATTRIBUTED and closed_or_turned(size, after):
                # The strategy's position closed (or turned): whatever the venue reports
                # next (it may already hold a new position), its reduce-only orders that
                # reduced it were for the one that is gone.
                self._position_closed(
                    StrandedBy(fill.key_name, fill.symbol, name, size > 0, fill.order_link_id)
                )
        self._tell_if_closed(fill.key_name, fill.symbol)
        # What the venue did itself (a liquidation, auto-deleveraging) is said louder.
        by_venue = fill.exec_type in _VENUE_EXEC_TYPES
        whose = (
            f"{fill.exec_type} by the venue"
            if by_venue
            else strategy or fill.stop_order_type or "not the bot's order"
        )
        logger.bind(notify="fill").log(
            "WARNING" if by_venue else "INFO",
            "fill on key {key}: {side} {qty} {symbol} at {price}, fee {fee} USDT ({whose})",
            key=fill.key_name,
            side=fill.side.value,
            qty=fill.qty,
            symbol=fill.symbol,
            price=fill.price,
            fee=fill.fee,
            whose=whose,
        )
        # After the fill is said: a loss it booked past a limit is news that follows it.
        self._fill_applied(fill, tuple(allocation))

    def _tell_if_closed(self, key_name: str, symbol: str) -> None:
        if self._projection.flat(key_name, symbol):
            self._position_closed(StrandedBy(key_name, symbol))

    def tell_closed_again(self, key_name: str) -> None:
        """Tell each of the key's closed positions again (`position_closed`), and each
        strategy's position that points the way the key's does as one that turned from the
        other way, each reconciliation pass: an order the venue answered only after the
        close was told is seen to then, and so is a reduce-only order left on the side that
        no longer reduces the position by a crash between the fill that turned it (a flip)
        and its cancel."""
        for update in self._projection.positions_of(key_name):
            if update.size == 0:
                self._tell_if_closed(key_name, update.symbol)
                continue
            for book in self._projection.agreeing_books(key_name, update.symbol):
                self._position_closed(
                    StrandedBy(key_name, update.symbol, book.strategy, was_long=book.size < 0)
                )

    def expect_order(self, request: OrderRequest) -> None:
        """An order of ours is journaled and about to be sent: its fills will be attributed
        to its strategy without asking the journal (one thread hop less on each fill), and
        the stop loss and take profit it carries become its position's levels."""
        owner = OrderOwner(request.strategy, request.symbol, request.side)
        remember(self._owners, request.order_link_id, owner, _OWNER_CACHE)
        for kind, level in (("StopLoss", request.stop_loss), ("TakeProfit", request.take_profit)):
            if level is not None:
                self.expect_level(request.key_name, request.symbol, kind, level)

    async def _strategy_of(self, fill: Execution) -> tuple[str | None, bool]:
        """The strategy whose order the fill is of (None for the venue's own orders, or
        another program's), and whether the fill is of the order its orderLinkId names
        (False: another client used that id for an order in another symbol or side, or of
        another orderId: warned of). The owner is remembered: an order's fills come in a
        row."""
        link_id = fill.order_link_id
        if not link_id:
            return None, True
        if link_id not in self._owners:
            journal = self._journal
            owner = await journal.call(journal.order_owner, link_id)
            remember(self._owners, link_id, owner, _OWNER_CACHE)
        owner = self._owners[link_id]
        if owner is None:
            return None, True
        if link_id in self._identified and self._identified[link_id] is None:
            self._warn_foreign(link_id, f"a fill {_NEVER_TAKEN}")
            return None, False
        # The venue's id of ours: as the executor was told it, or as the journal holds it.
        order_id = (
            owner.order_id or self._identified.get(link_id) or self._journal.venue_order_id(link_id)
        )
        if order_id is None and self._journal.unfinished(link_id) is None:
            # Finished, and no orderId remembered (it may predate the acknowledgement): as
            # the journal committed it. Finished without one, the venue never took it from
            # us (rejected, or never sent): a fill under its orderLinkId is another client's.
            owner = await self._journal.call(self._journal.order_owner, link_id)
            remember(self._owners, link_id, owner, _OWNER_CACHE)
            if owner is None:
                return None, True
            if owner.order_id is None:
                self._warn_foreign(link_id, f"a fill {_NEVER_TAKEN}")
                return None, False
            order_id = owner.order_id
        problem = differences(
            ("symbol", fill.symbol, owner.symbol),
            ("side", fill.side, owner.side),
            ("orderId", fill.order_id or None, order_id),
        )
        if problem is not None:
            self._warn_foreign(link_id, f"a fill of {problem}")
            return None, False
        return owner.strategy, True

    def _write(self, method: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Queue a journal write; a failure is logged (the next gap-fill repairs it).

        Deferred (`Journal.defer`): a fill's execution, position and wallet reports share one
        transaction and one thread hop with its order's (deferred in `apply`, naming the
        order), not one each. Order is kept: a later journal call still sees every earlier
        write.
        """
        self._journal.defer(partial(method, *args, **kwargs))

    async def close_gap(self, venue: Venue) -> bool:
        """Fetch by REST what the stream may have missed while it was down: fills since the
        last one journaled, open orders, positions and the balance. Each part is bounded and
        its failure logged; the reconciliation loop covers what is left. True if every part
        was fetched."""
        complete = await self.catch_up_fills(venue)
        complete = await self.catch_up_closed_pnl(venue) and complete

        async def open_orders() -> list[OrderEvent]:
            orders = await venue.open_orders()
            self._open_orders_read[venue.name] = orders
            return orders

        parts: list[tuple[str, Callable[[], Awaitable[Sequence[AccountReport]]]]] = [
            ("open orders", open_orders),
            ("positions", lambda: self._positions_with_flats(venue)),
            ("wallet", lambda: _one(venue.wallet)),
        ]
        for what, fetch in parts:
            complete = await self._apply_fetched(venue.name, what, fetch) and complete
        self._gap_closed[venue.name] = complete
        return complete

    def gap_closed(self, key_name: str) -> bool:
        """Whether the key's latest gap close read every part (False before the first): a
        stream live after one that did not (a read refused or timed out) has not brought the
        books up to date."""
        return self._gap_closed.get(key_name, False)

    def open_orders_read(self, key_name: str) -> list[OrderEvent] | None:
        """The open orders the key's latest gap close that could read them read from the
        venue (None: none could yet), for what else needs them at start-up instead of a read
        of its own: the start's reads of every key come at once, and spend the address's
        request budget just before the first orders."""
        return self._open_orders_read.get(key_name)

    async def _positions_with_flats(self, venue: Venue) -> list[PositionUpdate]:
        """The venue's open positions, and a flat one for each the books hold that it no
        longer lists (Bybit lists only positions with a size)."""
        before = {known.symbol: known for known in self._projection.positions_of(venue.name)}
        listed = await venue.positions()
        symbols = {update.symbol for update in listed}
        now = utc_now()
        flats = [
            known.model_copy(update={"size": ZERO, "unrealized_pnl": ZERO, "ts": now})
            for known in self._projection.positions_of(venue.name)
            if known.symbol not in symbols
            and known.size != 0
            # One the stream reported while the list was asked for is newer than the list.
            and before.get(known.symbol) is known
        ]
        return [*listed, *flats]

    async def catch_up_fills(self, venue: Venue) -> bool:
        """Journal the key's fills since the last one journaled (REST, deduplicated); False
        if they could not be fetched (logged)."""
        journal = self._journal
        since = await journal.call(journal.last_execution_time, venue.name)
        return await self._apply_fetched(
            venue.name, "executions", lambda: venue.executions_since(since)
        )

    async def catch_up_settled(self, venue: Venue, link_ids: Iterable[str]) -> bool:
        """Fetch the key's fills again if the venue shows an order of `link_ids` (the last
        run's unfinished orders, settled at start-up) filled beyond what the books hold: a
        crash loses the stream's report of a fill held for its order's lost answer, and the
        start's gap-fill can ask before the venue's queries show the fill (they lag). Without
        this, the books miss the position until the books check, and a close finds nothing
        to close. The venue is asked again, a few times over a few seconds, while it still
        lists less than it shows filled (its fill list may lag its orders); what it still
        lacks then is a WARNING. False if the fills could not be fetched or are still
        missing (logged)."""
        unbooked = await self._unbooked(list(link_ids))
        if not unbooked:
            return True
        # No fill of an order comes before its signal (a minute more: executions_since).
        since = min(record.signal_ts or utc_now() - _DRIFT_LOOKBACK for record in unbooked)
        for pause in _SETTLED_FILL_RETRIES_S:
            await asyncio.sleep(pause)
            if not await self._apply_fetched(
                venue.name, "executions", lambda: venue.executions_since(since)
            ):
                return False
            unbooked = await self._unbooked([r.request.order_link_id for r in unbooked])
            if not unbooked:
                return True
        logger.bind(notify="venue_error").warning(
            "the venue shows {ids} filled beyond the fills it lists (key {key}): the books "
            "miss them until the check of the books finds them, and what the strategies do "
            "next is sized without them; see `bot positions` against the venue",
            ids=", ".join(record.request.order_link_id for record in unbooked),
            key=venue.name,
        )
        return False

    async def _unbooked(self, link_ids: list[str]) -> list[OrderRecord]:
        """Those of the orders `link_ids` that the journal shows filled beyond what its fills
        hold (the books' memory of an order is bounded: the journal's is not)."""
        journal = self._journal
        booked = await journal.call(journal.booked_qty_of, link_ids)
        unbooked = []
        for link_id in link_ids:
            record = await journal.call(journal.order, link_id)
            if record is not None and record.filled_qty > booked.get(link_id, ZERO):
                unbooked.append(record)
        return unbooked

    async def check_books(self, venue: Venue) -> None:
        """Compare the key's books with the venue's positions (each reconciliation pass).
        A disagreement that lasts `_BOOKS_DRIFT_S` unchanged (a fill still held or in
        flight makes a short one) sends the bot back to the venue for what it may have
        missed: positions, open orders and fills since the last journaled (the positions may
        only have been stale), then, if that was not it, fills of the last
        `_DRIFT_LOOKBACK`. One still there after that is warned of, once per difference
        between venue and books: fills the bot never saw (made before its journal began, or
        long ago, or lost by the venue) are in neither book, and trades since do not change
        that difference. A fetch that failed is tried again `_BOOKS_DRIFT_S` later."""
        key_name, now = venue.name, asyncio.get_running_loop().time()
        drift = self._projection.drift(key_name)
        for where in [where for where in self._drifting if where[0] == key_name]:
            sizes = drift.get(where[1])
            if sizes is None or sizes[0] - sizes[1] != self._drifting[where][1]:
                del self._drifting[where]  # resolved, or changed: its time starts again
        due: dict[str, Decimal] = {}
        for symbol, (at_venue, in_books) in drift.items():
            difference = at_venue - in_books
            since, _ = self._drifting.setdefault((key_name, symbol), (now, difference))
            warned = self._warned_drift.get((key_name, symbol))
            if now - since >= _BOOKS_DRIFT_S and warned != difference:
                due[symbol] = difference
        if not due:
            return
        complete = await self.close_gap(venue)
        still = self._still_drifting(key_name, due)
        if still:
            since_time = utc_now() - _DRIFT_LOOKBACK
            fetched = await self._apply_fetched(
                key_name, "executions", lambda: venue.executions_since(since_time)
            )
            complete = complete and fetched
            still = self._still_drifting(key_name, due)
        if not complete:  # nothing is known: ask again later, not at every pass
            for symbol, difference in due.items():
                self._drifting[(key_name, symbol)] = (now, difference)
            return
        for symbol, (at_venue, in_books) in still.items():
            remember(self._warned_drift, (key_name, symbol), at_venue - in_books, _WARNED_KEPT)
            logger.bind(notify="venue_error").warning(
                "key {key}: the venue's {symbol} position is {at_venue}, the bot's books hold "
                "{in_books} (every strategy's and the unattributed one), and fetching the last "
                "hour's fills again did not change that: fills the bot never saw (made before "
                "its journal began, or earlier, or lost by the venue); `bot positions` shows "
                "the books",
                key=key_name,
                symbol=symbol,
                at_venue=at_venue,
                in_books=in_books,
            )

    def _still_drifting(
        self, key_name: str, due: Mapping[str, Decimal]
    ) -> dict[str, tuple[Decimal, Decimal]]:
        """The disagreements of `due` the books still have, by the same difference."""
        return {
            symbol: (at_venue, in_books)
            for symbol, (at_venue, in_books) in self._projection.drift(key_name).items()
            if due.get(symbol) == at_venue - in_books
        }

    def closed_pnl_due(self, key_name: str) -> bool:
        """Whether a position of the key closed lately, so that its closed-PnL record is
        fetched now rather than at the next exit scan (up to a minute away while the stream
        is live); True for a few calls in a row, as the venue may list it a moment after."""
        left = self._closes_to_fetch.pop(key_name, 0)
        if left > 1:
            self._closes_to_fetch[key_name] = left - 1
        return left > 0

    async def catch_up_closed_pnl(self, venue: Venue) -> bool:
        """Journal the venue's closed-PnL records since the last one journaled (REST); False
        if they could not be fetched (logged)."""
        journal = self._journal
        since = await journal.call(journal.last_closed_pnl_time, venue.name)
        return await self._apply_fetched(
            venue.name, "closed PnL", lambda: venue.closed_pnl_since(since)
        )

    async def _apply_fetched(
        self,
        key_name: str,
        what: str,
        fetch: Callable[[], Awaitable[Sequence[AccountReport]]],
    ) -> bool:
        """Apply what `fetch` brings; False if it failed (logged)."""
        try:
            reports = await fetch()
        except (VenueError, ValueError) as exc:  # ValueError: a row that cannot be read
            logger.warning(
                "catching up key {key}: {what} failed: {error}",
                key=key_name,
                what=what,
                error=str(exc),
            )
            return False
        for report in reports:
            await self.apply(report)
        return True


async def _one(fetch: Callable[[], Awaitable[WalletUpdate]]) -> list[WalletUpdate]:
    return [await fetch()]


class Account:
    """The account as the bot knows it: the projection, the keeper that feeds it, and which
    keys' streams are live. What strategies (through `MarketData`) and the risk gate read.
    """

    def __init__(
        self,
        journal: Journal,
        venues: Mapping[str, Venue],
    ) -> None:
        """Replays the journal's fills and snapshots (blocking: build it off the loop)."""
        self.projection = AccountProjection.from_journal(journal)
        self._venues = venues
        self._order_listeners: list[Callable[[OrderEvent], None]] = []
        self._fill_listeners: list[FillListener] = []
        self._position_listeners: list[Callable[[PositionUpdate], None]] = []
        self._closed_listeners: list[Callable[[StrandedBy], None]] = []
        self._applied_listeners: list[Callable[[Execution, Collection[str]], None]] = []
        self.keeper = AccountKeeper(
            journal,
            self.projection,
            self._order_updated,
            seen_fills=journal.latest_executions(FILL_MEMORY),
            fill_booked=self._fill_booked,
            position_updated=self._position_updated,
            position_closed=self._position_closed,
            seen_exits=journal.waiting_exits(),
            fill_applied=self._fill_applied,
        )
        self.streams: dict[str, AccountStream] = {}

    def on_fill_booked(self, listener: FillListener) -> None:
        """Call `listener` with every fill of an order with an orderLinkId, once it is in
        the books; it returns the books' state it queued a strategy hook with, which the
        journal then keeps due until `Journal.fill_hook_done`, or None."""
        self._fill_listeners.append(listener)

    def _fill_booked(self, fill: Execution, strategy: str | None) -> FillBooking | None:
        hook = None
        for listener in self._fill_listeners:  # every one is told, whatever another does
            try:
                hook = listener(fill, strategy) or hook
            except Exception:  # the fill's journal write comes after: it must not be lost
                logger.exception("a listener failed on fill {id}", id=fill.exec_id)
        return hook

    def on_fill_applied(self, listener: Callable[[Execution, Collection[str]], None]) -> None:
        """Call `listener` with every fill applied to the books (any order's: a venue's stop
        too) and the strategies it was allocated to."""
        self._applied_listeners.append(listener)

    def _fill_applied(self, fill: Execution, strategies: Collection[str]) -> None:
        for listener in self._applied_listeners:
            try:
                listener(fill, strategies)
            except Exception:  # the fill's journal write comes after: it must not be lost
                logger.exception("a listener failed on fill {id}", id=fill.exec_id)

    def on_position_update(self, listener: Callable[[PositionUpdate], None]) -> None:
        """Call `listener` with every position the venue reports, as it is applied."""
        self._position_listeners.append(listener)

    def _position_updated(self, update: PositionUpdate) -> None:
        for listener in self._position_listeners:
            listener(update)

    def on_position_closed(self, listener: Callable[[StrandedBy], None]) -> None:
        """Call `listener` whenever a fill closes or turns a strategy's position in a
        symbol, and whenever a report or a fill leaves the key's position there closed, as
        the venue reports it and as the books agree (`StrandedBy`)."""
        self._closed_listeners.append(listener)

    def _position_closed(self, closed: StrandedBy) -> None:
        for listener in self._closed_listeners:
            listener(closed)

    def on_order_update(self, listener: Callable[[OrderEvent], None]) -> None:
        """Call `listener` with every order change the venue reports that moved an order."""
        self._order_listeners.append(listener)

    def live(self, key_name: str) -> bool:
        """Whether the key's account stream is connected (else REST keeps the books)."""
        return self.live_connection(key_name) is not None

    def live_connection(self, key_name: str) -> int | None:
        """The number of the key's account stream connection while it is live, None while it
        is down: the same number at two moments means the stream stayed up in between."""
        stream = self.streams.get(key_name)
        return stream.connects if stream is not None and stream.live else None

    async def open_books(self, key_name: str, strategy: str) -> list[StrategyBook]:
        """The strategy's own open positions; with the stream down, fills are fetched by REST
        first, so a position is never read from a book that misses them."""
        await self.catch_up_if_down(key_name)
        return self.projection.open_books(key_name, strategy)

    async def catch_up_if_down(self, key_name: str) -> None:
        """With the key's stream down, fetch its fills by REST into the books now."""
        if not self.live(key_name):
            await self.keeper.catch_up_fills(self._venues[key_name])

    def equity_usdt(self, key_name: str) -> Decimal | None:
        """The key's equity as last reported by the stream, or None if it is not live."""
        wallet = self.projection.wallet(key_name)
        return wallet.equity_usdt if wallet is not None and self.live(key_name) else None

    def _order_updated(self, event: OrderEvent) -> None:
        for listener in self._order_listeners:
            listener(event)
