"""The matching engine driven by hand (no server): delays, prices, pieces, walks, records."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from bot import clock
from bot.sim import (
    RetCode,
    SimAccountSpec,
    SimError,
    SimExchange,
    SimFaults,
    SimulatorConfig,
    engine,
)
from bot.sim.candles import PriceHistory, candle_open
from bot.sim.params import (
    AmendOrderParams,
    CancelAllParams,
    ClosedPnlParams,
    ExecutionQueryParams,
    KlineParams,
    MarketParams,
    MarkKlineParams,
    OrderbookParams,
    OrderQueryParams,
    PlaceOrderParams,
    PositionQueryParams,
    TransactionLogParams,
    WalletBalanceParams,
    parse_params,
)
from tests.bot.sim.kit import order_body, order_row, place, position_row, wallet_row

KEY = "engine-key"
DELAY_MS = 5


def _exchange(**config: Any) -> SimExchange:
    return SimExchange(
        SimulatorConfig(
            seed=1,
            accounts=[SimAccountSpec(api_key=KEY, api_secret=SecretStr("s"))],
            **{"market_fill_delay_ms": DELAY_MS, **config},
        )
    )


def _submit(exchange: SimExchange, **fields: Any) -> str:
    return place(exchange, KEY, **fields)


def _order(exchange: SimExchange, order_id: str) -> dict[str, Any]:
    return order_row(exchange, KEY, order_id)


def _size(exchange: SimExchange, symbol: str = "BTCUSDT") -> str:
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": symbol})
    size: str = exchange.positions(KEY, query)["list"][0]["size"]
    return size


def _executions(exchange: SimExchange, **filters: Any) -> list[dict[str, Any]]:
    query = ExecutionQueryParams.model_validate({"category": "linear", **filters})
    rows: list[dict[str, Any]] = exchange.executions(KEY, query)["list"]
    return rows


# ------------------------------------------------------------------ acknowledgement, then fill


def test_a_market_order_is_new_until_the_engine_fills_it() -> None:
    # A delay far beyond the test's own run time, so only advance() can make it due.
    exchange = _exchange(market_fill_delay_ms=60_000)

    order_id = _submit(exchange, side="Buy", qty="0.01")

    assert _order(exchange, order_id)["orderStatus"] == "New"
    assert exchange.advance(50_000) == 0
    exchange.advance(10_000)
    assert _order(exchange, order_id)["orderStatus"] == "Filled"
    assert _size(exchange) == "0.01"


def test_takers_pay_the_spread_and_slippage_rounded_against_them() -> None:
    exchange = _exchange(spread_bps=Decimal(2), slippage_bps=Decimal(1))

    buy = _submit(exchange, side="Buy", qty="0.01")
    sell = _submit(exchange, side="Sell", qty="0.01")
    exchange.advance(DELAY_MS)

    # ask 97009.7 + 1 bp = 97019.40097, up to 97019.5; bid 96990.3 - 1 bp = 96980.60097, down.
    assert _order(exchange, buy)["avgPrice"] == "97019.5"
    assert _order(exchange, sell)["avgPrice"] == "96980.6"


def test_a_marketable_limit_takes_at_the_ask_but_never_beyond_its_price() -> None:
    exchange = _exchange(spread_bps=Decimal(2), slippage_bps=Decimal(50))

    order_id = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="97100")
    exchange.advance(DELAY_MS)

    order = _order(exchange, order_id)
    assert (order["orderStatus"], order["avgPrice"]) == ("Filled", "97100")
    assert _executions(exchange)[0]["isMaker"] is False


@pytest.mark.parametrize(
    ("tolerance", "buy_at", "sell_at"),
    [
        # ask 97009.7 x 1.001 = 97106.7097, down to the tick; bid 96990.3 x 0.999, up.
        ({"slippageToleranceType": "Percent", "slippageTolerance": "0.1"}, "97106.7", "96893.4"),
        # ask + 30 ticks, bid - 30 ticks.
        ({"slippageToleranceType": "TickSize", "slippageTolerance": "30"}, "97012.7", "96987.3"),
    ],
)
def test_a_market_orders_slippage_tolerance_caps_what_it_pays(
    tolerance: dict[str, str], buy_at: str, sell_at: str
) -> None:
    exchange = _exchange(spread_bps=Decimal(2), slippage_bps=Decimal(50))  # 0.5 % past the book

    buy = _submit(exchange, side="Buy", qty="0.01", **tolerance)
    sell = _submit(exchange, side="Sell", qty="0.01", **tolerance)
    exchange.advance(DELAY_MS)

    assert (_order(exchange, buy)["avgPrice"], _order(exchange, sell)["avgPrice"]) == (
        buy_at,
        sell_at,
    )


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"slippageToleranceType": "Percent"}, "go together"),
        ({"slippageToleranceType": "Percent", "slippageTolerance": "11"}, "[0.01, 10]"),
        ({"slippageToleranceType": "TickSize", "slippageTolerance": "2.5"}, "integer"),
        (
            {"orderType": "Limit", "price": "97000"}
            | {"slippageToleranceType": "TickSize", "slippageTolerance": "5"},
            "market orders only",
        ),
    ],
)
def test_a_slippage_tolerance_bybit_refuses_is_10001(fields: dict[str, str], said: str) -> None:
    with pytest.raises(SimError) as refused:  # as the routes parse every request
        parse_params(PlaceOrderParams, order_body(side="Buy", qty="0.01", **fields))

    assert refused.value.ret_code == RetCode.PARAMS_ERROR and said in refused.value.ret_msg


def test_partial_fills_come_in_pieces_at_the_price_of_their_moment() -> None:
    exchange = _exchange(partial_fills=3)

    order_id = _submit(exchange, side="Buy", qty="0.01")
    exchange.advance(DELAY_MS)
    first = _order(exchange, order_id)
    exchange.set_prices({"BTCUSDT": 97100})
    exchange.advance(2 * DELAY_MS)

    assert (first["orderStatus"], first["cumExecQty"]) == ("PartiallyFilled", "0.003")
    fills = [(e["execQty"], e["execPrice"]) for e in reversed(_executions(exchange))]
    assert fills == [("0.003", "97000"), ("0.003", "97100"), ("0.004", "97100")]
    assert _order(exchange, order_id)["orderStatus"] == "Filled"


def test_a_market_orders_later_pieces_stop_where_the_price_passes_its_limit() -> None:
    exchange = _exchange(partial_fills=2)

    order_id = _submit(exchange, side="Buy", qty="0.02")
    exchange.advance(DELAY_MS)  # the first piece, at 97000; the limit is 97970
    exchange.set_prices({"BTCUSDT": 105000})
    exchange.advance(DELAY_MS)

    order = _order(exchange, order_id)
    assert (order["orderStatus"], order["rejectReason"]) == ("Cancelled", "EC_NoImmediateQtyToFill")
    assert (order["cumExecQty"], order["price"]) == ("0.01", "97970")
    (fill,) = _executions(exchange, orderId=order_id)
    assert (fill["execPrice"], fill["orderPrice"]) == ("97000", "97970")


def test_a_limit_orders_later_pieces_rest_once_the_price_passes_it() -> None:
    exchange = _exchange(partial_fills=2)

    order_id = _submit(exchange, side="Buy", qty="0.02", orderType="Limit", price="97100")
    exchange.advance(DELAY_MS)
    exchange.set_prices({"BTCUSDT": 97200})
    exchange.advance(DELAY_MS)

    order = _order(exchange, order_id)
    assert (order["orderStatus"], order["cumExecQty"], order["leavesValue"]) == (
        "PartiallyFilled",
        "0.01",
        "971",
    )
    exchange.set_prices({"BTCUSDT": 97100})  # back to its price: it fills there, as a maker
    assert _order(exchange, order_id)["orderStatus"] == "Filled"
    assert [e["isMaker"] for e in _executions(exchange, orderId=order_id)] == [True, False]


def test_a_spread_wider_than_the_price_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="spread_bps 250 puts BTCUSDT's ask at or past"):
        _exchange(spread_bps=Decimal(250))


def test_query_lag_hides_a_new_order_from_queries_but_not_from_trading() -> None:
    exchange = _exchange(query_lag_ms=10_000)

    order_id = _submit(exchange, side="Buy", qty="0.01", orderLinkId="lagging")
    exchange.advance(DELAY_MS)
    hidden = exchange.open_orders(
        KEY, OrderQueryParams.model_validate({"category": "linear", "orderLinkId": "lagging"})
    )["list"]
    exchange.advance(10_000)

    assert hidden == []
    assert _size(exchange) == "0.01"
    assert _order(exchange, order_id)["orderStatus"] == "Filled"


def test_a_stop_loss_closes_the_position_with_a_market_order_a_moment_later() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.01", stopLoss="96000")
    exchange.advance(DELAY_MS)

    exchange.set_prices({"BTCUSDT": 95500})
    triggered = _size(exchange)
    exchange.advance(DELAY_MS)

    assert triggered == "0.01"
    assert _size(exchange) == "0"
    stop = exchange.orders(KEY)[-1]
    assert (stop["stopOrderType"], stop["createType"], stop["avgPrice"]) == (
        "StopLoss",
        "CreateByStopLoss",
        "95499.9",  # a sell takes the bid, a tick under the last price
    )


# ------------------------------------------------------------------ the last price and the market's


class _Tape:
    """A stream sink that listens to every market and keeps its trades and tickers."""

    def __init__(self) -> None:
        self.trades: list[dict[str, Any]] = []
        self.tickers: list[tuple[int, dict[str, str]]] = []

    def wants_private(self, api_key: str, topic: str) -> bool:
        return False

    def push_private(self, api_key: str, topic: str, rows: list[dict[str, Any]]) -> None:
        raise AssertionError("no private topic is listened to")

    def wants_market_data(self, symbol: str) -> bool:
        return True

    def price_moved(self, symbol: str, cs: int, row: dict[str, str]) -> None:
        self.tickers.append((cs, row))

    def wants_trades(self, symbol: str) -> bool:
        return True

    def push_trade(self, symbol: str, row: dict[str, Any]) -> None:
        self.trades.append(row)

    def push_liquidation(self, symbol: str, row: dict[str, Any]) -> None:
        """Not asked for here."""


def _ticker(exchange: SimExchange) -> dict[str, Any]:
    query = MarketParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    row: dict[str, Any] = exchange.tickers(query)["list"][0]
    return row


def _closes(exchange: SimExchange) -> tuple[str, str]:
    """The open 1-minute candle's close, of the trades and of the mark price."""
    query = {"symbol": "BTCUSDT", "interval": "1", "limit": 1}
    traded = exchange.kline(KlineParams.model_validate(query))["list"][0]
    marked = exchange.mark_price_kline(MarkKlineParams.model_validate(query))["list"][0]
    return traded[4], marked[4]


