"""The journal: every signal, decision and order, in SQLite (WAL mode).

It is the bot's memory across restarts and the answer to "what happened to signal X":
- `signals` is unique per (source, id): recording a signal twice is how duplicates are found;
  a signal is journaled durably before its sender is answered.
- `decisions` holds each strategy's decline and each risk verdict, with the reason.
- `orders` holds each order by its deterministic orderLinkId, written *before* it is sent, so
  a crash leaves a row to reconcile instead of an order nobody knows about.

Writes from the event loop go through `call()`, which runs them on one dedicated thread:
nothing blocks the loop and writes keep their order. What the venue would tell again after a
crash (the account's reports, an order's acknowledgement) is deferred and written in batches
(`defer`); a new signal's or order's rows may pass a batch still waiting (`call_ahead`).

Durability comes in two grades. Every commit survives a crash or `kill -9` of the bot (WAL,
synchronous=NORMAL). With `synchronous="FULL"`, the commits that make a promise also wait for
the disk, so they survive a power loss of the machine: a signal its sender was told was
accepted, the decisions and Pending orders written before anything is sent, and a trading
state a person or the kill switch set. The rest (the order's progress, the account's reports,
declines, "processed" marks) is what the venue or the pipeline tells again after a restart:
a power loss can lose the last of those commits, never one before a durable commit (the WAL
keeps commits in order), and start-up reconciliation looks every unfinished order up, by its
deterministic orderLinkId, before anything is sent again.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import shlex
import sqlite3
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, NamedTuple, ParamSpec, TextIO, TypeVar

from pydantic import ValidationError

from bot.execution.orders import TransitionRefused, check_transition, not_ours
from bot.files import file_size
from bot.logs import RepeatedNotes, logger, scrub
from bot.messages import (
    ClosedPnl,
    Decline,
    Execution,
    ExitOrder,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionUpdate,
    RiskDecision,
    Side,
    Signal,
    StopMove,
    WalletUpdate,
    utc_now,
)
from bot.risk.states import HaltWork, ScopeState, TradingState
from bot.venue.errors import DUPLICATE_ORDER_CODE

__all__ = [
    "LOCK_WAIT_S",
    "FillBooking",
    "Journal",
    "JournalError",
    "JournalInUse",
    "JournalLock",
    "OrderOwner",
    "OrderRecord",
    "TraceRow",
    "WaitingExit",
    "failure_message",
    "journal_files",
    "lock_journal",
]

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION: Final = 17
#: orderLinkIds per `IN (...)` query: far under SQLite's limit of variables.
_IDS_PER_QUERY: Final = 500
#: The bytes written to the WAL since it last started over past which the writer is made to
#: start it over (see `checkpoint_in_background`): it then stays about this large.
_WAL_RESTART_BYTES: Final = 64 * 1024 * 1024
#: The bytes of a WAL frame's header, before its page.
_FRAME_HEADER: Final = 24
#: The size (bytes) of a WAL file past which it is cut back (see `checkpoint_in_background`):
#: far past `_WAL_RESTART_BYTES`, as cutting it costs the writer a stall (50-300 ms); only a
#: long read, which keeps the WAL from starting over, makes it grow so far.
_WAL_SIZE_LIMIT: Final = 512 * 1024 * 1024
#: Refused requests the journal keeps, the newest (older ones are pruned every
#: `_REJECTIONS_PRUNED_EVERY` refusals): enough to see any attack's shape, never the disk.
REJECTIONS_KEPT: Final = 100_000
_REJECTIONS_PRUNED_EVERY: Final = 1_000
_SQL_MAX_INT: Final = 2**63 - 1
#: How long a deferred write waits for others to share its transaction (`Journal.defer`):
#: enough for a fill's reports and its signal's end. Longer windows group several signals'
#: reports (50 ms, in three runs each way at 50/s: 7 % less CPU per signal) but a longer batch
#: holds up the next signal's journal write, and its `202` (p99 +0.7 ms): not worth it.
DEFER_WINDOW_S: Final = 0.010
#: How long a write waits for another program's lock on the journal (a backup tool's)
#: before it fails: the health check's bound for a write, and how long a new signal's
#: sender is kept waiting at most (the pipeline's `SIGNAL_WRITE_WAIT_S`).
LOCK_WAIT_S: Final = 2.0
_BUSY_TIMEOUT_MS: Final = int(LOCK_WAIT_S * 1000)
#: A `call_within` begun this soon waits for a lock as any write does (`_BUSY_TIMEOUT_MS`);
#: begun later (the journal's thread was busy), only for what is left of its wait.
_PROMPTLY_MS: Final = 250
_ACCOUNT: Final = """
CREATE TABLE IF NOT EXISTS executions (
    exec_id         TEXT PRIMARY KEY,
    key_name        TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    order_link_id   TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    qty             TEXT NOT NULL,
    price           TEXT NOT NULL,
    fee             TEXT NOT NULL,
    is_maker        INTEGER NOT NULL,
    stop_order_type TEXT NOT NULL,
    exec_time       TEXT NOT NULL,
    allocation      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_by_key ON executions (key_name, exec_time);
CREATE TABLE IF NOT EXISTS positions (
    key_name         TEXT NOT NULL,
    symbol           TEXT NOT NULL,
    snapshot         TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (key_name, symbol)
);
CREATE TABLE IF NOT EXISTS closed_pnl (
    order_id   TEXT NOT NULL,
    key_name   TEXT NOT NULL,
    snapshot   TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (order_id, key_name)
);
CREATE TABLE IF NOT EXISTS trading_states (
    scope     TEXT PRIMARY KEY,
    state     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    since     TEXT NOT NULL,
    automatic INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS wallets (
    key_name   TEXT PRIMARY KEY,
    snapshot   TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
_EXIT_ORDERS: Final = """
CREATE TABLE IF NOT EXISTS exit_orders (
    order_id      TEXT PRIMARY KEY,
    key_name      TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    side          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    trigger_price TEXT,
    qty           TEXT NOT NULL,
    status        TEXT NOT NULL,
    filled_qty    TEXT NOT NULL,
    avg_price     TEXT,
    parent_order_link_id TEXT,
    strategy      TEXT,
    updated_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exit_orders_by_parent ON exit_orders (parent_order_link_id);
"""
_REJECTIONS: Final = """
CREATE TABLE IF NOT EXISTS rejections (
    id       INTEGER PRIMARY KEY,
    source   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    reason   TEXT NOT NULL,
    remote   TEXT NOT NULL,
    at       TEXT NOT NULL
);
"""
#: How many of a position's latest orders and stop moves `levels_set` reads.
_LEVELS_LOOKED_AT: Final = 200
#: A strategy's stop-loss moves (Bybit's position-level stop) and what came of each.
_STOP_MOVES: Final = """
CREATE TABLE IF NOT EXISTS stop_moves (
    id         INTEGER PRIMARY KEY,
    source     TEXT NOT NULL,
    signal_id  TEXT NOT NULL,
    strategy   TEXT NOT NULL,
    key_name   TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    stop_loss  TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         TEXT NOT NULL
);
"""
#: Fills of our orders whose strategy's `on_fill` has not finished yet, with how much of the
#: order the books held once the fill was in them (`booked`): written with the fill, deleted
#: when the hook is done, so a hook a crash interrupted runs again on the next start.
_FILL_HOOKS: Final = """
CREATE TABLE IF NOT EXISTS fill_hooks_due (
    exec_id TEXT PRIMARY KEY,
    booked  TEXT NOT NULL
);
"""
#: The strategy's signed position in the symbol once the fill was booked (NULL: journaled by
#: a version before it, schema 9): what the fill left of it, whatever later fills did.
_FILL_HOOK_POSITION: Final = """
ALTER TABLE fill_hooks_due ADD COLUMN position TEXT;
"""
#: The fill whose strategy hook asked for a stop move (NULL: a signal or a timer did), so
#: that the hook run again after a crash does not move the stop a second time.
_STOP_MOVE_CAUSE: Final = """
ALTER TABLE stop_moves ADD COLUMN fill_exec_id TEXT;
CREATE INDEX IF NOT EXISTS stop_moves_by_fill ON stop_moves (fill_exec_id)
    WHERE fill_exec_id IS NOT NULL;
"""
#: The signed operator commands (halt, resume) already acted on, by the digest of what their
#: signature covers, until their signature expires: one captured command cannot be replayed
#: after a restart either.
_USED_COMMANDS: Final = """
CREATE TABLE IF NOT EXISTS used_commands (
    digest BLOB PRIMARY KEY,
    until  REAL NOT NULL
);
"""
#: Whether a remembered command was carried out: one a crash cut short (recorded, not
#: acted on) may be taken once more (an MQTT command is delivered again after the crash).
_USED_COMMAND_ACTED: Final = """
ALTER TABLE used_commands ADD COLUMN acted INTEGER NOT NULL DEFAULT 1;
"""
#: Unfinished orders are looked up per signal (a strategy's open orders): not by a scan.
_ORDERS_BY_STATUS: Final = """
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, key_name, strategy, symbol);
"""
#: A filled order with a stop loss or take profit, whose exits the venue may execute.
_PROTECTED: Final = (
    "status IN ('Filled', 'PartiallyFilled') AND (json_extract(request, '$.stop_loss')"
    " IS NOT NULL OR json_extract(request, '$.take_profit') IS NOT NULL)"
)
#: Lookups made for every venue-created exit, every order's history and every exit scan,
#: which would otherwise scan tables that grow with every signal: an exit's parent (the
#: latest filled order of its key and symbol), the waiting exit it replaces, an order's
#: events, and the symbols whose exits the venue may execute (`protected_symbols`, whose
#: WHERE this partial index repeats word for word so that the planner can use it).
_LOOKUP_INDEXES: Final = f"""
CREATE INDEX IF NOT EXISTS orders_by_symbol ON orders (key_name, symbol, updated_at);
CREATE INDEX IF NOT EXISTS orders_protected ON orders (key_name, symbol) WHERE {_PROTECTED};
CREATE INDEX IF NOT EXISTS exit_orders_by_level ON exit_orders (key_name, symbol, kind, status);
CREATE INDEX IF NOT EXISTS order_events_by_order ON order_events (order_link_id);
"""
#: Facts about the journal itself: the environment (sim, testnet, mainnet) whose bot wrote
#: it, so that no bot of another environment acts on its signals and orders.
_META: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# The fills in the order a start replays them, a page at a time (`Journal.executions`).
_EXECUTIONS_BY_TIME: Final = """
CREATE INDEX IF NOT EXISTS executions_by_time ON executions (exec_time);
"""
#: What a halt was asked to do and has not done yet (`HaltWork`; '' when nothing is left):
#: a start after a stop or a crash that cut it short does it again.
_HALT_WORK: Final = """
ALTER TABLE trading_states ADD COLUMN unfinished TEXT NOT NULL DEFAULT '';
"""
_SCHEMA: Final = f"""
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
    updated_at    TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    venue_qty     TEXT,
    venue_price   TEXT,
    amendment_said TEXT,
    cancel_requested_at TEXT
);
CREATE INDEX IF NOT EXISTS orders_by_signal ON orders (source, signal_id);
CREATE TABLE IF NOT EXISTS order_events (
    id            INTEGER PRIMARY KEY,
    order_link_id TEXT NOT NULL REFERENCES orders (order_link_id),
    status        TEXT NOT NULL,
    event         TEXT NOT NULL,
    ts            TEXT NOT NULL,
    ret_code      INTEGER,
    reason        TEXT NOT NULL DEFAULT ''
);
{_EXIT_ORDERS}{_ACCOUNT}{_REJECTIONS}{_STOP_MOVES}{_ORDERS_BY_STATUS}{_LOOKUP_INDEXES}{_FILL_HOOKS}
{_STOP_MOVE_CAUSE}{_USED_COMMANDS}{_FILL_HOOK_POSITION}{_USED_COMMAND_ACTED}{_META}
{_EXECUTIONS_BY_TIME}{_HALT_WORK}"""
#: What turns a journal of version N-1 into version N; each step runs in one transaction.
_MIGRATIONS: Final[dict[int, str]] = {
    2: f"""
ALTER TABLE orders ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE order_events ADD COLUMN ret_code INTEGER;
ALTER TABLE order_events ADD COLUMN reason TEXT NOT NULL DEFAULT '';
{_EXIT_ORDERS}{_ACCOUNT}""",
    3: _REJECTIONS,
    4: _STOP_MOVES + _ORDERS_BY_STATUS,
    5: _LOOKUP_INDEXES,
    # The quantity the venue holds, when its reports say (another client may amend an order).
    6: "ALTER TABLE orders ADD COLUMN venue_qty TEXT;",
    7: _FILL_HOOKS + _STOP_MOVE_CAUSE,
    8: _USED_COMMANDS,
    9: _FILL_HOOK_POSITION,
    10: _USED_COMMAND_ACTED,
    11: _META,
    12: _EXECUTIONS_BY_TIME,
    # A limit order's price as the venue holds it (another client may amend it too).
    13: "ALTER TABLE orders ADD COLUMN venue_price TEXT;",
    # What the bot last said of the order amended by another client (once per change,
    # restarts included).
    14: "ALTER TABLE orders ADD COLUMN amendment_said TEXT;",
    # When the bot asked the venue to cancel the order: its cancel, seen after a crash, is
    # not another client's.
    15: "ALTER TABLE orders ADD COLUMN cancel_requested_at TEXT;",
    # Nothing to change: an order's request may now say `closes_position`, which a bot of
    # schema 15 could not read.
    16: "",
    17: _HALT_WORK,
}
#: What SQLite says when a migration meets tables its recorded version does not match.
_SCHEMA_MISMATCH: Final = ("duplicate column", "already exists", "no such table", "no such column")
_VENUE_STATES: Final = frozenset(
    {
        OrderStatus.NEW,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.FILLED,
        OrderStatus.CANCELLED,
        OrderStatus.REJECTED,
    }
)
_NON_TERMINAL: Final = tuple(status.value for status in OrderStatus if not status.is_terminal)


_EXECUTION_COLUMNS: Final = (
    "exec_id, key_name, order_id, order_link_id, symbol, side, qty, price, fee, is_maker,"
    " stop_order_type, exec_time, allocation"
)
_EXEC_TIME_COLUMN: Final = 11
_EXECUTIONS_PER_PAGE: Final = 1_000


def _execution(row: Sequence[Any]) -> Execution:
    """An executions row as the Execution it journaled, or JournalDamaged naming the row."""
    return _read_row("executions", row[0], _parse_execution, row)


def _allocation(text: Any, exec_id: Any) -> dict[str, Decimal]:
    """An executions row's allocation (strategy -> qty), or JournalDamaged naming the row."""
    return _read_row("executions", exec_id, _parse_allocation, text)


def _parse_allocation(text: Any) -> dict[str, Decimal]:
    return {str(name): Decimal(qty) for name, qty in json.loads(text).items()}


def _read_row(table: str, row_id: Any, read: Callable[[Any], T], value: Any) -> T:
    """`read(value)`, or JournalDamaged naming the row of `table` it could not read."""
    try:
        return read(value)
    # ValidationError is a ValueError; AttributeError: JSON of another shape (a list).
    except (ValueError, ArithmeticError, TypeError, AttributeError) as exc:
        raise JournalDamaged(_damaged_row(table, row_id, exc)) from None


def _damaged_row(table: str, row_id: Any, exc: BaseException) -> str:
    if isinstance(exc, ValidationError):  # "1 validation error for Execution": which field
        first = exc.errors(include_url=False)[0]
        problem = f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
    else:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem.startswith("[<class 'decimal."):  # Decimal('x') says only its signal's class
        problem = "a number that is not a number"
    return (
        f"the journal holds a row of {table} ({row_id!r}) the bot cannot read ({problem[:80]}), "
        f"which the bot never writes: {_CHANGED_OR_DAMAGED}"
    )


def _parse_execution(row: Sequence[Any]) -> Execution:
    """A fill from the first twelve of `_EXECUTION_COLUMNS`, as journaled."""
    (
        exec_id,
        key_name,
        order_id,
        order_link_id,
        symbol,
        side,
        qty,
        price,
        fee,
        is_maker,
        stop_order_type,
        exec_time,
    ) = row
    return Execution(
        exec_id=exec_id,
        key_name=key_name,
        order_id=order_id,
        order_link_id=order_link_id,
        symbol=symbol,
        side=Side(side),
        qty=Decimal(qty),
        price=Decimal(price),
        fee=Decimal(fee),
        is_maker=bool(is_maker),
        stop_order_type=stop_order_type,
        ts=stored_time(exec_time, "executions.exec_time"),
    )


class FillBooking(NamedTuple):
    """A fill of ours as its books held it once it was in them: how much of its order they
    held (`booked`) and the strategy's signed position in the symbol (`position`; None when
    not known: a hook journaled by an older version)."""

    booked: Decimal
    position: Decimal | None = None


class JournalError(Exception):
    """The journal file cannot be opened or is not a journal of this version."""


class JournalDamaged(JournalError):
    """A row holds a value the bot never writes (a file edited by another program, or damage
    SQLite's structure checks do not see): said in one line, never a parser's traceback."""


#: What a journal value the bot never wrote means, and what to do.
_CHANGED_OR_DAMAGED: Final = (
    "the file was changed by another program or is damaged; restore it from a backup, or "
    "correct that row with the sqlite3 tool"
)


def stored_time(value: Any, where: str) -> datetime:
    """A time the journal stored (ISO 8601), or JournalDamaged naming `where` (table.column)."""
    return _stored(value, where, datetime.fromisoformat)


def _stored(value: Any, where: str, read: Callable[[Any], T]) -> T:
    """`read(value)` of the journal's column `where` (table.column), or JournalDamaged naming
    it and the value."""
    try:
        return read(value)
    except (TypeError, ValueError):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise JournalDamaged(
            f"the journal holds {where} = {shown}, which the bot never writes: "
            f"{_CHANGED_OR_DAMAGED}"
        ) from None


class JournalInUse(JournalError):
    """Another process (a running bot) holds the journal's lock; `pid` is its, as it wrote."""

    def __init__(self, message: str, pid: str) -> None:
        super().__init__(message)
        self.pid = pid


def _check_place(path: Path) -> None:
    """JournalError, saying what to do, when the journal's directory or file at `path` is
    something else (a file where the state directory goes, a FIFO or a device as the
    journal), which SQLite would only answer with an OS error or "disk I/O error"."""
    state_dir = path.parent
    try:
        misplaced = state_dir.exists() and not state_dir.is_dir()
        odd_file = not misplaced and path.exists() and not path.is_file()
    except PermissionError:  # a state directory of another user's (the bot's, mode 0700)
        raise JournalError(
            f"cannot open journal {path.absolute()}: permission denied on its state "
            f"directory {state_dir.absolute()} (or a directory above it): run the command as "
            "the bot's user, or give this user access (check owner and mode)"
        ) from None
    if misplaced:
        raise JournalError(
            f"state_dir {state_dir.absolute()} is a file, not a directory: move it away, or "
            "choose another state_dir (--config or BOT_STATE_DIR)"
        )
    if odd_file:
        raise JournalError(
            f"cannot open journal {path.absolute()}: it is not a regular file (a directory, a "
            "FIFO or a device): move it away, or choose another state_dir (--config or "
            "BOT_STATE_DIR)"
        )


def _create(path: Path) -> None:
    """A new journal at `path`, made whole under another name and renamed into place: a
    crash while it is made leaves no journal, never an empty file, which the next start
    could not tell from a journal its disk truncated (and refuses). Refused beside the WAL
    of a journal whose file is gone. Its writers hold the journal's lock (`lock_journal`), so
    no two make one at once."""
    _, wal, shm = journal_files(path)
    if file_size(wal):
        # SQLite would apply it to the new journal: whichever database wrote a WAL, it is
        # taken for the one beside it (the last journal's orders, half of its pages).
        raise JournalError(
            f"no journal at {path.absolute()}, but its WAL {wal.name} is there: the last "
            "changes of a journal whose file was deleted or lost. Restore the journal from a "
            f"backup; or, to start a new one, delete it (and {shm.name})"
        )
    partial = path.with_name(path.name + ".new")
    for leftover in journal_files(partial):  # of a start that crashed making one
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(partial, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    finally:
        db.close()  # the last connection: its WAL is copied in and removed
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


#: SQLite's wal-index (the -shm file): two copies of its header, then the checkpoint's
#: progress (https://sqlite.org/walformat.html, "The WAL-Index Format"), in this machine's
#: byte order. Of a header: the version, whether it is set up, the page size, the last
#: committed frame and the WAL's salts; then how many frames are copied into the database.
_SHM_HEADER: Final = struct.Struct("=I4x4xBxHI4x8x8s8x")
_SHM_HEADER_BYTES: Final = 48
_SHM_VERSION: Final = 3007000
_WAL_HEADER_BYTES: Final = 32
_WAL_FRAME_HEADER_BYTES: Final = 24


def _shm_state(shm: Path) -> tuple[int, int, int, bytes] | None:
    """(page size, last committed frame, frames copied into the database, salts) as the
    -shm file at `shm` records them; None without one, or while its two header copies
    differ (a writer is between them) or it is not set up."""
    try:
        with shm.open("rb") as stream:
            head = stream.read(2 * _SHM_HEADER_BYTES + 4)
    except OSError:
        return None
    if len(head) < 2 * _SHM_HEADER_BYTES + 4:
        return None
    first, second = head[:_SHM_HEADER_BYTES], head[_SHM_HEADER_BYTES : 2 * _SHM_HEADER_BYTES]
    if first != second:
        return None
    version, is_init, page_size, max_frame, salts = _SHM_HEADER.unpack(first)
    if version != _SHM_VERSION or is_init != 1:
        return None
    (backfilled,) = struct.unpack_from("=I", head, 2 * _SHM_HEADER_BYTES)
    return (65536 if page_size == 1 else page_size), max_frame, backfilled, salts


def _check_wal_whole(path: Path) -> None:
    """JournalError when the WAL beside the journal at `path` lost commits its -shm says
    it held: deleted, cut short or replaced after a crash, SQLite would open the journal
    as of its last checkpoint, without the last signals and orders (each one promised: a
    202, an order sent), and the bot would trade on without them, never reconciling them.
    Read twice around the WAL's size, so that a bot writing now is never taken for it."""
    _, wal, shm = journal_files(path)
    if not shm.exists():
        return  # the last connection closed it: every commit is in the journal file
    for _ in range(10):
        before = _shm_state(shm)
        try:
            with wal.open("rb") as stream:
                wal_head = stream.read(_WAL_HEADER_BYTES)
                wal_size = os.fstat(stream.fileno()).st_size
        except FileNotFoundError:
            wal_head, wal_size = b"", 0
        except OSError:
            return  # what SQLite itself will then say about it
        if before is None or before != _shm_state(shm):
            continue  # none, or moving: a writer is at work
        page_size, max_frame, backfilled, salts = before
        committed = _WAL_HEADER_BYTES + max_frame * (_WAL_FRAME_HEADER_BYTES + page_size)
        if max_frame <= backfilled:
            # Every committed frame is in the journal file itself. Whole, or gone, the WAL
            # can do no harm; cut short, it would: SQLite would take the older pages its
            # first frames hold over the newer ones copied into the file (the journal back
            # in time, its indexes no longer matching its rows).
            if 0 < wal_size < committed and wal_head[16:24] == salts:
                raise JournalError(
                    f"journal {path.absolute()}: its WAL {wal.name} is cut short ({wal_size} "
                    f"of {committed} bytes), and SQLite would open the journal with older "
                    f"pages from it. Every committed change is in {path.name} itself: delete "
                    f"{wal.name} and {shm.name} to open it whole"
                )
            return
        if not wal_size:
            what = f"its WAL {wal.name} is missing or empty"
        elif wal_size < committed:
            what = f"its WAL {wal.name} is cut short ({wal_size} of {committed} bytes)"
        elif wal_head[16:24] != salts:
            what = f"its WAL {wal.name} is another one than the one it wrote"
        else:
            return
        raise JournalError(
            f"journal {path.absolute()} lost its last changes: {what}, though {shm.name} "
            f"records {max_frame - backfilled} committed pages not yet in the journal file "
            "(the last signals and orders). Restore the journal with its WAL from a backup; "
            "or, to go on without them, check the account at the venue for orders the journal "
            f"no longer knows, then delete {shm.name}"
        )


def _file_id(path: Path) -> tuple[int, int]:
    """Which file `path` names now (its device and inode)."""
    found = path.stat()
    return found.st_dev, found.st_ino


def journal_files(path: Path) -> tuple[Path, ...]:
    """The database file at `path` and SQLite's files beside it."""
    return (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


class JournalLock:
    """A journal's lock (`lock_journal`), held until `close`."""

    def __init__(self, handle: TextIO, directory: int) -> None:
        """`directory`: the state directory's locked descriptor (-1: its file system locks
        no directory; the file's lock alone)."""
        self._handle = handle
        self._directory: int | None = directory if directory >= 0 else None

    def close(self) -> None:
        self._handle.close()
        if self._directory is not None:
            os.close(self._directory)
            self._directory = None


def lock_journal(path: Path) -> JournalLock:
    """The journal at `path` for this process alone, until the returned lock is closed.

    Two bots on one journal would each take the other's signals and orders for its own. The
    lock is an flock of `<journal>.lock`, which the kernel drops with its process: a bot killed
    with kill -9 leaves no stale lock. The file names the holder (PID, then command line) for
    the refusal. The state directory is flocked too: a lock file removed while its bot runs
    (taken for a stale one) would otherwise let a second bot lock a new file of that name."""
    lock_path = path.with_name(f"{path.name}.lock")
    _check_place(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a+", encoding="utf-8")  # not "w": the holder's name stays
    except OSError as exc:
        raise JournalError(f"cannot lock journal {path.absolute()}: {exc}") from None
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        handle.close()
        raise JournalError(f"cannot lock journal {path.absolute()}: {exc}") from None
    locked_file = False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked_file = True
        try:
            fcntl.flock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise
        except OSError:  # a file system that locks no directory (NFS: EBADF): the file's lock
            os.close(directory)
            directory = -1
    except BlockingIOError:
        handle.seek(0)
        pid, _, command = handle.read().strip().partition("\n")
        handle.close()
        os.close(directory)
        if locked_file:  # its bot holds the directory, but the file is another one
            raise JournalInUse(
                f"journal {path.absolute()} is in use by another bot, whose lock file "
                f"{lock_path.name} was removed (`fuser -v {shlex.quote(str(path))}` names it); "
                "stop it first (`kill <PID>` finishes what is in flight and exits) or give "
                "this one another state_dir",
                "?",
            ) from None
        raise JournalInUse(
            f"journal {path.absolute()} is in use by another bot: PID {pid or '?'} "
            f"({command or 'starting'}); stop it first (`kill {pid or '<PID>'}` finishes what is "
            "in flight and exits) or give this one another state_dir",
            pid or "?",
        ) from None
    try:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n{shlex.join(sys.argv)}\n")
        handle.flush()
    except OSError as exc:  # a full disk: the journal could not be written either
        with suppress(OSError):  # the name it could not take is still in the buffer
            handle.close()
        if directory >= 0:
            os.close(directory)
        raise JournalError(
            f"cannot lock journal {path.absolute()}: cannot write {lock_path.name}: "
            f"{exc.strerror or exc}"
        ) from None
    return JournalLock(handle, directory)


#: A decision's outcome as the trace and the metrics name it; `{d}` is the table's prefix.
_OUTCOME: Final = (
    "CASE WHEN {d}rule = 'strategy' THEN 'declined' WHEN {d}rule = 'STRATEGY_FAILED'"
    " THEN 'failed' WHEN {d}approved = 1 THEN 'approved' ELSE 'rejected' END"
)


@dataclass(frozen=True)
class Tallies:
    """Counts for the metrics: decisions by (strategy, outcome, rule) and orders by
    (strategy, status, the venue's last retCode); "" where a rule or retCode is absent."""

    decisions: tuple[tuple[str, str, str, int], ...] = ()
    orders: tuple[tuple[str, str, str, int], ...] = ()


@dataclass(frozen=True)
class DecisionRow:
    """One journaled verdict of a strategy on a signal (`leg` None: on the whole signal);
    `rule` is `strategy` for the strategy's own decline, None for an approval."""

    source: str
    signal_id: str
    strategy: str
    leg: int | None
    approved: bool
    rule: str | None


@dataclass(frozen=True)
class OrderRecord:
    """An order as the journal knows it, with its signal's `ts` (for staleness)."""

    request: OrderRequest
    status: OrderStatus
    order_id: str | None
    filled_qty: Decimal
    avg_price: Decimal | None
    reason: str
    ret_code: int | None
    attempts: int
    signal_ts: datetime | None
    updated_at: datetime
    #: The quantity the venue holds as its last report said (another client may have amended
    #: the order, or the venue trimmed a reduce-only one); the requested one until a report.
    venue_qty: Decimal
    #: A limit order's price as the venue's last report said (another client may have
    #: amended it); the requested one until a report; None for a market order.
    venue_price: Decimal | None
    #: What the bot last said of terms another client amended the order to (`unlike_request`'s
    #: words); None if nothing, or the order was amended back.
    amendment_said: str | None = None
    #: Whether the bot asked the venue to cancel the order (a cancel of it is the bot's own).
    cancel_requested: bool = False


class OrderOwner(NamedTuple):
    """The strategy that placed an order, what the order trades, and the venue's id of it
    once known: a fill under its orderLinkId in another symbol or side, or of another
    orderId, is another client's (see `not_ours`)."""

    strategy: str
    symbol: str
    side: Side
    order_id: str | None = None


@dataclass(frozen=True)
class WaitingExit:
    """A position's take profit or stop loss the venue last said it holds, untriggered."""

    order_id: str
    key_name: str
    symbol: str
    kind: str  # TakeProfit | StopLoss
    side: Side  # the side that closes the position
    trigger_price: Decimal


@dataclass(frozen=True)
class TraceRow:
    """One line of `bot orders`: a signal, one decision about it, and its order if any."""

    source: str
    signal_id: str
    symbol: str
    received_at: str
    strategy: str | None
    decision: str  # pending | declined | failed | approved | rejected | exit
    reason: str
    order_link_id: str | None
    side: str | None
    qty: str | None  # as the venue holds it (another client may have amended it)
    status: str | None
    avg_price: str | None
    filled_qty: str | None
    leg: int | None = None  # the decision's leg of the signal (None: a decline)
    rule: str | None = None  # the risk gate's rule that rejected it (STOP_LOSS, ...)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def exit_row(
        self,
        kind: str,
        trigger_price: str | None,
        side: str,
        qty: str,
        status: str,
        avg_price: str | None,
        filled_qty: str,
    ) -> TraceRow:
        """A stop-loss / take-profit exit of this row's order, shown under it."""
        trigger = f" at {trigger_price}" if trigger_price else ""
        return TraceRow(
            source=self.source,
            signal_id=self.signal_id,
            symbol=self.symbol,
            received_at=self.received_at,
            strategy=self.strategy,
            decision="exit",
            reason=f"{kind}{trigger}",
            order_link_id=None,
            side=side,
            qty=qty,
            status=status,
            avg_price=avg_price,
            filled_qty=filled_qty,
            leg=self.leg,
        )


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for a lock another connection holds."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def failure_message(
    path: Path, exc: sqlite3.Error, doing: str, then: str = ", then try again"
) -> str:
    """One line for a SQLite error met while `doing` ("open", "read") the journal: damage,
    with what to do about it, only when SQLite says the file itself is damaged
    (SQLITE_CORRUPT); otherwise what failed (a read-only mount, a full disk, ...), for which
    restoring a backup would be the wrong advice. `then` ends the advice for a failure that
    passes (a lock, a full disk): what the bot does by itself meanwhile, for one."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_CORRUPT:
        return damage_message(path, str(exc))
    if code == sqlite3.SQLITE_NOTADB:
        return (
            f"cannot {doing} journal {path}: {exc}: the file there is not an SQLite database "
            "(another file at the journal's path, or one encrypted or overwritten); move it "
            "away and restore the journal from a backup, or choose another state_dir "
            "(--config or BOT_STATE_DIR)"
        )
    if "locked" in str(exc):
        return (
            f"cannot {doing} journal {path}: {exc}: another program holds it (an sqlite3 "
            f"shell, a backup tool): close it{then}"
        )
    if "readonly" in str(exc):
        return (
            f"cannot {doing} journal {path}: {exc}: the bot's user must be able to write the "
            "journal, its -wal and -shm files and their directory (check owner and mode, or "
            "a read-only mount)"
        )
    if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL):  # most often a full disk
        return (
            f"cannot {doing} journal {path}: {exc}: is its disk full, or failing? free some "
            f"space where it is (`df -h {shlex.quote(str(path.parent))}`), or check the "
            f"disk{then}"
        )
    if code == sqlite3.SQLITE_CANTOPEN:  # most often a journal of another user's (mode 0600)
        return (
            f"cannot {doing} journal {path}: {exc}: the command's user must be able to read "
            "and write the journal, its -wal and -shm files and their directory: run it as "
            "the bot's user, or check owner and mode"
        )
    return f"cannot {doing} journal {path}: {exc}"


def damage_message(path: Path, problem: str) -> str:
    """What to tell of a journal SQLite finds damaged, and what to do about it (one line)."""
    where = shlex.quote(str(path))
    return (
        f"journal {path} is damaged ({' '.join(problem.split())}): restore it from a backup, "
        f"or recover what it holds with SQLite's command-line tool (`sqlite3 {where} .recover "
        "| sqlite3 recovered.sqlite3`) and use that file"
    )


class Journal:
    """One SQLite journal file. Methods are synchronous; use `call()` from the event loop."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", read_only: bool = False) -> None:
        """`synchronous`: SQLite's synchronous mode of the durable commits (the promises);
        every other commit is NORMAL."""
        if synchronous not in ("NORMAL", "FULL"):
            raise JournalError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = path
        self._durable_sync = synchronous == "FULL"
        self._durable_open = False  # the open transaction is a durable one
        self._lock = threading.RLock()  # write_all holds it around writes that take it too
        self._writer_lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        # By `defer`, for the journal's thread: each write, with the order it reports on.
        self._deferred: list[tuple[Callable[[], object], str | None]] = []
        # How many batches of deferred writes were handed over: a window's timer hands over
        # only the batch it was started for, not a later one (its own was handed over early).
        self._deferred_handed = 0
        # The orders (by orderLinkId) `defer` was told a waiting or unfinished write reports
        # on, with how many such writes: see `open_orders_written`.
        self._unwritten_orders: Counter[str] = Counter()
        # The unfinished orders as committed, kept in memory for readers on the event loop
        # (and for telling a repeated report): a transaction's orders take the state its
        # writes returned once it commits.
        self._unfinished: dict[str, OrderRecord] = {}
        self._unfinished_lock = threading.Lock()
        # The orders the open transaction wrote: each one's row as its latest write returned
        # it (`_ORDER_FIELDS`), and its request when that write was its insert.
        self._written_orders: dict[str, tuple[Sequence[Any], OrderRequest | None]] = {}
        self._checkpoints: tuple[threading.Event, threading.Thread] | None = None
        # The writes `write_all` lost to the journal's medium, said once a minute per failure.
        self._write_failures = RepeatedNotes(limit=8)
        # A second connection for slow reads that need not queue behind the writes (WAL
        # readers see the last commit and never block the writer): see `tallies`.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        _check_place(path)
        _check_wal_whole(path)
        try:
            if read_only and not path.exists():
                raise JournalError(
                    f"no journal at {path.absolute()}: has the bot run with this state_dir? "
                    "(--config or BOT_STATE_DIR select another)"
                )
            if path.exists() and path.stat().st_size == 0:
                raise JournalError(
                    f"journal {path.absolute()} is empty (0 bytes): a journal the bot wrote "
                    "never is, so it may have been truncated. If this state_dir is new, delete "
                    "the file; otherwise restore the journal from a backup"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            if not read_only and not path.exists():
                _create(path)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._file_id = _file_id(path)
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._refuse_a_foreign_database()  # before WAL mode, which would change it
            self._db.execute("PRAGMA journal_mode=WAL")
            # What every commit gets; a durable one raises it to `synchronous` for its commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_intact()  # before anything is written to it, or read from it
            # An older journal is brought up to date even when opened to read (e.g. by
            # `bot orders` after an upgrade): every migration is one forward transaction.
            self._migrate()
            if read_only:
                self._db.execute("PRAGMA query_only=1")
            else:
                # A write that changes nothing: a journal the bot cannot write (a read-only
                # file or mount) is refused now, not at the first fill it would lose.
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._unfinished = {
                    record.request.order_link_id: record for record in self.unfinished_orders()
                }
        except sqlite3.Error as exc:
            raise JournalError(failure_message(path, exc, "open")) from None

    def _check_intact(self) -> None:
        """Refuse a damaged journal before the bot trades on it: SQLite's quick check reads
        every page (about 50 ms for 50 MB in the page cache; a journal read cold from disk
        takes its disk's time), where a damaged one would otherwise stop the bot at the
        first query that reaches it, or hide orders from reconciliation."""
        problem = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise JournalError(damage_message(self.path, problem))

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema {version}, newer than this bot ({SCHEMA_VERSION})"
                "; upgrade the bot or point state_dir elsewhere"
            )
        if version < 0:
            raise JournalError(
                f"journal {self.path} has schema {version}, which no version of this bot wrote"
                "; restore it from a backup or point state_dir elsewhere"
            )
        if version == SCHEMA_VERSION:
            return
        steps = (
            [(SCHEMA_VERSION, _SCHEMA)]
            if version == 0
            else [
                (target, _MIGRATIONS[target]) for target in range(version + 1, SCHEMA_VERSION + 1)
            ]
        )
        for target, script in steps:
            try:
                self._db.executescript(f"BEGIN; {script} PRAGMA user_version={target}; COMMIT;")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                if not any(mark in str(exc) for mark in _SCHEMA_MISMATCH):
                    raise  # locked, full, failing: the journal is fine, its medium is not
                raise JournalError(
                    f"journal {self.path} could not be brought from schema {version} to "
                    f"{target} ({exc}): the version it records does not match its tables; "
                    "restore it from a backup or point state_dir elsewhere"
                ) from None
            if version:
                logger.info("journal {path} migrated to schema {v}", path=self.path, v=target)

    def _refuse_a_foreign_database(self) -> None:
        """Schema version 0 is a database the bot has yet to lay out: its journals record
        their version from their first commit. One holding tables already is another
        program's: nothing is written into it (WAL mode, the schema), even by a reading
        command."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] != 0:
            return
        tables = [
            name
            for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        if tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise JournalError(
                f"journal {self.path} is not a journal of this bot: an SQLite database holding "
                f"other tables ({shown}) and no journal schema version; move it away, or choose "
                "another state_dir (--config or BOT_STATE_DIR)"
            )

    def checkpoint_in_background(self, interval_s: float = 1.0) -> None:
        """Copy the WAL into the database from a thread of its own, every `interval_s`,
        instead of inside whichever commit fills the WAL past SQLite's threshold: that
        commit would wait for the copy and its syncs (milliseconds), and with it the signal
        or order it journals. A passive checkpoint never blocks the writer. Past
        `_WAL_RESTART_BYTES` the writer is made to start the WAL over (`_let_wal_restart`);
        a WAL a long read let grow past `_WAL_SIZE_LIMIT` anyway is cut back to nothing by a
        TRUNCATE checkpoint once no reader holds it (the writer waits for that one; SQLite's
        journal_size_limit, which cuts the WAL at every restart instead, cost a signal's 202
        up to 50 ms each time)."""
        if self._checkpoints is not None:
            return
        stop = threading.Event()

        def run() -> None:
            connection = sqlite3.connect(self.path, isolation_level=None)
            failures = RepeatedNotes()  # a full disk fails each one while it lasts
            try:
                connection.execute("PRAGMA busy_timeout=5000")
                _, wal, _ = journal_files(self.path)
                frame_bytes = connection.execute("PRAGMA page_size").fetchone()[0] + _FRAME_HEADER
                restarting: Future[None] | None = None
                last_frames = 0
                while not stop.wait(interval_s):
                    try:
                        # The frames written since the WAL last started over, not its file's
                        # size: the file stays as large as it once grew, and would call for
                        # a restart (a hop to the writer's thread) every interval; and only
                        # while frames are written (an idle WAL needs none).
                        _, frames, _ = connection.execute(
                            "PRAGMA wal_checkpoint(PASSIVE)"
                        ).fetchone()
                        written, last_frames = frames != last_frames, frames
                        if restarting is not None and restarting.done():
                            if failed := restarting.exception():
                                logger.warning("journal WAL restart failed: {e}", e=str(failed))
                            restarting = None
                        if (
                            written
                            and frames * frame_bytes > _WAL_RESTART_BYTES
                            and restarting is None
                        ):
                            restarting = self.submit(self._let_wal_restart)
                        grown = file_size(wal)
                        if grown > _WAL_SIZE_LIMIT:
                            # Only if no reader holds the WAL now: never a wait the writer,
                            # and a signal's 202, would share (tried again each interval).
                            connection.execute("PRAGMA busy_timeout=0")
                            busy, *_ = connection.execute(
                                "PRAGMA wal_checkpoint(TRUNCATE)"
                            ).fetchone()
                            connection.execute("PRAGMA busy_timeout=5000")
                            if not busy:
                                logger.info(
                                    "journal WAL cut back from {mb:.0f} MB", mb=grown / 2**20
                                )
                    except sqlite3.Error as exc:  # the next one tries again
                        more = failures.say("checkpoint")
                        if more is not None:
                            again = f"; the bot tries again each {interval_s:g} s"
                            logger.warning(
                                "{problem}{more}",
                                problem=failure_message(self.path, exc, "checkpoint", again),
                                more=more,
                            )
                    else:
                        held = failures.over("checkpoint")
                        if held is not None:
                            logger.info(
                                "journal checkpoints work again ({n} more failed since the "
                                "last said)",
                                n=held,
                            )
            finally:
                connection.close()

        with self._lock:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        thread = threading.Thread(target=run, name="journal-checkpoint", daemon=True)
        thread.start()
        self._checkpoints = (stop, thread)

    def _let_wal_restart(self) -> None:
        """A checkpoint on the writer's own connection, between its transactions: its next
        one then finds the WAL copied up to its end and starts it over from the beginning.
        Under a steady stream of writes the background checkpoint never catches up with
        the writer at that moment, and the WAL grew without end (520 MB in one benchmark)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        self.write_deferred()
        if self._checkpoints is not None:  # first: it may queue work on the journal's thread
            stop, thread = self._checkpoints
            stop.set()
            thread.join(10)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
        self._db.close()  # the last connection to close checkpoints what is left

    async def call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a journal method on the journal's own thread without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(method, *args, **kwargs))

    async def call_ahead(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`call`, queued ahead of the deferred writes still waiting for their window (they
        keep it): for a write none of them bears on and someone waits for, such as a new
        signal's (its sender waits) or a new order's (its send waits). Every earlier `submit`
        still runs first."""
        return await asyncio.wrap_future(self._queue(lambda: method(*args, **kwargs)))

    async def call_within(
        self, wait_s: float, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`call_ahead`, done within about `wait_s` or not at all: TimeoutError if the
        journal's thread had not begun it by then (busy with other writes, each waiting for
        another program's lock): it never runs. Begun at once, it waits for a lock as every
        write does (`_BUSY_TIMEOUT_MS`, no longer than the pipeline's wait for a signal);
        begun late, only for what is left of `wait_s` (its failure is SQLite's "database is
        locked"). So its caller has the outcome about `wait_s` after it asked, whatever is
        queued: a signal's sender is answered `503` in time, and only for a signal that was
        not stored."""
        deadline = time.monotonic() + wait_s

        def bounded() -> T:
            left_ms = max(int((deadline - time.monotonic()) * 1000), 0)
            if left_ms >= _BUSY_TIMEOUT_MS - _PROMPTLY_MS:  # as nearly always: no statement more
                return method(*args, **kwargs)
            with self._lock:  # begun late: its lock wait shortened to what is left
                self._db.execute(f"PRAGMA busy_timeout={min(left_ms, _BUSY_TIMEOUT_MS)}")
                try:
                    return method(*args, **kwargs)
                finally:
                    self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

        work = self._queue(bounded)
        waiting = asyncio.wrap_future(work)
        await asyncio.wait({waiting}, timeout=wait_s)
        if not waiting.done() and work.cancel():  # not begun: never will be
            raise TimeoutError(f"the journal did not take it within {wait_s:g} s")
        return await waiting  # done, or begun: ends about the deadline

    def submit(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue a journal method on the journal's own thread and return at once.

        Work runs in the order it was queued (a `call_ahead` passes only the deferred writes
        still waiting), so a later `call` sees every earlier `submit` and every earlier
        `defer`.
        """
        return self._queue(lambda: method(*args, **kwargs), after_deferred=True)

    def submit_order_event(self, event: OrderEvent) -> Future[bool]:
        """`submit(record_order_event, event)`, queued ahead of the deferred writes still
        waiting for their window unless one of them reports on the same order (then after
        them, as `submit`): an order's send attempt, which no other order's report bears on,
        does not cut short the window in which the reports of earlier orders gather (their
        late position and wallet messages too) to share one commit."""
        return self._queue(
            lambda: self.record_order_event(event), after_reports_on=event.order_link_id
        )

    def _queue(
        self,
        work: Callable[[], T],
        *,
        after_deferred: bool = False,
        after_reports_on: str | None = None,
    ) -> Future[T]:
        """Queue `work` on the journal's thread: after the deferred writes still waiting if
        `after_deferred`, or if one of them reports on the order `after_reports_on`."""
        # Its own lock: the database lock is held by the journal thread while it commits, and
        # the event loop must never wait for a commit just to queue work.
        with self._writer_lock:
            writer = self._writer_pool()
            if after_deferred or after_reports_on in self._unwritten_orders:
                self._queue_deferred(writer)
            return writer.submit(work)

    def defer(self, write: Callable[[], object], *, order_link_id: str | None = None) -> None:
        """Queue `write` (a call of one journal method) for the journal's thread within
        `DEFER_WINDOW_S`, or sooner if another journal call is queued first (so it still
        runs before every later call). A failure is logged. Call from the event loop.

        What is deferred together is written in one transaction (`write_all`): the reports
        of one fill (the order's acknowledgement, then the stream's order, execution,
        position and wallet) arrive within a few milliseconds, as a handful of stream
        messages; held for the window, they cost one thread hop and one commit, not one each
        (with their signal's "processed" mark, and now and then the reports of the signal
        before or after).
        Only writes the venue or the pipeline would tell again after a crash are deferred
        (never a promise), so the window adds nothing a restart does not bring back.

        `order_link_id`: the order `write` reports on (its state), if any; until it is
        written, `open_orders_written` writes it first.
        """
        with self._writer_lock:
            self._deferred.append((write, order_link_id))
            first = len(self._deferred) == 1
            batch = self._deferred_handed
            if order_link_id is not None:
                self._unwritten_orders[order_link_id] += 1
        if first:
            asyncio.get_running_loop().call_later(DEFER_WINDOW_S, self._window_over, batch)

    def write_deferred(self) -> None:
        """Hand the deferred writes to the journal's thread now, not at the window's end:
        for when someone waits for them (a replay's driver) or the journal closes."""
        with self._writer_lock:
            if self._deferred:
                self._queue_deferred(self._writer_pool())

    def _window_over(self, batch: int) -> None:
        """The end of batch number `batch`'s window: hand it over, unless it already was
        (another call passed it on early): the batch waiting now has a window of its own."""
        with self._writer_lock:
            if self._deferred and self._deferred_handed == batch:
                self._queue_deferred(self._writer_pool())

    async def open_orders_written(
        self, key_name: str, strategy: str, symbol: str
    ) -> list[OrderRecord]:
        """`open_orders_of`, once every report deferred about those orders is written: an
        order the stream has said is filled is not shown as open. With none waiting (the
        usual case) at once, with no thread hop; else after one `call`."""
        records = self.open_orders_of(key_name, strategy, symbol)
        with self._writer_lock:
            waiting = any(r.request.order_link_id in self._unwritten_orders for r in records)
        if not waiting:
            return records
        await self.call(lambda: None)
        return self.open_orders_of(key_name, strategy, symbol)

    def _queue_deferred(self, writer: ThreadPoolExecutor) -> None:
        """Hand the deferred writes to the journal's thread (the writer lock held), as one
        piece of work: one hand-over and one transaction for all."""
        deferred, self._deferred = self._deferred, []
        if deferred:
            self._deferred_handed += 1
            writer.submit(self._write_deferred_batch, deferred)

    def _write_deferred_batch(
        self, deferred: Sequence[tuple[Callable[[], object], str | None]]
    ) -> None:
        """On the journal's thread: a batch of deferred writes; then its orders' reports are
        no longer waiting (written, or failed and logged)."""
        orders = [link for _, link in deferred if link is not None]
        try:
            self.write_all([write for write, _ in deferred], "a deferred journal write failed")
        finally:
            with self._writer_lock:
                self._unwritten_orders.subtract(orders)
                for link in set(orders):
                    if self._unwritten_orders[link] <= 0:
                        del self._unwritten_orders[link]

    def _writer_pool(self) -> ThreadPoolExecutor:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        return self._writer

    def flush(self) -> None:
        """Block until every queued journal write is done (tests, tools; not on the loop)."""
        self.submit(lambda: None).result()

    def write_all(
        self,
        writes: Sequence[Callable[[], object]],
        failure: str = "journal write failed and was rolled back",
    ) -> None:
        """Run journal writes (each a call of one journal method) in one transaction, one
        commit for all. Should one fail, that transaction is rolled back whole and each write
        runs again in its own, so only the failing one is lost (logged as `failure`) and the
        rest stay. A durable write (a promise) cannot share a commit: it fails the batch, then
        gets its own. A batch another program's lock refused (past SQLite's busy wait) is lost
        whole, said in one line: each write alone would wait as long again; what it held, a
        restart brings back, as after a crash.

        (No savepoint per write: two more statements for each, on every fill, to serve a case
        that does not happen in normal running.)"""
        with self._lock:
            if self._db.in_transaction:  # within another batch, whose failure redoes each
                for write in writes:
                    write()
                return
        try:
            with self._transaction():
                for write in writes:
                    write()
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                # Another program's lock held past SQLite's busy wait (5 s): each write alone
                # would wait as long, holding every later journal call (a signal's, whose
                # sender waits) for (n + 1) x 5 s.
                self._writes_lost(failure, exc, len(writes))
                return
            failed: Exception = exc
        except Exception as exc:
            failed = exc
        else:
            self._writes_work(failure)
            return
        # Each write that fails alone is told (lost); the others are not lost at all.
        logger.debug(
            "{n} journal writes failed together ({error}); writing each alone",
            n=len(writes),
            error=failed,
        )
        # Each a journal method: its own transaction, durable if it is a promise.
        self._write_each(writes, failure)

    def _writes_work(self, failure: str) -> None:
        """A write `write_all` ran committed: say so if its failures were said."""
        held = self._write_failures.over(failure)
        if held is not None:
            logger.info("journal writes work again ({n} more failed since the last said)", n=held)

    def _writes_lost(self, failure: str, exc: sqlite3.OperationalError, n: int) -> None:
        """`n` writes the journal's medium failed (a full disk, a lock another program
        holds): said at once, then once a minute while it lasts (`_writes_work` says when it
        is over)."""
        more = self._write_failures.say(failure)
        for _ in range(n - 1):
            self._write_failures.say(failure)  # the rest: among the next line's held back
        if more is not None:
            lost = "; what is lost meanwhile, a restart brings back (as after a crash)"
            logger.error(
                "{failure}{count}: {problem}{more}",
                failure=failure,
                count=f" ({n} writes)" if n > 1 else "",
                problem=failure_message(self.path, exc, "write", lost),
                more=more,
            )

    def _write_each(self, writes: Sequence[Callable[[], object]], failure: str) -> None:
        """Run each write in turn; one that fails is logged (`failure`) and the next still
        runs. The journal's medium failing (a full disk, a lock another program holds) fails
        every write while it lasts: said at once, then once a minute, and when it is over."""
        for write in writes:
            try:
                write()
            except sqlite3.OperationalError as exc:
                self._writes_lost(failure, exc, 1)
            except JournalDamaged as exc:  # a row the bot cannot read: one line, which row
                logger.error("{failure}: {problem}", failure=failure, problem=str(exc))
            except Exception:
                logger.exception(failure)
            else:
                self._writes_work(failure)

    @contextmanager
    def _transaction(
        self, *, durable: bool = False, one_statement: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """One transaction; a `durable` one waits for the disk at its commit (see the
        module's notes), for which SQLite must be told before it begins.

        With `one_statement` (the body runs exactly one), SQLite commits that statement on
        its own, without BEGIN and COMMIT: every statement is a moment this thread hands the
        GIL to a busy event loop and waits to get it back, so two fewer of them shorten a
        write the sender of a signal is waiting for."""
        with self._lock:
            if self._db.in_transaction:  # within write_all: its transaction covers this write
                if durable and not self._durable_open:
                    raise JournalError("a durable write cannot join a batch of other writes")
                yield self._db
                return
            sync = durable and self._durable_sync
            if sync:
                self._db.execute("PRAGMA synchronous=FULL")
            self._durable_open = durable
            try:
                if one_statement:
                    yield self._db  # a failed statement is rolled back by SQLite itself
                else:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._written_orders.clear()
                        if self._db.in_transaction:  # a failed COMMIT can leave it open
                            self._db.execute("ROLLBACK")
                        raise
            finally:
                self._durable_open = False
                if sync:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            if self._written_orders:
                self._publish_unfinished()

    # signals -------------------------------------------------------------------------------

    def record_signal(self, signal: Signal) -> bool:
        """Journal a signal durably; False when (source, id) was already seen (a duplicate)."""
        with self._transaction(durable=True, one_statement=True) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO signals"
                " (source, signal_id, symbol, ts, received_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    signal.source,
                    signal.id,
                    signal.symbol,
                    signal.ts.isoformat(),
                    signal.received_at.isoformat(),
                    # The sender's own fields are kept (`raw`): a secret among them (a
                    # query_token source's token sent in the body too) is not.
                    scrub(signal.model_dump_json()),
                ),
            )
            return cursor.rowcount == 1

    def signal(self, source: str, signal_id: str) -> Signal | None:
        """A journaled signal, or None if the journal does not hold it (or cannot read it)."""
        with self._lock:
            row = self._db.execute(
                "SELECT payload FROM signals WHERE source = ? AND signal_id = ?",
                (source, signal_id),
            ).fetchone()
        if row is None:
            return None
        try:
            return Signal.model_validate_json(row[0])
        except ValueError:
            return None

    def mark_processed(self, signal: Signal) -> None:
        with self._transaction(one_statement=True) as db:
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

    def record_rejection(self, source: str, kind: str, reason: str, remote: str) -> None:
        """A request or message refused before it became a signal: which source, what kind
        (`unauthorized`, `invalid`, ...), why, and from where; never a secret or signature."""
        with self._transaction(one_statement=True) as db:
            cursor = db.execute(
                "INSERT INTO rejections (source, kind, reason, remote, at) VALUES (?, ?, ?, ?, ?)",
                (source, kind, scrub(reason), remote, utc_now().isoformat()),
            )
        row_id = cursor.lastrowid or 0
        if row_id % _REJECTIONS_PRUNED_EVERY == 0:  # hostile senders must not fill the disk
            with self._transaction(one_statement=True) as db:
                db.execute("DELETE FROM rejections WHERE id <= ?", (row_id - REJECTIONS_KEPT,))

    def rejections(self, limit: int = 100) -> list[dict[str, str]]:
        """The latest refused requests and messages (the journal keeps the last
        `REJECTIONS_KEPT`), newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, kind, reason, remote, at FROM rejections ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        names = ("source", "kind", "reason", "remote", "at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    # decisions -----------------------------------------------------------------------------

    def record_decline(self, signal: Signal, decline: Decline, rule: str = "strategy") -> None:
        """No order for `signal` from `decline.strategy`: the strategy's own choice (rule
        "strategy") or a risk rule that refused the whole signal."""
        with self._transaction(one_statement=True) as db:
            db.execute(
                "INSERT INTO decisions (source, signal_id, strategy, leg, approved, rule, reason,"
                " decided_at) VALUES (?, ?, ?, NULL, 0, ?, ?, ?)",
                (
                    signal.source,
                    signal.id,
                    decline.strategy,
                    rule,
                    scrub(decline.reason),
                    utc_now().isoformat(),
                ),
            )

    def record_decisions(
        self, decisions: Sequence[RiskDecision], orders: Sequence[OrderRequest]
    ) -> set[str]:
        """Journal a strategy's verdicts on one signal and the orders of the approved ones
        (Pending, not sent), all in one transaction.

        Returns the orderLinkIds newly journaled; one missing from it already existed: the
        same signal run again, whose order must be resumed, never created twice.
        """
        with self._transaction(durable=True) as db:
            for decision in decisions:
                self._insert_decision(db, decision)
            return {order.order_link_id for order in orders if self._insert_order(db, order)}

    def decisions(self) -> list[DecisionRow]:
        """Every verdict journaled (the strategies' declines and failures, the gate's
        approvals and rejections), oldest first, with the rule that decided it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, signal_id, strategy, leg, approved, rule FROM decisions ORDER BY id"
            ).fetchall()
        return [
            DecisionRow(source, signal_id, strategy, leg, bool(approved), rule)
            for source, signal_id, strategy, leg, approved, rule in rows
        ]

    @staticmethod
    def _insert_decision(db: sqlite3.Connection, decision: RiskDecision) -> None:
        intent = decision.intent
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
                scrub(decision.reason),
                intent.model_dump_json(),
                decision.decided_at.isoformat(),
            ),
        )

    # orders --------------------------------------------------------------------------------

    def record_order(self, request: OrderRequest) -> bool:
        """Journal an order as Pending before it is sent; False if its orderLinkId exists."""
        with self._transaction(durable=True) as db:
            return self._insert_order(db, request)

    def _insert_order(self, db: sqlite3.Connection, request: OrderRequest) -> bool:
        now = utc_now().isoformat()
        inserted = db.execute(
            "INSERT OR IGNORE INTO orders (order_link_id, source, signal_id, strategy, leg,"  # noqa: S608
            " key_name, symbol, side, order_type, qty, price, request, status, created_at,"
            f" updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {_RETURNING}",
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
        ).fetchall()
        if not inserted:
            return False
        self._written_orders[request.order_link_id] = (inserted[0], request)
        return True

    def record_order_event(self, event: OrderEvent, *, missing_ok: bool = False) -> bool:
        """Apply one event to its order if it moves the order forward; False if refused.

        The check and the write happen in one transaction, so writers (the executor, the
        reconciliation loop, the account stream) can never interleave a backward move. A
        Submitting event counts one more send attempt. With `missing_ok`, an event for an
        order the journal does not hold (not ours) is ignored rather than an error.

        The order's current state is read without a statement when it is known: from the
        row the open transaction's own write of the order returned, else from the in-memory
        unfinished orders, which are exactly what is committed. So the venue's answer and
        the account stream, which both report a new order, cost whichever comes second
        nothing at all, in one transaction or in two.

        A venue report of another client's order under our orderLinkId (`not_ours`: another
        symbol, side, type or orderId) is refused, and logged while our order is unfinished.
        """
        with self._lock:
            committed: _OrderState | None = None
            known = self.unfinished(event.order_link_id)
            written = self._written_orders.get(event.order_link_id)
            problem = None
            if written is not None:  # as the open transaction left it
                row = written[0]
                committed = _order_state(row[2], row[4], row[11], row[12])
                request = written[1] or (
                    known.request if known is not None else OrderRequest.model_validate_json(row[1])
                )
                problem = not_ours(event, request, row[3])
            elif known is not None:
                committed = (known.status, known.filled_qty, known.venue_qty, known.venue_price)
                problem = not_ours(event, known.request, known.order_id)
            if problem is not None:
                _log_foreign(event, problem)
                return False
            if committed is not None and _nothing_new(committed, event):
                return False
            return self._apply_order_event(event, committed, missing_ok=missing_ok)

    def foreign_report(self, event: OrderEvent) -> str | None:
        """What shows that a venue report is of another client's order under the orderLinkId
        of one of our unfinished orders (see `not_ours`); None if nothing does, or if the
        order is finished or not ours (`record_order_event` checks those). From memory, as
        committed: safe to call from the event loop."""
        known = self.unfinished(event.order_link_id)
        return None if known is None else not_ours(event, known.request, known.order_id)

    def unfinished(self, order_link_id: str) -> OrderRecord | None:
        """One unfinished order as committed, from memory (`committed_unfinished`)."""
        with self._unfinished_lock:
            return self._unfinished.get(order_link_id)

    def venue_order_id(self, order_link_id: str) -> str | None:
        """The venue's orderId of one of our unfinished orders, as committed; None if it has
        none yet, or the order is finished (from memory, as `unfinished`)."""
        known = self.unfinished(order_link_id)
        return known.order_id if known is not None else None

    def _apply_order_event(
        self,
        event: OrderEvent,
        committed: _OrderState | None,
        *,
        missing_ok: bool,
    ) -> bool:
        """`committed`: the order's `_OrderState` as the table holds it, if known. A report
        that changes only the venue's quantity or limit price (an amendment by another
        client) is journaled as it is, with no transition to check."""
        with self._transaction() as db:
            if committed is None:
                row = db.execute(
                    "SELECT status, filled_qty, COALESCE(venue_qty, qty),"
                    " COALESCE(venue_price, price), request, order_id"
                    " FROM orders WHERE order_link_id = ?",
                    (event.order_link_id,),
                ).fetchone()
                if row is None:
                    if missing_ok:
                        return False
                    raise JournalError(f"no journaled order {event.order_link_id}")
                committed = _order_state(*row[:4])
                problem = not_ours(event, OrderRequest.model_validate_json(row[4]), row[5])
                if problem is not None:
                    if not committed[0].is_terminal:  # else nothing would move it anyway
                        _log_foreign(event, problem)
                    return False
            if _nothing_new(committed, event):
                return False
            current, filled = committed[:2]
            try:
                if not _same_progress(committed, event):  # else only the venue's terms moved
                    check_transition(
                        current, event.status, filled_before=filled, filled_after=event.filled_qty
                    )
            except TransitionRefused as refused:
                logger.debug(
                    "order {id}: event refused: {why}", id=event.order_link_id, why=str(refused)
                )
                return False
            db.execute(
                "INSERT INTO order_events (order_link_id, status, event, ts, ret_code, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event.order_link_id,
                    event.status.value,
                    scrub(event.model_dump_json()),
                    event.ts.isoformat(),
                    event.ret_code,
                    scrub(event.reason),
                ),
            )
            # A venue state (New...Filled, or the venue's own rejection) is the venue's word.
            from_venue = event.status in _VENUE_STATES and event.order_id is not None
            (updated,) = db.execute(
                "UPDATE orders SET status = ?, order_id = COALESCE(?, order_id), filled_qty = ?,"  # noqa: S608
                " avg_price = COALESCE(?, avg_price),"
                # What the venue says replaces our own failure notes; our notes accumulate.
                " reason = CASE WHEN ? THEN ? ELSE COALESCE(NULLIF(?, ''), reason) END,"
                " ret_code = CASE WHEN ? THEN ? ELSE COALESCE(?, ret_code) END,"
                " venue_qty = COALESCE(?, venue_qty), venue_price = COALESCE(?, venue_price),"
                f" updated_at = ?, attempts = attempts + ? WHERE order_link_id = ? {_RETURNING}",
                (
                    event.status.value,
                    event.order_id,
                    str(max(event.filled_qty, filled)),
                    None if event.avg_price is None else str(event.avg_price),
                    from_venue,
                    scrub(event.reason),
                    scrub(event.reason),
                    from_venue,
                    event.ret_code,
                    event.ret_code,
                    _text(event.venue_qty),
                    _text(_venue_limit(event)),
                    event.ts.isoformat(),
                    int(event.status is OrderStatus.SUBMITTING),
                    event.order_link_id,
                ),
            ).fetchall()
            self._order_updated(event.order_link_id, updated)
            return True

    def record_cancel_requested(self, order_link_id: str) -> None:
        """Keep that the bot is about to ask the venue to cancel the order, before it asks:
        the cancel a next start finds is then known to be the bot's own."""
        self._update_order(
            order_link_id,
            "cancel_requested_at = COALESCE(cancel_requested_at, ?)",
            utc_now().isoformat(),
        )

    def record_amendment_said(self, order_link_id: str, said: str | None) -> None:
        """Keep what the bot said of the order amended by another client (None: amended
        back), so that neither a later report nor a restart says it again."""
        self._update_order(order_link_id, "amendment_said = ?", said)

    def _update_order(self, order_link_id: str, assignment: str, value: str | None) -> None:
        """Set one column of the order's row (`assignment`, with one placeholder) and publish
        the row to the in-memory unfinished orders once committed."""
        with self._transaction() as db:
            rows = db.execute(
                f"UPDATE orders SET {assignment} WHERE order_link_id = ? {_RETURNING}",  # noqa: S608 - our own fields
                (value, order_link_id),
            ).fetchall()
            if rows:
                self._order_updated(order_link_id, rows[0])

    def _order_updated(self, order_link_id: str, row: Sequence[Any]) -> None:
        """An update's RETURNING row of the order, published to the in-memory unfinished
        orders once the transaction commits (with the request an insert in it brought)."""
        earlier = self._written_orders.get(order_link_id)
        self._written_orders[order_link_id] = (row, earlier and earlier[1])

    def order(self, order_link_id: str) -> OrderRecord | None:
        rows = self._orders("WHERE orders.order_link_id = ?", (order_link_id,))
        return rows[0] if rows else None

    def signal_orders(self, source: str, signal_id: str, strategy: str) -> list[OrderRecord]:
        """Every order a strategy placed for one signal, oldest first."""
        return self._orders(
            "WHERE orders.source = ? AND orders.signal_id = ? AND orders.strategy = ?",
            (source, signal_id, strategy),
        )

    def unfinished_orders(self, key_name: str | None = None) -> list[OrderRecord]:
        """Every order not yet terminal (of one key, or of all), oldest first."""
        marks = ", ".join("?" * len(_NON_TERMINAL))
        if key_name is None:
            return self._orders(f"WHERE orders.status IN ({marks})", _NON_TERMINAL)
        return self._orders(
            f"WHERE orders.status IN ({marks}) AND orders.key_name = ?",
            (*_NON_TERMINAL, key_name),
        )

    def booked_qty_of(self, order_link_ids: Sequence[str]) -> dict[str, Decimal]:
        """How much of each of these orders the journaled fills hold: what the books, which
        replay every fill, hold of it (orders without a fill are left out)."""
        booked: dict[str, Decimal] = {}
        with self._lock:
            for start in range(0, len(order_link_ids), _IDS_PER_QUERY):
                chunk = order_link_ids[start : start + _IDS_PER_QUERY]
                marks = ", ".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT order_link_id, qty FROM executions WHERE order_link_id IN ({marks})",  # noqa: S608 - placeholders only
                    chunk,
                )
                for link_id, qty in rows:
                    booked[link_id] = booked.get(link_id, Decimal(0)) + Decimal(qty)
        return booked

    def committed_unfinished(self, key_name: str | None = None) -> list[OrderRecord]:
        """`unfinished_orders` as committed, from memory: safe to call from the event loop
        (no thread hop, no I/O). Oldest first: in the order they were first committed."""
        with self._unfinished_lock:
            records = list(self._unfinished.values())
        if key_name is None:
            return records
        return [record for record in records if record.request.key_name == key_name]

    def open_orders_of(self, key_name: str, strategy: str, symbol: str) -> list[OrderRecord]:
        """A strategy's unfinished orders in one symbol on one key, oldest first, as
        committed; from memory, as `committed_unfinished`."""
        return [
            record
            for record in self.committed_unfinished(key_name)
            if (record.request.strategy, record.request.symbol) == (strategy, symbol)
        ]

    def _publish_unfinished(self) -> None:
        """After a commit: the in-memory unfinished orders take the committed state of the
        orders the transaction wrote, as their writes returned it, with no read of the rows
        again (a terminal one leaves them)."""
        written, self._written_orders = self._written_orders, {}
        with self._unfinished_lock:
            for link_id, (row, request) in written.items():
                if OrderStatus(row[2]).is_terminal:
                    self._unfinished.pop(link_id, None)
                    continue
                known = self._unfinished.get(link_id)
                self._unfinished[link_id] = _order_record(
                    row, known.request if known is not None else request
                )

    def venue_said_it_exists(self, order_link_id: str) -> bool:
        """Whether the venue answered a send of the order 110072 (it holds an order under
        that orderLinkId) after a send of ours may have reached it: journaled as such."""
        with self._lock:
            found = self._db.execute(
                "SELECT 1 FROM order_events WHERE order_link_id = ? AND ret_code = ? LIMIT 1",
                (order_link_id, DUPLICATE_ORDER_CODE),
            ).fetchone()
        return found is not None

    def record_used_command(
        self, digest: bytes, until: float, now: float, *, redelivered: bool = False
    ) -> bool:
        """Remember, before it is acted on, a signed command used until `until` (unix
        seconds), forgetting those expired by `now`; False if it was remembered already (a
        replay). With `redelivered` (a broker delivers again what it never saw acknowledged),
        one remembered but never carried out (a crash cut it short) is taken again."""
        with self._transaction(durable=True) as db:
            db.execute("DELETE FROM used_commands WHERE until <= ?", (now,))
            inserted = db.execute(
                "INSERT OR IGNORE INTO used_commands (digest, until, acted) VALUES (?, ?, 0)",
                (digest, until),
            ).rowcount
            if inserted:
                return True
            (acted,) = db.execute(
                "SELECT acted FROM used_commands WHERE digest = ?", (digest,)
            ).fetchone()
        return redelivered and not acted

    def record_command_acted(self, digest: bytes) -> None:
        """A remembered command was carried out: never again while its signature holds."""
        with self._transaction(one_statement=True) as db:
            db.execute("UPDATE used_commands SET acted = 1 WHERE digest = ?", (digest,))

    def used_commands(self, now: float, *, carried_out: bool = False) -> dict[bytes, float]:
        """The signed commands used whose signatures are still accepted at `now` (with
        `carried_out`, only those carried out)."""
        acted = " AND acted = 1" if carried_out else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT digest, until FROM used_commands WHERE until > ?{acted}",  # noqa: S608 - our own text
                (now,),
            ).fetchall()
        return {bytes(digest): until for digest, until in rows}

    def record_stop_move(
        self,
        move: StopMove,
        key_name: str,
        outcome: str,
        reason: str,
        fill_exec_id: str | None = None,
    ) -> None:
        """Journal a strategy's stop-loss move and its outcome (`moved`, `rejected`,
        `failed`), with why, and the fill whose hook asked for it, if one did."""
        with self._transaction(one_statement=True) as db:
            db.execute(
                "INSERT INTO stop_moves (source, signal_id, strategy, key_name, symbol,"
                " stop_loss, outcome, reason, at, fill_exec_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    move.signal_source,
                    move.signal_id,
                    move.strategy,
                    key_name,
                    move.symbol,
                    str(move.stop_loss),
                    outcome,
                    scrub(reason),
                    utc_now().isoformat(),
                    fill_exec_id,
                ),
            )

    def levels_set(self, key_name: str, symbol: str, kind: str) -> set[Decimal]:
        """The stop-loss (`kind` StopLoss) or take-profit levels the bot set on the key's
        `symbol` position lately: those its latest orders there carried and, for a stop
        loss, its latest stop moves, whatever their outcome."""
        field = "$.stop_loss" if kind == "StopLoss" else "$.take_profit"
        with self._lock:
            rows = self._db.execute(
                "SELECT json_extract(request, ?) FROM orders WHERE key_name = ? AND symbol = ?"
                " ORDER BY updated_at DESC LIMIT ?",
                (field, key_name, symbol, _LEVELS_LOOKED_AT),
            ).fetchall()
            if kind == "StopLoss":
                # Every move asked for: one journaled as failed may still have reached the
                # venue (its answer lost), and one cut short by a crash is not journaled
                # either way; the level is the bot's all the same.
                rows += self._db.execute(
                    "SELECT stop_loss FROM stop_moves WHERE key_name = ? AND symbol = ?"
                    " ORDER BY id DESC LIMIT ?",
                    (key_name, symbol, _LEVELS_LOOKED_AT),
                ).fetchall()
        return {Decimal(str(level)) for (level,) in rows if level is not None}

    def carried_out(
        self, source: str, signal_id: str, strategy: str, fill_exec_id: str
    ) -> tuple[set[int], bool]:
        """What a strategy already did for a signal: the legs it has decisions about (placed
        or refused), and whether the hook of the fill `fill_exec_id` moved the stop. A hook
        run again after a crash leaves them out, so they are neither decided nor counted nor
        sent twice."""
        with self._lock:
            legs = self._db.execute(
                "SELECT DISTINCT leg FROM decisions WHERE source = ? AND signal_id = ?"
                " AND strategy = ? AND leg IS NOT NULL",
                (source, signal_id, strategy),
            ).fetchall()
            moved = self._db.execute(
                "SELECT 1 FROM stop_moves WHERE fill_exec_id = ? AND outcome = 'moved' LIMIT 1",
                (fill_exec_id,),
            ).fetchone()
        return {leg for (leg,) in legs}, moved is not None

    def stop_moves(self, limit: int = 100) -> list[dict[str, str]]:
        """The latest stop-loss moves, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT strategy, key_name, symbol, stop_loss, outcome, reason, at"
                " FROM stop_moves ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        names = ("strategy", "key_name", "symbol", "stop_loss", "outcome", "reason", "at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def order_times_since(self, since: datetime) -> list[tuple[str, datetime]]:
        """(strategy, created_at) of every order journaled from `since` on, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT strategy, created_at FROM orders WHERE created_at >= ?"
                " ORDER BY created_at, rowid",
                (since.isoformat(),),
            ).fetchall()
        return [(strategy, stored_time(created, "orders.created_at")) for strategy, created in rows]

    def decided_strategies(self, source: str, signal_id: str) -> set[str]:
        """Strategies that already have a decision about this signal (from an earlier run)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT strategy FROM decisions WHERE source = ? AND signal_id = ?",
                (source, signal_id),
            ).fetchall()
        return {row[0] for row in rows}

    def _orders(self, where: str, params: tuple[object, ...]) -> list[OrderRecord]:
        # `where` is one of this module's literals; every value is a bound parameter.
        with self._lock:
            rows = self._db.execute(
                f"{_ORDER_QUERY} {where} ORDER BY orders.created_at, orders.rowid", params
            ).fetchall()
        return [_order_record(row) for row in rows]

    def record_exits(self, exit_orders: Sequence[ExitOrder]) -> list[bool]:
        """`record_exit` for each of `exit_orders` in turn, in one transaction (a scan's
        list, most of which moved nothing since the last): which moved forward."""
        with self._transaction():
            return [self.record_exit(exit_order) for exit_order in exit_orders]

    def record_exit(self, exit_order: ExitOrder) -> bool:
        """Journal a stop-loss / take-profit order the venue created, or its progress.

        It is attributed to the latest filled order of its key and symbol whose stop loss or
        take profit is the trigger price (else the latest filled opening order). Bybit keeps a
        position's TP/SL as a waiting order from the moment it is set: one that moves or is
        resized with the position while it waits is progress too. False when nothing moved
        forward.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, filled_qty, trigger_price, qty, parent_order_link_id, strategy"
                " FROM exit_orders WHERE order_id = ?",
                (exit_order.order_id,),
            ).fetchone()
            if row is None:
                parent, strategy = self._exit_parent(db, exit_order)
                if exit_order.status is OrderStatus.NEW:  # one waiting order per level
                    db.execute(
                        "UPDATE exit_orders SET status = 'Cancelled' WHERE status = 'New'"
                        " AND key_name = ? AND symbol = ? AND kind = ?",
                        (exit_order.key_name, exit_order.symbol, exit_order.kind),
                    )
            else:  # attributed when first seen: the order that opened the position
                order_id = exit_order.order_id
                before = _read_row("exit_orders", order_id, OrderStatus, row[0])
                filled_before = _read_row("exit_orders", order_id, Decimal, row[1])
                parent, strategy = row[4], row[5]
                moved = (row[2], row[3]) != (_text(exit_order.trigger_price), str(exit_order.qty))
                waiting = before is exit_order.status is OrderStatus.NEW
                try:
                    check_transition(
                        before,
                        exit_order.status,
                        filled_before=filled_before,
                        filled_after=exit_order.filled_qty,
                    )
                except TransitionRefused:
                    if not (waiting and moved):
                        return False
            db.execute(
                "INSERT OR REPLACE INTO exit_orders (order_id, key_name, symbol, side, kind,"
                " trigger_price, qty, status, filled_qty, avg_price, parent_order_link_id,"
                " strategy, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    exit_order.order_id,
                    exit_order.key_name,
                    exit_order.symbol,
                    exit_order.side.value,
                    exit_order.kind,
                    _text(exit_order.trigger_price),
                    str(exit_order.qty),
                    exit_order.status.value,
                    str(exit_order.filled_qty),
                    _text(exit_order.avg_price),
                    parent,
                    strategy,
                    exit_order.ts.isoformat(),
                ),
            )
            return True

    @staticmethod
    def _exit_parent(
        db: sqlite3.Connection, exit_order: ExitOrder
    ) -> tuple[str | None, str | None]:
        """The order whose stop loss or take profit `exit_order` executed, and its strategy."""
        candidates = db.execute(
            "SELECT order_link_id, strategy, request FROM orders WHERE key_name = ?"
            " AND symbol = ? AND status IN ('Filled', 'PartiallyFilled')"
            " AND updated_at <= ? ORDER BY updated_at DESC LIMIT 50",
            (exit_order.key_name, exit_order.symbol, exit_order.ts.isoformat()),
        )  # read row by row: the newest usually matches, and the rest are never fetched
        fallback: tuple[str | None, str | None] = (None, None)
        for link_id, strategy, request_json in candidates:
            request = OrderRequest.model_validate_json(request_json)
            if request.reduce_only:
                continue
            if exit_order.trigger_price in (request.stop_loss, request.take_profit):
                return link_id, strategy
            if fallback == (None, None):
                fallback = (link_id, strategy)
        return fallback

    def protected_symbols(self, key_name: str) -> list[str]:
        """Symbols where `key_name` holds filled orders with a stop loss or take profit, whose
        exits the venue may execute on its own."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT symbol FROM orders WHERE key_name = ? AND {_PROTECTED}",  # noqa: S608 - our own condition
                (key_name,),
            ).fetchall()
        return sorted(row[0] for row in rows)

    # account -------------------------------------------------------------------------------

    def record_execution(
        self,
        execution: Execution,
        allocation: Mapping[str, Decimal],
        hook: FillBooking | None = None,
    ) -> bool:
        """Journal a fill once (by execId) with how its quantity is split among strategies;
        False if it was already journaled (a stream message and a REST page may both bring
        it). With `hook` (the books once this fill was in them), the fill's `on_fill` hook is
        due until `fill_hook_done`."""
        with self._transaction(one_statement=hook is None) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO executions (exec_id, key_name, order_id, order_link_id,"
                " symbol, side, qty, price, fee, is_maker, stop_order_type, exec_time,"
                " allocation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    execution.exec_id,
                    execution.key_name,
                    execution.order_id,
                    execution.order_link_id,
                    execution.symbol,
                    execution.side.value,
                    str(execution.qty),
                    str(execution.price),
                    str(execution.fee),
                    int(execution.is_maker),
                    execution.stop_order_type,
                    execution.ts.isoformat(),
                    json.dumps({name: str(qty) for name, qty in allocation.items()}),
                ),
            )
            new = cursor.rowcount == 1
            if new and hook is not None:
                db.execute(
                    "INSERT INTO fill_hooks_due (exec_id, booked, position) VALUES (?, ?, ?)",
                    (
                        execution.exec_id,
                        str(hook.booked),
                        None if hook.position is None else str(hook.position),
                    ),
                )
            return new

    def fill_hook_done(self, exec_id: str) -> None:
        """The `on_fill` hook of the fill `exec_id` has finished (or has nothing to run)."""
        with self._transaction(one_statement=True) as db:
            db.execute("DELETE FROM fill_hooks_due WHERE exec_id = ?", (exec_id,))

    def due_fill_hooks(self) -> list[tuple[Execution, FillBooking]]:
        """The fills whose `on_fill` hook a previous run did not finish, oldest first, each
        with its books once it was in them."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_EXECUTION_COLUMNS}, due.booked, due.position"  # noqa: S608 - our own column list
                " FROM fill_hooks_due AS due"
                " JOIN executions USING (exec_id) ORDER BY exec_time, executions.rowid"
            ).fetchall()
        return [
            (
                _execution(row[:-3]),
                FillBooking(Decimal(row[-2]), None if row[-1] is None else Decimal(row[-1])),
            )
            for row in rows
        ]

    def has_execution(self, exec_id: str) -> bool:
        """Whether the fill `exec_id` is journaled."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM executions WHERE exec_id = ?", (exec_id,))
            found = row.fetchone()
        return found is not None

    def executions(self) -> Iterator[tuple[Execution, dict[str, Decimal]]]:
        """Every journaled fill with its allocation to strategies, oldest first, read a page
        at a time as it is iterated: a start replays every fill, and a long run's are too
        many to hold at once (about 2 KB a fill as objects: 280 MB for 100,000). The lock is
        held only while a page is read, so a page may see fills journaled since the last."""
        after: tuple[str, int] = ("", 0)  # (exec_time, rowid) of the last fill read
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {_EXECUTION_COLUMNS}, rowid FROM executions"  # noqa: S608 - our own column list
                    " WHERE (exec_time, rowid) > (?, ?) ORDER BY exec_time, rowid LIMIT ?",
                    (*after, _EXECUTIONS_PER_PAGE),
                ).fetchall()
            for row in rows:
                yield _execution(row[:-2]), _allocation(row[-2], row[0])
            if len(rows) < _EXECUTIONS_PER_PAGE:
                return
            after = (rows[-1][_EXEC_TIME_COLUMN], rows[-1][-1])

    def latest_executions(self, span: timedelta) -> list[Execution]:
        """Each key's fills of the `span` to its newest one, oldest first: the ones a start
        remembers as seen (a stream or REST page may bring them again)."""
        fills: list[Execution] = []
        with self._lock:
            newest = self._db.execute(
                "SELECT key_name, MAX(exec_time) FROM executions GROUP BY key_name"
            ).fetchall()
            for key_name, exec_time in newest:
                since = (stored_time(exec_time, "executions.exec_time") - span).isoformat()
                rows = self._db.execute(
                    f"SELECT {_EXECUTION_COLUMNS} FROM executions"  # noqa: S608 - our own column list
                    " WHERE key_name = ? AND exec_time >= ? ORDER BY exec_time, rowid",
                    (key_name, since),
                )
                fills.extend(_execution(row[:-1]) for row in rows)
        return sorted(fills, key=lambda fill: fill.ts)

    def last_execution_time(self, key_name: str) -> datetime | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(exec_time) FROM executions WHERE key_name = ?", (key_name,)
            ).fetchone()
        return None if row[0] is None else stored_time(row[0], "executions.exec_time")

    def order_owner(self, order_link_id: str) -> OrderOwner | None:
        """Whose order this is, and what it trades; None if the journal does not hold it."""
        with self._lock:
            row = self._db.execute(
                "SELECT strategy, symbol, side, order_id FROM orders WHERE order_link_id = ?",
                (order_link_id,),
            ).fetchone()
        return None if row is None else OrderOwner(str(row[0]), str(row[1]), Side(row[2]), row[3])

    def record_position(self, update: PositionUpdate) -> bool:
        """Keep the venue's latest view of a key's position; an older one changes nothing."""
        return self._record_snapshot(
            "positions", ("key_name", "symbol"), (update.key_name, update.symbol), update
        )

    def record_wallet(self, update: WalletUpdate) -> bool:
        """Keep the venue's latest view of a key's balance; an older one changes nothing."""
        return self._record_snapshot("wallets", ("key_name",), (update.key_name,), update)

    def _record_snapshot(
        self,
        table: str,
        key_columns: tuple[str, ...],
        key: tuple[str, ...],
        update: PositionUpdate | WalletUpdate | ClosedPnl,
    ) -> bool:
        columns = ", ".join((*key_columns, "snapshot", "updated_at"))
        marks = ", ".join("?" * (len(key_columns) + 2))
        conflict = ", ".join(key_columns)
        with self._transaction(one_statement=True) as db:
            cursor = db.execute(
                f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608 - our names
                f" ON CONFLICT ({conflict}) DO UPDATE SET snapshot = excluded.snapshot,"
                " updated_at = excluded.updated_at WHERE excluded.updated_at >= updated_at",
                (*key, update.model_dump_json(), update.ts.isoformat()),
            )
            return cursor.rowcount == 1

    def record_closed_pnl(self, record: ClosedPnl) -> bool:
        """Keep the venue's latest record of what a closing order realized."""
        return self._record_snapshot(
            "closed_pnl", ("order_id", "key_name"), (record.order_id, record.key_name), record
        )

    def closed_pnl(self) -> list[ClosedPnl]:
        with self._lock:
            rows = self._db.execute("SELECT snapshot FROM closed_pnl").fetchall()
        return [ClosedPnl.model_validate_json(row[0]) for row in rows]

    def last_closed_pnl_time(self, key_name: str) -> datetime | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(updated_at) FROM closed_pnl WHERE key_name = ?", (key_name,)
            ).fetchone()
        return None if row[0] is None else stored_time(row[0], "closed_pnl.updated_at")

    def positions(self) -> list[PositionUpdate]:
        with self._lock:
            rows = self._db.execute("SELECT key_name, symbol, snapshot FROM positions").fetchall()
        return [
            _read_row("positions", f"{key} {symbol}", PositionUpdate.model_validate_json, snapshot)
            for key, symbol, snapshot in rows
        ]

    def waiting_exits(self) -> list[WaitingExit]:
        """The take-profit / stop-loss orders the venue last said it holds, waiting, oldest
        first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT order_id, key_name, symbol, kind, side, trigger_price FROM exit_orders"
                " WHERE status = 'New' AND trigger_price IS NOT NULL ORDER BY updated_at, rowid"
            ).fetchall()
        return [
            _read_row(
                "exit_orders",
                order_id,
                lambda row: WaitingExit(
                    row[0], row[1], row[2], row[3], Side(row[4]), Decimal(row[5])
                ),
                (order_id, key, symbol, kind, side, trigger),
            )
            for order_id, key, symbol, kind, side, trigger in rows
        ]

    def end_exits(self, order_ids: Collection[str]) -> None:
        """Mark waiting exits Cancelled: the venue that held them is gone (the in-process
        simulator, restarted) and nothing holds them now."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE exit_orders SET status = 'Cancelled' WHERE status = 'New' AND order_id = ?",
                [(order_id,) for order_id in order_ids],
            )

    def wallets(self) -> list[WalletUpdate]:
        with self._lock:
            rows = self._db.execute("SELECT key_name, snapshot FROM wallets").fetchall()
        return [
            _read_row("wallets", key, WalletUpdate.model_validate_json, snapshot)
            for key, snapshot in rows
        ]

    # trading states -------------------------------------------------------------------------

    def identity_if_made(self) -> str | None:
        """`identity`, if a bot has made it (a read-only journal cannot)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
        return None if row is None else str(row[0])

    def environment(self) -> str | None:
        """The environment whose bot first ran on this journal (None: none has yet)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'environment'").fetchone()
        return None if row is None else str(row[0])

    def claim_environment(self, environment: str) -> None:
        """Bind the journal to `environment` on the first run that claims it (a journal of
        an earlier schema too); JournalError if a bot of another environment wrote it: its
        signals would be acted on, and its orders looked up, on the wrong venue."""
        with self._transaction(durable=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'environment'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('environment', ?)", (environment,)
                )
        if row is not None and row[0] != environment:
            raise JournalError(
                f"journal {self.path} belongs to a bot in {row[0]}, but this one runs in "
                f"{environment}: each environment keeps its own state_dir (--config or "
                "BOT_STATE_DIR choose it)"
            )

    def identity(self) -> str:
        """This journal's id (random, made by the first call): a command says the id of the
        journal its configuration names, and a bot keeping another refuses it."""
        with self._transaction(durable=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?)",
                (secrets.token_hex(8),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
        return str(row[0])

    def note_once(self, note: str) -> bool:
        """Remember `note` (a fact of the bot's own, such as a broker session it had); False
        if it was remembered already."""
        with self._transaction(durable=True, one_statement=True) as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (f"note:{note}", utc_now().isoformat()),
            )
        return cursor.rowcount == 1

    def record_trading_state(self, state: ScopeState, work: HaltWork = HaltWork.NONE) -> None:
        """Journal a scope's trading state (it survives a restart), and what a halt was asked
        to do beyond it (`work`, until `record_halt_work_done`)."""
        with self._transaction(durable=True, one_statement=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO trading_states"
                " (scope, state, reason, since, automatic, unfinished) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    state.scope,
                    state.state.value,
                    scrub(state.reason),
                    state.since.isoformat(),
                    int(state.automatic),
                    work.value,
                ),
            )

    def record_halt_work_done(self, state: ScopeState) -> None:
        """The halt `state` did all it was asked to (nothing if another state replaced it)."""
        with self._transaction(durable=True, one_statement=True) as db:
            db.execute(
                "UPDATE trading_states SET unfinished = '' WHERE scope = ? AND since = ?"
                " AND state = ?",
                (state.scope, state.since.isoformat(), TradingState.HALTED.value),
            )

    def unfinished_halt_work(self) -> dict[str, HaltWork]:
        """scope -> what the halt standing there was asked to do and has not done yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT scope, unfinished FROM trading_states WHERE state = ? AND unfinished != ''",
                (TradingState.HALTED.value,),
            ).fetchall()
        return {scope: _stored(work, "trading_states.unfinished", HaltWork) for scope, work in rows}

    def unfinished_orders_created_before(self, when: datetime) -> frozenset[str]:
        """The orderLinkIds of the orders not yet terminal that were journaled before `when`."""
        marks = ", ".join("?" * len(_NON_TERMINAL))
        with self._lock:
            rows = self._db.execute(
                f"SELECT order_link_id FROM orders WHERE status IN ({marks}) AND created_at < ?",  # noqa: S608 - marks only
                (*_NON_TERMINAL, when.isoformat()),
            ).fetchall()
        return frozenset(link_id for (link_id,) in rows)

    def trading_states(self) -> list[ScopeState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT scope, state, reason, since, automatic FROM trading_states ORDER BY scope"
            ).fetchall()
        return [
            ScopeState(
                scope,
                _stored(state, "trading_states.state", TradingState),
                reason,
                stored_time(since, "trading_states.since"),
                bool(automatic),
            )
            for scope, state, reason, since, automatic in rows
        ]

    def order_events(self, order_link_id: str) -> list[OrderEvent]:
        """An order's history, oldest first: every transition with time, retCode and reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM order_events WHERE order_link_id = ? ORDER BY id",
                (order_link_id,),
            ).fetchall()
        return [OrderEvent.model_validate_json(row[0]) for row in rows]

    # reading -------------------------------------------------------------------------------

    def trace(self, limit: int = 100, signal: tuple[str, str] | None = None) -> list[TraceRow]:
        """The latest signals (or the one `signal`, as (source, id)), newest first, each with
        its decisions and orders."""
        chosen = (
            "SELECT * FROM signals WHERE source = ? AND signal_id = ?"
            if signal is not None
            else "SELECT * FROM signals ORDER BY received_at DESC LIMIT ?"
        )
        # SQLite's integers are 64-bit: a larger limit (`bot orders --limit 10**20`) means all
        params: tuple[object, ...] = signal if signal is not None else (min(limit, _SQL_MAX_INT),)
        # `chosen` is one of the two literals above; every value is a bound parameter.
        query = f"""
            SELECT s.source, s.signal_id, s.symbol, s.received_at, d.strategy,
                   CASE WHEN d.id IS NULL THEN 'pending' ELSE {_OUTCOME.format(d="d.")} END,
                   COALESCE(NULLIF(o.reason, ''), d.reason, ''),
                   o.order_link_id, o.side, COALESCE(o.venue_qty, o.qty), o.status,
                   o.avg_price, o.filled_qty, d.leg,
                   CASE WHEN d.approved = 0 AND d.rule NOT IN ('strategy', 'STRATEGY_FAILED')
                        THEN d.rule END
            FROM ({chosen}) AS s
            LEFT JOIN decisions AS d ON d.source = s.source AND d.signal_id = s.signal_id
            LEFT JOIN orders AS o ON o.source = d.source AND o.signal_id = d.signal_id
                 AND o.strategy = d.strategy AND o.leg = d.leg AND d.approved = 1
            ORDER BY s.received_at DESC, d.id
        """  # noqa: S608
        with self._lock:
            rows = [TraceRow(*row) for row in self._db.execute(query, params).fetchall()]
            exits = self._exits_of([row.order_link_id for row in rows if row.order_link_id])
        traced: list[TraceRow] = []
        for row in rows:
            traced.append(row)
            traced.extend(
                row.exit_row(*exit_fields) for exit_fields in exits.get(row.order_link_id or "", [])
            )
        return traced

    def _exits_of(self, link_ids: list[str]) -> dict[str, list[tuple[str, ...]]]:
        """Exit orders by parent orderLinkId (lock held by the caller)."""
        found: dict[str, list[tuple[str, ...]]] = {}
        for start in range(0, len(link_ids), 500):
            chunk = link_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for parent, *fields in self._db.execute(
                "SELECT parent_order_link_id, kind, trigger_price, side, qty, status, avg_price,"  # noqa: S608
                f" filled_qty FROM exit_orders WHERE parent_order_link_id IN ({marks})"
                " ORDER BY updated_at",
                chunk,
            ):
                found.setdefault(parent, []).append(tuple(fields))
        return found

    def probe(self) -> None:
        """Prove the journal can be written right now: a real write (the schema version,
        written again as it is) in a transaction of its own. Raises what a write would, and
        JournalError when the file at the journal's path is no longer the one open (removed,
        moved or replaced under the running bot), where writes still succeed."""
        try:
            moved = _file_id(self.path) != self._file_id
        except FileNotFoundError:
            moved = True
        if moved:
            raise JournalError(
                f"journal {self.path} was removed or replaced while the bot runs: what it "
                "journals now goes to a file no longer at that path, lost when it stops; stop "
                "it and put its journal back"
            )
        with self._transaction() as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection of slow reads (scans of whole tables), as of the last commit: not
        the writer's, so signals are journaled meanwhile. Use it from any thread but the
        journal's (`asyncio.to_thread`)."""
        with self._reader_lock:
            if self._reader is None:  # never makes a file where the journal is gone
                self._reader = sqlite3.connect(
                    f"{self.path.absolute().as_uri()}?mode=rw", uri=True, check_same_thread=False
                )
                self._reader.execute("PRAGMA query_only=1")
            yield self._reader

    def tallies(self) -> Tallies:
        """Decisions and orders counted by what the metrics label them with, as of the last
        commit (`_reading`)."""
        with self._reading() as db:
            decisions = db.execute(
                f"SELECT strategy, {_OUTCOME.format(d='')}, COALESCE(rule, ''), COUNT(*)"  # noqa: S608
                " FROM decisions GROUP BY 1, 2, 3"
            ).fetchall()
            orders = db.execute(
                "SELECT strategy, status, COALESCE(CAST(ret_code AS TEXT), ''), COUNT(*)"
                " FROM orders GROUP BY 1, 2, 3"
            ).fetchall()
        return Tallies(tuple(map(tuple, decisions)), tuple(map(tuple, orders)))

    def execution_count(self) -> int:
        """How many fills are journaled: the one count a replay asks for after every record
        (`counts()` counts six tables)."""
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
        return count

    def counts(self) -> dict[str, int]:
        """Rows per table, for /healthz and tests, as of the last commit (`_reading`: a count
        scans its table, 7 ms per 100,000 rows here, which the writer must not wait for)."""
        with self._reading() as db:
            return {
                table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
                for table in (
                    "signals",
                    "decisions",
                    "orders",
                    "order_events",
                    "exit_orders",
                    "executions",
                )
            }


