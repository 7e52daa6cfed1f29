"""The journal: every signal, decision and order, in SQLite (WAL mode).

It is the bot's memory across restarts and the answer to "what happened to signal X":
- `signals` is unique per (source, id): recording a signal twice is how duplicates are found;
  a signal is journaled (synchronous=FULL, survives power loss) before its sender is answered.
- `decisions` holds each strategy's decline and each risk verdict, with the reason.
- `orders` holds each order by its deterministic orderLinkId, written *before* it is sent, so
  a crash leaves a row to reconcile instead of an order nobody knows about.

Writes from the event loop go through `call()`, which runs them on one dedicated thread:
nothing blocks the loop and writes keep their order.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from bot.logs import logger
from bot.messages import (
    Decline,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    RiskDecision,
    Signal,
    utc_now,
)

__all__ = ["Journal", "JournalError", "OrderRecord", "TraceRow"]

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS signals (
    source       TEXT NOT NULL,
    signal_id    TEXT NOT NULL,
    symbol       TEXT NOT NULL,
    ts           TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    payload      TEXT NOT NULL,
    processed_at TEXT,
    PRIMARY KEY (source, signal_id)
);
CREATE TABLE IF NOT EXISTS decisions (
    id         INTEGER PRIMARY KEY,
    source     TEXT NOT NULL,
    signal_id  TEXT NOT NULL,
    strategy   TEXT NOT NULL,
    leg        INTEGER,
    approved   INTEGER NOT NULL,
    rule       TEXT,
    reason     TEXT NOT NULL,
    intent     TEXT,
    decided_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_signal ON decisions (source, signal_id);
CREATE TABLE IF NOT EXISTS orders (
    order_link_id TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    signal_id     TEXT NOT NULL,
    strategy      TEXT NOT NULL,
    leg           INTEGER NOT NULL,
    key_name      TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    side          TEXT NOT NULL,
    order_type    TEXT NOT NULL,
    qty           TEXT NOT NULL,
    price         TEXT,
    request       TEXT NOT NULL,
    status        TEXT NOT NULL,
    order_id      TEXT,
    filled_qty    TEXT NOT NULL DEFAULT '0',
    avg_price     TEXT,
    reason        TEXT NOT NULL DEFAULT '',
    ret_code      INTEGER,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_signal ON orders (source, signal_id);
CREATE TABLE IF NOT EXISTS order_events (
    id            INTEGER PRIMARY KEY,
    order_link_id TEXT NOT NULL REFERENCES orders (order_link_id),
    status        TEXT NOT NULL,
    event         TEXT NOT NULL,
    ts            TEXT NOT NULL
);
"""


class JournalError(Exception):
    """The journal file cannot be opened or is not a journal of this version."""


@dataclass(frozen=True)
class OrderRecord:
    """An order as the journal knows it."""

    request: OrderRequest
    status: OrderStatus
    order_id: str | None
    filled_qty: str
    avg_price: str | None
    reason: str


