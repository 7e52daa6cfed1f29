"""The simulator's HTTP face: Bybit V5 routes (public and signed) and the /sim admin routes.

Every /v5 request goes through the same gateway, in this order: the per-IP limit (HTTP 403,
then a ban of `ip_ban_ms`), a possible burst of clock skew, injected delay and HTTP 5xx, a
body over 64 KiB (10001 as soon as it is, and the connection closed), authentication (private
routes), the per-UID per-endpoint rate limit with Bybit's X-Bapi-Limit* headers (10006; a
batch counts each of its orders, and those past the limit fail 10006 on their own), injected
10006 and 10016, parameter parsing (10001), the exchange itself, and finally, for order writes
(create, amend, cancel, cancel-all and the batches), the faults that strike after the change
is made: a dropped answer (create and create-batch), 10016 or HTTP 503. Business errors are
HTTP 200 with Bybit's envelope; nothing a client sends yields HTTP 500.

Admin routes (unauthenticated, loopback clients only, errors as HTTP 4xx `{"error": ...}`):

- `GET /sim/orders[?api_key=K]`: every order, oldest first (query lag does not apply).
- `GET /sim/stats`: requests per path, answers per retCode and HTTP status, faults injected,
  authenticated requests per key note and path (which key signed what; never the key).
- `GET|POST /sim/prices`: the body maps symbols to a price (`{"BTCUSDT": 97000}`, which also
  stops any walk of that symbol), to a seeded random walk
  (`{"BTCUSDT": {"walk": {"seed": 1, "step_bps": 5, "interval_ms": 100}}}`, optional
  `drift_bps` and `start`), or stops a walk (`{"BTCUSDT": {"walk": null}}`); all or nothing.
  The answer lists `prices` and running `walks`.
- `GET|POST /sim/faults`: a `SimFaults` object; posting replaces the faults in force.
- `POST /sim/accounts`: a `SimAccountSpec` object; 409 when the key exists.
- `GET /sim/streams`: the open WebSocket connections (account UID and key note, never the key).
- `POST /sim/streams/drop`: cut stream connections without a close frame, those of
  `{"api_key": K}` or all; answers `{"dropped": n}`.

WebSocket streams (see `bot.sim.stream`): `/v5/private` and `/v5/public/linear`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote_to_bytes

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from bot.bodies import BodyRefused, read_body
from bot.sim.auth import authenticate
from bot.sim.config import SimAccountSpec, SimFaults
from bot.sim.errors import DuplicateAccountError, RetCode, SimError, clip_message
from bot.sim.exchange import BatchAnswer, SimExchange
from bot.sim.params import (
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
    batch_size,
    parse_params,
)
from bot.sim.ratelimit import RollingWindowLimiter
from bot.sim.stream import PRIVATE_PATH, PUBLIC_LINEAR_PATH, StreamHub
from bot.sim.trade_ws import TRADE_PATH, TradeDesk

__all__ = ["AnswerDropped", "create_app"]

P = TypeVar("P", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]

ORDER_CREATE_PATH = "/v5/order/create"
ORDER_CREATE_BATCH_PATH = "/v5/order/create-batch"
#: Requests that create orders: an answer may be dropped after they took effect.
ORDER_CREATE_PATHS = frozenset({ORDER_CREATE_PATH, ORDER_CREATE_BATCH_PATH})
#: Requests that change orders: the accept-then-error faults strike after they took effect.
ORDER_WRITE_PATHS = ORDER_CREATE_PATHS | {
    "/v5/order/amend",
    "/v5/order/amend-batch",
    "/v5/order/cancel",
    "/v5/order/cancel-all",
    "/v5/order/cancel-batch",
}
_JSON = "application/json"
_MAX_BODY_BYTES = 64 * 1024
#: A body not whole this long after its head is refused (10001, the connection closed): read
#: without a limit, a client that promised a Content-Length and sent less, or trickled it,
#: held its connection and its handler for good.
_BODY_TIMEOUT_S = 10.0
_CLOSE = {"Connection": "close"}
_UVICORN_ERROR_LOGGER = "uvicorn.error"


class AnswerDropped(Exception):
    """Raised after half an answer was sent, so that the server aborts the connection."""


class _QuietDroppedAnswers(logging.Filter):
    """Drops the server's traceback for an answer the simulator cut off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AnswerDropped))


