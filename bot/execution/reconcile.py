"""The reconciliation loop: the journal and the venue kept in agreement, per key.

Every `reconcile_interval_s` it looks up each order the journal holds as not terminal, so
limit orders that fill later and cancellations at the venue reach the journal, and an
unknown order is settled to what the venue shows (or, once look-ups have missed it for long
enough, declared never sent); while the key's account stream is down it also fetches the
key's fills by REST, so the books keep converging. It never resends: that happens only at
start-up, before any signal runs, so a resend cannot overtake a later signal of the same key
and symbol.

It also asks the venue for the stop-loss and take-profit orders it executed on its own
(journaled under the order that set them) and for its closed-PnL records (the key-level
cross-check of the strategies' books): every `exit_scan_interval_s` while the key's account
stream is down or has reconnected since the last scan, and every `exit_scan_live_interval_s`
while it has stayed up (the stream reports exits itself; the scan is the safety net).

Each key's loop runs at its own phase of the interval, so that the keys' passes and their
requests never come all at once. Each pass is bounded and paced by the key's rate windows; a
failed pass is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bot.account import Account
from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.logs import logger
from bot.venue.base import Venue
from bot.venue.errors import VenueError

__all__ = ["Reconciler"]


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
        next_pass = loop.time() + interval * (1 + self._phase(key_name))
        last_scan: float | None = None
        scanned_on: int | None = None  # the stream connection live at the last scan
        while True:
            await asyncio.sleep(max(0.0, next_pass - loop.time()))
            next_pass = max(next_pass + interval, loop.time())
            try:
                await self._executor.reconcile(key_name)
                if not self._account.live(key_name):  # the stream is down: fills by REST
                    await self._account.keeper.catch_up_fills(self._venues[key_name])
                connection = self._account.live_connection(key_name)
                if last_scan is None or loop.time() >= last_scan + self._scan_interval(
                    connection is not None and connection == scanned_on
                ):
                    last_scan, scanned_on = loop.time(), connection
                    await self.scan_exits(key_name)
                    await self._account.keeper.catch_up_closed_pnl(self._venues[key_name])
            except Exception:  # the safety net must outlive any one bad pass
                logger.exception("reconciliation pass for key {key} failed", key=key_name)

    def _phase(self, key_name: str) -> float:
        """The key's share of an interval (0 to 1) its passes are offset by."""
        keys = sorted(self._venues)
        return keys.index(key_name) / len(keys) if key_name in keys else 0.0

    def _scan_interval(self, stayed_live: bool) -> float:
        config = self._config
        if stayed_live:
            return max(config.exit_scan_live_interval_s, config.exit_scan_interval_s)
        return config.exit_scan_interval_s

    async def scan_exits(self, key_name: str) -> int:
        """Journal the exits the venue executed for `key_name`; returns how many were new."""
        venue = self._venues[key_name]
        symbols = await self._journal.call(self._journal.protected_symbols, key_name)
        recorded = 0
        for symbol in symbols:
            try:
                exits = await venue.exit_orders(symbol)
            except VenueError as exc:
                logger.warning("exit scan of {symbol} failed: {error}", symbol=symbol, error=exc)
                continue
            for exit_order in reversed(exits):  # oldest first
                if await self._journal.call(self._journal.record_exit, exit_order):
                    recorded += 1
                    logger.info(
                        "{kind} executed by the venue",
                        kind=exit_order.kind,
                        key=key_name,
                        symbol=symbol,
                        status=exit_order.status,
                    )
        return recorded