#: An order's fields with its signal's ts, as `_order_record` reads them. Written against the
#: table's own name, they serve a query and a write's RETURNING alike: a write that returns
#: them spares reading the row back after its commit.
_ORDER_FIELDS: Final = (
    "orders.order_link_id, orders.request, orders.status, orders.order_id, orders.filled_qty,"
    " orders.avg_price, orders.reason, orders.ret_code, orders.attempts,"
    " (SELECT s.ts FROM signals AS s WHERE s.source = orders.source"
    " AND s.signal_id = orders.signal_id), orders.updated_at,"
    " COALESCE(orders.venue_qty, orders.qty), COALESCE(orders.venue_price, orders.price),"
    " orders.amendment_said, orders.cancel_requested_at"
)
_ORDER_QUERY: Final = f"SELECT {_ORDER_FIELDS} FROM orders"  # noqa: S608 - our own fields
_RETURNING: Final = f"RETURNING {_ORDER_FIELDS}"


def _order_record(row: Sequence[Any], request: OrderRequest | None = None) -> OrderRecord:
    """An `_ORDER_FIELDS` row; `request` spares parsing the stored one when it is at hand."""
    _, stored, status, order_id, filled_qty, avg_price, reason, ret_code, attempts = row[:9]
    signal_ts, updated_at, venue_qty, venue_price, amendment_said, cancel_requested = row[9:]
    return OrderRecord(
        request=request or OrderRequest.model_validate_json(stored),
        status=OrderStatus(status),
        order_id=order_id,
        filled_qty=Decimal(filled_qty),
        avg_price=None if avg_price is None else Decimal(avg_price),
        reason=reason,
        ret_code=ret_code,
        attempts=attempts,
        signal_ts=None if signal_ts is None else stored_time(signal_ts, "signals.ts"),
        updated_at=stored_time(updated_at, "orders.updated_at"),
        venue_qty=Decimal(venue_qty),
        venue_price=None if venue_price is None else Decimal(venue_price),
        amendment_said=amendment_said,
        cancel_requested=cancel_requested is not None,
    )


