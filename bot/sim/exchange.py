"""The simulated Bybit exchange: the rules, the matching, and the books behind the HTTP app.

One `SimExchange` is the whole venue: it applies Bybit's order rules in Bybit's order, fills
market orders at its current price and limit orders when the price crosses them, keeps one-way
positions with attached stop-loss / take-profit, and counts what the app answered. All money
is `Decimal`; one lock guards everything, because tests move prices from other threads while
the server thread trades.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from bot.sim.config import InstrumentSpec, SimAccountSpec, SimFaults, SimulatorConfig
from bot.sim.errors import DuplicateAccountError, RetCode, SimError
from bot.sim.params import (
    CancelOrderParams,
    MarketParams,
    NoParams,
    OrderQueryParams,
    PlaceOrderParams,
    PositionQueryParams,
    SetLeverageParams,
    WalletBalanceParams,
)
from bot.sim.records import (
    MAINTENANCE_MARGIN_RATE,
    SETTLE_COIN,
    ZERO,
    AccountRecord,
    MarginFigures,
    OrderRecord,
    PositionRecord,
)
from bot.sim.views import (
    MAX_PRICE_TICKS,
    api_key_view,
    fmt,
    instrument_view,
    order_view,
    position_view,
    ticker_view,
    wallet_view,
)

__all__ = ["FaultName", "SimExchange"]

#: How many closed orders `/v5/order/realtime?openOnly=1` keeps per account, as Bybit does.
_CLOSED_ORDERS_IN_REALTIME = 500
_FUNDING_INTERVAL_MS = 8 * 3_600_000


def _page(items: list[dict[str, Any]], limit: int, cursor: str | None) -> tuple[list[Any], str]:
    """Offset pagination behind Bybit's opaque cursor."""
    start = 0
    if cursor:
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 12):
            raise SimError(
                RetCode.PARAMS_ERROR, "params error: cursor is not one this server issued"
            )
        start = int(cursor)
    end = start + limit
    return items[start:end], (str(end) if end < len(items) else "")


#: The injectable faults that are drawn per request (see SimFaults).
FaultName = Literal[
    "delay", "http_5xx", "rate_limit_10006", "timeout_10016", "drop_response_after_accept"
]


