"""The simulated Bybit exchange: the rules, the matching, and the books behind the HTTP app.

One `SimExchange` is the whole venue. A request is checked against Bybit's rules in Bybit's
order and acknowledged at once; the order reaches the matching engine `market_fill_delay_ms`
later (see `bot.sim.engine`), where a market order takes the bid or ask (with spread,
slippage and optional partial fills), a limit order trades as taker if marketable or rests
until the price crosses it, and attached stop-loss / take-profit close the position when the
price reaches them. The market's price (the mark and index price, the book's centre) moves by
admin request or by seeded random walks; every trade, a fill or such a move, sets the last
price. All money is `Decimal`; one lock guards everything (requests, engine events, admin
calls).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from bot import clock
from bot.sim.candles import PriceHistory, candle_after, candle_starts
from bot.sim.config import InstrumentSpec, PriceWalk, SimAccountSpec, SimFaults, SimulatorConfig
from bot.sim.engine import Scheduler
from bot.sim.errors import DuplicateAccountError, RetCode, SimError
from bot.sim.params import (
    OPEN_INTEREST_INTERVALS_MS,
    AmendOrderParams,
    BatchAmendParams,
    BatchCancelParams,
    BatchPlaceParams,
    CancelAllParams,
    CancelOrderParams,
    ClosedPnlParams,
    CoinInfoParams,
    ExecutionQueryParams,
    FeeRateParams,
    FundingHistoryParams,
    IndexKlineParams,
    KlineParams,
    MarketParams,
    MarkKlineParams,
    NoParams,
    OpenInterestParams,
    OrderbookParams,
    OrderQueryParams,
    PlaceOrderParams,
    PositionQueryParams,
    PremiumKlineParams,
    PriceLimitParams,
    RecentTradeParams,
    RiskLimitParams,
    SetLeverageParams,
    SetMarginModeParams,
    SwitchModeParams,
    SystemStatusParams,
    TradingStopParams,
    TransactionLogParams,
    WalletBalanceParams,
    parse_params,
)
from bot.sim.records import (
    LIQUIDATION_CREATE_TYPE,
    MAINTENANCE_MARGIN_RATE,
    RISK_LIMIT_VALUE,
    SETTLE_COIN,
    ZERO,
    AccountRecord,
    ClosedPnlRecord,
    ExecutionRecord,
    MarginFigures,
    OrderRecord,
    PositionRecord,
    PriceLimits,
    ResumedOrder,
    ResumedPosition,
)
from bot.sim.views import (
    FUNDING_INTERVAL_MINUTES,
    FUNDING_RATE,
    LAUNCH_TIME_MS,
    MAX_PRICE_TICKS,
    account_info_view,
    api_key_view,
    batch_cancel_row,
    batch_place_row,
    closed_pnl_view,
    coin_info_view,
    execution_stream_view,
    execution_view,
    fast_execution_stream_view,
    fee_rate_view,
    fmt,
    funding_rate_view,
    instrument_view,
    mark_kline_rows,
    open_interest_view,
    order_history_view,
    order_stream_view,
    order_view,
    orderbook_view,
    position_stream_view,
    position_view,
    premium_kline_rows,
    price_limit_view,
    public_trade_stream_view,
    public_trade_view,
    risk_limit_view,
    ticker_stream_view,
    ticker_view,
    to_tick,
    transaction_log_view,
    wallet_stream_view,
    wallet_view,
)

__all__ = ["BatchAnswer", "FaultName", "SimExchange", "StreamSink"]

#: A batch endpoint's answer: its `result` and its `retExtInfo` (one code per item).
BatchAnswer = tuple[dict[str, Any], dict[str, Any]]
M = TypeVar("M", bound=BaseModel)

#: How many closed orders `/v5/order/realtime?openOnly=1` keeps per account, as Bybit does.
_CLOSED_ORDERS_IN_REALTIME = 500
#: Fills kept per symbol for `/v5/market/recent-trade` (its largest limit).
_PUBLIC_TRADES_KEPT = 1000
#: `/v5/market/recent-trade` limits: spot [1, 60] default 60, the rest [1, 1000] default 500.
_SPOT_TRADES_MAX = 60
_TRADES_DEFAULT = 500
_FUNDING_INTERVAL_MS = FUNDING_INTERVAL_MINUTES * 60_000
#: Bybit answers executions and closed PnL for at most 7 days per request.
_QUERY_WINDOW_MS = 7 * 86_400_000
#: The transaction log's span when a bound is missing: 24 hours.
_LOG_SPAN_MS = 86_400_000
_BPS = Decimal(10_000)
#: A wallet moves by whole 1e-8 USDT: each fill's fee and realised PnL are rounded to the 8
#: places its records show (execFee, the transaction log's fee and cashFlow), so that each
#: cashBalance is the one before plus its change, as in Bybit's transaction-log example
#: (https://bybit-exchange.github.io/docs/v5/account/transaction-log). Bybit does not
#: document the direction; half-even is what the records' 8 places used already.
_MONEY_PLACES = Decimal("1e-8")


def _cursor_offset(cursor: str | None) -> int:
    """The offset behind Bybit's opaque cursor (one this server issued)."""
    if not cursor:
        return 0
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 12):
        raise SimError(RetCode.PARAMS_ERROR, "params error: cursor is not one this server issued")
    return int(cursor)


def _page(items: list[Any], limit: int, cursor: str | None) -> tuple[list[Any], str]:
    """Offset pagination behind Bybit's opaque cursor."""
    start = _cursor_offset(cursor)
    end = start + limit
    return items[start:end], (str(end) if end < len(items) else "")


R = TypeVar("R")
_MAX_CURSOR_PARTS = 3


def _keyed_page(
    records: list[R], limit: int, cursor: str | None, position: Callable[[R], tuple[int, ...]]
) -> tuple[list[R], str]:
    """Bybit's cursor over a newest-first list: the next page starts after the last record
    handed out, by its `position` (strictly decreasing along `records`), so records that
    arrive or leave between two pages shift nothing, as they would with an offset."""
    if cursor:
        after = _cursor_position(cursor)
        records = [record for record in records if position(record) < after]
    page = records[:limit]
    more = len(records) > limit
    return page, (":".join(str(part) for part in position(page[-1])) if more else "")


def _cursor_position(cursor: str) -> tuple[int, ...]:
    """The position behind a cursor `_keyed_page` issued."""
    parts = cursor.split(":")
    if len(parts) > _MAX_CURSOR_PARTS or not all(
        part.isascii() and part.isdigit() and len(part) <= 20 for part in parts
    ):
        raise SimError(RetCode.PARAMS_ERROR, "params error: cursor is not one this server issued")
    return tuple(int(part) for part in parts)


def _history_bounds(start: int | None, end: int | None, now: int) -> tuple[int, int]:
    """The span a market-history request covers: from startTime (or the listing) to endTime
    (or now), never before the listing nor after now."""
    if start is not None and end is not None and end < start:
        raise SimError(RetCode.PARAMS_ERROR, "params error: endTime must not be before startTime")
    first = LAUNCH_TIME_MS if start is None else max(start, LAUNCH_TIME_MS)
    last = now if end is None else min(end, now)
    return first, last


def _echo(item: dict[str, Any], name: str) -> str:
    """A batch item's field as sent, for the row of an item that failed ("" if not text)."""
    value = item.get(name)
    return value if isinstance(value, str) else ""


def _outcome(ret_code: RetCode, ret_msg: str) -> dict[str, Any]:
    """One item's entry in a batch answer's `retExtInfo.list`."""
    return {"code": int(ret_code), "msg": ret_msg}


def _time_window(
    start: int | None, end: int | None, now: int, span_ms: int = _QUERY_WINDOW_MS
) -> tuple[int, int]:
    """Bybit's query window: both bounds optional (a missing one is `span_ms` from the other,
    or from now), at most 7 days apart."""
    if start is None and end is None:
        return now - span_ms, now
    if start is None:
        assert end is not None
        return end - span_ms, end
    if end is None:
        return start, start + span_ms
    if end < start or end - start > _QUERY_WINDOW_MS:
        raise SimError(
            RetCode.PARAMS_ERROR,
            "params error: endTime must not be before startTime, and at most 7 days after it",
        )
    return start, end


def _clear_trailing_stop(position: PositionRecord) -> None:
    position.trailing_stop = position.trailing_active_price = position.trailing_level = None


def _clear_exit_levels(position: PositionRecord) -> None:
    """The position's TP, SL and trailing stop gone (it closed, or one of them fired)."""
    position.take_profit = position.stop_loss = None
    position.tp_trigger_by = position.sl_trigger_by = "LastPrice"
    position.exit_parents.clear()
    _clear_trailing_stop(position)


def _selects(order_filter: str | None, order: OrderRecord) -> bool:
    """Whether an `orderFilter` selects the order. None: every kind (Bybit's default);
    `Order` and cancel-all's `OpenOrder`: plain orders; `StopOrder`: conditional ones (those
    created with a triggerPrice, and the positions' TP/SL orders). Spot's kinds select
    nothing here."""
    if order_filter is None:
        return True
    if order_filter in ("Order", "OpenOrder"):
        return not order.stop_order_type
    return order_filter == "StopOrder" and bool(order.stop_order_type)


def _in_scope(
    symbol: str, by_symbol: str | None, base_coin: str | None, settle_coin: str | None
) -> bool:
    """Whether `symbol` is in what a request names by one of symbol, baseCoin and settleCoin:
    Bybit takes the first given and ignores the others ("priority is symbol > baseCoin >
    settleCoin"; the order queries: "orderId > orderLinkId > symbol > baseCoin"); none:
    every symbol."""
    if by_symbol is not None:
        return symbol == by_symbol
    if base_coin is not None:
        return symbol == base_coin + SETTLE_COIN
    return settle_coin is None or settle_coin == SETTLE_COIN


#: Bybit's order history keeps an order that ended without a fill for a day only.
_UNFILLED_HISTORY_MS = 86_400_000
_ENDED_UNFILLED = frozenset({"Cancelled", "Rejected", "Deactivated"})


def _still_in_history(order: OrderRecord, now: int) -> bool:
    """Bybit: "Cancelled", "Rejected" and "Deactivated" orders are listed for the past 24
    hours only (one that filled in part stays)."""
    return not (
        order.status in _ENDED_UNFILLED
        and order.cum_exec_qty == 0
        and now - order.updated_ms > _UNFILLED_HISTORY_MS
    )


def _order_position(order: OrderRecord) -> tuple[int, ...]:
    return (order.seq,)


def _fill_position(execution: ExecutionRecord) -> tuple[int, ...]:
    return (execution.seq,)


def _closed_pnl_position(record: ClosedPnlRecord) -> tuple[int, ...]:
    # The closing order's creation, not the record's last update: a later fill of the same
    # order must not move it past a cursor already handed out.
    return (record.order.seq,)


class _Listing(Protocol):
    @property
    def category(self) -> str: ...


L = TypeVar("L", bound=_Listing)
Listing = Callable[["SimExchange", str, L], dict[str, Any]]


def _linear_listing(query: Listing[L]) -> Listing[L]:
    """A private list query: another category (spot, inverse, option) lists nothing, as
    Bybit answers an account that holds nothing in it; linear is `query`'s."""

    @functools.wraps(query)
    def listing(exchange: SimExchange, api_key: str, params: L) -> dict[str, Any]:
        if params.category != "linear":
            return {"category": params.category, "list": [], "nextPageCursor": ""}
        return query(exchange, api_key, params)

    return listing


#: Bybit's limit of active conditional orders per symbol and account.
_CONDITIONAL_ORDERS_PER_SYMBOL = 10
#: Bybit's limit of active (plain) orders per symbol and account.
_ACTIVE_ORDERS_PER_SYMBOL = 500

#: A position's exit orders by kind (`stopOrderType`), and the position's attribute holding
#: the price its order shows as `triggerPrice` (a TP/SL: the level it fires at).
_EXIT_LEVELS = (
    ("TakeProfit", "take_profit"),
    ("StopLoss", "stop_loss"),
    ("TrailingStop", "trailing_active_price"),  # Bybit: "it is activate price"
)
#: The position's attribute naming the price each kind watches (a trailing stop: the last).
_EXIT_TRIGGER_BY = {"TakeProfit": "tp_trigger_by", "StopLoss": "sl_trigger_by"}
#: Partial TP/SL orders by kind, and the cancelType of its pair's other half when it fires.
_PARTIAL_EXITS = {
    "PartialTakeProfit": "CancelByOCOSlCanceledByTpTriggered",
    "PartialStopLoss": "CancelByOCOTpCanceledBySlTriggered",
}