def test_a_fill_is_the_last_price_and_closes_the_candle_but_moves_neither_mark_nor_book() -> None:
    exchange = _exchange(spread_bps=Decimal(2))  # bid 96990.3, ask 97009.7 around 97000
    book_before = exchange.book("BTCUSDT", 3)

    _submit(exchange, side="Sell", qty="0.01")
    exchange.advance(DELAY_MS)

    ticker = _ticker(exchange)
    assert ticker["lastPrice"] == "96990.3"  # the sell took the bid
    assert (ticker["markPrice"], ticker["indexPrice"]) == ("97000", "97000")
    assert (ticker["bid1Price"], ticker["ask1Price"]) == ("96990.3", "97009.7")
    book = exchange.book("BTCUSDT", 3)
    assert (book["b"], book["a"], book["u"]) == (
        book_before["b"],
        book_before["a"],
        book_before["u"],
    )
    assert _closes(exchange) == ("96990.3", "97000")
    assert exchange.prices()["BTCUSDT"] == Decimal(97000)
    position = exchange.positions(
        KEY, PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    )["list"][0]
    assert (position["markPrice"], position["unrealisedPnl"]) == ("97000", "-0.097")


def test_each_trade_carries_its_tick_direction_against_the_trade_before() -> None:
    exchange = _exchange(spread_bps=Decimal(2))
    tape = _Tape()
    exchange.attach_stream(tape)

    for side in ("Sell", "Sell", "Buy", "Buy"):
        _submit(exchange, side=side, qty="0.01")
        exchange.advance(DELAY_MS)
    exchange.set_prices({"BTCUSDT": "97009.7"})  # the market trades where the last buy did

    assert [(trade["p"], trade["L"]) for trade in tape.trades] == [
        ("96990.3", "MinusTick"),
        ("96990.3", "ZeroMinusTick"),
        ("97009.7", "PlusTick"),
        ("97009.7", "ZeroPlusTick"),
    ]
    # Every trade pushed the ticker at once, its cross sequence rising each time.
    directions = [row["tickDirection"] for _, row in tape.tickers]
    assert directions == ["MinusTick", "ZeroMinusTick", "PlusTick", "ZeroPlusTick", "ZeroPlusTick"]
    assert [row["lastPrice"] for _, row in tape.tickers][-1] == "97009.7"
    sequences = [cs for cs, _ in tape.tickers]
    assert sequences == sorted(set(sequences))


