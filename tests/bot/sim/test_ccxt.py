"""A client nobody here wrote: ccxt's `bybit` class, unchanged but for its URLs, trades on the
simulator over loopback. If it needs an endpoint, the simulator serves it in Bybit's shape."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import ccxt
import ccxt.pro
import pytest
from pydantic import SecretStr

from bot import clock
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from tests.bot.sim.kit import eventually

KEY = "ccxt-key"
SECRET = "ccxt-secret"
SYMBOL = "BTC/USDT:USDT"


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test on any connection that leaves 127.0.0.1."""
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"network access outside loopback: {address!r}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def server() -> Iterator[SimServer]:
    spec = SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="ccxt")
    with SimServer(SimExchange(SimulatorConfig(seed=9, accounts=[spec]))) as running:
        yield running


def _client(server: SimServer, key: str = KEY, secret: str = SECRET) -> ccxt.bybit:
    """ccxt's bybit as a user would configure it, with only its API URLs pointed here.

    ccxt's own client-side throttle is off: the simulator enforces Bybit's limits itself.
    """
    exchange = ccxt.bybit(
        {"apiKey": key, "secret": secret, "timeout": 5000, "enableRateLimit": False}
    )
    exchange.urls["api"] = {name: server.url for name in exchange.urls["api"]}
    exchange.options["defaultType"] = "swap"
    return exchange


@pytest.fixture
def bybit(server: SimServer, loopback_only: None) -> ccxt.bybit:
    return _client(server)


def test_load_markets_lists_the_linear_perpetuals(bybit: ccxt.bybit) -> None:
    markets = bybit.load_markets()

    assert sorted(markets) == ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
    btc = markets[SYMBOL]
    assert (btc["id"], btc["swap"], btc["linear"], btc["settle"]) == ("BTCUSDT", True, True, "USDT")
    assert (btc["precision"]["amount"], btc["precision"]["price"]) == (0.001, 0.1)
    assert btc["limits"]["amount"]["min"] == 0.001


def test_fetch_balance_reports_the_usdt_wallet(bybit: ccxt.bybit) -> None:
    balance = bybit.fetch_balance()

    assert balance["USDT"]["total"] == 10000
    assert balance["USDT"]["free"] == 10000


def test_a_market_order_fills_and_shows_as_a_trade_with_its_fee(bybit: ccxt.bybit) -> None:
    created = bybit.create_order(SYMBOL, "market", "buy", 0.01)

    order = eventually(
        lambda: bybit.fetch_order(created["id"], SYMBOL, {"acknowledged": True}),
        lambda found: found["status"] == "closed",
        "the market order to fill",
    )
    trades = bybit.fetch_my_trades(SYMBOL)

    assert (order["filled"], order["average"], order["side"]) == (0.01, 97000, "buy")
    assert [(t["order"], t["price"], t["amount"], t["takerOrMaker"]) for t in trades] == [
        (created["id"], 97000, 0.01, "taker")
    ]
    assert trades[0]["fee"]["cost"] == pytest.approx(0.5335)
    assert trades[0]["fee"]["currency"] == "USDT"


def test_a_limit_order_rests_shows_as_open_and_cancels(bybit: ccxt.bybit) -> None:
    created = bybit.create_order(SYMBOL, "limit", "buy", 0.01, 90000)

    open_orders = eventually(
        lambda: bybit.fetch_open_orders(SYMBOL), lambda found: len(found) == 1, "an open order"
    )
    bybit.cancel_order(created["id"], SYMBOL)
    cancelled = bybit.fetch_order(created["id"], SYMBOL, {"acknowledged": True})

    assert (open_orders[0]["id"], open_orders[0]["price"], open_orders[0]["status"]) == (
        created["id"],
        90000,
        "open",
    )
    assert cancelled["status"] == "canceled"
    assert bybit.fetch_open_orders(SYMBOL) == []


def test_bybit_errors_map_to_ccxt_exceptions(bybit: ccxt.bybit) -> None:
    with pytest.raises(ccxt.InsufficientFunds):
        bybit.create_order(SYMBOL, "market", "buy", 2)
    with pytest.raises(ccxt.OrderNotFound):
        bybit.cancel_order("no-such-order", SYMBOL)
    with pytest.raises(ccxt.BadSymbol):  # a symbol ccxt's markets hold but the venue does not
        bybit.public_get_v5_market_tickers({"category": "linear", "symbol": "FOOUSDT"})


