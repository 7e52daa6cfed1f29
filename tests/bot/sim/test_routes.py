"""The simulator's newer routes, limits and faults, through real pybit over loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import pytest
import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP
from pydantic import SecretStr
from typer.testing import CliRunner

from bot import clock
from bot.cli import app
from bot.clock import VirtualClock
from bot.sim import SimAccountSpec, SimServer, SimulatorConfig, parse_faults
from tests.bot.sim.kit import (
    admin,
    assert_first_request_limit_headers,
    eventually,
    settle,
    simulators,
)

KEY = "routes-key"
SECRET = "routes-secret"


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimServer]]:
    spec = SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET))
    with simulators(lambda **config: SimulatorConfig(seed=5, accounts=[spec], **config)) as start:
        yield start


def _market(session: HTTP, side: str = "Buy", qty: str = "0.01", **extra: Any) -> Any:
    return session.place_order(
        category="linear", symbol="BTCUSDT", side=side, orderType="Market", qty=qty, **extra
    )


def _limit(session: HTTP, price: str, side: str = "Buy", **extra: Any) -> Any:
    return session.place_order(
        category="linear",
        symbol="BTCUSDT",
        side=side,
        orderType="Limit",
        qty="0.01",
        price=price,
        **extra,
    )


def _error_code(call: Callable[[], Any]) -> int:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    return int(caught.value.status_code)


# ------------------------------------------------------------------ trading records


def test_executions_list_each_fill_with_its_fee(server: SimServer, session: HTTP) -> None:
    _market(session, orderLinkId="exec-1")
    settle(server)

    fills = session.get_executions(category="linear", symbol="BTCUSDT")["result"]["list"]

    assert len(fills) == 1
    fill = fills[0]
    assert (fill["orderLinkId"], fill["execType"], fill["execPrice"], fill["execQty"]) == (
        "exec-1",
        "Trade",
        "97000",
        "0.01",
    )
    assert (fill["execFee"], fill["feeRate"], fill["isMaker"]) == ("0.5335", "0.00055", False)
    assert {"execId", "execTime", "execValue", "orderId", "seq", "closedSize"} <= set(fill)


def test_closed_pnl_reports_the_closing_order(server: SimServer, session: HTTP) -> None:
    _market(session, "Buy", "0.01")
    settle(server)
    admin(server, "POST", "/sim/prices", {"BTCUSDT": 98000})
    closing = _market(session, "Sell", "0.01", reduceOnly=True)["result"]["orderId"]
    settle(server)

    records = session.get_closed_pnl(category="linear")["result"]["list"]

    assert [(r["orderId"], r["closedSize"], r["avgExitPrice"]) for r in records] == [
        (closing, "0.01", "97999.9")  # sold at the bid, a tick under the last price
    ]
    assert Decimal(records[0]["closedPnl"]) == Decimal("9.999") - Decimal("0.5335") - Decimal(
        "0.53899945"
    )


def test_amend_changes_a_resting_order(server: SimServer, session: HTTP) -> None:
    placed = _limit(session, "95000", orderLinkId="amend-me")
    settle(server)

    amended = session.amend_order(
        category="linear", symbol="BTCUSDT", orderLinkId="amend-me", price="95500", qty="0.02"
    )

    assert amended["result"] == {
        "orderId": placed["result"]["orderId"],
        "orderLinkId": "amend-me",
    }
    order = session.get_open_orders(category="linear", orderLinkId="amend-me")["result"]["list"][0]
    assert (order["price"], order["qty"], order["orderStatus"]) == ("95500", "0.02", "New")


def test_cancel_all_answers_the_cancelled_orders(server: SimServer, session: HTTP) -> None:
    first = _limit(session, "95000")["result"]["orderId"]
    second = _limit(session, "94000")["result"]["orderId"]

    answer = session.cancel_all_orders(category="linear", symbol="BTCUSDT")["result"]

    assert answer["success"] == "1"
    assert sorted(row["orderId"] for row in answer["list"]) == sorted([first, second])
    assert session.get_open_orders(category="linear", symbol="BTCUSDT")["result"]["list"] == []
    assert _error_code(lambda: session.cancel_all_orders(category="linear")) == 10001


def _ids(session: HTTP, history: bool = False, **extra: str) -> list[str]:
    query = session.get_order_history if history else session.get_open_orders
    return [
        row["orderId"]
        for row in query(category="linear", symbol="BTCUSDT", **extra)["result"]["list"]
    ]


def _stop_orders(session: HTTP, *, history: bool = False) -> list[dict[str, Any]]:
    """The BTCUSDT conditional and TP/SL orders, open (or in the order history)."""
    query = session.get_order_history if history else session.get_open_orders
    return list(
        query(category="linear", symbol="BTCUSDT", orderFilter="StopOrder")["result"]["list"]
    )


def _exits(session: HTTP, *, history: bool = False) -> dict[str, dict[str, Any]]:
    """The TP/SL orders by stopOrderType (the latest of each kind), open or in the history."""
    return {row["stopOrderType"]: row for row in reversed(_stop_orders(session, history=history))}


def test_a_positions_tp_and_sl_are_untriggered_orders_sized_to_it(
    server: SimServer, session: HTTP
) -> None:
    """Bybit: "Passing these parameters will create conditional orders by the system
    internally. The system will cancel these orders if the position is closed, and adjust
    the qty according to the size of the open position." """
    _market(session, "Buy", "0.01", stopLoss="95000", takeProfit="99000")
    settle(server)

    exits = _exits(session)
    assert {
        kind: (row["orderStatus"], row["triggerPrice"], row["qty"], row["side"])
        for kind, row in exits.items()
    } == {
        "StopLoss": ("Untriggered", "95000", "0.01", "Sell"),
        "TakeProfit": ("Untriggered", "99000", "0.01", "Sell"),
    }
    assert all(row["orderLinkId"] == "" and row["reduceOnly"] for row in exits.values())
    assert set(_ids(session)) == {row["orderId"] for row in exits.values()}  # every kind
    assert _ids(session, orderFilter="Order") == []

    _market(session, "Buy", "0.02")  # the position grows: so do its exits
    settle(server)
    assert {row["qty"] for row in _exits(session).values()} == {"0.03"}

    _market(session, "Sell", "0.03", reduceOnly=True)  # closed: the exits are deactivated
    settle(server)
    assert _exits(session) == {}
    ended = [
        row
        for row in session.get_order_history(category="linear", symbol="BTCUSDT")["result"]["list"]
        if row["stopOrderType"]
    ]
    # Bybit's cancelType: "TP/SL order cancelled when the position is cleared".
    assert sorted(
        (row["stopOrderType"], row["orderStatus"], row["cancelType"]) for row in ended
    ) == [
        ("StopLoss", "Deactivated", "CancelByTpSlTsClear"),
        ("TakeProfit", "Deactivated", "CancelByTpSlTsClear"),
    ]