def test_a_move_fills_the_orders_it_crosses_on_its_way_then_trades_at_its_price() -> None:
    exchange = _exchange()
    tape = _Tape()
    exchange.attach_stream(tape)
    far = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="96800")
    near = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="96900")
    exchange.advance(DELAY_MS)

    exchange.set_prices({"BTCUSDT": "96700"})

    assert [(trade["p"], trade["L"]) for trade in tape.trades] == [
        ("96900", "MinusTick"),  # the nearer order first, as the market fell through it
        ("96800", "MinusTick"),
    ]
    assert (_order(exchange, near)["avgPrice"], _order(exchange, far)["avgPrice"]) == (
        "96900",
        "96800",
    )
    ticker = _ticker(exchange)
    assert (ticker["lastPrice"], ticker["markPrice"]) == ("96700", "96700")
    assert _closes(exchange) == ("96700", "96700")


def test_a_last_price_trigger_sees_a_fill_and_a_mark_price_trigger_does_not() -> None:
    exchange = _exchange(spread_bps=Decimal(2))
    by_last = _submit(exchange, side="Buy", qty="0.01", triggerPrice="97005", triggerDirection=1)
    by_mark = _submit(
        exchange,
        side="Buy",
        qty="0.01",
        triggerPrice="97005",
        triggerDirection=1,
        triggerBy="MarkPrice",
    )

    _submit(exchange, side="Buy", qty="0.01")  # takes the ask, 97009.7: the last price
    exchange.advance(DELAY_MS)
    exchange.advance(DELAY_MS)

    assert _order(exchange, by_last)["orderStatus"] == "Filled"
    assert _order(exchange, by_mark)["orderStatus"] == "Untriggered"  # the mark is 97000
    with pytest.raises(SimError) as passed:  # a new trigger by the last price is past it
        _submit(exchange, side="Buy", qty="0.01", triggerPrice="97005", triggerDirection=1)
    assert passed.value.ret_code == RetCode.TRIGGER_NOT_ABOVE_PRICE
    assert "current[97009.7]??LastPrice" in passed.value.ret_msg


def test_a_walk_steps_from_the_market_price_not_from_a_fill() -> None:
    exchange = _exchange(spread_bps=Decimal(2))
    _submit(exchange, side="Sell", qty="0.01")  # the last price: the bid, 96990.3
    exchange.advance(DELAY_MS)

    exchange.update_prices(
        {"BTCUSDT": {"walk": {"seed": 1, "step_bps": 0, "drift_bps": 10, "interval_ms": 10}}}
    )
    exchange.advance(10)

    assert exchange.prices()["BTCUSDT"] == Decimal(97097)  # 97000 + 10 bp
    assert _ticker(exchange)["lastPrice"] == "97097"