def test_a_resting_reduce_only_order_is_cancelled_once_its_position_closes(
    bybit: ccxt.bybit,
) -> None:
    """Bybit cancels a take-profit limit left without a position at once (CancelByReduceOnly),
    so fetch_open_orders stops listing it when another order closes the position."""
    bybit.create_order(SYMBOL, "market", "buy", 0.01)
    # It trades market_fill_delay_ms after its answer, as Bybit's matching is asynchronous:
    # a reduce-only order placed before then has no position to reduce (110017).
    eventually(lambda: bybit.fetch_positions([SYMBOL])[0]["contracts"], bool, "the long")
    target = bybit.create_order(SYMBOL, "limit", "sell", 0.01, 99000, {"reduceOnly": True})
    bybit.create_order(SYMBOL, "market", "sell", 0.01)  # closed by another order

    order = eventually(
        lambda: bybit.fetch_order(target["id"], SYMBOL, {"acknowledged": True}),
        lambda found: found["status"] != "open",
        "the reduce-only order to end",
    )

    assert (order["status"], order["filled"]) == ("canceled", 0)
    assert order["info"]["cancelType"] == "CancelByReduceOnly"
    assert bybit.fetch_open_orders(SYMBOL) == []


# ------------------------------------------------------------------ account and position modes


def test_fetch_trading_fee_reads_the_configured_rates(bybit: ccxt.bybit) -> None:
    fee = bybit.fetch_trading_fee(SYMBOL)
    fees = bybit.fetch_trading_fees()

    assert (fee["symbol"], fee["taker"], fee["maker"]) == (SYMBOL, 0.00055, 0.0002)
    assert sorted(fees) == ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]


def test_set_position_mode_keeps_one_way_and_refuses_hedged(bybit: ccxt.bybit) -> None:
    with pytest.raises(ccxt.NoChange, match="110025"):
        bybit.set_position_mode(False, SYMBOL)
    with pytest.raises(ccxt.BadRequest, match="110029"):
        bybit.set_position_mode(True, SYMBOL)


def test_a_hedge_mode_account_switches_to_one_way_and_can_then_trade(
    server: SimServer, loopback_only: None
) -> None:
    server.exchange.add_account(
        SimAccountSpec(api_key="ccxt-hedged", api_secret=SecretStr(SECRET), hedge_mode=True)
    )
    hedged = _client(server, "ccxt-hedged")
    with pytest.raises(ccxt.BadRequest, match="position idx not match position mode"):
        hedged.create_order(SYMBOL, "limit", "buy", 0.01, 90000)

    answer = hedged.set_position_mode(False)  # by coin: every USDT contract
    created = hedged.create_order(SYMBOL, "limit", "buy", 0.01, 90000)

    assert answer["retCode"] == 0
    assert created["id"]


def test_set_margin_mode_accepts_cross_and_refuses_isolated(bybit: ccxt.bybit) -> None:
    answer = bybit.set_margin_mode("cross", SYMBOL)

    assert answer["result"] == {"reasons": []}
    with pytest.raises(ccxt.BadRequest, match="ISOLATED_MARGIN is not simulated"):
        bybit.set_margin_mode("isolated", SYMBOL)


def test_fetch_ledger_lists_each_fill_with_the_balance_after_it(bybit: ccxt.bybit) -> None:
    bybit.create_order(SYMBOL, "market", "buy", 0.01)
    eventually(lambda: bybit.fetch_my_trades(SYMBOL), lambda found: len(found) == 1, "the fill")

    ledger = bybit.fetch_ledger("USDT")

    assert len(ledger) == 1
    entry = ledger[0]
    assert (entry["currency"], entry["direction"], entry["type"]) == ("USDT", "out", "trade")
    assert entry["amount"] == pytest.approx(0.5335)  # the taker fee
    assert entry["after"] == pytest.approx(9999.4665)


