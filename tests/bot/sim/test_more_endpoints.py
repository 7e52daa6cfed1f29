"""The simulator's account, position-mode, batch and market-history routes, through real pybit
over loopback (and raw signed requests where pybit would not send the mistake)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from pybit.exceptions import InvalidRequestError
from pybit.unified_trading import HTTP
from pydantic import SecretStr

from bot.sim import (
    DEFAULT_RATE_LIMITS_PER_S,
    SimAccountSpec,
    SimExchange,
    SimServer,
    SimulatorConfig,
)
from bot.sim.params import (
    MarketParams,
    OpenInterestParams,
    PlaceOrderParams,
    RecentTradeParams,
)
from bot.sim.ratelimit import RollingWindowLimiter
from tests.bot.sim.kit import (
    admin,
    assert_first_request_limit_headers,
    settle,
    signed_post,
    simulators,
)

KEY = "more-key"
OTHER_KEY = "more-other"
HEDGE_KEY = "more-hedge"
READ_ONLY_KEY = "more-read-only"
SECRET = "more-secret"
LAUNCH_MS = 1_584_230_400_000
DAY_MS = 86_400_000
EIGHT_HOURS_MS = 8 * 3_600_000

StartSim = Callable[..., SimServer]


def _spec(key: str, **fields: Any) -> SimAccountSpec:
    return SimAccountSpec(api_key=key, api_secret=SecretStr(SECRET), **fields)


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators (four accounts) with config overrides; each is stopped after the test."""
    accounts = [
        _spec(KEY),
        _spec(OTHER_KEY),
        _spec(HEDGE_KEY, hedge_mode=True),
        _spec(READ_ONLY_KEY, read_only=True),
    ]
    with simulators(lambda **config: SimulatorConfig(seed=3, accounts=accounts, **config)) as start:
        yield start


