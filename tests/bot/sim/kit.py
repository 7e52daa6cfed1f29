"""Helpers the simulator's tests share: simulators and pybit sessions that are cleaned up,
signed requests built by hand, bounded waiting, an idle engine, the admin routes."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import requests
from pybit.unified_trading import HTTP

from bot.sim import SimExchange, SimServer, SimulatorConfig
from bot.sim.params import (
    OrderQueryParams,
    PlaceOrderParams,
    PositionQueryParams,
    WalletBalanceParams,
)

__all__ = [
    "admin",
    "eventually",
    "order_row",
    "place",
    "pybit_sessions",
    "settle",
    "signed_post",
    "simulators",
]

T = TypeVar("T")
_WAIT_S = 5.0


def eventually(read: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Poll read() until done(value) holds (bounded), and return that value."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last seen: {value!r}")
        time.sleep(0.002)


def settle(server: SimServer) -> None:
    """Wait until the exchange's engine has nothing left to do (fills, triggered stops)."""
    eventually(
        lambda: server.exchange.stats()["pending_events"], lambda n: n == 0, "an idle engine"
    )


def admin(server: SimServer, method: str, path: str, body: Any = None) -> requests.Response:
    """A request to the simulator's unauthenticated /sim admin routes."""
    return requests.request(method, server.url + path, json=body, timeout=5)


@contextmanager
def simulators(config: Callable[..., SimulatorConfig]) -> Iterator[Callable[..., SimServer]]:
    """`start(**overrides)` starts a simulator of `config(**overrides)`; every one started is
    stopped at the end."""
    servers: list[SimServer] = []

    def start(**overrides: Any) -> SimServer:
        server = SimServer(SimExchange(config(**overrides))).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@contextmanager
def pybit_sessions(key: str, secret: str) -> Iterator[Callable[..., HTTP]]:
    """`make(server, key=..., secret=..., **options)`: a pybit session pointed at `server`,
    with pybit's own retries disabled; every one made is closed at the end."""
    sessions: list[HTTP] = []

    def make(server: SimServer, key: str = key, secret: str = secret, **options: Any) -> HTTP:
        session = HTTP(
            api_key=key, api_secret=secret, timeout=5, max_retries=1, retry_codes={-1}, **options
        )
        session.endpoint = server.url
        sessions.append(session)
        return session

    try:
        yield make
    finally:
        for session in sessions:
            session.client.close()


def signed_post(server: SimServer, path: str, body: bytes, key: str, secret: str) -> dict[str, Any]:
    """A POST signed the way Bybit documents it, independently of the simulator's code (for
    bodies pybit would not build); its answer must be HTTP 200."""
    timestamp, recv_window = str(int(time.time() * 1000)), "5000"
    signature = hmac.new(
        secret.encode(), f"{timestamp}{key}{recv_window}".encode() + body, hashlib.sha256
    ).hexdigest()
    answer = requests.post(
        server.url + path,
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-BAPI-API-KEY": key,
            "X-BAPI-SIGN": signature,
            "X-BAPI-TIMESTAMP": timestamp,
            "X-BAPI-RECV-WINDOW": recv_window,
        },
        timeout=5,
    )
    assert answer.status_code == 200
    return dict(answer.json())


def assert_first_request_limit_headers(headers: Any, limit: str) -> None:
    """Bybit's rate-limit headers on a path's first request: its documented limit, one of it
    used, and the window's reset within seconds."""
    assert headers["X-Bapi-Limit"] == limit
    assert int(headers["X-Bapi-Limit-Status"]) == int(limit) - 1
    assert abs(int(headers["X-Bapi-Limit-Reset-Timestamp"]) - time.time() * 1000) < 5000


def order_body(**fields: Any) -> dict[str, Any]:
    """A `/v5/order/create` body: a 0.01 BTCUSDT linear market buy unless `fields` (in
    Bybit's names) say otherwise."""
    return {
        "category": "linear",
        "symbol": "BTCUSDT",
        "side": "Buy",
        "orderType": "Market",
        "qty": "0.01",
        **fields,
    }


def place(exchange: SimExchange, key: str, **fields: Any) -> str:
    """Place `order_body(**fields)` on the engine directly; its orderId."""
    request = PlaceOrderParams.model_validate(order_body(**fields))
    order_id: str = exchange.place_order(key, request)["orderId"]
    return order_id


def order_row(exchange: SimExchange, key: str, order_id: str) -> dict[str, Any]:
    """The order as `/v5/order/realtime` shows it by id, whatever its status."""
    query = OrderQueryParams.model_validate({"category": "linear", "orderId": order_id})
    found: list[dict[str, Any]] = exchange.open_orders(key, query)["list"]
    assert len(found) == 1
    return found[0]


def position_row(exchange: SimExchange, key: str, symbol: str = "BTCUSDT") -> dict[str, Any]:
    """The account's position in `symbol` as `/v5/position/list` shows it."""
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": symbol})
    row: dict[str, Any] = exchange.positions(key, query)["list"][0]
    return row


def wallet_row(exchange: SimExchange, key: str) -> dict[str, Any]:
    """The account's unified wallet as `/v5/account/wallet-balance` shows it."""
    query = WalletBalanceParams.model_validate({"accountType": "UNIFIED"})
    row: dict[str, Any] = exchange.wallet_balance(key, query)["list"][0]
    return row