# ------------------------------------------------------------------ walks


def _walk_prices(seed: int) -> list[Decimal]:
    exchange = _exchange()
    exchange.update_prices({"BTCUSDT": {"walk": {"seed": seed, "step_bps": 5, "interval_ms": 10}}})
    seen = []
    for _ in range(20):
        exchange.advance(10)
        seen.append(exchange.prices()["BTCUSDT"])
    return seen


def test_a_seeded_walk_repeats_and_moves_by_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only advance() moves the engine clock: on a busy host the monotonic clock would add
    # steps of its own between two advances.
    monkeypatch.setattr(engine, "time", SimpleNamespace(monotonic_ns=lambda: 10**15))
    first, again, other = _walk_prices(1), _walk_prices(1), _walk_prices(2)

    assert first == again
    assert first != other
    previous = Decimal(97000)
    for price in first:
        assert abs(price - previous) <= previous * Decimal("0.0005") + Decimal("0.1")
        assert price != previous
        previous = price


def test_a_walk_with_drift_reaches_a_take_profit() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.01", takeProfit="97500")
    exchange.advance(DELAY_MS)

    exchange.update_prices(
        {"BTCUSDT": {"walk": {"seed": 3, "step_bps": 1, "drift_bps": 10, "interval_ms": 10}}}
    )
    exchange.advance(1000)

    assert _size(exchange) == "0"
    assert exchange.orders(KEY)[-1]["stopOrderType"] == "TakeProfit"


def test_a_plain_price_stops_the_walk() -> None:
    exchange = _exchange()
    exchange.update_prices({"BTCUSDT": {"walk": {"seed": 1, "interval_ms": 10}}})

    exchange.set_prices({"BTCUSDT": 90000})
    exchange.advance(100)

    assert exchange.prices()["BTCUSDT"] == Decimal(90000)
    assert exchange.walks() == {}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"BTCUSDT": {"walk": {"step_bps": -1}}}, "step_bps"),
        ({"BTCUSDT": {"walk": {"interval_ms": 0}}}, "interval_ms"),
        ({"BTCUSDT": {"walk": {"surprise": 1}}}, "surprise"),
        ({"BTCUSDT": {"run": {}}}, "walk"),
        ({"BTCUSDT": {"walk": {"start": "abc"}}}, "start"),
    ],
)
def test_bad_walks_are_refused_with_the_field(update: dict[str, Any], message: str) -> None:
    exchange = _exchange()

    with pytest.raises(ValueError, match=message):
        exchange.update_prices(update)

    assert exchange.walks() == {}


# ------------------------------------------------------------------ records and order changes


def test_executions_and_closed_pnl_carry_bybits_fee_fields() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.02", orderLinkId="open")
    exchange.advance(DELAY_MS)
    exchange.set_prices({"BTCUSDT": 98000})
    closing = _submit(exchange, side="Sell", qty="0.02", reduceOnly=True)
    exchange.advance(DELAY_MS)

    execution = _executions(exchange, orderLinkId="open")[0]
    closed = exchange.closed_pnl(KEY, ClosedPnlParams.model_validate({"category": "linear"}))

    assert (execution["execType"], execution["execFee"], execution["feeRate"]) == (
        "Trade",
        "1.067",  # 1940 USDT at 0.055 %
        "0.00055",
    )
    assert (execution["isMaker"], execution["closedSize"], execution["execQty"]) == (
        False,
        "0",
        "0.02",
    )
    record = closed["list"][0]
    assert record["orderId"] == closing
    # Bought at the ask (the last price); sold at the bid, a tick under the new last price.
    assert (record["closedSize"], record["avgEntryPrice"], record["avgExitPrice"]) == (
        "0.02",
        "97000",
        "97999.9",
    )
    assert (record["openFee"], record["closeFee"]) == ("1.067", "1.0779989")  # 0.055 %
    assert Decimal(record["closedPnl"]) == Decimal("19.998") - Decimal("1.067") - Decimal(
        "1.0779989"
    )


def _amend(exchange: SimExchange, order_id: str, **change: Any) -> None:
    request = {"category": "linear", "symbol": "BTCUSDT", "orderId": order_id, **change}
    exchange.amend_order(KEY, AmendOrderParams.model_validate(request))


def _amend_error(exchange: SimExchange, order_id: str, **change: Any) -> tuple[RetCode, str]:
    """Bybit's code and message of an amendment refused."""
    with pytest.raises(SimError) as caught:
        _amend(exchange, order_id, **change)
    return caught.value.ret_code, caught.value.ret_msg


def test_amending_a_resting_limit_into_the_market_fills_it_as_taker() -> None:
    exchange = _exchange()
    order_id = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="96000")
    exchange.advance(DELAY_MS)

    _amend(exchange, order_id, price="97500")
    exchange.advance(DELAY_MS)

    order = _order(exchange, order_id)
    assert (order["orderStatus"], order["price"], order["avgPrice"]) == (
        "Filled",
        "97500",
        "97000",
    )


def test_amending_nothing_or_a_filled_order_is_refused() -> None:
    exchange = _exchange()
    resting = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="96000")
    filled = _submit(exchange, side="Buy", qty="0.01")
    exchange.advance(DELAY_MS)

    assert _amend_error(exchange, resting, price="96000")[0] is RetCode.PARAMS_ERROR
    assert _amend_error(exchange, filled, qty="0.02")[0] is RetCode.ORDER_NOT_EXISTS