def _next_funding_ms(now: int) -> int:
    """When funding is next settled (every 8 hours from 00:00 UTC)."""
    return (now // _FUNDING_INTERVAL_MS + 1) * _FUNDING_INTERVAL_MS


#: The injectable faults that are drawn per request (see SimFaults).
FaultName = Literal[
    "delay",
    "http_5xx",
    "rate_limit_10006",
    "timeout_10016",
    "drop_response_after_accept",
    "accept_then_10016",
    "accept_then_5xx",
    "order_visibility_lag",
    "clock_skew_burst",
    "stream_drop",
]


class StreamSink(Protocol):
    """Where the exchange pushes account and market changes as they happen (the WebSocket
    streams' hub). Called with the exchange lock held, from whichever thread made the change
    (a request on the server's loop, or the engine thread): an implementation must hand the
    data on without blocking, and say cheaply whether anyone listens."""

    def wants_private(self, api_key: str, topic: str) -> bool:
        """Whether a connection of this key listens to the private topic (order, execution,
        position, wallet)."""
        ...

    def push_private(self, api_key: str, topic: str, rows: list[dict[str, Any]]) -> None:
        """One private message's `data` rows for the key's connections."""
        ...

    def wants_market_data(self, symbol: str) -> bool:
        """Whether a connection listens to the symbol's ticker, book or candles."""
        ...

    def price_moved(self, symbol: str, cs: int, row: dict[str, str]) -> None:
        """The symbol's market moved, or it traded: its full ticker, with its cross sequence
        (the book and the candles are read from the exchange as they are pushed)."""
        ...

    def wants_trades(self, symbol: str) -> bool:
        """Whether a connection listens to `publicTrade.{symbol}`."""
        ...

    def push_trade(self, symbol: str, row: dict[str, Any]) -> None:
        """One fill of the symbol, as `publicTrade.{symbol}` carries it."""
        ...

    def push_liquidation(self, symbol: str, row: dict[str, Any]) -> None:
        """One position of the symbol liquidated, as `allLiquidation.{symbol}` carries it
        (sent to whoever listens: it is rare, so nobody is asked first)."""
        ...


@dataclass(slots=True)
class _Walk:
    """A running random walk; a new walk or a set price replaces it (stale steps stop)."""

    spec: PriceWalk
    rng: random.Random
    next_due_ms: int


class SimExchange:
    """The simulated venue: thread-safe, Decimal-only, shaped like Bybit V5 answers."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._lock = threading.Lock()
        self._engine = Scheduler(self._lock)
        #: Per symbol, the market's price, which walks and `POST /sim/prices` move: the mark
        #: and index price (on Bybit they come from other venues, not from our fills), and
        #: the centre of the synthetic book, the rest of the market our orders trade with.
        self._marks: dict[str, Decimal] = dict(self._config.prices)
        #: Per symbol, the last trade's price and tick direction: a price move's (the rest of
        #: the market trading there) or a fill's. Tickers' lastPrice; LastPrice triggers.
        self._last_prices: dict[str, Decimal] = dict(self._config.prices)
        self._tick_directions: dict[str, str] = {}
        #: The candles of the trades (kline) and of the mark price (mark- and index-price
        #: kline).
        started_ms = clock.now_ms()
        self._history = PriceHistory(self._marks, started_ms)
        self._mark_history = PriceHistory(self._marks, started_ms)
        self._walks: dict[str, _Walk] = {}
        self._accounts: dict[str, AccountRecord] = {}  # by the key that opened each
        #: every key, an account's further keys (`account_of`) included, to its account / spec
        self._by_key: dict[str, AccountRecord] = {}
        self._key_specs: dict[str, SimAccountSpec] = {}
        self._faults = self._config.faults
        # Faults and fills only need reproducibility, not unpredictability.
        self._rng = random.Random(self._config.seed)  # noqa: S311
        self._fill_rng = random.Random(self._config.seed)  # noqa: S311
        self._burst_until_ms = 0
        self._burst_skew_ms = 0
        self._next_user_id = 100_001
        self._seq = 0
        # The books' update id (`u`, `seq`): 1 for a fresh book, as Bybit's after a restart.
        self._book_updates = 1
        #: The tickers' cross sequence (`cs`): one more with every price move and trade.
        self._cross_seq = 1
        #: Per symbol: what all accounts hold (one side of the open interest), and its history
        #: as (times ms, values) after each fill, for `/v5/market/open-interest`.
        self._open_interest: dict[str, Decimal] = dict.fromkeys(self._config.instruments, ZERO)
        self._open_interest_history: dict[str, tuple[list[int], list[Decimal]]] = {
            symbol: ([], []) for symbol in self._config.instruments
        }
        #: Per symbol: the latest fills of every account, for `/v5/market/recent-trade`.
        self._public_trades: dict[str, deque[ExecutionRecord]] = {
            symbol: deque(maxlen=_PUBLIC_TRADES_KEPT) for symbol in self._config.instruments
        }
        self._streams: list[StreamSink] = []
        self._requests_by_path: Counter[str] = Counter()
        self._signed: Counter[tuple[str, str]] = Counter()  # (key note, path) -> requests
        self._answers_by_ret_code: Counter[int] = Counter()
        self._answers_by_http_status: Counter[int] = Counter()
        self._faults_injected: Counter[str] = Counter()
        #: The funding settlement next due, on the exchange clock (every 8 h from 00:00 UTC),
        #: the payments made so far (executions that are no fill) and their net sum (USDT
        #: paid by all accounts; negative: received).
        self._next_funding_settlement_ms = _next_funding_ms(self.now_ms())
        self._funding_payments = 0
        self._funding_paid = ZERO
        for spec in self._config.accounts:
            self.add_account(spec)
        with self._lock:
            self._schedule_funding()

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    # ----------------------------------------------------------------- engine

    def start_engine(self) -> None:
        """Run fills, walks and delayed events on a background thread (SimServer does this).

        Counted: every start needs a stop; the thread ends with the last stop.
        """
        self._engine.start()

    def stop_engine(self) -> None:
        """Release one start_engine(); the last one stops and joins the engine thread."""
        self._engine.stop()

    @property
    def engine_running(self) -> bool:
        """Whether the engine thread is running."""
        return self._engine.running

    def run_due(self) -> int:
        """Run the engine events that are due now (for use without the engine thread)."""
        with self._lock:
            return self._engine.run_due()

    def advance(self, ms: int) -> int:
        """Move the engine clock ms ahead and run what became due: fills, walk steps, ...

        For unit tests without a server; wall-clock timestamps are unaffected.
        """
        with self._lock:
            return self._engine.advance(ms)

    # ----------------------------------------------------------------- streams

    def attach_stream(self, sink: StreamSink) -> None:
        """Push account and ticker changes to sink from now on (the app's stream hub)."""
        with self._lock:
            if sink not in self._streams:
                self._streams.append(sink)

    def detach_stream(self, sink: StreamSink) -> None:
        """Stop pushing to sink."""
        with self._lock:
            if sink in self._streams:
                self._streams.remove(sink)

    def ticker_snapshot(self, symbol: str) -> tuple[int, dict[str, str]] | None:
        """The symbol's ticker as a `tickers.{symbol}` snapshot carries it, with its cross
        sequence; None for an unlisted symbol."""
        with self._lock:
            if symbol not in self._config.instruments:
                return None
            return self._cross_seq, self._ticker_row(symbol)

    def price_limit_row(self, symbol: str) -> dict[str, str] | None:
        """The symbol's order price limit as `priceLimit.{symbol}` pushes it; None for an
        unlisted symbol."""
        with self._lock:
            if symbol not in self._config.instruments:
                return None
            return price_limit_view(symbol, self._price_limits(symbol))

    def account_label(self, api_key: str) -> tuple[int, str] | None:
        """The key's account UID and key note (what the admin views show instead of the key)."""
        with self._lock:
            account = self._by_key.get(api_key)
            spec = self._key_specs.get(api_key)
            return (account.user_id, spec.note) if account and spec else None

    def _ticker_row(self, symbol: str) -> dict[str, str]:
        return ticker_stream_view(
            self._ticker(symbol, self.now_ms()), self._tick_directions.get(symbol, "ZeroPlusTick")
        )

    def _ticker(self, symbol: str, now: int) -> dict[str, Any]:
        """The symbol's ticker as `/v5/market/tickers` lists it (lock held)."""
        return ticker_view(
            symbol,
            self._config.instruments[symbol],
            self._last_prices[symbol],
            self._marks[symbol],
            _next_funding_ms(now),
            *self._quote(symbol),
            self._open_interest[symbol],
            self._history.day_stats(symbol, now),
        )

    def _push(self, account: AccountRecord, topic: str, rows: Callable[[], list[Any]]) -> None:
        """Push rows (built only if someone listens) to the account's stream connections."""
        built: list[Any] | None = None
        for key in account.api_keys:
            for sink in self._streams:
                if sink.wants_private(key, topic):
                    if built is None:
                        built = rows()
                    sink.push_private(key, topic, built)

    def _update(self, account: AccountRecord, order: OrderRecord, **changes: Any) -> None:
        """Change an order's fields, stamp the change and push the order (lock held)."""
        for name, value in changes.items():
            setattr(order, name, value)
        order.updated_ms = self.now_ms()
        self._push_order(account, order)

    def _push_order(self, account: AccountRecord, order: OrderRecord) -> None:
        def rows() -> list[Any]:
            record = account.closed_pnl_by_order.get(order.order_id)
            return [order_stream_view(order, record.closed_pnl if record else None)]

        self._push(account, "order", rows)

    def _push_position(self, account: AccountRecord, symbol: str) -> None:
        def rows() -> list[Any]:
            return [position_stream_view(row) for row in self._position_rows(account, symbol)]

        self._push(account, "position", rows)

    def _push_wallet(self, account: AccountRecord) -> None:
        self._push(account, "wallet", lambda: wallet_stream_view(self._figures(account)))

    # ----------------------------------------------------------------- admin and clock

    def now_ms(self) -> int:
        """The exchange clock in epoch ms, which stamps its records, including the steady
        clock skew (`clock_skew_ms`): `bot.clock`, the wall clock unless a replay runs the
        calendar on a virtual one. A burst of skew is not in it: Bybit's clock never jumps
        back, so its records' times only move forward."""
        return clock.now_ms() + self._faults.clock_skew_ms

    def signing_clock_ms(self) -> int:
        """The clock signed requests are checked against (recv_window, a stream's `expires`)
        and `/v5/market/time` reports: the wall clock clients sign on, with the steady skew
        and any burst of it (a client's clock drifting, as far as its requests can tell).
        Equal to `now_ms()` except under a replay's virtual calendar or in a burst."""
        return time.time_ns() // 1_000_000 + self._skew_ms()

    def _skew_ms(self) -> int:
        skew = self._faults.clock_skew_ms
        if self._engine.now_ms() < self._burst_until_ms:
            skew += self._burst_skew_ms
        return skew

    def add_account(self, spec: SimAccountSpec) -> None:
        """Open an account for a new API key, or (`spec.account_of`) add the key to an existing
        account, as Bybit lets an account hold several keys; an existing key raises
        DuplicateAccountError (an unknown `account_of`, ValueError)."""
        with self._lock:
            if spec.api_key in self._by_key:
                raise DuplicateAccountError(f"an account with api_key {spec.api_key!r} exists")
            if spec.account_of is not None:
                account = self._by_key.get(spec.account_of)
                if account is None:
                    raise ValueError(f"account_of {spec.account_of!r}: no account has that key")
                account.api_keys.append(spec.api_key)
            else:
                balance = (
                    spec.balance_usdt
                    if spec.balance_usdt is not None
                    else self._config.starting_balance_usdt
                )
                account = AccountRecord(
                    spec=spec,
                    user_id=self._next_user_id,
                    created_ms=self.now_ms(),
                    wallet_balance=balance,
                    api_keys=[spec.api_key],
                    hedge_symbols=set(self._config.instruments) if spec.hedge_mode else set(),
                )
                self._accounts[spec.api_key] = account
                self._next_user_id += 1
            self._by_key[spec.api_key] = account
            self._key_specs[spec.api_key] = spec

    def account_spec(self, api_key: str) -> SimAccountSpec | None:
        """The key's spec, or None when the exchange does not know the key."""
        with self._lock:
            return self._key_specs.get(api_key)

    def user_id(self, api_key: str) -> int | None:
        """The UID of the key's account (rate limits count per UID), or None."""
        with self._lock:
            account = self._by_key.get(api_key)
            return account.user_id if account is not None else None

    def resume_prices(self, prices: Mapping[str, Decimal]) -> list[str]:
        """Set listed symbols' last prices (a running walk goes on from them), before accounts
        resume; the symbols that are not listed, to be said."""
        with self._lock:
            skipped = [symbol for symbol in prices if symbol not in self._config.instruments]
            for symbol, price in prices.items():
                if symbol not in skipped:
                    spec = self._config.instruments[symbol]
                    self._resume_price(
                        symbol, max(to_tick(price, spec.tick_size, up=False), spec.tick_size)
                    )
            return [f"{symbol}: not listed here, its price is not resumed" for symbol in skipped]

    def resume_account(
        self,
        api_key: str,
        balance: Decimal | None,
        positions: Sequence[ResumedPosition],
        orders: Sequence[ResumedOrder] = (),
    ) -> list[str]:
        """Set an account back to what an earlier run of this simulator left (the bot's `sim`
        resumes from its journal, so that a restart does not find its positions gone): the
        wallet balance; each position with its leverage and TP/SL, as if opened at its entry
        price (no fill); each order under its own ids, a resting one back on the book (it
        trades if the price has come to it), a done one in the history. Call before any
        stream connects. What could not be resumed as given is returned, one line each (an
        unlisted symbol, a leverage over the instrument's, a TP/SL the price has passed)."""
        notes: list[str] = []
        with self._lock:
            account = self._account(api_key)
            if balance is not None:
                account.wallet_balance = balance
            for position in positions:
                if self._listed(position.symbol, notes):
                    self._resume_position(account, position, notes)
            for order in orders:
                if self._listed(order.symbol, notes):
                    self._resume_order(account, order, notes)
        return notes

    def _keep_resting(self, order: OrderRecord, notes: list[str]) -> None:
        """A limit order the exchange that held it had resting: the market was not at its
        price. Should the resumed price (the journal's last word) be there, it moves to the
        order's far side, so that the order rests again instead of filling at a stale
        price."""
        assert order.price is not None
        if not self._marketable(order):
            return
        spec = self._config.instruments[order.symbol]
        spread = order.price * self._config.spread_bps / _BPS
        if order.side == "Buy":
            price = to_tick(order.price + spread + spec.tick_size, spec.tick_size, up=True)
        else:
            price = max(
                to_tick(order.price - spread - spec.tick_size, spec.tick_size, up=False),
                spec.tick_size,
            )
        journaled = self._marks[order.symbol]
        notes.append(
            f"{order.symbol}: price resumed at {fmt(price)}, not {fmt(journaled)}, where the "
            f"resting {order.side} at {fmt(order.price)} would have filled"
        )
        self._resume_price(order.symbol, price)

    def _resume_price(self, symbol: str, price: Decimal) -> None:
        """A resumed price, the market's and the last trade's: the histories start again from
        it (lock held)."""
        self._marks[symbol] = self._last_prices[symbol] = price
        now = self.now_ms()
        self._history.restart(symbol, price, now)
        self._mark_history.restart(symbol, price, now)

    def _listed(self, symbol: str, notes: list[str]) -> bool:
        if symbol in self._config.instruments:
            return True
        notes.append(f"{symbol}: not listed here, its position and orders are not resumed")
        return False

    def _resume_position(
        self, account: AccountRecord, resumed: ResumedPosition, notes: list[str]
    ) -> None:
        """The symbol's leverage (a flat position's too: a resting order opens at it), and an
        open position with its TP/SL; a level the resumed price has already passed triggers
        at once, as it would have on the exchange that held it."""
        symbol = resumed.symbol
        if symbol in account.hedge_symbols:
            return
        spec = self._config.instruments[symbol]
        leverage = min(resumed.leverage, spec.max_leverage)
        if leverage != resumed.leverage:
            notes.append(f"{symbol}: leverage {fmt(resumed.leverage)} resumed as {fmt(leverage)}")
        if leverage >= 1:
            account.leverage[symbol] = leverage
        if resumed.size == 0:
            return
        now = self.now_ms()
        position = account.positions[symbol] = PositionRecord(
            symbol=symbol,
            size=resumed.size,
            avg_price=resumed.entry_price,
            take_profit=resumed.take_profit,
            stop_loss=resumed.stop_loss,
            created_ms=now,
            updated_ms=now,
            seq=self._next_seq(),
        )
        self._record_open_interest(symbol, abs(resumed.size), now)
        resumed_ids = {
            "TakeProfit": resumed.take_profit_order_id,
            "StopLoss": resumed.stop_loss_order_id,
        }
        self._sync_exits(account, symbol, resumed_ids)
        self._trigger_stops(account, position)

    def _resume_order(
        self, account: AccountRecord, resumed: ResumedOrder, notes: list[str]
    ) -> None:
        now = self.now_ms()
        done = resumed.filled_qty >= resumed.qty or resumed.price is None
        if resumed.filled_qty >= resumed.qty:
            status = "Filled"
        elif done:  # a market order that filled in part: the rest was cancelled
            status = "Cancelled"
        else:
            status = "PartiallyFilled" if resumed.filled_qty else "New"
        order = OrderRecord(
            order_id=resumed.order_id,
            order_link_id=resumed.order_link_id,
            symbol=resumed.symbol,
            side=resumed.side,
            order_type="Market" if resumed.price is None else "Limit",
            price=resumed.price,
            qty=resumed.qty,
            time_in_force="IOC" if resumed.price is None else "GTC",
            reduce_only=resumed.reduce_only,
            close_on_trigger=False,
            take_profit=resumed.take_profit,
            stop_loss=resumed.stop_loss,
            last_price_on_created=self._last_prices[resumed.symbol],
            created_ms=now,
            updated_ms=now,
            seq=self._next_seq(),
            status=status,
            cum_exec_qty=resumed.filled_qty,
            cum_exec_value=resumed.filled_qty * (resumed.avg_price or resumed.price or ZERO),
            arrived=done,
        )
        if not done:
            self._keep_resting(order, notes)
            self._submit(account, order)  # back on the book, resting
            return
        account.orders[order.order_id] = order
        if order.order_link_id:
            account.link_ids[order.order_link_id] = order.order_id

    def set_prices(self, prices: Mapping[str, Decimal | int | str]) -> None:
        """Move prices (all or none), stop any walk of those symbols, then fill crossed limit
        orders and trigger SL/TP.

        Raises ValueError naming the symbol for an unlisted symbol, a float, or a price that
        is not positive or above the instrument's maxPrice.
        """
        self.update_prices(prices)

    def check_prices(self, prices: Mapping[str, Decimal | int | str]) -> None:
        """Raise the ValueError `set_prices(prices)` would, without moving any price."""
        for symbol, raw in prices.items():
            if symbol not in self._config.instruments:
                raise ValueError(f"{symbol!r} is not a listed symbol")
            self._parse_price(symbol, raw)

    def update_prices(self, updates: Mapping[str, Any]) -> None:
        """Apply `POST /sim/prices` (all or none). Per symbol, one of:

        - a price (int, Decimal or decimal string): set it and stop any walk;
        - `{"walk": {...}}`: start a `PriceWalk` (seed, step_bps, interval_ms, drift_bps, start)
          in place of any running one;
        - `{"walk": null}`: stop the symbol's walk, keeping its price.

        Raises ValueError naming the symbol and the problem.
        """
        prices: dict[str, Decimal] = {}
        walks: dict[str, PriceWalk | None] = {}
        for symbol, raw in updates.items():
            if symbol not in self._config.instruments:
                raise ValueError(f"{symbol!r} is not a listed symbol")
            if isinstance(raw, dict):
                if set(raw) != {"walk"}:
                    raise ValueError(
                        f'{symbol}: an object must be {{"walk": {{...}}}} or {{"walk": null}}'
                    )
                walks[symbol] = self._parse_walk(symbol, raw["walk"])
            else:
                prices[symbol] = self._parse_price(symbol, raw)
        with self._lock:
            for symbol, price in prices.items():
                self._walks.pop(symbol, None)
                self._move(symbol, price)
            for symbol, walk in walks.items():
                self._walks.pop(symbol, None)
                if walk is not None:
                    self._start_walk(symbol, walk)

    def _parse_walk(self, symbol: str, raw: Any) -> PriceWalk | None:
        if raw is None:
            return None
        try:
            walk = PriceWalk.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "walk"
            raise ValueError(f"{symbol}: walk.{where}: {first['msg']}") from None
        if walk.start is not None:
            self._parse_price(symbol, walk.start)
        return walk

    def _parse_price(self, symbol: str, raw: Any) -> Decimal:
        if isinstance(raw, bool) or not isinstance(raw, Decimal | int | str):
            # Floats are refused so that no binary rounding ever reaches a price.
            raise ValueError(
                f"{symbol}: price must be a Decimal, int or decimal string, "
                f"not {type(raw).__name__}"
            )
        try:
            price = Decimal(raw)
        except InvalidOperation as exc:
            raise ValueError(f"{symbol}: {raw!r} is not a number") from exc
        if not price.is_finite() or price <= 0:
            raise ValueError(f"{symbol}: price must be a positive finite number, got {raw}")
        tick = self._config.instruments[symbol].tick_size
        if price < tick:  # as no order may be priced: a walk never goes below it either
            raise ValueError(f"{symbol}: price {raw} is below the minPrice {fmt(tick)}")
        ceiling = tick * MAX_PRICE_TICKS
        if price > ceiling:
            raise ValueError(f"{symbol}: price {raw} is above the maxPrice {fmt(ceiling)}")
        return price

    def prices(self) -> dict[str, Decimal]:
        """The market price of every listed symbol (the mark and index price, which walks and
        set prices move; a fill sets the last price only)."""
        with self._lock:
            return dict(self._marks)

    def walks(self) -> dict[str, dict[str, Any]]:
        """The running walks by symbol, JSON-ready."""
        with self._lock:
            return {
                symbol: walk.spec.model_dump(mode="json") for symbol, walk in self._walks.items()
            }

    def faults(self) -> SimFaults:
        """The faults in force."""
        return self._faults

    def set_faults(self, faults: SimFaults) -> None:
        """Replace the faults in force (clock skew applies from the next request)."""
        with self._lock:
            self._faults = faults
            self._burst_until_ms = 0

    def inject(self, fault: FaultName) -> bool:
        """One Bernoulli draw of the fault's probability from the seeded RNG; hits are counted."""
        with self._lock:
            return self._draw(fault)

    def maybe_start_clock_skew_burst(self) -> None:
        """Per /v5 request: outside a burst, maybe start one (the clock_skew_burst fault)."""
        with self._lock:
            if self._engine.now_ms() < self._burst_until_ms:
                return
            if self._draw("clock_skew_burst"):
                self._burst_until_ms = (
                    self._engine.now_ms() + self._faults.clock_skew_burst_window_ms
                )
                self._burst_skew_ms = self._faults.clock_skew_burst_ms

    def record(self, path: str, http_status: int | None, ret_code: int | None) -> None:
        """Count one request for /sim/stats with its answer's HTTP status and retCode.

        http_status is None when no answer reached the client (a dropped answer), ret_code is
        None when the answer carried no Bybit envelope (HTTP 403, 5xx).
        """
        with self._lock:
            self._requests_by_path[path] += 1
            if http_status is not None:
                self._answers_by_http_status[http_status] += 1
            if ret_code is not None:
                self._answers_by_ret_code[ret_code] += 1

    def record_signed(self, api_key: str, path: str) -> None:
        """Count one authenticated request under its key's note (never the key itself)."""
        with self._lock:
            spec = self._key_specs.get(api_key)
            self._signed[(spec.note if spec is not None else "?", path)] += 1

    def funding_paid(self) -> Decimal:
        """The funding all accounts paid so far, net of what they received (USDT)."""
        with self._lock:
            return self._funding_paid

    def stats(self) -> dict[str, Any]:
        """Request and answer counters plus a few totals, JSON-ready."""
        with self._lock:
            accounts = self._accounts.values()
            executions = sum(len(account.executions) for account in accounts)
            return {
                "requests_by_path": dict(sorted(self._requests_by_path.items())),
                "answers_by_ret_code": {
                    str(code): n for code, n in sorted(self._answers_by_ret_code.items())
                },
                "answers_by_http_status": {
                    str(code): n for code, n in sorted(self._answers_by_http_status.items())
                },
                "faults_injected": dict(sorted(self._faults_injected.items())),
                "signed_requests_by_key_note": _by_note(self._signed),
                "accounts": len(self._accounts),
                "orders": sum(len(account.orders) for account in accounts),
                "open_orders": sum(len(account.open_orders) for account in accounts),
                "executions": executions,
                "fills": executions - self._funding_payments,  # the executions of orders
                "pending_events": self._engine.pending,
                "walks": sorted(self._walks),
            }

    def orders(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """Every order (of one key, or of all), oldest first, each with its account's `userID`
        and key `note` (the bot's key name): never the API key itself, which is a credential.
        The admin view ignores query lag: an order shows from its acknowledgement."""
        with self._lock:
            if api_key is None:
                accounts = list(self._accounts.values())
            else:
                accounts = [self._by_key[api_key]] if api_key in self._by_key else []
            rows = [
                (
                    order.seq,
                    {**order_view(order), "userID": account.user_id, "note": account.spec.note},
                )
                for account in accounts
                for order in account.orders.values()
            ]
        return [row for _, row in sorted(rows, key=lambda item: item[0])]

    def all_positions(self) -> list[dict[str, Any]]:
        """Every account's positions with a size, as `/v5/position/list` rows, each with its
        account's `userID` and key `note`, as `orders` shows them."""
        with self._lock:
            return [
                {**row, "userID": account.user_id, "note": account.spec.note}
                for account in self._accounts.values()
                for symbol, position in sorted(account.positions.items())
                if position.size != 0
                for row in self._position_rows(account, symbol)
            ]

    # ----------------------------------------------------------------- public endpoints

    def server_time(self, params: NoParams) -> dict[str, Any]:
        """`GET /v5/market/time`."""
        # The clock clients sign on (see signing_clock_ms), to the nanosecond.
        now_ns = time.time_ns() + self._skew_ms() * 1_000_000
        return {"timeSecond": str(now_ns // 1_000_000_000), "timeNano": str(now_ns)}

    def instruments_info(self, params: MarketParams) -> dict[str, Any]:
        """`GET /v5/market/instruments-info`; other categories and statuses list nothing,
        and so does a symbol not listed (Bybit answers it retCode 0 with an empty list)."""
        symbols: list[str] = []
        if params.category == "linear" and params.status in {None, "Trading"}:
            symbols = [
                symbol
                for symbol in sorted(self._config.instruments)
                if params.symbol in (None, symbol)
                and (params.base_coin is None or symbol == params.base_coin + SETTLE_COIN)
            ]
        rows = [instrument_view(symbol, self._config.instruments[symbol]) for symbol in symbols]
        page, cursor = _page(rows, params.limit, params.cursor)
        return {"category": params.category, "list": page, "nextPageCursor": cursor}

    def price_limit(self, params: PriceLimitParams) -> dict[str, Any]:
        """`GET /v5/market/price-limit`: the highest price a buy may trade at now, and the
        lowest a sell may (linear only: the simulator lists no other market)."""
        if params.category != "linear":
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"Not supported symbols: the simulator lists no {params.category} market",
            )
        with self._lock:
            limits = self._price_limits(params.symbol)
        return {**price_limit_view(params.symbol, limits), "ts": str(self.now_ms())}

    def _price_limits(self, symbol: str) -> PriceLimits:
        """Bybit's order price limit of a perpetual (lock held; an unlisted symbol: 10001):

            highest buy = min(mark x (1 + Y), max(index, mark x (1 + X) + max(0, premium)))
            lowest sell = max(mark x (1 - Y), min(index, mark x (1 - X) + min(0, premium)))

        X and Y are the instrument's ratios, the premium the book's mid price less the mark
        (Bybit's weight on it, alpha, 1 by default, is 1 here; Bybit averages 30 s of premium, the
        simulator takes the moment's). The simulator's mark and index are the market's price
        and its book is symmetric around it, so the premium is zero but for the book's rounding to
        the tick and the limits come to mark x (1 +- X). Rounded inwards to the tick."""
        spec = self._instrument(symbol)
        mark = self._marks[symbol]
        bid, ask = self._quote(symbol)
        premium = (bid + ask) / 2 - mark
        x, y = spec.price_limit_ratio_x, spec.price_limit_ratio_y
        buy = min(mark * (1 + y), max(mark, mark * (1 + x) + max(ZERO, premium)))
        sell = max(mark * (1 - y), min(mark, mark * (1 - x) + min(ZERO, premium)))
        tick = spec.tick_size
        return PriceLimits(
            buy=to_tick(buy, tick, up=False), sell=max(to_tick(sell, tick, up=True), tick)
        )

    def risk_limit(self, params: RiskLimitParams) -> dict[str, Any]:
        """`GET /v5/market/risk-limit`: one tier per listed symbol (the simulator has one);
        inverse lists nothing."""
        if params.category != "linear":
            return {"category": params.category, "list": [], "nextPageCursor": ""}
        symbols = self._symbols(params.symbol)
        rows = [risk_limit_view(symbol, self._config.instruments[symbol]) for symbol in symbols]
        return {"category": "linear", "list": rows, "nextPageCursor": ""}  # one page

    def tickers(self, params: MarketParams) -> dict[str, Any]:
        """`GET /v5/market/tickers`; other categories list nothing, and a symbol named in one
        is 10001 (Bybit answers a ticker or refuses the symbol, never an empty list for it:
        a client reading the first row, as ccxt's `fetch_greeks` does, would crash)."""
        if params.category != "linear":
            if params.symbol is not None:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"Not supported symbols: the simulator lists no {params.category} market",
                )
            return {"category": params.category, "list": []}
        now = self.now_ms()
        with self._lock:
            rows = [self._ticker(symbol, now) for symbol in self._symbols(params.symbol)]
        return {"category": "linear", "list": rows}

    def orderbook(self, params: OrderbookParams) -> dict[str, Any]:
        """`GET /v5/market/orderbook`: a synthetic book around the bid and ask."""
        if params.category != "linear":
            now = self.now_ms()
            return {"s": params.symbol, "b": [], "a": [], "ts": now, "u": 0, "seq": 0, "cts": now}
        return self.book(params.symbol, params.limit)

    def book(self, symbol: str, depth: int) -> dict[str, Any]:
        """The symbol's synthetic book, `depth` levels a side (`s`, `b`, `a`, `ts`, `u`,
        `seq`, `cts`, as the REST orderbook answers it); `u` and `seq` count price changes."""
        with self._lock:
            spec = self._instrument(symbol)
            bid, ask = self._quote(symbol)
            update_id = self._book_updates
        return orderbook_view(symbol, bid, ask, spec, depth, self.now_ms(), update_id)

    def live_candles(self, symbol: str, interval: str) -> list[list[str]]:
        """The open `interval` candle of the symbol and the one before it, newest first, as
        `/v5/market/kline` rows ([start, open, high, low, close, volume, turnover])."""
        return self._candles(symbol, interval, None, None, 2)

    def candle_end(self, interval: str, start: int) -> int:
        """The last ms of the `interval` candle that opened at `start`."""
        return candle_after(interval, start) - 1

    def kline(self, params: KlineParams) -> dict[str, Any]:
        """`GET /v5/market/kline`: the simulator's price history (`bot.sim.candles`)."""
        if params.category != "linear":
            return {"category": params.category, "symbol": params.symbol, "list": []}
        rows = self._candles(params.symbol, params.interval, params.start, params.end, params.limit)
        return {"category": "linear", "symbol": params.symbol, "list": rows}

    def mark_price_kline(self, params: MarkKlineParams) -> dict[str, Any]:
        """`GET /v5/market/mark-price-kline`: the mark price's candles (no volume, no
        turnover): the market's price as walks and set prices moved it, not our fills."""
        if params.category != "linear":
            return {"category": params.category, "symbol": params.symbol, "list": []}
        rows = self._candles(
            params.symbol, params.interval, params.start, params.end, params.limit, mark=True
        )
        return {"category": "linear", "symbol": params.symbol, "list": mark_kline_rows(rows)}

    def index_price_kline(self, params: IndexKlineParams) -> dict[str, Any]:
        """`GET /v5/market/index-price-kline`: the simulator's index price is its mark price
        (as tickers report it), so these are the mark-price candles; inverse lists nothing."""
        if params.category != "linear":
            return {"category": params.category, "symbol": params.symbol, "list": []}
        rows = self._candles(
            params.symbol, params.interval, params.start, params.end, params.limit, mark=True
        )
        return {"category": "linear", "symbol": params.symbol, "list": mark_kline_rows(rows)}

    def premium_index_price_kline(self, params: PremiumKlineParams) -> dict[str, Any]:
        """`GET /v5/market/premium-index-price-kline`: with one price for mark, index and the
        book, the premium is zero, and the funding rate tickers report is the interest
        rate's alone (0.01 %), as Bybit's formula gives for a zero premium."""
        with self._lock:
            self._instrument(params.symbol)
        starts = candle_starts(
            params.interval, params.start, params.end, params.limit, self.now_ms(), LAUNCH_TIME_MS
        )
        return {
            "category": "linear",
            "symbol": params.symbol,
            "list": premium_kline_rows(starts),
        }

    def _candles(
        self,
        symbol: str,
        interval: str,
        start: int | None,
        end: int | None,
        limit: int,
        *,
        mark: bool = False,
    ) -> list[list[str]]:
        """Kline rows of the trades, or (`mark`) of the mark price."""
        starts = candle_starts(interval, start, end, limit, self.now_ms(), LAUNCH_TIME_MS)
        with self._lock:
            spec = self._instrument(symbol)
            history = self._mark_history if mark else self._history
            return history.candles(symbol, interval, starts, spec.tick_size)

    def recent_trades(self, params: RecentTradeParams) -> dict[str, Any]:
        """`GET /v5/market/recent-trade`: the symbol's latest fills, of every account, newest
        first; other categories list nothing."""
        if params.symbol is None and params.category != "option":
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: symbol is required for category {params.category}",
            )
        spot_limit = params.limit if params.category == "spot" else None
        if spot_limit is not None and spot_limit > _SPOT_TRADES_MAX:
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: limit {spot_limit} is outside [1, {_SPOT_TRADES_MAX}] for spot",
            )
        if params.category != "linear" or params.symbol is None:
            return {"category": params.category, "list": []}
        limit = params.limit if params.limit is not None else _TRADES_DEFAULT
        with self._lock:
            self._instrument(params.symbol)
            latest = itertools.islice(reversed(self._public_trades[params.symbol]), limit)
            rows = [public_trade_view(execution) for execution in latest]
        return {"category": "linear", "list": rows}

    def open_interest(self, params: OpenInterestParams) -> dict[str, Any]:
        """`GET /v5/market/open-interest`: one point per interval, stamped with its start and
        holding what all accounts held when it closed (or at endTime; the interval still open:
        now, what tickers report), newest first, from the listing (or startTime) to now (or
        endTime)."""
        empty = {"category": params.category, "symbol": params.symbol, "list": []}
        if params.category != "linear":
            return {**empty, "nextPageCursor": ""}
        length = OPEN_INTEREST_INTERVALS_MS[params.interval_time]
        first, last = _history_bounds(params.start_time, params.end_time, self.now_ms())
        newest = last // length * length
        oldest = -(-first // length) * length
        count = max((newest - oldest) // length + 1, 0)
        offset = _cursor_offset(params.cursor)
        end = min(offset + params.limit, count)
        stamps = [newest - index * length for index in range(offset, end)]
        with self._lock:
            self._instrument(params.symbol)
            times, values = self._open_interest_history[params.symbol]
            rows = []
            for stamp in stamps:
                held = bisect.bisect_right(times, min(stamp + length - 1, last))
                rows.append(open_interest_view(values[held - 1] if held else ZERO, stamp))
        return {**empty, "list": rows, "nextPageCursor": str(end) if end < count else ""}

    def funding_history(self, params: FundingHistoryParams) -> dict[str, Any]:
        """`GET /v5/market/funding/history`: the settlements every 8 h at the rate tickers
        publish, newest first, up to endTime (or now); a lone startTime is refused."""
        if params.start_time is not None and params.end_time is None:
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: startTime needs endTime (Bybit refuses a lone startTime)",
            )
        if params.category != "linear":
            return {"category": params.category, "list": []}
        with self._lock:
            self._instrument(params.symbol)
        first, last = _history_bounds(params.start_time, params.end_time, self.now_ms())
        newest = last // _FUNDING_INTERVAL_MS * _FUNDING_INTERVAL_MS
        count = min(max((newest - first) // _FUNDING_INTERVAL_MS + 1, 0), params.limit)
        rows = [
            funding_rate_view(params.symbol, newest - index * _FUNDING_INTERVAL_MS)
            for index in range(count)
        ]
        return {"category": "linear", "list": rows}

    def system_status(self, params: SystemStatusParams) -> dict[str, Any]:
        """`GET /v5/system/status`: the simulator never schedules maintenance, so whatever the
        filters, nothing is listed."""
        return {"list": []}

    # ----------------------------------------------------------------- trading

    def place_order(self, api_key: str, params: PlaceOrderParams) -> dict[str, Any]:
        """`POST /v5/order/create`: check, acknowledge, and hand the order to the engine.

        Parameter rules, then the duplicate check, then account rules: a retry of an accepted
        order is answered 110072 whatever has happened to the account since. The answer is
        only `{orderId, orderLinkId}`; the order trades `market_fill_delay_ms` later.
        """
        with self._lock:
            order = self._place(api_key, params)
            return {"orderId": order.order_id, "orderLinkId": order.order_link_id}

    def place_batch(self, api_key: str, params: BatchPlaceParams, granted: int) -> BatchAnswer:
        """`POST /v5/order/create-batch`: each item as `/v5/order/create` would take it, in
        order; one that fails (or lies beyond the `granted` rate-limit budget: 10006) fails
        alone. The result lists a row per item, `retExtInfo` a code per item."""
        return self._run_batch(
            api_key, params, granted, PlaceOrderParams, self._place, batch_place_row
        )

    def _place(self, api_key: str, params: PlaceOrderParams) -> OrderRecord:
        """Check and book one new order (lock held); SimError with Bybit's code otherwise."""
        account = self._account(api_key)  # settles a boundary passed: its fills come after
        self._require(api_key, "Order")
        spec = self._instrument(params.symbol)
        self._check_position_idx(account, params.symbol, params.position_idx)
        qty = self._order_qty(account, params, spec)
        limit_price = self._check_order_params(params, qty)
        if params.order_link_id is not None and params.order_link_id in account.link_ids:
            raise SimError(RetCode.DUPLICATE_ORDER_LINK_ID, "OrderLinkedID is duplicate")
        if params.trigger_price is not None:
            return self._place_conditional(account, params, spec, qty, limit_price)
        if limit_price is not None:  # Bybit's futures default: moved in to the price limit
            limits = self._price_limits(params.symbol)
            limit_price = (
                min(limit_price, limits.buy)
                if params.side == "Buy"
                else max(limit_price, limits.sell)
            )
        reference = limit_price if limit_price is not None else self._marks[params.symbol]
        self._check_tpsl(params, reference)
        self._check_active_orders(account, params.symbol)
        if params.reduce_only:
            qty = self._reducible_qty(account, params.symbol, params.side, qty)
        else:
            self._check_min_value(spec, qty, reference)
            self._check_available(account, params.symbol, params.side, qty, reference)
            self._check_position_limit(account, params.symbol, params.side, qty, reference, spec)
        lag = self._config.query_lag_ms
        if self._draw("order_visibility_lag"):
            lag = max(lag, self._faults.order_visibility_lag_ms)
        order = self._new_order(params, qty, limit_price, lag)
        self._submit(account, order)
        return order

    def _new_order(
        self,
        params: PlaceOrderParams,
        qty: Decimal,
        limit_price: Decimal | None,
        lag_ms: int,
        **kind: Any,
    ) -> OrderRecord:
        """A new order of `params` (`kind`: the fields of a conditional one), shown by queries
        `lag_ms` from now."""
        now = self.now_ms()
        return OrderRecord(
            order_id=str(uuid.uuid4()),
            order_link_id=params.order_link_id or "",
            symbol=params.symbol,
            side=params.side,
            order_type=params.order_type,
            price=limit_price,
            qty=qty,
            time_in_force="IOC" if limit_price is None else params.time_in_force or "GTC",
            reduce_only=params.reduce_only,
            close_on_trigger=params.close_on_trigger,
            take_profit=params.take_profit or None,
            stop_loss=params.stop_loss or None,
            slippage_tolerance_type=params.slippage_tolerance_type or "UNKNOWN",
            slippage_tolerance=params.slippage_tolerance or ZERO,
            smp_type=params.smp_type or "None",
            tp_trigger_by=params.tp_trigger_by or "LastPrice",
            sl_trigger_by=params.sl_trigger_by or "LastPrice",
            partial_tpsl=params.tpsl_mode == "Partial",
            tp_limit_price=params.tp_limit_price if params.tp_order_type == "Limit" else None,
            sl_limit_price=params.sl_limit_price if params.sl_order_type == "Limit" else None,
            last_price_on_created=self._last_prices[params.symbol],
            created_ms=now,
            updated_ms=now,
            seq=self._next_seq(),
            visible_from_ms=self._engine.now_ms() + lag_ms,
            **kind,
        )

    def _place_conditional(
        self,
        account: AccountRecord,
        params: PlaceOrderParams,
        spec: InstrumentSpec,
        qty: Decimal,
        limit_price: Decimal | None,
    ) -> OrderRecord:
        """Book a conditional order (lock held): Untriggered, holding no margin, until the
        price reaches its trigger (`_fire_conditionals`) from its `triggerDirection` (required,
        as on Bybit's linear contracts). A reduce-only one is checked against the position
        when it fires, not now: the position may change before."""
        trigger = params.trigger_price
        assert trigger is not None
        direction = params.trigger_direction
        if direction is None:  # Bybit's answer for linear, where it is required
            raise SimError(RetCode.PARAMS_ERROR, "params error: TriggerDirection invalid")
        self._check_price("triggerPrice", params.symbol, trigger)
        watched = params.trigger_by or "LastPrice"
        self._check_trigger(params.symbol, direction, trigger, watched)
        waiting = sum(
            1
            for o in account.conditional_orders.values()
            if o.symbol == params.symbol and o.stop_order_type == "Stop"
        )
        if waiting >= _CONDITIONAL_ORDERS_PER_SYMBOL:
            raise SimError(
                RetCode.TOO_MANY_CONDITIONAL_ORDERS,
                "The number of stop orders exceeds maximum limit allowed",
            )
        reference = limit_price if limit_price is not None else trigger
        self._check_tpsl(params, reference)
        if not params.reduce_only:  # as for a plain order: closing any amount is allowed
            self._check_min_value(spec, qty, reference)
        order = self._new_order(
            params,
            qty,
            limit_price,
            self._config.query_lag_ms,
            status="Untriggered",
            stop_order_type="Stop",
            create_type="CreateByStopOrder",
            trigger_price=trigger,
            trigger_direction=direction,
            trigger_by=watched,
        )
        account.orders[order.order_id] = order
        account.conditional_orders[order.order_id] = order
        if order.order_link_id:
            account.link_ids[order.order_link_id] = order.order_id
        self._push_order(account, order)
        return order

    def _check_trigger(self, symbol: str, direction: int, trigger: Decimal, watched: str) -> None:
        """A trigger on the side of the price it watches that its direction says (Bybit:
        110092 / 110093)."""
        price = self._watched(symbol, watched)
        if direction == 1 and trigger <= price:
            raise SimError(
                RetCode.TRIGGER_NOT_ABOVE_PRICE,
                f"expect Rising, but trigger_price[{fmt(trigger)}] <= current[{fmt(price)}]"
                f"??{watched}",
            )
        if direction == 2 and trigger >= price:
            raise SimError(
                RetCode.TRIGGER_NOT_BELOW_PRICE,
                f"expect Falling, but trigger_price[{fmt(trigger)}] >= current[{fmt(price)}]"
                f"??{watched}",
            )

    def _watched(self, symbol: str, trigger_by: str) -> Decimal:
        """The price a trigger watches (`triggerBy`): the last trade's for LastPrice, else the
        market's (the simulator's mark price is its index price)."""
        return self._last_prices[symbol] if trigger_by == "LastPrice" else self._marks[symbol]

    def _fire_conditionals(self, account: AccountRecord, symbol: str) -> None:
        """Send each conditional order of `symbol` whose trigger the price it watches has
        reached, as Bybit does: Untriggered -> Triggered -> New (one orderId), then it trades
        as an order of its type; without the margin to open it, it is cancelled."""
        for order in [o for o in account.conditional_orders.values() if o.symbol == symbol]:
            if order.order_id not in account.conditional_orders:
                continue  # the other half of a partial TP/SL that fired just now
            assert order.trigger_price is not None
            price = self._watched(symbol, order.trigger_by)
            rising = order.trigger_direction == 1
            if price < order.trigger_price if rising else price > order.trigger_price:
                continue
            del account.conditional_orders[order.order_id]
            if order.stop_order_type in _PARTIAL_EXITS:
                self._end_pair_of(account, order, _PARTIAL_EXITS[order.stop_order_type])
            self._mark_triggered(account, order)
            if not order.reduce_only:
                reference = order.price if order.price is not None else price
                try:
                    self._check_available(account, symbol, order.side, order.qty, reference)
                except SimError:
                    self._update(account, order, status="Cancelled", reject_reason="EC_Others")
                    continue
            self._send_triggered(account, order)

    def _amend_conditional(
        self, account: AccountRecord, order: OrderRecord, params: AmendOrderParams
    ) -> None:
        """Change a conditional order before it fires: its trigger (on the side of the price
        its direction says), qty, limit price or attached TP/SL."""
        changes = self._amendment(account, order, params, triggered_by_price=True)
        self._update(account, order, **changes)

    def _amendment(
        self,
        account: AccountRecord,
        order: OrderRecord,
        params: AmendOrderParams,
        *,
        triggered_by_price: bool,
    ) -> dict[str, Any]:
        """What `params` change of the account's `order`, each value checked
        (`triggered_by_price`: a conditional order, whose trigger may move); 10001 when
        nothing changes."""
        changes: dict[str, Any] = {}
        for name, attribute, value in (
            ("triggerPrice", "trigger_price", params.trigger_price),
            ("triggerBy", "trigger_by", params.trigger_by),
        ):
            if value is not None and value != getattr(order, attribute):
                if not triggered_by_price:
                    raise SimError(
                        RetCode.PARAMS_ERROR,
                        f"params error: {name} amends conditional and TP/SL orders only",
                    )
                changes[attribute] = value
        if changes:  # the trigger, as amended, still ahead of the price it watches
            trigger = changes.get("trigger_price", order.trigger_price)
            assert trigger is not None  # a conditional order has one
            self._check_price("triggerPrice", order.symbol, trigger)
            watched = changes.get("trigger_by", order.trigger_by)
            self._check_trigger(order.symbol, order.trigger_direction, trigger, watched)
        if params.qty is not None and params.qty != order.qty:
            self._check_qty(order.symbol, params.qty, market=order.order_type == "Market")
            if params.qty <= order.cum_exec_qty:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"params error: qty {fmt(params.qty)} must exceed the executed qty "
                    f"{fmt(order.cum_exec_qty)}",
                )
            qty = params.qty
            if order.reduce_only and not triggered_by_price:
                # As on create: what is left to fill is trimmed to what the order can still
                # close (a conditional one is held against the position when it fires).
                leaves = self._reducible_qty(
                    account, order.symbol, order.side, qty - order.cum_exec_qty, besides=order
                )
                qty = order.cum_exec_qty + leaves
            if qty != order.qty:
                changes["qty"] = qty
        if params.price is not None and params.price != order.price:
            if order.price is None:
                raise SimError(
                    RetCode.PARAMS_ERROR, "params error: a market order's price cannot be amended"
                )
            self._check_price("price", order.symbol, params.price)
            changes["price"] = params.price
            if not triggered_by_price:  # as on create: moved in to the order price limit
                limits = self._price_limits(order.symbol)
                clamp = min if order.side == "Buy" else max
                changes["price"] = clamp(params.price, limits.of(order.side))
        changes |= self._tpsl_changes(
            order, params, lambda name, level: self._check_price(name, order.symbol, level)
        )
        for name, attribute, value in (
            ("tpLimitPrice", "tp_limit_price", params.tp_limit_price),
            ("slLimitPrice", "sl_limit_price", params.sl_limit_price),
        ):
            current = getattr(order, attribute)
            if value is not None and current is not None and value != current:
                self._check_price(name, order.symbol, value)
                changes[attribute] = value
        if not changes:
            raise SimError(
                RetCode.PARAMS_ERROR,
                "The order remains unchanged as the parameters entered match the existing ones.",
            )
        self._check_amended(order, changes)
        return changes

    def _check_amended(self, order: OrderRecord, changes: Mapping[str, Any]) -> None:
        """The order as amended keeps the rules its creation had to meet: no TP/SL on a
        reduce-only order, each level on its side of the order's base price (its limit
        price, else its trigger, else the last price), and the minimum order value."""
        amended = {
            name: changes.get(name, getattr(order, name))
            for name in ("price", "qty", "trigger_price", "take_profit", "stop_loss")
        }
        levels = (("takeProfit", amended["take_profit"]), ("stopLoss", amended["stop_loss"]))
        if order.reduce_only and any(
            changes.get(name) is not None for name in ("take_profit", "stop_loss")
        ):
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: takeProfit/stopLoss cannot be set on a reduceOnly order",
            )
        reference = next(
            (value for value in (amended["price"], amended["trigger_price"]) if value is not None),
            self._marks[order.symbol],
        )
        for name, level in levels:
            if level is not None:
                self._check_tpsl_level(name, order.symbol, level, order.side, reference, "order")
        if not order.reduce_only and changes.keys() & {"price", "qty"}:
            self._check_min_value(self._instrument(order.symbol), amended["qty"], reference)

    def _end_conditional(
        self, account: AccountRecord, order: OrderRecord, *, cancel_type: str = "CancelByUser"
    ) -> None:
        """A conditional order cancelled before it fired: Deactivated (Bybit's UTA)."""
        del account.conditional_orders[order.order_id]
        self._update(account, order, status="Deactivated", cancel_type=cancel_type)

    def _end_pair_of(self, account: AccountRecord, order: OrderRecord, cancel_type: str) -> None:
        """The other half of a partial TP/SL pair ends with `order` (fired or cancelled), if
        it still waits."""
        partner = account.conditional_orders.get(order.paired_with or "")
        if partner is not None:
            self._end_conditional(account, partner, cancel_type=cancel_type)

    def amend_order(self, api_key: str, params: AmendOrderParams) -> dict[str, Any]:
        """`POST /v5/order/amend`: change qty, price, takeProfit or stopLoss of an open order,
        or also the triggerPrice of a conditional order that has not fired (a position's TP/SL
        order: its triggerPrice only).

        A limit order amended into the market trades as taker when the engine sees it.
        """
        with self._lock:
            order = self._amend(api_key, params)
            return {"orderId": order.order_id, "orderLinkId": order.order_link_id}

    def amend_batch(self, api_key: str, params: BatchAmendParams, granted: int) -> BatchAnswer:
        """`POST /v5/order/amend-batch`: each item as `/v5/order/amend` would take it, for open
        orders only (Bybit: "Conditional orders are not supported"); one that fails (or lies
        beyond the `granted` rate-limit budget: 10006) fails alone."""
        return self._run_batch(
            api_key, params, granted, AmendOrderParams, self._amend_open, batch_cancel_row
        )

    def _amend(self, api_key: str, params: AmendOrderParams) -> OrderRecord:
        """Amend one open order, conditional order or position TP/SL order (lock held);
        SimError with Bybit's code otherwise."""
        account = self._order_owner(api_key, params)
        exit_order = self._waiting_exit(account, params.symbol, params.order_id)
        if exit_order is not None:
            self._amend_exit(account, exit_order, params)
            return exit_order
        conditional = self._waiting_conditional(
            account, params.symbol, params.order_id, params.order_link_id
        )
        if conditional is not None:
            self._amend_conditional(account, conditional, params)
            return conditional
        return self._amend_resting(account, params)

    def _amend_open(self, api_key: str, params: AmendOrderParams) -> OrderRecord:
        """Amend one open (resting) order, as amend-batch does (lock held); SimError with
        Bybit's code otherwise."""
        return self._amend_resting(self._order_owner(api_key, params), params)

    def _order_owner(
        self, api_key: str, params: AmendOrderParams | CancelOrderParams
    ) -> AccountRecord:
        """The account of a key that may change its orders, asked to change one (named by
        orderId or orderLinkId) in a listed symbol; SimError with Bybit's code otherwise."""
        account = self._account(api_key)
        self._require(api_key, "Order")
        self._instrument(params.symbol)
        if params.order_id is None and params.order_link_id is None:
            raise SimError(RetCode.PARAMS_ERROR, "params error: orderId or orderLinkId is required")
        return account

    def _amend_resting(self, account: AccountRecord, params: AmendOrderParams) -> OrderRecord:
        """Change an open order's qty, price, takeProfit or stopLoss (lock held)."""
        order = self._open_order(account, params.symbol, params.order_id, params.order_link_id)
        if order is None or order.order_type == "Market":
            raise SimError(RetCode.ORDER_NOT_EXISTS, "order not exists or too late to replace")
        changes = self._amendment(account, order, params, triggered_by_price=False)
        if not order.reduce_only and order.price is not None:
            # Only what the amendment adds to the order's value needs margin.
            price: Decimal = changes.get("price", order.price)
            qty: Decimal = changes.get("qty", order.qty)
            extra = (qty * price - order.qty * order.price) / self._leverage(account, order.symbol)
            if extra > 0 and extra > self._figures(account).available:
                raise SimError(
                    RetCode.INSUFFICIENT_AVAILABLE_BALANCE, "ab not enough for new order"
                )
        self._update(account, order, **changes)
        self._push_position(account, order.symbol)  # on every amend, as on a create
        self._push_wallet(account)
        if order.arrived and ("price" in changes or "qty" in changes):
            order.arrived = False
            self._engine.schedule(
                self._config.market_fill_delay_ms, lambda: self._arrive(account, order)
            )
        return order

    def _amend_exit(
        self, account: AccountRecord, order: OrderRecord, params: AmendOrderParams
    ) -> None:
        """Move a position's TP/SL order: its triggerPrice is the position's level and its
        triggerBy the price the level watches (checked as `/v5/position/trading-stop` checks
        a level); nothing else of it can be amended, and a trailing stop's level follows the
        price (its distance is the position's)."""
        if order.stop_order_type == "TrailingStop":
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: a trailing stop's order is not amended: set its distance with "
                "/v5/position/trading-stop",
            )
        if (params.trigger_price is None and params.trigger_by is None) or any(
            value is not None
            for value in (params.qty, params.price, params.take_profit, params.stop_loss)
        ):
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: a TP/SL order amends its triggerPrice and triggerBy only (or "
                "use /v5/position/trading-stop)",
            )
        position = account.positions[order.symbol]  # an Untriggered exit has a position
        kind, attribute = order.stop_order_type, dict(_EXIT_LEVELS)[order.stop_order_type]
        kept = getattr(position, attribute)
        level = params.trigger_price if params.trigger_price is not None else kept
        watched = params.trigger_by or order.trigger_by
        if (level, watched) == (kept, order.trigger_by):
            raise SimError(
                RetCode.PARAMS_ERROR,
                "The order remains unchanged as the parameters entered match the existing ones.",
            )
        self._check_tpsl_level(
            "takeProfit" if kind == "TakeProfit" else "stopLoss",
            order.symbol,
            level,
            "Buy" if position.size > 0 else "Sell",
            self._watched(order.symbol, watched),
            "position",
        )
        setattr(position, attribute, level)
        setattr(position, _EXIT_TRIGGER_BY[kind], watched)
        position.updated_ms = self.now_ms()
        self._push_position(account, order.symbol)
        self._sync_exits(account, order.symbol)

    def cancel_order(self, api_key: str, params: CancelOrderParams) -> dict[str, Any]:
        """`POST /v5/order/cancel` by orderId (preferred) or orderLinkId."""
        with self._lock:
            order = self._cancel(api_key, params)
            return {"orderId": order.order_id, "orderLinkId": order.order_link_id}

    def cancel_batch(self, api_key: str, params: BatchCancelParams, granted: int) -> BatchAnswer:
        """`POST /v5/order/cancel-batch`: each item as `/v5/order/cancel` would take it; one
        that fails (or lies beyond the `granted` rate-limit budget: 10006) fails alone."""
        return self._run_batch(
            api_key, params, granted, CancelOrderParams, self._cancel, batch_cancel_row
        )

    def _run_batch(
        self,
        api_key: str,
        batch: BatchPlaceParams | BatchCancelParams | BatchAmendParams,
        granted: int,
        model: type[M],
        apply: Callable[[str, M], OrderRecord],
        row: Callable[[OrderRecord | None, str, str], dict[str, str]],
    ) -> BatchAnswer:
        """Run a batch's items in order, each as the single endpoint's `model` (the batch's
        category applies) through `apply`: each succeeds or fails alone, and those past the
        `granted` rate-limit budget fail 10006. An unknown key, or one without the right, fails
        the whole batch. A result row and a retExtInfo code per item, in the items' order."""
        rows: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        with self._lock:
            self._account(api_key)
            self._require(api_key, "Order")
            for index, item in enumerate(batch.request):
                order: OrderRecord | None = None
                outcome = _outcome(RetCode.TOO_MANY_VISITS, "Too many visits!")
                if index < granted:
                    try:
                        order = apply(
                            api_key, parse_params(model, {**item, "category": batch.category})
                        )
                        outcome = _outcome(RetCode.OK, "OK")
                    except SimError as exc:
                        outcome = _outcome(exc.ret_code, exc.ret_msg)
                rows.append(row(order, _echo(item, "symbol"), _echo(item, "orderLinkId")))
                outcomes.append(outcome)
        return {"list": rows}, {"list": outcomes}

    def _cancel(self, api_key: str, params: CancelOrderParams) -> OrderRecord:
        """Cancel one open order (lock held); SimError with Bybit's code otherwise."""
        account = self._order_owner(api_key, params)
        exit_order = self._waiting_exit(account, params.symbol, params.order_id)
        if exit_order is not None:
            self._cancel_exit(account, exit_order)
            return exit_order
        conditional = self._waiting_conditional(
            account, params.symbol, params.order_id, params.order_link_id
        )
        if conditional is not None:
            self._end_conditional(account, conditional)
            self._end_pair_of(account, conditional, "CancelByUser")
            return conditional
        order = self._open_order(account, params.symbol, params.order_id, params.order_link_id)
        if order is None:
            raise SimError(RetCode.ORDER_NOT_EXISTS, "order not exists or too late to cancel")
        self._close(account, order, cancel_type="CancelByUser")
        return order

    def cancel_all(self, api_key: str, params: CancelAllParams) -> dict[str, Any]:
        """`POST /v5/order/cancel-all` by symbol, else baseCoin, else settleCoin (one of them
        is required; with several, Bybit takes the first)."""
        with self._lock:
            account = self._account(api_key)
            self._require(api_key, "Order")
            if params.symbol is None and params.base_coin is None and params.settle_coin is None:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    "params error: symbol, baseCoin or settleCoin is required for linear",
                )
            if params.symbol is not None:
                self._instrument(params.symbol)
            selected = [
                order
                for order in self._waiting_orders(account)
                if _selects(params.order_filter, order)
                and (
                    params.stop_order_type is None
                    or params.order_filter != "StopOrder"
                    or order.stop_order_type == params.stop_order_type
                )
                and _in_scope(order.symbol, params.symbol, params.base_coin, params.settle_coin)
            ]
            for order in selected:
                if order.order_id in account.conditional_orders:
                    self._end_conditional(account, order)
                elif order.status == "Untriggered":
                    self._cancel_exit(account, order)
                else:
                    self._close(account, order, cancel_type="CancelByUser")
            return {
                "list": [
                    {"orderId": order.order_id, "orderLinkId": order.order_link_id}
                    for order in selected
                ],
                "success": "1",
            }

    def set_leverage(self, api_key: str, params: SetLeverageParams) -> dict[str, Any]:
        """`POST /v5/position/set-leverage` (one-way mode: buy and sell leverage equal); a
        lower leverage whose initial margin the account cannot cover is 110044."""
        with self._lock:
            account = self._account(api_key)
            self._require(api_key, "Position")
            spec = self._instrument(params.symbol)
            if params.buy_leverage != params.sell_leverage:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    "params error: buyLeverage must equal sellLeverage in one-way mode",
                )
            leverage = params.buy_leverage
            if not 1 <= leverage <= spec.max_leverage or leverage % Decimal("0.01") != 0:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"params error: leverage {fmt(leverage)} must be a multiple of 0.01 "
                    f"within [1, {fmt(spec.max_leverage)}]",
                )
            before = self._leverage(account, params.symbol)
            if leverage == before:
                raise SimError(RetCode.LEVERAGE_NOT_MODIFIED, "leverage not modified")
            account.leverage[params.symbol] = leverage
            if leverage < before and self._figures(account).available < 0:
                # Less leverage needs more margin for what is held and resting: not there.
                account.leverage[params.symbol] = before
                raise SimError(
                    RetCode.AVAILABLE_MARGIN_INSUFFICIENT, "Available margin is insufficient."
                )
            self._push_position(account, params.symbol)
            self._push_wallet(account)
            return {}

    def switch_position_mode(self, api_key: str, params: SwitchModeParams) -> dict[str, Any]:
        """`POST /v5/position/switch-mode` for a symbol, or (coin) every USDT contract.

        Switching to one-way works (from a `hedge_mode` account's start); switching to hedge
        mode is refused 110029, as Bybit refuses it for a symbol without hedge mode, because
        hedge trading is not simulated. Nothing to change is 110025.
        """
        with self._lock:
            account = self._account(api_key)
            self._require(api_key, "Position")
            if params.symbol is not None:
                self._instrument(params.symbol)
                symbols = [params.symbol]
            elif params.coin is not None:
                if params.coin != SETTLE_COIN:
                    raise SimError(
                        RetCode.PARAMS_ERROR,
                        f"params error: coin {params.coin!r}: every simulated linear contract "
                        f"settles in {SETTLE_COIN}",
                    )
                symbols = sorted(self._config.instruments)
            else:
                raise SimError(RetCode.PARAMS_ERROR, "params error: symbol or coin is required")
            hedge = params.mode == 3
            changing = [symbol for symbol in symbols if (symbol in account.hedge_symbols) != hedge]
            if not changing:
                raise SimError(
                    RetCode.POSITION_MODE_NOT_MODIFIED, "Position mode has not been modified."
                )
            if hedge:
                raise SimError(
                    RetCode.HEDGE_MODE_NOT_SUPPORTED,
                    "Hedge mode is not supported for this symbol. The simulator trades in "
                    "one-way mode only (mode 0).",
                )
            # A hedge-mode symbol never holds a position or an order here (its orders are
            # refused), so Bybit's 110024 / 110028 cannot arise.
            account.hedge_symbols.difference_update(changing)
            for symbol in changing:
                self._push_position(account, symbol)
            return {}

    def set_margin_mode(self, api_key: str, params: SetMarginModeParams) -> dict[str, Any]:
        """`POST /v5/account/set-margin-mode`: every simulated account trades in regular
        (cross) margin, so REGULAR_MARGIN succeeds with no reasons and the others are 10001:
        none of Bybit's documented failure reasons says "not simulated"."""
        with self._lock:
            self._account(api_key)
            self._require(api_key, "Position")
        if params.set_margin_mode != "REGULAR_MARGIN":
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: setMarginMode {params.set_margin_mode} is not simulated: every "
                "simulated account trades in REGULAR_MARGIN (cross margin)",
            )
        return {"reasons": []}

    def set_trading_stop(self, api_key: str, params: TradingStopParams) -> dict[str, Any]:
        """`POST /v5/position/trading-stop`: Full sets or cancels ("0") the open position's
        take profit and stop loss, which then close it as an order's would; Partial adds a
        pair of partial TP/SL orders; either sets or cancels the trailing stop."""
        with self._lock:
            account = self._account(api_key)
            self._require(api_key, "Position")
            self._instrument(params.symbol)
            self._check_position_idx(account, params.symbol, params.position_idx)
            position = account.positions.get(params.symbol)
            if position is None or position.size == 0:
                raise SimError(RetCode.PARAMS_ERROR, "can not set tp/sl/ts for zero position")
            side = "Buy" if position.size > 0 else "Sell"
            partial = params.tpsl_mode == "Partial"
            # The price each level will watch: a partial pair's own, else the position's.
            watching = {
                "takeProfit": params.tp_trigger_by
                or ("LastPrice" if partial else position.tp_trigger_by),
                "stopLoss": params.sl_trigger_by
                or ("LastPrice" if partial else position.sl_trigger_by),
            }

            def check_level(name: str, level: Decimal) -> None:
                seen = self._watched(params.symbol, watching[name])
                self._check_tpsl_level(name, params.symbol, level, side, seen, "position")

            changes = {} if partial else self._tpsl_changes(position, params, check_level)
            last = self._last_prices[params.symbol]  # what a trailing stop follows
            changes |= self._trailing_changes(position, params, side, last)
            adds_partial = partial and (params.take_profit or params.stop_loss)
            if not changes and not adds_partial:
                raise SimError(RetCode.TPSL_NOT_MODIFIED, "not modified")
            if adds_partial:
                self._add_partial_pair_of(account, position, params, check_level)
            if not changes:
                return {}
            for attribute, value in changes.items():
                setattr(position, attribute, value)
            position.updated_ms = self.now_ms()
            self._push_position(account, params.symbol)
            self._sync_exits(account, params.symbol, cleared_by="CancelByUser")
            return {}

    def _add_partial_pair_of(
        self,
        account: AccountRecord,
        position: PositionRecord,
        params: TradingStopParams,
        check_level: Callable[[str, Decimal], None],
    ) -> None:
        """trading-stop's Partial TP/SL: its levels, size and limit prices checked, then a
        pair of orders of that size (see `_add_partial_pair`)."""
        size = params.tp_size if params.take_profit else params.sl_size
        assert size is not None  # TradingStopParams requires it with its level
        self._check_qty(params.symbol, size)
        halves = {}
        for name, level, order_type, (limit_name, limit_price), watched in (
            (
                "takeProfit",
                params.take_profit,
                params.tp_order_type,
                ("tpLimitPrice", params.tp_limit_price),
                params.tp_trigger_by,
            ),
            (
                "stopLoss",
                params.stop_loss,
                params.sl_order_type,
                ("slLimitPrice", params.sl_limit_price),
                params.sl_trigger_by,
            ),
        ):
            limit = limit_price if order_type == "Limit" else None
            if level is not None:
                check_level(name, level)
            if limit is not None:
                self._check_price(limit_name, params.symbol, limit)
            halves[name] = (level, limit, watched or "LastPrice")
        self._add_partial_pair(
            account,
            position,
            size,
            take_profit=halves["takeProfit"],
            stop_loss=halves["stopLoss"],
        )

    def _trailing_changes(
        self, position: PositionRecord, params: TradingStopParams, side: str, price: Decimal
    ) -> dict[str, Decimal | None]:
        """What `trailingStop` (a distance; "0" cancels) and `activePrice` change on the
        position; each checked (10001) first. Active at once without an activePrice, else once
        the price reaches it, which must lie on the position's profitable side. The same
        distance sent again (with the same activePrice, if any) changes nothing."""
        distance, activation = params.trailing_stop, params.active_price or None
        if distance is None:
            if activation is not None:
                raise SimError(
                    RetCode.PARAMS_ERROR, "params error: activePrice needs a trailingStop"
                )
            return {}
        if distance == 0:
            cleared = dict.fromkeys(("trailing_stop", "trailing_active_price", "trailing_level"))
            return cleared if position.trailing_stop is not None else {}
        if distance == position.trailing_stop and activation in (
            None,
            position.trailing_active_price,
        ):
            return {}
        self._check_price("trailingStop", params.symbol, distance)
        long = side == "Buy"
        if activation is not None:
            self._check_price("activePrice", params.symbol, activation)
            if activation == price or (activation > price) != long:
                where = "above" if long else "below"
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"params error: activePrice {fmt(activation)} of a {side} position must be "
                    f"{where} the last price {fmt(price)}",
                )
        start = activation if activation is not None else price
        if (start - distance if long else start + distance) <= 0:
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: trailingStop {fmt(distance)} is not below the price "
                f"{fmt(start)} it trails",
            )
        level = None if activation is not None else (price - distance if long else price + distance)
        return {"trailing_stop": distance, "trailing_active_price": start, "trailing_level": level}

    # ----------------------------------------------------------------- private queries

    @_linear_listing
    def open_orders(self, api_key: str, params: OrderQueryParams) -> dict[str, Any]:
        """`GET /v5/order/realtime`: one order by id whatever its status, else the open orders
        of the symbol, else the base coin, else the settle coin asked for (Bybit's priority:
        "orderId > orderLinkId > symbol > baseCoin")."""
        with self._lock:
            account = self._account(api_key)
            if params.order_id is not None or params.order_link_id is not None:
                return self._order_page(self._found_by_id(account, params), params)
            if params.symbol is None and params.base_coin is None and params.settle_coin is None:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    "params error: symbol, baseCoin or settleCoin is required for linear",
                )
            if params.open_only == 0:
                candidates = self._waiting_orders(account)
            else:
                closed = [
                    order
                    for order in account.orders.values()
                    if not order.is_open and order.status != "Untriggered"
                ]
                candidates = closed[-_CLOSED_ORDERS_IN_REALTIME:]
            selected = [order for order in reversed(candidates) if self._matches(order, params)]
            return self._order_page(selected, params)

    @_linear_listing
    def order_history(self, api_key: str, params: OrderQueryParams) -> dict[str, Any]:
        """`GET /v5/order/history`: the account's orders, newest first: one by id, else those
        created within Bybit's window (the last 7 days, or startTime/endTime, at most 7 days
        apart)."""
        with self._lock:
            account = self._account(api_key)
            now = self.now_ms()
            if params.order_id is not None or params.order_link_id is not None:
                selected = [
                    order
                    for order in self._found_by_id(account, params)
                    if _still_in_history(order, now)
                ]
                return self._order_page(selected, params, order_history_view)
            start, end = _time_window(params.start_time, params.end_time, now)
            selected = [
                order
                for order in reversed(account.orders.values())
                if start <= order.created_ms <= end
                and self._matches(order, params)
                and _still_in_history(order, now)
            ]
            return self._order_page(selected, params, order_history_view)

    @_linear_listing
    def executions(self, api_key: str, params: ExecutionQueryParams) -> dict[str, Any]:
        """`GET /v5/execution/list`: the account's fills, newest first, within 7 days, of
        the symbol, else the base coin, else the settle coin asked for; or the fills of one
        order (by orderId, else orderLinkId), whatever else is asked and however old, as
        Bybit documents: "orderId > orderLinkId > symbol > baseCoin"."""
        with self._lock:
            account = self._account(api_key)
            engine_now = self._engine.now_ms()
            if params.order_id is not None or params.order_link_id is not None:
                fills = [
                    execution
                    for execution in reversed(account.executions)
                    if execution.order.visible_from_ms <= engine_now
                    and (
                        execution.order.order_id == params.order_id
                        if params.order_id is not None
                        else execution.order.order_link_id == params.order_link_id
                    )
                ]
                return self._executions_page(fills, params)
            if params.symbol is not None:
                self._instrument(params.symbol)
            start, end = _time_window(params.start_time, params.end_time, self.now_ms())
            fills = [
                execution
                for execution in reversed(account.executions)
                if execution.order.visible_from_ms <= engine_now
                and start <= execution.exec_ms <= end
                and _in_scope(
                    execution.order.symbol, params.symbol, params.base_coin, params.settle_coin
                )
                and (params.exec_type is None or params.exec_type == execution.order.exec_type)
            ]
            return self._executions_page(fills, params)

    @staticmethod
    def _executions_page(
        fills: list[ExecutionRecord], params: ExecutionQueryParams
    ) -> dict[str, Any]:
        page, cursor = _keyed_page(fills, params.limit, params.cursor, _fill_position)
        return {
            "category": "linear",
            "list": [execution_view(execution) for execution in page],
            "nextPageCursor": cursor,
        }

    @_linear_listing
    def closed_pnl(self, api_key: str, params: ClosedPnlParams) -> dict[str, Any]:
        """`GET /v5/position/closed-pnl`: one record per closing order, newest first."""
        with self._lock:
            account = self._account(api_key)
            if params.symbol is not None:
                self._instrument(params.symbol)
            start, end = _time_window(params.start_time, params.end_time, self.now_ms())
            records = [
                record
                for record in sorted(account.closed_pnl, key=_closed_pnl_position, reverse=True)
                if start <= record.updated_ms <= end
                and (params.symbol is None or record.order.symbol == params.symbol)
            ]
            page, cursor = _keyed_page(records, params.limit, params.cursor, _closed_pnl_position)
            return {
                "category": "linear",
                "list": [closed_pnl_view(record) for record in page],
                "nextPageCursor": cursor,
            }

    def transaction_log(self, api_key: str, params: TransactionLogParams) -> dict[str, Any]:
        """`GET /v5/account/transaction-log`: a TRADE entry per fill of the account (a
        LIQUIDATION entry per takeover, a SETTLEMENT entry per funding payment), newest first,
        within 24 h (or 7 days between both bounds). Nothing else moves the simulated wallet
        (no transfers), so no other type is ever listed."""
        with self._lock:
            account = self._account(api_key)
            if params.account_type is not None and params.account_type != "UNIFIED":
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"params error: accountType {params.account_type!r} is not supported; "
                    "the simulator has one UNIFIED account per key",
                )
            start, end = _time_window(
                params.start_time, params.end_time, self.now_ms(), _LOG_SPAN_MS
            )
            wanted = (
                params.category in {None, "linear"}
                and params.currency in {None, SETTLE_COIN}
                and params.trans_sub_type is None
            )
            fills = [
                execution
                for execution in (reversed(account.executions) if wanted else ())
                if start <= execution.exec_ms <= end
                and (params.type is None or params.type == execution.order.log_type)
                and (
                    params.base_coin is None
                    or execution.order.symbol == params.base_coin + SETTLE_COIN
                )
            ]
            page, cursor = _keyed_page(fills, params.limit, params.cursor, _fill_position)
            return {
                "list": [transaction_log_view(execution, account.user_id) for execution in page],
                "nextPageCursor": cursor,
            }

    @_linear_listing
    def positions(self, api_key: str, params: PositionQueryParams) -> dict[str, Any]:
        """`GET /v5/position/list`: a symbol's position even if flat, else all open ones."""
        with self._lock:
            account = self._account(api_key)
            if params.symbol is not None:
                self._instrument(params.symbol)
                symbols = [params.symbol]
            elif params.settle_coin is not None:
                symbols = [
                    symbol
                    for symbol, position in account.positions.items()
                    if position.size != 0 and params.settle_coin == SETTLE_COIN
                ]
            else:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    "params error: symbol or settleCoin is required for linear",
                )
            rows = [
                row for symbol in sorted(symbols) for row in self._position_rows(account, symbol)
            ]
            page, cursor = _page(rows, params.limit, params.cursor)
            return {"category": "linear", "list": page, "nextPageCursor": cursor}

    def wallet_balance(self, api_key: str, params: WalletBalanceParams) -> dict[str, Any]:
        """`GET /v5/account/wallet-balance` for the UNIFIED account (USDT only)."""
        with self._lock:
            account = self._account(api_key)
            if params.account_type != "UNIFIED":
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"params error: accountType {params.account_type!r} is not supported; "
                    "the simulator has one UNIFIED account per key",
                )
            figures = self._figures(account)
        include_usdt = params.coin is None or SETTLE_COIN in params.coin.split(",")
        return wallet_view(figures, include_usdt)

    def api_key_info(self, api_key: str, params: NoParams) -> dict[str, Any]:
        """`GET /v5/user/query-api`."""
        with self._lock:
            account = self._account(api_key)
            spec = self._key_specs[api_key]
            return api_key_view(spec, account.user_id, account.created_ms, self.now_ms())

    def fee_rate(self, api_key: str, params: FeeRateParams) -> dict[str, Any]:
        """`GET /v5/account/fee-rate`: the configured taker and maker rates of the symbol, or of
        every listed symbol; derivatives answers carry no category, spot and option do."""
        with self._lock:
            self._account(api_key)
            if params.category != "linear":
                extra = (
                    {"category": params.category} if params.category in {"spot", "option"} else {}
                )
                return {**extra, "list": []}
            symbols = self._symbols(params.symbol)
        taker, maker = self._config.taker_fee_rate, self._config.maker_fee_rate
        return {"list": [fee_rate_view(symbol, taker, maker) for symbol in symbols]}

    def account_info(self, api_key: str, params: NoParams) -> dict[str, Any]:
        """`GET /v5/account/info`."""
        with self._lock:
            return account_info_view(self._account(api_key).created_ms)

    def coin_info(self, api_key: str, params: CoinInfoParams) -> dict[str, Any]:
        """`GET /v5/asset/coin/query-info`: USDT and every listed base coin."""
        with self._lock:
            self._account(api_key)
        coins = sorted(
            {SETTLE_COIN}
            | {symbol.removesuffix(SETTLE_COIN) for symbol in self._config.instruments}
        )
        if params.coin is not None:
            coins = [coin for coin in coins if coin == params.coin]
        return coin_info_view(coins)

    # ----------------------------------------------------------------- internals (lock held)

    def _account(self, api_key: str) -> AccountRecord:
        """The key's account (lock held), once every funding boundary the exchange clock
        has passed is settled: each private request sees, and acts after, what was due."""
        self._settle_funding()
        account = self._by_key.get(api_key)
        if account is None:
            raise SimError(RetCode.INVALID_API_KEY, "API key is invalid.")
        return account

    def _require(self, api_key: str, right: str) -> None:
        """The key itself (not its account) must hold the ContractTrade `right`."""
        spec = self._key_specs[api_key]
        if spec.read_only or right not in spec.permissions.get("ContractTrade", []):
            raise SimError(
                RetCode.PERMISSION_DENIED,
                "Permission denied, please check your API key permissions.",
            )

    def _draw(self, fault: FaultName) -> bool:
        probability: float = getattr(self._faults, fault)
        if probability <= 0 or self._rng.random() >= probability:
            return False
        self._faults_injected[fault] += 1
        return True

    def _symbols(self, symbol: str | None) -> list[str]:
        if symbol is None:
            return sorted(self._config.instruments)
        self._instrument(symbol)
        return [symbol]

    def _instrument(self, symbol: str) -> InstrumentSpec:
        spec = self._config.instruments.get(symbol)
        if spec is None:
            listed = ", ".join(sorted(self._config.instruments))
            raise SimError(  # Bybit's words first: clients match them (ccxt: BadSymbol)
                RetCode.PARAMS_ERROR,
                f"Not supported symbols: {symbol!r} is not listed (listed: {listed})",
            )
        return spec

    def _quote(self, symbol: str) -> tuple[Decimal, Decimal]:
        """Best bid and ask: the market's price minus/plus half the spread, rounded outwards
        (the book is the rest of the market: our fills take from it without moving it). A
        book is never locked, as on Bybit: the bid is at least a tick below the ask (with no
        spread, the ask is the market's price), and at least a tick itself (then the ask is
        above the market's price)."""
        price = self._marks[symbol]
        tick = self._config.instruments[symbol].tick_size
        half = price * self._config.spread_bps / _BPS / 2
        ask = to_tick(price + half, tick, up=True)
        bid = max(min(to_tick(price - half, tick, up=False), ask - tick), tick)
        return bid, max(ask, bid + tick)

    def _taker_price(self, order: OrderRecord) -> Decimal:
        """Where a taker piece trades: the far side of the book plus slippage, never beyond
        the order's price (a market order's: its price limit)."""
        bid, ask = self._quote(order.symbol)
        tick = self._config.instruments[order.symbol].tick_size
        slip = self._config.slippage_bps / _BPS
        worst = order.worst_price
        if order.side == "Buy":
            price = to_tick(ask * (1 + slip), tick, up=True)
            return min(price, worst) if worst is not None else price
        price = max(to_tick(bid * (1 - slip), tick, up=False), tick)
        return max(price, worst) if worst is not None else price

    def _check_qty(self, symbol: str, qty: Decimal, *, market: bool = False) -> None:
        spec = self._config.instruments[symbol]
        problem = None
        # The bounds come first: they keep the modulo below within Decimal's precision.
        if qty <= 0:
            problem = "qty must be greater than 0"
        elif qty > spec.max_order_qty:
            problem = f"{fmt(qty)} is above maxOrderQty {fmt(spec.max_order_qty)}"
        elif market and qty > spec.market_order_cap:
            problem = f"{fmt(qty)} is above maxMktOrderQty {fmt(spec.market_order_cap)}"
        elif qty < spec.min_order_qty:
            problem = f"{fmt(qty)} is below minOrderQty {fmt(spec.min_order_qty)}"
        elif qty % spec.qty_step != 0:
            problem = f"{fmt(qty)} is not a multiple of qtyStep {fmt(spec.qty_step)}"
        if problem is not None:
            raise SimError(RetCode.PARAMS_ERROR, f"Qty invalid: {problem} ({symbol})")

    def _check_price(self, name: str, symbol: str, price: Decimal) -> None:
        tick = self._config.instruments[symbol].tick_size
        if not tick <= price <= tick * MAX_PRICE_TICKS:
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: {name} {fmt(price)} is outside "
                f"[{fmt(tick)}, {fmt(tick * MAX_PRICE_TICKS)}] ({symbol})",
            )
        if price % tick != 0:
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: {name} {fmt(price)} is not a multiple of tickSize "
                f"{fmt(tick)} ({symbol})",
            )

    def _check_order_params(self, params: PlaceOrderParams, qty: Decimal) -> Decimal | None:
        """Quantity and price rules of the instrument; returns the limit price, if any."""
        market = params.order_type == "Market"
        self._check_qty(params.symbol, qty, market=market)
        if market:
            return None
        if params.bbo_side_type is not None and params.bbo_level is not None:
            return self._bbo_price(
                params.symbol, params.side, params.bbo_side_type, params.bbo_level
            )
        if params.price is None:
            raise SimError(RetCode.PARAMS_ERROR, "params error: price is required for Limit")
        self._check_price("price", params.symbol, params.price)
        return params.price

    def _bbo_price(self, symbol: str, side: str, side_type: str, level: str) -> Decimal:
        """A limit price from the book (bboSideType, bboLevel): the `level`th price of the
        order's own side (Queue) or of the other side (Counterparty); the book's levels are
        a tick apart (`orderbook_view`)."""
        bid, ask = self._quote(symbol)
        tick = self._config.instruments[symbol].tick_size
        steps = tick * (int(level) - 1)
        if (side == "Buy") == (side_type == "Queue"):  # a level of the bids
            return max(bid - steps, tick)
        return ask + steps

    def _check_tpsl(self, params: PlaceOrderParams, reference: Decimal) -> None:
        """An order's attached TP/SL: none on a reduce-only order, each on its side of the
        order's base price."""
        take_profit, stop_loss = params.take_profit or None, params.stop_loss or None
        if take_profit is None and stop_loss is None:
            return
        if params.reduce_only:
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: takeProfit/stopLoss cannot be set on a reduceOnly order",
            )
        for name, level in (("takeProfit", take_profit), ("stopLoss", stop_loss)):
            if level is not None:
                self._check_tpsl_level(name, params.symbol, level, params.side, reference, "order")
        for name, order_type, limit_price in (
            ("tpLimitPrice", params.tp_order_type, params.tp_limit_price),
            ("slLimitPrice", params.sl_order_type, params.sl_limit_price),
        ):
            if order_type == "Limit" and limit_price is not None:
                self._check_price(name, params.symbol, limit_price)

    def _check_tpsl_level(
        self,
        name: str,
        symbol: str,
        level: Decimal,
        side: str,
        reference: Decimal,
        holder: Literal["order", "position"],
    ) -> None:
        """A takeProfit above and a stopLoss below a Buy's base price (the reverse for a
        Sell), on the tick: Bybit answers 10001 for a level that would trigger at once."""
        self._check_price(name, symbol, level)
        must_be_above = (name == "takeProfit") == (side == "Buy")
        if (level > reference) != must_be_above or level == reference:
            where = "above" if must_be_above else "below"
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: {name} {fmt(level)} of a {side} {holder} must be {where} its "
                f"base price {fmt(reference)}",
            )

    @staticmethod
    def _tpsl_changes(
        target: OrderRecord | PositionRecord,
        params: AmendOrderParams | TradingStopParams,
        check: Callable[[str, Decimal], None],
    ) -> dict[str, Any]:
        """The take_profit / stop_loss (and the prices they watch) a request changes on
        target: a level not sent keeps its value, "0" cancels it, any other is checked
        first."""
        take_profit, stop_loss = params.take_profit, params.stop_loss
        changes: dict[str, Any] = {
            attribute: value
            for attribute, value in (
                ("tp_trigger_by", params.tp_trigger_by),
                ("sl_trigger_by", params.sl_trigger_by),
            )
            if value is not None and value != getattr(target, attribute)
        }
        for name, attribute, value in (
            ("takeProfit", "take_profit", take_profit),
            ("stopLoss", "stop_loss", stop_loss),
        ):
            if value is None:
                continue
            level = value or None
            if level is not None:
                check(name, level)
            if level != getattr(target, attribute):
                changes[attribute] = level
        return changes

    def _order_qty(
        self, account: AccountRecord, params: PlaceOrderParams, spec: InstrumentSpec
    ) -> Decimal:
        """The quantity asked for; qty "0" with reduceOnly and closeOnTrigger means the whole
        position, up to maxMktOrderQty (a limit order: maxOrderQty), Bybit's close-position
        order."""
        if params.qty != 0 or not (params.reduce_only and params.close_on_trigger):
            return params.qty
        position = account.positions.get(params.symbol)
        size = abs(position.size) if position is not None else ZERO
        if size == 0:
            raise SimError(
                RetCode.REDUCE_ONLY_RULE_NOT_SATISFIED,
                "current position is zero, cannot fix reduce-only order qty",
            )
        return min(
            size, spec.market_order_cap if params.order_type == "Market" else spec.max_order_qty
        )

    def _reducible_qty(
        self,
        account: AccountRecord,
        symbol: str,
        side: str,
        qty: Decimal,
        *,
        besides: OrderRecord | None = None,
    ) -> Decimal:
        """A reduce-only order's quantity trimmed to what it can still close: the position
        less the other open reduce-only orders on its side (`besides` an order being
        amended, not one of them); 110017 when nothing is left."""
        position = account.positions.get(symbol)
        size = position.size if position is not None else ZERO
        if size == 0:
            raise SimError(
                RetCode.REDUCE_ONLY_RULE_NOT_SATISFIED,
                "current position is zero, cannot fix reduce-only order qty",
            )
        if (size > 0) == (side == "Buy"):
            held = "long" if size > 0 else "short"
            raise SimError(
                RetCode.REDUCE_ONLY_RULE_NOT_SATISFIED,
                f"Reduce-only rule not satisfied: a {side} order would increase the {held} "
                "position",
            )
        pending = sum(
            (
                order.leaves_qty
                for order in account.open_orders.values()
                if order.symbol == symbol
                and order.reduce_only
                and order.side == side
                and order is not besides
            ),
            ZERO,
        )
        reducible = abs(size) - pending
        if reducible <= 0:
            raise SimError(
                RetCode.REDUCE_ONLY_RULE_NOT_SATISFIED,
                "orderQty will be truncated to zero: open reduce-only orders already cover "
                "the position",
            )
        return min(qty, reducible)

    @staticmethod
    def _check_min_value(spec: InstrumentSpec, qty: Decimal, reference: Decimal) -> None:
        """An order worth at least the instrument's minimum (110094)."""
        if qty * reference < spec.min_notional_usdt:
            raise SimError(
                RetCode.ORDER_VALUE_BELOW_MINIMUM,
                f"Order does not meet minimum order value {fmt(spec.min_notional_usdt)}USDT",
            )

    def _check_available(
        self, account: AccountRecord, symbol: str, side: str, qty: Decimal, reference: Decimal
    ) -> None:
        """The margin and fee of an order's opening part within the available balance
        (110007)."""
        position = account.positions.get(symbol)
        size = position.size if position is not None else ZERO
        # Only the part that opens exposure needs margin; closing an opposite position frees it.
        same_direction = size == 0 or (size > 0) == (side == "Buy")
        opening = qty if same_direction else max(qty - abs(size), ZERO)
        required = (
            opening * reference / self._leverage(account, symbol)
            + qty * reference * self._config.taker_fee_rate
        )
        if required > self._figures(account).available:
            raise SimError(RetCode.INSUFFICIENT_AVAILABLE_BALANCE, "ab not enough for new order")

    @staticmethod
    def _check_active_orders(account: AccountRecord, symbol: str) -> None:
        """At most `_ACTIVE_ORDERS_PER_SYMBOL` open orders in a symbol (110020)."""
        active = sum(1 for order in account.open_orders.values() if order.symbol == symbol)
        if active >= _ACTIVE_ORDERS_PER_SYMBOL:
            raise SimError(
                RetCode.TOO_MANY_ACTIVE_ORDERS, "Not allowed to have more than 500 active orders."
            )

    @staticmethod
    def _check_position_limit(
        account: AccountRecord,
        symbol: str,
        side: str,
        qty: Decimal,
        reference: Decimal,
        spec: InstrumentSpec,
    ) -> None:
        """The position, with the open orders of the order's side and the order filled, at
        most the risk limit's value (one tier here: `RISK_LIMIT_VALUE`), else 110090; an
        order that leaves less exposure than the position has passes."""
        position = account.positions.get(symbol)
        direction = 1 if side == "Buy" else -1
        resting = sum(
            (
                order.leaves_qty
                for order in account.open_orders.values()
                if order.symbol == symbol and order.side == side and not order.reduce_only
            ),
            ZERO,
        )
        size = position.size if position is not None else ZERO
        projected = abs(size + direction * (resting + qty))
        if projected > abs(size) and projected * reference > RISK_LIMIT_VALUE:
            raise SimError(
                RetCode.POSITION_LIMIT_EXCEEDED,
                "Order placement failed as your position may exceed the max limit. Please "
                f"adjust your leverage to {fmt(spec.max_leverage)} or below to increase the "
                "max. position limit",
            )

    @staticmethod
    def _check_position_idx(account: AccountRecord, symbol: str, position_idx: int) -> None:
        """positionIdx must fit the symbol's position mode (Bybit: 10001 otherwise)."""
        hedge = symbol in account.hedge_symbols
        if hedge != (position_idx != 0):
            raise SimError(RetCode.PARAMS_ERROR, "position idx not match position mode")
        if hedge:
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: trading in hedge mode is not simulated (only its detection)",
            )

    def _leverage(self, account: AccountRecord, symbol: str) -> Decimal:
        return account.leverage.get(symbol, self._config.default_leverage)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _find(
        self, account: AccountRecord, order_id: str | None, link_id: str | None
    ) -> OrderRecord | None:
        if order_id is not None:
            return account.orders.get(order_id)
        if link_id is not None and link_id in account.link_ids:
            return account.orders[account.link_ids[link_id]]
        return None

    def _open_order(
        self, account: AccountRecord, symbol: str, order_id: str | None, link_id: str | None
    ) -> OrderRecord | None:
        order = self._find(account, order_id, link_id)
        if order is None or order.symbol != symbol or not order.is_open:
            return None
        return order

    def _found_by_id(self, account: AccountRecord, params: OrderQueryParams) -> list[OrderRecord]:
        """The order a query names by orderId (else orderLinkId), if the account has it and
        it passes the query's filters (`_shown_and_filtered`): Bybit ranks an id above
        `symbol` and `baseCoin` ("orderId > orderLinkId > symbol > baseCoin"), and ignores
        `openOnly` with one."""
        order = self._find(account, params.order_id, params.order_link_id)
        return [order] if order is not None and self._shown_and_filtered(order, params) else []

    def _matches(self, order: OrderRecord, params: OrderQueryParams) -> bool:
        """Whether a query without an id lists the order: shown, of its filters, and in the
        symbol, else base coin, else settle coin it names."""
        return self._shown_and_filtered(order, params) and _in_scope(
            order.symbol, params.symbol, params.base_coin, params.settle_coin
        )

    def _shown_and_filtered(self, order: OrderRecord, params: OrderQueryParams) -> bool:
        """Whether queries show the order by now, and it is of the query's `orderFilter` and
        `orderStatus` (which an id does not outrank)."""
        return (
            _selects(params.order_filter, order)
            and order.visible_from_ms <= self._engine.now_ms()
            and (params.order_status is None or order.status == params.order_status)
        )

    @staticmethod
    def _order_page(
        orders: list[OrderRecord],
        params: OrderQueryParams,
        view: Callable[[OrderRecord], dict[str, Any]] = order_view,
    ) -> dict[str, Any]:
        """Orders newest first (by their exchange-wide creation sequence), one page, each as
        `view` shows it."""
        page, cursor = _keyed_page(orders, params.limit, params.cursor, _order_position)
        return {
            "category": "linear",
            "list": [view(order) for order in page],
            "nextPageCursor": cursor,
        }

    # ----------------------------------------------------------------- matching (lock held)

    def _submit(self, account: AccountRecord, order: OrderRecord) -> None:
        """Book an acknowledged order (status New, margin reserved) and schedule its arrival.
        A market order gets its price, the order price limit of this moment."""
        if order.price is None:
            order.price_limit = self._market_price_limit(order)
        account.orders[order.order_id] = order
        if order.order_link_id:
            account.link_ids[order.order_link_id] = order.order_id
        account.open_orders[order.order_id] = order
        self._engine.schedule(
            self._config.market_fill_delay_ms, lambda: self._arrive(account, order)
        )
        self._push_order(account, order)
        self._push_position(account, order.symbol)  # Bybit: on every create, changed or not
        self._push_wallet(account)

    def _arrive(self, account: AccountRecord, order: OrderRecord) -> None:
        """The matching engine sees the order: it takes liquidity, rests, or is cancelled."""
        if not order.is_open or order.arrived:
            return
        order.arrived = True
        if not self._marketable(order):
            if order.time_in_force == "IOC":  # every market order is
                self._close(account, order, reject_reason="EC_NoImmediateQtyToFill")
            elif order.time_in_force == "FOK":
                self._close(account, order, reject_reason="EC_NoEnoughQtyToFill")
            else:
                order.rested = True
            return  # GTC and PostOnly rest on the book
        if order.time_in_force == "PostOnly":
            self._close(account, order, reject_reason="EC_PostOnlyWillTakeLiquidity")
            return
        pieces = self._config.partial_fills
        if pieces > 1 and order.time_in_force != "FOK":
            if self._fill_rng.random() >= self._config.partial_fill_probability:
                pieces = 1
        else:
            pieces = 1
        order.pieces_left = pieces
        self._take(account, order)

    def _market_price_limit(self, order: OrderRecord) -> Decimal:
        """The price a market order is matched at as an IOC limit order: the order price
        limit, or, nearer to the book, its own slippage tolerance from ask1 (a buy) or bid1
        (a sell), in ticks or percent (rounded to the tick towards the book)."""
        limit = self._price_limits(order.symbol).of(order.side)
        value = order.slippage_tolerance
        if not value:
            return limit
        bid, ask = self._quote(order.symbol)
        tick = self._config.instruments[order.symbol].tick_size
        buy = order.side == "Buy"
        if order.slippage_tolerance_type == "TickSize":
            tolerated = ask + value * tick if buy else bid - value * tick
        else:
            share = value / 100
            tolerated = to_tick(ask * (1 + share) if buy else bid * (1 - share), tick, up=not buy)
        return min(limit, tolerated) if buy else max(limit, max(tolerated, tick))

    def _marketable(self, order: OrderRecord) -> bool:
        """Whether the book's far side is within the order's worst price (a market order's:
        its price limit; Bybit matches it as an IOC limit order there)."""
        worst = order.worst_price
        if worst is None:
            return True
        bid, ask = self._quote(order.symbol)
        return ask <= worst if order.side == "Buy" else bid >= worst

    def _take(self, account: AccountRecord, order: OrderRecord) -> None:
        """Execute one taker piece of the order at the current bid/ask."""
        if not order.is_open:
            return
        if not self._marketable(order):  # the price moved past it since the last piece
            order.pieces_left = 0
            if order.time_in_force == "IOC":  # every market order is
                self._close(account, order, reject_reason="EC_NoImmediateQtyToFill")
            else:
                order.rested = True
            return  # a GTC limit order rests on the book with what is left
        step = self._config.instruments[order.symbol].qty_step
        leaves = order.leaves_qty
        qty = leaves
        if order.pieces_left > 1:
            qty = (leaves / order.pieces_left / step).to_integral_value(ROUND_DOWN) * step
            qty = qty if qty > 0 else leaves
        if order.reduce_only:
            qty = min(qty, self._closable(account, order))
            if qty <= 0:
                self._close(account, order, cancel_type="CancelByReduceOnly")
                return
        self._fill(account, order, qty, self._taker_price(order), maker=False)
        self._traded(order.symbol)
        order.pieces_left -= 1
        if not order.is_open:
            return
        if order.pieces_left > 0:
            self._engine.schedule(
                max(self._config.market_fill_delay_ms, 1), lambda: self._take(account, order)
            )
        elif order.price is None or order.time_in_force in {"IOC", "FOK"}:
            self._close(account, order, cancel_type="CancelByReduceOnly")

    @staticmethod
    def _closable(account: AccountRecord, order: OrderRecord) -> Decimal:
        """How much of an opposite position a reduce-only order can still close."""
        position = account.positions.get(order.symbol)
        size = position.size if position is not None else ZERO
        return abs(size) if size != 0 and (size > 0) != (order.direction > 0) else ZERO

    def _close(
        self,
        account: AccountRecord,
        order: OrderRecord,
        *,
        cancel_type: str = "UNKNOWN",
        reject_reason: str = "EC_NoError",
    ) -> None:
        # Bybit: "PartiallyFilledCanceled: only spot has this order status"; a derivatives
        # order cancelled after a partial fill is Cancelled with its executed qty.
        account.open_orders.pop(order.order_id, None)
        if cancel_type == "CancelByUser" and reject_reason == "EC_NoError":
            # What Bybit shows on an order its owner cancelled (rejectReason's enum), in its
            # REST lists and order stream alike.
            reject_reason = "EC_PerCancelRequest"
        self._update(
            account, order, status="Cancelled", cancel_type=cancel_type, reject_reason=reject_reason
        )
        self._push_position(account, order.symbol)  # on every cancel, as on a create
        self._push_wallet(account)

    def _fill(
        self,
        account: AccountRecord,
        order: OrderRecord,
        qty: Decimal,
        price: Decimal,
        *,
        maker: bool,
    ) -> None:
        """Execute qty of the order at price: order totals, position, fees, realised PnL, the
        execution record and the closing order's closed-PnL record."""
        now = self.now_ms()
        rate = self._config.maker_fee_rate if maker else self._config.taker_fee_rate
        if order.is_liquidation:
            rate = ZERO  # what the holder had left went to the insurance fund already
        fee = (qty * price * rate).quantize(_MONEY_PLACES)
        order.cum_exec_qty += qty
        order.cum_exec_value += qty * price
        order.cum_exec_fee += fee
        order.updated_ms = now
        if order.cum_exec_qty == order.qty:
            order.status = "Filled"
            account.open_orders.pop(order.order_id, None)
        else:
            order.status = "PartiallyFilled"
        position = account.positions.setdefault(order.symbol, PositionRecord(symbol=order.symbol))
        if position.size == 0:
            position.cur_realised_pnl = ZERO
            position.created_ms = now
            position.open_fee = ZERO
        size_before, entry_before = position.size, position.avg_price
        signed_qty = qty * order.direction
        closing = ZERO
        if size_before != 0 and (size_before > 0) != (signed_qty > 0):
            closing = min(abs(size_before), qty)
        cash_flow = self._apply(position, signed_qty, price).quantize(_MONEY_PLACES)
        realised = cash_flow - fee
        self._record_open_interest(order.symbol, abs(position.size) - abs(size_before), now)
        if closing:
            open_fee = position.open_fee * closing / abs(size_before)
            position.open_fee -= open_fee
            self._record_close(
                account, order, closing, entry_before, price, open_fee, fee * closing / qty, now
            )
        position.open_fee += fee * (qty - closing) / qty
        account.wallet_balance += realised
        position.cum_realised_pnl += realised
        position.cur_realised_pnl += realised
        position.updated_ms = now
        position.seq = self._next_seq()
        flipped = (
            size_before != 0 and position.size != 0 and (size_before > 0) != (position.size > 0)
        )
        if flipped:  # a new position opened from the old one's close: its own PnL and time
            position.cur_realised_pnl = -fee * (qty - closing) / qty
            position.created_ms = now
        if position.size == 0 or flipped:  # the position closed: its exits go with it
            _clear_exit_levels(position)
        opened = position.size != 0 and (position.size > 0) == (signed_qty > 0)
        if opened and not order.partial_tpsl:
            if order.take_profit is not None:
                position.take_profit, position.tp_trigger_by = (
                    order.take_profit,
                    order.tp_trigger_by,
                )
                position.exit_parents["TakeProfit"] = order.order_link_id
            if order.stop_loss is not None:
                position.stop_loss, position.sl_trigger_by = order.stop_loss, order.sl_trigger_by
                position.exit_parents["StopLoss"] = order.order_link_id
        execution = ExecutionRecord(
            exec_id=str(uuid.uuid4()),
            order=order,
            order_qty=order.qty,
            leaves_qty=order.leaves_qty,
            price=price,
            qty=qty,
            fee=fee,
            fee_rate=rate,
            is_maker=maker,
            mark_price=self._marks[order.symbol],
            closed_size=closing,
            exec_ms=now,
            seq=position.seq,
            cash_flow=cash_flow,
            position_size=position.size,
            cash_balance=account.wallet_balance,
        )
        account.executions.append(execution)
        if not order.is_liquidation:  # the engine's takeover is not a trade of the market
            self._public_trades[order.symbol].append(execution)
            tick_direction = self._print(order.symbol, price, qty)
            for sink in self._streams:
                if sink.wants_trades(order.symbol):
                    sink.push_trade(
                        order.symbol, public_trade_stream_view(execution, tick_direction)
                    )
        # Bybit's order of pushes for a fill: the order, its execution, position, wallet.
        self._push_order(account, order)
        if order.exec_type == "Trade":  # execution.fast carries trades only
            self._push(account, "execution.fast", lambda: [fast_execution_stream_view(execution)])
        self._push(account, "execution", lambda: [execution_stream_view(execution)])
        self._push_position(account, order.symbol)
        self._push_wallet(account)
        self._sync_exits(account, order.symbol)
        if position.size == 0 or flipped:
            self._cancel_stranded_reduce_only(account, order)
        if opened and order.partial_tpsl and qty > closing:
            self._attach_partial_exits(account, order, qty - closing)

    # ----------------------------------------------------------------- funding

    def _schedule_funding(self) -> None:
        """Wake the engine once the next funding settlement is due, so that positions held
        through it pay or receive funding on time even when nothing else happens."""
        due_in_ms = max(self._next_funding_settlement_ms - self.now_ms(), 0)
        self._engine.schedule_at(
            self._engine.now_ms() + due_in_ms + 1, self._on_funding_due, background=True
        )

    def _on_funding_due(self) -> None:
        try:
            self._settle_funding()
        finally:  # the next wake-up, whatever this one met
            self._schedule_funding()

    def _settle_funding(self) -> None:
        """Settle every funding boundary the exchange clock has passed, each for the positions
        held at it. Besides the engine's wake-up, a price move and every private request
        (`_account`) settle first: a replay's clock jumps hours at once, and a position
        opened or changed after a boundary must not pay for it, nor one held through it
        escape it."""
        while self.now_ms() >= self._next_funding_settlement_ms:
            settled_ms = self._next_funding_settlement_ms
            self._next_funding_settlement_ms += _FUNDING_INTERVAL_MS
            for account in list(self._accounts.values()):
                held = [position for position in account.positions.values() if position.size]
                for position in held:
                    self._charge_funding(account, position, settled_ms)
                if held:
                    self._liquidate_if_due(account)

    def _charge_funding(
        self, account: AccountRecord, position: PositionRecord, settled_ms: int
    ) -> None:
        """One position's funding: its value at the mark price times the rate, which a long
        pays and a short receives while the rate is positive. It moves the wallet and the
        position's realised PnL (Bybit counts funding in it, not in closed PnL) and is
        recorded as Bybit records it: a Funding execution (execFee positive when paid,
        feeRate the rate for a long and its negative for a short), which the transaction
        log lists as a SETTLEMENT; pushed as execution, position and wallet."""
        mark = self._marks[position.symbol]
        side = "Buy" if position.size > 0 else "Sell"
        rate = FUNDING_RATE if side == "Buy" else -FUNDING_RATE
        qty = abs(position.size)
        fee = (qty * mark * rate).quantize(_MONEY_PLACES)
        account.wallet_balance -= fee
        position.cum_realised_pnl -= fee
        position.cur_realised_pnl -= fee
        # Never back in time: what came after the boundary (settled only now) keeps its stamp,
        # and a client keeping the newest report would drop this one.
        position.updated_ms = max(position.updated_ms, settled_ms)
        position.seq = self._next_seq()
        settlement = OrderRecord(
            order_id=str(uuid.uuid4()),
            order_link_id="",
            symbol=position.symbol,
            side=side,
            order_type="UNKNOWN",
            price=None,
            qty=ZERO,
            time_in_force="",
            reduce_only=False,
            close_on_trigger=False,
            take_profit=None,
            stop_loss=None,
            last_price_on_created=mark,
            created_ms=settled_ms,
            seq=position.seq,
            updated_ms=settled_ms,
            status="Filled",
            create_type="",
            stop_order_type="UNKNOWN",
            funding=True,
        )
        execution = ExecutionRecord(
            exec_id=str(uuid.uuid4()),
            order=settlement,
            order_qty=ZERO,
            leaves_qty=ZERO,
            price=mark,
            qty=qty,
            fee=fee,
            fee_rate=rate,
            is_maker=False,
            mark_price=mark,
            closed_size=ZERO,
            exec_ms=settled_ms,
            seq=position.seq,
            cash_flow=ZERO,
            position_size=position.size,
            cash_balance=account.wallet_balance,
        )
        account.executions.append(execution)
        self._funding_payments += 1
        self._funding_paid += fee
        self._push(account, "execution", lambda: [execution_stream_view(execution)])
        self._push_position(account, position.symbol)
        self._push_wallet(account)

    def _cancel_stranded_reduce_only(self, account: AccountRecord, filled: OrderRecord) -> None:
        """Once a fill closes or turns the position, cancel the symbol's open reduce-only
        orders that have nothing left to close (`cancelType` `CancelByReduceOnly`), as Bybit
        does at once ("the corresponding take profit limit order will automatically be
        canceled"), not only when the price reaches them. The order being filled is its
        caller's to end; waiting conditional orders are held to the position when they fire."""
        for order in list(account.open_orders.values()):
            if (
                order is not filled
                and order.symbol == filled.symbol
                and order.reduce_only
                and self._closable(account, order) == 0
            ):
                self._close(account, order, cancel_type="CancelByReduceOnly")

    def _attach_partial_exits(
        self, account: AccountRecord, order: OrderRecord, opened_qty: Decimal
    ) -> None:
        """Partial TP/SL of an order (Bybit: "it will create tp/sl orders with the qty you
        actually fill"): a fill that opened `opened_qty` adds it to the order's pair while a
        half of it still waits, else makes a new pair of that qty."""
        waiting = [
            account.conditional_orders[order_id]
            for order_id in order.exit_pair
            if order_id in account.conditional_orders
        ]
        for half in waiting:
            self._update(account, half, qty=half.qty + opened_qty)
        if waiting or (order.take_profit is None and order.stop_loss is None):
            return
        order.exit_pair = self._add_partial_pair(
            account,
            account.positions[order.symbol],
            opened_qty,
            take_profit=(order.take_profit, order.tp_limit_price, order.tp_trigger_by),
            stop_loss=(order.stop_loss, order.sl_limit_price, order.sl_trigger_by),
            parent=order.order_link_id,
        )

    def _add_partial_pair(
        self,
        account: AccountRecord,
        position: PositionRecord,
        qty: Decimal,
        *,
        take_profit: tuple[Decimal | None, Decimal | None, str],
        stop_loss: tuple[Decimal | None, Decimal | None, str],
        parent: str = "",
    ) -> list[str]:
        """A partial TP and/or SL of `qty` closing `position`, each (level, limit price or
        None for market, price watched), Untriggered like a conditional order; the two are a
        pair, of which the first to fire cancels the other. `parent`: the orderLinkId of the
        order they came attached to. Returns their orderIds."""
        halves = []
        for kind, (level, limit_price, watched) in (
            ("PartialTakeProfit", take_profit),
            ("PartialStopLoss", stop_loss),
        ):
            if level is None:
                continue
            rises = (kind == "PartialTakeProfit") == (position.size > 0)
            half = self._closing_order(
                position.symbol,
                qty if position.size > 0 else -qty,
                order_type="Market" if limit_price is None else "Limit",
                price=limit_price,
                time_in_force="IOC" if limit_price is None else "GTC",
                close_on_trigger=True,
                status="Untriggered",
                stop_order_type=kind,
                create_type=f"CreateBy{kind}",
                trigger_price=level,
                trigger_direction=1 if rises else 2,
                trigger_by=watched,
                visible_from_ms=self._engine.now_ms(),
                parent_order_link_id=parent,
            )
            account.orders[half.order_id] = half
            account.conditional_orders[half.order_id] = half
            halves.append(half)
        if len(halves) == 2:
            halves[0].paired_with, halves[1].paired_with = halves[1].order_id, halves[0].order_id
        for half in halves:
            self._push_order(account, half)
        return [half.order_id for half in halves]

    def _record_open_interest(self, symbol: str, change: Decimal, now: int) -> None:
        """Move the symbol's open interest by what a fill changed, and note the new value.

        Times are kept ascending (a burst of clock skew may move the clock back), so the
        history stays searchable.
        """
        if change == 0:
            return
        self._open_interest[symbol] += change
        times, values = self._open_interest_history[symbol]
        times.append(max(now, times[-1]) if times else now)
        values.append(self._open_interest[symbol])

    def _record_close(
        self,
        account: AccountRecord,
        order: OrderRecord,
        closed: Decimal,
        entry_price: Decimal,
        exit_price: Decimal,
        open_fee: Decimal,
        close_fee: Decimal,
        now: int,
    ) -> None:
        record = account.closed_pnl_by_order.get(order.order_id)
        if record is None:
            record = ClosedPnlRecord(
                order=order, leverage=self._leverage(account, order.symbol), created_ms=now
            )
            account.closed_pnl_by_order[order.order_id] = record
            account.closed_pnl.append(record)
        record.closed_size += closed
        record.cum_entry_value += closed * entry_price
        record.cum_exit_value += closed * exit_price
        record.open_fee += open_fee
        record.close_fee += close_fee
        record.fill_count += 1
        record.updated_ms = now

    @staticmethod
    def _apply(position: PositionRecord, signed_qty: Decimal, price: Decimal) -> Decimal:
        """Update size and average price; return the PnL realised by the reducing part."""
        old = position.size
        new = old + signed_qty
        if old == 0 or (old > 0) == (signed_qty > 0):
            position.avg_price = (abs(old) * position.avg_price + abs(signed_qty) * price) / abs(
                new
            )
            position.size = new
            return ZERO
        closed = min(abs(old), abs(signed_qty))
        realised = closed * (price - position.avg_price) * (1 if old > 0 else -1)
        if new == 0:
            position.avg_price = ZERO
        elif (new > 0) != (old > 0):
            position.avg_price = price
        position.size = new
        return realised

    def _move(self, symbol: str, price: Decimal) -> None:
        """The market moves to `price` (a walk's step, a set price): the mark and index price
        and the book follow it; the resting limit orders it crosses fill at their price on
        the way; its own trade at `price` is then the last; then what watches a price fires
        (TP/SL, conditional orders), and an account down to its maintenance margin is
        liquidated."""
        self._settle_funding()  # at the mark of the boundary's time, before this move
        before = self._marks[symbol]
        self._marks[symbol] = price
        self._mark_history.record_price(symbol, price, self.now_ms())
        self._book_updates += 1
        self._fill_crossed(symbol, before, price)
        # The market's own trade: no volume of the simulator's, whose candles count fills.
        self._print(symbol, price, ZERO)
        self._push_market_data(symbol)
        for account in self._accounts.values():
            self._check_triggers(account, symbol)
            position = account.positions.get(symbol)
            if position is not None and position.size != 0:
                self._liquidate_if_due(account)

    def _fill_crossed(self, symbol: str, before: Decimal, price: Decimal) -> None:
        """Fill, as makers at their price, the resting limit orders of every account that the
        market's move from `before` to `price` crossed, in the order it reached them."""
        crossed: list[tuple[AccountRecord, OrderRecord, Decimal]] = [
            (account, order, order.price)
            for account in self._accounts.values()
            for order in account.open_orders.values()
            if order.symbol == symbol
            and order.arrived
            and order.price is not None
            and (price <= order.price if order.side == "Buy" else price >= order.price)
        ]
        crossed.sort(key=lambda item: abs(item[2] - before))  # stable: ties in book order
        for account, order, limit in crossed:
            if not order.is_open:  # a fill before it closed its position: cancelled then
                continue
            qty = order.leaves_qty
            if order.reduce_only:
                qty = min(qty, self._closable(account, order))
                if qty <= 0:
                    self._close(account, order, cancel_type="CancelByReduceOnly")
                    continue
            self._fill(account, order, qty, limit, maker=True)
            if order.is_open and order.reduce_only:
                self._close(account, order, cancel_type="CancelByReduceOnly")

    def _print(self, symbol: str, price: Decimal, qty: Decimal) -> str:
        """A trade of `qty` at `price` (a fill, or the market's own as it moves): the last
        price and the candles take it, and its tick direction against the trade before,
        which it returns; the tickers' cross sequence moves on."""
        before = self._last_prices[symbol]
        if price != before:
            direction = "PlusTick" if price > before else "MinusTick"
        elif self._tick_directions.get(symbol, "ZeroPlusTick") in {"PlusTick", "ZeroPlusTick"}:
            direction = "ZeroPlusTick"
        else:
            direction = "ZeroMinusTick"
        self._tick_directions[symbol] = direction
        self._last_prices[symbol] = price
        self._history.record_trade(symbol, price, qty, self.now_ms())
        self._cross_seq += 1
        return direction

    def _push_market_data(self, symbol: str) -> None:
        """The symbol's ticker, with its cross sequence, to the streams that listen (which
        read its book, candles and price limit as they push them)."""
        if any(sink.wants_market_data(symbol) for sink in self._streams):
            row = self._ticker_row(symbol)
            for sink in self._streams:
                if sink.wants_market_data(symbol):
                    sink.price_moved(symbol, self._cross_seq, row)

    def _traded(self, symbol: str) -> None:
        """After a taker fill, which set the last price: the market data pushed, and every
        account's TP/SL and conditional orders watching the last price checked."""
        self._push_market_data(symbol)
        for account in self._accounts.values():
            self._check_triggers(account, symbol)

    def _check_triggers(self, account: AccountRecord, symbol: str) -> None:
        """Fire the account's TP/SL, trailing stop and conditional orders of `symbol` whose
        trigger the price each watches has reached."""
        position = account.positions.get(symbol)
        if position is not None and position.size != 0:
            self._trigger_stops(account, position)
        self._fire_conditionals(account, symbol)

    def _liquidate_if_due(self, account: AccountRecord) -> None:
        """Bybit's liquidation of a unified account in cross margin, simplified: once its
        equity is down to its maintenance margin (the maintenance margin rate at 100 %), its
        orders, conditional orders and positions' TP/SL are cancelled (`CancelAllBeforeLiq`)
        and the liquidation engine takes over every position: each at its current price,
        the one losing most last, at its bankruptcy price (`_liquidation_prices`: where the
        equity left is 0), so the shortfall is the losing position's alone. Each takeover is
        an order `CreateByLiq` filled at once, no fee, its fill `BustTrade`, which is not a
        public trade (the engine's own book); `allLiquidation` tells it. The wallet is then
        left at about 0 (what the rounding of the price leaves), never below."""
        figures = self._figures(account)
        held = [position for position in account.positions.values() if position.size != 0]
        if not held or figures.equity > figures.position_mm:
            return
        for order in self._waiting_orders(account):
            if order.order_id in account.conditional_orders:
                self._end_conditional(account, order, cancel_type="CancelAllBeforeLiq")
            elif order.status == "Untriggered":
                self._cancel_exit(account, order, cancel_type="CancelAllBeforeLiq")
            elif order.is_open:
                self._close(account, order, cancel_type="CancelAllBeforeLiq")
        held.sort(key=lambda position: self._unrealised(position), reverse=True)
        for position in held:
            price = self._marks[position.symbol]
            if position is held[-1]:
                levels = self._liquidation_prices(account, position)
                price = levels[1] if levels else price
            self._take_over(account, position, price)

    def _unrealised(self, position: PositionRecord) -> Decimal:
        return (self._marks[position.symbol] - position.avg_price) * position.size

    def _take_over(self, account: AccountRecord, position: PositionRecord, price: Decimal) -> None:
        """The liquidation engine's takeover of a whole position at `price`."""
        size = position.size
        order = self._closing_order(
            position.symbol,
            size,
            order_type="Limit",
            price=price,
            close_on_trigger=False,
            create_type=LIQUIDATION_CREATE_TYPE,
            arrived=True,
        )
        account.orders[order.order_id] = order
        self._fill(account, order, abs(size), price, maker=False)
        row = {
            "T": order.created_ms,
            "s": position.symbol,
            "S": "Buy" if size > 0 else "Sell",  # the side of the position liquidated
            "v": fmt(abs(size)),
            "p": fmt(price),
        }
        for sink in self._streams:
            sink.push_liquidation(position.symbol, row)

    def _trigger_stops(self, account: AccountRecord, position: PositionRecord) -> None:
        """When the price it watches reaches SL or TP, or the last price an active trailing
        stop (moved first), clear them all and send that level's order, a reduce-only market
        order for the whole position; it fills like any market order, a moment later."""
        symbol, long = position.symbol, position.size > 0
        last = self._last_prices[symbol]
        self._trail(position, last)
        stop, profit, trailing = position.stop_loss, position.take_profit, position.trailing_level
        stop_seen = self._watched(symbol, position.sl_trigger_by)
        profit_seen = self._watched(symbol, position.tp_trigger_by)
        if stop is not None and (stop_seen <= stop if long else stop_seen >= stop):
            kind = "StopLoss"
        elif profit is not None and (profit_seen >= profit if long else profit_seen <= profit):
            kind = "TakeProfit"
        elif trailing is not None and (last <= trailing if long else last >= trailing):
            kind = "TrailingStop"
        else:
            return
        order = account.exit_orders.pop((position.symbol, kind))  # see `_sync_exits`
        _clear_exit_levels(position)
        self._push_position(account, position.symbol)
        self._sync_exits(account, position.symbol)  # the other exit is deactivated
        # Bybit's order goes Untriggered -> Triggered -> New (-> Filled), one orderId.
        self._mark_triggered(account, order)
        order.qty = abs(position.size)
        self._send_triggered(account, order)

    @staticmethod
    def _trail(position: PositionRecord, price: Decimal) -> None:
        """Move the position's trailing stop after `price`: activate it once the price
        reaches its activation price, then keep it `trailing_stop` behind the best price since
        (its order, which shows the activation price, does not change)."""
        distance, active_at = position.trailing_stop, position.trailing_active_price
        if distance is None or active_at is None:
            return
        long = position.size > 0
        current = position.trailing_level
        if current is None and (price < active_at if long else price > active_at):
            return  # not active yet
        level = price - distance if long else price + distance
        if current is None or (level > current if long else level < current):
            position.trailing_level = level

    def _mark_triggered(self, account: AccountRecord, order: OrderRecord) -> None:
        self._update(account, order, status="Triggered")

    def _send_triggered(self, account: AccountRecord, order: OrderRecord) -> None:
        """A triggered order goes New under its orderId and trades as an order of its type."""
        order.status = "New"
        order.visible_from_ms = self._engine.now_ms()
        self._submit(account, order)

    def _exit_order(
        self,
        position: PositionRecord,
        kind: str,
        trigger: Decimal,
        trigger_by: str,
        order_id: str | None = None,
    ) -> OrderRecord:
        """A position's take-profit, stop-loss or trailing-stop order, Untriggered: a
        reduce-only market order for the whole position, sent when the price (`trigger_by`)
        reaches `trigger` (a new id unless `order_id` is given)."""
        return self._closing_order(
            position.symbol,
            position.size,
            order_id=order_id,
            trigger_by=trigger_by,
            order_type="Market",
            price=None,
            close_on_trigger=True,
            status="Untriggered",
            stop_order_type=kind,
            create_type=f"CreateBy{kind}",
            trigger_price=trigger,
            visible_from_ms=self._engine.now_ms(),
        )

    def _closing_order(
        self,
        symbol: str,
        size: Decimal,
        *,
        order_id: str | None = None,
        time_in_force: str = "IOC",
        **kind: Any,
    ) -> OrderRecord:
        """An order the venue creates to close `size` (signed) of a position: reduce-only,
        without an orderLinkId, IOC unless `time_in_force` says otherwise; `kind`: the rest of
        what it is."""
        now = self.now_ms()
        return OrderRecord(
            order_id=order_id or str(uuid.uuid4()),
            order_link_id="",
            symbol=symbol,
            side="Sell" if size > 0 else "Buy",
            qty=abs(size),
            time_in_force=time_in_force,
            reduce_only=True,
            take_profit=None,
            stop_loss=None,
            last_price_on_created=self._last_prices[symbol],
            created_ms=now,
            updated_ms=now,
            seq=self._next_seq(),
            **kind,
        )

    def _sync_exits(
        self,
        account: AccountRecord,
        symbol: str,
        resumed_ids: Mapping[str, str | None] | None = None,
        *,
        cleared_by: str = "CancelByTpSlTsClear",
    ) -> None:
        """Keep the position's TP/SL orders in step with it, as Bybit does: one Untriggered
        order per level set, sized to the position; when a level is cleared (its order ends
        with `cleared_by`: the default is Bybit's "TP/SL order cancelled when the position is
        cleared", as when another exit fires) or the position closes or flips (with that same
        default), its order is Deactivated. Each change is pushed. A new order takes a new id,
        or its kind's in `resumed_ids` (a resumed position's exits keep the ids they had).
        Partial TP/SL orders end with the position too."""
        position = account.positions.get(symbol)
        self._end_partial_exits_of_closed(account, symbol, position)
        for kind, attribute in _EXIT_LEVELS:
            level = getattr(position, attribute) if position is not None else None
            order = account.exit_orders.get((symbol, kind))
            if position is None or level is None or position.size == 0:
                if position is not None:
                    position.exit_parents.pop(kind, None)
                if order is not None:
                    closed = position is None or position.size == 0
                    ended_by = "CancelByTpSlTsClear" if closed else cleared_by
                    self._end_exit(account, order, "Deactivated", ended_by)
                continue
            side = "Sell" if position.size > 0 else "Buy"
            if order is not None and order.side != side:  # another position: never reused
                self._end_exit(account, order, "Deactivated", "CancelByTpSlTsClear")
                order = None
            watched_by = _EXIT_TRIGGER_BY.get(kind)
            watched = getattr(position, watched_by) if watched_by else "LastPrice"
            if order is None:
                order = self._exit_order(
                    position, kind, level, watched, (resumed_ids or {}).get(kind)
                )
                order.parent_order_link_id = position.exit_parents.get(kind, "")
                account.exit_orders[(symbol, kind)] = order
                account.orders[order.order_id] = order
                self._push_order(account, order)
            elif (order.trigger_price, order.qty, order.trigger_by) != (
                level,
                abs(position.size),
                watched,
            ):
                self._update(
                    account,
                    order,
                    trigger_price=level,
                    qty=abs(position.size),
                    trigger_by=watched,
                )

    def _end_partial_exits_of_closed(
        self, account: AccountRecord, symbol: str, position: PositionRecord | None
    ) -> None:
        """Deactivate the partial TP/SL orders of `symbol` that no longer close its position
        (it closed or flipped): "The system will cancel these orders if the position is
        closed"."""
        size = position.size if position is not None else ZERO
        for order in [
            o
            for o in account.conditional_orders.values()
            if o.symbol == symbol and o.stop_order_type in _PARTIAL_EXITS
        ]:
            if size == 0 or (order.side == "Sell") != (size > 0):
                self._end_conditional(account, order, cancel_type="CancelByTpSlTsClear")

    def _end_exit(
        self, account: AccountRecord, order: OrderRecord, status: str, cancel_type: str
    ) -> None:
        account.exit_orders.pop((order.symbol, order.stop_order_type), None)
        self._update(account, order, status=status, cancel_type=cancel_type)

    def _cancel_exit(
        self, account: AccountRecord, order: OrderRecord, *, cancel_type: str = "CancelByUser"
    ) -> None:
        """A TP/SL order cancelled (by its owner, unless `cancel_type` says otherwise): the
        position's level goes with it."""
        position = account.positions.get(order.symbol)
        if position is not None:
            if order.stop_order_type == "TrailingStop":
                _clear_trailing_stop(position)
            else:
                setattr(position, dict(_EXIT_LEVELS)[order.stop_order_type], None)
                position.exit_parents.pop(order.stop_order_type, None)
            position.updated_ms = self.now_ms()
            self._push_position(account, order.symbol)
        # Bybit (UTA): "Deactivated: ... conditional order ... cancelled before triggered".
        self._end_exit(account, order, "Deactivated", cancel_type)

    @staticmethod
    def _waiting_exit(
        account: AccountRecord, symbol: str, order_id: str | None
    ) -> OrderRecord | None:
        """The Untriggered TP/SL order `order_id` of `symbol`, if it is one (they have no
        orderLinkId)."""
        order = account.orders.get(order_id) if order_id is not None else None
        if order is None or order.symbol != symbol or order.status != "Untriggered":
            return None
        return order if order.stop_order_type in dict(_EXIT_LEVELS) else None

    def _waiting_conditional(
        self, account: AccountRecord, symbol: str, order_id: str | None, link_id: str | None
    ) -> OrderRecord | None:
        """The Untriggered conditional order of `symbol` by orderId or orderLinkId, if any."""
        order = self._find(account, order_id, link_id)
        if order is None or order.symbol != symbol:
            return None
        return account.conditional_orders.get(order.order_id)

    @staticmethod
    def _waiting_orders(account: AccountRecord) -> list[OrderRecord]:
        """The open orders and the Untriggered conditional and TP/SL orders, oldest first."""
        waiting = [
            *account.open_orders.values(),
            *account.conditional_orders.values(),
            *account.exit_orders.values(),
        ]
        return sorted(waiting, key=lambda order: order.seq)

    def _start_walk(self, symbol: str, spec: PriceWalk) -> None:
        if spec.start is not None:
            self._move(symbol, spec.start)
        walk = _Walk(
            spec=spec,
            rng=random.Random(spec.seed),  # noqa: S311 - a reproducible path, not a secret
            next_due_ms=self._engine.now_ms() + spec.interval_ms,
        )
        self._walks[symbol] = walk
        self._engine.schedule_at(walk.next_due_ms, self._walk_step(symbol, walk))

    def _walk_step(self, symbol: str, walk: _Walk) -> Callable[[], None]:
        def step() -> None:
            if self._walks.get(symbol) is not walk:
                return  # replaced or stopped since this step was scheduled
            tick = self._config.instruments[symbol].tick_size
            price = self._marks[symbol]
            sign = 1 if walk.rng.random() < 0.5 else -1
            change = price * (sign * walk.spec.step_bps + walk.spec.drift_bps) / _BPS
            moved = to_tick(price + change, tick, up=change > 0)
            if moved == price and change != 0:
                moved = price + (tick if change > 0 else -tick)
            moved = min(max(moved, tick), tick * MAX_PRICE_TICKS)
            self._move(symbol, moved)
            walk.next_due_ms += walk.spec.interval_ms
            self._engine.schedule_at(walk.next_due_ms, step)

        return step

    def _figures(self, account: AccountRecord) -> MarginFigures:
        """The account's margin at the mark prices: its positions' margins on their value
        at the mark, as Bybit reckons them ("calculated by mark price"), and its orders'."""
        unrealised = position_im = position_mm = cum_realised = ZERO
        for symbol, position in account.positions.items():
            cum_realised += position.cum_realised_pnl
            if position.size == 0:
                continue
            mark = self._marks[symbol]
            value = abs(position.size) * mark
            unrealised += (mark - position.avg_price) * position.size
            position_im += value / self._leverage(account, symbol)
            position_mm += value * MAINTENANCE_MARGIN_RATE
        order_im = ZERO
        for order in account.open_orders.values():
            if not order.reduce_only:
                # A market order not yet filled holds margin at the current price.
                price = order.price if order.price is not None else self._marks[order.symbol]
                order_im += order.leaves_qty * price / self._leverage(account, order.symbol)
        return MarginFigures(
            wallet_balance=account.wallet_balance,
            unrealised_pnl=unrealised,
            position_im=position_im,
            position_mm=position_mm,
            order_im=order_im,
            cum_realised_pnl=cum_realised,
        )

    def _position_rows(self, account: AccountRecord, symbol: str) -> list[dict[str, Any]]:
        """One row in one-way mode; in hedge mode positionIdx 1 (Buy side), 2 (Sell side)."""
        if symbol not in account.hedge_symbols:
            return [self._position_view(account, symbol)]
        return [
            position_view(
                PositionRecord(symbol=symbol),
                self._marks[symbol],
                self._leverage(account, symbol),
                account.created_ms,
                idx,
                taker_fee_rate=self._config.taker_fee_rate,
            )
            for idx in (1, 2)
        ]

    def _position_view(self, account: AccountRecord, symbol: str) -> dict[str, Any]:
        position = account.positions.get(symbol) or PositionRecord(symbol=symbol)
        levels = self._liquidation_prices(account, position)
        tick = self._instrument(symbol).tick_size
        shown = levels is not None and tick < levels[0] < tick * MAX_PRICE_TICKS
        return position_view(
            position,
            self._marks[symbol],
            self._leverage(account, symbol),
            account.created_ms,
            taker_fee_rate=self._config.taker_fee_rate,
            liquidation_price=levels[0] if levels is not None and shown else None,
        )

    def _liquidation_prices(
        self, account: AccountRecord, position: PositionRecord
    ) -> tuple[Decimal, Decimal] | None:
        """The position's estimated liquidation and bankruptcy prices, the other positions
        at their current prices (cross margin: the account's equity against its maintenance
        margin, `_liquidate_if_due`), rounded to the tick; None if flat, or if no positive
        price would liquidate it.

        At price P the equity is rest + (P - entry) x size and the maintenance margin
        others + |size| x P x rate (its own, on its value at P), so they meet at
        P = (others - rest + entry x size) / (size - |size| x rate); the equity is 0 at
        entry - rest / size."""
        size = position.size
        if size == 0:
            return None
        figures = self._figures(account)
        own = self._unrealised(position)
        rest = figures.wallet_balance + figures.unrealised_pnl - own  # equity without it
        own_mm = abs(size) * self._marks[position.symbol] * MAINTENANCE_MARGIN_RATE
        others = figures.position_mm - own_mm
        liquidation = (others - rest + position.avg_price * size) / (
            size - abs(size) * MAINTENANCE_MARGIN_RATE
        )
        bankruptcy = position.avg_price - rest / size
        if liquidation <= 0:
            return None
        tick = self._instrument(position.symbol).tick_size
        # The liquidation price on the first tick that liquidates (below it for a long,
        # above for a short); the bankruptcy price in the holder's favour.
        long = position.size > 0
        return (
            to_tick(liquidation, tick, up=not long),
            max(to_tick(bankruptcy, tick, up=long), tick),
        )


def _by_note(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{note: {path: requests}}, sorted."""
    table: dict[str, dict[str, int]] = {}
    for (note, path), n in sorted(counts.items()):
        table.setdefault(note, {})[path] = n
    return table
