"""The reconciliation loop: the journal and the venue kept in agreement, per key.

Every `reconcile_interval_s` it looks up each order the journal holds as not terminal (one
resting at the venue only every `reconcile_live_interval_s` while the key's account stream,
which reports it, stays up: each look-up spends the address's request budget), so limit
orders that fill later and cancellations at the venue reach the journal, and an
unknown order is settled to what the venue shows (or, once look-ups have missed it for long
enough, declared never sent); while the key's account stream is down it also fetches the
key's fills by REST, so the books keep converging. It never resends: that happens only at
start-up, before any signal runs, so a resend cannot overtake a later signal of the same key
and symbol.

It also asks the venue for the stop-loss and take-profit orders it executed on its own
(journaled under the order that set them) and for its closed-PnL records (the key-level
cross-check of the strategies' books; also on the few passes after a position of the key
closed, so that they show at once): every `exit_scan_interval_s` while the key's account
stream is down or has reconnected since the last complete scan, and every
`exit_scan_live_interval_s` while it has stayed up (the stream reports exits itself; the scan
is the safety net). The venue lists a symbol's latest `EXIT_SCAN_ORDERS` orders, so a scan also
runs once the key has placed half that many orders since the last: what happened in between
stays inside what the scan reads, exits included. Other clients of the account (or the bot
itself, over a long-lived position) can still push an exit the journal holds waiting out of
the latest ones: such an exit is asked for by its orderId, in a scan the stream has not
covered since the last one (the first, or one after the stream was down or reconnected).

Each key's passes keep their own phase of the interval, so that the keys' passes and their
requests do not come all at once; a pass that overran skips the slots it missed rather than
leaving its key in step with others held up with it. Each pass is bounded and paced by the
key's rate windows; a failed pass is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bot.account import Account
from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.logs import logger
from bot.venue.base import EXIT_SCAN_ORDERS, Venue
from bot.venue.errors import VenueError

__all__ = ["Reconciler", "next_slot"]

#: Orders placed on a key after which its exit scan is due whatever the interval.
ORDERS_BETWEEN_SCANS: Final = EXIT_SCAN_ORDERS // 2


class Reconciler:
    """Runs the safety net of one bot: one loop per key."""

    def __init__(
        self,
        executor: Executor,
        journal: Journal,
        venues: Mapping[str, Venue],
        config: ExecutionConfig,
        account: Account,
    ) -> None:
        self._executor = executor
        self._account = account
        self._journal = journal
        self._venues = venues
        self._config = config

    async def run(self, key_name: str) -> None:
        """Reconcile `key_name` until cancelled."""
        loop = asyncio.get_running_loop()
        interval = self._config.reconcile_interval_s
        slot = loop.time() + interval * (1 + self._phase(key_name))
        scans = _ExitScans(self._config)
        while True:
            await asyncio.sleep(max(0.0, slot - loop.time()))
            try:
                await self._executor.reconcile(key_name)
                connection = self._account.live_connection(key_name)
                keeper = self._account.keeper
                if connection is None:  # the stream is down: fills by REST
                    await keeper.catch_up_fills(self._venues[key_name])
                if keeper.closed_pnl_due(key_name):  # a position closed: its PnL now
                    await keeper.catch_up_closed_pnl(self._venues[key_name])
                await keeper.check_books(self._venues[key_name])
                keeper.tell_closed_again(key_name)
                placed = self._executor.orders_placed(key_name)
                if scans.due(loop.time(), connection, placed):
                    started, complete = loop.time(), False
                    try:
                        complete = await self.scan_exits(
                            key_name, by_id=not scans.stream_stayed_up(connection)
                        )
                        await self._account.keeper.catch_up_closed_pnl(self._venues[key_name])
                    finally:  # a failed scan is tried again at the short interval
                        scans.done(started, connection if complete else None, placed)
            except sqlite3.OperationalError as exc:  # a full disk, a lock: the next pass
                logger.error(
                    "reconciliation pass for key {key} failed: the journal cannot be written "
                    "({error})",
                    key=key_name,
                    error=str(exc),
                )
            except Exception:  # the safety net must outlive any one bad pass
                logger.exception("reconciliation pass for key {key} failed", key=key_name)
            slot = next_slot(slot, loop.time(), interval)

    def _phase(self, key_name: str) -> float:
        """The key's share of an interval (0 to 1) its passes are offset by."""
        keys = sorted(self._venues)
        return keys.index(key_name) / len(keys) if key_name in keys else 0.0

    async def scan_exits(self, key_name: str, *, by_id: bool = True) -> bool:
        """Journal the exits the venue executed for `key_name`, and warn of those another
        client cancelled or moved; False if a symbol could not be read (it is logged).
        `by_id`: also ask for each exit the journal holds waiting that the latest orders
        do not show (a request or two each); needless while the key's stream has stayed up
        since the last scan (it reports what happens to them), and at a hundred orders a
        second, with a stop resting all along, those requests took the orders' budget."""
        venue = self._venues[key_name]
        symbols = await self._journal.call(self._journal.protected_symbols, key_name)
        waiting: dict[str, list[str]] = {}
        for held in await self._journal.call(self._journal.waiting_exits) if by_id else ():
            if held.key_name == key_name:
                waiting.setdefault(held.symbol, []).append(held.order_id)
        complete = True
        for symbol in sorted({*symbols, *waiting}):
            try:
                exits = await venue.exit_orders(symbol, waiting.get(symbol, ()))
            except VenueError as exc:
                logger.warning("exit scan of {symbol} failed: {error}", symbol=symbol, error=exc)
                complete = False
                continue
            oldest_first = exits[::-1]
            moved = await self._journal.call(self._journal.record_exits, oldest_first)
            for exit_order, forward in zip(oldest_first, moved, strict=True):
                if forward:
                    logger.info(
                        "{kind} order of {symbol} at the venue: {status} (found by a scan)",
                        kind=exit_order.kind,
                        key=key_name,
                        symbol=symbol,
                        status=exit_order.status,
                    )
                    # Cancelled or moved by another client while no stream told of it.
                    await self._account.keeper.check_exit(exit_order)
        return complete


def next_slot(slot: float, now: float, interval: float) -> float:
    """The slot after `slot` on its timetable (every `interval`) that is not past at `now`:
    a pass that overran skips the slots it missed and keeps its phase."""
    return slot + interval * (math.floor(max(0.0, now - slot) / interval) + 1)


@dataclass
class _ExitScans:
    """When a key's exit scan is due: see the module's notes."""

    config: ExecutionConfig
    at: float | None = None  # when the last scan started (loop time)
    live_on: int | None = None  # the stream connection live all through it, if any
    placed: int = 0  # the key's orders placed by then

    def due(self, now: float, connection: int | None, placed: int) -> bool:
        if self.at is None or placed - self.placed >= ORDERS_BETWEEN_SCANS:
            return True
        interval = self.config.exit_scan_interval_s
        if self.stream_stayed_up(connection):
            interval = max(interval, self.config.exit_scan_live_interval_s)
        return now >= self.at + interval

    def stream_stayed_up(self, connection: int | None) -> bool:
        """Whether the key's stream (`connection`, None while down) has been live since the
        last complete scan began."""
        return connection is not None and connection == self.live_on

    def done(self, started: float, live_on: int | None, placed: int) -> None:
        """A scan started at `started`; `live_on`: the stream's connection if the scan was
        complete (None makes the next one come at the short interval)."""
        self.at, self.live_on, self.placed = started, live_on, placed