def test_a_funding_settlement_shows_in_funding_history_and_the_ledger(
    loopback_only: None,
) -> None:
    spec = SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="ccxt")
    with (
        clock.installed(clock.VirtualClock(datetime.now(UTC))) as calendar,
        SimServer(SimExchange(SimulatorConfig(seed=9, accounts=[spec]))) as server,
    ):
        bybit = _client(server)
        bybit.create_order(SYMBOL, "market", "buy", 0.01)
        eventually(lambda: bybit.fetch_my_trades(SYMBOL), lambda found: len(found) == 1, "fill")
        boundary_ms = (server.exchange.now_ms() // 28_800_000 + 1) * 28_800_000
        calendar.advance_to(datetime.fromtimestamp(boundary_ms / 1000 + 1, UTC))
        server.exchange.set_prices(server.exchange.prices())  # the market's next price

        [funding] = bybit.fetch_funding_history(SYMBOL)
        ledger = bybit.fetch_ledger("USDT")

    # ccxt passes Bybit's execFee on as the amount: positive, paid by the long
    assert (funding["symbol"], funding["timestamp"]) == (SYMBOL, boundary_ms)
    assert funding["amount"] == pytest.approx(0.01 * 97_000 * 0.0001)
    assert funding["rate"] == pytest.approx(0.0001)
    settlement = next(entry for entry in ledger if entry["info"]["type"] == "SETTLEMENT")
    assert (settlement["direction"], settlement["amount"]) == ("out", pytest.approx(0.097))
    assert settlement["after"] == pytest.approx(9999.4665 - 0.097)  # after the taker fee


# ------------------------------------------------------------------ batches


def test_create_edit_and_cancel_orders_go_through_the_batch_endpoints(
    bybit: ccxt.bybit,
) -> None:
    created = bybit.create_orders(
        [
            {"symbol": SYMBOL, "type": "limit", "side": "buy", "amount": 0.01, "price": 90000},
            {"symbol": SYMBOL, "type": "limit", "side": "buy", "amount": 0.01, "price": 90500},
        ]
    )
    ids = [order["id"] for order in created]
    open_ids = eventually(
        lambda: sorted(order["id"] for order in bybit.fetch_open_orders(SYMBOL)),
        lambda found: len(found) == 2,
        "two open orders",
    )

    edited = bybit.edit_orders(
        [
            {"id": ids[0], "symbol": SYMBOL, "type": "limit", "side": "buy", "price": 89000},
            {"id": ids[1], "symbol": SYMBOL, "type": "limit", "side": "buy", "amount": 0.02},
        ]
    )
    resting = {order["id"]: order for order in bybit.fetch_open_orders(SYMBOL)}
    cancelled = bybit.cancel_orders([*ids, "no-such-order"], SYMBOL)

    assert [order["id"] for order in edited] == ids
    assert (resting[ids[0]]["price"], resting[ids[0]]["amount"]) == (89000, 0.01)
    assert (resting[ids[1]]["price"], resting[ids[1]]["amount"]) == (90500, 0.02)
    assert open_ids == sorted(ids)
    assert [order["id"] for order in cancelled[:2]] == ids
    assert cancelled[2]["info"]["orderId"] == ""  # Bybit's blank row for a failed item
    assert bybit.fetch_open_orders(SYMBOL) == []


# ------------------------------------------------------------------ market data


def test_fetch_status_reports_no_maintenance(bybit: ccxt.bybit) -> None:
    status = bybit.fetch_status()

    assert (status["status"], status["eta"]) == ("ok", None)


def test_fetch_trades_lists_the_fills_of_every_account(bybit: ccxt.bybit) -> None:
    created = bybit.create_order(SYMBOL, "market", "buy", 0.01)
    mine = eventually(
        lambda: bybit.fetch_my_trades(SYMBOL), lambda found: len(found) == 1, "the fill"
    )

    trades = bybit.fetch_trades(SYMBOL)

    assert [(t["id"], t["price"], t["amount"], t["side"]) for t in trades] == [
        (mine[0]["id"], 97000, 0.01, "buy")
    ]
    assert mine[0]["order"] == created["id"]


def test_fetch_mark_ohlcv_has_prices_but_no_volume(bybit: ccxt.bybit) -> None:
    candles = bybit.fetch_mark_ohlcv(SYMBOL, "1m", None, 5)

    assert len(candles) == 5
    assert all(candle[5] is None for candle in candles)
    assert candles[-1][4] == 97000  # oldest first in ccxt; the open one closes at the price


def test_fetch_index_ohlcv_takes_a_page_of_1000_candles(bybit: ccxt.bybit) -> None:
    """ccxt sends category and up to 1000 a page, as Bybit allows (the simulator's 200 was an
    old limit: ccxt raised BadRequest)."""
    candles = bybit.fetch_index_ohlcv(SYMBOL, "1m", None, 1000)

    stamps = [candle[0] for candle in candles]
    assert stamps == list(range(stamps[0], stamps[0] + 1000 * 60_000, 60_000))
    assert candles[-1][4] == 97000  # the open candle closes at the current price


def test_fetch_open_interest_counts_the_positions_held(bybit: ccxt.bybit) -> None:
    assert bybit.fetch_open_interest(SYMBOL)["openInterestAmount"] == 0

    bybit.create_order(SYMBOL, "market", "buy", 0.01)
    interest = eventually(
        lambda: bybit.fetch_open_interest(SYMBOL),
        lambda found: found["openInterestAmount"] > 0,
        "the fill to count",
    )

    assert interest["openInterestAmount"] == 0.02  # both sides: the account's and the market's
    assert interest["info"]["singleOpenInterest"] == "0.01"


def test_fetch_funding_rate_history_matches_the_published_rate(bybit: ccxt.bybit) -> None:
    since = 1_700_000_000_000
    current = bybit.fetch_funding_rate(SYMBOL)

    history = bybit.fetch_funding_rate_history(SYMBOL, since, 3)

    assert [rate["fundingRate"] for rate in history] == [current["fundingRate"]] * 3
    stamps = [rate["timestamp"] for rate in history]
    first = -(-since // 28_800_000) * 28_800_000
    assert stamps == [first, first + 28_800_000, first + 57_600_000]


def test_fetch_ohlcv_since_pages_forward_over_the_whole_range(bybit: ccxt.bybit) -> None:
    since = bybit.milliseconds() - 2500 * 60_000

    first = bybit.fetch_ohlcv(SYMBOL, "1h", since - 46 * 3_600_000, 5)
    paged = bybit.fetch_ohlcv(SYMBOL, "1m", since, None, {"paginate": True, "paginationCalls": 3})

    hour = 3_600_000  # ccxt asks from the next whole interval after `since`
    assert [candle[0] for candle in first] == [
        -(-(since - 46 * hour) // hour) * hour + n * hour for n in range(5)
    ]
    stamps = [candle[0] for candle in paged]
    assert stamps[0] == -(-since // 60_000) * 60_000
    assert stamps == list(range(stamps[0], stamps[-1] + 1, 60_000))  # none skipped
    assert len(stamps) >= 2499


def test_trigger_orders_are_none_and_a_path_not_served_is_a_bad_request(
    bybit: ccxt.bybit,
) -> None:
    bybit.create_order(SYMBOL, "limit", "buy", 0.01, 90000)

    conditional = bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})

    assert conditional == []  # the plain limit order is not a conditional one
    assert len(bybit.fetch_open_orders(SYMBOL)) == 1
    with pytest.raises(ccxt.BadRequest, match="simulator serves a subset"):
        bybit.fetch_deposits()  # final: never an outage (ExchangeNotAvailable) to retry


def test_stop_orders_wait_for_their_trigger_and_a_reduce_only_stop_closes_the_position(
    bybit: ccxt.bybit, server: SimServer
) -> None:
    bybit.create_order(SYMBOL, "market", "buy", 0.01)
    breakout = bybit.create_order(
        SYMBOL, "market", "buy", 0.01, None, {"triggerPrice": 99000, "triggerDirection": "above"}
    )
    stop = bybit.create_order(
        SYMBOL, "market", "sell", 0.01, None, {"stopLossPrice": 96000, "reduceOnly": True}
    )

    waiting = {
        order["id"]: order
        for order in bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})
    }
    assert set(waiting) == {breakout["id"], stop["id"]}
    assert (waiting[breakout["id"]]["triggerPrice"], waiting[stop["id"]]["triggerPrice"]) == (
        99000,
        96000,
    )
    bybit.cancel_order(breakout["id"], SYMBOL, {"trigger": True})
    server.exchange.set_prices({"BTCUSDT": "95900"})

    closed = eventually(
        lambda: bybit.fetch_order(stop["id"], SYMBOL, {"acknowledged": True}),
        lambda order: order["status"] == "closed",
        "the stop to fill",
    )
    assert (closed["filled"], closed["reduceOnly"]) == (0.01, True)
    assert not [p for p in bybit.fetch_positions([SYMBOL]) if p["contracts"]]
    cancelled = bybit.fetch_order(breakout["id"], SYMBOL, {"acknowledged": True})
    assert cancelled["status"] == "canceled"


