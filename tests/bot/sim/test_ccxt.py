"""A client nobody here wrote: ccxt's `bybit` class, unchanged but for its URLs, trades on the
simulator over loopback. If it needs an endpoint, the simulator serves it in Bybit's shape."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import ccxt
import pytest
from pydantic import SecretStr

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


@pytest.fixture
def bybit(server: SimServer, loopback_only: None) -> ccxt.bybit:
    """ccxt's bybit as a user would configure it, with only its API URLs pointed here.

    ccxt's own client-side throttle is off: the simulator enforces Bybit's limits itself.
    """
    exchange = ccxt.bybit(
        {"apiKey": KEY, "secret": SECRET, "timeout": 5000, "enableRateLimit": False}
    )
    exchange.urls["api"] = {name: server.url for name in exchange.urls["api"]}
    exchange.options["defaultType"] = "swap"
    return exchange


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
