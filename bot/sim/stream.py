"""The simulator's WebSocket streams, as Bybit V5 serves them on stream.bybit.com:

- `/v5/private`: `auth` (HMAC-SHA256 of "GET/realtime" + expires), `ping`, `subscribe` and
  `unsubscribe` to `order`, `execution`, `position`, `wallet` (also `order.linear`,
  `execution.linear`, `position.linear`), and `execution.fast` (`.linear`: the trades, with
  fewer fields); every change of the account is pushed as it happens.
- `/v5/public/linear`, on every price change and trade:
  - `tickers.{symbol}`: a snapshot on subscribe, then a delta (the changed fields);
  - `orderbook.{depth}.{symbol}` (depth 1, 50, 200, 1000): a snapshot on subscribe, then a
    delta (levels changed or added; a removed level with size "0") with `u` one more each
    time; depth 1 sends snapshots only, as Bybit's does;
  - `kline.{interval}.{symbol}`: the open candle (`confirm` false); when a new one opens, the
    one that closed first, `confirm` true;
  - `priceLimit.{symbol}`: the order price limit, on subscribe and when a price change moves it;
  - and on every fill of any account, `publicTrade.{symbol}`;
  - and on every liquidation of any account, `allLiquidation.{symbol}`;
  and while the price stands still, every `_REFRESH_S` (Bybit pushes a market's data on a
  timer, not only on a price change): a ticker delta of what changed otherwise (a
  liquidation's open interest), the open candle when a new one opened (so the closed one
  comes, `confirm` true, at the boundary), and the depth-1 book again, as a
  snapshot, after `_LEVEL1_RESEND_MS` without a push ("if 3 seconds have elapsed without a
  change in the orderbook, a snapshot message will be pushed again").
- `/v5/trade`: the WebSocket trade API, `auth` and `ping` here, its orders answered by
  `bot.sim.trade_ws.TradeDesk`.

The exchange calls the hub (a `StreamSink`) with its lock held, from a request on the server's
event loop or from the engine thread; the hub only hands the data to the loop
(`call_soon_threadsafe`), where it is serialised once (a book's delta once for all the
connections last sent the same book) and queued per connection. Each
connection's queue is bounded (`stream_queue_max_messages`, `stream_queue_max_bytes`): a
client that falls further behind is cut off, as a real exchange does. Price moves are
conflated: while one symbol's delivery waits on the loop, a later move replaces it.
Connections are cut without a close frame (the client sees a lost connection) by
`POST /sim/streams/drop` and the `stream_drop` fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections import Counter, OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.types import Receive, Scope, Send

from bot.sim.errors import RetCode, clip_message
from bot.sim.exchange import SimExchange
from bot.sim.params import KLINE_INTERVALS
from bot.sim.records import SETTLE_COIN
from bot.sim.trade_ws import TradeDesk
from bot.sim.websocket import ABORT_EXTENSION

__all__ = [
    "MAX_REQUEST_BYTES",
    "PRIVATE_PATH",
    "PRIVATE_TOPICS",
    "PUBLIC_LINEAR_PATH",
    "StreamHub",
]

PRIVATE_PATH = "/v5/private"
PUBLIC_LINEAR_PATH = "/v5/public/linear"
#: Private topics by the name a client subscribes to -> the exchange's topic; None: a
#: category the simulator does not trade (spot, inverse, option), taken and never pushed.
PRIVATE_TOPICS: dict[str, str | None] = {
    "order": "order",
    "order.linear": "order",
    "execution": "execution",
    "execution.linear": "execution",
    "execution.fast": "execution.fast",
    "execution.fast.linear": "execution.fast",
    "position": "position",
    "position.linear": "position",
    "wallet": "wallet",
    **dict.fromkeys(
        (
            *(
                f"{stream}.{category}"
                for stream in ("order", "execution", "execution.fast")
                for category in ("spot", "inverse", "option")
            ),
            "position.inverse",
            "position.option",
            # Options' greeks and disconnected-cancel-all (DCP): the simulator has neither.
            "greeks",
            "dcp.future",
            "dcp.spot",
            "dcp.option",
        )
    ),
}
#: The all-in-one private topics that have categorised ones (`order` and `order.linear`).
_ALL_IN_ONE = ("execution.fast", "execution", "order", "position")
_CATEGORIES = frozenset({"spot", "linear", "inverse", "option"})
#: The topics whose messages carry no `id` (Bybit's `execution.fast`).
_FAST_EXECUTION_TOPICS = frozenset({"execution.fast", "execution.fast.linear"})
#: Public topics of a settle coin, not a symbol (`insurance.USDT`, `adlAlert.USDT`), and
#: the book with RPI orders (`orderbook.rpi.BTCUSDT`): taken, never pushed.
_COIN_TOPICS = frozenset({"insurance", "adlAlert"})
_RPI_BOOK = "orderbook.rpi"
_TICKER_PREFIX = "tickers."
_BOOK_DEPTHS = frozenset({1, 50, 200, 1000})  # Bybit's for linear
#: The longest command a client may send (Bybit's are a few hundred bytes; a batch of 20
#: orders a few KiB): the server refuses a longer WebSocket message (close 1009).
MAX_REQUEST_BYTES = 64 * 1024
_MAX_REQUEST_CHARS = MAX_REQUEST_BYTES
_REFRESH_S = 1.0
#: Bybit's bounds on `max_active_time`, and how often it looks for idle connections.
_MIN_ACTIVE_S = 30
_MAX_ACTIVE_S = 600
_IDLE_SCAN_S = 30.0
_LEVEL1_RESEND_MS = 3000
_MAX_TOPICS = 500
Channel = Literal["private", "linear", "trade"]


@dataclass(frozen=True, eq=False)
class _BookState:
    """A book as a push left it on a connection: its update id and both sides (price ->
    size). The connections sent one push hold one object, so that the next push builds their
    delta once (`_BookPush`)."""

    update_id: int
    bids: dict[str, str]
    asks: dict[str, str]

    def same_levels(self, other: _BookState) -> bool:
        return self is other or (self.bids, self.asks) == (other.bids, other.asks)


@dataclass(eq=False)
class _Connection:
    """One stream connection: who it is, what it listens to, what waits to be sent."""

    conn_id: str
    channel: Channel
    client: str
    send: Send
    abortable: bool
    queue: asyncio.Queue[tuple[str, bool]]
    #: Bytes of the messages in `queue`.
    queued_bytes: int = 0
    api_key: str | None = None
    user_id: int | None = None
    note: str = ""
    topics: set[str] = field(default_factory=set)
    messages_sent: int = 0
    #: Last ticker sent per symbol (cross sequence, fields), to build deltas against.
    tickers: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    #: Last book sent per orderbook topic (shared with the connections sent the same).
    books: dict[str, _BookState] = field(default_factory=dict)
    #: When (exchange ms) each orderbook topic was last pushed.
    books_sent_ms: dict[str, int] = field(default_factory=dict)
    #: The open candle last sent per kline topic ([start, open, high, low, close, volume,
    #: turnover]).
    candles: dict[str, list[str]] = field(default_factory=dict)
    #: Last order price limit sent per priceLimit topic.
    price_limits: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Digests of the reqIds a trade connection used (a repeat is refused).
    req_ids: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    dropped: bool = False
    #: Closed after this long without ping-pong or data sent (`_alive_s`)...
    alive_s: float = 600.0
    #: ...counted from this moment (monotonic): the last message sent to it.
    last_sent: float = field(default_factory=time.monotonic)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class _PublicTopic:
    """A public topic: `kind` (tickers, orderbook, kline, publicTrade, priceLimit), its symbol,
    and its depth or interval."""

    kind: str
    symbol: str
    detail: str = ""

    @classmethod
    def parse(cls, topic: str, symbols: Collection[str]) -> _PublicTopic | None:
        """The topic if the simulator serves it (for a listed symbol), else None."""
        parts = topic.split(".")
        kind, symbol = parts[0], parts[-1]
        if len(parts) == 2 and kind in _COIN_TOPICS and symbol == SETTLE_COIN:
            return cls(kind, symbol)
        if symbol not in symbols:
            return None
        if parts[:2] == ["orderbook", "rpi"] and len(parts) == 3:
            return cls(_RPI_BOOK, symbol)
        if len(parts) == 2 and kind in ("tickers", "publicTrade", "priceLimit", "allLiquidation"):
            return cls(kind, symbol)
        if len(parts) == 3 and kind == "kline" and parts[1] in KLINE_INTERVALS:
            return cls(kind, symbol, parts[1])
        if len(parts) == 3 and kind == "orderbook" and parts[1].isdigit():
            return cls(kind, symbol, parts[1]) if int(parts[1]) in _BOOK_DEPTHS else None
        return None

    @property
    def silent(self) -> bool:
        """Taken as Bybit takes it, never pushed: what the simulator has none of (insurance
        pool changes, auto-deleveraging alerts, RPI orders)."""
        return self.kind in _COIN_TOPICS or self.kind == _RPI_BOOK

    @property
    def is_market_data(self) -> bool:
        """Pushed on a price change (else on an event: a fill, a liquidation)."""
        return self.kind not in ("publicTrade", "allLiquidation")


def _alive_s(channel: Channel, query: bytes, default_s: float) -> float:
    """How long a connection may go without ping-pong or data: `default_s`, or what a
    private or trade connection asks for with `max_active_time` (`45s`, `2m`; Bybit takes
    30 s to 10 min: a value outside is brought within, one unreadable ignored)."""
    if channel == "linear":
        return default_s
    asked = urllib.parse.parse_qs(query.decode("latin-1")).get("max_active_time")
    match = re.fullmatch(r"([0-9]{1,5})([sm])", asked[-1]) if asked else None
    if match is None:
        return default_s
    seconds = int(match[1]) * (60 if match[2] == "m" else 1)
    return float(min(max(seconds, _MIN_ACTIVE_S), _MAX_ACTIVE_S))


def _changed_fields(last: dict[str, str], row: dict[str, str]) -> dict[str, str]:
    """The fields of a ticker `row` that differ from the `last` sent: a delta's data."""
    return {name: value for name, value in row.items() if last.get(name) != value}