def test_a_trailing_amount_order_sets_the_positions_trailing_stop(
    bybit: ccxt.bybit, server: SimServer
) -> None:
    bybit.create_order(SYMBOL, "market", "buy", 0.01)
    eventually(lambda: bybit.fetch_positions([SYMBOL])[0]["contracts"], bool, "the long")

    bybit.create_order(SYMBOL, "market", "sell", 0.01, None, {"trailingAmount": "500"})
    (trailing,) = bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})
    server.exchange.set_prices({"BTCUSDT": "98000"})
    after_the_rise = bybit.fetch_order(trailing["id"], SYMBOL, {"acknowledged": True})[
        "triggerPrice"
    ]
    server.exchange.set_prices({"BTCUSDT": "97400"})

    closed = eventually(
        lambda: bybit.fetch_order(trailing["id"], SYMBOL, {"acknowledged": True}),
        lambda order: order["status"] == "closed",
        "the trailing stop to fill",
    )
    # Bybit shows the activation price as the triggerPrice: the last price, active at once.
    assert (trailing["info"]["stopOrderType"], trailing["triggerPrice"]) == ("TrailingStop", 97000)
    assert after_the_rise == 97000  # the activation price: it does not move
    assert closed["filled"] == 0.01
    assert not [p for p in bybit.fetch_positions([SYMBOL]) if p["contracts"]]


