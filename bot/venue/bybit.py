"""Bybit V5 through pybit: the only way the bot reaches an exchange, the simulator included.

pybit is synchronous, so each key gets a few worker threads of its own, each with its own
pybit session: calls never block the event loop, a slow answer on one call does not hold up
the key's other calls, and a caller that needs order (a lane of the pipeline) awaits each call
before the next. pybit's own retries are off (the executor
is the only retry authority for orders); idempotent reads are retried here, a bounded number
of times. Every private request waits for room in its endpoint's rate window (`Pacer`), and
every answer's X-Bapi-Limit* headers correct that window. A 10002 (timestamp outside the
recv window) resynchronises the signing clock with `/v5/market/time` before it is reported.
Every failure leaves this module classified (`bot.venue.errors`). Every signed request, and
its outcome, is told to the venue's observers (`bot.audit`: the audit log, the metrics).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple, TypeVar

import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP
from pydantic import SecretStr
from requests.utils import get_environ_proxies

from bot import clock
from bot.audit import RequestObserver, VenueRequest, notify
from bot.bounded import Recently
from bot.config import Environment
from bot.execution.pacing import Pacer, PaceTooLong, RateWindow
from bot.logs import logger
from bot.messages import (
    ClosedPnl,
    Execution,
    ExitOrder,
    Instrument,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    PositionUpdate,
    WalletUpdate,
)
from bot.secrets import ApiCredentials
from bot.venue.base import EXIT_SCAN_ORDERS, SETTLE_COIN, venue_urls
from bot.venue.errors import (
    CLOCK_DRIFT_CODE,
    IP_WIDE_CODES,
    LEVERAGE_NOT_MODIFIED_CODE,
    ORDER_NOT_FOUND_CODE,
    TPSL_NOT_MODIFIED_CODE,
    AmbiguousError,
    HeldError,
    OrderRejectedError,
    RetryableError,
    VenueError,
    classify,
)
from bot.venue.shapes import (
    POSITION_EXEC_TYPES,
    KeyInfo,
    closed_pnl,
    decimal_field,
    execution,
    exit_order,
    is_exit_order,
    key_info,
    order_event,
    position_update,
    wallet_update,
)
from bot.venue.transport import KeptAliveSession

__all__ = ["READ_ATTEMPTS", "THREADS_PER_KEY", "BybitVenue"]

T = TypeVar("T")

CATEGORY: Final = "linear"
# pybit retries any retCode in `retry_codes` itself, sleeping in our worker thread, and an
# empty set means "its defaults" (10002, 10006, ...). A code Bybit never sends turns that off.
_NO_PYBIT_RETRIES: Final = frozenset({-1})
#: Worker threads (each with its own pybit session) per key; pacing, not threads, bounds the
#: request rate.
THREADS_PER_KEY: Final = 4
_MAX_PAGES: Final = 20
#: Bybit answers fills in windows of at most 7 days.
_FILL_WINDOW_MS: Final = 7 * 24 * 3_600_000
_MAX_FILL_WINDOWS: Final = 60
#: Fills are fetched from a minute before the last one journaled: a push can come late.
_FILL_OVERLAP_MS: Final = 60_000
READ_ATTEMPTS: Final = 4
_READ_BACKOFF_S: Final = (0.1, 0.3, 0.6)
#: A read's retry is a warning once per operation in this many seconds, else a debug line
#: (an outage made 20-50 warnings a second).
_RETRY_NOTE_S: Final = 10.0
_RETRY_NOTE_KEYS: Final = 64
_MAX_READ_WAIT_S: Final = 2.0
_CLOCK_SAMPLES: Final = 3
#: A resync that moves the signing clock this far changes whether a request is on time
#: (Bybit takes a timestamp from recv_window before its clock to 1 s after it); smaller moves
#: are the estimate's own noise.
_CLOCK_MOVE_MS: Final = 1_000
#: A `/v5/market/time` round trip slower than this sets no clock (its error would be half).
_CLOCK_MAX_RTT_S: Final = 1.0


@dataclass
class _VenueClock:
    """The venue's clock minus ours, in ms; set from /v5/market/time after a 10002 and
    shared by every session of the key."""

    offset_ms: int = 0


class _SigningHTTP(HTTP):  # type: ignore[misc]  # pybit ships no type hints
    """pybit's client holding the API key and secret as SecretStr, unwrapped only to sign,
    sending over a `KeptAliveSession` (a third of requests' CPU per call, measured)."""

    client: requests.Session

    def __init__(
        self, *, api_key: SecretStr, api_secret: SecretStr, clock: _VenueClock, **kwargs: Any
    ) -> None:
        super().__init__(
            api_key="<held-as-SecretStr>",
            api_secret="<held-as-SecretStr>",  # noqa: S106
            **kwargs,
        )
        session = KeptAliveSession()
        session.headers.update(self.client.headers)  # pybit's own (Content-Type, Accept, ...)
        self.client.close()
        self.client = session
        self._key = api_key
        self._secret = api_secret
        self._clock = clock
        self.http_method = ""  # of the last request, for its audit record

    def _submit_request(
        self,
        method: str | None = None,
        path: str | None = None,
        query: Any = None,
        auth: bool = False,
    ) -> Any:
        # A session serves one thread, one request at a time: the method read after the call
        # is this request's.
        self.http_method = method or ""
        return super()._submit_request(method=method, path=path, query=query, auth=auth)

    def _prepare_headers(
        self, payload: Any, recv_window: int, content_type: str = "application/json"
    ) -> dict[str, str]:
        # pybit's own header builder, with the timestamp on the venue's clock.
        timestamp = int(time.time() * 1000) + self._clock.offset_ms
        return {
            "Content-Type": content_type,
            "X-BAPI-API-KEY": self._key.get_secret_value(),
            "X-BAPI-SIGN": self._auth(payload, recv_window, timestamp),
            "X-BAPI-SIGN-TYPE": "2",
            "X-BAPI-TIMESTAMP": str(timestamp),
            "X-BAPI-RECV-WINDOW": str(recv_window),
        }

    def _auth(self, payload: str, recv_window: int, timestamp: int) -> str:
        # Same string-to-sign as pybit's HMAC path: timestamp + api_key + recv_window + payload.
        key = self._key.get_secret_value()
        message = f"{timestamp}{key}{recv_window}{payload}".encode()
        secret = self._secret.get_secret_value().encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    def pin_environment(self) -> None:
        """Read the proxy and CA-bundle settings from the environment once, for `endpoint`.

        requests reads them (and ~/.netrc) again on every request while `trust_env` is on:
        measured, that was most of a signal's CPU with a few dozen variables set.
        """
        self.client.proxies.update(get_environ_proxies(self.endpoint))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.client.verify = bundle
        self.client.trust_env = False

    def __repr__(self) -> str:
        return f"_SigningHTTP(endpoint={self.endpoint!r})"


class BybitVenue:
    """One Bybit account (one API key) in one environment."""

    def __init__(
        self,
        credentials: ApiCredentials,
        environment: Environment,
        *,
        sim_url: str = "",
        recv_window_ms: int = 5000,
        timeout_s: float = 5.0,
        max_wait_s: float = 30.0,
        pacer: Pacer | None = None,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        """`max_wait_s` bounds a wait for room under a rate limit: past it a call fails as
        retryable (with the wait) instead of sleeping through a ban. `observers` are told of
        every signed request, whatever its outcome, on the venue thread that sent it (the
        audit log, the metrics): each must be quick."""
        self._rest_url, _ = venue_urls(environment, sim_url)
        self.name = credentials.name
        self.environment = environment
        self._clock = _VenueClock()
        self._retries_said = Recently(_RETRY_NOTE_S, _RETRY_NOTE_KEYS)
        self._session_options: dict[str, Any] = {
            "api_key": credentials.api_key,
            "api_secret": credentials.api_secret,
            "clock": self._clock,
            "recv_window": recv_window_ms,
            "timeout": timeout_s,
            "force_retry": False,
            "max_retries": 1,
            "retry_codes": set(_NO_PYBIT_RETRIES),
            "return_response_headers": True,
        }
        self._sessions: list[_SigningHTTP] = []
        self._sessions_lock = threading.Lock()
        self._generation = 0  # bumped by `rotate`: each thread then opens a new session
        self._local = threading.local()
        self._endpoint = str(self._session().endpoint)
        self._pool = ThreadPoolExecutor(
            max_workers=THREADS_PER_KEY, thread_name_prefix=f"venue-{self.name}"
        )
        self._pacer = pacer or Pacer()
        self._max_wait_s = max_wait_s
        self._observers = tuple(observers)
        self._instruments: dict[str, Instrument] = {}

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def clock_offset_ms(self) -> int:
        """The venue's clock minus ours (ms) that requests are signed with."""
        return self._clock.offset_ms

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._sessions_lock:
            for session in self._sessions:
                session.client.close()

    def rotate(self, credentials: ApiCredentials) -> None:
        """Sign every new request with `credentials` (a new key of the same account): the key
        name, and with it the rate limiter and the journal's identity, stay. A request in
        flight finishes with the old key."""
        if credentials.name != self.name:
            raise ValueError(f"credentials of key {credentials.name} given to key {self.name}")
        with self._sessions_lock:
            self._session_options = {
                **self._session_options,
                "api_key": credentials.api_key,
                "api_secret": credentials.api_secret,
            }
            self._generation += 1

    def _session(self) -> _SigningHTTP:
        """This thread's pybit session (requests sessions are not shared between threads),
        opened anew after a rotation; the old one is idle then (a thread makes one call at a
        time) and is closed."""
        session: _SigningHTTP | None = getattr(self._local, "session", None)
        if session is not None and self._local.generation == self._generation:
            return session
        with self._sessions_lock:
            options, generation = self._session_options, self._generation
            if session is not None:
                self._sessions.remove(session)
                session.client.close()
        fresh = _SigningHTTP(**options)
        fresh.endpoint = self._rest_url  # the key's environment alone decides it
        fresh.pin_environment()
        self._local.session, self._local.generation = fresh, generation
        with self._sessions_lock:
            self._sessions.append(fresh)
        return fresh

    # orders --------------------------------------------------------------------------------

    async def place_order(
        self, request: OrderRequest, hold: Callable[[], str | None] | None = None
    ) -> OrderEvent:
        result = await self._call_unless(
            hold, "place_order", "/v5/order/create", "place_order", request.to_bybit_params()
        )
        return OrderEvent(
            order_link_id=request.order_link_id,
            status=OrderStatus.NEW,
            order_id=str(result.get("orderId") or "") or None,
        )

    async def cancel_order(self, order_link_id: str, symbol: str) -> bool:
        try:
            await self._call(
                "cancel_order",
                "/v5/order/cancel",
                "cancel_order",
                category=CATEGORY,
                symbol=symbol,
                orderLinkId=order_link_id,
            )
        except OrderRejectedError as exc:
            if exc.ret_code == ORDER_NOT_FOUND_CODE:  # filled, cancelled, or never placed
                return False
            raise
        return True

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        value = _plain(leverage)
        try:
            await self._call(
                "set_leverage",
                "/v5/position/set-leverage",
                "set_leverage",
                category=CATEGORY,
                symbol=symbol,
                buyLeverage=value,
                sellLeverage=value,
            )
        except OrderRejectedError as exc:
            if exc.ret_code != LEVERAGE_NOT_MODIFIED_CODE:
                raise

    async def set_trading_stop(
        self, symbol: str, *, stop_loss: Decimal | None, take_profit: Decimal | None
    ) -> None:
        """Set Trading Stop on the whole one-way position (tpslMode Full); like an order, it
        is sent once, never retried here. Bybit's 34040 (already set) is success."""
        levels = {
            name: _plain(level)
            for name, level in (("stopLoss", stop_loss), ("takeProfit", take_profit))
            if level is not None
        }
        if not levels:
            return  # nothing to change; Bybit would answer 34040
        try:
            await self._call(
                "set_trading_stop",
                "/v5/position/trading-stop",
                "set_trading_stop",
                category=CATEGORY,
                symbol=symbol,
                tpslMode="Full",
                positionIdx=0,  # one-way mode; start-up refuses an account in hedge mode
                **levels,
            )
        except OrderRejectedError as exc:
            if exc.ret_code != TPSL_NOT_MODIFIED_CODE:
                raise

    async def get_order(self, order_link_id: str, symbol: str) -> OrderEvent | None:
        """The order under `order_link_id`, asked in every USDT contract, not only `symbol`:
        an order another client placed under that id in another symbol is found too (the
        executor tells it from ours by its symbol), instead of nothing."""
        del symbol  # see above
        query = {"category": CATEGORY, "settleCoin": SETTLE_COIN, "orderLinkId": order_link_id}
        for path, method in (
            ("/v5/order/realtime", "get_open_orders"),
            ("/v5/order/history", "get_order_history"),
        ):
            result = await self._read("get_order", path, method, **query)
            for row in result.get("list") or []:
                if row.get("orderLinkId") == order_link_id:
                    return order_event(row)
        return None

    async def exit_orders(self, symbol: str, waiting: Collection[str] = ()) -> list[ExitOrder]:
        result = await self._read(
            "exit_orders",
            "/v5/order/history",
            "get_order_history",
            category=CATEGORY,
            symbol=symbol,
            limit=EXIT_SCAN_ORDERS,
        )
        exits = [
            exit_order(row, self.name) for row in result.get("list") or [] if is_exit_order(row)
        ]
        seen = {exit.order_id for exit in exits}
        for order_id in waiting:
            if order_id in seen:
                continue
            # Older than the latest orders: Bybit answers an order asked for by its id
            # whatever its age, open ones in realtime, ended ones in the history.
            for path, method in (
                ("/v5/order/realtime", "get_open_orders"),
                ("/v5/order/history", "get_order_history"),
            ):
                found = await self._read(
                    "exit_orders", path, method, category=CATEGORY, symbol=symbol, orderId=order_id
                )
                rows = [
                    row
                    for row in found.get("list") or []
                    if row.get("orderId") == order_id and is_exit_order(row)
                ]
                if rows:
                    exits.append(exit_order(rows[0], self.name))
                    break
        return exits

    # account snapshots (closing gaps in the private stream) -------------------------------

    async def open_orders(self) -> list[OrderEvent]:
        """Every open order of the account (linear, USDT-settled); venue-created exits too."""
        rows = await self._pages(
            "open_orders", "/v5/order/realtime", "get_open_orders", settleCoin=SETTLE_COIN
        )
        return [order_event(row) for row in rows if not is_exit_order(row)]

    async def positions(self) -> list[PositionUpdate]:
        rows = await self._pages(
            "positions", "/v5/position/list", "get_positions", settleCoin=SETTLE_COIN
        )
        return [position_update(row, self.name) for row in rows]

    async def executions_since(self, since: datetime | None) -> list[Execution]:
        """Fills from `since` (a minute earlier, to be safe: dedupe is by execId), oldest
        first, in Bybit's windows of at most 7 days; without `since`, the last 7 days.

        Raises rather than return a partial list: a silent hole would be a position the
        books never see.
        """
        rows: list[dict[str, Any]] = []
        if since is None:
            rows = await self._pages(
                "executions", "/v5/execution/list", "get_executions", complete=True, limit=100
            )
        else:
            start_ms = int(since.timestamp() * 1000) - _FILL_OVERLAP_MS
            now_ms = int(time.time() * 1000) + self._clock.offset_ms
            for _ in range(_MAX_FILL_WINDOWS):
                end_ms = start_ms + _FILL_WINDOW_MS - 1
                last = end_ms >= now_ms
                # The window that reaches now has no end: Bybit's is then 7 days from its
                # start, so a fill the venue stamped past our estimate of its clock (the
                # estimate lags a drift) is not left out.
                bounds = {"startTime": start_ms} | ({} if last else {"endTime": end_ms})
                rows += await self._fill_window(bounds)
                if last:
                    break
                start_ms = end_ms + 1
        fills = [
            execution(row, self.name)
            for row in rows
            if row.get("execType", "Trade") in POSITION_EXEC_TYPES
            and str(row.get("symbol", "")).endswith(SETTLE_COIN)
        ]
        # Bybit lists each window newest first: reversed, fills of one millisecond keep the
        # venue's order through the (stable) sort.
        return sorted(reversed(fills), key=lambda fill: fill.ts)

    async def closed_pnl_since(self, since: datetime | None) -> list[ClosedPnl]:
        """Closing orders' realized PnL from `since` on (None: the last 7 days)."""
        params: dict[str, Any] = {"limit": 100}
        if since is not None:
            params["startTime"] = int(since.timestamp() * 1000) - 1000
        rows = await self._pages(
            "closed_pnl", "/v5/position/closed-pnl", "get_closed_pnl", **params
        )
        return [closed_pnl(row, self.name) for row in rows]

    async def wallet(self) -> WalletUpdate:
        result = await self._read(
            "wallet", "/v5/account/wallet-balance", "get_wallet_balance", accountType="UNIFIED"
        )
        rows = result.get("list") or []
        if not rows:
            raise VenueError("wallet balance is empty", operation="wallet")
        return wallet_update(rows[0], self.name, clock.now_ms())  # a replay's calendar too

    async def hedge_mode_symbols(self, symbols: Sequence[str]) -> list[str]:
        """The symbols whose position rows say hedge mode (positionIdx 1 and 2)."""
        hedged = []
        for symbol in symbols:
            rows = await self._position_rows("position_mode", symbol)
            if any(int(row.get("positionIdx") or 0) != 0 for row in rows):
                hedged.append(symbol)
        return hedged

    async def symbol_leverage(self, symbol: str) -> Decimal | None:
        """From the symbol's position row, which Bybit lists with its leverage even when
        the position is empty."""
        for row in await self._position_rows("leverage", symbol):
            leverage = row.get("leverage")
            if leverage:
                return decimal_field(leverage, "leverage")
        return None

    async def _position_rows(self, operation: str, symbol: str) -> list[dict[str, Any]]:
        result = await self._read(
            operation, "/v5/position/list", "get_positions", category=CATEGORY, symbol=symbol
        )
        return list(result.get("list") or [])

    async def _fill_window(self, bounds: dict[str, int]) -> list[dict[str, Any]]:
        """Every fill of one window (`startTime`, and `endTime` unless it reaches now), newest
        first. Bybit lists a window newest first, so one holding more than `_MAX_PAGES`
        pages (another client of the account trading hard while the bot was down) is read
        on below the oldest fill read, that millisecond again (deduped by execId), until a
        read ends within the pages: the fills past the pages are older, never left out."""
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            page_rows, more = await self._paged(
                "executions", "/v5/execution/list", "get_executions", limit=100, **bounds
            )
            for row in page_rows:
                exec_id = str(row.get("execId"))
                if exec_id not in seen:
                    seen.add(exec_id)
                    rows.append(row)
            if not more:
                return rows
            times = [int(t) for row in page_rows if (t := str(row.get("execTime"))).isdigit()]
            oldest = min(times, default=None)
            if oldest is None or oldest >= bounds.get("endTime", oldest + 1):
                # One millisecond fills the pages, or they say no time to read on below.
                raise AmbiguousError(
                    f"more than {_MAX_PAGES} pages of fills at {oldest or 'no time given'}",
                    operation="executions",
                )
            bounds = {**bounds, "endTime": oldest}

    async def _pages(
        self, operation: str, path: str, method: str, *, complete: bool = False, **params: Any
    ) -> list[dict[str, Any]]:
        """Every row of a cursor-paginated list, up to `_MAX_PAGES` pages; past that the rest
        is left with a warning, or, when the list must be `complete`, an error."""
        rows, more = await self._paged(operation, path, method, **params)
        if more:
            if complete:
                raise AmbiguousError(f"more than {_MAX_PAGES} pages", operation=operation)
            logger.warning(
                "{op}: more than {n} pages; the rest is left", op=operation, n=_MAX_PAGES
            )
        return rows

    async def _paged(
        self, operation: str, path: str, method: str, **params: Any
    ) -> tuple[list[dict[str, Any]], bool]:
        """The rows of a cursor-paginated list, up to `_MAX_PAGES` pages, and whether more
        are left."""
        rows: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(_MAX_PAGES):
            page_params = {"category": CATEGORY, **params}
            if cursor:
                page_params["cursor"] = cursor
            result = await self._read(operation, path, method, **page_params)
            rows.extend(result.get("list") or [])
            cursor = str(result.get("nextPageCursor") or "")
            if not cursor:
                return rows, False
        return rows, True

    # market and account --------------------------------------------------------------------

    async def api_key_info(self) -> KeyInfo:
        """What this key may do: `/v5/user/query-api`."""
        return key_info(
            await self._read("api_key_info", "/v5/user/query-api", "get_api_key_information")
        )

    async def last_price(self, symbol: str) -> Decimal:
        result = await self._read("last_price", "", "get_tickers", category=CATEGORY, symbol=symbol)
        rows = result.get("list") or []
        if not rows:
            raise VenueError(f"no ticker for {symbol}", operation="last_price")
        return decimal_field(rows[0].get("lastPrice"), "lastPrice")

    async def instrument(self, symbol: str) -> Instrument:
        """Trading rules, fetched once per symbol per process."""
        if symbol not in self._instruments:
            result = await self._read(
                "instrument",
                "",
                "get_instruments_info",
                category=CATEGORY,
                symbol=symbol,
            )
            rows = result.get("list") or []
            if not rows:
                raise VenueError(f"{symbol} is not a {CATEGORY} instrument", operation="instrument")
            lot, price = rows[0]["lotSizeFilter"], rows[0]["priceFilter"]
            self._instruments[symbol] = Instrument(
                symbol=symbol,
                qty_step=decimal_field(lot.get("qtyStep"), "qtyStep"),
                min_order_qty=decimal_field(lot.get("minOrderQty"), "minOrderQty"),
                max_order_qty=decimal_field(lot.get("maxOrderQty"), "maxOrderQty"),
                tick_size=decimal_field(price.get("tickSize"), "tickSize"),
                min_notional_usdt=decimal_field(
                    lot.get("minNotionalValue") or "0", "minNotionalValue"
                ),
                max_market_order_qty=_positive_or_none(lot, "maxMktOrderQty"),
            )
        return self._instruments[symbol]

    # plumbing ------------------------------------------------------------------------------

    async def sync_clock(self) -> int:
        """Set the signing clock's offset from the venue's `/v5/market/time`; returns it (ms).

        The offset is the venue's time minus the midpoint of the round trip, so its error is
        up to half the round trip: of `_CLOCK_SAMPLES` tries the quickest is used, and none
        slower than `_CLOCK_MAX_RTT_S` (a stalled answer would set the clock seconds off and
        every signed request after would be refused). Without a usable one the offset stays.
        A try that fails (a 5xx, a 10016) is passed over; the error is raised only when
        every try failed: one lost answer must not leave the clock wrong, or the request that
        asked for the resync is refused again at once (a cancel's tries spent in 10 ms).
        """
        best: tuple[float, int] | None = None  # (round trip s, offset ms)
        failures: list[VenueError] = []
        for _ in range(_CLOCK_SAMPLES):
            before = time.time()
            try:
                result = await self._call("sync_clock", "", "get_server_time")
            except VenueError as exc:
                failures.append(exc)
                continue
            after = time.time()
            venue_ms = int(str(result.get("timeNano") or "0")) // 1_000_000 or (
                int(str(result.get("timeSecond") or "0")) * 1000
            )
            sample = (after - before, venue_ms - int((before + after) / 2 * 1000))
            if sample[0] <= _CLOCK_MAX_RTT_S and (best is None or sample < best):
                best = sample
        if len(failures) == _CLOCK_SAMPLES:
            raise failures[-1]
        if best is None:
            logger.warning(
                "venue time answered too slowly to set the signing clock; offset kept",
                key=self.name,
                offset_ms=self._clock.offset_ms,
            )
            return self._clock.offset_ms
        self._clock.offset_ms = best[1]
        logger.warning(
            "signing clock resynchronised with the venue",
            key=self.name,
            offset_ms=best[1],
            round_trip_ms=round(best[0] * 1000, 1),
        )
        return best[1]

    async def _call(self, operation: str, path: str, method: str, **params: Any) -> Any:
        """One pybit call (`method` names it) on one of this key's threads, paced when `path`
        is a private endpoint ("" for public ones); returns `result`, raises a classified
        error."""
        return await self._call_unless(None, operation, path, method, params)

    async def _call_unless(
        self,
        hold: Callable[[], str | None] | None,
        operation: str,
        path: str,
        method: str,
        params: dict[str, Any],
    ) -> Any:
        """`_call`, unless `hold`, asked once the pacing lets the call go, gives a reason not
        to make it after all (`HeldError`): a wait for room under the limits can outlast what
        allowed the call (a halt since)."""
        window = self._pacer.window(path)
        try:
            slot = await window.acquire(self._max_wait_s)
        except PaceTooLong as exc:
            raise RetryableError(str(exc), retry_after_s=exc.wait_s, operation=operation) from None
        held = None if hold is None else hold()
        if held is not None:
            window.release(slot)
            raise HeldError(held, operation=operation)

        def send() -> Any:
            slot.sent = True
            try:
                return self._send(path, method, params)
            finally:
                slot.finish()

        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._pool, send)
        except asyncio.CancelledError:
            window.release(slot)
            raise
        except Exception as exc:  # every failure leaves here classified, none raw
            error = classify(exc, operation, clock_offset_ms=self._clock.offset_ms)
            await self._after_failure(window, error, getattr(exc, "resp_headers", None))
            raise error from exc
        response, headers = _unpack(answer)
        if path:
            _observe_limits(window, headers, self._clock.offset_ms)
        if not isinstance(response, dict) or not isinstance(response.get("result"), dict):
            raise AmbiguousError("answer without a result object", operation=operation)
        return response["result"]

    def _send(self, path: str, method: str, params: dict[str, Any]) -> Any:
        """The pybit call on this thread's session. A signed one (a private `path`) is told to
        the observers whatever its outcome: built from the fields of `VenueRequest` alone,
        never from headers or parameters that could hold a signature."""
        session = self._session()
        if not path or not self._observers:
            return getattr(session, method)(**params)
        at, started = time.time(), time.perf_counter()
        try:
            answer = getattr(session, method)(**params)
        except Exception as exc:
            self._observe(session, path, params, (at, started), _failed(exc))
            raise
        self._observe(session, path, params, (at, started), _answered(answer))
        return answer

    def _observe(
        self,
        session: _SigningHTTP,
        path: str,
        params: dict[str, Any],
        sent: tuple[float, float],
        outcome: _Outcome,
    ) -> None:
        """Tell the observers of one signed request; `sent` is (wall time, perf counter)."""
        limit, remaining = (
            _int_header(outcome.headers, name) for name in ("X-Bapi-Limit", "X-Bapi-Limit-Status")
        )
        record = VenueRequest(
            at=sent[0],
            key=self.name,
            environment=self.environment.value,
            endpoint=path,
            method=session.http_method,
            order_link_id=str(params.get("orderLinkId") or "") or None,
            ret_code=outcome.ret_code,
            http_status=outcome.http_status,
            error=outcome.error,
            latency_ms=(time.perf_counter() - sent[1]) * 1000,
            limit=limit,
            limit_remaining=remaining,
        )
        notify(self._observers, record)

    async def _after_failure(
        self, window: RateWindow, error: VenueError, headers: Mapping[str, str] | None
    ) -> None:
        if headers:
            _observe_limits(window, headers, self._clock.offset_ms)
        if not isinstance(error, RetryableError):
            return
        if error.ret_code == CLOCK_DRIFT_CODE:
            try:
                await self.sync_clock()
            except VenueError as exc:
                logger.warning("clock resync failed", key=self.name, error=str(exc))
        elif error.ret_code in IP_WIDE_CODES:
            self._pacer.ip_gate.pause(error.retry_after_s)  # every key, every endpoint
        else:
            window.pause(error.retry_after_s)

    async def _read(self, operation: str, path: str, method: str, **params: Any) -> Any:
        """An idempotent read, retried a bounded number of times on transient failures.

        A last attempt refused for its timestamp (10002) after which the resync moved the
        signing clock by a second or more gets one more: the venue's clock had moved under
        the earlier attempts (a skewed venue coming back), and the next request is signed
        right."""
        attempts, made = READ_ATTEMPTS, 0
        while True:
            offset = self._clock.offset_ms
            try:
                return await self._call(operation, path, method, **params)
            except (RetryableError, AmbiguousError) as exc:
                made += 1
                drift = isinstance(exc, RetryableError) and exc.ret_code == CLOCK_DRIFT_CODE
                moved = abs(self._clock.offset_ms - offset) >= _CLOCK_MOVE_MS
                if made == attempts == READ_ATTEMPTS and drift and moved:
                    attempts += 1
                if made >= attempts:
                    raise
                wait = _READ_BACKOFF_S[min(made, len(_READ_BACKOFF_S)) - 1]
                if drift:
                    wait = 0.0  # the clock was just resynchronised: try again at once
                elif isinstance(exc, RetryableError):
                    wait = min(max(wait, exc.retry_after_s), _MAX_READ_WAIT_S)
                # While the venue is down every read says so: once per operation a while.
                said = self._retries_said.first_in_a_while(operation)
                (logger.warning if said else logger.debug)(
                    "venue read failed, retrying", key=self.name, error=str(exc)
                )
                await asyncio.sleep(wait)