def _quiet(conn: _Connection, topic: str, ts: int) -> bool:
    """Whether a book sent on `topic` has had no push for `_LEVEL1_RESEND_MS`."""
    sent = conn.books_sent_ms.get(topic)
    return sent is not None and ts - sent >= _LEVEL1_RESEND_MS


def _levels(side: list[list[str]]) -> dict[str, str]:
    return {price: size for price, size in side}


def _level_changes(before: dict[str, str], after: dict[str, str]) -> list[list[str]]:
    """Bybit's delta of one book side: levels new or resized, and removed ones with size 0."""
    changed = [[price, size] for price, size in after.items() if before.get(price) != size]
    return changed + [[price, "0"] for price in before if price not in after]


class _BookPush:
    """One orderbook topic's book at one moment and the messages it makes, each built once
    for every connection that was last sent the same state (normally all of them: one delta
    for all). A connection left elsewhere (subscribed since the last push, or resent its
    depth-1 book) gets the delta from its own state, or a snapshot; built per connection, a
    1000-level delta (~70 KB) took the event loop ~1.5 ms per connection and push, and 20
    connections under a fast walk held every HTTP answer for a quarter of a second."""

    def __init__(self, topic: str, depth: int, book: dict[str, Any], ts: int) -> None:
        self._topic = topic
        self._depth = depth
        self._book = book
        self._ts = ts
        self._state = _BookState(book["u"], _levels(book["b"]), _levels(book["a"]))
        #: By (id of the state a connection was left in, again): that state (held, so that
        #: its id is not reused meanwhile), the state the message leaves, the message.
        self._built: dict[tuple[int, bool], tuple[_BookState | None, _BookState, str | None]] = {}

    def message(self, last: _BookState | None, *, again: bool) -> tuple[_BookState, str | None]:
        """For a connection last sent `last`: the state it is left in, and the message (a
        snapshot for the first, and always at depth 1, else a delta), None if the book has
        not changed, unless `again` (depth 1's resend of an unchanged book)."""
        key = (id(last), again)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = (last, *self._build(last, again=again))
        return built[1], built[2]

    def _build(self, last: _BookState | None, *, again: bool) -> tuple[_BookState, str | None]:
        book, state = self._book, self._state
        # `u` is the book's update id, which the REST orderbook answers too (Bybit: its `u`
        # "corresponds to u in the 1000-level WebSocket orderbook stream"), so a REST snapshot
        # and the stream's deltas line up; a resend of an unchanged depth-1 book keeps its `u`.
        if last is not None and last.same_levels(state):
            if not again:
                return last, None
            state = last
        data: dict[str, Any] = {"s": book["s"], "b": book["b"], "a": book["a"]}
        kind = "snapshot"
        if last is not None and self._depth != 1:
            kind = "delta"
            data = {
                "s": book["s"],
                "b": _level_changes(last.bids, state.bids),
                "a": _level_changes(last.asks, state.asks),
            }
        data |= {"u": state.update_id, "seq": book["seq"]}
        # Bybit: "Futures (Level 1): the "ts" field appears before the "type" field", the other
        # levels' after it.
        ts = self._ts
        head = {"ts": ts, "type": kind} if self._depth == 1 else {"type": kind, "ts": ts}
        return state, _dumps({"topic": self._topic, **head, "data": data, "cts": book["cts"]})


