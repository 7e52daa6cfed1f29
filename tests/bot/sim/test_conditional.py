"""Conditional orders (a `triggerPrice` at creation), as Bybit's V5 keeps them: Untriggered and
holding no margin until the price reaches the trigger, then Triggered -> New under the same
orderId, trading as an order of their type."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from bot.sim import RetCode, SimAccountSpec, SimError, SimExchange, SimulatorConfig
from bot.sim.params import (
    AmendOrderParams,
    CancelAllParams,
    CancelOrderParams,
    OrderQueryParams,
    PositionQueryParams,
)
from tests.bot.sim.kit import order_row, place

KEY = "conditional-key"
DELAY_MS = 5


def _exchange(balance: str = "10000", **config: Any) -> SimExchange:
    spec = SimAccountSpec(api_key=KEY, api_secret=SecretStr("s"), balance_usdt=Decimal(balance))
    return SimExchange(
        SimulatorConfig(seed=3, accounts=[spec], market_fill_delay_ms=DELAY_MS, **config)
    )


def _place(exchange: SimExchange, **fields: Any) -> str:
    """`place`; a conditional order's triggerDirection, when the test leaves it out, as the
    client means it: towards the trigger from the price now."""
    if "triggerPrice" in fields and "triggerDirection" not in fields:
        price = exchange.prices()[fields.get("symbol", "BTCUSDT")]
        fields["triggerDirection"] = 1 if Decimal(fields["triggerPrice"]) > price else 2
    return place(exchange, KEY, **fields)


def _order(exchange: SimExchange, order_id: str) -> dict[str, Any]:
    return order_row(exchange, KEY, order_id)


def _open(exchange: SimExchange, **filters: Any) -> list[str]:
    query = OrderQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT", **filters})
    return [row["orderId"] for row in exchange.open_orders(KEY, query)["list"]]


def _size(exchange: SimExchange) -> str:
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    size: str = exchange.positions(KEY, query)["list"][0]["size"]
    return size


def _move(exchange: SimExchange, price: str) -> None:
    exchange.set_prices({"BTCUSDT": price})
    exchange.advance(DELAY_MS)


def test_a_conditional_order_waits_untriggered_then_fires_under_the_same_order_id() -> None:
    exchange = _exchange()
    order_id = _place(exchange, triggerPrice="98000", triggerDirection=1, orderLinkId="brk-1")

    waiting = _order(exchange, order_id)
    assert (waiting["orderStatus"], waiting["stopOrderType"], waiting["triggerPrice"]) == (
        "Untriggered",
        "Stop",
        "98000",
    )
    assert (waiting["triggerDirection"], waiting["triggerBy"]) == (1, "LastPrice")
    assert _open(exchange, orderFilter="StopOrder") == [order_id]
    assert _open(exchange, orderFilter="Order") == []
    _move(exchange, "97900")
    assert _order(exchange, order_id)["orderStatus"] == "Untriggered"
    assert _size(exchange) == "0"

    _move(exchange, "98000")

    fired = _order(exchange, order_id)
    assert (fired["orderStatus"], fired["orderLinkId"], fired["cumExecQty"]) == (
        "Filled",
        "brk-1",
        "0.01",
    )
    assert _size(exchange) == "0.01"


def test_a_trigger_already_passed_is_refused_with_bybits_codes() -> None:
    exchange = _exchange()

    with pytest.raises(SimError) as rising:
        _place(exchange, triggerPrice="96000", triggerDirection=1)
    with pytest.raises(SimError) as falling:
        _place(exchange, triggerPrice="98000", triggerDirection=2)

    assert rising.value.ret_code == RetCode.TRIGGER_NOT_ABOVE_PRICE
    assert "expect Rising" in rising.value.ret_msg
    assert falling.value.ret_code == RetCode.TRIGGER_NOT_BELOW_PRICE


def test_without_a_direction_the_trigger_fires_on_the_side_it_lies() -> None:
    exchange = _exchange()
    stop = _place(exchange, side="Sell", triggerPrice="96000")

    assert _order(exchange, stop)["triggerDirection"] == 2
    _move(exchange, "96500")
    assert _order(exchange, stop)["orderStatus"] == "Untriggered"
    _move(exchange, "95900")
    assert _order(exchange, stop)["orderStatus"] == "Filled"


def test_a_conditional_limit_order_rests_once_fired() -> None:
    exchange = _exchange()
    order_id = _place(exchange, orderType="Limit", price="97500", triggerPrice="98000")

    _move(exchange, "98100")  # fired, but 98100 is above its limit: it rests

    assert _order(exchange, order_id)["orderStatus"] == "New"
    assert _open(exchange) == [order_id]
    _move(exchange, "97500")
    assert _order(exchange, order_id)["orderStatus"] == "Filled"


def test_cancelled_before_it_fires_it_is_deactivated_and_never_fires() -> None:
    exchange = _exchange()
    one = _place(exchange, triggerPrice="98000")
    two = _place(exchange, triggerPrice="99000", orderLinkId="two")

    exchange.cancel_order(
        KEY,
        CancelOrderParams.model_validate(
            {"category": "linear", "symbol": "BTCUSDT", "orderId": one}
        ),
    )
    cancelled = exchange.cancel_all(
        KEY,
        CancelAllParams.model_validate(
            {"category": "linear", "symbol": "BTCUSDT", "orderFilter": "StopOrder"}
        ),
    )
    _move(exchange, "99500")

    assert [row["orderLinkId"] for row in cancelled["list"]] == ["two"]
    for order_id in (one, two):
        ended = _order(exchange, order_id)
        assert (ended["orderStatus"], ended["cancelType"]) == ("Deactivated", "CancelByUser")
    assert _size(exchange) == "0"


def test_an_amended_trigger_fires_at_its_new_level_and_must_stay_ahead_of_the_price() -> None:
    exchange = _exchange()
    order_id = _place(exchange, triggerPrice="98000", orderLinkId="brk")

    def amend(**fields: str) -> None:
        request = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "brk", **fields}
        exchange.amend_order(KEY, AmendOrderParams.model_validate(request))

    amend(triggerPrice="99000", qty="0.02")
    with pytest.raises(SimError) as behind:
        amend(triggerPrice="96000")
    _move(exchange, "98500")
    assert _order(exchange, order_id)["orderStatus"] == "Untriggered"
    _move(exchange, "99000")

    assert behind.value.ret_code == RetCode.TRIGGER_NOT_ABOVE_PRICE
    assert (_order(exchange, order_id)["orderStatus"], _size(exchange)) == ("Filled", "0.02")


def _amend(exchange: SimExchange, order_id: str, **fields: str) -> None:
    request = {"category": "linear", "symbol": "BTCUSDT", "orderId": order_id, **fields}
    exchange.amend_order(KEY, AmendOrderParams.model_validate(request))


def test_an_amended_trigger_by_is_the_price_the_order_then_watches() -> None:
    exchange = _exchange(spread_bps=Decimal(2))  # a buy takes the ask, 97009.7
    order_id = _place(exchange, triggerPrice="97005", triggerDirection=1)

    _amend(exchange, order_id, triggerBy="MarkPrice")
    _place(exchange, qty="0.01")  # the last price goes to 97009.7; the mark stays 97000
    exchange.advance(DELAY_MS)
    watching = _order(exchange, order_id)
    _move(exchange, "97005")

    assert (watching["orderStatus"], watching["triggerBy"]) == ("Untriggered", "MarkPrice")
    assert _order(exchange, order_id)["orderStatus"] == "Filled"


def test_a_trigger_by_under_which_the_trigger_is_passed_is_refused() -> None:
    exchange = _exchange(spread_bps=Decimal(2))
    order_id = _place(exchange, triggerPrice="97005", triggerDirection=1, triggerBy="MarkPrice")
    _place(exchange, qty="0.01")  # the last price: 97009.7, past the trigger
    exchange.advance(DELAY_MS)

    with pytest.raises(SimError) as passed:
        _amend(exchange, order_id, triggerBy="LastPrice")

    assert passed.value.ret_code == RetCode.TRIGGER_NOT_ABOVE_PRICE
    assert passed.value.ret_msg.endswith("current[97009.7]??LastPrice")
    assert _order(exchange, order_id)["triggerBy"] == "MarkPrice"


def test_trigger_by_amends_conditional_and_tpsl_orders_only() -> None:
    exchange = _exchange()
    _place(exchange, qty="0.01", stopLoss="96000")
    resting = _place(exchange, orderType="Limit", price="96500")
    exchange.advance(DELAY_MS)
    [stop] = [row for row in exchange.orders(KEY) if row["stopOrderType"] == "StopLoss"]

    with pytest.raises(SimError) as plain:
        _amend(exchange, resting, triggerBy="MarkPrice")
    _amend(exchange, stop["orderId"], triggerBy="MarkPrice")

    assert plain.value.ret_code == RetCode.PARAMS_ERROR
    assert "triggerBy amends conditional and TP/SL orders only" in plain.value.ret_msg
    assert _order(exchange, stop["orderId"])["triggerBy"] == "MarkPrice"
    assert _order(exchange, stop["orderId"])["triggerPrice"] == "96000"
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    assert exchange.positions(KEY, query)["list"][0]["stopLoss"] == "96000"


def test_it_holds_no_margin_until_it_fires_and_is_cancelled_if_it_cannot_open_then() -> None:
    exchange = _exchange(balance="200")
    # 0.1 BTC at 10x leverage wants about 980 USDT: more than the wallet, but not yet.
    order_id = _place(exchange, qty="0.1", triggerPrice="98000")

    _move(exchange, "98000")

    ended = _order(exchange, order_id)
    assert ended["orderStatus"] == "Cancelled"
    assert _size(exchange) == "0"


def test_a_symbol_holds_at_most_ten_waiting_conditional_orders() -> None:
    exchange = _exchange()
    for step in range(10):
        _place(exchange, triggerPrice=str(98000 + step))

    with pytest.raises(SimError) as eleventh:
        _place(exchange, triggerPrice="99000")

    assert eleventh.value.ret_code == RetCode.TOO_MANY_CONDITIONAL_ORDERS
    _place(exchange, symbol="ETHUSDT", qty="0.1", triggerPrice="3600")  # another symbol's own