@dataclass(frozen=True)
class TraceRow:
    """One line of `bot orders`: a signal, one decision about it, and its order if any."""

    source: str
    signal_id: str
    symbol: str
    received_at: str
    strategy: str | None
    decision: str  # pending | declined | approved | rejected
    reason: str
    order_link_id: str | None
    side: str | None
    qty: str | None
    status: str | None
    avg_price: str | None
    filled_qty: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Journal:
    """One SQLite journal file. Methods are synchronous; use `call()` from the event loop."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        try:
            if read_only and not path.exists():
                raise JournalError(
                    f"no journal at {path}: has the bot run with this state_dir? "
                    "(--config or BOT_STATE_DIR select another)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            if read_only:
                self._db.execute("PRAGMA query_only=1")
            self._migrate(read_only=read_only)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from None

    def _migrate(self, *, read_only: bool) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema {version}, newer than this bot ({SCHEMA_VERSION})"
                "; upgrade the bot or point state_dir elsewhere"
            )
        if version < SCHEMA_VERSION and not read_only:
            self._db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self._db.close()

    async def call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a journal method on the journal's own thread without blocking the event loop."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, lambda: method(*args, **kwargs))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # signals -------------------------------------------------------------------------------

    def record_signal(self, signal: Signal) -> bool:
        """Journal a signal durably; False when (source, id) was already seen (a duplicate)."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO signals"
                " (source, signal_id, symbol, ts, received_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    signal.source,
                    signal.id,
                    signal.symbol,
                    signal.ts.isoformat(),
                    signal.received_at.isoformat(),
                    signal.model_dump_json(),
                ),
            )
            return cursor.rowcount == 1

    def mark_processed(self, signal: Signal) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE signals SET processed_at = ? WHERE source = ? AND signal_id = ?",
                (utc_now().isoformat(), signal.source, signal.id),
            )

    def unprocessed_signals(self) -> list[Signal]:
        """Signals journaled but not yet run through the pipeline (e.g. the bot crashed).

        A row this version cannot read back is logged and left in place, never allowed to
        keep the others (or the bot) from starting.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT source, signal_id, payload FROM signals WHERE processed_at IS NULL"
                " ORDER BY received_at"
            ).fetchall()
        signals = []
        for source, signal_id, payload in rows:
            try:
                signals.append(Signal.model_validate_json(payload))
            except ValueError as exc:
                logger.error(
                    "journaled signal {source}/{id} cannot be read back and is skipped: {error}",
                    source=source,
                    id=signal_id,
                    error=str(exc).splitlines()[0],
                )
        return signals

    # decisions -----------------------------------------------------------------------------

    def record_decline(self, signal: Signal, decline: Decline, rule: str = "strategy") -> None:
        """No order for `signal` from `decline.strategy`: the strategy's own choice (rule
        "strategy") or a risk rule that refused the whole signal."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO decisions (source, signal_id, strategy, leg, approved, rule, reason,"
                " decided_at) VALUES (?, ?, ?, NULL, 0, ?, ?, ?)",
                (
                    signal.source,
                    signal.id,
                    decline.strategy,
                    rule,
                    decline.reason,
                    utc_now().isoformat(),
                ),
            )

    def record_decision(self, decision: RiskDecision) -> None:
        intent = decision.intent
        with self._transaction() as db:
            db.execute(
                "INSERT INTO decisions (source, signal_id, strategy, leg, approved, rule, reason,"
                " intent, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    intent.signal_source,
                    intent.signal_id,
                    intent.strategy,
                    intent.leg,
                    int(decision.approved),
                    decision.rule,
                    decision.reason,
                    intent.model_dump_json(),
                    decision.decided_at.isoformat(),
                ),
            )

    # orders --------------------------------------------------------------------------------

    def record_order(self, request: OrderRequest) -> bool:
        """Journal an order as Pending before it is sent; False if its orderLinkId exists."""
        now = utc_now().isoformat()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO orders (order_link_id, source, signal_id, strategy, leg,"
                " key_name, symbol, side, order_type, qty, price, request, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.order_link_id,
                    request.signal_source,
                    request.signal_id,
                    request.strategy,
                    request.leg,
                    request.key_name,
                    request.symbol,
                    request.side.value,
                    request.order_type.value,
                    str(request.qty),
                    None if request.price is None else str(request.price),
                    request.model_dump_json(),
                    OrderStatus.PENDING.value,
                    now,
                    now,
                ),
            )
            return cursor.rowcount == 1

    def record_order_event(self, event: OrderEvent) -> None:
        """Append an event to the order's history and bring the order row up to date."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO order_events (order_link_id, status, event, ts) VALUES (?, ?, ?, ?)",
                (
                    event.order_link_id,
                    event.status.value,
                    event.model_dump_json(),
                    event.ts.isoformat(),
                ),
            )
            db.execute(
                "UPDATE orders SET status = ?, order_id = COALESCE(?, order_id), filled_qty = ?,"
                " avg_price = COALESCE(?, avg_price), reason = ?, ret_code = ?, updated_at = ?"
                " WHERE order_link_id = ?",
                (
                    event.status.value,
                    event.order_id,
                    str(event.filled_qty),
                    None if event.avg_price is None else str(event.avg_price),
                    event.reason,
                    event.ret_code,
                    event.ts.isoformat(),
                    event.order_link_id,
                ),
            )

    def order(self, order_link_id: str) -> OrderRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT request, status, order_id, filled_qty, avg_price, reason FROM orders"
                " WHERE order_link_id = ?",
                (order_link_id,),
            ).fetchone()
        if row is None:
            return None
        request, status, order_id, filled_qty, avg_price, reason = row
        return OrderRecord(
            request=OrderRequest.model_validate_json(request),
            status=OrderStatus(status),
            order_id=order_id,
            filled_qty=filled_qty,
            avg_price=avg_price,
            reason=reason,
        )

    # reading -------------------------------------------------------------------------------

    def trace(self, limit: int = 100) -> list[TraceRow]:
        """The latest signals, newest first, each with its decisions and orders."""
        query = """
            SELECT s.source, s.signal_id, s.symbol, s.received_at, d.strategy,
                   CASE WHEN d.id IS NULL THEN 'pending'
                        WHEN d.rule = 'strategy' THEN 'declined'
                        WHEN d.approved = 1 THEN 'approved' ELSE 'rejected' END,
                   COALESCE(NULLIF(o.reason, ''), d.reason, ''),
                   o.order_link_id, o.side, o.qty, o.status, o.avg_price, o.filled_qty
            FROM (SELECT * FROM signals ORDER BY received_at DESC LIMIT ?) AS s
            LEFT JOIN decisions AS d ON d.source = s.source AND d.signal_id = s.signal_id
            LEFT JOIN orders AS o ON o.source = d.source AND o.signal_id = d.signal_id
                 AND o.strategy = d.strategy AND o.leg = d.leg AND d.approved = 1
            ORDER BY s.received_at DESC, d.id
        """
        with self._lock:
            rows = self._db.execute(query, (limit,)).fetchall()
        return [TraceRow(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Rows per table, for /healthz and tests."""
        with self._lock:
            return {
                table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
                for table in ("signals", "decisions", "orders", "order_events")
            }