def test_an_amended_order_keeps_the_rules_its_creation_met() -> None:
    """Bybit checks an amended order as it checks a new one: TP/SL on their sides of the
    base price, none on a reduce-only order, the minimum order value."""
    exchange = _exchange()
    resting = _submit(
        exchange, side="Buy", qty="0.01", orderType="Limit", price="95000", stopLoss="94000"
    )
    _submit(exchange, side="Buy", qty="0.01")
    exchange.advance(DELAY_MS)
    reducing = _submit(
        exchange, side="Sell", qty="0.01", orderType="Limit", price="99000", reduceOnly=True
    )
    stop_entry = _submit(
        exchange,
        side="Buy",
        qty="0.01",
        orderType="Market",
        triggerPrice="98000",
        triggerDirection=1,
        stopLoss="97500",
    )

    assert _amend_error(exchange, resting, stopLoss="96000") == (
        RetCode.PARAMS_ERROR,
        "params error: stopLoss 96000 of a Buy order must be below its base price 95000",
    )
    assert _amend_error(exchange, resting, takeProfit="90000")[0] is RetCode.PARAMS_ERROR
    assert _amend_error(exchange, resting, price="93000")[1].startswith(
        "params error: stopLoss 94000 of a Buy order must be below"
    )  # the stop it has would now lie above the order's price
    assert _amend_error(exchange, resting, qty="0.00001")[0] is RetCode.PARAMS_ERROR  # qtyStep
    assert _amend_error(exchange, resting, price="100", stopLoss="0")[0] is (
        RetCode.ORDER_VALUE_BELOW_MINIMUM
    )
    assert _amend_error(exchange, reducing, takeProfit="90000") == (
        RetCode.PARAMS_ERROR,
        "params error: takeProfit/stopLoss cannot be set on a reduceOnly order",
    )
    assert _amend_error(exchange, stop_entry, triggerPrice="97400")[0] in {
        RetCode.PARAMS_ERROR,
        RetCode.TRIGGER_NOT_ABOVE_PRICE,
    }
    assert _amend_error(exchange, stop_entry, triggerPrice="99000", stopLoss="99500")[1].startswith(
        "params error: stopLoss 99500 of a Buy order must be below its base price 99000"
    )
    assert (_order(exchange, resting)["price"], _order(exchange, resting)["stopLoss"]) == (
        "95000",
        "94000",
    )


def _reduce_only_sell(exchange: SimExchange, qty: str) -> str:
    return _submit(
        exchange, side="Sell", qty=qty, orderType="Limit", price="99000", reduceOnly=True
    )


def test_a_reduce_only_order_amended_past_what_it_can_close_is_trimmed_as_on_create() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.01")
    exchange.advance(DELAY_MS)
    other = _reduce_only_sell(exchange, "0.004")
    amended = _reduce_only_sell(exchange, "0.003")

    _amend(exchange, amended, qty="0.05")

    # The position (0.01) less the other reduce-only order (0.004).
    assert _order(exchange, amended)["qty"] == "0.006"
    assert _order(exchange, other)["qty"] == "0.004"


def test_a_reduce_only_order_amended_when_others_cover_the_position_is_110017() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.02")
    exchange.advance(DELAY_MS)
    _reduce_only_sell(exchange, "0.01")
    amended = _reduce_only_sell(exchange, "0.01")
    _submit(exchange, side="Sell", qty="0.01")  # the position is down to 0.01
    exchange.advance(DELAY_MS)

    code, message = _amend_error(exchange, amended, qty="0.015")

    assert code is RetCode.REDUCE_ONLY_RULE_NOT_SATISFIED
    assert "already cover the position" in message
    assert _order(exchange, amended)["qty"] == "0.01"


def test_a_reduce_only_order_amended_to_what_it_already_is_after_trimming_is_unchanged() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.01")
    exchange.advance(DELAY_MS)
    amended = _reduce_only_sell(exchange, "0.01")

    code, message = _amend_error(exchange, amended, qty="0.02")

    assert code is RetCode.PARAMS_ERROR
    assert message.startswith("The order remains unchanged")


def test_an_amended_price_beyond_the_price_limit_is_moved_in_to_it() -> None:
    exchange = _exchange()
    order_id = _submit(exchange, side="Sell", qty="0.01", orderType="Limit", price="99000")
    exchange.advance(DELAY_MS)
    floor = exchange.price_limit_row("BTCUSDT")
    assert floor is not None

    _amend(exchange, order_id, price="1000")
    exchange.advance(DELAY_MS)

    order = _order(exchange, order_id)
    assert (order["price"], order["orderStatus"]) == (floor["sellLmt"], "Filled")


def test_cancel_all_cancels_the_open_orders_of_a_symbol_only() -> None:
    exchange = _exchange()
    btc = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="96000")
    eth = _submit(
        exchange, symbol="ETHUSDT", side="Buy", qty="0.1", orderType="Limit", price="3000"
    )

    answer = exchange.cancel_all(
        KEY, CancelAllParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    )

    assert answer["success"] == "1"
    assert [row["orderId"] for row in answer["list"]] == [btc]
    assert _order(exchange, btc)["cancelType"] == "CancelByUser"
    assert _order(exchange, eth)["orderStatus"] == "New"