def test_the_prices_a_tp_and_sl_watch_are_kept_on_the_order_and_on_their_exit_orders(
    server: SimServer, session: HTTP
) -> None:
    placed = _market(
        session,
        "Buy",
        "0.01",
        takeProfit="99000",
        stopLoss="95000",
        tpTriggerBy="MarkPrice",
        slTriggerBy="IndexPrice",
    )["result"]["orderId"]
    settle(server)
    (order,) = session.get_order_history(category="linear", orderId=placed)["result"]["list"]
    watched = {kind: row["triggerBy"] for kind, row in _exits(session).items()}
    session.set_trading_stop(
        category="linear", symbol="BTCUSDT", tpslMode="Full", positionIdx=0, slTriggerBy="LastPrice"
    )
    moved = {kind: row["triggerBy"] for kind, row in _exits(session).items()}
    with pytest.raises(InvalidRequestError) as refused:
        _market(session, "Buy", "0.01", takeProfit="99000", tpTriggerBy="Foo")

    assert (order["tpTriggerBy"], order["slTriggerBy"]) == ("MarkPrice", "IndexPrice")
    assert watched == {"TakeProfit": "MarkPrice", "StopLoss": "IndexPrice"}
    assert moved == {"TakeProfit": "MarkPrice", "StopLoss": "LastPrice"}
    assert refused.value.status_code == 10001 and "tpTriggerBy" in refused.value.message


def test_cancel_all_of_stop_orders_of_type_stop_leaves_the_positions_tp_and_sl(
    server: SimServer, session: HTTP
) -> None:
    """Bybit's cancel-all `stopOrderType` `Stop` (with orderFilter StopOrder): "you can cancel
    conditional orders except TP/SL order and Trailing stop orders with this param"."""
    _market(session, "Buy", "0.01", stopLoss="95000", takeProfit="99000")
    settle(server)
    breakout = _market(session, "Buy", "0.01", triggerPrice="98000", triggerDirection=1)
    breakout_id = breakout["result"]["orderId"]

    answer = session.cancel_all_orders(
        category="linear", symbol="BTCUSDT", orderFilter="StopOrder", stopOrderType="Stop"
    )

    assert [row["orderId"] for row in answer["result"]["list"]] == [breakout_id]
    assert set(_exits(session)) == {"StopLoss", "TakeProfit"}
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    assert (position["stopLoss"], position["takeProfit"]) == ("95000", "99000")


def test_cancel_all_takes_the_positions_tp_and_sl_unless_filtered(
    server: SimServer, session: HTTP
) -> None:
    """Bybit's cancel-all: "If not passed, all kinds of orders will be cancelled, like active
    order, conditional order, TP/SL order"; a stop loss cancelled so is gone from the position."""
    _market(session, "Buy", "0.01", stopLoss="95000", takeProfit="99000")
    settle(server)
    resting = _limit(session, "90000")["result"]["orderId"]

    plain = session.cancel_all_orders(category="linear", symbol="BTCUSDT", orderFilter="OpenOrder")
    assert [row["orderId"] for row in plain["result"]["list"]] == [resting]
    assert set(_exits(session)) == {"StopLoss", "TakeProfit"}
    spot_only = session.cancel_all_orders(
        category="linear", symbol="BTCUSDT", orderFilter="tpslOrder"
    )
    assert spot_only["result"]["list"] == []

    everything = session.cancel_all_orders(category="linear", symbol="BTCUSDT")

    assert len(everything["result"]["list"]) == 2
    assert _exits(session) == {}
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    assert (position["size"], position["stopLoss"], position["takeProfit"]) == ("0.01", "0", "0")
    admin(server, "POST", "/sim/prices", {"BTCUSDT": 94000})  # no stop left to trigger
    settle(server)
    assert (
        session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]["size"]
        == "0.01"
    )
    assert _error_code(lambda: _ids(session, orderFilter="Stop")) == 10001