class SimExchange:
    """The simulated venue: thread-safe, Decimal-only, shaped like Bybit V5 answers."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._lock = threading.Lock()
        self._prices: dict[str, Decimal] = dict(self._config.prices)
        self._accounts: dict[str, AccountRecord] = {}
        self._faults = self._config.faults
        # Fault injection only needs reproducibility, not unpredictability.
        self._rng = random.Random(self._config.seed)  # noqa: S311
        self._next_user_id = 100_001
        self._seq = 0
        self._requests_by_path: Counter[str] = Counter()
        self._answers_by_ret_code: Counter[int] = Counter()
        self._answers_by_http_status: Counter[int] = Counter()
        self._faults_injected: Counter[str] = Counter()
        for spec in self._config.accounts:
            self.add_account(spec)

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    # ----------------------------------------------------------------- admin and clock

    def now_ms(self) -> int:
        """The exchange clock in epoch ms, including any injected clock skew."""
        return time.time_ns() // 1_000_000 + self._faults.clock_skew_ms

    def add_account(self, spec: SimAccountSpec) -> None:
        """Open an account for a new API key; an existing key raises DuplicateAccountError."""
        with self._lock:
            if spec.api_key in self._accounts:
                raise DuplicateAccountError(f"an account with api_key {spec.api_key!r} exists")
            balance = (
                spec.balance_usdt
                if spec.balance_usdt is not None
                else self._config.starting_balance_usdt
            )
            self._accounts[spec.api_key] = AccountRecord(
                spec=spec,
                user_id=self._next_user_id,
                created_ms=self.now_ms(),
                wallet_balance=balance,
            )
            self._next_user_id += 1

    def account_spec(self, api_key: str) -> SimAccountSpec | None:
        """The key's spec, or None when the exchange does not know the key."""
        with self._lock:
            account = self._accounts.get(api_key)
            return account.spec if account is not None else None

    def set_prices(self, prices: Mapping[str, Decimal | int | str]) -> None:
        """Move prices (all or none), then fill crossed limit orders and trigger SL/TP.

        Raises ValueError naming the symbol for an unlisted symbol, a float, or a price that
        is not positive or above the instrument's maxPrice.
        """
        parsed: dict[str, Decimal] = {}
        for symbol, raw in prices.items():
            if symbol not in self._config.instruments:
                raise ValueError(f"{symbol!r} is not a listed symbol")
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
            ceiling = self._config.instruments[symbol].tick_size * MAX_PRICE_TICKS
            if price > ceiling:
                raise ValueError(f"{symbol}: price {raw} is above the maxPrice {fmt(ceiling)}")
            parsed[symbol] = price
        with self._lock:
            for symbol, price in parsed.items():
                self._prices[symbol] = price
                self._match(symbol, price)

    def prices(self) -> dict[str, Decimal]:
        """Current price of every listed symbol."""
        with self._lock:
            return dict(self._prices)

    def faults(self) -> SimFaults:
        """The faults in force."""
        return self._faults

    def set_faults(self, faults: SimFaults) -> None:
        """Replace the faults in force (clock skew applies from the next request)."""
        with self._lock:
            self._faults = faults

    def inject(self, fault: FaultName) -> bool:
        """One Bernoulli draw of the fault's probability from the seeded RNG; hits are counted."""
        probability: float = getattr(self._faults, fault)
        if probability <= 0:
            return False
        with self._lock:
            if self._rng.random() >= probability:
                return False
            self._faults_injected[fault] += 1
            return True

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

    def stats(self) -> dict[str, Any]:
        """Request and answer counters plus a few totals, JSON-ready."""
        with self._lock:
            return {
                "requests_by_path": dict(sorted(self._requests_by_path.items())),
                "answers_by_ret_code": {
                    str(code): n for code, n in sorted(self._answers_by_ret_code.items())
                },
                "answers_by_http_status": {
                    str(code): n for code, n in sorted(self._answers_by_http_status.items())
                },
                "faults_injected": dict(sorted(self._faults_injected.items())),
                "accounts": len(self._accounts),
                "orders": sum(len(account.orders) for account in self._accounts.values()),
                "open_orders": sum(len(account.open_orders) for account in self._accounts.values()),
            }

    def orders(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """Every order (of one key, or of all), oldest first, each with its account's `userID`
        and key `note` (the bot's key name): never the API key itself, which is a credential."""
        with self._lock:
            if api_key is None:
                accounts = list(self._accounts.values())
            else:
                accounts = [self._accounts[api_key]] if api_key in self._accounts else []
            rows = [
                (
                    order.seq,
                    {**order_view(order), "userID": account.user_id, "note": account.spec.note},
                )
                for account in accounts
                for order in account.orders.values()
            ]
        return [row for _, row in sorted(rows, key=lambda item: item[0])]

    # ----------------------------------------------------------------- public endpoints

    def server_time(self, params: NoParams) -> dict[str, Any]:
        """`GET /v5/market/time`."""
        now_ns = time.time_ns() + self._faults.clock_skew_ms * 1_000_000
        return {"timeSecond": str(now_ns // 1_000_000_000), "timeNano": str(now_ns)}

    def instruments_info(self, params: MarketParams) -> dict[str, Any]:
        """`GET /v5/market/instruments-info`."""
        rows = [
            instrument_view(symbol, self._config.instruments[symbol])
            for symbol in self._symbols(params.symbol)
        ]
        return {"category": "linear", "list": rows, "nextPageCursor": ""}

    def tickers(self, params: MarketParams) -> dict[str, Any]:
        """`GET /v5/market/tickers`."""
        next_funding = (self.now_ms() // _FUNDING_INTERVAL_MS + 1) * _FUNDING_INTERVAL_MS
        with self._lock:
            prices = {symbol: self._prices[symbol] for symbol in self._symbols(params.symbol)}
        rows = [ticker_view(symbol, price, next_funding) for symbol, price in prices.items()]
        return {"category": "linear", "list": rows}

    # ----------------------------------------------------------------- trading

    def place_order(self, api_key: str, params: PlaceOrderParams) -> dict[str, Any]:
        """`POST /v5/order/create`: parameter rules, the duplicate check, then account rules.

        The duplicate check comes before the balance and position rules, so a retry of an
        accepted order is answered 110072 whatever has happened to the account since.
        """
        with self._lock:
            account = self._account(api_key)
            self._require(account, "Order")
            spec = self._instrument(params.symbol)
            price_now = self._prices[params.symbol]
            limit_price = self._check_order_params(params)
            if params.order_link_id is not None and params.order_link_id in account.link_ids:
                raise SimError(RetCode.DUPLICATE_ORDER_LINK_ID, "OrderLinkedID is duplicate")
            reference = limit_price if limit_price is not None else price_now
            self._check_tpsl(params, reference)
            self._check_account_rules(account, params, spec, reference)
            now = self.now_ms()
            order = OrderRecord(
                order_id=str(uuid.uuid4()),
                order_link_id=params.order_link_id or "",
                symbol=params.symbol,
                side=params.side,
                order_type=params.order_type,
                price=limit_price,
                qty=params.qty,
                time_in_force="IOC" if limit_price is None else params.time_in_force or "GTC",
                reduce_only=params.reduce_only,
                close_on_trigger=params.close_on_trigger,
                take_profit=params.take_profit or None,
                stop_loss=params.stop_loss or None,
                last_price_on_created=price_now,
                created_ms=now,
                updated_ms=now,
                seq=self._next_seq(),
            )
            self._store(account, order)
            self._execute(account, order, price_now)
            return {"orderId": order.order_id, "orderLinkId": order.order_link_id}

    def cancel_order(self, api_key: str, params: CancelOrderParams) -> dict[str, Any]:
        """`POST /v5/order/cancel` by orderId (preferred) or orderLinkId."""
        with self._lock:
            account = self._account(api_key)
            self._require(account, "Order")
            self._instrument(params.symbol)
            if params.order_id is None and params.order_link_id is None:
                raise SimError(
                    RetCode.PARAMS_ERROR, "params error: orderId or orderLinkId is required"
                )
            order = self._find(account, params.order_id, params.order_link_id)
            if order is None or order.symbol != params.symbol or not order.is_open:
                raise SimError(RetCode.ORDER_NOT_EXISTS, "order not exists or too late to cancel")
            self._close(account, order, cancel_type="CancelByUser")
            return {"orderId": order.order_id, "orderLinkId": order.order_link_id}

    def set_leverage(self, api_key: str, params: SetLeverageParams) -> dict[str, Any]:
        """`POST /v5/position/set-leverage` (one-way mode: buy and sell leverage equal)."""
        with self._lock:
            account = self._account(api_key)
            self._require(account, "Position")
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
            if leverage == self._leverage(account, params.symbol):
                raise SimError(RetCode.LEVERAGE_NOT_MODIFIED, "leverage not modified")
            account.leverage[params.symbol] = leverage
            return {}

    # ----------------------------------------------------------------- private queries

    def open_orders(self, api_key: str, params: OrderQueryParams) -> dict[str, Any]:
        """`GET /v5/order/realtime`: one order by id whatever its status, else open orders."""
        with self._lock:
            account = self._account(api_key)
            if params.order_id is not None or params.order_link_id is not None:
                order = self._find(account, params.order_id, params.order_link_id)
                found = [order] if order is not None and self._matches(order, params) else []
                return self._order_page(found, params)
            if params.symbol is None and params.base_coin is None and params.settle_coin is None:
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    "params error: symbol, baseCoin or settleCoin is required for linear",
                )
            if params.open_only == 0:
                candidates = list(account.open_orders.values())
            else:
                closed = [order for order in account.orders.values() if not order.is_open]
                candidates = closed[-_CLOSED_ORDERS_IN_REALTIME:]
            selected = [order for order in reversed(candidates) if self._matches(order, params)]
            return self._order_page(selected, params)

    def order_history(self, api_key: str, params: OrderQueryParams) -> dict[str, Any]:
        """`GET /v5/order/history`: every order of the account, newest first."""
        with self._lock:
            account = self._account(api_key)
            if params.order_id is not None or params.order_link_id is not None:
                order = self._find(account, params.order_id, params.order_link_id)
                candidates = [order] if order is not None else []
            else:
                candidates = list(reversed(account.orders.values()))
            selected = [order for order in candidates if self._matches(order, params)]
            return self._order_page(selected, params)

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
            rows = [self._position_view(account, symbol) for symbol in sorted(symbols)]
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
            return api_key_view(account.spec, account.user_id, account.created_ms, self.now_ms())

    # ----------------------------------------------------------------- internals (lock held)

    def _account(self, api_key: str) -> AccountRecord:
        account = self._accounts.get(api_key)
        if account is None:
            raise SimError(RetCode.INVALID_API_KEY, "API key is invalid.")
        return account

    @staticmethod
    def _require(account: AccountRecord, right: str) -> None:
        if account.spec.read_only or right not in account.spec.permissions.get("ContractTrade", []):
            raise SimError(
                RetCode.PERMISSION_DENIED,
                "Permission denied, please check your API key permissions.",
            )

    def _symbols(self, symbol: str | None) -> list[str]:
        if symbol is None:
            return sorted(self._config.instruments)
        self._instrument(symbol)
        return [symbol]

    def _instrument(self, symbol: str) -> InstrumentSpec:
        spec = self._config.instruments.get(symbol)
        if spec is None:
            listed = ", ".join(sorted(self._config.instruments))
            raise SimError(
                RetCode.PARAMS_ERROR,
                f"params error: symbol {symbol!r} is not listed (listed: {listed})",
            )
        return spec

    def _check_qty(self, symbol: str, qty: Decimal) -> None:
        spec = self._config.instruments[symbol]
        problem = None
        # The bounds come first: they keep the modulo below within Decimal's precision.
        if qty <= 0:
            problem = "qty must be greater than 0"
        elif qty > spec.max_order_qty:
            problem = f"{fmt(qty)} is above maxOrderQty {fmt(spec.max_order_qty)}"
        elif qty % spec.qty_step != 0:
            problem = f"{fmt(qty)} is not a multiple of qtyStep {fmt(spec.qty_step)}"
        elif qty < spec.min_order_qty:
            problem = f"{fmt(qty)} is below minOrderQty {fmt(spec.min_order_qty)}"
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

    def _check_order_params(self, params: PlaceOrderParams) -> Decimal | None:
        """Quantity and price rules of the instrument; returns the limit price, if any."""
        self._check_qty(params.symbol, params.qty)
        if params.order_type == "Market":
            return None
        if params.price is None:
            raise SimError(RetCode.PARAMS_ERROR, "params error: price is required for Limit")
        self._check_price("price", params.symbol, params.price)
        return params.price

    def _check_tpsl(self, params: PlaceOrderParams, reference: Decimal) -> None:
        """TP above and SL below a buy's base price (the reverse for a sell), on the tick."""
        take_profit, stop_loss = params.take_profit or None, params.stop_loss or None
        if take_profit is None and stop_loss is None:
            return
        if params.reduce_only:
            raise SimError(
                RetCode.PARAMS_ERROR,
                "params error: takeProfit/stopLoss cannot be set on a reduceOnly order",
            )
        buy = params.side == "Buy"
        for name, level, must_be_above in (
            ("takeProfit", take_profit, buy),
            ("stopLoss", stop_loss, not buy),
        ):
            if level is None:
                continue
            self._check_price(name, params.symbol, level)
            if (level > reference) != must_be_above or level == reference:
                where = "above" if must_be_above else "below"
                raise SimError(
                    RetCode.PARAMS_ERROR,
                    f"params error: {name} {fmt(level)} of a {params.side} order must be "
                    f"{where} its base price {fmt(reference)}",
                )

    def _check_account_rules(
        self,
        account: AccountRecord,
        params: PlaceOrderParams,
        spec: InstrumentSpec,
        reference: Decimal,
    ) -> None:
        """Reduce-only (110017), else minimum value (110094) and available balance (110007)."""
        position = account.positions.get(params.symbol)
        size = position.size if position is not None else ZERO
        qty = params.qty
        if params.reduce_only:
            self._check_reduce_only(params.side, qty, size)
            return
        if qty * reference < spec.min_notional_usdt:
            raise SimError(
                RetCode.ORDER_VALUE_BELOW_MINIMUM,
                f"Order does not meet minimum order value {fmt(spec.min_notional_usdt)}USDT",
            )
        # Only the part that opens exposure needs margin; closing an opposite position frees it.
        same_direction = size == 0 or (size > 0) == (params.side == "Buy")
        opening = qty if same_direction else max(qty - abs(size), ZERO)
        required = (
            opening * reference / self._leverage(account, params.symbol)
            + qty * reference * self._config.taker_fee_rate
        )
        if required > self._figures(account).available:
            raise SimError(RetCode.INSUFFICIENT_AVAILABLE_BALANCE, "ab not enough for new order")

    @staticmethod
    def _check_reduce_only(side: str, qty: Decimal, size: Decimal) -> None:
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
        if qty > abs(size):
            raise SimError(
                RetCode.REDUCE_ONLY_RULE_NOT_SATISFIED,
                f"Reduce-only rule not satisfied: qty {fmt(qty)} exceeds the position size "
                f"{fmt(abs(size))}",
            )

    def _leverage(self, account: AccountRecord, symbol: str) -> Decimal:
        return account.leverage.get(symbol, self._config.default_leverage)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _store(self, account: AccountRecord, order: OrderRecord) -> None:
        account.orders[order.order_id] = order
        if order.order_link_id:
            account.link_ids[order.order_link_id] = order.order_id

    def _find(
        self, account: AccountRecord, order_id: str | None, link_id: str | None
    ) -> OrderRecord | None:
        if order_id is not None:
            return account.orders.get(order_id)
        if link_id is not None and link_id in account.link_ids:
            return account.orders[account.link_ids[link_id]]
        return None

    @staticmethod
    def _matches(order: OrderRecord, params: OrderQueryParams) -> bool:
        return (
            (params.symbol is None or order.symbol == params.symbol)
            and (params.base_coin is None or order.symbol == params.base_coin + SETTLE_COIN)
            and (params.settle_coin is None or params.settle_coin == SETTLE_COIN)
            and (params.order_status is None or order.status == params.order_status)
        )

    @staticmethod
    def _order_page(orders: list[OrderRecord], params: OrderQueryParams) -> dict[str, Any]:
        page, cursor = _page([order_view(order) for order in orders], params.limit, params.cursor)
        return {"category": "linear", "list": page, "nextPageCursor": cursor}

    def _execute(self, account: AccountRecord, order: OrderRecord, price_now: Decimal) -> None:
        """A new order trades at once when it can, rests when it may, else is cancelled."""
        if order.price is None:
            self._fill(account, order, order.qty, price_now, maker=False)
            return
        marketable = price_now <= order.price if order.side == "Buy" else price_now >= order.price
        if not marketable:
            if order.time_in_force == "IOC":
                self._close(account, order, reject_reason="EC_NoImmediateQtyToFill")
            elif order.time_in_force == "FOK":
                self._close(account, order, reject_reason="EC_NoEnoughQtyToFill")
            else:
                account.open_orders[order.order_id] = order
        elif order.time_in_force == "PostOnly":
            self._close(account, order, reject_reason="EC_PostOnlyWillTakeLiquidity")
        else:
            self._fill(account, order, order.qty, price_now, maker=False)

    def _close(
        self,
        account: AccountRecord,
        order: OrderRecord,
        *,
        cancel_type: str = "UNKNOWN",
        reject_reason: str = "EC_NoError",
    ) -> None:
        order.status = "PartiallyFilledCanceled" if order.cum_exec_qty else "Cancelled"
        order.cancel_type = cancel_type
        order.reject_reason = reject_reason
        order.updated_ms = self.now_ms()
        account.open_orders.pop(order.order_id, None)

    def _fill(
        self,
        account: AccountRecord,
        order: OrderRecord,
        qty: Decimal,
        price: Decimal,
        *,
        maker: bool,
    ) -> None:
        """Execute qty of the order at price: order totals, position, fees and realised PnL."""
        now = self.now_ms()
        fee = qty * price * (self._config.maker_fee_rate if maker else self._config.taker_fee_rate)
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
        signed_qty = qty * order.direction
        realised = self._apply(position, signed_qty, price) - fee
        account.wallet_balance += realised
        position.cum_realised_pnl += realised
        position.cur_realised_pnl += realised
        position.updated_ms = now
        position.seq = self._next_seq()
        if position.size == 0:
            position.take_profit = position.stop_loss = None
        elif (position.size > 0) == (signed_qty > 0):
            if order.take_profit is not None:
                position.take_profit = order.take_profit
            if order.stop_loss is not None:
                position.stop_loss = order.stop_loss

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

    def _match(self, symbol: str, price: Decimal) -> None:
        """After a price move: fill crossed resting limits at their price, then check SL/TP."""
        for account in self._accounts.values():
            for order in [o for o in account.open_orders.values() if o.symbol == symbol]:
                assert order.price is not None  # only limit orders rest
                crossed = price <= order.price if order.side == "Buy" else price >= order.price
                if not crossed:
                    continue
                qty = order.leaves_qty
                if order.reduce_only:
                    position = account.positions.get(symbol)
                    size = position.size if position is not None else ZERO
                    reducible = (
                        abs(size) if size != 0 and (size > 0) != (order.direction > 0) else ZERO
                    )
                    if reducible == 0:
                        self._close(account, order, cancel_type="CancelByReduceOnly")
                        continue
                    qty = min(qty, reducible)
                self._fill(account, order, qty, order.price, maker=True)
                if order.is_open:
                    self._close(account, order, cancel_type="CancelByReduceOnly")
            position = account.positions.get(symbol)
            if position is not None and position.size != 0:
                self._trigger_stops(account, position, price)

    def _trigger_stops(
        self, account: AccountRecord, position: PositionRecord, price: Decimal
    ) -> None:
        """Close the whole position with a market order when its SL or TP is reached."""
        long = position.size > 0
        stop, profit = position.stop_loss, position.take_profit
        if stop is not None and (price <= stop if long else price >= stop):
            kind, trigger = "StopLoss", stop
        elif profit is not None and (price >= profit if long else price <= profit):
            kind, trigger = "TakeProfit", profit
        else:
            return
        now = self.now_ms()
        order = OrderRecord(
            order_id=str(uuid.uuid4()),
            order_link_id="",
            symbol=position.symbol,
            side="Sell" if long else "Buy",
            order_type="Market",
            price=None,
            qty=abs(position.size),
            time_in_force="IOC",
            reduce_only=True,
            close_on_trigger=True,
            take_profit=None,
            stop_loss=None,
            last_price_on_created=price,
            created_ms=now,
            updated_ms=now,
            seq=self._next_seq(),
            stop_order_type=kind,
            create_type=f"CreateBy{kind}",
            trigger_price=trigger,
        )
        self._store(account, order)
        self._fill(account, order, order.qty, price, maker=False)

    def _figures(self, account: AccountRecord) -> MarginFigures:
        unrealised = position_im = position_mm = cum_realised = ZERO
        for symbol, position in account.positions.items():
            cum_realised += position.cum_realised_pnl
            if position.size == 0:
                continue
            value = abs(position.size) * position.avg_price
            unrealised += (self._prices[symbol] - position.avg_price) * position.size
            position_im += value / self._leverage(account, symbol)
            position_mm += value * MAINTENANCE_MARGIN_RATE
        order_im = ZERO
        for order in account.open_orders.values():
            if not order.reduce_only and order.price is not None:
                order_im += order.leaves_qty * order.price / self._leverage(account, order.symbol)
        return MarginFigures(
            wallet_balance=account.wallet_balance,
            unrealised_pnl=unrealised,
            position_im=position_im,
            position_mm=position_mm,
            order_im=order_im,
            cum_realised_pnl=cum_realised,
        )

    def _position_view(self, account: AccountRecord, symbol: str) -> dict[str, Any]:
        return position_view(
            account.positions.get(symbol) or PositionRecord(symbol=symbol),
            self._prices[symbol],
            self._leverage(account, symbol),
            account.created_ms,
        )