def _btc_and_eth_orders(exchange: SimExchange) -> tuple[str, str]:
    btc = _submit(exchange, side="Buy", qty="0.01", orderType="Limit", price="96000")
    eth = _submit(
        exchange, symbol="ETHUSDT", side="Buy", qty="0.1", orderType="Limit", price="3000"
    )
    return btc, eth


@pytest.mark.parametrize(
    ("selectors", "chosen"),
    [
        # Bybit: "the system will process one of param, which priority is symbol > baseCoin >
        # settleCoin": the others are ignored, not combined.
        ({"symbol": "BTCUSDT", "baseCoin": "ETH"}, "btc"),
        ({"symbol": "BTCUSDT", "settleCoin": "USDC"}, "btc"),
        ({"baseCoin": "ETH", "settleCoin": "USDC"}, "eth"),
        ({"settleCoin": "USDT"}, "both"),
    ],
)
def test_cancel_all_takes_symbol_then_base_coin_then_settle_coin(
    selectors: dict[str, str], chosen: str
) -> None:
    exchange = _exchange()
    btc, eth = _btc_and_eth_orders(exchange)
    wanted = {"btc": [btc], "eth": [eth], "both": [btc, eth]}[chosen]

    answer = exchange.cancel_all(
        KEY, CancelAllParams.model_validate({"category": "linear", **selectors})
    )

    assert [row["orderId"] for row in answer["list"]] == wanted
    assert {_order(exchange, order_id)["orderStatus"] for order_id in wanted} == {"Cancelled"}


@pytest.mark.parametrize(
    ("selectors", "chosen"),
    [
        ({"symbol": "BTCUSDT", "baseCoin": "ETH"}, "btc"),  # orderId > orderLinkId > symbol
        ({"baseCoin": "ETH", "settleCoin": "USDC"}, "eth"),  # > baseCoin (> settleCoin)
    ],
)
def test_the_order_and_fill_queries_take_symbol_then_base_coin_then_settle_coin(
    selectors: dict[str, str], chosen: str
) -> None:
    exchange = _exchange()
    btc, eth = _btc_and_eth_orders(exchange)
    _submit(exchange, side="Buy", qty="0.01")
    _submit(exchange, symbol="ETHUSDT", side="Buy", qty="0.1")
    exchange.advance(DELAY_MS)
    symbol = {"btc": "BTCUSDT", "eth": "ETHUSDT"}[chosen]

    query = OrderQueryParams.model_validate({"category": "linear", **selectors})
    listed = exchange.open_orders(KEY, query)["list"]
    history = exchange.order_history(KEY, query)["list"]
    fills = _executions(exchange, **selectors)

    assert [row["orderId"] for row in listed] == [{"btc": btc, "eth": eth}[chosen]]
    assert {row["symbol"] for row in history} == {symbol} and len(history) == 2
    assert [row["symbol"] for row in fills] == [symbol]


# ------------------------------------------------------------------ market data


def _klines(exchange: SimExchange, **query: Any) -> list[list[str]]:
    rows: list[list[str]] = exchange.kline(
        KlineParams.model_validate({"symbol": "BTCUSDT", **query})
    )["list"]
    return rows


def test_klines_before_the_start_are_history_whatever_the_window() -> None:
    exchange = _exchange()
    end = 1_700_000_000_000

    three = _klines(exchange, interval="60", end=end, limit=3)
    five = _klines(exchange, interval="60", end=end, limit=5)

    assert [int(row[0]) for row in five] == [
        1_699_999_200_000 - hour * 3_600_000 for hour in range(5)
    ]
    assert five[:3] == three  # the oldest of a window is not special
    assert [row[1] for row in five[:-1]] == [row[4] for row in five[1:]]  # open: the close before
    for _start, opened, high, low, close, _volume, _turnover in five:
        assert Decimal(low) <= min(Decimal(opened), Decimal(close))
        assert Decimal(high) >= max(Decimal(opened), Decimal(close))


def test_the_candles_are_what_the_price_did_since_the_start() -> None:
    hour = 3_600_000
    virtual = clock.VirtualClock(datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC))
    with clock.installed(virtual):
        exchange = _exchange()
        before = _klines(exchange, interval="60", limit=2)

        # Arrange: the price moves within the hour, and a buy fills
        for price in ("97100", "96900", "97050"):
            exchange.set_prices({"BTCUSDT": price})
        _submit(exchange, side="Buy", qty="0.01")
        exchange.advance(DELAY_MS)
        later = datetime(2026, 11, 28, 13, 0, 5, tzinfo=UTC)
        virtual.advance_to(later)
        exchange.set_prices({"BTCUSDT": "97200"})

        # Act
        rows = _klines(exchange, interval="60", limit=3)

    # Assert: the hour before the start closed at the start price and never changes; the
    # start's hour is what the price did, its volume the fill; the open hour opened there.
    started, previous = rows[1], rows[2]
    assert previous == before[1]
    assert previous[4] == "97000"
    assert started[1:5] == ["97000", "97100", "96900", "97050"]
    assert started[5] == "0.01"
    assert rows[0][1:5] == ["97050", "97200", "97050", "97200"]
    assert int(rows[0][0]) - int(started[0]) == hour