def test_a_tp_or_sl_order_is_cancelled_or_moved_by_its_order_id(
    server: SimServer, session: HTTP
) -> None:
    _market(session, "Buy", "0.01", stopLoss="95000", takeProfit="99000")
    settle(server)
    exits = _exits(session)
    stop, profit = exits["StopLoss"]["orderId"], exits["TakeProfit"]["orderId"]

    moved = session.amend_order(
        category="linear", symbol="BTCUSDT", orderId=stop, triggerPrice="96000"
    )
    assert moved["result"]["orderId"] == stop
    assert _exits(session)["StopLoss"]["triggerPrice"] == "96000"
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    assert position["stopLoss"] == "96000"
    # A stop loss above the price would trigger at once: refused as trading-stop refuses it.
    assert (
        _error_code(
            lambda: session.amend_order(
                category="linear", symbol="BTCUSDT", orderId=stop, triggerPrice="98000"
            )
        )
        == 10001
    )
    assert (
        _error_code(
            lambda: session.amend_order(category="linear", symbol="BTCUSDT", orderId=stop, qty="1")
        )
        == 10001
    )

    session.cancel_order(category="linear", symbol="BTCUSDT", orderId=profit)

    assert set(_exits(session)) == {"StopLoss"}
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    assert (position["stopLoss"], position["takeProfit"]) == ("96000", "0")
    cancelled = session.get_open_orders(category="linear", symbol="BTCUSDT", orderId=profit)
    # Bybit (UTA): a conditional order cancelled before it triggered is Deactivated.
    assert [(row["orderStatus"], row["cancelType"]) for row in cancelled["result"]["list"]] == [
        ("Deactivated", "CancelByUser")
    ]
    assert (
        _error_code(
            lambda: session.cancel_order(category="linear", symbol="BTCUSDT", orderId=profit)
        )
        == 110001
    )


def test_a_triggered_stop_keeps_its_order_id_and_deactivates_the_take_profit(
    server: SimServer, session: HTTP
) -> None:
    _market(session, "Buy", "0.01", stopLoss="95000", takeProfit="99000")
    settle(server)
    stop = _exits(session)["StopLoss"]["orderId"]

    admin(server, "POST", "/sim/prices", {"BTCUSDT": 94000})
    settle(server)

    by_kind = _exits(session, history=True)
    assert (by_kind["StopLoss"]["orderId"], by_kind["StopLoss"]["orderStatus"]) == (stop, "Filled")
    assert by_kind["StopLoss"]["createType"] == "CreateByStopLoss"
    assert by_kind["TakeProfit"]["orderStatus"] == "Deactivated"


def test_partial_tpsl_on_create_is_a_pair_of_orders_of_the_filled_qty(
    server: SimServer, session: HTTP
) -> None:
    """Bybit: Partial "will create tp/sl orders with the qty you actually fill"; "Limit TP/SL
    order are supported"; the first of the pair to fire cancels the other."""
    _market(
        session,
        "Buy",
        "0.02",
        takeProfit="99000",
        stopLoss="95000",
        tpslMode="Partial",
        tpOrderType="Limit",
        tpLimitPrice="99500",
    )
    settle(server)
    (parent,) = session.get_order_history(category="linear", symbol="BTCUSDT", orderFilter="Order")[
        "result"
    ]["list"]
    pair = _exits(session)
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]

    admin(server, "POST", "/sim/prices", {"BTCUSDT": 94000})
    settle(server)

    assert (parent["tpslMode"], parent["tpLimitPrice"], parent["slLimitPrice"]) == (
        "Partial",
        "99500",
        "",
    )
    assert sorted(pair) == ["PartialStopLoss", "PartialTakeProfit"]
    take, stop = pair["PartialTakeProfit"], pair["PartialStopLoss"]
    assert (take["orderType"], take["price"], take["triggerPrice"]) == ("Limit", "99500", "99000")
    assert parent["orderStatus"] == "Filled"
    assert (stop["orderType"], stop["triggerPrice"], stop["side"]) == ("Market", "95000", "Sell")
    assert (take["triggerDirection"], stop["triggerDirection"]) == (1, 2)
    assert {(o["qty"], o["orderStatus"], o["reduceOnly"]) for o in pair.values()} == {
        ("0.02", "Untriggered", True)
    }
    assert take["createType"] == "CreateByPartialTakeProfit"
    assert (position["takeProfit"], position["stopLoss"]) == ("0", "0")  # not the position's
    ended = _exits(session, history=True)
    assert (ended["PartialStopLoss"]["orderStatus"], ended["PartialStopLoss"]["orderId"]) == (
        "Filled",
        stop["orderId"],
    )
    assert (
        ended["PartialTakeProfit"]["orderStatus"],
        ended["PartialTakeProfit"]["cancelType"],
    ) == (
        "Deactivated",
        "CancelByOCOTpCanceledBySlTriggered",
    )
    assert _position_size(session) == "0"


def _position_size(session: HTTP) -> str:
    rows = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"]
    return str(rows[0]["size"])


def _partial_stop(session: HTTP, **fields: str) -> Any:
    return session.set_trading_stop(
        **{"category": "linear", "symbol": "BTCUSDT", "tpslMode": "Partial", "positionIdx": 0}
        | fields
    )