#: An order's (status, filled qty, quantity the venue holds, limit price the venue holds) as
#: the journal holds them.
_OrderState = tuple[OrderStatus, Decimal, Decimal, Decimal | None]


def _order_state(status: str, filled: str, venue_qty: str, venue_price: str | None) -> _OrderState:
    """An `_OrderState` from the orders table's text columns."""
    price = None if venue_price is None else Decimal(venue_price)
    return OrderStatus(status), Decimal(filled), Decimal(venue_qty), price


def _venue_limit(event: OrderEvent) -> Decimal | None:
    """The limit price a venue report says the order has; None if it says none, or the order
    is not a limit order (a market order's price is the venue's protection price)."""
    return event.venue_price if event.order_type is OrderType.LIMIT else None


def _log_foreign(event: OrderEvent, problem: str) -> None:
    logger.warning(
        "a report under orderLinkId {id} is of another order ({problem}): not applied to ours",
        id=event.order_link_id,
        problem=problem,
    )


def _nothing_new(state: _OrderState, event: OrderEvent) -> bool:
    """Whether `event` repeats an order's state (a second report of it, or a look-up that
    found what the journal knows); a Submitting event never does (it counts an attempt)."""
    return (
        _same_progress(state, event)
        and event.venue_qty in (None, state[2])
        and _venue_limit(event) in (None, state[3])
    )


def _same_progress(state: _OrderState, event: OrderEvent) -> bool:
    """Whether `event` leaves an order's status and filled quantity as they are (what else it
    may change: the quantity and limit price the venue holds); a Submitting event never
    does."""
    status, filled = state[:2]
    return status is event.status is not OrderStatus.SUBMITTING and filled == event.filled_qty


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