def _error(call: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    return int(caught.value.status_code), str(caught.value.message)


def _market(session: HTTP, side: str, qty: str, symbol: str = "BTCUSDT") -> str:
    answer = session.place_order(
        category="linear", symbol=symbol, side=side, orderType="Market", qty=qty
    )
    order_id: str = answer["result"]["orderId"]
    return order_id


def _limit(session: HTTP, price: str, side: str = "Buy", **extra: Any) -> str:
    answer = session.place_order(
        category="linear",
        symbol="BTCUSDT",
        side=side,
        orderType="Limit",
        qty="0.01",
        price=price,
        **extra,
    )
    order_id: str = answer["result"]["orderId"]
    return order_id


def _signed_post(server: SimServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A POST signed as Bybit documents it, for bodies pybit would not build."""
    return signed_post(server, path, json.dumps(body).encode(), KEY, SECRET)


def _public(server: SimServer, path: str, **query: Any) -> dict[str, Any]:
    answer = requests.get(server.url + path, params=query, timeout=5)
    assert answer.status_code == 200
    return dict(answer.json())


# ------------------------------------------------------------------ fee rate


def test_fee_rate_reports_the_configured_rates_per_symbol(
    start_sim: StartSim, connect: Callable[..., HTTP]
) -> None:
    server = start_sim(taker_fee_rate=Decimal("0.0006"), maker_fee_rate=Decimal("0.0001"))
    session = connect(server)

    one = session.get_fee_rates(category="linear", symbol="ETHUSDT")
    every = session.get_fee_rates(category="linear")["result"]

    assert one["result"] == {
        "list": [{"symbol": "ETHUSDT", "takerFeeRate": "0.0006", "makerFeeRate": "0.0001"}]
    }
    assert (one["retExtInfo"], type(one["time"])) == ({}, int)
    assert [row["symbol"] for row in every["list"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert "category" not in every  # Bybit: "Derivatives does not have this field"


def test_fee_rate_without_category_is_linear_as_in_bybits_examples(session: HTTP) -> None:
    rows = session.get_fee_rates(symbol="BTCUSDT")["result"]["list"]

    assert rows == [{"symbol": "BTCUSDT", "takerFeeRate": "0.00055", "makerFeeRate": "0.0002"}]


def test_fee_rate_of_an_unknown_symbol_or_category_is_10001(session: HTTP) -> None:
    code, message = _error(lambda: session.get_fee_rates(category="linear", symbol="DOGEUSDT"))

    assert (code, "DOGEUSDT" in message) == (10001, True)
    assert _error(lambda: session.get_fee_rates(category="futures"))[0] == 10001
    assert session.get_fee_rates(category="spot")["result"] == {"category": "spot", "list": []}


# ------------------------------------------------------------------ position mode


def test_switching_a_one_way_symbol_to_one_way_is_110025_and_to_hedge_110029(
    session: HTTP,
) -> None:
    same = _error(lambda: session.switch_position_mode(category="linear", symbol="BTCUSDT", mode=0))
    hedge = _error(lambda: session.switch_position_mode(category="linear", coin="USDT", mode=3))

    assert same == (110025, "Position mode has not been modified.")
    assert hedge[0] == 110029
    assert hedge[1].startswith("Hedge mode is not supported for this symbol.")
    rows = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"]
    assert [row["positionIdx"] for row in rows] == [0]


def test_a_hedge_mode_account_switches_a_symbol_then_the_coin_to_one_way(
    server: SimServer, connect: Callable[..., HTTP]
) -> None:
    session = connect(server, HEDGE_KEY)

    switched = session.switch_position_mode(category="linear", symbol="BTCUSDT", mode=0)
    btc = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"]
    eth = session.get_positions(category="linear", symbol="ETHUSDT")["result"]["list"]
    _market(session, "Buy", "0.01")  # BTCUSDT now takes positionIdx 0
    session.switch_position_mode(category="linear", coin="USDT", mode=0)
    again = _error(lambda: session.switch_position_mode(category="linear", coin="USDT", mode=0))
    back = _error(lambda: session.switch_position_mode(category="linear", symbol="ETHUSDT", mode=3))

    assert (switched["retCode"], switched["result"]) == (0, {})
    assert [row["positionIdx"] for row in btc] == [0]
    assert [row["positionIdx"] for row in eth] == [1, 2]
    eth_after = session.get_positions(category="linear", symbol="ETHUSDT")["result"]["list"]
    assert [row["positionIdx"] for row in eth_after] == [0]
    assert again[0] == 110025
    assert back[0] == 110029


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"category": "linear", "mode": 0}, "symbol or coin is required"),
        ({"category": "linear", "coin": "BTC", "mode": 0}, "coin 'BTC'"),
        ({"category": "linear", "symbol": "BTCUSDT", "mode": 1}, "mode: must be 0"),
        ({"category": "linear", "symbol": "BTCUSDT"}, "mode is required"),
        ({"category": "inverse", "symbol": "BTCUSD", "mode": 0}, "category"),
        ({"category": "linear", "symbol": "NOPEUSDT", "mode": 0}, "NOPEUSDT"),
    ],
)
def test_switch_mode_parameters_are_checked_10001(
    server: SimServer, body: dict[str, Any], message: str
) -> None:
    answer = _signed_post(server, "/v5/position/switch-mode", body)

    assert answer["retCode"] == 10001
    assert message in answer["retMsg"]


def test_a_read_only_key_cannot_switch_modes_10005(
    server: SimServer, connect: Callable[..., HTTP]
) -> None:
    session = connect(server, READ_ONLY_KEY)

    assert (
        _error(lambda: session.switch_position_mode(category="linear", symbol="BTCUSDT", mode=0))[0]
        == 10005
    )
    assert _error(lambda: session.set_margin_mode(setMarginMode="REGULAR_MARGIN"))[0] == 10005


# ------------------------------------------------------------------ margin mode


def test_regular_margin_is_accepted_and_the_others_refused_10001(session: HTTP) -> None:
    regular = session.set_margin_mode(setMarginMode="REGULAR_MARGIN")
    isolated = _error(lambda: session.set_margin_mode(setMarginMode="ISOLATED_MARGIN"))
    portfolio = _error(lambda: session.set_margin_mode(setMarginMode="PORTFOLIO_MARGIN"))
    unknown = _error(lambda: session.set_margin_mode(setMarginMode="CROSS"))

    assert (regular["retCode"], regular["result"]) == (0, {"reasons": []})
    assert isolated[0] == portfolio[0] == unknown[0] == 10001
    assert "ISOLATED_MARGIN is not simulated" in isolated[1]
    assert "PORTFOLIO_MARGIN is not simulated" in portfolio[1]
    assert "'CROSS' is not one of" in unknown[1]
    assert session.get_account_info()["result"]["marginMode"] == "REGULAR_MARGIN"


# ------------------------------------------------------------------ recent trades


def test_recent_trades_are_every_accounts_fills_newest_first_with_the_takers_side(
    server: SimServer, connect: Callable[..., HTTP]
) -> None:
    first, other = connect(server), connect(server, OTHER_KEY)
    taker = _market(first, "Buy", "0.01")
    settle(server)
    resting = _limit(other, "96000", "Buy")
    settle(server)
    admin(server, "POST", "/sim/prices", {"BTCUSDT": 96000})  # the market sells into it
    settle(server)

    trades = first.get_public_trade_history(category="linear", symbol="BTCUSDT")["result"]
    newest = first.get_public_trade_history(category="linear", symbol="BTCUSDT", limit=1)
    fills = {
        row["orderId"]: row
        for session in (first, other)
        for row in session.get_executions(category="linear")["result"]["list"]
    }

    assert trades["category"] == "linear"
    assert [(t["price"], t["size"], t["side"]) for t in trades["list"]] == [
        ("96000", "0.01", "Sell"),  # the resting buy was the maker: the taker sold
        ("97000", "0.01", "Buy"),
    ]
    assert [t["execId"] for t in trades["list"]] == [
        fills[resting]["execId"],
        fills[taker]["execId"],
    ]
    assert int(trades["list"][0]["seq"]) > int(trades["list"][1]["seq"])
    row = trades["list"][0]
    assert (row["symbol"], row["isBlockTrade"], row["isRPITrade"]) == ("BTCUSDT", False, False)
    assert row["time"] == fills[resting]["execTime"]
    assert newest["result"]["list"] == trades["list"][:1]
    assert (
        first.get_public_trade_history(category="linear", symbol="ETHUSDT")["result"]["list"] == []
    )


def test_recent_trade_parameters_follow_bybits_rules_per_category(server: SimServer) -> None:
    def answer(**query: Any) -> tuple[int, str]:
        body = _public(server, "/v5/market/recent-trade", **query)
        return body["retCode"], body["retMsg"]

    assert answer(category="linear")[0] == 10001  # symbol required
    assert answer(category="linear", symbol="BTCUSDT", limit=1001)[0] == 10001
    assert answer(category="linear", symbol="BTCUSDT", limit=0)[0] == 10001
    assert answer(category="linear", symbol="NOPEUSDT")[0] == 10001
    assert answer(category="spot", symbol="BTCUSDT", limit=61) == (
        10001,
        "params error: limit 61 is outside [1, 60] for spot",
    )
    assert answer(category="spot", symbol="BTCUSDT", limit=60) == (0, "OK")
    assert answer(category="option") == (0, "OK")  # symbol optional for options


# ------------------------------------------------------------------ batches


def test_create_batch_places_each_item_and_fails_bad_ones_alone(
    server: SimServer, session: HTTP
) -> None:
    limit = {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01"}
    eth = {"symbol": "ETHUSDT", "side": "Sell", "qty": "0.1", "price": "4000"}

    answer = session.place_batch_order(
        category="linear",
        request=[
            {**limit, "price": "90000", "orderLinkId": "batch-a"},
            {**limit, "price": "90000", "qty": "0.0001"},  # below minOrderQty
            {**limit, "price": "90000", "orderLinkId": "batch-a"},  # duplicate
            {**limit, **eth, "orderLinkId": "batch-b"},
            {**limit, "orderType": "Market", "qty": 0.01},  # a number, not a string
        ],
    )

    rows, codes = answer["result"]["list"], answer["retExtInfo"]["list"]
    assert answer["retCode"] == 0
    assert [c["code"] for c in codes] == [0, 10001, 110072, 0, 10001]
    assert codes[0]["msg"] == "OK"
    assert "qty" in codes[1]["msg"].lower() and "qty" in codes[4]["msg"]
    assert [(r["category"], r["symbol"], r["orderLinkId"]) for r in rows] == [
        ("linear", "BTCUSDT", "batch-a"),
        ("linear", "BTCUSDT", ""),
        ("linear", "BTCUSDT", "batch-a"),
        ("linear", "ETHUSDT", "batch-b"),
        ("linear", "BTCUSDT", ""),
    ]
    assert [bool(r["orderId"]) for r in rows] == [True, False, False, True, False]
    assert [bool(r["createAt"]) for r in rows] == [True, False, False, True, False]
    held = {o["orderLinkId"]: o for o in admin(server, "GET", "/sim/orders").json()["orders"]}
    assert set(held) == {"batch-a", "batch-b"}
    assert held["batch-a"]["orderId"] == rows[0]["orderId"]
    assert held["batch-a"]["createdTime"] == rows[0]["createAt"]


def test_cancel_batch_cancels_each_item_and_reports_unknown_ones(
    server: SimServer, session: HTTP
) -> None:
    by_id = _limit(session, "90000")
    by_link = _limit(session, "90100", orderLinkId="cancel-me")

    answer = session.cancel_batch_order(
        category="linear",
        request=[
            {"symbol": "BTCUSDT", "orderId": by_id},
            {"symbol": "BTCUSDT", "orderLinkId": "cancel-me"},
            {"symbol": "BTCUSDT", "orderLinkId": "never-placed"},
            {"symbol": "BTCUSDT", "orderId": by_id},
            {"symbol": "BTCUSDT"},
        ],
    )

    rows, codes = answer["result"]["list"], answer["retExtInfo"]["list"]
    assert [c["code"] for c in codes] == [0, 0, 110001, 110001, 10001]
    assert [(r["orderId"], r["orderLinkId"]) for r in rows] == [
        (by_id, ""),
        (by_link, "cancel-me"),
        ("", "never-placed"),
        ("", ""),
        ("", ""),
    ]
    statuses = {o["orderId"]: o["orderStatus"] for o in server.exchange.orders(KEY)}
    assert statuses == {by_id: "Cancelled", by_link: "Cancelled"}


def test_amend_batch_amends_each_open_order_and_fails_the_others_alone(
    server: SimServer, session: HTTP
) -> None:
    by_id = _limit(session, "90000")
    by_link = _limit(session, "90100", orderLinkId="amend-me")
    waiting = session.place_order(
        category="linear",
        symbol="BTCUSDT",
        side="Buy",
        orderType="Market",
        qty="0.01",
        triggerPrice="200000",
        triggerDirection=1,
    )["result"]["orderId"]

    answer = session.amend_batch_order(
        category="linear",
        request=[
            {"symbol": "BTCUSDT", "orderId": by_id, "price": "89000"},
            {"symbol": "BTCUSDT", "orderLinkId": "amend-me", "qty": "0.02"},
            {"symbol": "BTCUSDT", "orderLinkId": "never-placed", "qty": "0.02"},
            {"symbol": "BTCUSDT", "orderId": waiting, "triggerPrice": "210000"},
            {"symbol": "BTCUSDT", "price": "89000"},
        ],
    )

    rows, codes = answer["result"]["list"], answer["retExtInfo"]["list"]
    assert answer["retCode"] == 0
    assert [c["code"] for c in codes] == [0, 0, 110001, 110001, 10001]
    assert [(r["category"], r["orderId"], r["orderLinkId"]) for r in rows] == [
        ("linear", by_id, ""),
        ("linear", by_link, "amend-me"),
        ("linear", "", "never-placed"),
        ("linear", "", ""),
        ("linear", "", ""),
    ]
    held = {o["orderId"]: o for o in server.exchange.orders(KEY)}
    assert (held[by_id]["price"], held[by_id]["qty"]) == ("89000", "0.01")
    assert (held[by_link]["price"], held[by_link]["qty"]) == ("90100", "0.02")
    assert held[waiting]["triggerPrice"] == "200000"  # a conditional order is not amended


def test_a_batch_counts_each_order_and_the_orders_past_the_limit_fail_10006(
    start_sim: StartSim, connect: Callable[..., HTTP]
) -> None:
    limits = {**DEFAULT_RATE_LIMITS_PER_S, "/v5/order/create-batch": 5}
    server = start_sim(rate_limits_per_s=limits)
    session = connect(server, return_response_headers=True)
    item = {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001"}

    answer, _, headers = session.place_batch_order(
        category="linear", request=[{**item, "price": str(90000 + i)} for i in range(8)]
    )
    refused = _error(
        lambda: session.place_batch_order(category="linear", request=[{**item, "price": "1"}])
    )

    assert [c["code"] for c in answer["retExtInfo"]["list"]] == [0] * 5 + [10006] * 3
    assert answer["retExtInfo"]["list"][5]["msg"] == "Too many visits!"
    assert (headers["X-Bapi-Limit"], headers["X-Bapi-Limit-Status"]) == ("5", "0")
    assert refused == (10006, "Too many visits!")
    assert len(server.exchange.orders(KEY)) == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"category": "linear", "request": []}, "request: List should have at least 1 item"),
        ({"category": "linear", "request": [{}] * 21}, "at most 20 items"),
        ({"category": "linear", "request": ["BTCUSDT"]}, "request.0"),
        ({"category": "linear"}, "request is required"),
        ({"category": "spot", "request": [{}]}, "category"),
    ],
)
@pytest.mark.parametrize(
    "path", ["/v5/order/create-batch", "/v5/order/cancel-batch", "/v5/order/amend-batch"]
)
def test_a_malformed_batch_is_10001_as_a_whole(
    server: SimServer, path: str, body: dict[str, Any], message: str
) -> None:
    answer = _signed_post(server, path, body)

    assert answer["retCode"] == 10001
    assert message in answer["retMsg"]
    assert answer["retExtInfo"] == {}


def test_a_dropped_batch_answer_still_placed_the_orders(server: SimServer, session: HTTP) -> None:
    admin(server, "POST", "/sim/faults", {"drop_response_after_accept": 1.0})
    item = {"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01"}

    with pytest.raises(requests.exceptions.RequestException):
        session.place_batch_order(
            category="linear",
            request=[{**item, "price": "90000", "orderLinkId": "drop-1"}],
        )

    assert [o["orderLinkId"] for o in server.exchange.orders(KEY)] == ["drop-1"]


# ------------------------------------------------------------------ market data


def test_system_status_lists_no_maintenance(server: SimServer, session: HTTP) -> None:
    answer = session.get_system_status()

    assert (answer["retCode"], answer["result"]) == (0, {"list": []})
    assert _public(server, "/v5/system/status", state="ongoing")["result"] == {"list": []}
    assert _public(server, "/v5/system/status", state="down")["retCode"] == 10001


def test_mark_price_kline_is_the_klines_first_five_columns(session: HTTP) -> None:
    query = {"category": "linear", "symbol": "BTCUSDT", "interval": "15", "limit": 4}

    marks = session.get_mark_price_kline(**query)["result"]
    candles = session.get_kline(**query)["result"]["list"]

    assert (marks["category"], marks["symbol"]) == ("linear", "BTCUSDT")
    assert marks["list"] == [candle[:5] for candle in candles]
    assert marks["list"][0][4] == "97000"  # the open candle closes at the current price


def test_mark_price_kline_parameters_are_checked(server: SimServer) -> None:
    path = "/v5/market/mark-price-kline"

    assert _public(server, path, symbol="BTCUSDT", interval="1")["result"]["category"] == "linear"
    assert _public(server, path, category="spot", symbol="BTCUSDT", interval="1")["retCode"] == (
        10001
    )
    assert (
        _public(server, path, category="linear", symbol="BTCUSDT", interval="2")["retCode"] == 10001
    )
    assert (
        _public(server, path, category="inverse", symbol="BTCUSD", interval="1")["result"]["list"]
        == []
    )


def test_index_price_kline_is_the_mark_price_kline(server: SimServer, session: HTTP) -> None:
    query = {"category": "linear", "symbol": "BTCUSDT", "interval": "60", "limit": 3}

    index = session.get_index_price_kline(**query)["result"]

    assert (index["category"], index["symbol"]) == ("linear", "BTCUSDT")
    assert index["list"] == session.get_mark_price_kline(**query)["result"]["list"]
    assert len(index["list"]) == 3
    path = "/v5/market/index-price-kline"
    # Bybit: category defaults to linear, limit is 1-1000 (it was once required and 1-200).
    default = _public(server, path, symbol="BTCUSDT", interval="1", limit=1000)["result"]
    assert (default["category"], len(default["list"])) == ("linear", 1000)
    assert (
        _public(server, path, category="linear", symbol="BTCUSDT", interval="1", limit=1001)[
            "retCode"
        ]
        == 10001
    )
    assert _public(server, path, category="spot", symbol="BTCUSDT", interval="1")["retCode"] == (
        10001
    )
    inverse = _public(server, path, category="inverse", symbol="BTCUSD", interval="1")
    assert inverse["result"]["list"] == []


def test_premium_index_price_kline_is_zero_in_bybits_shape(
    server: SimServer, session: HTTP
) -> None:
    answer = session.get_premium_index_price_kline(
        category="linear", symbol="BTCUSDT", interval="D", limit=2
    )["result"]

    assert (answer["category"], answer["symbol"]) == ("linear", "BTCUSDT")
    (newest, older) = answer["list"]
    assert int(newest[0]) - int(older[0]) == 86_400_000  # newest first, one a day
    assert newest[1:] == ["0.000000"] * 4
    path = "/v5/market/premium-index-price-kline"
    assert _public(server, path, symbol="BTCUSDT", interval="1")["result"]["category"] == "linear"
    assert _public(server, path, category="inverse", symbol="BTCUSD", interval="1")["retCode"] == (
        10001
    )
    assert _public(server, path, symbol="NOPEUSDT", interval="1")["retCode"] != 0


def test_risk_limit_lists_the_one_tier_positions_report(server: SimServer, session: HTTP) -> None:
    tiers = session.get_risk_limit(category="linear")["result"]
    position = session.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]

    assert tiers["category"] == "linear"
    assert [tier["symbol"] for tier in tiers["list"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    (btc,) = session.get_risk_limit(category="linear", symbol="BTCUSDT")["result"]["list"]
    assert (btc["id"], btc["riskLimitValue"]) == (position["riskId"], position["riskLimitValue"])
    assert (btc["maintenanceMargin"], btc["isLowestRisk"]) == ("0.005", 1)
    max_leverage = server.exchange.instruments_info(MarketParams(category="linear"))["list"][0][
        "leverageFilter"
    ]["maxLeverage"]
    assert Decimal(btc["maxLeverage"]) == Decimal(max_leverage)
    assert Decimal(btc["initialMargin"]) == 1 / Decimal(max_leverage)
    path = "/v5/market/risk-limit"
    assert _public(server, path)["retCode"] == 10001  # category is required
    assert _public(server, path, category="inverse")["result"]["list"] == []
    assert _public(server, path, category="linear", symbol="NOPEUSDT")["retCode"] == 10001


def test_price_limit_is_the_mark_moved_by_ratio_x_rounded_inwards(
    server: SimServer, session: HTTP
) -> None:
    (btc,) = session.get_instruments_info(category="linear", symbol="BTCUSDT")["result"]["list"]
    at_97000 = session.get_price_limit(category="linear", symbol="BTCUSDT")["result"]
    server.exchange.set_prices({"BTCUSDT": "97000.3"})
    rounded = session.get_price_limit(symbol="BTCUSDT")["result"]  # category: linear

    assert btc["riskParameters"] == {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"}
    assert (at_97000["symbol"], at_97000["buyLmt"], at_97000["sellLmt"]) == (
        "BTCUSDT",
        "97970",
        "96030",
    )
    assert at_97000["ts"].isdigit()
    # 97970.303 and 96030.297: the limits never let an order past the ratio
    assert (rounded["buyLmt"], rounded["sellLmt"]) == ("97970.3", "96030.3")


def test_price_limit_parameters_are_checked(server: SimServer) -> None:
    path = "/v5/market/price-limit"
    assert _public(server, path)["retCode"] == 10001  # symbol is required
    assert _public(server, path, symbol="NOPEUSDT")["retCode"] == 10001
    assert _public(server, path, category="spot", symbol="BTCUSDT")["retCode"] == 10001
    assert _public(server, path, category="option", symbol="BTCUSDT")["retCode"] == 10001


def test_a_market_order_is_an_ioc_limit_at_its_price_limit(
    start_sim: StartSim, connect: Callable[..., HTTP]
) -> None:
    server = start_sim(slippage_bps=300)  # 3 % past the book: beyond the 1 % limit
    session = connect(server)
    buy = _market(session, "Buy", "0.01")
    settle(server)
    sell = _market(session, "Sell", "0.01")
    settle(server)

    listed = session.get_order_history(category="linear", symbol="BTCUSDT")["result"]["list"]
    orders = {order["orderId"]: order for order in listed}
    assert (orders[buy]["price"], orders[buy]["timeInForce"]) == ("97970", "IOC")
    assert Decimal(orders[buy]["avgPrice"]) == Decimal("97970")
    assert orders[sell]["price"] == "96030"
    assert Decimal(orders[sell]["avgPrice"]) == Decimal("96030")


def test_a_limit_order_priced_past_the_limit_is_moved_in_to_it(
    session: HTTP, server: SimServer
) -> None:
    buy = _limit(session, "200000")
    sell = _limit(session, "1000", side="Sell")
    settle(server)

    orders = {
        order["orderId"]: order
        for order in session.get_order_history(category="linear", symbol="BTCUSDT")["result"][
            "list"
        ]
    }
    assert (orders[buy]["price"], orders[buy]["orderStatus"]) == ("97970", "Filled")
    assert Decimal(orders[buy]["avgPrice"]) == Decimal(97000)
    assert (orders[sell]["price"], orders[sell]["orderStatus"]) == ("96030", "Filled")


def test_a_market_order_within_its_limit_trades_at_the_book(
    session: HTTP, server: SimServer
) -> None:
    order_id = _market(session, "Buy", "0.01")
    settle(server)

    (order,) = session.get_order_history(category="linear", orderId=order_id)["result"]["list"]
    assert order["orderStatus"] == "Filled"
    assert (order["price"], Decimal(order["avgPrice"])) == ("97970", Decimal(97000))


def test_open_interest_is_what_the_accounts_hold_as_tickers_report_it(
    server: SimServer, connect: Callable[..., HTTP]
) -> None:
    first, other = connect(server), connect(server, OTHER_KEY)
    before = first.get_open_interest(category="linear", symbol="BTCUSDT", intervalTime="5min")
    _market(first, "Buy", "0.01")
    _market(other, "Sell", "0.02")
    settle(server)

    points = first.get_open_interest(
        category="linear", symbol="BTCUSDT", intervalTime="5min", limit=3
    )["result"]
    ticker = first.get_tickers(category="linear", symbol="BTCUSDT")["result"]["list"][0]

    assert before["result"]["list"][0]["openInterest"] == "0"
    assert (points["category"], points["symbol"], points["nextPageCursor"]) == (
        "linear",
        "BTCUSDT",
        "3",
    )
    newest = points["list"][0]
    assert (newest["openInterest"], newest["singleOpenInterest"]) == ("0.06", "0.03")
    assert (ticker["openInterest"], ticker["singleOpenInterest"]) == ("0.06", "0.03")
    assert ticker["openInterestValue"] == "5820"  # 0.06 * 97000
    stamps = [int(p["timestamp"]) for p in points["list"]]
    assert stamps == [stamps[0], stamps[0] - 300_000, stamps[0] - 600_000]
    assert stamps[0] % 300_000 == 0 and stamps[0] <= time.time() * 1000
    assert points["list"][2]["openInterest"] == "0"  # before the simulator ran


def test_open_interest_pages_back_to_the_listing(session: HTTP) -> None:
    query = {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "1d"}
    end = LAUNCH_MS + 4 * DAY_MS + 5

    page = session.get_open_interest(**query, endTime=end, limit=3)["result"]
    rest = session.get_open_interest(**query, endTime=end, limit=3, cursor=page["nextPageCursor"])[
        "result"
    ]
    windowed = session.get_open_interest(
        **query, startTime=LAUNCH_MS + DAY_MS - 1, endTime=end, limit=50
    )["result"]

    assert [int(p["timestamp"]) for p in page["list"]] == [
        LAUNCH_MS + 4 * DAY_MS,
        LAUNCH_MS + 3 * DAY_MS,
        LAUNCH_MS + 2 * DAY_MS,
    ]
    assert [int(p["timestamp"]) for p in rest["list"]] == [LAUNCH_MS + DAY_MS, LAUNCH_MS]
    assert rest["nextPageCursor"] == ""
    assert len(windowed["list"]) == 4
    assert {p["openInterest"] for p in page["list"] + rest["list"]} == {"0"}


def test_open_interest_parameters_are_checked(server: SimServer) -> None:
    path = "/v5/market/open-interest"
    base = {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "1h"}

    assert _public(server, path, **{**base, "intervalTime": "2h"})["retCode"] == 10001
    assert _public(server, path, **{**base, "category": "spot"})["retCode"] == 10001
    assert _public(server, path, **{**base, "limit": 201})["retCode"] == 10001
    assert _public(server, path, **{**base, "cursor": "x"})["retCode"] == 10001
    assert _public(server, path, **base, startTime=2_000_000_000_000, endTime=1)["retCode"] == (
        10001
    )
    assert _public(server, path, **{**base, "category": "inverse"})["result"]["list"] == []


def test_funding_history_settles_every_8_hours_at_the_tickers_rate(session: HTTP) -> None:
    rate = session.get_tickers(category="linear", symbol="ETHUSDT")["result"]["list"][0][
        "fundingRate"
    ]

    latest = session.get_funding_rate_history(category="linear", symbol="ETHUSDT")["result"]
    window = session.get_funding_rate_history(
        category="linear",
        symbol="ETHUSDT",
        startTime=LAUNCH_MS - 1,
        endTime=LAUNCH_MS + DAY_MS,
    )["result"]["list"]
    up_to = session.get_funding_rate_history(
        category="linear", symbol="ETHUSDT", endTime=LAUNCH_MS + DAY_MS + 1, limit=2
    )["result"]["list"]

    rows = latest["list"]
    now = time.time() * 1000
    assert (latest["category"], len(rows)) == ("linear", 200)
    assert {(r["symbol"], r["fundingRate"]) for r in rows} == {("ETHUSDT", rate)}
    stamps = [int(r["fundingRateTimestamp"]) for r in rows]
    assert stamps[0] % EIGHT_HOURS_MS == 0 and now - EIGHT_HOURS_MS < stamps[0] <= now
    assert stamps == [stamps[0] - i * EIGHT_HOURS_MS for i in range(200)]
    assert [int(r["fundingRateTimestamp"]) for r in window] == [
        LAUNCH_MS + DAY_MS,
        LAUNCH_MS + 2 * EIGHT_HOURS_MS,
        LAUNCH_MS + EIGHT_HOURS_MS,
        LAUNCH_MS,
    ]
    assert [int(r["fundingRateTimestamp"]) for r in up_to] == [
        LAUNCH_MS + DAY_MS,
        LAUNCH_MS + 2 * EIGHT_HOURS_MS,
    ]


def test_funding_history_refuses_a_lone_start_time_and_other_mistakes(server: SimServer) -> None:
    path = "/v5/market/funding/history"
    base = {"category": "linear", "symbol": "BTCUSDT"}

    lone = _public(server, path, **base, startTime=LAUNCH_MS)
    assert (lone["retCode"], "startTime needs endTime" in lone["retMsg"]) == (10001, True)
    assert _public(server, path, **base, startTime=5, endTime=4)["retCode"] == 10001
    assert _public(server, path, **base, limit=201)["retCode"] == 10001
    assert _public(server, path, category="option", symbol="BTCUSDT")["retCode"] == 10001
    assert _public(server, path, category="linear", symbol="NOPEUSDT")["retCode"] == 10001
    assert _public(server, path, category="inverse", symbol="BTCUSD")["result"] == {
        "category": "inverse",
        "list": [],
    }


# ------------------------------------------------------------------ transaction log


def test_transaction_log_has_a_trade_entry_per_fill_with_the_cash_it_moved(
    server: SimServer, session: HTTP
) -> None:
    opened = _market(session, "Buy", "0.01")
    settle(server)
    admin(server, "POST", "/sim/prices", {"BTCUSDT": 98000})
    closed = _market(session, "Sell", "0.01")
    settle(server)

    log = session.get_transaction_log(accountType="UNIFIED", category="linear", currency="USDT")
    wallet = session.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    fills = session.get_executions(category="linear")["result"]["list"]

    entries = log["result"]["list"]
    assert log["result"]["nextPageCursor"] == ""
    assert [(e["orderId"], e["side"], e["type"]) for e in entries] == [
        (closed, "Sell", "TRADE"),
        (opened, "Buy", "TRADE"),
    ]
    sell, buy = entries
    assert (buy["qty"], buy["size"], buy["tradePrice"], buy["fee"]) == (
        "0.01",
        "0.01",
        "97000",
        "0.5335",
    )
    assert (buy["cashFlow"], buy["change"], buy["cashBalance"]) == ("0", "-0.5335", "9999.4665")
    # Sold at the bid, a tick (0.1) under the new last price.
    assert (sell["size"], sell["cashFlow"], sell["fee"]) == ("0", "9.999", "0.53899945")
    assert sell["change"] == "9.46000055"  # cashFlow - fee
    assert sell["cashBalance"] == wallet["totalWalletBalance"] == "10008.92650055"
    assert [e["tradeId"] for e in entries] == [f["execId"] for f in fills]
    assert {e["currency"] for e in entries} == {"USDT"}
    assert sell["id"] != buy["id"]


def test_the_wallet_moves_by_exactly_the_fees_and_cash_flows_the_records_show(
    server: SimServer, session: HTTP
) -> None:
    """Bybit's log chains: each cashBalance is the one before plus its change, to the last
    digit (its transaction-log example), and a fill shows one fee wherever it is listed. Fees
    of an odd price and the PnL of an average entry run past 8 places: the wallet is charged
    what is shown, never the unrounded amount."""
    admin(server, "POST", "/sim/prices", {"BTCUSDT": "97000.3"})
    _market(session, "Buy", "0.001")  # fee 0.05335016(5)
    settle(server)
    admin(server, "POST", "/sim/prices", {"BTCUSDT": "97000.1"})
    _market(session, "Buy", "0.002")  # the entry averages 97000.1666...
    settle(server)
    _market(session, "Sell", "0.003")  # its cash flow runs to every place
    settle(server)

    log = session.get_transaction_log(accountType="UNIFIED", category="linear", currency="USDT")
    fills = session.get_executions(category="linear")["result"]["list"]
    wallet = session.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]

    entries = list(reversed(log["result"]["list"]))
    balance = Decimal(10000)
    for entry in entries:
        assert Decimal(entry["change"]) == Decimal(entry["cashFlow"]) - Decimal(entry["fee"])
        balance += Decimal(entry["change"])
        assert Decimal(entry["cashBalance"]) == balance
    assert Decimal(wallet["totalWalletBalance"]) == balance
    fees = {entry["tradeId"]: Decimal(entry["fee"]) for entry in entries}
    assert {fill["execId"]: Decimal(fill["execFee"]) for fill in fills} == fees
    assert all(fee == fee.quantize(Decimal("1e-8")) for fee in fees.values())


def test_transaction_log_filters_and_windows(server: SimServer, session: HTTP) -> None:
    _market(session, "Buy", "0.01")
    settle(server)

    def count(**query: Any) -> int:
        return len(session.get_transaction_log(**query)["result"]["list"])

    assert count() == 1
    assert count(type="SETTLEMENT") == count(currency="BTC") == count(category="spot") == 0
    assert count(baseCoin="ETH") == 0 and count(baseCoin="BTC") == 1
    assert count(startTime=int(time.time() * 1000) - DAY_MS * 3) == 0  # start + 24 h
    assert _error(lambda: session.get_transaction_log(startTime=1, endTime=8 * DAY_MS))[0] == 10001
    assert _error(lambda: session.get_transaction_log(accountType="CONTRACT"))[0] == 10001
    assert _error(lambda: session.get_transaction_log(limit=51))[0] == 10001


# ------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    ("call", "limit"),
    [
        (lambda s: s.get_fee_rates(category="linear"), "5"),
        (lambda s: s.set_margin_mode(setMarginMode="REGULAR_MARGIN"), "5"),
        (lambda s: s.get_transaction_log(), "25"),
        (
            lambda s: s.cancel_batch_order(
                category="linear", request=[{"symbol": "BTCUSDT", "orderId": "x"}]
            ),
            "10",
        ),
    ],
)
def test_the_new_private_paths_report_bybits_documented_limits(
    server: SimServer, connect: Callable[..., HTTP], call: Callable[[HTTP], Any], limit: str
) -> None:
    session = connect(server, return_response_headers=True)

    _, _, headers = call(session)

    assert_first_request_limit_headers(headers, limit)


def test_switch_mode_is_limited_to_10_per_second(
    server: SimServer, connect: Callable[..., HTTP]
) -> None:
    session = connect(server, HEDGE_KEY, return_response_headers=True)

    _, _, headers = session.switch_position_mode(category="linear", symbol="SOLUSDT", mode=0)

    assert (headers["X-Bapi-Limit"], headers["X-Bapi-Limit-Status"]) == ("10", "9")


# ------------------------------------------------------------------ the parts, called directly


def test_a_limiter_counts_what_fits_of_a_batch_and_refuses_the_rest() -> None:
    limiter = RollingWindowLimiter(5, 1000)

    first = limiter.hit("uid", 0, 3)
    partial = limiter.hit("uid", 10, 4)
    full = limiter.hit("uid", 20)
    later = limiter.hit("uid", 1000, 4)

    assert (first.granted, first.allowed, first.remaining) == (3, True, 2)
    assert (partial.granted, partial.allowed, partial.remaining) == (2, False, 0)
    assert (full.granted, full.allowed) == (0, False)
    assert (later.granted, later.allowed, later.remaining) == (3, False, 0)  # 3 left the window


def test_open_interest_follows_positions_opened_and_closed() -> None:
    exchange = SimExchange(SimulatorConfig(accounts=[_spec(KEY), _spec(OTHER_KEY)]))

    def order(key: str, side: str, qty: str, **extra: Any) -> None:
        exchange.place_order(
            key,
            PlaceOrderParams.model_validate(
                {"category": "linear", "symbol": "SOLUSDT", "side": side}
                | {"orderType": "Market", "qty": qty, **extra}
            ),
        )
        exchange.advance(10)

    def interest() -> tuple[str, str]:
        point = exchange.open_interest(
            OpenInterestParams.model_validate(
                {"category": "linear", "symbol": "SOLUSDT", "intervalTime": "5min"}
            )
        )["list"][0]
        return point["openInterest"], point["singleOpenInterest"]

    order(KEY, "Buy", "2")
    order(OTHER_KEY, "Sell", "1.5")
    opened = interest()
    order(KEY, "Sell", "2", reduceOnly=True)
    reduced = interest()
    order(OTHER_KEY, "Buy", "3")  # closes the short, opens a long of 1.5
    flipped = interest()

    assert opened == ("7", "3.5")
    assert reduced == ("3", "1.5")
    assert flipped == ("3", "1.5")
    trades = exchange.recent_trades(
        RecentTradeParams.model_validate({"category": "linear", "symbol": "SOLUSDT"})
    )["list"]
    assert [(t["side"], t["size"]) for t in trades] == [
        ("Buy", "3"),
        ("Sell", "2"),
        ("Sell", "1.5"),
        ("Buy", "2"),
    ]