class StreamHub:
    """Every stream connection of one app, and the exchange's `StreamSink`."""

    def __init__(self, exchange: SimExchange, trade: TradeDesk | None = None) -> None:
        self._exchange = exchange
        self._trade = trade
        self._queue_max = exchange.config.stream_queue_max_messages
        self._queue_max_bytes = exchange.config.stream_queue_max_bytes
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[str, _Connection] = {}
        #: (api_key, exchange topic) and symbol -> number of listening connections.
        self._private_interest: Counter[tuple[str, str]] = Counter()
        #: symbol -> connections listening to its ticker, book, candles or price limit; to its
        #: trades.
        self._market_interest: Counter[str] = Counter()
        self._trade_interest: Counter[str] = Counter()
        #: symbol -> the latest price move (cross sequence, ticker row, ms) not yet delivered;
        #: a symbol here has its delivery scheduled on the loop (`_deliver_moved`).
        self._moves: dict[str, tuple[int, dict[str, str], int]] = {}
        self._messages_sent = 0
        self._connections_opened = 0
        self._connections_dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        exchange.attach_stream(self)

    # ------------------------------------------------------------------ StreamSink (any thread)

    def wants_private(self, api_key: str, topic: str) -> bool:
        with self._lock:
            return self._private_interest[(api_key, topic)] > 0

    def wants_market_data(self, symbol: str) -> bool:
        with self._lock:
            return self._market_interest[symbol] > 0

    def wants_trades(self, symbol: str) -> bool:
        with self._lock:
            return self._trade_interest[symbol] > 0

    def push_private(self, api_key: str, topic: str, rows: list[dict[str, Any]]) -> None:
        self._call_soon(self._deliver_private, api_key, topic, rows, self._exchange.now_ms())

    def price_moved(self, symbol: str, cs: int, row: dict[str, str]) -> None:
        # Conflated: one delivery per symbol waits on the loop at a time, and it pushes the
        # latest move (a client gets the book, candles and ticker fields as they are then, as
        # Bybit pushes at a set frequency). One callback per move let a walk faster than the
        # loop could push pile up callbacks without bound: memory grew by 20 MB/s and no
        # request was answered any more.
        move = (cs, row, self._exchange.now_ms())
        with self._lock:
            waiting = symbol in self._moves
            self._moves[symbol] = move
        if not waiting and not self._call_soon(self._deliver_moved, symbol):
            with self._lock:
                self._moves.pop(symbol, None)

    def push_trade(self, symbol: str, row: dict[str, Any]) -> None:
        self._call_soon(self._deliver_trade, symbol, row, self._exchange.now_ms())

    def push_liquidation(self, symbol: str, row: dict[str, Any]) -> None:
        self._call_soon(self._deliver_liquidation, symbol, row, self._exchange.now_ms())

    def _call_soon(self, callback: Any, *args: Any) -> bool:
        """Run the callback on the loop; False when there is no loop (any more)."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is gone once the server stopped; no one listens then
            return False
        return True

    # ------------------------------------------------------------------ admin (event loop)

    def connections(self) -> list[dict[str, Any]]:
        """Every open connection: account UID and key note (never the key), topics, counts."""
        return [
            {
                "connId": conn.conn_id,
                "channel": conn.channel,
                "client": conn.client,
                "authenticated": conn.api_key is not None,
                "userID": conn.user_id,
                "note": conn.note,
                "topics": sorted(conn.topics),
                "messagesSent": conn.messages_sent,
                "queued": conn.queue.qsize(),
            }
            for conn in list(self._connections.values())
        ]

    def stats(self) -> dict[str, int]:
        """Counters for /sim/stats."""
        return {
            "stream_connections": len(self._connections),
            "stream_connections_opened": self._connections_opened,
            "stream_connections_dropped": self._connections_dropped,
            "stream_messages_sent": self._messages_sent,
        }

    def drop(self, api_key: str | None = None) -> int:
        """Cut the connections of one key (authenticated ones), or all; how many were cut."""
        chosen = [
            conn
            for conn in list(self._connections.values())
            if not conn.dropped and (api_key is None or conn.api_key == api_key)
        ]
        for conn in chosen:
            self._drop(conn)
        return len(chosen)

    # ------------------------------------------------------------------ the ASGI endpoints

    def endpoint(self, channel: Channel) -> _Endpoint:
        """The raw ASGI app of one stream path."""
        return _Endpoint(self, channel)

    async def serve(self, channel: Channel, scope: Scope, receive: Receive, send: Send) -> None:
        """One connection's session: accept, read requests, and send what is queued."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        self._loop = asyncio.get_running_loop()
        client = scope.get("client")
        conn = _Connection(
            conn_id=str(uuid.uuid4()),
            channel=channel,
            client=f"{client[0]}:{client[1]}" if client else "",
            send=send,
            abortable=ABORT_EXTENSION in (scope.get("extensions") or {}),
            queue=asyncio.Queue(self._queue_max),
            alive_s=_alive_s(
                channel, scope.get("query_string", b""), self._exchange.config.stream_idle_cutoff_s
            ),
        )
        self._connections[conn.conn_id] = conn
        self._connections_opened += 1
        sender = asyncio.create_task(self._send_loop(conn))
        refresher = asyncio.create_task(self._refresh_loop(conn)) if channel == "linear" else None
        idle = asyncio.create_task(self._close_when_idle(conn))
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    break
                text = message.get("text")
                if text is None:
                    raw = message.get("bytes") or b""
                    text = raw.decode("utf-8", "replace")
                self._handle(conn, text)
        finally:
            self._forget(conn)
            for task in (sender, refresher, idle):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _send_loop(self, conn: _Connection) -> None:
        while True:
            text, pushed = await conn.queue.get()
            if pushed and self._exchange.inject("stream_drop"):
                self._drop(conn)
                return
            conn.queued_bytes -= len(text)
            await conn.send({"type": "websocket.send", "text": text})
            conn.messages_sent += 1
            conn.last_sent = time.monotonic()
            self._messages_sent += 1

    async def _close_when_idle(self, conn: _Connection) -> None:
        """Close the connection once nothing (a pong, an answer, data) was sent to it for
        `conn.alive_s`, looked at every `_IDLE_SCAN_S` at most, as Bybit's ticker does."""
        scan_s = min(_IDLE_SCAN_S, conn.alive_s / 2)
        while not conn.dropped:
            await asyncio.sleep(scan_s)
            if time.monotonic() - conn.last_sent >= conn.alive_s:
                conn.dropped = True  # nothing more is queued for it
                self._forget(conn)
                await self._send_quietly(conn, {"type": "websocket.close", "code": 1000})
                return

    async def _refresh_loop(self, conn: _Connection) -> None:
        while not conn.dropped:
            await asyncio.sleep(_REFRESH_S)
            self._refresh(conn, self._exchange.now_ms())

    def _refresh(self, conn: _Connection, ts: int) -> None:
        """What the connection's public topics push while the price stands still (see the
        module's notes); a price change pushes them anyway."""
        for topic in list(conn.topics):
            public = self._public(topic)
            if public.kind == "tickers":
                self._refresh_ticker(conn, topic, public.symbol, ts)
            elif public.kind == "kline":
                self._send_candles(conn, topic, public, ts, changed_only=True)
            elif public.kind == "orderbook" and public.detail == "1" and _quiet(conn, topic, ts):
                self._send_book(conn, topic, 1, ts, {}, again=True)

    def _refresh_ticker(self, conn: _Connection, topic: str, symbol: str, ts: int) -> None:
        last = conn.tickers.get(symbol)
        snapshot = self._exchange.ticker_snapshot(symbol)
        if last is None or snapshot is None:
            return
        cs, row = snapshot
        changed = _changed_fields(last[1], row)
        if not changed:
            return
        cs = max(cs, last[0])
        conn.tickers[symbol] = (cs, row)
        self._send_ticker_delta(conn, topic, symbol, changed, cs, ts)

    def _send_ticker_delta(
        self,
        conn: _Connection,
        topic: str,
        symbol: str,
        changed: dict[str, str],
        cs: int,
        ts: int,
    ) -> None:
        data = {"symbol": symbol, **changed}
        message = {"topic": topic, "type": "delta", "data": data, "cs": cs, "ts": ts}
        self._enqueue(conn, _dumps(message), pushed=True)

    def _enqueue(self, conn: _Connection, message: str, *, pushed: bool) -> None:
        if conn.dropped:
            return
        size = len(message)  # ASCII JSON (`_dumps`): characters are bytes
        if conn.queued_bytes + size > self._queue_max_bytes:
            self._drop(conn)  # a client this far behind is cut off
            return
        try:
            conn.queue.put_nowait((message, pushed))
        except asyncio.QueueFull:
            self._drop(conn)
            return
        conn.queued_bytes += size

    def _drop(self, conn: _Connection) -> None:
        if conn.dropped:
            return
        conn.dropped = True
        self._connections_dropped += 1
        self._forget(conn)
        message = (
            {"type": ABORT_EXTENSION}
            if conn.abortable
            else {"type": "websocket.close", "code": 1001}
        )
        task = asyncio.get_running_loop().create_task(self._send_quietly(conn, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _send_quietly(conn: _Connection, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await conn.send(message)

    def _forget(self, conn: _Connection) -> None:
        if self._connections.pop(conn.conn_id, None) is None:
            return
        with self._lock:
            for topic in conn.topics:
                self._lose_interest(conn, topic)

    # ------------------------------------------------------------------ requests

    def _handle(self, conn: _Connection, text: str) -> None:
        request: Any = None
        if len(text) <= _MAX_REQUEST_CHARS:
            with contextlib.suppress(ValueError, RecursionError):
                request = json.loads(text)
        if conn.channel == "trade":
            answer = self._trade_answer(conn, request)
            if answer is not None:  # None: a fault lost it
                self._reply(conn, answer)
            return
        if not isinstance(request, dict):
            self._reply(conn, {"success": False, "ret_msg": "error:request is not a JSON object"})
            return
        op = request.get("op")
        if not isinstance(op, str):
            # {"op": {...}} or {"op": [...]}: not a set member (unhashable), just a bad op.
            op = json.dumps(op)
        req_id = request.get("req_id")
        req_id = req_id if isinstance(req_id, str | int) and not isinstance(req_id, bool) else None
        args = request.get("args")
        if op == "ping":
            self._pong(conn, req_id)
        elif op == "auth" and conn.channel == "private":
            self._auth(conn, req_id, args)
        elif op in {"subscribe", "unsubscribe"}:
            self._subscribe(conn, op, req_id, args)
        else:
            self._answer(conn, str(op)[:32], req_id, False, f"error:invalid op {str(op)[:32]}")

    def _answer(
        self, conn: _Connection, op: str, req_id: str | int | None, success: bool, ret_msg: str
    ) -> None:
        """Bybit's command answer: private `{success, ret_msg, op, conn_id[, req_id]}`,
        linear `{success, ret_msg, conn_id, req_id, op}`; a topic echoed in `ret_msg` clipped."""
        ret_msg = clip_message(ret_msg)
        if conn.channel == "private":
            answer: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "op": op}
            answer["conn_id"] = conn.conn_id
            if req_id is not None:
                answer["req_id"] = req_id
        else:
            answer = {
                "success": success,
                "ret_msg": ret_msg,
                "conn_id": conn.conn_id,
                "req_id": req_id if req_id is not None else "",
                "op": op,
            }
        self._reply(conn, answer)

    def _reply(self, conn: _Connection, answer: dict[str, Any]) -> None:
        name = "connId" if conn.channel == "trade" else "conn_id"
        if name not in answer:
            answer = {**answer, name: conn.conn_id}
        self._enqueue(conn, _dumps(answer), pushed=False)

    def _trade_answer(self, conn: _Connection, request: Any) -> dict[str, Any] | None:
        """The trade API's answer (`bot.sim.trade_ws`): ping and auth here, orders at the
        desk; every answer `{retCode, retMsg, op, ...}`, or None when a fault loses it."""
        if not isinstance(request, dict):
            return {"retCode": int(RetCode.PARAMS_ERROR), "retMsg": "request is not a JSON object"}
        op = request.get("op")
        req_id = {} if request.get("reqId") is None else {"reqId": request["reqId"]}
        if op == "ping":
            return {
                "retCode": 0,
                "retMsg": "OK",
                "op": "pong",
                "data": [str(self._exchange.now_ms())],
            }
        if op == "auth":
            refusal = self._check_auth(conn, request.get("args"))
            if refusal is None and conn.api_key is not None:
                refusal = (RetCode.REPEAT_AUTH, "repeat auth")
            if refusal is None:
                self._authenticated(conn, str(request["args"][0]))
            code, message = refusal or (RetCode.OK, "OK")
            return {**req_id, "retCode": int(code), "retMsg": message, "op": "auth"}
        if self._trade is None:
            return {
                **req_id,
                "retCode": int(RetCode.OP_NOT_FOUND),
                "retMsg": "not served",
                "op": str(op)[:32],
            }
        host = conn.client.rsplit(":", 1)[0] if conn.client else None
        return self._trade.answer(conn.api_key, host, conn.req_ids, request)

    def _pong(self, conn: _Connection, req_id: str | int | None) -> None:
        if conn.channel == "private":
            pong: dict[str, Any] = {}
            if req_id is not None:
                pong["req_id"] = req_id
            pong.update(op="pong", args=[str(self._exchange.now_ms())], conn_id=conn.conn_id)
            self._reply(conn, pong)
        else:
            self._answer(conn, "ping", req_id, True, "pong")

    def _auth(self, conn: _Connection, req_id: str | int | None, args: Any) -> None:
        refusal = self._check_auth(conn, args)
        if refusal is not None:
            self._answer(conn, "auth", req_id, False, refusal[1])
            return
        self._authenticated(conn, str(args[0]))
        self._answer(conn, "auth", req_id, True, "")

    def _authenticated(self, conn: _Connection, api_key: str) -> None:
        label = self._exchange.account_label(api_key)
        if label is not None:
            conn.api_key = api_key
            conn.user_id, conn.note = label

    def _check_auth(self, conn: _Connection, args: Any) -> tuple[RetCode, str] | None:
        """None when the auth args are good, else the refusal: the trade API's retCode and
        the message both channels send."""
        if not (
            isinstance(args, list)
            and len(args) == 3
            and isinstance(args[0], str)
            and isinstance(args[2], str)
            and isinstance(args[1], int | str)
            and not isinstance(args[1], bool)
        ):
            return RetCode.PARAMS_ERROR, "Params Error"
        api_key, expires, signature = args
        try:
            expires_ms = int(expires)
        except ValueError:
            return RetCode.PARAMS_ERROR, "Params Error"
        if conn.api_key is not None and conn.api_key != api_key:
            return RetCode.REPEAT_AUTH, "Repeat auth with another API key"
        spec = self._exchange.account_spec(api_key)
        if spec is None:
            return RetCode.INVALID_API_KEY, "Invalid apikey"
        expected = hmac.new(
            spec.api_secret.get_secret_value().encode(),
            f"GET/realtime{expires}".encode(),
            hashlib.sha256,
        ).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return RetCode.INVALID_SIGN, "Invalid sign"
        now = self._exchange.signing_clock_ms()  # what clients sign on, even under a replay
        if expires_ms <= now:
            # As Bybit answers an expires already past (pybit#300, api-usage-examples#70).
            return RetCode.PARAMS_ERROR, "Params Error"
        if spec.expired_at is not None and spec.expired_at.timestamp() * 1000 <= now:
            return RetCode.API_KEY_EXPIRED, "Your api key has expired."
        return None

    def _subscribe(self, conn: _Connection, op: str, req_id: str | int | None, args: Any) -> None:
        if not (
            isinstance(args, list)
            and 0 < len(args) <= _MAX_TOPICS
            and all(isinstance(topic, str) for topic in args)
        ):
            self._answer(conn, op, req_id, False, "error:args must be a list of topics")
            return
        topics: list[str] = list(dict.fromkeys(args))
        if op == "unsubscribe":
            with self._lock:
                for topic in topics:
                    if topic in conn.topics:
                        conn.topics.discard(topic)
                        self._lose_interest(conn, topic)
                        conn.tickers.pop(topic.removeprefix(_TICKER_PREFIX), None)
                        conn.books.pop(topic, None)
                        conn.candles.pop(topic, None)
            self._answer(conn, op, req_id, True, "")
            return
        refusal = self._check_topics(conn, topics)
        if refusal is not None:
            self._answer(conn, op, req_id, False, refusal)
            return
        with self._lock:
            for topic in topics:
                conn.topics.add(topic)
                if conn.channel == "private":
                    assert conn.api_key is not None
                    if (pushed := PRIVATE_TOPICS[topic]) is not None:
                        self._private_interest[(conn.api_key, pushed)] += 1
                elif not (public := self._public(topic)).silent:
                    self._public_interest(topic)[public.symbol] += 1
        self._answer(conn, op, req_id, True, "")
        if conn.channel == "linear":
            for topic in topics:
                self._send_snapshot(conn, topic)

    def _check_topics(self, conn: _Connection, topics: list[str]) -> str | None:
        if conn.channel == "private":
            mixed = _mixed_private_topics(topics)
            if mixed is not None:
                return (
                    "error:All-In-One topic and Categorised topic cannot be in the same "
                    f"subscription request,topic:{mixed}"
                )
        for topic in topics:
            if topic in conn.topics:
                return f"error:already subscribed,topic:{topic}"
            if conn.channel == "private":
                if topic not in PRIVATE_TOPICS:
                    return f"error:handler not found,topic:{topic}"
                if conn.api_key is None:
                    return "Request not authorized"
            elif _PublicTopic.parse(topic, self._exchange.config.instruments) is None:
                return f"error:handler not found,topic:{topic}"
        return None

    def _public(self, topic: str) -> _PublicTopic:
        """A public topic `_check_topics` accepted."""
        parsed = _PublicTopic.parse(topic, self._exchange.config.instruments)
        assert parsed is not None
        return parsed

    def _public_interest(self, topic: str) -> Counter[str]:
        """The interest counter a public topic counts in."""
        if self._public(topic).is_market_data:
            return self._market_interest
        return self._trade_interest

    def _lose_interest(self, conn: _Connection, topic: str) -> None:
        """Lock held."""
        if conn.channel == "private":
            if conn.api_key is not None and (pushed := PRIVATE_TOPICS.get(topic)) is not None:
                self._private_interest[(conn.api_key, pushed)] -= 1
        elif not (public := self._public(topic)).silent:
            self._public_interest(topic)[public.symbol] -= 1

    # ------------------------------------------------------------------ pushes (event loop)

    def _send_snapshot(self, conn: _Connection, topic: str) -> None:
        public = self._public(topic)
        if public.kind == "orderbook":
            self._send_book(conn, topic, int(public.detail), self._exchange.now_ms(), {})
            return
        if public.kind == "kline":
            self._send_candles(conn, topic, public, self._exchange.now_ms())
            return
        if public.kind == "priceLimit":
            now = self._exchange.now_ms()
            self._send_price_limit(conn, topic, self._exchange.price_limit_row(public.symbol), now)
            return
        if public.kind != "tickers":
            return  # publicTrade: no snapshot, the next fill
        symbol = public.symbol
        snapshot = self._exchange.ticker_snapshot(symbol)
        if snapshot is None:
            return
        cs, row = snapshot
        conn.tickers[symbol] = (cs, row)
        message = {
            "topic": topic,
            "type": "snapshot",
            "data": row,
            "cs": cs,
            "ts": self._exchange.now_ms(),
        }
        self._enqueue(conn, _dumps(message), pushed=True)

    def _deliver_private(
        self, api_key: str, topic: str, rows: list[dict[str, Any]], created_ms: int
    ) -> None:
        message_id = str(uuid.uuid4())
        texts: dict[str, str] = {}
        for conn in list(self._connections.values()):
            if conn.api_key != api_key:
                continue
            for name in conn.topics:
                if PRIVATE_TOPICS.get(name) != topic:
                    continue
                text = texts.get(name)
                if text is None:
                    # Bybit's execution.fast message has no `id`, only topic, creationTime
                    # and data; the other private topics carry one.
                    fast = name in _FAST_EXECUTION_TOPICS
                    head = {"topic": name} if fast else {"id": message_id, "topic": name}
                    text = _dumps({**head, "creationTime": created_ms, "data": rows})
                    texts[name] = text
                self._enqueue(conn, text, pushed=True)

    def _deliver_moved(self, symbol: str) -> None:
        with self._lock:
            move = self._moves.pop(symbol, None)
        if move is not None:
            self._deliver_market_data(symbol, *move)

    def _deliver_market_data(self, symbol: str, cs: int, row: dict[str, str], ts: int) -> None:
        self._deliver_ticker(symbol, cs, row, ts)
        books: dict[str, _BookPush] = {}  # by topic: built once for all connections
        limit: dict[str, str] | None = None  # read once, for the first connection wanting it
        for conn in list(self._connections.values()):
            for topic in [topic for topic in conn.topics if topic.endswith("." + symbol)]:
                public = self._public(topic)
                if public.kind == "orderbook" and topic in conn.books:
                    self._send_book(conn, topic, int(public.detail), ts, books)
                elif public.kind == "kline":
                    self._send_candles(conn, topic, public, ts)
                elif public.kind == "priceLimit":
                    limit = limit or self._exchange.price_limit_row(symbol)
                    if conn.price_limits.get(topic) != limit:
                        self._send_price_limit(conn, topic, limit, ts)

    def _send_price_limit(
        self, conn: _Connection, topic: str, row: dict[str, str] | None, ts: int
    ) -> None:
        """`priceLimit.{symbol}`: Bybit pushes it every 300 ms; the simulator on subscribe,
        then when a price change moves it (as the book and the candles, read as it is sent)."""
        if row is not None:
            conn.price_limits[topic] = row
            message = {"topic": topic, "ts": ts, "data": row}
            self._enqueue(conn, _dumps(message), pushed=True)

    def _send_book(
        self,
        conn: _Connection,
        topic: str,
        depth: int,
        ts: int,
        books: dict[str, _BookPush],
        *,
        again: bool = False,
    ) -> None:
        """The book as a snapshot (the first, and always at depth 1), else as a delta; only
        if it changed, unless `again` (depth 1's resend of an unchanged book). `books` holds
        the topics' books of one push, each read and made into messages once."""
        push = books.get(topic)
        if push is None:
            book = self._exchange.book(topic.rsplit(".", 1)[1], depth)
            push = books[topic] = _BookPush(topic, depth, book, ts)
        state, message = push.message(conn.books.get(topic), again=again)
        if message is None:
            return
        conn.books[topic] = state
        conn.books_sent_ms[topic] = ts
        self._enqueue(conn, message, pushed=True)

    def _send_candles(
        self,
        conn: _Connection,
        topic: str,
        public: _PublicTopic,
        ts: int,
        *,
        changed_only: bool = False,
    ) -> None:
        """The open candle; first, the one that closed since the last push (`confirm`). With
        `changed_only`, nothing if the open candle is the one last sent, unchanged."""
        current, previous = self._exchange.live_candles(public.symbol, public.detail)
        last = conn.candles.get(topic)
        if changed_only and last == current:
            return
        rows = [(current, False)]
        if last is not None and last[0] != current[0]:
            rows.insert(0, (previous, True))
        conn.candles[topic] = current
        data = [
            {
                "start": int(row[0]),
                "end": self._exchange.candle_end(public.detail, int(row[0])),
                "interval": public.detail,
                "open": row[1],
                "close": row[4],
                "high": row[2],
                "low": row[3],
                "volume": row[5],
                "turnover": row[6],
                "confirm": confirm,
                "timestamp": ts,
            }
            for row, confirm in rows
        ]
        message = {"topic": topic, "data": data, "ts": ts, "type": "snapshot"}
        self._enqueue(conn, _dumps(message), pushed=True)

    def _deliver_trade(self, symbol: str, row: dict[str, Any], ts: int) -> None:
        self._deliver_public(f"publicTrade.{symbol}", row, ts)

    def _deliver_liquidation(self, symbol: str, row: dict[str, Any], ts: int) -> None:
        self._deliver_public(f"allLiquidation.{symbol}", row, ts)

    def _deliver_public(self, topic: str, row: dict[str, Any], ts: int) -> None:
        """One row of an event topic, a `snapshot` to each connection listening."""
        text = _dumps({"topic": topic, "type": "snapshot", "ts": ts, "data": [row]})
        for conn in list(self._connections.values()):
            if topic in conn.topics:
                self._enqueue(conn, text, pushed=True)

    def _deliver_ticker(self, symbol: str, cs: int, row: dict[str, str], ts: int) -> None:
        topic = _TICKER_PREFIX + symbol
        for conn in list(self._connections.values()):
            last = conn.tickers.get(symbol)
            if topic not in conn.topics or last is None or cs <= last[0]:
                continue  # a change the snapshot (or an earlier delta) already carried
            changed = _changed_fields(last[1], row)
            conn.tickers[symbol] = (cs, row)
            if changed:
                self._send_ticker_delta(conn, topic, symbol, changed, cs, ts)


class _Endpoint:
    """A raw ASGI app for one stream path (Starlette's WebSocketRoute mounts it as is)."""

    def __init__(self, hub: StreamHub, channel: Channel) -> None:
        self._hub = hub
        self._channel = channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._hub.serve(self._channel, scope, receive, send)


def _mixed_private_topics(topics: list[str]) -> str | None:
    """An all-in-one topic asked for beside one of its categorised topics in one request
    (Bybit: "All-In-One topic and Categorised topic cannot be in the same subscription
    request"), or None."""
    asked = set(topics)
    for family in _ALL_IN_ONE:
        categorised = [topic for topic in topics if topic.removeprefix(family + ".") in _CATEGORIES]
        if family in asked and categorised:
            return categorised[0]
    return None