class _Outcome(NamedTuple):
    """What came back from one request, for its `VenueRequest`."""

    ret_code: int | None
    http_status: int | None
    error: str | None
    headers: Mapping[str, str]


def _unpack(answer: Any) -> tuple[Any, Mapping[str, str]]:
    """pybit's answer (with `return_response_headers`) as (response, headers)."""
    return (answer[0], answer[2]) if isinstance(answer, tuple) else (answer, {})


def _answered(answer: Any) -> _Outcome:
    response, headers = _unpack(answer)
    code = response.get("retCode") if isinstance(response, dict) else None
    # pybit returns only HTTP 200 answers; any other status raises.
    return _Outcome(code if isinstance(code, int) else None, 200, None, headers)


def _failed(exc: Exception) -> _Outcome:
    headers = getattr(exc, "resp_headers", None) or {}
    if isinstance(exc, InvalidRequestError):  # an answer with a retCode other than 0
        return _Outcome(int(exc.status_code), 200, None, headers)
    if isinstance(exc, FailedRequestError) and exc.resp_headers is not None:
        return _Outcome(None, int(exc.status_code), None, headers)
    # No usable answer: a timeout, a dropped connection, an undecodable body.
    return _Outcome(None, None, type(exc).__name__, headers)


def _plain(value: Decimal) -> str:
    """A decimal as Bybit takes it: a plain string, never an exponent ("95000", not "9.5E+4")."""
    return format(value.normalize(), "f")


def _observe_limits(window: RateWindow, headers: Mapping[str, str], clock_offset_ms: int) -> None:
    """Correct a rate window from Bybit's X-Bapi-Limit* headers (absent ones change nothing);
    the reset time is on the venue's clock."""
    limit, remaining, reset_ms = (
        _int_header(headers, name)
        for name in ("X-Bapi-Limit", "X-Bapi-Limit-Status", "X-Bapi-Limit-Reset-Timestamp")
    )
    reset_in_s = None if reset_ms is None else (reset_ms - clock_offset_ms) / 1000 - time.time()
    window.observe(limit, remaining, reset_in_s)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _positive_or_none(fields: Mapping[str, Any], name: str) -> Decimal | None:
    """An optional positive limit of instruments-info: absent, empty or zero means none."""
    if not fields.get(name):
        return None
    value = decimal_field(fields[name], name)
    return value if value > 0 else None