def test_a_candle_asked_at_every_push_is_the_candle_summed_afresh() -> None:
    # The open candle's settled minutes are kept and extended between pushes: asked after
    # every price, it must end as what one look at the whole history gives.
    start_ms = 1_790_000_000_000
    followed = PriceHistory({"BTCUSDT": Decimal(97000)}, start_ms)
    fresh = PriceHistory({"BTCUSDT": Decimal(97000)}, start_ms)
    hour = candle_open("60", start_ms)
    for step in range(200):
        at = start_ms + step * 17_000  # several prices a minute, over an hour's edge
        price = Decimal(97000 + (step * 37) % 101 - 50)
        for history in (followed, fresh):
            history.record_price("BTCUSDT", price, at)
            if step % 3 == 0:
                history.record_trade("BTCUSDT", price, Decimal("0.001"), at)
        followed.candles("BTCUSDT", "60", [hour, hour + 3_600_000], Decimal("0.1"))

    asked = [hour, hour + 3_600_000]
    assert followed.candles("BTCUSDT", "60", asked, Decimal("0.1")) == fresh.candles(
        "BTCUSDT", "60", asked, Decimal("0.1")
    )


def test_a_clock_skewed_back_never_rewrites_a_closed_candle() -> None:
    virtual = clock.VirtualClock(datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC))
    with clock.installed(virtual):
        exchange = _exchange()
        exchange.set_prices({"BTCUSDT": "97100"})
        virtual.advance_to(datetime(2026, 11, 28, 12, 3, 10, tzinfo=UTC))
        exchange.set_prices({"BTCUSDT": "97200"})
        before = _klines(exchange, interval="1", limit=4)

        exchange.set_faults(SimFaults(clock_skew_ms=-100_000))  # back to 12:01:30
        exchange.set_prices({"BTCUSDT": "96000"})
        exchange.set_faults(SimFaults())
        after = _klines(exchange, interval="1", limit=4)

    assert after[1:] == before[1:]  # 12:02, 12:01 and 12:00 stay as they closed
    assert after[0][1:5] == ["97100", "97200", "96000", "96000"]  # 12:03 took the price


def test_a_ticker_reports_the_last_24_hours_of_the_simulators_own_trading() -> None:
    virtual = clock.VirtualClock(datetime(2026, 11, 28, 12, tzinfo=UTC))
    with clock.installed(virtual):
        exchange = _exchange()
        exchange.set_prices({"BTCUSDT": "98000"})
        _submit(exchange, side="Buy", qty="0.02")
        exchange.advance(DELAY_MS)
        virtual.advance_to(datetime(2026, 11, 28, 14, tzinfo=UTC))
        exchange.set_prices({"BTCUSDT": "96030"})

        ticker = exchange.tickers(
            MarketParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
        )["list"][0]

    assert ticker["prevPrice24h"] == "97000"  # younger than a day: the start price
    assert ticker["prevPrice1h"] == "98000"
    assert (ticker["highPrice24h"], ticker["lowPrice24h"]) == ("98000", "96030")
    assert ticker["price24hPcnt"] == "-0.01"
    assert ticker["volume24h"] == "0.02"
    assert ticker["turnover24h"] == "1960"  # 0.02 filled at 98000


@pytest.mark.parametrize(
    ("interval", "start", "opens"),
    [
        # ccxt pages forward through history with `start` alone: the first candles from it
        ("60", 1_699_999_999_999, [1_699_999_200_000 + hour * 3_600_000 for hour in range(3)]),
        ("W", 1_700_000_000_000, [1_699_833_600_000 + week * 604_800_000 for week in range(3)]),
        ("M", 1_700_000_000_000, [1_698_796_800_000, 1_701_388_800_000, 1_704_067_200_000]),
    ],
)
def test_klines_from_a_start_alone_are_the_first_ones_from_it_newest_first(
    interval: str, start: int, opens: list[int]
) -> None:
    exchange = _exchange()
    query = KlineParams.model_validate(
        {"symbol": "BTCUSDT", "interval": interval, "start": start, "limit": 3}
    )

    rows = exchange.kline(query)["list"]

    assert [int(row[0]) for row in rows] == opens[::-1]


@pytest.mark.parametrize("interval", ["60", "W", "M"])
def test_klines_from_a_start_in_the_future_are_none(interval: str) -> None:
    query = KlineParams.model_validate(
        {"symbol": "BTCUSDT", "interval": interval, "start": 10**17, "limit": 3}
    )

    assert _exchange().kline(query)["list"] == []  # never a 500 (year 3170843)


@pytest.mark.parametrize("interval", ["1", "D", "M"])
def test_klines_begin_with_the_candle_of_the_listing(interval: str) -> None:
    """As on Bybit, a market has no history before its listing (instruments-info
    `launchTime`): paging forward from 0 starts there, and paging back stops there."""
    exchange = _exchange()
    listed = int(
        exchange.instruments_info(
            MarketParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
        )["list"][0]["launchTime"]
    )
    first = candle_open(interval, listed)
    forward = KlineParams.model_validate(
        {"symbol": "BTCUSDT", "interval": interval, "start": 0, "limit": 3}
    )
    backward = KlineParams.model_validate(
        {"symbol": "BTCUSDT", "interval": interval, "end": listed + 1, "limit": 3}
    )

    assert int(exchange.kline(forward)["list"][-1][0]) == first
    assert [int(row[0]) for row in exchange.kline(backward)["list"]] == [first]