def test_a_resting_orders_partial_limit_prices_amend_and_are_ignored_on_others(
    server: SimServer, session: HTTP
) -> None:
    partial = _limit(
        session,
        "95000",
        takeProfit="99000",
        tpslMode="Partial",
        tpOrderType="Limit",
        tpLimitPrice="99500",
    )["result"]["orderId"]
    plain = _limit(session, "94000", takeProfit="99000")["result"]["orderId"]

    session.amend_order(category="linear", symbol="BTCUSDT", orderId=partial, tpLimitPrice="99400")
    ignored = _error_code(
        lambda: session.amend_order(
            category="linear", symbol="BTCUSDT", orderId=plain, tpLimitPrice="99400"
        )
    )

    rows = {o["orderId"]: o for o in _open_stops_and_orders(session)}
    assert rows[partial]["tpLimitPrice"] == "99400"
    assert ignored == 10001  # nothing else changed: "The order remains unchanged"
    assert rows[plain]["tpLimitPrice"] == ""


def _open_stops_and_orders(session: HTTP) -> list[dict[str, Any]]:
    rows = session.get_open_orders(category="linear", symbol="BTCUSDT")
    return list(rows["result"]["list"])


def test_trading_stop_partial_adds_orders_of_its_size_which_end_with_the_position(
    server: SimServer, session: HTTP
) -> None:
    _market(session, "Buy", "0.03")
    settle(server)
    _partial_stop(session, takeProfit="99000", stopLoss="95000", tpSize="0.01", slSize="0.01")
    _partial_stop(session, stopLoss="96000", slSize="0.01", slOrderType="Market")
    added = sorted((o["stopOrderType"], o["triggerPrice"], o["qty"]) for o in _stop_orders(session))

    admin(server, "POST", "/sim/prices", {"BTCUSDT": 95900})  # the 96000 stop fires alone
    settle(server)
    after_stop = (_position_size(session), len(_stop_orders(session)))
    _market(session, "Sell", "0.02", reduceOnly=True)
    settle(server)

    assert added == [
        ("PartialStopLoss", "95000", "0.01"),
        ("PartialStopLoss", "96000", "0.01"),
        ("PartialTakeProfit", "99000", "0.01"),
    ]
    assert after_stop == ("0.02", 2)
    assert _stop_orders(session) == []
    ended = {
        (o["triggerPrice"], o["orderStatus"], o["cancelType"])
        for o in _stop_orders(session, history=True)
    }
    assert ended == {
        ("96000", "Filled", "UNKNOWN"),
        ("95000", "Deactivated", "CancelByTpSlTsClear"),  # the position closed
        ("99000", "Deactivated", "CancelByTpSlTsClear"),
    }


def test_a_partial_half_amends_and_cancelling_it_cancels_both(
    server: SimServer, session: HTTP
) -> None:
    _market(session, "Buy", "0.01")
    settle(server)
    _partial_stop(session, takeProfit="99000", stopLoss="95000", tpSize="0.01", slSize="0.01")
    take, stop = _exits(session)["PartialTakeProfit"], _exits(session)["PartialStopLoss"]

    session.amend_order(
        category="linear", symbol="BTCUSDT", orderId=stop["orderId"], triggerPrice="96000"
    )
    moved = _exits(session)["PartialStopLoss"]["triggerPrice"]
    session.cancel_order(category="linear", symbol="BTCUSDT", orderId=take["orderId"])

    assert moved == "96000"

    assert _stop_orders(session) == []
    ended = _exits(session, history=True)
    assert {(o["orderStatus"], o["cancelType"]) for o in ended.values()} == {
        ("Deactivated", "CancelByUser")
    }
    assert _position_size(session) == "0.01"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tpOrderType": "Limit", "tpLimitPrice": "99500"}, "tpOrderType Limit needs tpslMode"),
        ({"tpslMode": "Full", "tpOrderType": "Limit", "tpLimitPrice": "99500"}, "only support"),
        ({"tpslMode": "Partial", "tpOrderType": "Limit"}, "tpLimitPrice is required"),
        ({"tpslMode": "Partial", "tpOrderType": "Limit", "tpLimitPrice": "99500.05"}, "tickSize"),
        ({"tpslMode": "Half"}, "is not one of Full, Partial"),
    ],
)
def test_tpsl_order_types_bybit_refuses_on_create_are_10001(
    session: HTTP, fields: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        _market(session, takeProfit="99000", **fields)

    assert caught.value.status_code == 10001
    assert named in caught.value.message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"stopLoss": "95000"}, "slSize is required"),
        ({"stopLoss": "95000", "slSize": "0"}, "slSize is required"),
        (
            {"takeProfit": "99000", "stopLoss": "95000", "tpSize": "0.01", "slSize": "0.02"},
            "must equal",
        ),
        ({"stopLoss": "0", "slSize": "0.01"}, "cancel its order instead"),
        ({"stopLoss": "98000", "slSize": "0.01"}, "must be below"),
        ({"stopLoss": "95000", "slSize": "0.0001"}, "Qty invalid"),
    ],
)
def test_trading_stop_partial_requests_bybit_refuses_are_10001(
    server: SimServer, session: HTTP, fields: dict[str, str], named: str
) -> None:
    _market(session, "Buy", "0.01")
    settle(server)

    with pytest.raises(InvalidRequestError) as caught:
        _partial_stop(session, **fields)

    assert caught.value.status_code == 10001
    assert named in caught.value.message
    assert _stop_orders(session) == []


# ------------------------------------------------------------------ account and market data