_QUIET_DROPPED_ANSWERS = _QuietDroppedAnswers()


class _TruncatedResponse(Response):
    """Headers with the full Content-Length, then half the body, then an aborted connection.

    The client has sent its order and the exchange has accepted it, but what comes back is
    not a valid answer: requests raises a RequestException (ChunkedEncodingError), exactly
    the ambiguous outcome a real network failure after acceptance produces.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        raise AnswerDropped("answer dropped by the drop_response_after_accept fault")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_response(value: Any, status_code: int = 200) -> Response:
    return Response(_dumps(value), status_code=status_code, media_type=_JSON)


def _client_host(request: Request) -> str | None:
    client = request.scope.get("client")
    return client[0] if client else None


def _json_object(body: bytes, *, parse_float: Callable[[str], Any] = float) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object. Raises ValueError.

    The body must be UTF-8 without a byte order mark, as JSON exchanged over a network is
    (RFC 8259 8.1) and as Bybit reads it: `json.loads` of bytes detects UTF-16 and UTF-32 and
    skips a BOM, so bodies Bybit refuses were taken."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8 (byte {exc.start} of {len(body)})") from None
    if text.startswith("\ufeff"):
        raise ValueError("body starts with a byte order mark: send UTF-8 JSON without one")
    try:
        data = json.loads(text, parse_float=parse_float)
    except (ValueError, RecursionError) as exc:
        raise ValueError("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


class _BodyRefused(ValueError):
    """A request body not read whole: over `_MAX_BODY_BYTES`, or not sent in time."""


class _ClientGone(_BodyRefused):
    """The client closed the connection before its body was whole: no one to answer."""


async def _body(request: Request) -> bytes:
    """The request's body, read as it arrives (`read_body`: the rest unread once it grows over
    `_MAX_BODY_BYTES` or `_BODY_TIMEOUT_S` have passed); `_BodyRefused` (a ValueError) for a
    body refused so, `_ClientGone` (one too) if the client hangs up first: an admin route's
    ClientDisconnect was an ERROR traceback in the log."""
    try:
        return await read_body(request, _MAX_BODY_BYTES, _BODY_TIMEOUT_S, "a request body")
    except BodyRefused as exc:
        if exc.kind == "incomplete":
            raise _ClientGone(exc.detail) from None
        raise _BodyRefused(f"request body {exc.kind.replace('_', ' ')}: {exc.detail}") from None


def _body_params(body: bytes) -> dict[str, Any]:
    """A signed POST body as parameters; anything but a JSON object is 10001."""
    try:
        return _json_object(body)
    except ValueError as exc:
        raise SimError(RetCode.PARAMS_ERROR, f"params error: {exc}") from exc


def _query(raw: bytes) -> dict[str, Any]:
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def _batch_size(body: bytes) -> int:
    """`batch_size` of a batch body; one that is not JSON counts as one request."""
    try:
        return batch_size(_json_object(body))
    except ValueError:
        return 1


def _limit_headers(limit: int, remaining: int, reset_ms: int) -> dict[str, str]:
    return {
        "X-Bapi-Limit": str(limit),
        "X-Bapi-Limit-Status": str(remaining),
        "X-Bapi-Limit-Reset-Timestamp": str(reset_ms),
    }


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    name = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{name}: {first['msg']}"


class _Gateway:
    """Wraps exchange methods into endpoints that behave like Bybit's API gateway."""

    def __init__(self, exchange: SimExchange) -> None:
        self._exchange = exchange
        self._config = exchange.config
        self._ip_limiter = RollingWindowLimiter(
            self._config.ip_requests_per_5s, self._config.ip_window_ms
        )
        self._ip_banned_until: dict[str, int] = {}
        self._uid_limiters: dict[str, RollingWindowLimiter] = {}

    async def not_served(self, request: Request, exc: Exception) -> Response:
        """A path the simulator does not serve (404), or serves with another method (405):
        Bybit's envelope with 10017, so that a client reads a final "bad request", never an
        HTML page it would take for an outage and retry."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        what = "request method is invalid" if status == 405 else "request path not found"
        served = "" if status == 405 else " (the simulator serves a subset of Bybit's V5 API)"
        message = clip_message(f"{what}: {request.method} {request.url.path}{served}")
        return Response(
            self._body(RetCode.ROUTE_NOT_FOUND, message, None),
            status_code=status,
            media_type=_JSON,
            headers=exc.headers if isinstance(exc, HTTPException) else None,
        )

    def public(self, handler: Callable[[P], dict[str, Any]], model: type[P]) -> Endpoint:
        """An unsigned /v5/market endpoint."""

        async def endpoint(request: Request) -> Response:
            path: str = request.scope["path"]
            refused = self._refuse_ip(request, path) or await self._delay_or_fail(path)
            if refused is not None:
                return refused
            if self._exchange.inject("timeout_10016"):
                return self._envelope(path, RetCode.SERVER_TIMEOUT, "Server error.")
            try:
                result = handler(parse_params(model, _query(request.scope["query_string"])))
            except SimError as exc:
                return self._envelope(path, exc.ret_code, exc.ret_msg)
            return self._envelope(path, RetCode.OK, "OK", result)

        return endpoint

    def private(self, handler: Callable[[str, P], dict[str, Any]], model: type[P]) -> Endpoint:
        """A signed endpoint; GET reads the query string, POST the JSON body."""

        def run(api_key: str, params: P, granted: int) -> tuple[dict[str, Any], None]:
            return handler(api_key, params), None

        return self._signed(run, model, None)

    def batch(self, handler: Callable[[str, P, int], BatchAnswer], model: type[P]) -> Endpoint:
        """A signed batch endpoint: its rate limit counts each order, and the handler is told
        how many fit (the rest fail 10006 in retExtInfo); a request with no room left at all is
        refused 10006 as a whole."""
        return self._signed(handler, model, _batch_size)

    def _signed(
        self,
        run: Callable[[str, P, int], tuple[dict[str, Any], dict[str, Any] | None]],
        model: type[P],
        cost: Callable[[bytes], int] | None,
    ) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            path: str = request.scope["path"]
            refused = self._refuse_ip(request, path) or await self._delay_or_fail(path)
            if refused is not None:
                return refused

            if request.method == "POST":
                try:
                    body = await _body(request)
                except _ClientGone:  # gone (while an injected delay held it, say): no one to answer
                    self._exchange.record(path, None, None)
                    return Response(status_code=400)
                except _BodyRefused as exc:  # the rest is not read: the connection is closed
                    return self._envelope(
                        path, RetCode.PARAMS_ERROR, f"params error: {exc}", None, _CLOSE
                    )
                payloads: tuple[bytes, ...] = (body,)
            else:
                body = request.scope["query_string"]
                unquoted = unquote_to_bytes(body)
                payloads = (body,) if unquoted == body else (body, unquoted)
            try:
                api_key = authenticate(
                    self._exchange, request.headers, payloads, _client_host(request)
                )
            except SimError as exc:
                return self._envelope(path, exc.ret_code, exc.ret_msg)
            self._exchange.record_signed(api_key, path)

            count = cost(body) if cost is not None and request.method == "POST" else 1
            headers, granted, refusal = self.limit(api_key, path, count)
            if granted == 0 or self._exchange.inject("rate_limit_10006"):
                # An injected refusal reports an exhausted window, with a reset in the future
                # as a real one does (pybit sleeps until it and fails on a time in the past).
                return self._envelope(
                    path, RetCode.TOO_MANY_VISITS, "Too many visits!", None, refusal
                )
            if self._exchange.inject("timeout_10016"):
                return self._envelope(path, RetCode.SERVER_TIMEOUT, "Server error.", None, headers)

            try:
                data = _body_params(body) if request.method == "POST" else _query(body)
                result, ext_info = run(api_key, parse_params(model, data), granted)
            except SimError as exc:
                return self._envelope(path, exc.ret_code, exc.ret_msg, None, headers)

            if path in ORDER_WRITE_PATHS:
                if path in ORDER_CREATE_PATHS and self._exchange.inject(
                    "drop_response_after_accept"
                ):
                    self._exchange.record(path, None, None)
                    return _TruncatedResponse(
                        self._body(RetCode.OK, "OK", result, ext_info),
                        media_type=_JSON,
                        headers=headers,
                    )
                if self._exchange.inject("accept_then_10016"):
                    return self._envelope(
                        path, RetCode.SERVER_TIMEOUT, "Server error.", None, headers
                    )
                if self._exchange.inject("accept_then_5xx"):
                    return self._unavailable(path)
            return self._envelope(path, RetCode.OK, "OK", result, headers, ext_info)

        return endpoint

    def limit(
        self, api_key: str, path: str, count: int
    ) -> tuple[dict[str, str], int, dict[str, str]]:
        """Count `count` requests (a batch's orders) against the UID's limit for the path:
        Bybit's headers, how many fit, and the headers a refusal would carry.

        Windows are kept on the unskewed clock (a burst of skew must not leave hits in the
        future); the reset timestamp is reported on the exchange's (possibly skewed) clock.
        """
        limiter = self._uid_limiters.get(path)
        if limiter is None:
            limiter = RollingWindowLimiter(self._config.rate_limit_per_s(path), 1000)
            self._uid_limiters[path] = limiter
        wall = time.time_ns() // 1_000_000
        now = self._exchange.now_ms()
        decision = limiter.hit(self._exchange.user_id(api_key), wall, count)
        # When refused: the moment the oldest counted request leaves the window.
        reset = decision.window_reset_ms + (now - wall)
        refused = _limit_headers(decision.limit, 0, reset)
        if decision.allowed:
            headers = _limit_headers(decision.limit, decision.remaining, now)
            return headers, decision.granted, refused
        return refused, decision.granted, refused

    def _refuse_ip(self, request: Request, path: str) -> Response | None:
        """HTTP 403 once a client IP exceeds its limit, and for ip_ban_ms after; else None."""
        self._exchange.maybe_start_clock_skew_burst()
        host = _client_host(request) or ""
        now = time.monotonic_ns() // 1_000_000
        banned_until = self._ip_banned_until.get(host)
        if banned_until is not None and now < banned_until:
            return self._forbidden(path)
        if self._ip_limiter.hit(host, now).allowed:
            return None
        self._ip_banned_until[host] = now + self._config.ip_ban_ms
        return self._forbidden(path)

    def _forbidden(self, path: str) -> Response:
        self._exchange.record(path, 403, None)
        return Response("403, access too frequent", status_code=403, media_type="text/plain")

    def _unavailable(self, path: str) -> Response:
        self._exchange.record(path, 503, None)
        return Response("Service Unavailable", status_code=503, media_type="text/plain")

    async def _delay_or_fail(self, path: str) -> Response | None:
        """Apply an injected delay, then an injected HTTP 503; None lets the request pass."""
        if self._exchange.inject("delay"):
            await asyncio.sleep(self._exchange.faults().delay_ms / 1000)
        if self._exchange.inject("http_5xx"):
            return self._unavailable(path)
        return None

    def _body(
        self,
        ret_code: RetCode,
        ret_msg: str,
        result: dict[str, Any] | None,
        ext_info: dict[str, Any] | None = None,
    ) -> bytes:
        return _dumps(
            {
                "retCode": int(ret_code),
                "retMsg": ret_msg,
                "result": result if result is not None else {},
                "retExtInfo": ext_info if ext_info is not None else {},
                "time": self._exchange.now_ms(),
            }
        )

    def _envelope(
        self,
        path: str,
        ret_code: RetCode,
        ret_msg: str,
        result: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        ext_info: dict[str, Any] | None = None,
    ) -> Response:
        self._exchange.record(path, 200, int(ret_code))
        return Response(
            self._body(ret_code, ret_msg, result, ext_info), media_type=_JSON, headers=headers
        )


def _loopback_only(request: Request) -> Response | None:
    """Admin routes are unauthenticated, so they answer loopback clients only."""
    host = _client_host(request)
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Not an IP address: an in-process transport (e.g. a test client), never a TCP peer.
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    return _json_response({"error": "the /sim admin routes answer loopback clients only"}, 403)


def _admin_routes(exchange: SimExchange, hub: StreamHub) -> list[Route]:
    """Unauthenticated test and demo controls; errors are HTTP 4xx with {"error": "..."}."""

    async def orders(request: Request) -> Response:
        return _loopback_only(request) or _json_response(
            {"orders": exchange.orders(request.query_params.get("api_key"))}
        )

    async def positions(request: Request) -> Response:
        return _loopback_only(request) or _json_response({"positions": exchange.all_positions()})

    async def stats(request: Request) -> Response:
        return _loopback_only(request) or _json_response({**exchange.stats(), **hub.stats()})

    async def streams(request: Request) -> Response:
        return _loopback_only(request) or _json_response({"connections": hub.connections()})

    async def drop_streams(request: Request) -> Response:
        refused = _loopback_only(request)
        if refused is not None:
            return refused
        try:
            body = _json_object(await _body(request))
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        api_key = body.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            return _json_response({"error": "api_key must be a string"}, 400)
        return _json_response({"dropped": hub.drop(api_key)})

    def price_view() -> dict[str, Any]:
        return {
            "prices": {symbol: str(price) for symbol, price in exchange.prices().items()},
            "walks": exchange.walks(),
        }

    async def prices(request: Request) -> Response:
        refused = _loopback_only(request)
        if refused is not None:
            return refused
        if request.method == "POST":
            try:
                exchange.update_prices(_json_object(await _body(request), parse_float=Decimal))
            except ValueError as exc:
                return _json_response({"error": str(exc)}, 400)
        return _json_response(price_view())

    async def faults(request: Request) -> Response:
        refused = _loopback_only(request)
        if refused is not None:
            return refused
        if request.method == "POST":
            try:
                exchange.set_faults(SimFaults.model_validate(_json_object(await _body(request))))
            except ValidationError as exc:
                return _json_response({"error": _validation_message(exc)}, 400)
            except ValueError as exc:
                return _json_response({"error": str(exc)}, 400)
        return _json_response(exchange.faults().model_dump(mode="json"))

    async def accounts(request: Request) -> Response:
        refused = _loopback_only(request)
        if refused is not None:
            return refused
        try:
            spec = SimAccountSpec.model_validate(
                _json_object(await _body(request), parse_float=Decimal)
            )
            exchange.add_account(spec)
        except ValidationError as exc:
            return _json_response({"error": _validation_message(exc)}, 400)
        except DuplicateAccountError as exc:
            return _json_response({"error": str(exc)}, 409)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        return _json_response({"apiKey": spec.api_key}, 201)

    return [
        Route("/sim/orders", orders, methods=["GET"]),
        Route("/sim/positions", positions, methods=["GET"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/sim/prices", prices, methods=["GET", "POST"]),
        Route("/sim/faults", faults, methods=["GET", "POST"]),
        Route("/sim/accounts", accounts, methods=["POST"]),
        Route("/sim/streams", streams, methods=["GET"]),
        Route("/sim/streams/drop", drop_streams, methods=["POST"]),
    ]


def create_app(exchange: SimExchange) -> Starlette:
    """The ASGI app serving one exchange: Bybit V5 routes and streams, plus the /sim admin
    routes. WebSocket streams need a server with WebSocket support: `SimServer` and
    `run_forever` give uvicorn `bot.sim.websocket.SimWebSocketProtocol`."""
    logger = logging.getLogger(_UVICORN_ERROR_LOGGER)
    if _QUIET_DROPPED_ANSWERS not in logger.filters:
        logger.addFilter(_QUIET_DROPPED_ANSWERS)
    gateway = _Gateway(exchange)
    hub = StreamHub(exchange, TradeDesk(exchange, gateway.limit))
    public: list[tuple[str, Endpoint]] = [
        ("/v5/market/time", gateway.public(exchange.server_time, NoParams)),
        ("/v5/market/instruments-info", gateway.public(exchange.instruments_info, MarketParams)),
        ("/v5/market/tickers", gateway.public(exchange.tickers, MarketParams)),
        ("/v5/market/orderbook", gateway.public(exchange.orderbook, OrderbookParams)),
        ("/v5/market/kline", gateway.public(exchange.kline, KlineParams)),
        (
            "/v5/market/mark-price-kline",
            gateway.public(exchange.mark_price_kline, MarkKlineParams),
        ),
        (
            "/v5/market/index-price-kline",
            gateway.public(exchange.index_price_kline, IndexKlineParams),
        ),
        (
            "/v5/market/premium-index-price-kline",
            gateway.public(exchange.premium_index_price_kline, PremiumKlineParams),
        ),
        ("/v5/market/risk-limit", gateway.public(exchange.risk_limit, RiskLimitParams)),
        ("/v5/market/price-limit", gateway.public(exchange.price_limit, PriceLimitParams)),
        ("/v5/market/recent-trade", gateway.public(exchange.recent_trades, RecentTradeParams)),
        ("/v5/market/open-interest", gateway.public(exchange.open_interest, OpenInterestParams)),
        (
            "/v5/market/funding/history",
            gateway.public(exchange.funding_history, FundingHistoryParams),
        ),
        ("/v5/system/status", gateway.public(exchange.system_status, SystemStatusParams)),
    ]
    private_get: list[tuple[str, Endpoint]] = [
        ("/v5/order/realtime", gateway.private(exchange.open_orders, OrderQueryParams)),
        ("/v5/order/history", gateway.private(exchange.order_history, OrderQueryParams)),
        ("/v5/execution/list", gateway.private(exchange.executions, ExecutionQueryParams)),
        ("/v5/position/list", gateway.private(exchange.positions, PositionQueryParams)),
        ("/v5/position/closed-pnl", gateway.private(exchange.closed_pnl, ClosedPnlParams)),
        (
            "/v5/account/wallet-balance",
            gateway.private(exchange.wallet_balance, WalletBalanceParams),
        ),
        ("/v5/account/info", gateway.private(exchange.account_info, NoParams)),
        ("/v5/account/fee-rate", gateway.private(exchange.fee_rate, FeeRateParams)),
        (
            "/v5/account/transaction-log",
            gateway.private(exchange.transaction_log, TransactionLogParams),
        ),
        ("/v5/asset/coin/query-info", gateway.private(exchange.coin_info, CoinInfoParams)),
        ("/v5/user/query-api", gateway.private(exchange.api_key_info, NoParams)),
    ]
    private_post: list[tuple[str, Endpoint]] = [
        (ORDER_CREATE_PATH, gateway.private(exchange.place_order, PlaceOrderParams)),
        ("/v5/order/amend", gateway.private(exchange.amend_order, AmendOrderParams)),
        ("/v5/order/cancel", gateway.private(exchange.cancel_order, CancelOrderParams)),
        ("/v5/order/cancel-all", gateway.private(exchange.cancel_all, CancelAllParams)),
        (ORDER_CREATE_BATCH_PATH, gateway.batch(exchange.place_batch, BatchPlaceParams)),
        ("/v5/order/cancel-batch", gateway.batch(exchange.cancel_batch, BatchCancelParams)),
        ("/v5/order/amend-batch", gateway.batch(exchange.amend_batch, BatchAmendParams)),
        (
            "/v5/position/set-leverage",
            gateway.private(exchange.set_leverage, SetLeverageParams),
        ),
        (
            "/v5/position/trading-stop",
            gateway.private(exchange.set_trading_stop, TradingStopParams),
        ),
        (
            "/v5/position/switch-mode",
            gateway.private(exchange.switch_position_mode, SwitchModeParams),
        ),
        (
            "/v5/account/set-margin-mode",
            gateway.private(exchange.set_margin_mode, SetMarginModeParams),
        ),
    ]
    routes: list[BaseRoute] = [
        *(Route(path, endpoint, methods=["GET"]) for path, endpoint in public + private_get),
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in private_post),
        *_admin_routes(exchange, hub),
        WebSocketRoute(PRIVATE_PATH, hub.endpoint("private")),
        WebSocketRoute(PUBLIC_LINEAR_PATH, hub.endpoint("linear")),
        WebSocketRoute(TRADE_PATH, hub.endpoint("trade")),
    ]
    not_served = {404: gateway.not_served, 405: gateway.not_served}
    return Starlette(routes=routes, exception_handlers=not_served)