def test_partial_tp_and_sl_from_ccxt_become_orders_of_their_size(
    bybit: ccxt.bybit, server: SimServer
) -> None:
    """ccxt sends tpslMode Partial for an attached stop loss with a limit price, and for a
    stop loss and take profit of an amount through trading-stop."""
    bybit.create_order(
        SYMBOL, "market", "buy", 0.02, None, {"stopLoss": {"triggerPrice": 95000, "price": 94900}}
    )
    eventually(lambda: bybit.fetch_positions([SYMBOL])[0]["contracts"], bool, "the long")
    (attached,) = bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})

    bybit.create_order(
        SYMBOL, "market", "sell", 0.01, None, {"stopLossPrice": 96000, "takeProfitPrice": 99000}
    )
    added = bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})
    server.exchange.set_prices({"BTCUSDT": "95950"})  # the 96000 stop: 0.01 sold, TP cancelled
    eventually(
        lambda: bybit.fetch_positions([SYMBOL])[0]["contracts"],
        lambda contracts: contracts == 0.01,
        "0.01 left",
    )

    assert (attached["info"]["stopOrderType"], attached["type"], attached["price"]) == (
        "PartialStopLoss",
        "limit",
        94900,
    )
    assert (attached["amount"], attached["triggerPrice"], attached["reduceOnly"]) == (
        0.02,
        95000,
        True,
    )
    assert sorted((o["info"]["stopOrderType"], o["amount"]) for o in added) == [
        ("PartialStopLoss", 0.01),
        ("PartialStopLoss", 0.02),
        ("PartialTakeProfit", 0.01),
    ]
    (left,) = bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})
    assert left["id"] == attached["id"]


def test_tp_and_sl_orders_name_the_order_they_came_attached_to(bybit: ccxt.bybit) -> None:
    """Bybit's parentOrderLinkId: the orderLinkId of the order a TP/SL came attached to, Full
    or Partial; a level set by trading-stop alone has none."""
    bybit.create_order(
        SYMBOL,
        "market",
        "buy",
        0.01,
        None,
        {"clientOrderId": "entry-1", "takeProfit": 99000, "stopLoss": 95000},
    )
    bybit.create_order(
        SYMBOL,
        "limit",
        "buy",
        0.01,
        98000,
        {"clientOrderId": "entry-2", "stopLoss": {"triggerPrice": 94000, "price": 93900}},
    )
    exits = eventually(
        lambda: bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True}),
        lambda found: len(found) == 3,
        "the TP, the SL and the partial SL",
    )
    (stop,) = [o for o in exits if o["info"]["stopOrderType"] == "StopLoss"]
    bybit.cancel_order(stop["id"], SYMBOL, {"trigger": True})
    bybit.private_post_v5_position_trading_stop(
        {"category": "linear", "symbol": "BTCUSDT", "stopLoss": "95500", "tpslMode": "Full"}
    )
    after = bybit.fetch_open_orders(SYMBOL, None, None, {"trigger": True})

    assert sorted((o["info"]["stopOrderType"], o["info"]["parentOrderLinkId"]) for o in exits) == [
        ("PartialStopLoss", "entry-2"),
        ("StopLoss", "entry-1"),
        ("TakeProfit", "entry-1"),
    ]
    assert sorted((o["info"]["stopOrderType"], o["info"]["parentOrderLinkId"]) for o in after) == [
        ("PartialStopLoss", "entry-2"),
        ("StopLoss", ""),
        ("TakeProfit", "entry-1"),
    ]