def test_order_history_instruments_and_risk_limits_carry_bybits_documented_fields(
    server: SimServer, session: HTTP
) -> None:
    _market(session)
    settle(server)

    (order,) = session.get_order_history(category="linear", symbol="BTCUSDT")["result"]["list"]
    (instrument,) = session.get_instruments_info(category="linear", symbol="BTCUSDT")["result"][
        "list"
    ]
    limits = session.get_risk_limit(category="linear", symbol="BTCUSDT")["result"]

    assert {
        key: order[key]
        for key in (
            "slippageToleranceType",
            "slippageTolerance",
            "extraFees",
            "rpiTakerAccess",
            "rpiMatchedQty",
        )
    } == {
        "slippageToleranceType": "UNKNOWN",
        "slippageTolerance": "0",
        "extraFees": "",
        "rpiTakerAccess": False,
        "rpiMatchedQty": "0",
    }
    assert isinstance(instrument["symbolId"], int)
    assert (instrument["symbolType"], instrument["forbidUplWithdrawal"]) == ("", False)
    assert limits["nextPageCursor"] == ""


def test_account_info_and_coin_info_have_bybits_shape(session: HTTP) -> None:
    info = session.get_account_info()["result"]
    coins = session.get_coin_info()["result"]["rows"]

    assert (info["unifiedMarginStatus"], info["marginMode"]) == (6, "REGULAR_MARGIN")
    assert [row["coin"] for row in coins] == ["BTC", "ETH", "SOL", "USDT"]
    assert coins[0]["chains"][0]["chainWithdraw"] == "0"


def test_orderbook_and_klines_are_served_for_linear(session: HTTP) -> None:
    book = session.get_orderbook(category="linear", symbol="ETHUSDT", limit=5)["result"]
    candles = session.get_kline(category="linear", symbol="ETHUSDT", interval="D", limit=3)

    assert (book["s"], len(book["b"]), len(book["a"])) == ("ETHUSDT", 5, 5)
    # The book is never locked: with no spread configured the ask is the last price, the
    # bid a tick under it.
    assert (book["b"][0][0], book["a"][0][0]) == ("3499.99", "3500")
    rows = candles["result"]["list"]
    assert len(rows) == 3
    assert rows[0][4] == "3500"
    assert int(rows[0][0]) % 86_400_000 == 0


@pytest.mark.parametrize("category", ["spot", "inverse", "option"])
def test_other_categories_list_nothing(session: HTTP, category: str) -> None:
    instruments = session.get_instruments_info(category=category)["result"]
    tickers = session.get_tickers(category=category)["result"]
    book = session.get_orderbook(category=category, symbol="BTCUSDT")["result"]

    assert (instruments["category"], instruments["list"]) == (category, [])
    assert tickers["list"] == []
    assert (book["b"], book["a"]) == ([], [])
    # A ticker asked by name is refused, never an empty list a client would read a row of
    assert _error_code(lambda: session.get_tickers(category=category, symbol="BTCUSDT")) == 10001
    # An account's private lists in that category are empty too, not refused (Bybit's answer
    # for an account that holds nothing there).
    for listing in (
        session.get_open_orders(category=category, symbol="BTCUSDT"),
        session.get_order_history(category=category),
        session.get_executions(category=category),
        session.get_positions(category=category, symbol="BTCUSDT"),
        session.get_closed_pnl(category=category),
    ):
        assert (listing["result"]["category"], listing["result"]["list"]) == (category, [])


def test_an_unknown_category_or_interval_is_10001(session: HTTP) -> None:
    assert _error_code(lambda: session.get_tickers(category="futures")) == 10001
    assert (
        _error_code(lambda: session.get_kline(category="linear", symbol="BTCUSDT", interval="2"))
        == 10001
    )


# ------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    ("call", "limit"),
    [
        (lambda s: s.get_api_key_information(), "10"),
        (lambda s: s.get_coin_info(), "5"),
        (lambda s: s.get_executions(category="linear"), "50"),
        (lambda s: s.get_closed_pnl(category="linear"), "50"),
        (lambda s: s.get_account_info(), "50"),
    ],
)
def test_each_private_path_reports_its_documented_limit(
    server: SimServer, connect: Callable[..., HTTP], call: Callable[[HTTP], Any], limit: str
) -> None:
    session = connect(server, return_response_headers=True)

    _, _, headers = call(session)

    assert_first_request_limit_headers(headers, limit)


def test_limits_are_configurable_per_path(
    start_sim: Callable[..., SimServer], connect: Callable[..., HTTP]
) -> None:
    server = start_sim(rate_limits_per_s={"/v5/account/info": 1})
    session = connect(server)
    session.get_account_info()

    with pytest.raises(InvalidRequestError) as caught:
        session.get_account_info()

    assert caught.value.status_code == 10006
    reset = int(caught.value.resp_headers["X-Bapi-Limit-Reset-Timestamp"])
    assert reset > int(time.time() * 1000) - 50  # when the window frees a slot
    assert session.get_positions(category="linear", symbol="BTCUSDT")["retCode"] == 0


def test_an_ip_over_its_limit_stays_banned_after_the_window(
    start_sim: Callable[..., SimServer], connect: Callable[..., HTTP]
) -> None:
    # A window long enough for three requests on a slow, shared host (20 ms was not).
    server = start_sim(ip_requests_per_5s=2, ip_window_ms=500, ip_ban_ms=60_000)
    session = connect(server)
    session.get_server_time()
    session.get_server_time()

    with pytest.raises(FailedRequestError) as first:
        session.get_server_time()
    time.sleep(0.6)  # the window is over; the ban is not
    with pytest.raises(FailedRequestError) as later:
        session.get_server_time()

    assert (first.value.status_code, later.value.status_code) == (403, 403)
    assert server.exchange.stats()["answers_by_http_status"]["403"] == 2