def test_klines_from_a_start_stop_at_the_current_candle() -> None:
    exchange = _exchange()
    now = exchange.now_ms()
    query = KlineParams.model_validate(
        {"symbol": "BTCUSDT", "interval": "60", "start": now - 2 * 3_600_000, "limit": 200}
    )

    rows = exchange.kline(query)["list"]

    assert len(rows) == 3  # two hours back, and the hour that is open now
    assert int(rows[0][0]) <= now < int(rows[0][0]) + 3_600_000


@pytest.mark.parametrize("price", ["97000", "0.1"])  # the lowest price: a single tick
def test_the_book_is_never_locked_even_without_a_spread(price: str) -> None:
    exchange = _exchange()
    exchange.set_prices({"BTCUSDT": Decimal(price)})

    book = exchange.orderbook(
        OrderbookParams.model_validate({"category": "linear", "symbol": "BTCUSDT", "limit": 1})
    )

    best_bid, best_ask = Decimal(book["b"][0][0]), Decimal(book["a"][0][0])
    assert best_ask - best_bid == Decimal("0.1")  # one tick
    assert best_bid >= Decimal("0.1")


def test_the_orderbook_surrounds_the_quote_one_tick_apart() -> None:
    exchange = _exchange(spread_bps=Decimal(1))

    book = exchange.orderbook(
        OrderbookParams.model_validate({"category": "linear", "symbol": "BTCUSDT", "limit": 3})
    )

    assert [level[0] for level in book["b"]] == ["96995.1", "96995", "96994.9"]
    assert [level[0] for level in book["a"]] == ["97004.9", "97005", "97005.1"]


def test_a_positions_margins_are_on_its_value_at_the_mark_price() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.1")  # 9700 USDT at 97000, 10x
    exchange.advance(DELAY_MS)
    balance = Decimal(wallet_row(exchange, KEY)["totalWalletBalance"])

    exchange.set_prices({"BTCUSDT": "98000"})

    position, wallet = position_row(exchange, KEY), wallet_row(exchange, KEY)
    # Bybit: positionIMByMp is "Initial margin calculated by mark price, the same value as
    # positionIM"; the position's value stays at its entry price.
    assert (position["positionIM"], position["positionIMByMp"]) == ("980", "980")
    assert (position["positionMM"], position["positionMMByMp"]) == ("49", "49")
    assert position["positionValue"] == "9700"
    assert (wallet["totalInitialMargin"], wallet["totalMaintenanceMargin"]) == ("980", "49")
    assert Decimal(wallet["totalAvailableBalance"]) == balance + 100 - 980  # equity less IM


def test_a_short_is_liquidated_on_the_tick_its_liquidation_price_shows() -> None:
    exchange = _exchange()
    _submit(exchange, side="Sell", qty="1")  # 97000 USDT of BTC on 10000 USDT
    exchange.advance(DELAY_MS)
    shown = position_row(exchange, KEY)
    entry, liquidation = Decimal(shown["avgPrice"]), Decimal(shown["liqPrice"])
    balance = Decimal(wallet_row(exchange, KEY)["totalWalletBalance"])

    exchange.set_prices({"BTCUSDT": liquidation - Decimal("0.1")})
    before = position_row(exchange, KEY)["size"]
    exchange.set_prices({"BTCUSDT": liquidation})

    assert before == "1"
    assert position_row(exchange, KEY)["size"] == "0"
    # Where equity meets the margin on the value at that price, a tick's rounding aside.
    equity = balance + (entry - liquidation)
    assert equity <= liquidation * Decimal("0.005") < equity + Decimal("0.1")


def test_amounts_worked_out_from_an_average_price_show_at_most_8_places() -> None:
    exchange = _exchange()
    _submit(exchange, side="Buy", qty="0.001")
    exchange.advance(DELAY_MS)
    exchange.set_prices({"BTCUSDT": "97000.1"})
    _submit(exchange, side="Buy", qty="0.002")  # the average is 97000.0666...
    exchange.advance(DELAY_MS)
    exchange.set_prices({"BTCUSDT": "97000.2"})
    _submit(exchange, side="Sell", qty="0.001")  # closes a third at the long average
    exchange.advance(DELAY_MS)

    position = exchange.positions(
        KEY, PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    )["list"][0]
    wallet = exchange.wallet_balance(
        KEY, WalletBalanceParams.model_validate({"accountType": "UNIFIED"})
    )["list"][0]

    closed = exchange.closed_pnl(
        KEY, ClosedPnlParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    )["list"][0]
    logged = exchange.transaction_log(
        KEY, TransactionLogParams.model_validate({"category": "linear"})
    )["list"][0]

    amounts = [
        *(position[name] for name in ("avgPrice", "positionValue", "positionIM", "unrealisedPnl")),
        *(wallet[name] for name in ("totalEquity", "totalPerpUPL", "totalAvailableBalance")),
        *(closed[name] for name in ("closedPnl", "cumEntryValue", "avgEntryPrice")),
        *(logged[name] for name in ("cashFlow", "change", "cashBalance")),
    ]
    assert Decimal(position["unrealisedPnl"]) != 0
    for amount in amounts:
        assert -Decimal(amount).as_tuple().exponent <= 8, amount