def test_edit_order_moves_a_stop_and_refuses_one_on_the_wrong_side(bybit: ccxt.bybit) -> None:
    """An amended order is checked as a new one is. ccxt passes its params through as given:
    decimals as strings, as Bybit (and pybit, which turns numbers into strings) sends them."""
    placed = bybit.create_order(SYMBOL, "limit", "buy", 0.001, 95000)

    bybit.edit_order(placed["id"], SYMBOL, "limit", "buy", None, None, {"stopLoss": "94000.5"})
    with pytest.raises(ccxt.BadRequest, match="must be below its base price"):
        bybit.edit_order(placed["id"], SYMBOL, "limit", "buy", None, None, {"stopLoss": "99000"})
    with pytest.raises(ccxt.BadRequest, match="must be a decimal string"):
        bybit.edit_order(placed["id"], SYMBOL, "limit", "buy", None, None, {"stopLoss": 94000})

    order = bybit.fetch_open_order(placed["id"], SYMBOL)
    assert (order["price"], order["stopLossPrice"]) == (95000, 94000.5)


def _pro_client(server: SimServer) -> Any:
    """ccxt.pro's bybit, its REST and WebSocket URLs pointed here."""
    exchange = ccxt.pro.bybit(
        {"apiKey": KEY, "secret": SECRET, "timeout": 5000, "enableRateLimit": False}
    )
    exchange.urls["api"] = {name: server.url for name in exchange.urls["api"] if name != "ws"}
    streams = server.ws_url
    exchange.urls["api"]["ws"] = {
        "public": {"linear": streams + "/v5/public/linear"},
        "private": {
            "contract": streams + "/v5/private",
            "unified": streams + "/v5/private",
            "trade": streams + "/v5/trade",
        },
    }
    exchange.options["defaultType"] = "swap"
    return exchange


def test_ccxt_pro_creates_edits_and_cancels_over_the_trade_websocket(
    server: SimServer, loopback_only: None
) -> None:
    """Bybit's `/v5/trade`: ccxt.pro's create_order_ws, edit_order_ws and cancel_order_ws."""

    async def trade() -> tuple[Any, Any, Any, Any]:
        exchange = _pro_client(server)
        try:
            created = await exchange.create_order_ws(SYMBOL, "limit", "buy", 0.01, 90000)
            edited = await exchange.edit_order_ws(
                created["id"], SYMBOL, "limit", "buy", 0.02, 91000
            )
            cancelled = await exchange.cancel_order_ws(created["id"], SYMBOL)
            with pytest.raises(ccxt.InsufficientFunds):
                await exchange.create_order_ws(SYMBOL, "limit", "buy", 100, 90000)
            book = [await exchange.watch_order_book(SYMBOL, 1) for _ in range(2)]
            return created, edited, cancelled, book
        finally:
            await exchange.close()

    created, edited, cancelled, book = asyncio.run(asyncio.wait_for(trade(), 30))

    rest = _client(server)
    (order,) = [o for o in rest.fetch_canceled_orders(SYMBOL) if o["id"] == created["id"]]
    assert created["id"] and edited["id"] == cancelled["id"] == created["id"]
    assert (order["amount"], order["price"], order["status"]) == (0.02, 91000, "canceled")
    assert book[1]["bids"] and book[1]["asks"]  # a still book comes again within 3 s


def test_fetch_funding_rate_reads_the_interval_and_the_next_time(bybit: ccxt.bybit) -> None:
    rate = bybit.fetch_funding_rate(SYMBOL)

    assert (rate["fundingRate"], rate["interval"]) == (0.0001, "8h")
    assert rate["fundingTimestamp"] % (8 * 3_600_000) == 0
    # Bybit's ticker fields for it, as its docs show them (strings)
    info = rate["info"]
    assert (info["fundingIntervalHour"], info["fundingCap"]) == ("8", "0.005")
    assert (info["preOpenPrice"], info["curPreListingPhase"], info["basisRateYear"]) == ("", "", "")