def test_an_ip_ban_ends(start_sim: Callable[..., SimServer], connect: Callable[..., HTTP]) -> None:
    # A window long enough for two requests on a slow, shared host (20 ms was not).
    server = start_sim(ip_requests_per_5s=1, ip_window_ms=500, ip_ban_ms=50)
    session = connect(server)
    session.get_server_time()
    with pytest.raises(FailedRequestError):
        session.get_server_time()

    answer = eventually(
        lambda: requests.get(server.url + "/v5/market/time", timeout=5),
        lambda response: response.status_code == 200,
        "the ban to end",
    )

    assert answer.json()["retCode"] == 0


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("fault", ["accept_then_10016", "accept_then_5xx"])
def test_an_order_accepted_then_answered_with_an_error_exists(
    server: SimServer, session: HTTP, fault: str
) -> None:
    admin(server, "POST", "/sim/faults", {fault: 1.0})

    with pytest.raises((InvalidRequestError, FailedRequestError)) as caught:
        _market(session, orderLinkId="accepted")
    settle(server)

    assert caught.value.status_code in {10016, 503}
    orders = admin(server, "GET", "/sim/orders").json()["orders"]
    assert [(o["orderLinkId"], o["orderStatus"]) for o in orders] == [("accepted", "Filled")]
    assert admin(server, "GET", "/sim/stats").json()["faults_injected"] == {fault: 1}


def test_a_lagging_order_is_invisible_to_queries_for_a_while(
    server: SimServer, session: HTTP
) -> None:
    admin(
        server,
        "POST",
        "/sim/faults",
        {"order_visibility_lag": 1.0, "order_visibility_lag_ms": 60_000},
    )

    _market(session, orderLinkId="ghost")
    settle(server)

    found = session.get_open_orders(category="linear", orderLinkId="ghost")["result"]["list"]
    history = session.get_order_history(category="linear", orderLinkId="ghost")["result"]["list"]
    assert (found, history) == ([], [])
    assert session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0][
        "size"
    ] == ("0.01")
    assert _error_code(lambda: _market(session, orderLinkId="ghost")) == 110072


def test_a_burst_of_clock_skew_makes_signed_requests_stale_then_passes(
    server: SimServer, session: HTTP
) -> None:
    admin(
        server,
        "POST",
        "/sim/faults",
        {"clock_skew_burst": 1.0, "clock_skew_burst_ms": 60_000, "clock_skew_burst_window_ms": 30},
    )

    assert _error_code(lambda: session.get_account_info()) == 10002
    admin(server, "POST", "/sim/faults", {})

    assert session.get_account_info()["retCode"] == 0


def test_bad_faults_json_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="order_visibility_lag"):
        parse_faults('{"order_visibility_lag": 2}')

    result = CliRunner().invoke(app, ["sim", "--faults", '{"explode": 1}'])

    assert result.exit_code == 2
    assert "--faults: explode" in result.output


# ------------------------------------------------------------------ admin: walks


def test_a_walk_posted_to_sim_prices_moves_the_price(server: SimServer) -> None:
    started = admin(
        server,
        "POST",
        "/sim/prices",
        {"SOLUSDT": {"walk": {"seed": 4, "step_bps": 10, "interval_ms": 5, "start": "150"}}},
    )

    moved = eventually(
        lambda: admin(server, "GET", "/sim/prices").json(),
        lambda view: view["prices"]["SOLUSDT"] != "150",
        "the walk to move SOLUSDT",
    )

    assert started.status_code == 200
    assert moved["walks"]["SOLUSDT"]["interval_ms"] == 5
    stopped = admin(server, "POST", "/sim/prices", {"SOLUSDT": {"walk": None}}).json()
    assert stopped["walks"] == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"SOLUSDT": {"walk": {"step_bps": "x"}}}, "step_bps"),
        ({"SOLUSDT": {"walk": 5}}, "walk"),
        ({"SOLUSDT": {"stroll": {}}}, "walk"),
    ],
)
def test_bad_walks_are_400(server: SimServer, body: Any, message: str) -> None:
    answer = admin(server, "POST", "/sim/prices", body)

    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_order_history_keeps_to_bybits_window(server: SimServer, session: HTTP) -> None:
    """Bybit's order history: the last 7 days by default, or startTime..endTime (at most 7 days
    apart); an order asked for by id is found whatever its time."""
    placed = _limit(session, "90000")["result"]["orderId"]
    now = server.exchange.now_ms()
    hour, day = 3_600_000, 86_400_000

    assert _ids(session, history=True) == [placed]
    assert _ids(session, history=True, startTime=str(now - hour)) == [placed]
    assert _ids(session, history=True, startTime=str(now + hour)) == []
    assert _ids(session, history=True, endTime=str(now - hour)) == []
    assert (
        _error_code(
            lambda: _ids(session, history=True, startTime=str(now - 8 * day), endTime=str(now))
        )
        == 10001
    )
    assert _ids(session, history=True, orderId=placed, startTime=str(now + hour)) == [placed]


