"""Typed request parameters of the simulated Bybit V5 endpoints, with Bybit's field names.

Each model parses one endpoint's query string or JSON body; a failure becomes retCode 10001
with a message naming the parameter (see `params_error_message`). Unknown parameters are
ignored, as Bybit ignores them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from bot.sim.errors import RetCode, SimError

__all__ = [
    "BATCH_MAX_ORDERS",
    "KLINE_INTERVALS",
    "OPEN_INTEREST_INTERVALS_MS",
    "AmendOrderParams",
    "BatchAmendParams",
    "BatchCancelParams",
    "BatchPlaceParams",
    "CancelAllParams",
    "CancelOrderParams",
    "ClosedPnlParams",
    "CoinInfoParams",
    "ExecutionQueryParams",
    "FeeRateParams",
    "FundingHistoryParams",
    "KlineParams",
    "MarkKlineParams",
    "MarketParams",
    "NoParams",
    "OpenInterestParams",
    "OrderQueryParams",
    "OrderbookParams",
    "PlaceOrderParams",
    "PositionQueryParams",
    "PriceLimitParams",
    "RecentTradeParams",
    "SetLeverageParams",
    "SetMarginModeParams",
    "SwitchModeParams",
    "SystemStatusParams",
    "TradingStopParams",
    "TransactionLogParams",
    "WalletBalanceParams",
    "batch_size",
    "params_error_message",
    "parse_params",
]

#: Kline intervals Bybit accepts: minutes, then day, week, month.
KLINE_INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")

#: Orders per batch request for category=linear (Bybit: "A maximum of 20 orders (linear) can
#: be placed per request", docs/v5/order/batch-place, batch-cancel and batch-amend).
BATCH_MAX_ORDERS = 20


def batch_size(document: object) -> int:
    """How many orders a batch request (`{category, request: [...]}`) holds, which is what its
    rate limit counts (Bybit: "Number of consumption = number of requests * number of
    orders"); anything that is not a valid batch counts as one request."""
    items = document.get("request") if isinstance(document, dict) else None
    if isinstance(items, list) and 1 <= len(items) <= BATCH_MAX_ORDERS:
        return len(items)
    return 1


#: Open-interest intervals Bybit accepts (`intervalTime`) and their length in ms.
OPEN_INTEREST_INTERVALS_MS = {
    "5min": 300_000,
    "15min": 900_000,
    "30min": 1_800_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
#: Bybit's system states (`GET /v5/system/status`, enum `state`).
_SYSTEM_STATES = ("scheduled", "ongoing", "completed", "canceled")
#: Bybit's account margin modes (`POST /v5/account/set-margin-mode`).
_MARGIN_MODES = ("ISOLATED_MARGIN", "REGULAR_MARGIN", "PORTFOLIO_MARGIN")

_DECIMAL_TEXT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_ORDER_LINK_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")


def _decimal_text(value: Any) -> Decimal:
    """Bybit sends and expects decimals as strings: '0.001', never 1e-3, never a JSON number
    (pybit, Bybit's own SDK, turns a caller's number into a string before sending it)."""
    if not isinstance(value, str):
        raise ValueError("must be a decimal string such as '0.01'")
    if not _DECIMAL_TEXT.fullmatch(value):
        raise ValueError(f"{value!r} is not a non-negative decimal string such as '0.01'")
    return Decimal(value)


def _order_link_id(value: Any) -> Any:
    if not isinstance(value, str) or not _ORDER_LINK_ID.fullmatch(value):
        raise ValueError("must be 1-36 characters of A-Z, a-z, 0-9, '_' and '-'")
    return value


def _position_idx(value: int) -> int:
    if value not in (0, 1, 2):
        raise ValueError("must be 0 (one-way mode), 1 (hedge Buy side) or 2 (hedge Sell side)")
    return value


def _linear_only(value: Any) -> Any:
    if value != "linear":
        raise ValueError(f"{value!r} is not supported: the simulator trades category=linear only")
    return value


def _known_category(value: Any) -> Any:
    if value not in {"linear", "spot", "inverse", "option"}:
        raise ValueError(f"{value!r} is not one of linear, spot, inverse, option")
    return value


def _one_of(*allowed: str) -> Any:
    """A validator accepting exactly the given strings, naming them when it refuses."""

    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def _position_mode(value: int) -> int:
    if value not in (0, 3):
        raise ValueError("must be 0 (one-way: Merged Single) or 3 (hedge: Both Sides)")
    return value


def _check_exit_order_types(
    mode: str | None,
    order_types: tuple[tuple[str, str | None, Decimal | None], ...],
) -> None:
    """Bybit's rules for the order a TP or SL sends when it fires, for each (name, order type,
    limit price): a Limit one needs tpslMode Partial ("When create limit tp/sl, tpslMode is
    required and it must be Partial"; Full "only support Market") and its limit price."""
    for name, order_type, limit_price in order_types:
        if order_type != "Limit":
            continue
        if mode == "Full":
            raise ValueError(f"{name} only support Market when tpSlMode is Full")
        if mode is None:
            raise ValueError(f"{name} Limit needs tpslMode Partial")
        if limit_price is None:
            limit_name = name.replace("OrderType", "LimitPrice")
            raise ValueError(f"{limit_name} is required when {name} is Limit")


def _kline_interval(value: str) -> str:
    if value not in KLINE_INTERVALS:
        raise ValueError(f"{value!r} is not one of {', '.join(KLINE_INTERVALS)}")
    return value


DecimalText = Annotated[Decimal, BeforeValidator(_decimal_text)]
Category = Annotated[str, BeforeValidator(_linear_only)]
#: Market data takes every Bybit category; the simulator lists linear instruments only.
AnyCategory = Annotated[str, BeforeValidator(_known_category)]
#: Perpetual and futures market data (funding, open interest): Bybit's linear and inverse.
DerivativesCategory = Annotated[str, BeforeValidator(_one_of("linear", "inverse"))]
TpslMode = Annotated[str, BeforeValidator(_one_of("Full", "Partial"))]
OrderLinkId = Annotated[str, BeforeValidator(_order_link_id)]
PositionIdx = Annotated[int, AfterValidator(_position_idx)]
#: The simulator has one price per symbol, so last, mark and index price trigger alike.
TriggerBy = Literal["LastPrice", "MarkPrice", "IndexPrice"]


class _Params(BaseModel):
    # Only Bybit's camelCase names are read: a snake_case key is ignored, as Bybit ignores it.
    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel)


class NoParams(_Params):
    """An endpoint that takes no parameters (query-api, server time)."""


class MarketParams(_Params):
    """`GET /v5/market/instruments-info` and `GET /v5/market/tickers`."""

    category: AnyCategory
    symbol: str | None = None
    base_coin: str | None = None
    status: str | None = None
    limit: int = Field(default=500, ge=1, le=1000)
    cursor: str | None = None


class OrderbookParams(_Params):
    """`GET /v5/market/orderbook`."""

    category: AnyCategory
    symbol: str
    limit: int = Field(default=25, ge=1, le=1000)


class _Candles(_Params):
    """What every candle request names: the symbol, the interval, the window and the page
    size (1-1000, 200 by default); each kind of candle adds its categories."""

    symbol: str
    interval: Annotated[str, AfterValidator(_kline_interval)]
    start: int | None = Field(default=None, ge=0)
    end: int | None = Field(default=None, ge=0)
    limit: int = Field(default=200, ge=1, le=1000)


class KlineParams(_Candles):
    """`GET /v5/market/kline`: category defaults to linear, as on Bybit."""

    category: AnyCategory = "linear"


class MarkKlineParams(_Candles):
    """`GET /v5/market/mark-price-kline`: category linear (the default), inverse or option."""

    category: Annotated[str, BeforeValidator(_one_of("linear", "inverse", "option"))] = "linear"


class IndexKlineParams(_Candles):
    """`GET /v5/market/index-price-kline`: category linear (the default) or inverse, 1-1000
    candles a page, as Bybit has documented it since 2023 (it once wanted category and at most
    200; ccxt's fetch_index_ohlcv pages by 1000)."""

    category: DerivativesCategory = "linear"


class PremiumKlineParams(_Candles):
    """`GET /v5/market/premium-index-price-kline`: linear only (the default)."""

    category: Annotated[str, BeforeValidator(_one_of("linear"))] = "linear"


class RiskLimitParams(_Params):
    """`GET /v5/market/risk-limit`: category required (linear or inverse), symbol optional."""

    category: DerivativesCategory
    symbol: str | None = None


class PriceLimitParams(_Params):
    """`GET /v5/market/price-limit`: category spot, linear (the default) or inverse; symbol
    required."""

    category: Annotated[str, BeforeValidator(_one_of("spot", "linear", "inverse"))] = "linear"
    symbol: str


class RecentTradeParams(_Params):
    """`GET /v5/market/recent-trade`: the exchange checks symbol and limit per category
    (symbol required but for option; limit [1, 60] for spot, [1, 1000] otherwise)."""

    category: AnyCategory
    symbol: str | None = None
    base_coin: str | None = None
    option_type: Literal["Call", "Put"] | None = None
    limit: int | None = Field(default=None, ge=1, le=1000)


class OpenInterestParams(_Params):
    """`GET /v5/market/open-interest`."""

    category: DerivativesCategory
    symbol: str
    interval_time: Annotated[str, BeforeValidator(_one_of(*OPEN_INTEREST_INTERVALS_MS))]
    start_time: int | None = Field(default=None, ge=0)
    end_time: int | None = Field(default=None, ge=0)
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = None


class FundingHistoryParams(_Params):
    """`GET /v5/market/funding/history`: a lone startTime is refused, as on Bybit."""

    category: DerivativesCategory
    symbol: str
    start_time: int | None = Field(default=None, ge=0)
    end_time: int | None = Field(default=None, ge=0)
    limit: int = Field(default=200, ge=1, le=200)


class SystemStatusParams(_Params):
    """`GET /v5/system/status`: optional filters by maintenance id and state."""

    id: str | None = None
    state: Annotated[str, BeforeValidator(_one_of(*_SYSTEM_STATES))] | None = None


class PlaceOrderParams(_Params):
    """`POST /v5/order/create` (linear); the exchange checks positionIdx against the mode."""

    category: Category
    symbol: str
    side: Literal["Buy", "Sell"]
    order_type: Literal["Market", "Limit"]
    qty: DecimalText
    price: DecimalText | None = None
    time_in_force: Literal["GTC", "IOC", "FOK", "PostOnly"] | None = None
    order_link_id: OrderLinkId | None = None
    reduce_only: bool = False
    close_on_trigger: bool = False
    take_profit: DecimalText | None = None
    stop_loss: DecimalText | None = None
    position_idx: PositionIdx = 0
    #: A conditional order: Untriggered until the price reaches it (see SimExchange._place).
    trigger_price: DecimalText | None = None
    #: 1: when the price rises to triggerPrice, 2: when it falls to it.
    trigger_direction: Literal[1, 2] | None = None
    trigger_by: TriggerBy | None = None
    tp_trigger_by: TriggerBy | None = None
    sl_trigger_by: TriggerBy | None = None
    #: The attached TP/SL: Full (the position's, market) or Partial (orders of the filled
    #: qty, market or limit at tp/slLimitPrice); see SimExchange._attach_partial_exits.
    tpsl_mode: TpslMode | None = None
    tp_order_type: Literal["Market", "Limit"] | None = None
    sl_order_type: Literal["Market", "Limit"] | None = None
    tp_limit_price: DecimalText | None = None
    sl_limit_price: DecimalText | None = None
    #: A market order's own protection (Bybit): the most a buy pays over ask1, the least a
    #: sell takes under bid1, in ticks (an integer in [1, 10000]) or percent ([0.01, 10]).
    slippage_tolerance_type: Literal["TickSize", "Percent"] | None = None
    slippage_tolerance: DecimalText | None = None
    #: Self-match prevention: echoed on the order (the simulator never matches an account
    #: against itself, so it never has to act on it).
    smp_type: Literal["None", "CancelMaker", "CancelTaker", "CancelBoth"] | None = None
    #: A limit order priced from the book instead of `price`: level `bboLevel` (1-5) of its
    #: own side (Queue) or of the other side (Counterparty).
    bbo_side_type: Literal["Queue", "Counterparty"] | None = None
    bbo_level: Literal["1", "2", "3", "4", "5"] | None = None

    @model_validator(mode="after")
    def _bbo_fields_together(self) -> PlaceOrderParams:
        if (self.bbo_side_type is None) != (self.bbo_level is None):
            raise ValueError("bboSideType and bboLevel go together")
        return self

    @model_validator(mode="after")
    def _slippage_tolerance_of_a_market_order(self) -> PlaceOrderParams:
        kind, value = self.slippage_tolerance_type, self.slippage_tolerance
        if kind is None and value is None:
            return self
        if kind is None or value is None:
            raise ValueError("slippageToleranceType and slippageTolerance go together")
        if self.order_type != "Market" or self.trigger_price is not None:
            raise ValueError("slippage tolerance is for market orders only (not conditional)")
        if kind == "TickSize" and not (1 <= value <= 10_000 and value == value.to_integral()):
            raise ValueError("slippageTolerance in TickSize must be an integer in [1, 10000]")
        if kind == "Percent" and not (
            Decimal("0.01") <= value <= 10 and value == value.quantize(Decimal("0.01"))
        ):
            raise ValueError("slippageTolerance in Percent must be in [0.01, 10], 2 decimals")
        return self

    @model_validator(mode="after")
    def _exit_order_types_fit_the_mode(self) -> PlaceOrderParams:
        _check_exit_order_types(
            self.tpsl_mode,
            (
                ("tpOrderType", self.tp_order_type, self.tp_limit_price),
                ("slOrderType", self.sl_order_type, self.sl_limit_price),
            ),
        )
        return self


class AmendOrderParams(_Params):
    """`POST /v5/order/amend`: fields left out keep their value; "0" clears takeProfit/stopLoss.
    `triggerPrice` moves a conditional order's trigger, or a position's TP/SL order;
    `triggerBy` changes the price it watches."""

    category: Category
    symbol: str
    order_id: str | None = None
    order_link_id: str | None = None
    qty: DecimalText | None = None
    price: DecimalText | None = None
    take_profit: DecimalText | None = None
    stop_loss: DecimalText | None = None
    tp_trigger_by: TriggerBy | None = None
    sl_trigger_by: TriggerBy | None = None
    trigger_price: DecimalText | None = None
    trigger_by: TriggerBy | None = None
    #: "Only working when original order sets partial limit tp/sl" (else ignored).
    tp_limit_price: DecimalText | None = None
    sl_limit_price: DecimalText | None = None


#: Bybit's kinds of order (`orderFilter`): the simulator's are plain (`Order`) and the
#: positions' TP/SL orders (`StopOrder`); the rest are spot's.
OrderFilter = Literal["Order", "StopOrder", "tpslOrder", "OcoOrder", "BidirectionalTpslOrder"]
#: cancel-all also takes `OpenOrder` for linear (the plain open orders).
CancelAllFilter = Literal[OrderFilter, "OpenOrder"]


class CancelAllParams(_Params):
    """`POST /v5/order/cancel-all`: linear needs symbol, baseCoin or settleCoin."""

    category: Category
    symbol: str | None = None
    base_coin: str | None = None
    settle_coin: str | None = None
    order_filter: CancelAllFilter | None = None
    #: With `orderFilter` StopOrder: only the conditional orders (stopOrderType `Stop`), not
    #: the positions' TP/SL (Bybit: "except TP/SL order and Trailing stop orders").
    stop_order_type: Literal["Stop"] | None = None


class BatchPlaceParams(_Params):
    """`POST /v5/order/create-batch`: each item is a `/v5/order/create` body without category,
    parsed and checked on its own (a bad item fails alone, in `retExtInfo.list`)."""

    category: Category
    request: list[dict[str, Any]] = Field(min_length=1, max_length=BATCH_MAX_ORDERS)


class BatchCancelParams(_Params):
    """`POST /v5/order/cancel-batch`: each item is `{symbol, orderId | orderLinkId}`."""

    category: Category
    request: list[dict[str, Any]] = Field(min_length=1, max_length=BATCH_MAX_ORDERS)


class BatchAmendParams(_Params):
    """`POST /v5/order/amend-batch`: each item is a `/v5/order/amend` body without category."""

    category: Category
    request: list[dict[str, Any]] = Field(min_length=1, max_length=BATCH_MAX_ORDERS)


class ExecutionQueryParams(_Params):
    """`GET /v5/execution/list`."""

    category: AnyCategory  # other categories list nothing (see `SimExchange`)
    symbol: str | None = None
    order_id: str | None = None
    order_link_id: str | None = None
    base_coin: str | None = None
    settle_coin: str | None = None
    start_time: int | None = Field(default=None, ge=0)
    end_time: int | None = Field(default=None, ge=0)
    exec_type: str | None = None
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = None


class ClosedPnlParams(_Params):
    """`GET /v5/position/closed-pnl`."""

    category: AnyCategory  # other categories list nothing (see `SimExchange`)
    symbol: str | None = None
    start_time: int | None = Field(default=None, ge=0)
    end_time: int | None = Field(default=None, ge=0)
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = None


class CoinInfoParams(_Params):
    """`GET /v5/asset/coin/query-info`."""

    coin: str | None = None


class CancelOrderParams(_Params):
    """`POST /v5/order/cancel`: orderId takes precedence over orderLinkId, as on Bybit."""

    category: Category
    symbol: str
    order_id: str | None = None
    order_link_id: str | None = None


class OrderQueryParams(_Params):
    """`GET /v5/order/realtime` and `GET /v5/order/history`."""

    category: AnyCategory  # other categories list nothing (see `SimExchange`)
    symbol: str | None = None
    base_coin: str | None = None
    settle_coin: str | None = None
    order_id: str | None = None
    order_link_id: str | None = None
    open_only: int = Field(default=0, ge=0, le=2)
    order_status: str | None = None
    order_filter: OrderFilter | None = None
    start_time: int | None = Field(default=None, ge=0)  # history only
    end_time: int | None = Field(default=None, ge=0)
    limit: int = Field(default=20, ge=1, le=50)
    cursor: str | None = None


class PositionQueryParams(_Params):
    """`GET /v5/position/list`."""

    category: AnyCategory  # other categories list nothing (see `SimExchange`)
    symbol: str | None = None
    base_coin: str | None = None
    settle_coin: str | None = None
    limit: int = Field(default=20, ge=1, le=200)
    cursor: str | None = None


class TransactionLogParams(_Params):
    """`GET /v5/account/transaction-log` (UTA): every filter optional."""

    account_type: str | None = None
    category: AnyCategory | None = None
    currency: str | None = None
    base_coin: str | None = None
    type: str | None = None
    trans_sub_type: str | None = None
    start_time: int | None = Field(default=None, ge=0)
    end_time: int | None = Field(default=None, ge=0)
    limit: int = Field(default=20, ge=1, le=50)
    cursor: str | None = None


class FeeRateParams(_Params):
    """`GET /v5/account/fee-rate`. Bybit's table marks category required, yet its own request
    examples (HTTP and pybit) leave it out and get linear rates: absent means linear."""

    category: AnyCategory = "linear"
    symbol: str | None = None
    base_coin: str | None = None


class SwitchModeParams(_Params):
    """`POST /v5/position/switch-mode`: symbol (preferred) or coin, mode 0 or 3."""

    category: Category
    symbol: str | None = None
    coin: str | None = None
    mode: Annotated[int, AfterValidator(_position_mode)]


class SetMarginModeParams(_Params):
    """`POST /v5/account/set-margin-mode`."""

    set_margin_mode: Annotated[str, BeforeValidator(_one_of(*_MARGIN_MODES))]


class WalletBalanceParams(_Params):
    """`GET /v5/account/wallet-balance`."""

    account_type: str
    coin: str | None = None


class SetLeverageParams(_Params):
    """`POST /v5/position/set-leverage`: one-way mode needs buyLeverage == sellLeverage."""

    category: Category
    symbol: str
    buy_leverage: DecimalText
    sell_leverage: DecimalText


class TradingStopParams(_Params):
    """`POST /v5/position/trading-stop`: a level left out keeps its value, "0" cancels it.

    Bybit documents tpslMode and positionIdx as required, yet takes a request without them
    (clients such as ccxt send neither for a trailing stop) as Full and one-way. Full sets the
    position's own TP/SL (market orders); Partial only adds TP/SL orders of tpSize / slSize
    (equal when both are given), market or limit."""

    category: Category
    symbol: str
    tpsl_mode: TpslMode | None = None
    position_idx: PositionIdx = 0
    tp_order_type: Literal["Market", "Limit"] | None = None
    sl_order_type: Literal["Market", "Limit"] | None = None
    take_profit: DecimalText | None = None
    stop_loss: DecimalText | None = None
    tp_trigger_by: TriggerBy | None = None
    sl_trigger_by: TriggerBy | None = None
    trailing_stop: DecimalText | None = None
    active_price: DecimalText | None = None
    tp_size: DecimalText | None = None
    sl_size: DecimalText | None = None
    tp_limit_price: DecimalText | None = None
    sl_limit_price: DecimalText | None = None

    @model_validator(mode="after")
    def _exit_orders_fit_the_mode(self) -> TradingStopParams:
        for name, value in (
            ("tpOrderType", self.tp_order_type),
            ("slOrderType", self.sl_order_type),
        ):
            if value is not None and self.tpsl_mode is None:
                raise ValueError(f"{name} can not have a value when tpSlMode is empty")
        _check_exit_order_types(
            self.tpsl_mode,
            (
                ("tpOrderType", self.tp_order_type, self.tp_limit_price),
                ("slOrderType", self.sl_order_type, self.sl_limit_price),
            ),
        )
        if self.tpsl_mode != "Partial":
            return self
        for name, level, size in (
            ("takeProfit", self.take_profit, self.tp_size),
            ("stopLoss", self.stop_loss, self.sl_size),
        ):
            if level == 0:
                raise ValueError(
                    f"{name} 0 does not cancel a partial TP/SL: cancel its order instead"
                )
            if level is not None and not size:
                size_name = "tpSize" if name == "takeProfit" else "slSize"
                raise ValueError(f"{size_name} is required for a Partial {name}")
        sizes = (self.tp_size, self.sl_size)
        if None not in sizes and sizes[0] != sizes[1]:
            raise ValueError("the value of tpSize and slSize must equal")
        return self


M = TypeVar("M", bound=BaseModel)


def parse_params(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`'s parameters, or Bybit's 10001 saying what is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SimError(RetCode.PARAMS_ERROR, params_error_message(exc)) from exc


def params_error_message(error: ValidationError) -> str:
    """Bybit-style 10001 text for the first problem, naming the parameter as the client sent it."""
    first = error.errors(include_url=False)[0]
    name = ".".join(str(part) for part in first["loc"]) or "request"
    if first["type"] == "missing":
        return f"params error: {name} is required"
    if first["type"] in {"value_error", "type_error"} and "error" in first.get("ctx", {}):
        return f"params error: {name}: {first['ctx']['error']}"
    return f"params error: {name}: {first['msg']}"