def test_an_order_id_outranks_every_other_parameter_of_a_query(
    server: SimServer, session: HTTP
) -> None:
    """Bybit's trade history: "orderId and orderLinkId have a higher priority and as long as
    these two parameters are in the input parameters, other input parameters will be
    ignored"; its open orders rank "orderId > orderLinkId > symbol > baseCoin". A client
    looking up an old order's fills by its id, with a time window or a wrong symbol beside
    it, gets them."""
    started = datetime.now(UTC)
    with clock.installed(VirtualClock(started)) as calendar:  # the exchange's clock
        filled = _market(session, "Buy", "0.01", orderLinkId="old-fill")["result"]["orderId"]
        settle(server)
        calendar.advance_to(started + timedelta(days=8))  # past every default window
        later = str(server.exchange.now_ms() + 1000)

        def fills(**query: str) -> list[str]:
            rows = session.get_executions(category="linear", **query)["result"]["list"]
            return [row["orderId"] for row in rows]

        assert fills(execType="Trade") == []  # the last 7 days hold no trade (funding only)
        assert fills(orderId=filled) == [filled]
        assert fills(orderId=filled, symbol="ETHUSDT", startTime=later) == [filled]
        assert fills(orderLinkId="old-fill", execType="Funding") == [filled]
        found = session.get_open_orders(category="linear", orderId=filled, symbol="ETHUSDT")
        assert [row["orderId"] for row in found["result"]["list"]] == [filled]
        stops = session.get_open_orders(category="linear", orderId=filled, orderFilter="StopOrder")
        assert stops["result"]["list"] == []  # a filter still filters


def test_a_qty_below_the_minimum_says_so(session: HTTP) -> None:
    with pytest.raises(InvalidRequestError, match="below minOrderQty"):
        _market(session, qty="0.0001")


def test_a_price_off_the_tick_is_echoed_as_sent_however_many_its_decimals(session: HTTP) -> None:
    # It was echoed as "price 90000", on the tick, rounded to 28 digits (found by a ccxt probe)
    price = "90000." + "0" * 39 + "1"
    with pytest.raises(InvalidRequestError, match=f"price {price} is not a multiple of tickSize"):
        _limit(session, price)


def test_pages_stay_put_when_rows_arrive_between_them(server: SimServer, session: HTTP) -> None:
    """Bybit's cursors mark a position in the list, not an offset: a fill or an order that
    arrives between two pages neither repeats a row nor skips one."""
    for _ in range(3):
        _market(session, "Buy", "0.01")
    settle(server)

    def fills(**extra: str) -> dict[str, Any]:
        result: dict[str, Any] = session.get_executions(
            category="linear", symbol="BTCUSDT", limit=2, **extra
        )["result"]
        return result

    def orders(**extra: str) -> dict[str, Any]:
        result: dict[str, Any] = session.get_order_history(
            category="linear", symbol="BTCUSDT", limit=2, **extra
        )["result"]
        return result

    first_fills, first_orders = fills(), orders()
    _market(session, "Buy", "0.01")  # arrives between the pages, newest: on no later page
    settle(server)
    rest_fills = fills(cursor=first_fills["nextPageCursor"])
    rest_orders = orders(cursor=first_orders["nextPageCursor"])

    fill_ids = [row["execId"] for row in first_fills["list"] + rest_fills["list"]]
    order_ids = [row["orderId"] for row in first_orders["list"] + rest_orders["list"]]
    assert len(fill_ids) == len(set(fill_ids)) == 3
    assert len(order_ids) == len(set(order_ids)) == 3
    assert rest_fills["nextPageCursor"] == rest_orders["nextPageCursor"] == ""
    assert _error_code(lambda: fills(cursor="1:2:3:4")) == 10001


def test_a_position_that_flips_leaves_its_tp_and_sl_behind(
    server: SimServer, session: HTTP
) -> None:
    """Bybit cancels a position's TP/SL orders when it closes: a sell of twice the long opens a
    short without the long's stop (which, on the short's side, would fire at once)."""
    _market(session, "Buy", "0.01", stopLoss="90000", takeProfit="110000")
    settle(server)
    exits = _exits(session)
    assert {kind: row["triggerDirection"] for kind, row in exits.items()} == {
        "StopLoss": 2,  # a long's stop: the price falls to it
        "TakeProfit": 1,
    }

    _market(session, "Sell", "0.02")
    settle(server)
    admin(server, "POST", "/sim/prices", {"BTCUSDT": 96990})
    settle(server)

    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    assert (position["side"], position["size"]) == ("Sell", "0.01")
    assert (position["stopLoss"], position["takeProfit"]) == ("0", "0")
    assert _exits(session) == {}
    ended = {
        row["orderId"]: row["orderStatus"]
        for row in session.get_order_history(
            category="linear", symbol="BTCUSDT", orderFilter="StopOrder"
        )["result"]["list"]
    }
    assert set(ended.values()) == {"Deactivated"}
    assert set(ended) == {row["orderId"] for row in exits.values()}


def test_order_history_keeps_an_order_that_ended_unfilled_for_a_day(
    server: SimServer, session: HTTP
) -> None:
    """Bybit: Cancelled, Rejected and Deactivated orders are listed for the past 24 h only."""
    started = datetime.now(UTC)
    with clock.installed(VirtualClock(started)) as calendar:  # the exchange's clock
        cancelled = _limit(session, "90000")["result"]["orderId"]
        session.cancel_order(category="linear", symbol="BTCUSDT", orderId=cancelled)
        filled = _market(session, "Buy", "0.01")["result"]["orderId"]
        settle(server)
        assert set(_ids(session, history=True)) == {cancelled, filled}

        calendar.advance_to(started + timedelta(hours=24, minutes=1))

        assert _ids(
            session, history=True, startTime=str(server.exchange.now_ms() - 6 * 86_400_000)
        ) == [filled]
        assert _ids(session, history=True, orderId=cancelled) == []


def _wallet(session: HTTP) -> dict[str, Any]:
    account: dict[str, Any] = session.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    return account


def test_a_position_is_liquidated_at_its_bankruptcy_price_when_equity_meets_maintenance(
    server: SimServer, session: HTTP
) -> None:
    """UTA cross margin: liquidation once equity is down to the maintenance margin (0.5 % of
    the position's value at the mark price here), at the bankruptcy price (where equity is
    0); the position shows its liquidation price before (its bustPrice is "", as in every
    unified account)."""
    # A stop beyond the liquidation price, and a take profit that never comes.
    _market(session, "Buy", "1", stopLoss="80000", takeProfit="120000")
    settle(server)
    resting = _limit(session, "80000")["result"]["orderId"]
    exits = _exits(session)
    wallet = Decimal(_wallet(session)["totalWalletBalance"])
    entry, maintenance_rate = Decimal(97000), Decimal("0.005")
    shown = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    liquidation = Decimal(shown["liqPrice"])
    bankruptcy = (entry - wallet).quantize(Decimal("0.1"), ROUND_CEILING)

    admin(server, "POST", "/sim/prices", {"BTCUSDT": str(liquidation + Decimal("0.1"))})
    settle(server)
    still = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    admin(server, "POST", "/sim/prices", {"BTCUSDT": str(liquidation)})
    settle(server)

    # Before: the estimate, the first tick that liquidates; nothing happens a tick above it.
    # wallet + (P - entry) x 1 == P x 1 x rate: the margin on the value at that price.
    expected = (entry - wallet) / (1 - maintenance_rate)
    assert liquidation == expected.quantize(Decimal("0.1"), ROUND_FLOOR)
    assert shown["bustPrice"] == ""
    assert still["size"] == "1"
    # After: flat, the fill a fee-less BustTrade at the bankruptcy price, orders cancelled.
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    assert (position["size"], position["liqPrice"], position["bustPrice"]) == ("0", "", "")
    (fill,) = session.get_executions(category="linear", symbol="BTCUSDT", limit=1)["result"]["list"]
    assert (fill["execType"], fill["execPrice"], fill["execFee"], fill["side"]) == (
        "BustTrade",
        str(bankruptcy),
        "0",
        "Sell",
    )
    (taken,) = session.get_order_history(
        category="linear", symbol="BTCUSDT", orderId=fill["orderId"]
    )["result"]["list"]
    assert (taken["createType"], taken["orderStatus"], taken["orderLinkId"]) == (
        "CreateByLiq",
        "Filled",
        "",
    )
    waiting = (
        (resting, "Cancelled"),
        (exits["StopLoss"]["orderId"], "Deactivated"),
        (exits["TakeProfit"]["orderId"], "Deactivated"),
    )
    for order_id, status in waiting:
        history = session.get_order_history(category="linear", symbol="BTCUSDT", orderId=order_id)
        (cancelled,) = history["result"]["list"]
        assert (cancelled["orderStatus"], cancelled["cancelType"]) == (
            status,
            "CancelAllBeforeLiq",
        )
    # Fills and the transaction log filter by their type, as ccxt's liquidation queries ask.
    for exec_type, order_type in (("BustTrade", "Limit"), ("Trade", "Market")):
        rows = session.get_executions(category="linear", execType=exec_type)["result"]["list"]
        assert [(row["execType"], row["orderType"]) for row in rows] == [(exec_type, order_type)]
    for log_type in ("LIQUIDATION", "TRADE"):
        log = session.get_transaction_log(accountType="UNIFIED", type=log_type)["result"]["list"]
        assert [entry["type"] for entry in log] == [log_type]
    # The engine's takeover is no trade of the market: the public trades do not show it.
    trades = session.get_public_trade_history(category="linear", symbol="BTCUSDT", limit=5)
    assert str(bankruptcy) not in {row["price"] for row in trades["result"]["list"]}
    left = Decimal(_wallet(session)["totalWalletBalance"])
    assert 0 <= left < Decimal("0.1")  # the rounding of the price, in the holder's favour


def test_a_liquidation_takes_the_healthy_position_at_its_price_and_the_loser_at_bankruptcy(
    server: SimServer, session: HTTP
) -> None:
    """Cross margin: a losing BTC short brings the account down; the SOL long that is fine
    is taken over at the market's price, the short bears the whole shortfall."""
    session.place_order(
        category="linear", symbol="SOLUSDT", side="Buy", orderType="Market", qty="1"
    )
    _market(session, "Sell", "1")
    settle(server)
    sol = Decimal(
        session.get_tickers(category="linear", symbol="SOLUSDT")["result"]["list"][0]["lastPrice"]
    )
    btc = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]

    admin(server, "POST", "/sim/prices", {"BTCUSDT": btc["liqPrice"]})
    settle(server)

    fills = session.get_executions(category="linear", limit=4)["result"]["list"]
    taken = {row["symbol"]: row for row in fills if row["execType"] == "BustTrade"}
    assert Decimal(taken["SOLUSDT"]["execPrice"]) == sol
    assert Decimal(taken["BTCUSDT"]["execPrice"]) > Decimal(btc["liqPrice"])  # a short's loss
    left = Decimal(_wallet(session)["totalWalletBalance"])
    assert 0 <= left < Decimal("0.1")
